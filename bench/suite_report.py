"""The scenario suite's numbers: aggregation, noise margin, losses and the markdown report (issue 13).

Works on the JSON that ``fault_replay.py --suite`` writes (layout in bench/README.md), so a saved run can be
re-read, re-judged with another margin, or merged with a later run of more gateway configs:

    python bench/suite_report.py bench/results/fault-suite-2026-11-23.json
    python bench/suite_report.py before.json tuned.json --margin 2     # runs of both; a later file wins a tie

Rows are the mix's routes and the groups ``reads+sends``, ``reads``, ``sends``, ``writes``, ``generations``,
``all``. Per half (``all``, ``tuning``, ``holdout``), path and row: the median, mean and worst member's
success rate and the median upstream requests per client request; duplicate sends per path. A gateway path
loses to ``direct`` or ``nginx`` on a member and row when its rate is below theirs by more than the margin.

The margin is ``--margin`` when given. Otherwise it comes from the repeats (``--repeat K``: the first K
members replayed once more through every path, same fault windows and requests, the sim's random draws
reseeded): the spread of a row is |first - second| success rate. If the noise of a comparison is normal,
the median spread is 0.674 of its standard deviation, so 2.9 x the median spread bounds 95 % of it; the
median (not the widest spread) is used because a path whose two replays differ widely is itself unstable,
and that instability is what the suite must show, not hide. The margin is never under 1 percentage point.
Without repeats, it is twice the binomial standard error of the difference.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

GROUPS = {  # report row -> fault_replay.summarize()'s kind
    "reads+sends": "reads+sends",
    "reads": "read",
    "sends": "send",
    "writes": "write",
    "generations": "generate",
    "all": "all",
}
HALVES = (("all", "all members"), ("tuning", "tuning half"), ("holdout", "held-out half"))
MIN_MARGIN = 0.01  # one percentage point: about one request of a route in one member
MEDIAN_TO_95 = 2.9  # 1.96 / 0.674: a normal noise's 95 % bound over its median absolute value
LOSS_ROWS_SHOWN = "routes and all"  # the markdown lists losses on routes and on all routes; the JSON has every row


def block(run: dict[str, Any], row: str) -> dict[str, Any]:
    """A run's figures for a row (a route, or a group of routes)."""
    if row in GROUPS:
        return dict(run.get("kinds", {}).get(GROUPS[row]) or {})
    return dict(run.get("routes", {}).get(row) or {})


def rate(run: dict[str, Any], row: str) -> float | None:
    value = block(run, row).get("success_rate")
    return None if value is None else float(value)


def amplification(run: dict[str, Any], row: str) -> float | None:
    b = block(run, row)
    value = b.get("amplification")
    return b.get("sim_route_amplification") if value is None else value


def noise(runs: Sequence[dict[str, Any]], rows: Sequence[str]) -> dict[str, Any]:
    """Spread between two replays of one member through one path, per row."""
    first = {(r["member"], r["path"]): r for r in runs if r["repeat"] == 0 and "error" not in r}
    spreads: dict[str, list[float]] = {row: [] for row in rows}
    pairs = []
    for r in runs:
        a = first.get((r["member"], r["path"]))
        if r["repeat"] != 1 or "error" in r or a is None:
            continue
        pair: dict[str, Any] = {"member": r["member"], "path": r["path"]}
        for row in rows:
            x, y = rate(a, row), rate(r, row)
            if x is not None and y is not None:
                spreads[row].append(abs(x - y))
                pair[row] = round(abs(x - y), 4)
        pairs.append(pair)
    median = {row: (statistics.median(v) if v else None) for row, v in spreads.items()}
    return {
        "pairs": pairs,
        "max": {row: (max(v) if v else None) for row, v in spreads.items()},
        "median": median,
        "margin": {row: (None if m is None else max(MIN_MARGIN, MEDIAN_TO_95 * m)) for row, m in median.items()},
    }


def margin(row: str, a: dict[str, Any], b: dict[str, Any], measured: dict[str, Any], fixed: float | None) -> float:
    """How far below ``b``'s rate ``a``'s may be and still be a tie (see the module's docstring)."""
    if fixed is not None:
        return fixed
    if measured.get("margin", {}).get(row) is not None:
        return float(measured["margin"][row])
    pa, pb = rate(a, row) or 0.0, rate(b, row) or 0.0
    na, nb = int(block(a, row).get("requests", 0)), int(block(b, row).get("requests", 0))
    p = (pa * na + pb * nb) / max(1, na + nb)
    se = math.sqrt(max(p * (1 - p), 1e-9) * (1 / max(1, na) + 1 / max(1, nb)))
    return max(MIN_MARGIN, 2 * se)


def aggregate(
    runs: Sequence[dict[str, Any]],
    paths: Sequence[str],
    rows: Sequence[str],
    measured: dict[str, Any],
    fixed: float | None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(summary per half, path and row; losses of gateway paths to direct or nginx, one per member, path, row)."""
    first = [r for r in runs if r["repeat"] == 0 and "error" not in r]
    summary: dict[str, Any] = {}
    for half, _ in HALVES:
        chosen = [r for r in first if half == "all" or r["half"] == half]
        if not chosen:
            continue
        summary[half] = {}
        for path in paths:
            mine = [r for r in chosen if r["path"] == path]
            if not mine:
                continue
            out: dict[str, Any] = {}
            for row in rows:
                rates = [(v, r["member"]) for r in mine if (v := rate(r, row)) is not None]
                amps = [v for r in mine if (v := amplification(r, row)) is not None]
                if rates:
                    worst = min(rates, key=lambda vm: vm[0])
                    out[row] = {
                        "median": statistics.median(v for v, _ in rates),
                        "mean": statistics.fmean(v for v, _ in rates),
                        "worst": worst[0],
                        "worst_member": worst[1],
                        "members": len(rates),
                        "amplification_median": statistics.median(amps) if amps else None,
                    }
            dups = [int(r.get("duplicate_sends", 0)) for r in mine]
            out["duplicate_sends"] = {"total": sum(dups), "max": max(dups), "members_with": sum(d > 0 for d in dups)}
            summary[half][path] = out
    by = {(r["member"], r["path"]): r for r in first}
    losses = []
    for r in first:
        if r["path"] in ("direct", "nginx"):
            continue
        for row in rows:
            x = rate(r, row)
            against = {}
            for other in ("direct", "nginx"):
                b = by.get((r["member"], other))
                y = None if b is None else rate(b, row)
                if x is None or y is None or b is None:
                    continue
                m = margin(row, r, b, measured, fixed)
                if x < y - m:
                    against[other] = {"rate": y, "diff": x - y, "margin": m}
            if against:
                losses.append({"member": r["member"], "half": r["half"], "path": r["path"], "row": row, "rate": x,
                               "against": against})  # fmt: skip
    return summary, losses


# --------------------------------------------------------------------------- markdown


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{v * 100:.2f} %"


def _pp(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.1f}"


def _x(v: float | None) -> str:
    return "—" if v is None else f"{v:.2f}"


def _fault(f: dict[str, Any]) -> str:
    where = f["upstream"] + (f".{f['route']}" if f.get("route") else "")
    return f"{where} {f['kind']} {f['duration_s']:g} s ({f['detail']})"


def _cell(b: dict[str, Any] | None) -> str:
    return "—" if not b else f"{_pct(b['median'])} / {_pct(b['worst'])} ({b['worst_member']})"


def _table(header: str, names: Sequence[str], rows: Sequence[str], cell: Any) -> list[str]:
    lines = [f"| {header} | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    lines += [f"| {row} | " + " | ".join(cell(row, p) for p in names) + " |" for row in rows]
    return lines


def report_markdown(data: dict[str, Any]) -> str:
    """The suite's report: what was run, the tables, the losses, every member, the noise."""
    meta, summary, paths, rows = data["meta"], data["summary"], data["meta"]["paths"], data["meta"]["rows"]
    m, members = meta["machine"], meta["members"]
    tuning = [x["name"] for x in members if x["half"] == "tuning"]
    holdout = [x["name"] for x in members if x["half"] == "holdout"]
    judged = (
        f"the fixed margin {meta['margin'] * 100:g} pp"
        if meta.get("margin") is not None
        else "the noise margin of the row (see Noise: 2.9 x the median spread between two replays, at least 1 pp)"
        if data["noise"]["pairs"]
        else "twice the binomial standard error of the difference (no repeats were run), at least 1 pp"
    )
    lines = [
        f"# Fault suite, {meta['date']}{' (quick)' if meta['quick'] else ''}",
        "",
        f"- {len(members)} members. Tuning half: {', '.join(tuning) or 'none'}. Held-out half:"
        f" {', '.join(holdout) or 'none'}. Generated by `gateway_sim/suite.py` (length {meta['length']:g} s, the first"
        f" {meta['warmup']:g} s fault-free and not measured, {meta['tail']:g} s of recovery after the last fault);"
        f" `seeds` is config/scenarios/seeds.yaml with its windows {meta['warmup']:g} s later.",
        f"- Open loop, {meta['rate']:g} req/s (mix: {', '.join(f'{k} {v:g}' for k, v in meta['weights'].items())}),"
        f" client timeout {meta['client_timeout']:g} s; runs of {min(x['run_s'] for x in members):g} to"
        f" {max(x['run_s'] for x in members):g} s of scenario clock.",
        "- Paths: " + "; ".join(f"`{name}`: {p['what']}" for name, p in paths.items()) + ".",
        f"- {meta['parallel']} runs at a time, each against its own `gateway sim`; wall clock"
        f" {meta['wall_s'] / 60:.1f} min. Machine: {m['nproc']} CPU ({m['cpu']}), load average at start {m['loadavg']},"
        f" Python {m['python']}, nginx {m['nginx']}, gateway {m['gateway']}.",
        f"- A gateway path loses when its success rate is below direct's or nginx's by more than {judged}.",
        "",
    ]
    for half, title in HALVES:
        if half not in summary:
            continue
        names = [p for p in paths if p in summary[half]]
        lines += [f"## Success rate: median / worst member ({title})", ""]
        lines += _table("route", names, rows, lambda row, p, h=half: _cell(summary[h][p].get(row)))
        lines.append("")
    if "all" in summary:
        names = [p for p in paths if p in summary["all"]]
        lines += ["## Upstream requests per client request (median over members) and duplicate sends", ""]
        lines += _table(
            "route", names, rows, lambda row, p: _x((summary["all"][p].get(row) or {}).get("amplification_median"))
        )
        dups = [summary["all"][p]["duplicate_sends"] for p in names]
        lines.append("| **duplicate sends** (total, members with any) | " + " | ".join(
            f"{d['total']} ({d['members_with']})" for d in dups) + " |")  # fmt: skip
        lines += ["", "conversations and bot_profiles share the sim's `supabase.rest_read`: one figure for both.", ""]
    shown = [x for x in data["losses"] if x["row"] not in GROUPS or x["row"] == "all"]
    lines += [f"## Where a gateway path loses to direct or nginx ({len(shown)} member × path × row)", ""]
    gateways = [p for p in paths if p not in ("direct", "nginx")]
    if shown:
        count = len({x["name"] for x in members})
        lines += [f"Members (of {count}) where the path is below direct / below nginx by more than the margin:", ""]

        def losing(row: str, p: str) -> str:
            n = [
                sum(1 for x in shown if x["path"] == p and x["row"] == row and o in x["against"])
                for o in ("direct", "nginx")
            ]
            return f"{n[0]} / {n[1]}"

        lines += _table("route", gateways, [r for r in rows if r not in GROUPS or r == "all"], losing)
        lines.append("")
    if shown:
        lines += [
            "Routes and all routes (the JSON also has the groups). Diff in percentage points, margin in brackets.",
            "",
            "| path | member | half | route | its rate | vs direct | vs nginx |",
            "|---|---|---|---|---:|---:|---:|",
        ]
        order = {x["name"]: i for i, x in enumerate(members)}
        for x in sorted(shown, key=lambda x: (x["path"], x["half"], order.get(x["member"], 0), rows.index(x["row"]))):
            vs = [
                f"{_pct(a['rate'])}: {a['diff'] * 100:+.1f} ({a['margin'] * 100:.1f})"
                if (a := x["against"].get(o))
                else ""
                for o in ("direct", "nginx")
            ]
            lines.append(
                f"| {x['path']} | {x['member']} | {x['half']} | {x['row']} | {_pct(x['rate'])} | {vs[0]} | {vs[1]} |"
            )
    else:
        lines.append("None.")
    lines += ["", "## Per member: success of all routes / of reads and sends", ""]
    lines += [
        "| member | half | run s | faults | " + " | ".join(paths) + " |",
        "|---|---|---:|---|" + "---:|" * len(paths),
    ]
    by = {(r["member"], r["path"]): r for r in data["runs"] if r["repeat"] == 0}
    for x in members:
        cells = []
        for p in paths:
            r = by.get((x["name"], p))
            ok = r is not None and "error" not in r
            cells.append(
                f"{_pct(rate(r, 'all'))} / {_pct(rate(r, 'reads+sends'))}" if ok and r else "error" if r else "—"
            )
        faults = "; ".join(_fault(f) for f in x["faults"])
        lines.append(f"| {x['name']} | {x['half']} | {x['run_s']:g} | {faults} | " + " | ".join(cells) + " |")
    lines += ["", "## Noise", ""]
    pairs = data["noise"]["pairs"]
    if pairs:
        lines += [
            f"{len(pairs)} runs replayed twice (members {', '.join(sorted({p['member'] for p in pairs}))}, every path)."
            " The second replay keeps the fault windows and the requests and reseeds the sim's random draws."
            " Spread: |first − second| success rate, in percentage points; margin: max(1, 2.9 × median spread).",
            "",
            "| route | median spread | widest spread | margin |",
            "|---|---:|---:|---:|",
        ]
        n = data["noise"]
        lines += [
            f"| {row} | {_pp(n['median'].get(row))} | {_pp(n['max'].get(row))} | {_pp(n['margin'].get(row))} |"
            for row in rows
        ]
        wide = [(p, [k for k in rows if (p.get(k) or 0) > 0.05]) for p in pairs]
        if any(keys for _, keys in wide):
            lines += ["", "Pairs more than 5 pp apart on some row (the path is itself unstable on that member):", ""]
            lines += [
                f"- {p['member']} {p['path']}: " + ", ".join(f"{k} {p[k] * 100:.1f}" for k in keys)
                for p, keys in wide
                if keys
            ]
    else:
        lines.append("No member was replayed twice (`--repeat 0`): the margin is twice the binomial standard error.")
    errors = [r for r in data["runs"] if "error" in r]
    if errors:
        lines += ["", "## Runs that failed", ""] + [f"- {r['member']} {r['path']}: {r['error'][-300:]}" for r in errors]
    return "\n".join(lines) + "\n"


def judge(data: dict[str, Any], fixed: float | None) -> dict[str, Any]:
    """Fill ``data``'s noise, summary and losses from its runs (``fixed``: a margin as a fraction, or None)."""
    rows, paths = data["meta"]["rows"], list(data["meta"]["paths"])
    data["meta"]["margin"] = fixed
    data["noise"] = noise(data["runs"], rows)
    data["summary"], data["losses"] = aggregate(data["runs"], paths, rows, data["noise"], fixed)
    return data


def merge(files: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Several suite JSON files as one: members, paths and runs united; a later file's run of a member, path
    and repeat replaces an earlier one."""
    out: dict[str, Any] = json.loads(json.dumps(files[0]))
    runs = {(r["member"], r["path"], r["repeat"]): r for r in out["runs"]}
    members = {x["name"]: x for x in out["meta"]["members"]}
    for data in files[1:]:
        runs.update({(r["member"], r["path"], r["repeat"]): r for r in data["runs"]})
        members.update({x["name"]: x for x in data["meta"]["members"]})
        out["meta"]["paths"].update(data["meta"]["paths"])
        out["meta"]["wall_s"] += data["meta"]["wall_s"]
    out["runs"], out["meta"]["members"] = list(runs.values()), list(members.values())
    return out


def read_json(path: Path) -> dict[str, Any]:
    """A suite's JSON file, gzipped (``.gz``) or not."""
    raw = path.read_bytes()
    data: dict[str, Any] = json.loads(gzip.decompress(raw) if path.suffix == ".gz" else raw)
    return data


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Compact JSON; gzipped when ``path`` ends in ``.gz``."""
    raw = json.dumps(data, separators=(",", ":")).encode()
    path.write_bytes(gzip.compress(raw, mtime=0) if path.suffix == ".gz" else raw)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Re-read (and merge) fault suite JSON files; print the markdown report.")
    ap.add_argument("files", nargs="+", type=Path, help="suite JSON files (.json or .json.gz)")
    ap.add_argument("--margin", type=float, default=None, help="fixed noise margin in percentage points")
    ap.add_argument("--json", type=Path, default=None, help="write the merged, re-judged JSON here")
    args = ap.parse_args(argv)
    try:
        data = merge([read_json(f) for f in args.files])
    except (OSError, ValueError, KeyError) as exc:
        print(f"cannot read the suite's JSON: {exc}", file=sys.stderr)
        return 2
    judge(data, None if args.margin is None else args.margin / 100)
    print(report_markdown(data), end="")
    if args.json is not None:
        write_json(args.json, data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
