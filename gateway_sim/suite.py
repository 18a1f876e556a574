"""Generated fault schedules for ``gateway sim``: one scenario per seed, the members of the scenario suite.

Owns the draw (issue 13): for a seed, a ``Scenario`` of ``gateway_sim.scenario`` (a background like ``seeds``,
then faults on each simulated upstream), the list of faults it placed (for reports), and the length of
scenario clock a replay needs to see every fault and the recovery after it. The same seed always gives
the same scenario, byte for byte: every number comes from one ``random.Random`` seeded with the seed,
drawn in a fixed order. Nothing here does I/O.

Per upstream (graph, gemini, supabase, lookaside) the background is drawn around the ``seeds`` scenario
(lognormal latencies with a 2 s cap, 1-8 % of the API's usual transient errors, a few dropped
connections), then 1-3 faults (lookaside 0-2) of these kinds:

- ``outage``: every request fails for 1-60 s (log-uniform): a 503 in the API's shape with its code
  (Graph ``code: 2``, Gemini ``UNAVAILABLE``, PostgREST ``PGRST000``-``PGRST002``), a plain 503 from the
  platform's proxy (no API code, sometimes a Retry-After), connections refused, connections reset, or
  stalls (the sim holds the request: ``timeout``);
- ``brownout``: latencies ×5 to ×20 for 5-30 s;
- ``errors``: 5-50 % of requests answer one transient error for 5-30 s;
- ``flapping``: 3-8 short outages (0.5-3 s down, 1-6 s up);
- ``throttle``: 30-100 % of requests answer 429 (or Graph's throttling codes 130429, 80007, 4 on
  HTTP 400; Gemini's RESOURCE_EXHAUSTED with a short or a long RetryInfo, or none) for 3-25 s, with
  or without Retry-After;
- ``lost_answers`` (Graph sends only): 5-50 % of sends are taken by Meta, then the connection drops
  before the answer (a resend would deliver twice), for 3-25 s.

Timing: the first ``warmup`` seconds are fault-free (a replay warms caches and pools there, unmeasured);
faults start from ``warmup`` + 2 s and end by ``length`` - ``tail``. A fault too long for that window
(an outage of up to 60 s) starts early and makes the run longer: ``run`` is the end of the last fault
plus ``tail`` seconds of recovery, and never less than ``length``.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass
from typing import Any

import yaml

from gateway.units import format_duration, parse_duration

from .routes import UPSTREAMS
from .scenario import Scenario, parse_scenario

__all__ = [
    "DEFAULT_LENGTH",
    "DEFAULT_TAIL",
    "DEFAULT_WARMUP",
    "KINDS",
    "Fault",
    "Generated",
    "delayed",
    "generate",
    "suite_seed",
]

DEFAULT_LENGTH = 55.0  # seconds of scenario clock a member fits in, unless a long outage needs more
DEFAULT_WARMUP = 10.0  # fault-free seconds at the start
DEFAULT_TAIL = 15.0  # seconds of recovery seen after the last fault ends
LEAD = 2.0  # no fault in the first seconds after the warm-up
MAX_OUTAGE = 60.0
KINDS = ("outage", "brownout", "errors", "flapping", "throttle", "lost_answers")
# How likely each kind is on each upstream (lost answers exist only for Graph's sends).
_KIND_WEIGHTS: dict[str, dict[str, float]] = {
    "graph": {"outage": 3, "brownout": 1.5, "errors": 2, "flapping": 1, "throttle": 2, "lost_answers": 1.5},
    "gemini": {"outage": 3, "brownout": 2, "errors": 2.5, "flapping": 1, "throttle": 2},
    "supabase": {"outage": 3.5, "brownout": 1.5, "errors": 2, "flapping": 1.5, "throttle": 1},
    "lookaside": {"outage": 3, "brownout": 2, "errors": 2, "flapping": 1, "throttle": 1},
}
_EVENTS: dict[str, tuple[tuple[int, ...], tuple[float, ...]]] = {  # (counts, weights) per upstream
    "graph": ((1, 2, 3), (4, 4, 2)),
    "gemini": ((1, 2, 3), (4, 4, 2)),
    "supabase": ((1, 2, 3), (4, 4, 2)),
    "lookaside": ((0, 1, 2), (3, 5, 2)),
}
_SUITE = re.compile(r"suite:(\d{1,9})", re.ASCII)


@dataclass(frozen=True, slots=True)
class Fault:
    """One fault placed in a schedule (what a report shows; the scenario holds the windows themselves)."""

    kind: str  # one of KINDS
    upstream: str
    route: str | None  # None: every route of the upstream
    start: float  # seconds on the scenario clock
    duration: float  # from the start of its first window to the end of its last
    detail: str  # what the requests see: "503 PGRST000", "refused", "latency x12", "30 % 500 code 131000"...

    @property
    def end(self) -> float:
        return self.start + self.duration

    def as_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "upstream": self.upstream,
            "route": self.route,
            "start_s": self.start,
            "duration_s": self.duration,
            "detail": self.detail,
        }


@dataclass(frozen=True, slots=True)
class Generated:
    """A member of the suite: its scenario, the faults placed, and how long a replay of it must run."""

    seed: int
    scenario: Scenario
    faults: tuple[Fault, ...]
    warmup: float  # fault-free seconds at the start
    run: float  # seconds of scenario clock to replay: every fault, then ``tail`` seconds of recovery
    text: str  # the scenario as YAML, a valid scenario file


def suite_seed(spec: str) -> int | None:
    """The seed of ``suite:SEED`` (``suite:17`` -> 17); None when ``spec`` is not of that form."""
    m = _SUITE.fullmatch(spec.strip())
    return int(m.group(1)) if m else None


def _s(seconds: float) -> str:
    """A duration with 0.1 s resolution, as scenario files write it."""
    return f"{round(seconds, 1):g}s"


def _pct(fraction: float) -> str:
    return f"{round(fraction * 100, 1):g}%"


class _Draw:
    """The seeded draws, always in the same order for a seed."""

    def __init__(self, seed: int, length: float, warmup: float, tail: float) -> None:
        # "simgen": the module's name before gateway_sim; kept, so that every seed draws the same schedule as before
        self.rng = random.Random(f"gateway-simgen:{seed}")
        self.lo = warmup + LEAD
        self.hi = max(self.lo + 1.0, length - tail)

    def uniform(self, a: float, b: float, step: float = 0.1) -> float:
        return round(self.rng.uniform(a, b) / step) * step

    def pick(self, options: list[Any] | tuple[Any, ...], weights: list[float] | tuple[float, ...] | None = None) -> Any:
        return self.rng.choices(list(options), weights=list(weights) if weights else None)[0]

    def chance(self, p: float) -> bool:
        return self.rng.random() < p

    def place(self, span: float) -> float:
        """A start for a fault lasting ``span`` s: inside [lo, hi - span] when it fits, else early."""
        room = self.hi - self.lo - span
        latest = self.lo + room if room > 0 else self.lo + min(5.0, self.hi - self.lo)
        return round(self.rng.uniform(self.lo, latest), 1)


# ----------------------------------------------------------------------------- the background


def _background(d: _Draw) -> dict[str, Any]:
    """``seeds``-like noise: lognormal latencies capped at 2 s and a few % of each API's transient errors."""

    def latency(p50_ms: tuple[float, float], ratio: tuple[float, float]) -> dict[str, str]:
        p50 = d.uniform(*p50_ms, step=5)
        return {"p50": f"{p50:g}ms", "p95": f"{round(min(p50 * d.uniform(*ratio), 1900.0)):g}ms", "max": "2s"}

    graph = {
        "latency": latency((80, 160), (5, 9)),
        "errors": {
            "rate": _pct(d.uniform(0.01, 0.05, 0.005)),
            "mix": [{"code": 131000, "weight": 3}, {"code": 2}, {"code": 130429}, {"code": 80007}],
        },
        "routes": {"send_message": {"resets": {"rate": _pct(d.uniform(0.0, 0.005, 0.001)), "when": "after_body"}}},
    }
    lookaside = {"latency": latency((50, 110), (6, 10)), "errors": {"rate": _pct(d.uniform(0.01, 0.03, 0.005))}}
    gemini = {
        "latency": latency((500, 900), (2, 2.6)),
        "stream": {"events": 5, "interval": "100ms"},
        "errors": {
            "rate": _pct(d.uniform(0.02, 0.08, 0.005)),
            "mix": [{"status": 503, "weight": 3}, {"status": 500}, {"status": 429, "retry_delay": "1s"}],
        },
    }
    supabase = {
        "latency": latency((40, 80), (8, 15)),
        "errors": {
            "rate": _pct(d.uniform(0.01, 0.05, 0.005)),
            "mix": [
                {"code": "PGRST002", "weight": 3, "retry_after": "1s"},
                {"code": "PGRST003"},
                {"code": "57014"},
                {"status": 520},
            ],
        },
        "routes": {"auth_user": {"errors": {"rate": _pct(d.uniform(0.01, 0.04, 0.005))}}},
    }
    return {"graph": graph, "gemini": gemini, "supabase": supabase, "lookaside": lookaside}


# ----------------------------------------------------------------------------- the faults


def _outage_mode(d: _Draw, upstream: str) -> tuple[dict[str, Any], str]:
    """One way an upstream is down: (the outage's keys, a short description)."""
    way = d.pick(("api", "plain", "refused", "reset", "timeout"), (3, 1.5, 2, 1.5, 1.5))
    if way == "api":
        code = {
            "graph": d.pick((2, 131016, 133004), (4, 1, 1)),
            "lookaside": 2,
            "gemini": "UNAVAILABLE",
            "supabase": d.pick(("PGRST000", "PGRST001", "PGRST002"), (2, 1, 2)),
        }[upstream]
        return {"mode": 503, "code": code}, f"503 {code}" if isinstance(code, str) else f"503 code {code}"
    if way == "plain":
        keys: dict[str, Any] = {"mode": 503, "plain": True}
        if d.chance(0.5):
            keys["retry_after"] = _s(d.pick((1, 2, 5)))
        return keys, "503 plain" + (f", Retry-After {keys['retry_after']}" if "retry_after" in keys else "")
    if way == "timeout":
        return {"mode": "timeout"}, "stall (timeout)"
    return {"mode": way}, "connection refused" if way == "refused" else "connection reset"


def _partial(d: _Draw, upstream: str) -> tuple[dict[str, Any], str]:
    """One transient error answered to part of the requests."""
    options: dict[str, list[tuple[dict[str, Any], str]]] = {
        "graph": [({"mode": 500, "code": 131000}, "500 code 131000"), ({"mode": 503, "code": 2}, "503 code 2")],
        "lookaside": [({"mode": 500, "code": 131000}, "500 code 131000"), ({"mode": 503, "plain": True}, "503 plain")],
        "gemini": [
            ({"mode": 503, "code": "UNAVAILABLE"}, "503 UNAVAILABLE"),
            ({"mode": 500, "code": "INTERNAL"}, "500 INTERNAL"),
            ({"mode": 504, "code": "DEADLINE_EXCEEDED"}, "504 DEADLINE_EXCEEDED"),
        ],
        "supabase": [
            ({"mode": 503, "code": "PGRST002"}, "503 PGRST002"),
            ({"mode": 503, "code": "PGRST001"}, "503 PGRST001"),
            ({"mode": 504, "code": "PGRST003"}, "504 PGRST003"),
            ({"mode": 500, "code": "57014"}, "500 57014"),
            ({"mode": 520}, "520 (platform)"),
        ],
    }
    choice: tuple[dict[str, Any], str] = d.pick(options[upstream])
    return choice


_FLAP_API: dict[str, tuple[dict[str, Any], str]] = {
    "graph": ({"mode": 503, "code": 2}, "503 code 2"),
    "lookaside": ({"mode": 503, "code": 2}, "503 code 2"),
    "gemini": ({"mode": 503, "code": "UNAVAILABLE"}, "503 UNAVAILABLE"),
    "supabase": ({"mode": 503, "code": "PGRST002"}, "503 PGRST002"),
}


def _throttle(d: _Draw, upstream: str) -> tuple[dict[str, Any], str, str | None]:
    """A throttling answer: (keys, description, route or None for the whole upstream)."""
    retry_after = _s(d.pick((1, 2, 3, 5))) if d.chance(0.5) else None
    ra = {"retry_after": retry_after} if retry_after else {}
    shown_ra = f", Retry-After {retry_after}" if retry_after else ""
    if upstream == "graph":
        status, code = d.pick(((429, 130429), (400, 80007), (400, 4)), (2, 1, 1))
        return {"mode": status, "code": code, **ra}, f"{status} code {code}{shown_ra}", None
    if upstream == "gemini":
        way = d.pick(("short", "long", "plain"), (2, 1, 1))
        if way == "short":
            delay = _s(d.pick((1, 2, 3, 5)))
            return {"mode": 429, "code": "RESOURCE_EXHAUSTED", "retry_delay": delay}, f"429 RetryInfo {delay}", None
        if way == "long":
            return {"mode": 429, "code": "RESOURCE_EXHAUSTED"}, "429 RetryInfo 53s", None
        return {"mode": 429, "plain": True, **ra}, f"429 plain (no RetryInfo){shown_ra}", None
    if upstream == "supabase" and d.chance(0.4):
        return {"mode": 429, "code": "over_request_rate_limit"}, "429 over_request_rate_limit", "auth_user"
    return {"mode": 429, "plain": True, **ra}, f"429 plain{shown_ra}", None


def _faults(d: _Draw, upstream: str) -> list[tuple[Fault, list[dict[str, Any]], list[dict[str, Any]]]]:
    """The upstream's faults: each with its outage windows and brownout windows."""
    counts, weights = _EVENTS[upstream]
    out: list[tuple[Fault, list[dict[str, Any]], list[dict[str, Any]]]] = []
    kinds = _KIND_WEIGHTS[upstream]
    for _ in range(d.pick(counts, weights)):
        kind = d.pick(tuple(kinds), tuple(kinds.values()))
        route: str | None = None
        brownouts: list[dict[str, Any]] = []
        if kind == "outage":
            duration = round(math.exp(d.rng.uniform(0.0, math.log(MAX_OUTAGE))), 1)
            keys, detail = _outage_mode(d, upstream)
            start = d.place(duration)
            windows = [{"start": _s(start), "duration": _s(duration), **keys}]
        elif kind == "brownout":
            duration, factor = d.uniform(5, 30), d.uniform(5, 20, 0.5)
            start = d.place(duration)
            windows, detail = [], f"latency x{factor:g}"
            brownouts = [{"start": _s(start), "duration": _s(duration), "factor": factor}]
        elif kind == "errors":
            duration, rate = d.uniform(5, 30), d.uniform(0.05, 0.5, 0.01)
            keys, shown = _partial(d, upstream)
            start = d.place(duration)
            windows = [{"start": _s(start), "duration": _s(duration), "rate": _pct(rate), **keys}]
            detail = f"{_pct(rate)} {shown}"
        elif kind == "flapping":
            keys, shown = d.pick([_FLAP_API[upstream], ({"mode": "refused"}, "refused"), ({"mode": "reset"}, "reset")])
            cycles = [(d.uniform(0.5, 3), d.uniform(1, 6)) for _ in range(d.rng.randint(3, 8))]
            while len(cycles) > 3 and sum(down + up for down, up in cycles) > 30:
                cycles.pop()
            duration = round(sum(down + up for down, up in cycles) - cycles[-1][1], 1)
            start = d.place(duration)
            windows, at = [], start
            for down, up in cycles:
                windows.append({"start": _s(at), "duration": _s(down), **keys})
                at = round(at + down + up, 1)
            detail = f"{len(cycles)} x {shown}"
        elif kind == "throttle":
            duration, rate = d.uniform(3, 25), d.uniform(0.3, 1.0, 0.05)
            keys, shown, route = _throttle(d, upstream)
            start = d.place(duration)
            windows = [{"start": _s(start), "duration": _s(duration), "rate": _pct(rate), **keys}]
            detail = f"{_pct(rate)} {shown}"
        else:  # lost_answers
            duration, rate = d.uniform(3, 25), d.uniform(0.05, 0.5, 0.01)
            start = d.place(duration)
            route = "send_message"
            windows = [
                {
                    "start": _s(start),
                    "duration": _s(duration),
                    "rate": _pct(rate),
                    "mode": "reset",
                    "when": "after_body",
                }
            ]
            detail = f"{_pct(rate)} of sends taken, then the answer lost"
        out.append((Fault(kind, upstream, route, start, duration, detail), windows, brownouts))
    return out


def generate(
    seed: int, *, length: float = DEFAULT_LENGTH, warmup: float = DEFAULT_WARMUP, tail: float = DEFAULT_TAIL
) -> Generated:
    """The suite's member for ``seed``: the same scenario every time for the same arguments.

    ``length``: seconds of scenario clock the faults should fit in (a long outage may make ``run``
    longer); ``warmup``: fault-free seconds at the start; ``tail``: seconds of recovery after the last
    fault. Raises ValueError when ``length`` leaves no room for faults after the warm-up and the tail.
    """
    if seed < 0:
        raise ValueError(f"the seed must be 0 or more, got {seed}")
    if warmup < 0 or tail < 0 or length - tail - warmup - LEAD < 5:
        raise ValueError(
            f"length {length:g}s leaves under 5 s for faults after the warm-up ({warmup:g}s + {LEAD:g}s)"
            f" and before the tail ({tail:g}s)"
        )
    d = _Draw(seed, length, warmup, tail)
    upstreams = _background(d)
    faults: list[Fault] = []
    for upstream in UPSTREAMS:
        block = upstreams[upstream]
        own: list[dict[str, Any]] = []
        extra: dict[str, list[dict[str, Any]]] = {}
        slow: list[dict[str, Any]] = []
        for fault, windows, brownouts in _faults(d, upstream):
            faults.append(fault)
            (extra.setdefault(fault.route, []) if fault.route else own).extend(windows)
            slow.extend(brownouts)
        if own:
            block["outages"] = own
        if slow:
            block["brownouts"] = slow
        for route, windows in extra.items():  # a route's outages replace the upstream's: carry them over
            inherited = [w for w in own if w.get("mode") != "refused"]  # refused is the listener's, not a route's
            block.setdefault("routes", {}).setdefault(route, {})["outages"] = inherited + windows
    faults.sort(key=lambda f: (f.start, f.upstream, f.kind))
    run = round(max(length, *(f.end + tail for f in faults)), 1) if faults else length
    lines = [
        f"{f.upstream}{'.' + f.route if f.route else ''} {f.kind} {f.start:g}-{f.end:g} s: {f.detail}" for f in faults
    ]
    data = {
        "name": f"suite-{seed}",
        "description": f"generated by gateway_sim.suite for seed {seed}: replay {run:g} s"
        f" (the first {warmup:g} s fault-free); " + "; ".join(lines),
        "seed": seed,
        "defaults": {"resets": {"rate": _pct(d.uniform(0.0, 0.005, 0.001)), "when": "before_body"}},
        "upstreams": upstreams,
    }
    header = (
        f"# suite:{seed}, generated by gateway_sim/suite.py"
        f" (length {length:g}s, warm-up {warmup:g}s, tail {tail:g}s).\n"
        f"# Replay {run:g} s of scenario clock; faults:\n" + "".join(f"#   {line}\n" for line in lines)
    )
    text = header + yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=120, allow_unicode=True)
    scenario = parse_scenario(text, f"suite:{seed}")
    return Generated(seed, scenario, tuple(faults), warmup, run, text)


def delayed(scenario: Scenario, seconds: float) -> Scenario:
    """``scenario`` with every outage and brownout window starting ``seconds`` later (a fault-free lead-in).

    Windows that repeat (``every``) keep their period; none is active before its new start.
    """
    data = scenario.model_dump(mode="json", exclude_none=True)

    def shift(block: dict[str, Any]) -> None:
        for key in ("outages", "brownouts"):
            for window in block.get(key) or ():
                window["start"] = format_duration(parse_duration(window["start"]) + seconds)
        for route in (block.get("routes") or {}).values():
            if isinstance(route, dict):
                shift(route)

    shift(data.get("defaults", {}))
    for block in data.get("upstreams", {}).values():
        shift(block)
    text = yaml.safe_dump(data, sort_keys=False)
    return parse_scenario(text, scenario.name or "<delayed>").model_copy(update={"name": scenario.name})
