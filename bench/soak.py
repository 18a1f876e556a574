"""The soak benchmark (issue 8, item 6): does the gateway grow under steady faulty traffic?

Starts ``gateway sim`` on a scenario (``seeds`` by default) and ``python -m gateway run`` on
``config/examples/sim.yaml`` pointed at it (ports changed only, as ``fault_replay.py`` does), then drives a
steady open-loop rate of the inbox backend's mix (``fault_replay.py``'s routes and request builders) through
the gateway for a long time. Every ``--interval`` it samples the gateway process from the outside: RSS
(``VmRSS``), open file descriptors, threads, its TCP connections (from ``/proc/PID/net/tcp`` matched to the
socket inodes of ``/proc/PID/fd``: clients on the proxy port, connections to the sim, other states), CPU,
``gateway_inflight_requests`` and the cache's size (``/metrics``), and the requests that completed in the
interval (success rate, latency).

Verdict, on the samples after the warm-up: **no growth** when the least-squares slope of RSS is at most
``--max-rss-slope`` KiB/min and the fd floor (the lowest count among the last few samples minus the lowest
among the first few) grew by at most ``--max-fd-growth``. The exit status is 1 when growth is detected.

Writes ``soak-<date>.csv`` (one row per sample), ``soak-<date>.md`` and, when matplotlib is importable,
``soak-<date>.png`` under ``bench/results/``.

    python bench/soak.py                                   # seeds, 20 req/s, 30 min, a sample every 10 s
    python bench/soak.py --quick                           # 40 s, a sample every 2 s, 10 s warm-up
    python bench/soak.py --duration 2h --rate 40/s --warmup 10m
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import datetime as dt
import http.client
import math
import os
import re
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import aiohttp
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fault_replay import (
    CLIENT_TIMEOUT,
    HOST,
    ROUTES,
    SCENARIOS_DIR,
    SIM_UPSTREAMS,
    Call,
    Result,
    _one,
    _sigterm,
    build_schedule,
    http_request,
    machine,
    ok,
    parse_rate,
    parse_weights,
    percentile,
    sim_get_stats,
    sim_restart,
    start_gateway,
    start_sim,
)
from overhead import Proc, Processes, cpu_seconds, proc_status, rss_kib

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
FLOOR_WINDOW = 60.0  # seconds of samples the fd floor is taken over, at each end
CHUNK = 60.0  # the schedule is built a minute at a time (seed + minute), not all at once
SCRAPE_TIMEOUT = 5.0
TCP_STATES = {
    "01": "ESTABLISHED",
    "02": "SYN_SENT",
    "03": "SYN_RECV",
    "04": "FIN_WAIT1",
    "05": "FIN_WAIT2",
    "06": "TIME_WAIT",
    "07": "CLOSE",
    "08": "CLOSE_WAIT",
    "09": "LAST_ACK",
    "0A": "LISTEN",
    "0B": "CLOSING",
}


# --------------------------------------------------------------------------- the gateway seen from /proc


@dataclass(slots=True)
class Connections:
    client: int = 0  # ESTABLISHED on the proxy port (the soak client's keep-alive pool)
    upstream: int = 0  # ESTABLISHED to one of the sim's ports (the gateway's pools)
    admin: int = 0  # ESTABLISHED on the admin port (our own scrape)
    closing: int = 0  # any other state but LISTEN: CLOSE_WAIT, FIN_WAIT*, LAST_ACK… (a leak shows here first)
    listen: int = 0
    other_sockets: int = 0  # sockets not in tcp/tcp6 (unix, socketpairs, udp)
    states: dict[str, int] = field(default_factory=dict)


def socket_inodes(pid: int) -> tuple[int, set[str]]:
    """The number of open fds of ``pid`` and the inodes of its sockets."""
    fd_dir = f"/proc/{pid}/fd"
    names = os.listdir(fd_dir)
    inodes: set[str] = set()
    for name in names:
        try:
            target = os.readlink(f"{fd_dir}/{name}")
        except OSError:  # closed since listdir
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return len(names), inodes


def connections(pid: int, inodes: set[str], proxy_port: int, admin_port: int, upstream_ports: set[int]) -> Connections:
    """Classify the process's TCP sockets by reading its network namespace's tables."""
    conns = Connections()
    seen: set[str] = set()
    states: Counter[str] = Counter()
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if len(cols) < 10 or cols[9] not in inodes:
                continue
            seen.add(cols[9])
            local_port = int(cols[1].rsplit(":", 1)[1], 16)
            remote_port = int(cols[2].rsplit(":", 1)[1], 16)
            state = TCP_STATES.get(cols[3], cols[3])
            states[state] += 1
            if state == "LISTEN":
                conns.listen += 1
            elif state != "ESTABLISHED":
                conns.closing += 1
            elif local_port == proxy_port:
                conns.client += 1
            elif local_port == admin_port:
                conns.admin += 1
            elif remote_port in upstream_ports:
                conns.upstream += 1
    conns.other_sockets = len(inodes - seen)
    conns.states = dict(sorted(states.items()))
    return conns


_METRIC = re.compile(
    r"^(gateway_inflight_requests|gateway_cache_entries|gateway_cache_bytes|gateway_asyncio_tasks)(\{[^}]*\})?\s+(\S+)$"
)


def scrape_metrics(admin_port: int) -> dict[str, float]:
    """Sums of the gauges soak reports (``gateway_inflight_requests`` over upstreams); {} when unreachable."""
    try:
        status, body = http_request(admin_port, "GET", "/metrics", timeout=SCRAPE_TIMEOUT)
    except (OSError, http.client.HTTPException):
        return {}
    if status != 200:
        return {}
    out: dict[str, float] = {}
    for line in body.decode(errors="replace").splitlines():
        m = _METRIC.match(line)
        if m:
            out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(3))
    return out


# --------------------------------------------------------------------------- samples


@dataclass(slots=True)
class Sample:
    """One row of the CSV: the gateway's state at ``t_s`` and the requests that completed since the last row."""

    t_s: float
    phase: str  # start, warmup, steady, drained
    rss_kib: int
    fds: int
    fds_sockets: int
    threads: int
    conn_client: int
    conn_upstream: int
    conn_admin: int
    conn_closing: int
    gateway_inflight: float | None
    tasks: float | None
    cache_entries: float | None
    cache_bytes: float | None
    cpu_pct: float | None
    client_in_flight: int
    sent: int
    completed: int
    ok: int
    success_rate: float | None
    p50_ms: float | None
    p95_ms: float | None
    max_ms: float | None
    tcp_states: str


COLUMNS = [f.name for f in fields(Sample)]


@dataclass(slots=True)
class Run:
    """Everything gathered while the run goes; survives an interrupt so a partial report can be written."""

    samples: list[Sample] = field(default_factory=list)
    pending: list[Result] = field(default_factory=list)  # completed since the last sample
    in_flight: set[asyncio.Task[Result]] = field(default_factory=set)
    sent_since: int = 0
    sent: int = 0
    by_route: dict[str, Counter[str]] = field(default_factory=dict)  # route -> {"sent", "ok", status…}
    latencies_ms: list[float] = field(default_factory=list)
    restarts: int = 0
    sim_requests: int = 0  # summed over the sim's clock restarts
    duplicate_sends: int = 0
    interrupted: bool = False
    error: str = ""


class Monitor:
    """Samples the gateway process (pid) from /proc and its admin port."""

    def __init__(self, proc: Proc, proxy_port: int, admin_port: int, sim_ports: dict[str, int]) -> None:
        self.proc = proc
        self.pid = proc.popen.pid
        self.proxy_port = proxy_port
        self.admin_port = admin_port
        self.upstream_ports = set(sim_ports.values())
        self._cpu = (time.monotonic(), cpu_seconds(self.pid))

    def probe(self) -> dict[str, Any]:
        """The process's side of a sample (blocking: /proc reads and one scrape; run it in a thread)."""
        if not self.proc.alive():
            raise RuntimeError(f"the gateway exited ({self.proc.popen.returncode}):\n{self.proc.log_tail()}")
        nfds, inodes = socket_inodes(self.pid)
        conns = connections(self.pid, inodes, self.proxy_port, self.admin_port, self.upstream_ports)
        rss = rss_kib(self.pid)
        now, cpu = time.monotonic(), cpu_seconds(self.pid)
        cpu_pct = (cpu - self._cpu[1]) / (now - self._cpu[0]) * 100 if now > self._cpu[0] else None
        self._cpu = (now, cpu)
        metrics = scrape_metrics(self.admin_port)
        return {
            "rss_kib": rss,
            "fds": nfds,
            "fds_sockets": len(inodes),
            "threads": proc_status(self.pid, "Threads"),
            "conn_client": conns.client,
            "conn_upstream": conns.upstream,
            "conn_admin": conns.admin,
            "conn_closing": conns.closing,
            "gateway_inflight": metrics.get("gateway_inflight_requests"),
            "tasks": metrics.get("gateway_asyncio_tasks"),
            "cache_entries": metrics.get("gateway_cache_entries"),
            "cache_bytes": metrics.get("gateway_cache_bytes"),
            "cpu_pct": None if cpu_pct is None else round(cpu_pct, 1),
            "tcp_states": " ".join(f"{k}={v}" for k, v in conns.states.items()),
        }

    async def sample(self, t: float, phase: str, run: Run) -> Sample:
        """One row: the requests completed since the last one (taken on the loop), then the process."""
        done, run.pending = run.pending, []
        sent, run.sent_since = run.sent_since, 0
        in_flight = len(run.in_flight)
        lat = [r.latency * 1000 for r in done]
        good = sum(1 for r in done if ok(r))
        proc = await asyncio.to_thread(self.probe)
        return Sample(
            t_s=round(t, 2),
            phase=phase,
            **{k: v for k, v in proc.items() if k != "tcp_states"},
            client_in_flight=in_flight,
            sent=sent,
            completed=len(done),
            ok=good,
            success_rate=good / len(done) if done else None,
            p50_ms=_round(percentile(lat, 50)),
            p95_ms=_round(percentile(lat, 95)),
            max_ms=_round(max(lat) if lat else None),
            tcp_states=proc["tcp_states"],
        )


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 1)


# --------------------------------------------------------------------------- the drive


def restart_period(outages: list[dict[str, Any]]) -> float:
    """How often to restart the sim's scenario clock so that its faults keep coming: 0 when every outage
    window repeats on its own (``every:``) or there is none; else the end of the last one-off window (or
    the longest ``every``, if larger), so one-off windows come back once per period."""
    if not outages or all(w.get("every_s") for w in outages):
        return 0.0
    ends = [w["start_s"] + w["duration_s"] for w in outages]
    ends += [w["every_s"] for w in outages if w.get("every_s")]
    return float(math.ceil(max(ends)))


def sim_requests(stats: dict[str, Any]) -> int:
    return sum(
        route.get("requests", 0)
        for block in stats.get("upstreams", {}).values()
        for route in block.get("routes", {}).values()
    )


def harvest_sim(sim_ports: dict[str, int], run: Run) -> None:
    """Add the sim's counters since its last reset to the run's totals."""
    stats = sim_get_stats(sim_ports)
    run.sim_requests += sim_requests(stats)
    run.duplicate_sends += stats.get("messages", {}).get("duplicates_delivered", 0)


def _record(run: Run, task: asyncio.Task[Result]) -> None:
    run.in_flight.discard(task)
    if task.cancelled():
        return
    result = task.result()
    run.pending.append(result)
    counts = run.by_route[result.route]
    counts["ok" if ok(result) else "failed"] += 1
    counts[str(result.status) if result.status else (result.error or "error")] += 1
    run.latencies_ms.append(result.latency * 1000)


async def send(session: aiohttp.ClientSession, base: dict[str, str], args: argparse.Namespace, run: Run) -> None:
    """Launch every call at its time (open loop), a minute of schedule at a time."""
    t0 = time.monotonic()
    minute = 0
    while minute * CHUNK < args.duration:
        offset = minute * CHUNK
        calls: list[Call] = build_schedule(
            args.rate, min(CHUNK, args.duration - offset), args.weights, args.seed + minute
        )
        for call in calls:
            delay = t0 + offset + call.at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(_one(session, base, call, t0 + offset))
            run.in_flight.add(task)
            task.add_done_callback(lambda t: _record(run, t))
            run.sent += 1
            run.sent_since += 1
            run.by_route.setdefault(call.route, Counter())["sent"] += 1
        minute += 1


def progress_line(s: Sample, args: argparse.Namespace, run: Run) -> str:
    def clock(sec: float) -> str:
        return f"{int(sec // 60):d}:{int(sec % 60):02d}"

    ok_txt = "—" if s.success_rate is None else f"{s.success_rate * 100:.1f} %"
    p95 = "—" if s.p95_ms is None else f"{s.p95_ms:,.0f} ms"
    return (
        f"soak {clock(s.t_s):>6}/{clock(args.duration)} {s.phase:<7} RSS {s.rss_kib / 1024:6.1f} MiB"
        f"  fds {s.fds:4d}  conns client {s.conn_client:3d} upstream {s.conn_upstream:3d} closing"
        f" {s.conn_closing:2d}  tasks {_num(s.tasks)}"
        f"  in flight {s.client_in_flight:3d}  ok {ok_txt:>7}  p95 {p95:>8}  sent {run.sent}"
    )


async def drive(
    args: argparse.Namespace,
    run: Run,
    monitor: Monitor,
    base: dict[str, str],
    sim_ports: dict[str, int],
    period: float,
    csv_out: csv.DictWriter[str] | None,
    csv_file: Any,
) -> None:
    def keep(sample: Sample) -> None:
        run.samples.append(sample)
        if csv_out is not None:
            csv_out.writerow(asdict(sample))
            csv_file.flush()
        if not args.no_progress:
            print(progress_line(sample, args, run), file=sys.stderr, flush=True)

    connector = aiohttp.TCPConnector(limit=512, limit_per_host=512)
    timeout = aiohttp.ClientTimeout(total=CLIENT_TIMEOUT)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False) as session:
        keep(await monitor.sample(0.0, "start", run))
        await asyncio.to_thread(sim_restart, sim_ports)  # the scenario's clock starts with the traffic
        t0 = time.monotonic()
        sender = asyncio.create_task(send(session, base, args, run))
        k, restarts_done = 1, 0
        try:
            while k * args.interval <= args.duration + 1e-6:
                due = t0 + k * args.interval
                if period and t0 + (restarts_done + 1) * period <= due:
                    await asyncio.sleep(max(0.0, t0 + (restarts_done + 1) * period - time.monotonic()))
                    await asyncio.to_thread(harvest_sim, sim_ports, run)
                    await asyncio.to_thread(sim_restart, sim_ports)
                    restarts_done += 1
                    run.restarts += 1
                    continue
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                if sender.done():
                    sender.result()  # raises what stopped it
                t = time.monotonic() - t0
                phase = "warmup" if t <= args.warmup + 1e-6 else "steady"
                keep(await monitor.sample(t, phase, run))
                k += 1
            await sender
            # the stragglers (bounded by the client timeout), then one sample with nothing in flight
            if run.in_flight:
                await asyncio.wait(set(run.in_flight), timeout=CLIENT_TIMEOUT + 5)
            await asyncio.sleep(1.0)
            keep(await monitor.sample(time.monotonic() - t0, "drained", run))
        finally:
            sender.cancel()
            for task in list(run.in_flight):
                task.cancel()
    await asyncio.to_thread(harvest_sim, sim_ports, run)


# --------------------------------------------------------------------------- the verdict


def slope_per_min(points: Sequence[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, value) points, per minute; None below 3 points."""
    if len(points) < 3:
        return None
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    if sxx == 0:
        return None
    return sum((x - mx) * (y - my) for x, y in points) / sxx * 60


def floor_k(n: int, interval: float) -> int:
    """How many samples at each end of the post-warm-up series the fd floor is taken over: one minute's
    worth (a whole cycle of the seeds outage windows, so both ends see the same phases), at most a quarter
    of the series, at least one."""
    return max(1, min(round(FLOOR_WINDOW / interval), n // 4))


def verdict(samples: list[Sample], max_rss_slope: float, max_fd_growth: int, interval: float) -> dict[str, Any]:
    steady = [s for s in samples if s.phase == "steady"]
    out: dict[str, Any] = {
        "steady_samples": len(steady),
        "max_rss_slope": max_rss_slope,
        "max_fd_growth": max_fd_growth,
    }
    rss_slope = slope_per_min([(s.t_s, s.rss_kib) for s in steady])
    out["slopes"] = {
        col: slope_per_min([(s.t_s, float(getattr(s, col))) for s in steady if getattr(s, col) is not None])
        for col in (
            "rss_kib",
            "fds",
            "fds_sockets",
            "threads",
            "conn_client",
            "conn_upstream",
            "conn_closing",
            "gateway_inflight",
            "tasks",
            "cache_entries",
        )
    }
    if rss_slope is None:
        out.update(status="inconclusive", growth=False, reason=f"{len(steady)} post-warm-up samples (3 needed)")
        return out
    k = floor_k(len(steady), interval)
    fd_start = min(s.fds for s in steady[:k])
    fd_end = min(s.fds for s in steady[-k:])
    out.update(rss_slope=rss_slope, fd_floor_start=fd_start, fd_floor_end=fd_end, fd_growth=fd_end - fd_start, k=k)
    reasons = []
    if rss_slope > max_rss_slope:
        reasons.append(f"RSS slope {rss_slope:+.1f} KiB/min > {max_rss_slope:g}")
    if fd_end - fd_start > max_fd_growth:
        reasons.append(f"fd floor grew by {fd_end - fd_start} > {max_fd_growth}")
    tasks = [s.tasks for s in steady if s.tasks is not None]
    if len(tasks) >= 2 * k:  # the same floor rule for the event loop's tasks, when /metrics gave them
        task_start, task_end = min(tasks[:k]), min(tasks[-k:])
        out.update(task_floor_start=task_start, task_floor_end=task_end)
        if task_end - task_start > max_fd_growth:
            reasons.append(f"asyncio task floor grew by {task_end - task_start:g} > {max_fd_growth}")
    out.update(
        status="growth" if reasons else "no growth",
        growth=bool(reasons),
        reason="; ".join(reasons) or f"RSS slope {rss_slope:+.1f} KiB/min, fd floor {fd_end - fd_start:+d}",
    )
    return out


def rule_text(v: dict[str, Any], interval: float) -> str:
    kk = v.get("k", max(1, round(FLOOR_WINDOW / interval)))
    return (
        f"no growth after warm-up ⇔ the least-squares slope of RSS over the post-warm-up samples is ≤"
        f" {v['max_rss_slope']:g} KiB/min AND the fd floor grew by ≤ {v['max_fd_growth']}: the lowest fd count"
        f" among the last {kk} post-warm-up samples minus the lowest among the first {kk} (a minute's worth at"
        " each end, at most a quarter of them; the lowest, because the count moves with the connections of the"
        " requests in flight); the same floor rule holds for `gateway_asyncio_tasks`."
        " At least 3 post-warm-up samples are needed, else the verdict is inconclusive."
    )


# --------------------------------------------------------------------------- the report


def _mib(kib: float | None) -> str:
    return "—" if kib is None else f"{kib / 1024:.1f} MiB"


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{v * 100:.2f} %"


def _num(v: float | None, fmt: str = "{:g}") -> str:
    return "—" if v is None else fmt.format(v)


def _range(values: list[float | None]) -> str:
    known = [v for v in values if v is not None]
    return f"{min(known):g}–{max(known):g}" if known else "—"


def _slope(v: float | None, unit: str = "/min") -> str:
    return "—" if v is None else f"{v:+.2f}{unit}"


def _clock(sec: float) -> str:
    return f"{int(sec // 60)}:{int(sec % 60):02d}"


def report_markdown(data: dict[str, Any], png: str | None) -> str:
    meta, v, run = data["meta"], data["verdict"], data["run"]
    samples: list[Sample] = data["samples"]
    m = meta["machine"]
    steady = [s for s in samples if s.phase == "steady"]
    verdict_word = {"no growth": "no growth after warm-up", "growth": "GROWTH DETECTED", "inconclusive": "inconclusive"}
    lines = [
        f"# Soak, {meta['date']}{' (interrupted: partial)' if run['interrupted'] else ''}",
        "",
        f"- scenario: `{meta['scenario']}` ({meta['scenario_description']});"
        + (
            f" the sim's clock restarted every {meta['restart_period']:g} s ({run['restarts']} times)"
            if meta["restart_period"]
            else " every outage window repeats on its own (`every:`), so the sim's clock was not restarted"
        ),
        f"- open loop: {meta['rate']:g} req/s for {_clock(meta['duration'])} (m:ss), the backend's mix"
        f" ({', '.join(f'{k} {w:g}' for k, w in meta['weights'].items())}), seed {meta['seed']} + minute;"
        f" client timeout {CLIENT_TIMEOUT:g} s",
        f"- gateway: `python -m gateway run` on config/examples/sim.yaml (ports changed), pid sampled every"
        f" {meta['interval']:g} s; warm-up {_clock(meta['warmup'])}",
        f"- machine: {m['nproc']} CPU ({m['cpu']}), load average at start {m['loadavg']}, Linux {m['kernel']},"
        f" Python {m['python']}, aiohttp {m['aiohttp']}, gateway {m['gateway']}",
        "",
        f"**Verdict: {verdict_word[v['status']]}** ({v['reason']}).",
        "",
        f"Rule: {rule_text(v, meta['interval'])}",
        "",
        "## Gateway process",
        "",
        "| when | t (m:ss) | RSS | fds | of which sockets | threads | client conns | upstream conns"
        " | closing conns | in flight (gauge) | asyncio tasks | cache entries | CPU |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    rows: list[tuple[str, Sample]] = []
    first = {p: next((s for s in samples if s.phase == p), None) for p in ("start", "steady", "drained")}
    if first["start"]:
        rows.append(("start (idle)", first["start"]))
    if first["steady"]:
        rows.append(("after warm-up", first["steady"]))
    if steady:
        rows.append(("end", steady[-1]))
    elif samples:
        rows.append(("last sample", samples[-1]))
    if first["drained"]:
        rows.append(("after drain", first["drained"]))
    for label, s in rows:
        lines.append(
            f"| {label} | {_clock(s.t_s)} | {_mib(s.rss_kib)} | {s.fds} | {s.fds_sockets} | {s.threads}"
            f" | {s.conn_client} | {s.conn_upstream} | {s.conn_closing} | {_num(s.gateway_inflight)}"
            f" | {_num(s.tasks)} | {_num(s.cache_entries)} | {_num(s.cpu_pct, '{:.0f} %')} |"
        )
    if steady:
        lines.append(
            f"| post-warm-up min–max | | {_mib(min(s.rss_kib for s in steady))}–{_mib(max(s.rss_kib for s in steady))}"
            f" | {min(s.fds for s in steady)}–{max(s.fds for s in steady)}"
            f" | {min(s.fds_sockets for s in steady)}–{max(s.fds_sockets for s in steady)}"
            f" | {min(s.threads for s in steady)}–{max(s.threads for s in steady)}"
            f" | {min(s.conn_client for s in steady)}–{max(s.conn_client for s in steady)}"
            f" | {min(s.conn_upstream for s in steady)}–{max(s.conn_upstream for s in steady)}"
            f" | {min(s.conn_closing for s in steady)}–{max(s.conn_closing for s in steady)} | |"
            f" {_range([s.tasks for s in steady])} | | |"
        )
    sl = v["slopes"]
    per_req = None
    if sl.get("rss_kib") is not None:
        per_req = sl["rss_kib"] * 1024 / (meta["rate"] * 60)
    lines += [
        "",
        f"Slopes over the {v['steady_samples']} post-warm-up samples (least squares, per minute): RSS"
        f" {_slope(sl['rss_kib'], ' KiB/min')}"
        + (f" ({per_req:+.1f} B per request)" if per_req is not None else "")
        + f", fds {_slope(sl['fds'])}, sockets {_slope(sl['fds_sockets'])}, threads {_slope(sl['threads'])},"
        f" client conns {_slope(sl['conn_client'])}, upstream conns {_slope(sl['conn_upstream'])},"
        f" closing conns {_slope(sl['conn_closing'])}, in-flight gauge {_slope(sl['gateway_inflight'])},"
        f" asyncio tasks {_slope(sl['tasks'])},"
        f" cache entries {_slope(sl['cache_entries'])}."
        + (
            f" fd floor: {v['fd_floor_start']} → {v['fd_floor_end']} ({v['fd_growth']:+d})."
            + (
                f" asyncio task floor: {v['task_floor_start']:g} → {v['task_floor_end']:g}."
                if "task_floor_start" in v
                else ""
            )
            if "fd_growth" in v
            else ""
        ),
        "",
        "## Requests",
        "",
    ]
    total_ok = sum(c.get("ok", 0) for c in run["by_route"].values())
    total_done = sum(c.get("ok", 0) + c.get("failed", 0) for c in run["by_route"].values())
    lat = run["latencies_ms"]
    overall = total_ok / total_done if total_done else None
    lines += [
        f"{run['sent']} sent, {total_done} answered or failed, {total_ok} ok ({_pct(overall)});"
        f" latency from the scheduled time: p50 {_num(percentile(lat, 50), '{:,.0f}')} ms,"
        f" p95 {_num(percentile(lat, 95), '{:,.0f}')} ms, p99 {_num(percentile(lat, 99), '{:,.0f}')} ms;"
        f" the sim received {run['sim_requests']} requests"
        + (f" ({run['sim_requests'] / run['sent']:.2f} per request sent)" if run["sent"] else "")
        + f"; duplicate WhatsApp sends: {run['duplicate_sends']}.",
        "",
        "| route | sent | ok | success | answers |",
        "|---|---:|---:|---:|---|",
    ]
    for name, c in run["by_route"].items():
        done = c.get("ok", 0) + c.get("failed", 0)
        answers = ", ".join(f"{k}: {n}" for k, n in sorted(c.items()) if k not in ("sent", "ok", "failed"))
        lines.append(
            f"| {name} | {c.get('sent', 0)} | {c.get('ok', 0)} | {_pct(c.get('ok', 0) / done if done else None)}"
            f" | {answers} |"
        )
    rates = [s.success_rate for s in steady if s.success_rate is not None]
    if rates:
        lines += [
            "",
            f"Success rate per {meta['interval']:g} s interval after warm-up: min {_pct(min(rates))}, median"
            f" {_pct(sorted(rates)[len(rates) // 2])}, max {_pct(max(rates))} (it dips in the scenario's outage"
            " windows).",
        ]
    lines += [
        "",
        "## Notes",
        "",
        "- RSS: `VmRSS` of the gateway process (`/proc/PID/status`); fds: entries of `/proc/PID/fd`; threads:"
        " `Threads` of `/proc/PID/status`.",
        "- Connections: the process's socket inodes (`/proc/PID/fd`) looked up in `/proc/PID/net/tcp{,6}`."
        " client: ESTABLISHED on the proxy port; upstream: ESTABLISHED to a sim port; closing: any state but"
        " ESTABLISHED and LISTEN (CLOSE_WAIT, FIN_WAIT…). The admin scrape's own connection is not counted.",
        "- in flight (gauge): `gateway_inflight_requests` summed over upstreams (`/metrics` on the admin port);"
        " tasks: `gateway_asyncio_tasks`, the event loop's live tasks (the scrape's own included);"
        " cache entries: `gateway_cache_entries`.",
        "- Success: 2xx; per interval, over the requests that completed in it. Latency: from each request's"
        " scheduled time to the end of its body (open loop).",
        f"- Samples: `{meta['csv'] or '(not saved)'}`, one row per sample.",
    ]
    if png:
        lines += ["", f"![RSS, fds, connections and success rate over time]({png})"]
    if run["error"]:
        lines += ["", "## The run stopped early", "", "```", run["error"], "```"]
    return "\n".join(lines) + "\n"


def plot(data: dict[str, Any], out: Path) -> bool:
    """The PNG: RSS, fds, connections, success rate over time; False when matplotlib is not importable."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    samples: list[Sample] = [s for s in data["samples"] if s.phase != "drained"]
    meta = data["meta"]
    t = [s.t_s / 60 for s in samples]
    fig, axes = plt.subplots(4, 1, figsize=(12, 10), sharex=True)
    ax_rss, ax_fd, ax_conn, ax_ok = axes
    ax_rss.plot(t, [s.rss_kib / 1024 for s in samples], color="tab:blue")
    ax_rss.set_ylabel("RSS (MiB)")
    ax_fd.plot(t, [s.fds for s in samples], label="fds", color="tab:orange")
    ax_fd.plot(t, [s.fds_sockets for s in samples], label="of which sockets", color="tab:brown", lw=0.8)
    ax_fd.set_ylabel("open fds")
    ax_fd.legend(loc="upper left", fontsize=8)
    ax_conn.plot(t, [s.conn_client for s in samples], label="client (proxy port)")
    ax_conn.plot(t, [s.conn_upstream for s in samples], label="upstream (sim)")
    ax_conn.plot(t, [s.conn_closing for s in samples], label="closing states")
    ax_conn.plot(t, [s.client_in_flight for s in samples], label="requests in flight (client)", ls=":", color="k")
    ax_conn.set_ylabel("connections")
    ax_conn.legend(loc="upper left", fontsize=8)
    ax_ok.plot(t, [s.success_rate * 100 if s.success_rate is not None else float("nan") for s in samples])
    ax_ok.set_ylabel(f"success per {meta['interval']:g} s (%)")
    ax_ok.set_xlabel("minutes since the traffic started")
    for ax in axes:
        ax.axvspan(0, meta["warmup"] / 60, color="gray", alpha=0.12, lw=0)
    v = data["verdict"]
    ax_rss.set_title(
        f"soak: {meta['scenario']}, {meta['rate']:g} req/s, {meta['date']} — {v['status']}"
        + (f" (RSS slope {v['rss_slope']:+.1f} KiB/min)" if v.get("rss_slope") is not None else "")
        + "; warm-up shaded"
    )
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return True


# --------------------------------------------------------------------------- main

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)?")


def parse_duration(value: str) -> float:
    """'30m', '90s', '1h30m', '1.5h', '45' (seconds) → seconds."""
    text = value.strip().lower().replace(" ", "")
    pos, total = 0, 0.0
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
    while pos < len(text):
        m = _DURATION.match(text, pos)
        if not m:
            raise argparse.ArgumentTypeError(f"not a duration: {value!r} (say 30m, 90s, 1h30m or seconds)")
        total += float(m.group(1)) * units[m.group(2)]
        pos = m.end()
    if not text or total <= 0:
        raise argparse.ArgumentTypeError(f"not a positive duration: {value!r}")
    return total


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--scenario", default="seeds", help="a name in config/scenarios/ or a path (default: seeds)")
    ap.add_argument("--rate", type=parse_rate, default=20.0, help="requests per second, all routes (default 20)")
    ap.add_argument("--duration", type=parse_duration, default=None, help="30m, 90s, 1h… (default 30m; quick 40s)")
    ap.add_argument("--interval", type=parse_duration, default=None, help="between samples (default 10s; quick 2s)")
    ap.add_argument(
        "--warmup", type=parse_duration, default=None, help="excluded from the verdict (default: 5m or 1/6 of the run)"
    )
    ap.add_argument("--quick", action="store_true", help="--duration 40s --interval 2s --warmup 10s (a smoke test)")
    ap.add_argument(
        "--max-rss-slope", type=float, default=100.0, help="KiB/min of RSS allowed after warm-up (default 100)"
    )
    ap.add_argument("--max-fd-growth", type=int, default=10, help="fd floor growth allowed after warm-up (default 10)")
    ap.add_argument(
        "--restart-every",
        type=parse_duration,
        default=None,
        help="restart the sim's scenario clock this often (default: only when it has one-off outage windows)",
    )
    ap.add_argument("--weights", type=parse_weights, default=None, help="route=weight,... (see fault_replay.ROUTES)")
    ap.add_argument("--seed", type=int, default=7, help="seed of the first minute's schedule (default 7)")
    ap.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    ap.add_argument("--no-save", action="store_true", help="write nothing (the report goes to stdout)")
    ap.add_argument("--no-progress", action="store_true", help="no line per sample on stderr")
    args = ap.parse_args(argv)
    args.duration = args.duration or (40.0 if args.quick else 1800.0)
    args.interval = args.interval or (2.0 if args.quick else 10.0)
    if args.warmup is None:
        args.warmup = 10.0 if args.quick else min(300.0, args.duration / 6)
    if args.warmup >= args.duration:
        ap.error("--warmup must be shorter than --duration")
    if args.interval > args.duration:
        ap.error("--interval must not be longer than --duration")
    args.weights = args.weights or {r.name: r.weight for r in ROUTES}
    path = Path(args.scenario)
    args.scenario_path = path if path.suffix in (".yaml", ".yml") else SCENARIOS_DIR / f"{args.scenario}.yaml"
    if not args.scenario_path.is_file():
        ap.error(f"--scenario: {args.scenario_path} not found")
    return args


def run_soak(args: argparse.Namespace, csv_path: Path | None) -> dict[str, Any]:
    scenario = yaml.safe_load(args.scenario_path.read_text()) or {}
    run = Run()
    data: dict[str, Any] = {
        "meta": {
            "date": dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
            "scenario": scenario.get("name", args.scenario_path.stem),
            "scenario_description": scenario.get("description", ""),
            "rate": args.rate,
            "duration": args.duration,
            "interval": args.interval,
            "warmup": args.warmup,
            "seed": args.seed,
            "weights": {r.name: args.weights[r.name] for r in ROUTES if args.weights.get(r.name, 0) > 0},
            "machine": machine(),
            "restart_period": 0.0,
            "csv": csv_path.name if csv_path else "",
        },
        "samples": run.samples,
    }
    csv_file = csv_path.open("w", newline="") if csv_path else None
    try:
        writer = csv.DictWriter(csv_file, fieldnames=COLUMNS) if csv_file else None
        if writer:
            writer.writeheader()
        with tempfile.TemporaryDirectory(prefix="soak-") as tmp, Processes(Path(tmp)) as procs:
            try:
                sim_ports = start_sim(procs, args.scenario_path)
                outages = sim_get_stats(sim_ports).get("outages", [])
                period = args.restart_every if args.restart_every is not None else restart_period(outages)
                data["meta"]["restart_period"] = period
                port = start_gateway(procs, sim_ports)
                gateway = procs.procs[-1]
                conf = yaml.safe_load((procs.workdir / "gateway.yaml").read_text())
                admin_port = int(conf["admin"]["listen"]["port"])
                monitor = Monitor(gateway, port, admin_port, sim_ports)
                base = {up: f"http://{HOST}:{port}/{up}" for up in SIM_UPSTREAMS}
                asyncio.run(drive(args, run, monitor, base, sim_ports, period, writer, csv_file))
            except KeyboardInterrupt:
                run.interrupted = True
            except (RuntimeError, OSError) as exc:
                run.error = str(exc)
    finally:
        if csv_file:
            csv_file.close()
    data["verdict"] = verdict(run.samples, args.max_rss_slope, args.max_fd_growth, args.interval)
    data["run"] = {
        "interrupted": run.interrupted,
        "error": run.error,
        "sent": run.sent,
        "restarts": run.restarts,
        "sim_requests": run.sim_requests,
        "duplicate_sends": run.duplicate_sends,
        "latencies_ms": run.latencies_ms,
        "by_route": {r.name: run.by_route[r.name] for r in ROUTES if r.name in run.by_route},
    }
    return data


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _sigterm)
    stamp = dt.date.today().isoformat() + ("-quick" if args.quick else "")
    csv_path = None
    if not args.no_save:
        args.out_dir.mkdir(parents=True, exist_ok=True)
        csv_path = args.out_dir / f"soak-{stamp}.csv"
    data = run_soak(args, csv_path)
    png_name: str | None = None
    if not args.no_save and data["samples"]:
        png = args.out_dir / f"soak-{stamp}.png"
        if plot(data, png):
            png_name = png.name
        else:
            print("matplotlib is not importable (pip install -e '.[bench]'): no PNG", file=sys.stderr)
    text = report_markdown(data, png_name)
    print(text)
    if not args.no_save:
        (args.out_dir / f"soak-{stamp}.md").write_text(text)
    run, v = data["run"], data["verdict"]
    if run["interrupted"]:
        print("interrupted: the report covers the samples taken so far", file=sys.stderr)
        return 130
    if run["error"]:
        print(f"the run stopped early: {run['error']}", file=sys.stderr)
        return 2
    if v["status"] == "inconclusive":
        return 3
    return 1 if v["growth"] else 0


if __name__ == "__main__":
    sys.exit(main())
