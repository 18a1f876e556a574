"""The ceiling of the scenario suite: what share of each member's requests any proxy could have answered.

``fault_suite.py`` measures proxies; this asks what the best imaginable proxy could do with the same
schedules, so that a target like "reads and sends at 99 %" can be checked against what the faults leave
possible. No process runs: every member's scenario is generated from its seed (``gateway_sim/suite.py``) and
the client's schedule rebuilt (``fault_replay.build_schedule``), exactly as the suite replays them.

The ideal proxy (an upper bound: it is allowed everything a real proxy is not):

- it knows when the upstream will answer, and waits for that moment, up to ``--wait`` seconds per
  request (the shipped ``gateway.yaml``'s ``total`` per upstream by default; ``--wait 30`` is the
  client's own timeout), then sends once and succeeds;
- an upstream "can answer" a route at a moment when no outage window written for that route (or
  inherited from its upstream) with a rate of 100 % is active; a window of a lower rate (errors,
  throttling, resets) is always beaten by resending, and brownouts are ignored (latency never fails it);
- a read (GET) is also answered when an earlier request of the same cache key (route, user, account
  or media id: what ``vary`` separates) came at a moment the upstream could answer: a cache that never
  expires and serves stale on any error;
- what fails after a send went out is the one fault no proxy can beat, because a resend could deliver
  twice: answers lost after Meta took the send (``lost_answers``), connections reset or stalled by a
  partial window, and the background's dropped connections. A send counts as failed with those rates
  (their expected share) at the moment it goes out.

    python bench/suite_ceiling.py --seeds 1,3,5,7,9,11,13,15,17,19,111-120
    python bench/suite_ceiling.py --seeds 1-19 --wait 30 --compare /tmp/suite.json   # next to a measured run

``--compare`` reads a ``fault_suite.py --json`` file and prints each path's median next to the ceiling's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))
sys.path.insert(0, str(BENCH_DIR.parent))

import fault_replay as fr  # noqa: E402
import fault_suite as fs  # noqa: E402

from gateway_sim.scenario import Outage, parse_scenario  # noqa: E402

STEP = 0.1  # the scenario windows' resolution
GROUPS = {"reads": ("read",), "sends": ("send",), "reads+sends": ("read", "send"), "writes": ("write",)}


def shipped_waits() -> dict[str, float]:
    """Per sim upstream, the ``total`` of the shipped gateway.yaml (the longest a request is held there)."""
    from gateway.config import parse_config

    policies = {p.name: p for p in parse_config(fs.GATEWAY_YAML.read_text()).policies}
    return {name: policies[name].default.timeouts.total for name in fr.SIM_UPSTREAMS}


def _able(windows: Sequence[Outage], t: float) -> bool:
    """No window of 100 % (other than lost answers) is active at ``t``."""
    return not any(o.rate >= 1.0 and o.when != "after_body" and o.active(t) for o in windows)


def _unsafe(windows: Sequence[Outage], background: float, t: float) -> float:
    """The share of sends going out at ``t`` that fail after they were sent: answers lost after Meta
    took them, resets and stalls of a partial window, the background's dropped connections."""
    lost = max((o.rate for o in windows if o.when == "after_body" and o.active(t)), default=0.0)
    partial = max(
        (o.rate for o in windows if o.mode in ("reset", "timeout") and o.rate < 1.0 and o.when != "after_body"
         and o.active(t)),
        default=0.0,
    )  # fmt: skip
    return min(1.0, lost + partial + background)


def _key(call: fr.Call) -> tuple[str, str, str]:
    return (call.route, call.path, call.headers.get("Authorization", ""))


def member_ceiling(
    member: fs.Member, rate: float, weights: dict[str, float], waits: dict[str, float]
) -> dict[str, Any]:
    """Per route and group: requests measured and the expected number an ideal proxy answers."""
    scenario = parse_scenario(member.text, member.name)
    calls = fr.build_schedule(rate, member.run, weights, member.schedule_seed)
    cached: set[tuple[str, str, str]] = set()
    per_route: dict[str, list[float]] = {}
    for call in calls:
        route = fr.ROUTE_BY_NAME[call.route]
        behaviour = scenario.effective(route.upstream, route.sim_route)
        windows = list(behaviour.outages or ())
        now = _able(windows, call.at)
        wait = waits.get(route.upstream, 0.0)
        sent = next(
            (call.at + i * STEP for i in range(int(wait / STEP) + 1) if _able(windows, call.at + i * STEP)), None
        )  # the first moment the upstream answers, within the wait
        key = _key(call)
        ok = 1.0 if sent is not None or (call.method == "GET" and key in cached) else 0.0
        if route.kind == "send" and sent is not None:
            background = behaviour.resets.rate if behaviour.resets is not None else 0.0
            ok -= _unsafe(windows, background, sent)
        if call.method == "GET" and now:
            cached.add(key)
        if call.at >= member.warmup:
            per_route.setdefault(call.route, []).append(ok)
    out: dict[str, Any] = {
        name: {"requests": len(v), "ceiling": sum(v) / len(v) if v else None} for name, v in per_route.items()
    }
    for group, kinds in GROUPS.items():
        values = [x for name, v in per_route.items() if fr.ROUTE_BY_NAME[name].kind in kinds for x in v]
        out[group] = {"requests": len(values), "ceiling": sum(values) / len(values) if values else None}
    return out


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{x * 100:.1f} %"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=fs.parse_members, required=True, help="members: seeds,1-19,101-120")
    ap.add_argument("--wait", type=float, default=None, help="seconds the ideal proxy may hold a request (default:"
                    " the shipped gateway.yaml's total per upstream)")  # fmt: skip
    ap.add_argument("--rate", type=float, default=20.0)
    ap.add_argument("--length", type=float, default=55.0)
    ap.add_argument("--warmup", type=float, default=10.0)
    ap.add_argument("--tail", type=float, default=15.0)
    ap.add_argument("--compare", type=Path, help="a fault_suite.py --json file: its medians next to the ceiling")
    ap.add_argument("--json", type=Path, help="also write the per-member ceilings here")
    args = ap.parse_args(argv)
    waits = shipped_waits() if args.wait is None else dict.fromkeys(fr.SIM_UPSTREAMS, args.wait)
    weights = {r.name: r.weight for r in fr.ROUTES}
    members = [fs.make_member(n, args.length, args.warmup, args.tail) for n in args.seeds]
    ceilings = {m.name: member_ceiling(m, args.rate, weights, waits) for m in members}
    rows = [r.name for r in fr.ROUTES] + list(GROUPS)
    measured: dict[str, dict[str, list[float]]] = {}
    if args.compare:
        data = json.loads(args.compare.read_text())
        for run in data["runs"]:
            if run.get("repeat", 0) or "error" in run or run["member"] not in ceilings:
                continue
            blocks = {**run["routes"], **{g: run["kinds"][g] for g in GROUPS if g in run["kinds"]}}
            blocks.setdefault("reads", run["kinds"].get("read"))
            blocks.setdefault("sends", run["kinds"].get("send"))
            blocks.setdefault("writes", run["kinds"].get("write"))
            for row in rows:
                if blocks.get(row):
                    measured.setdefault(run["path"], {}).setdefault(row, []).append(blocks[row]["success_rate"])
    shown = ", ".join(f"{k} {v:g} s" for k, v in waits.items())
    print(f"# Suite ceiling: {len(members)} members ({', '.join(ceilings)}), an ideal proxy waiting up to: {shown}\n")
    head = ["route", "ceiling median", "ceiling worst", *(f"{p} median" for p in measured)]
    print("| " + " | ".join(head) + " |\n|" + "---|" + "---:|" * (len(head) - 1))
    for row in rows:
        values = [c[row]["ceiling"] for c in ceilings.values() if c.get(row, {}).get("ceiling") is not None]
        cells = [_pct(statistics.median(values)) if values else "—", _pct(min(values)) if values else "—"]
        cells += [_pct(statistics.median(m[row])) if m.get(row) else "—" for m in measured.values()]
        print(f"| {row} | " + " | ".join(cells) + " |")
    worst = sorted(ceilings.items(), key=lambda kv: kv[1]["reads+sends"]["ceiling"])
    print(
        "\nMembers by reads+sends ceiling: " + ", ".join(f"{n} {_pct(c['reads+sends']['ceiling'])}" for n, c in worst)
    )
    if args.json:
        args.json.write_text(json.dumps({"waits": waits, "members": ceilings}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
