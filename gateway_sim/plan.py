"""What the scenario decides for each request to a simulated route, from its own seeded random stream.

Owns ``RoutePlan`` (one route's effective behaviour: its latency distribution, error rate and mix,
resets, outage and brownout windows) and ``Verdict`` (what it decided for one request: a latency,
then answer, API error, reset or stall, and whether an outage window caused it). Each request draws
the same numbers in the same order whatever is decided, so a seed and a request order give the same
verdicts on every run, and traffic on one route never shifts another route's draws.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Literal

from .common import ApiError
from .errors import DEFAULT_ERROR_STATUS, family
from .scenario import Behaviour, ErrorKind

__all__ = ["RoutePlan", "Verdict"]


@dataclass(slots=True)
class Verdict:
    """What the scenario decided for one request."""

    latency: float
    action: Literal["ok", "error", "reset", "timeout"] = "ok"
    error: ApiError | None = None
    when: str = "after_body"
    outage: bool = False


class RoutePlan:
    """One route's effective behaviour and its own seeded random stream.

    Each request draws the same numbers in the same order whatever is decided (a latency, then
    four uniforms), so a given seed and request order give the same decisions on every run, and
    traffic on one route never shifts another route's draws.
    """

    def __init__(self, upstream: str, route: str, behaviour: Behaviour, seed: int) -> None:
        self.upstream = upstream
        self.route = route
        self.behaviour = behaviour
        self.rng = random.Random(f"{seed}:{upstream}:{route}")
        shape = family(upstream, route)
        latency = behaviour.latency
        self._fixed = 0.0 if latency is None or latency.fixed is None else latency.fixed
        self._lognormal: tuple[float, float, float, float] | None = None
        if latency is not None and latency.p50 is not None:
            p50 = max(latency.p50, 1e-6)
            p95 = latency.p95 if latency.p95 is not None else p50
            sigma = math.log(max(p95, p50) / p50) / 1.6448536269514722
            high = latency.max if latency.max is not None else math.inf
            self._lognormal = (math.log(p50), sigma, latency.min, high)
        errors = behaviour.errors
        self._error_rate = 0.0 if errors is None else errors.rate
        kinds = errors.mix if errors is not None and errors.mix else (ErrorKind(status=DEFAULT_ERROR_STATUS[shape]),)
        total = sum(k.weight for k in kinds)
        acc = 0.0
        self._mix: list[tuple[float, ApiError]] = []
        for k in kinds:
            acc += k.weight / total
            self._mix.append((acc, ApiError(k.status, k.code, k.subcode, k.message, k.retry_after, k.retry_delay)))
        self._reset = behaviour.resets
        self._outages = tuple(o for o in behaviour.outages or () if o.mode != "refused")  # the listener's job
        self._brownouts = behaviour.brownouts or ()

    def sample_latency(self) -> float:
        if self._lognormal is None:
            return self._fixed
        mu, sigma, low, high = self._lognormal
        value = self.rng.lognormvariate(mu, sigma) if sigma > 0 else math.exp(mu)
        return min(max(value, low), high)

    def decide(self, t: float) -> Verdict:
        """The verdict for a request arriving ``t`` seconds after the scenario clock started."""
        verdict = Verdict(self.sample_latency())
        u_outage, u_reset, u_error, u_mix = (self.rng.random() for _ in range(4))
        verdict.latency *= max((b.factor for b in self._brownouts if b.active(t)), default=1.0)
        for outage in self._outages:
            if not outage.active(t):
                continue
            if u_outage >= outage.rate:  # missed: the rest of the draw, rescaled, decides the next window
                u_outage = (u_outage - outage.rate) / (1.0 - outage.rate)
                continue
            verdict.outage = True
            if outage.mode == "reset":
                verdict.action, verdict.when = "reset", outage.when or "before_body"
            elif outage.mode == "timeout":
                verdict.action = "timeout"
            else:
                verdict.action = "error"
                verdict.error = ApiError(
                    int(outage.mode), outage.code, None, None, outage.retry_after, outage.retry_delay, outage.plain
                )
            return verdict
        if self._reset is not None and u_reset < self._reset.rate:
            verdict.action, verdict.when = "reset", self._reset.when
        elif u_error < self._error_rate:
            verdict.action = "error"
            verdict.error = next((e for edge, e in self._mix if u_mix < edge), self._mix[-1][1])
        return verdict
