"""Breaker candidates side by side (issue 13, item 1): a discrete-event simulation on a fake clock.

Drives the real ``gateway.breaker.CircuitBreaker`` (and, for the candidates that are not breaker
modes, small stand-ins written here) with open-loop Poisson traffic against a modelled upstream that
fails for an outage of 1 to 60 s, either fast (503 in ~20 ms) or by stalling (no answer until the
try's ``per_try`` timeout). Each request makes up to ``attempts`` tries with full-jitter backoff, one
breaker sample per try, as the gateway's retry loop does; a refusal on the first try is a 503
``breaker_open``, on a later try it ends the loop with the last answer.

Reported per candidate, over outage lengths, outage kinds, request rates and seeds:

- ``last refusal``: seconds from the upstream's recovery to the last ``breaker_open`` (the issue's
  bound is 3 s); the worst over every case;
- ``ok %``: requests answered by the upstream with success, from the outage's start to 20 s after it;
- ``tries/s in outage``: load sent to the failing upstream (what a breaker saves it);
- ``fail-fast %``: requests during the outage answered in under 50 ms (a breaker's other purpose).

    python bench/breaker_modes.py             # the full grid, ~1 min
    python bench/breaker_modes.py --quick     # fewer seeds
"""

from __future__ import annotations

import argparse
import heapq
import math
import random
import statistics
import sys
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.breaker import CircuitBreaker
from gateway.config import BreakerSpec
from gateway.errors import BreakerOpen
from gateway.outcomes import Outcome

OK = Outcome("response", 200)
E503 = Outcome("response", 503)
TIMEOUT = Outcome("timeout")
PER_TRY = 8.0
ATTEMPTS = 3
BACKOFF = 0.1
TOTAL = 10.0
OUTAGE_START = 20.0
TAIL = 20.0  # measured after the recovery


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


# ---------------------------------------------------------------- candidates


class Gate:
    """What a candidate offers the retry loop: admit (or refuse) a try, then hear its outcome."""

    def admit(self) -> Any:  # a token, or raises BreakerOpen
        raise NotImplementedError

    def done(self, token: Any, outcome: Outcome) -> None:
        raise NotImplementedError

    def waits_for_probe(self) -> float | None:
        """Candidates that park a refused request until the probe answers: when to look again."""
        return None


class RealBreaker(Gate):
    def __init__(self, clock: Clock, rng: random.Random, **config: Any) -> None:
        self.breaker = CircuitBreaker("up", "up", "-", BreakerSpec.model_validate(config), clock=clock, rng=rng.random)

    def admit(self) -> Any:
        return self.breaker.acquire()

    def done(self, token: Any, outcome: Outcome) -> None:
        token.record(outcome)


class WaitForProbe(RealBreaker):
    """Half-open and busy: the request waits for the probe (up to its deadline) instead of a refusal."""

    def waits_for_probe(self) -> float | None:
        return self.breaker.next_probe_in() if self.breaker.state == "half_open" else None


class NoBreaker(Gate):
    def admit(self) -> Any:
        return None

    def done(self, token: Any, outcome: Outcome) -> None:
        pass


class Adaptive(Gate):
    """Google SRE client-side throttling / Envoy admission_control: refuse with probability
    max(0, (requests - accepts / (1 - failure_rate)) / (requests + 1)) over a sliding window,
    capped at ``max_reject``. Refused tries count as requests (as in the SRE book)."""

    def __init__(
        self, clock: Clock, rng: random.Random, window: float = 2.0, k: float = 2.0, max_reject: float = 0.95
    ) -> None:
        self.clock, self.rng, self.window, self.k, self.max_reject = clock, rng, window, k, max_reject
        self.samples: deque[tuple[float, bool]] = deque()  # (time, accepted)

    def _trim(self) -> None:
        while self.samples and self.samples[0][0] < self.clock() - self.window:
            self.samples.popleft()

    def admit(self) -> Any:
        self._trim()
        requests = len(self.samples)
        accepts = sum(1 for _, ok in self.samples if ok)
        p = min(self.max_reject, max(0.0, (requests - self.k * accepts) / (requests + 1)))
        if self.rng.random() < p:
            self.samples.append((self.clock(), False))
            raise BreakerOpen("throttled", upstream="up", retry_after=1.0)
        return True

    def done(self, token: Any, outcome: Outcome) -> None:
        self.samples.append((self.clock(), outcome.kind == "response" and outcome.status < 500))


CANDIDATES: dict[str, Callable[[Clock, random.Random], Gate]] = {
    "no breaker": lambda c, r: NoBreaker(),
    "v1 defaults (consecutive 5, 30 s → 300 s)": lambda c, r: RealBreaker(c, r, recovery="30s", recovery_max="300s"),
    "v1 shipped (rate 50 %/30 s, 30 s → 300 s)": lambda c, r: RealBreaker(
        c, r, mode="rate", min_requests=20, recovery="30s", recovery_max="300s"
    ),
    "consecutive 5, 2 s → 30 s (contract draft)": lambda c, r: RealBreaker(c, r, recovery="2s", recovery_max="30s"),
    "consecutive 5, 0.5 s → 2 s (the default)": lambda c, r: RealBreaker(c, r),
    "consecutive 5, 1 s → 2 s": lambda c, r: RealBreaker(c, r, recovery="1s", recovery_max="2s"),
    "consecutive 5, 0.5 s → 1 s": lambda c, r: RealBreaker(c, r, recovery="500ms", recovery_max="1s"),
    "consecutive 5, fixed 1 s": lambda c, r: RealBreaker(c, r, recovery="1s", recovery_max="1s"),
    "consecutive 5, fixed 2 s": lambda c, r: RealBreaker(c, r, recovery="2s", recovery_max="2s"),
    "rate 50 %/10 s min 10, 1 s → 2 s": lambda c, r: RealBreaker(
        c, r, mode="rate", window="10s", min_requests=10, recovery="1s", recovery_max="2s"
    ),
    "rate 50 %/30 s min 20, 0.5 s → 2 s (shipped)": lambda c, r: RealBreaker(
        c, r, mode="rate", window="30s", min_requests=20, recovery="500ms", recovery_max="2s"
    ),
    "wait for probe, 1 s → 2 s": lambda c, r: WaitForProbe(c, r, recovery="1s", recovery_max="2s"),
    "adaptive (SRE K=2, 2 s window)": lambda c, r: Adaptive(c, r, window=2.0),
    "adaptive (SRE K=2, 10 s window)": lambda c, r: Adaptive(c, r, window=10.0),
}


# ---------------------------------------------------------------- the simulation


@dataclass
class Case:
    outage: float
    kind: str  # "error" (fast 503) or "stall" (no answer until per_try)
    rate: float
    seed: int


@dataclass
class Result:
    last_refusal_after: float  # seconds after recovery (negative: none after it)
    ok: int = 0
    total: int = 0
    tries_in_outage: int = 0
    fast_in_outage: int = 0
    in_outage: int = 0
    refusals: list[float] = field(default_factory=list)


def run_case(make: Callable[[Clock, random.Random], Gate], case: Case) -> Result:
    clock, rng = Clock(), random.Random(case.seed)
    gate = make(clock, random.Random(case.seed + 1))
    end_outage = OUTAGE_START + case.outage
    horizon = end_outage + TAIL
    events: list[tuple[float, int, Callable[[], None]]] = []
    seq = 0

    def at(t: float, fn: Callable[[], None]) -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(events, (t, seq, fn))

    result = Result(last_refusal_after=-math.inf)

    def upstream(t: float) -> tuple[float, Outcome]:
        """(latency, outcome) of a try sent at ``t``."""
        if OUTAGE_START <= t < end_outage:
            if case.kind == "stall":
                return PER_TRY, TIMEOUT
            return 0.02, E503
        if rng.random() < 0.02:
            return 0.05, E503
        return rng.lognormvariate(math.log(0.08), 0.5), OK

    def request(t0: float) -> None:
        deadline = t0 + TOTAL
        counted = OUTAGE_START - 2 <= t0 < horizon
        if counted:
            result.total += 1
        in_outage = OUTAGE_START <= t0 < end_outage

        def finish(ok: bool) -> None:
            if counted and ok:
                result.ok += 1
            if in_outage:
                result.in_outage += 1
                if clock.now - t0 < 0.05:
                    result.fast_in_outage += 1

        def attempt(n: int, last_ok: bool | None) -> None:
            try:
                token = gate.admit()
            except BreakerOpen:
                later = gate.waits_for_probe()
                if later is not None and clock.now + max(later, 0.01) < deadline:
                    at(clock.now + max(later, 0.01), lambda: attempt(n, last_ok))
                    return
                if counted:
                    result.refusals.append(clock.now)
                finish(bool(last_ok))
                return
            latency, outcome = upstream(clock.now)
            latency = min(latency, PER_TRY, deadline - clock.now)
            if OUTAGE_START <= clock.now < end_outage:
                result.tries_in_outage += 1

            def answered() -> None:
                gate.done(token, outcome)
                ok = outcome is OK
                if ok or n >= ATTEMPTS:
                    finish(ok)
                    return
                wait = rng.uniform(0, BACKOFF * 2 ** (n - 1))
                if clock.now + wait >= deadline:
                    finish(False)
                    return
                at(clock.now + wait, lambda: attempt(n + 1, ok))

            at(clock.now + latency, answered)

        attempt(1, None)

    t = 0.0
    while t < horizon:
        t += rng.expovariate(case.rate)
        at(t, lambda t=t: request(t))
    while events:
        when, _, fn = heapq.heappop(events)
        clock.now = when
        fn()
    after = [r - end_outage for r in result.refusals if r >= end_outage]
    result.last_refusal_after = max(after) if after else -math.inf
    return result


def grid(seeds: int) -> list[Case]:
    return [
        Case(outage, kind, rate, seed)
        for outage in (1.0, 7.0, 30.0, 60.0)
        for kind in ("error", "stall")
        for rate in (1.0, 5.0, 40.0)
        for seed in range(seeds)
    ]


def summarize(name: str, results: list[tuple[Case, Result]]) -> dict[str, Any]:
    last = [r.last_refusal_after for _, r in results]
    worst = max(last)
    ok = [r.ok / r.total for _, r in results if r.total]
    load = [r.tries_in_outage / c.outage for c, r in results]
    fast = [r.fast_in_outage / r.in_outage for _, r in results if r.in_outage]
    return {
        "candidate": name,
        "worst_last_refusal_s": None if worst == -math.inf else round(worst, 2),
        "cases_over_3s": sum(1 for v in last if v > 3.0),
        "ok_median": statistics.median(ok),
        "ok_worst": min(ok),
        "tries_per_s_in_outage_median": statistics.median(load),
        "fail_fast_median": statistics.median(fast) if fast else 0.0,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="2 seeds")
    args = ap.parse_args(argv)
    cases = grid(2 if args.quick else args.seeds)
    print(f"{len(cases)} cases per candidate: outages 1/7/30/60 s, error or stall, 1/5/40 req/s\n")
    print(
        "| candidate | worst last refusal after recovery | cases > 3 s | ok % median | ok % worst |"
        " tries/s to the failing upstream (median) | fail-fast % in outage (median) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, make in CANDIDATES.items():
        row = summarize(name, [(c, run_case(make, c)) for c in cases])
        last = "none" if row["worst_last_refusal_s"] is None else f"{row['worst_last_refusal_s']:.2f} s"
        print(
            f"| {name} | {last} | {row['cases_over_3s']} | {100 * row['ok_median']:.1f} |"
            f" {100 * row['ok_worst']:.1f} | {row['tries_per_s_in_outage_median']:.2f} |"
            f" {100 * row['fail_fast_median']:.0f} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
