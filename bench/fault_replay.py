"""The fault-replay benchmark (issue 7, part 2): the backend's traffic against a faulty upstream, three ways.

Starts ``gateway sim`` on a scenario (``seeds`` by default) and replays an open-loop mix of the inbox
backend's calls (each request launched on its schedule, whether or not earlier ones have answered) through
three paths, one after the other, restarting the sim's scenario clock (``POST /_sim/reset?restart=1``)
before each so that every path sees the same timeline of faults:

- ``direct``: straight to the sim, as the backend does today;
- ``nginx``: Debian's nginx with ``bench/nginx_fault_replay.conf.template`` (keep-alive pools, retries of
  idempotent requests, a cache serving stale answers on errors);
- ``gateway``: ``python -m gateway run`` on a copy of ``config/examples/sim.yaml`` (ports changed only).

It reports, per path and per route, the success rate, latency percentiles, upstream requests per client
request (the sim's counters), duplicate WhatsApp sends and answers served stale; writes a markdown report
(and a PNG timeline when matplotlib is importable) under ``bench/results/``.

    python bench/fault_replay.py                  # seeds, 40 req/s, 150 s per path (~8 min)
    python bench/fault_replay.py --quick          # seeds, 15 req/s, 14 s per path (< 60 s)
    python bench/fault_replay.py --quick --no-save --json /tmp/fr.json --paths direct,gateway

With ``--suite N`` or ``--seeds LIST`` it runs the scenario suite instead (``bench/fault_suite.py``: many
generated fault schedules, paths direct, nginx, defaults, shipped; ``--suite 2 --help`` lists its options).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import http.client
import json
import math
import os
import platform
import random
import shutil
import signal
import socket
import string
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from overhead import Proc, Processes, _run, cpu_model, free_ports, wait_until

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
SCENARIOS_DIR = REPO_DIR / "config" / "scenarios"
SIM_CONFIG = REPO_DIR / "config" / "examples" / "sim.yaml"
NGINX_TEMPLATE = "nginx_fault_replay.conf.template"
HOST = "127.0.0.1"
SIM_UPSTREAMS = ("graph", "gemini", "supabase", "lookaside")
PATHS = ("direct", "nginx", "gateway")
START_TIMEOUT = 20.0
STOP_TIMEOUT = 5.0
CLIENT_TIMEOUT = 30.0  # generous: the proxies enforce the real timeouts; a client timeout is a failure
PHONE_ID = "109876543210"
MODEL = "gemini-2.0-flash"
APIKEY = "sim-anon-key"
GRAPH_TOKEN = "sim-graph-token"


# --------------------------------------------------------------------------- the traffic mix


@dataclass(frozen=True, slots=True)
class Route:
    """One call of the backend: which upstream, which sim route counts it, how to build it."""

    name: str
    upstream: str  # the sim upstream, hence the gateway / nginx prefix
    sim_route: str  # the sim's route name in /_sim/stats
    kind: str  # read, write, send, generate
    weight: float
    ok: frozenset[int] = frozenset()  # non-2xx statuses that are the right answer (none in this mix)
    cached: bool = False  # the gateway and nginx cache it


ROUTES: tuple[Route, ...] = (
    Route("auth_user", "supabase", "auth_user", "read", 20, cached=True),
    Route("conversations", "supabase", "rest_read", "read", 25),
    Route("bot_profiles", "supabase", "rest_read", "read", 15, cached=True),
    Route("conversation_update", "supabase", "rest_write", "write", 10),
    Route("send_message", "graph", "send_message", "send", 12),
    Route("generate", "gemini", "generate", "generate", 8),
    Route("media_url", "graph", "media_url", "read", 10, cached=True),
)
ROUTE_BY_NAME = {r.name: r for r in ROUTES}
USERS = 20  # distinct Supabase user tokens (the cache keys of auth_user vary on them)
ACCOUNTS = 3  # distinct account ids in the reads' filters
MEDIA_IDS = 40  # distinct media ids


@dataclass(frozen=True, slots=True)
class Call:
    """One request of the schedule: the same list is replayed on every path."""

    at: float  # seconds after the start of the path's run
    route: str
    method: str
    path: str  # after the upstream's prefix
    headers: dict[str, str]
    body: bytes | None = None


def build_schedule(rate: float, duration: float, weights: dict[str, float], seed: int) -> list[Call]:
    """Fixed arrival rate (evenly spaced), routes and parameters drawn with a seeded RNG."""
    rng = random.Random(seed)
    names = [n for n in weights if weights[n] > 0]
    w = [weights[n] for n in names]
    calls: list[Call] = []
    for i in range(int(rate * duration)):
        at = i / rate
        name = rng.choices(names, w)[0]
        user = f"sim-user-jwt-{rng.randrange(USERS)}"
        account = rng.randrange(1, ACCOUNTS + 1)
        supa = {"apikey": APIKEY, "Authorization": f"Bearer {user}", "Accept": "application/json"}
        graph = {"Authorization": f"Bearer {GRAPH_TOKEN}"}
        if name == "auth_user":
            calls.append(Call(at, name, "GET", "/auth/v1/user", supa))
        elif name == "conversations":
            path = f"/rest/v1/conversations?select=*&account_id=eq.{account}&order=updated_at.desc&limit=20"
            calls.append(Call(at, name, "GET", path, supa))
        elif name == "bot_profiles":
            path = f"/rest/v1/bot_profiles?select=*&account_id=eq.{account}&limit=1"
            calls.append(Call(at, name, "GET", path, supa))
        elif name == "conversation_update":
            body = json.dumps(
                {"status": rng.choice(["open", "closed"]), "updated_at": f"2026-01-01T00:{i % 60:02d}:00Z"}
            )
            headers = {**supa, "Content-Type": "application/json", "Prefer": "return=minimal"}
            calls.append(
                Call(at, name, "PATCH", f"/rest/v1/conversations?id=eq.{rng.randrange(1, 51)}", headers, body.encode())
            )
        elif name == "send_message":
            text = f"fault-replay {i} {uuid.UUID(int=rng.getrandbits(128))}"  # unique: duplicates are visible
            body = json.dumps(
                {
                    "messaging_product": "whatsapp",
                    "recipient_type": "individual",
                    "to": f"3360000{rng.randrange(10000):04d}",
                    "type": "text",
                    "text": {"body": text},
                }
            )
            headers = {**graph, "Content-Type": "application/json"}
            calls.append(Call(at, name, "POST", f"/v20.0/{PHONE_ID}/messages", headers, body.encode()))
        elif name == "generate":
            body = json.dumps({"contents": [{"role": "user", "parts": [{"text": f"Reply to message {i}"}]}]})
            headers = {"x-goog-api-key": "sim-key", "Content-Type": "application/json"}
            calls.append(Call(at, name, "POST", f"/v1beta/models/{MODEL}:generateContent", headers, body.encode()))
        elif name == "media_url":
            calls.append(Call(at, name, "GET", f"/v20.0/{1000 + rng.randrange(MEDIA_IDS)}", graph))
    return calls


# --------------------------------------------------------------------------- processes


def http_request(port: int, method: str, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def gateway_env() -> dict[str, str]:
    """This checkout first on PYTHONPATH (so its code is what runs), no GATEWAY_* variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_") and k != "GEMINI_API_KEY"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_DIR), env.get("PYTHONPATH", "")) if p)
    return env


def start_sim(procs: Processes, scenario: Path) -> dict[str, int]:
    ports = dict(zip(SIM_UPSTREAMS, free_ports(len(SIM_UPSTREAMS)), strict=True))
    argv = [sys.executable, "-m", "gateway", "sim", "--scenario", str(scenario), "--host", HOST]
    for up, port in ports.items():
        argv += [f"--{up}-port", str(port)]
    proc = procs.start("sim", argv, env=gateway_env())
    for port in ports.values():
        wait_until(proc, lambda p=port: http_request(p, "GET", "/_sim/stats")[0] == 200, f"sim on port {port}")
    return ports


def start_nginx(procs: Processes, sim_ports: dict[str, int]) -> int:
    prefix = procs.workdir / "nginx"
    prefix.mkdir(exist_ok=True)
    # started as root, nginx's workers run as "nobody": they must reach and write the cache directory
    procs.workdir.chmod(0o755)
    prefix.chmod(0o777)
    (port,) = free_ports(1)
    values = {"prefix": prefix, "port": port, **{f"{up}_port": p for up, p in sim_ports.items()}}
    text = string.Template((BENCH_DIR / NGINX_TEMPLATE).read_text()).substitute({k: str(v) for k, v in values.items()})
    conf = prefix / "nginx.conf"
    conf.write_text(text)
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    base = [nginx, "-p", str(prefix), "-e", str(prefix / "error.log"), "-c", str(conf)]
    check = subprocess.run([*base, "-t", "-q"], capture_output=True, text=True, timeout=15)
    if check.returncode != 0:
        raise RuntimeError(f"nginx -t failed:\n{check.stderr}")
    proc = procs.start("nginx", base)

    def listening() -> bool:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True

    wait_until(proc, listening, f"nginx on port {port}")
    return port


def gateway_config(sim_ports: dict[str, int], port: int, admin_port: int, source: Path = SIM_CONFIG) -> str:
    """``source`` (config/examples/sim.yaml) with only the listen ports and the upstream URLs changed.

    Done on the text, not through a YAML round trip: PyYAML reads ``on:`` as a boolean (YAML 1.1),
    the gateway as the key ``on`` (YAML 1.2), and the comments stay.
    """
    text = source.read_text()
    replacements = {
        "listen: {host: 127.0.0.1, port: 8080}": f"listen: {{host: {HOST}, port: {port}}}",
        "listen: {host: 127.0.0.1, port: 9901}": f"listen: {{host: {HOST}, port: {admin_port}}}",
        **{f"http://127.0.0.1:{8081 + i}": f"http://{HOST}:{sim_ports[up]}" for i, up in enumerate(SIM_UPSTREAMS)},
    }
    for old, new in replacements.items():
        if old not in text:
            raise RuntimeError(f"{source}: expected {old!r} in it, to point the gateway at the sim")
        text = text.replace(old, new)
    return text


def _shown(path: Path) -> str:
    """A path as written in the report: relative to the repository when inside it."""
    try:
        return str(path.resolve().relative_to(REPO_DIR))
    except ValueError:
        return str(path)


def start_gateway(procs: Processes, sim_ports: dict[str, int], source: Path = SIM_CONFIG) -> int:
    port, admin_port = free_ports(2)
    conf = procs.workdir / "gateway.yaml"
    conf.write_text(gateway_config(sim_ports, port, admin_port, source))
    argv = [sys.executable, "-m", "gateway", "run", "--config", str(conf)]
    proc = procs.start("gateway", argv, env=gateway_env())
    wait_until(proc, lambda: http_request(admin_port, "GET", "/readyz")[0] == 200, "GET /readyz 200")
    return port


# --------------------------------------------------------------------------- the replay


@dataclass(slots=True)
class Result:
    at: float  # scheduled second
    route: str
    status: int  # 0: no HTTP answer (connection error, client timeout)
    latency: float  # seconds, from the scheduled time to the end of the body
    cache: str = ""  # x-gateway-cache or X-Cache-Status
    error: str = ""  # no answer: why; a gateway-made answer: its x-gateway-error code


class Progress:
    """One carriage-return line on stderr."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and sys.stderr is not None and sys.stderr.isatty()

    def show(self, label: str, done: float, total: float, extra: str = "") -> None:
        if not self.enabled:
            return
        frac = 0.0 if total <= 0 else min(1.0, done / total)
        bar = "#" * int(frac * 30)
        sys.stderr.write(f"\r{label:<22} [{bar:<30}] {frac * 100:5.1f}% {extra:<40}")
        sys.stderr.flush()

    def done(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")
            sys.stderr.flush()


async def _one(session: aiohttp.ClientSession, base: dict[str, str], call: Call, t0: float) -> Result:
    url = base[ROUTE_BY_NAME[call.route].upstream] + call.path
    try:
        async with session.request(call.method, url, headers=call.headers, data=call.body) as resp:
            await resp.read()
            cache = resp.headers.get("x-gateway-cache") or resp.headers.get("X-Cache-Status") or ""
            made = resp.headers.get("x-gateway-error", "")  # the gateway's own answer, not the upstream's
            return Result(call.at, call.route, resp.status, time.monotonic() - t0 - call.at, cache.upper(), made)
    except TimeoutError:
        return Result(call.at, call.route, 0, time.monotonic() - t0 - call.at, error="client timeout")
    except aiohttp.ClientError as exc:
        return Result(call.at, call.route, 0, time.monotonic() - t0 - call.at, error=type(exc).__name__)


async def replay(base: dict[str, str], calls: list[Call], label: str, progress: Progress) -> list[Result]:
    """Launch every call at its time (open loop), wait for all of them, return their results."""
    connector = aiohttp.TCPConnector(limit=512, limit_per_host=512, force_close=False)
    timeout = aiohttp.ClientTimeout(total=CLIENT_TIMEOUT)
    duration = calls[-1].at if calls else 0.0
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False) as session:
        tasks: list[asyncio.Task[Result]] = []
        t0 = time.monotonic()
        last_shown = 0.0
        for call in calls:
            delay = t0 + call.at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(_one(session, base, call, t0)))
            now = time.monotonic()
            if now - last_shown > 0.25:
                last_shown = now
                in_flight = sum(1 for t in tasks if not t.done())
                progress.show(label, call.at, duration, f"{len(tasks)} sent, {in_flight} in flight")
        pending = [t for t in tasks if not t.done()]
        while pending:
            progress.show(label, duration, duration, f"draining: {len(pending)} in flight")
            await asyncio.wait(pending, timeout=0.25)
            pending = [t for t in tasks if not t.done()]
        progress.show(label, duration, duration, f"{len(tasks)} sent, done")
        progress.done()
        return [t.result() for t in tasks]


def sim_get_stats(sim_ports: dict[str, int]) -> dict[str, Any]:
    status, body = http_request(sim_ports["graph"], "GET", "/_sim/stats")
    if status != 200:
        raise RuntimeError(f"GET /_sim/stats answered {status}")
    return json.loads(body)


def sim_restart(sim_ports: dict[str, int]) -> None:
    for port in sim_ports.values():
        status, body = http_request(port, "POST", "/_sim/reset?restart=1")
        if status != 200:
            raise RuntimeError(f"POST /_sim/reset?restart=1 on port {port} answered {status}: {body[:200]!r}")


# --------------------------------------------------------------------------- statistics


def percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[k]


def ok(result: Result) -> bool:
    return 200 <= result.status < 300 or result.status in ROUTE_BY_NAME[result.route].ok


def _answer(r: Result) -> str:
    """``200``; ``503 breaker_open`` for an answer the gateway made; an exception's name when none came."""
    if not r.status:
        return r.error or "error"
    return f"{r.status} {r.error}" if r.error else str(r.status)


def summarize(results: list[Result], routes: Sequence[Route], sim_stats: dict[str, Any]) -> dict[str, Any]:
    """Per route and per kind: counts, success, latency percentiles, amplification, stale answers."""
    sim_counts = {
        (up, name): data.get("requests", 0)
        for up, block in sim_stats.get("upstreams", {}).items()
        for name, data in block.get("routes", {}).items()
    }
    sent_by_sim_route = Counter((r.upstream, r.sim_route) for res in results for r in (ROUTE_BY_NAME[res.route],))

    def block(rs: list[Result], upstream_requests: int | None) -> dict[str, Any]:
        lat = [r.latency * 1000 for r in rs]
        good = sum(1 for r in rs if ok(r))
        statuses = Counter(_answer(r) for r in rs)
        caches = Counter(r.cache for r in rs if r.cache)
        return {
            "requests": len(rs),
            "ok": good,
            "success_rate": good / len(rs) if rs else None,
            "p50_ms": percentile(lat, 50),
            "p95_ms": percentile(lat, 95),
            "p99_ms": percentile(lat, 99),
            "max_ms": max(lat) if lat else None,
            "upstream_requests": upstream_requests,
            "amplification": (upstream_requests / len(rs)) if rs and upstream_requests is not None else None,
            "stale": caches.get("STALE", 0) + caches.get("UPDATING", 0),
            "hits": caches.get("HIT", 0),
            "statuses": dict(sorted(statuses.items())),
            "cache": dict(sorted(caches.items())),
        }

    per_route: dict[str, Any] = {}
    for route in routes:
        rs = [r for r in results if r.route == route.name]
        key = (route.upstream, route.sim_route)
        upstream = sim_counts.get(key, 0)
        # routes sharing a sim route (conversations, bot_profiles: rest_read) get their share by requests sent
        share = len(rs) / sent_by_sim_route[key] if sent_by_sim_route.get(key) else 0.0
        shared = sum(1 for r in routes if (r.upstream, r.sim_route) == key) > 1
        data = block(rs, round(upstream * share) if not shared else None)
        data["sim_route"] = f"{route.upstream}.{route.sim_route}"
        data["sim_route_requests"] = upstream
        data["sim_route_amplification"] = upstream / sent_by_sim_route[key] if sent_by_sim_route.get(key) else None
        per_route[route.name] = data
    kinds: dict[str, Any] = {}
    for kind in sorted({r.kind for r in routes}):
        names = {r.name for r in routes if r.kind == kind}
        keys = {(r.upstream, r.sim_route) for r in routes if r.kind == kind}
        kinds[kind] = block([r for r in results if r.route in names], sum(sim_counts.get(k, 0) for k in keys))
    used = {(r.upstream, r.sim_route) for r in routes}
    kinds["all"] = block(results, sum(sim_counts.get(k, 0) for k in used))
    kinds["reads+sends"] = block(
        [r for r in results if ROUTE_BY_NAME[r.route].kind in ("read", "send")],
        None,
    )
    cached = [r for r in results if ROUTE_BY_NAME[r.route].cached]
    kinds["cached reads"] = block(cached, None)
    return {"routes": per_route, "kinds": kinds}


def timeline(results: list[Result], duration: float) -> list[dict[str, Any]]:
    """Per second of schedule: requests, error rate, p95 latency."""
    seconds = max(1, math.ceil(duration))
    buckets: list[list[Result]] = [[] for _ in range(seconds)]
    for r in results:
        buckets[min(seconds - 1, int(r.at))].append(r)
    out = []
    for s, rs in enumerate(buckets):
        errors = sum(1 for r in rs if not ok(r))
        out.append(
            {
                "t": s,
                "requests": len(rs),
                "error_rate": errors / len(rs) if rs else None,
                "p95_ms": percentile([r.latency * 1000 for r in rs], 95),
            }
        )
    return out


# --------------------------------------------------------------------------- the report


def machine() -> dict[str, str]:
    model = cpu_model()
    dirty = _run(["git", "status", "--porcelain", "--", "gateway"])
    commit = _run(["git", "rev-parse", "--short", "HEAD"])
    return {
        "nproc": str(len(os.sched_getaffinity(0))),
        "cpu": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "aiohttp": aiohttp.__version__,
        "nginx": _run(["nginx", "-v"]).removeprefix("nginx version: ") if shutil.which("nginx") else "absent",
        "gateway": f"{commit}{' + uncommitted changes in gateway/' if dirty and dirty != '?' else ''}",
        "loadavg": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
    }


def _ms(v: float | None) -> str:
    return "—" if v is None else (f"{v:,.0f}" if v >= 100 else f"{v:.1f}")


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{v * 100:.2f} %"


def _x(v: float | None) -> str:
    return "—" if v is None else f"{v:.2f}"


def calm_p95_ms(route: Route) -> float | None:
    """The calm scenario's p95 for the route's upstream: the reference of the "1.2× calm" target."""
    try:
        calm = yaml.safe_load((SCENARIOS_DIR / "calm.yaml").read_text())
        p95 = calm["upstreams"][route.upstream]["latency"]["p95"]
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        return None
    value = str(p95)
    return float(value[:-2]) if value.endswith("ms") else float(value.rstrip("s")) * 1000


def report_markdown(data: dict[str, Any], png: str | None = None) -> str:
    meta = data["meta"]
    m = meta["machine"]
    lines = [
        f"# Fault replay, {meta['date']}{' (quick)' if meta['quick'] else ''}",
        "",
        f"- scenario: `{meta['scenario']}` ({meta['scenario_description']}); outage windows: "
        + ("; ".join(_window(w) for w in meta["outages"]) or "none"),
        f"- open loop: {meta['rate']:g} req/s for {meta['duration']:g} s per path ({meta['requests']} requests,"
        f" the same schedule on every path, seed {meta['seed']}); client timeout {CLIENT_TIMEOUT:g} s;"
        + (
            f" each path first warmed up with the schedule's first {meta['warmup']:g} s, not measured"
            if meta.get("warmup")
            else " no warm-up: every path starts cold"
        ),
        f"- mix (weights): {', '.join(f'{k} {v:g}' for k, v in meta['weights'].items())}",
        f"- machine: {m['nproc']} CPU ({m['cpu']}), load average at start {m['loadavg']}, Linux {m['kernel']},"
        f" Python {m['python']}, aiohttp {m['aiohttp']}, nginx {m['nginx']}, gateway {m['gateway']}",
        f"- paths: {', '.join(data['paths'])}; the sim's scenario clock restarted before each path;"
        f" the gateway runs `{meta.get('config', 'config/examples/sim.yaml')}`",
        "",
        "## Summary",
        "",
        "| path | reads+sends ok | reads ok | sends ok | writes ok | generations ok | all ok | p95 cached reads"
        " | duplicate sends | amplification (all) | stale answers |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, p in data["paths"].items():
        k = p["kinds"]
        stale = sum(r["stale"] for r in p["routes"].values())
        lines.append(
            f"| {name} | {_pct(k['reads+sends']['success_rate'])} | {_pct(k['read']['success_rate'])}"
            f" | {_pct(k['send']['success_rate'])} | {_pct(k['write']['success_rate'])}"
            f" | {_pct(k['generate']['success_rate'])} | {_pct(k['all']['success_rate'])}"
            f" | {_ms(k['cached reads']['p95_ms'])} ms | {p['duplicate_sends']}"
            f" | {_x(k['all']['amplification'])} | {stale} |"
        )
    calm = {r.name: calm_p95_ms(r) for r in ROUTES if r.cached}
    lines += [
        "",
        "Target (issue 7), through the gateway: ≥ 99.5 % success on reads and sends, p95 of cached reads within"
        " 1.2× the calm upstream's p95 ("
        + ", ".join(f"{n} {_ms(v)} ms" for n, v in calm.items())
        + " in `calm.yaml`), zero duplicate sends, amplification ≤ 1.3.",
        "",
        "## Per path and route",
        "",
        "| path | route | requests | success | p50 ms | p95 ms | p99 ms | max ms | upstream req/req | stale | hits"
        " | answers |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, p in data["paths"].items():
        for rname, r in p["routes"].items():
            amp = _x(r["amplification"])
            if r["amplification"] is None:
                amp = f"{_x(r['sim_route_amplification'])}*"
            answers = ", ".join(f"{k}: {v}" for k, v in r["statuses"].items())
            lines.append(
                f"| {name} | {rname} | {r['requests']} | {_pct(r['success_rate'])} | {_ms(r['p50_ms'])}"
                f" | {_ms(r['p95_ms'])} | {_ms(r['p99_ms'])} | {_ms(r['max_ms'])} | {amp} | {r['stale']}"
                f" | {r['hits']} | {answers} |"
            )
    lines += [
        "",
        "- success: 2xx. Latency is measured from each request's scheduled time to the end of its body (open loop:"
        " a late start counts). A request with no HTTP answer within the client timeout counts as a failure.",
        "- upstream req/req: requests the sim received for the route divided by requests sent. `*`: conversations"
        " and bot_profiles are both the sim's `supabase.rest_read`; the figure is for the two together.",
        "- stale: answers marked `x-gateway-cache: STALE` (gateway) or `X-Cache-Status: STALE`/`UPDATING` (nginx);"
        " hits: `HIT`.",
        "- answers: status counts; `503 breaker_open` and the like are answers the gateway made (its"
        " `x-gateway-error` code), a bare status is the upstream's (nginx's 502s are its own).",
        "- duplicate sends: the sim's `messages.duplicates_delivered` (a message body delivered more than once).",
    ]
    if png:
        lines += ["", f"![timeline: p95 latency and error rate per second, outage windows shaded]({png})"]
    if data.get("errors"):
        lines += ["", "## Paths that could not run", ""] + [f"- {k}: {v}" for k, v in data["errors"].items()]
    return "\n".join(lines) + "\n"


def _window(w: dict[str, Any]) -> str:
    where = w["upstream"] + (f".{w['route']}" if w.get("route") else "")
    every = f" every {w['every_s']:g} s" if w.get("every_s") else ""
    start, end = w["start_s"], w["start_s"] + w["duration_s"]
    return f"{where} {start:g}–{end:g} s{every} ({w['mode']}, {w['rate'] * 100:g} %)"


def outage_spans(windows: list[dict[str, Any]], duration: float) -> list[tuple[str, float, float]]:
    spans = []
    for w in windows:
        start = w["start_s"]
        while start < duration:
            spans.append((w["upstream"], start, start + w["duration_s"]))
            if not w.get("every_s"):
                break
            start += w["every_s"]
    return spans


def plot(data: dict[str, Any], out: Path) -> bool:
    """The PNG timeline; False when matplotlib is not importable."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    meta = data["meta"]
    fig, (ax_lat, ax_err) = plt.subplots(2, 1, figsize=(12, 7), sharex=True)
    colors = {"supabase": "tab:green", "graph": "tab:blue", "gemini": "tab:red", "lookaside": "tab:gray", "*": "k"}
    for up, a, b in outage_spans(meta["outages"], meta["duration"]):
        for ax in (ax_lat, ax_err):
            ax.axvspan(a, b, color=colors.get(up, "k"), alpha=0.12, lw=0)
    for name, p in data["paths"].items():
        t = [b["t"] for b in p["timeline"]]
        ax_lat.plot(t, [b["p95_ms"] if b["p95_ms"] is not None else float("nan") for b in p["timeline"]], label=name)
        err = [b["error_rate"] * 100 if b["error_rate"] is not None else float("nan") for b in p["timeline"]]
        ax_err.plot(t, err, label=name)
    ax_lat.set_ylabel("p95 latency per second (ms)")
    ax_lat.set_yscale("log")
    ax_err.set_ylabel("errors per second (%)")
    ax_err.set_xlabel("seconds since the scenario clock restarted")
    handles = [
        plt.Rectangle((0, 0), 1, 1, color=colors[u], alpha=0.25, label=f"{u} outage")
        for u in sorted({w["upstream"] for w in meta["outages"]})
    ]
    ax_lat.legend(handles=ax_lat.get_legend_handles_labels()[0] + handles, loc="upper right", fontsize=8)
    ax_lat.set_title(f"fault replay: {meta['scenario']}, {meta['rate']:g} req/s, {meta['date']}")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return True


# --------------------------------------------------------------------------- main


def parse_rate(value: str) -> float:
    rate = float(value.removesuffix("/s"))
    if rate <= 0:
        raise argparse.ArgumentTypeError("rate must be positive")
    return rate


def parse_weights(value: str) -> dict[str, float]:
    weights = {r.name: r.weight for r in ROUTES}
    for item in value.split(","):
        name, _, w = item.partition("=")
        if name.strip() not in weights:
            raise argparse.ArgumentTypeError(f"unknown route {name!r} (expected one of {', '.join(weights)})")
        weights[name.strip()] = float(w)
    return weights


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--scenario", default="seeds", help="a name in config/scenarios/ or a path (default: seeds)")
    ap.add_argument(
        "--rate", type=parse_rate, default=None, help="requests per second, all routes (default 40, quick 15)"
    )
    ap.add_argument("--duration", type=float, default=None, help="seconds per path (default 150, quick 14)")
    ap.add_argument("--quick", action="store_true", help="14 s per path at 15 req/s: under 60 s in all")
    ap.add_argument("--paths", default=",".join(PATHS), help="comma-separated subset of direct,nginx,gateway")
    ap.add_argument("--weights", type=parse_weights, default=None, help="route=weight,... (see the ROUTES table)")
    ap.add_argument("--seed", type=int, default=7, help="seed of the schedule (default 7)")
    ap.add_argument(
        "--warmup",
        type=float,
        default=None,
        help="seconds of the same traffic before each path's measured run, under the same scenario,\n"
        "not measured: caches and pools as a long-running process has them (default 30, quick 0)",
    )
    ap.add_argument(
        "--config",
        type=Path,
        default=SIM_CONFIG,
        help="the gateway's configuration, its listen ports and upstream URLs rewritten (default: %(default)s)",
    )
    ap.add_argument("--no-save", action="store_true", help="write nothing under bench/results/")
    ap.add_argument("--json", type=Path, default=None, help="also write the raw results as JSON here")
    ap.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    args.rate = args.rate or (15.0 if args.quick else 40.0)
    args.duration = args.duration or (14.0 if args.quick else 150.0)
    if args.warmup is None:
        args.warmup = 0.0 if args.quick else 30.0
    args.weights = args.weights or {r.name: r.weight for r in ROUTES}
    args.paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    unknown = [p for p in args.paths if p not in PATHS]
    if unknown or not args.paths:
        ap.error(f"--paths: expected a subset of {','.join(PATHS)}, got {unknown or 'nothing'}")
    path = Path(args.scenario)
    args.scenario_path = path if path.suffix in (".yaml", ".yml") else SCENARIOS_DIR / f"{args.scenario}.yaml"
    if not args.scenario_path.is_file():
        ap.error(f"--scenario: {args.scenario_path} not found")
    return args


def _sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> dict[str, Any]:
    calls = build_schedule(args.rate, args.duration, args.weights, args.seed)
    routes = [r for r in ROUTES if args.weights.get(r.name, 0) > 0]
    progress = Progress(not args.no_progress)
    scenario = yaml.safe_load(args.scenario_path.read_text()) or {}
    data: dict[str, Any] = {
        "meta": {
            "date": dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
            "quick": args.quick,
            "scenario": scenario.get("name", args.scenario_path.stem),
            "scenario_description": scenario.get("description", ""),
            "rate": args.rate,
            "duration": args.duration,
            "warmup": args.warmup,
            "requests": len(calls),
            "seed": args.seed,
            "config": _shown(args.config),
            "weights": {r.name: args.weights[r.name] for r in routes},
            "machine": machine(),
            "outages": [],
        },
        "paths": {},
        "errors": {},
    }
    with tempfile.TemporaryDirectory(prefix="fault-replay-") as tmp, Processes(Path(tmp)) as procs:
        sim_ports = start_sim(procs, args.scenario_path)
        data["meta"]["outages"] = sim_get_stats(sim_ports).get("outages", [])
        for name in args.paths:
            proxy: Proc | None = None
            try:
                if name == "direct":
                    base = {up: f"http://{HOST}:{port}" for up, port in sim_ports.items()}
                elif name == "nginx":
                    if not shutil.which("nginx") and not Path("/usr/sbin/nginx").exists():
                        raise RuntimeError("nginx is not installed")
                    port = start_nginx(procs, sim_ports)
                    proxy = procs.procs[-1]
                    base = {up: f"http://{HOST}:{port}/{up}" for up in SIM_UPSTREAMS}
                else:
                    port = start_gateway(procs, sim_ports, args.config)
                    proxy = procs.procs[-1]
                    base = {up: f"http://{HOST}:{port}/{up}" for up in SIM_UPSTREAMS}
                if args.warmup > 0:  # fill caches and pools as a long-running process has them; not measured
                    sim_restart(sim_ports)
                    warm = [c for c in calls if c.at < args.warmup]
                    asyncio.run(replay(base, warm, f"{name} (warm-up)", progress))
                sim_restart(sim_ports)
                results = asyncio.run(replay(base, calls, f"{name} ({data['meta']['scenario']})", progress))
                stats = sim_get_stats(sim_ports)
            except RuntimeError as exc:
                progress.done()
                data["errors"][name] = str(exc)
                continue
            finally:
                if proxy is not None:
                    proxy.stop()
            summary = summarize(results, routes, stats)
            summary["duplicate_sends"] = stats.get("messages", {}).get("duplicates_delivered", 0)
            summary["messages"] = {k: v for k, v in stats.get("messages", {}).items() if k != "repeated"}
            summary["timeline"] = timeline(results, args.duration)
            data["paths"][name] = summary
            if args.json is not None:  # every request, for questions the report does not answer
                summary["results"] = [astuple(r) for r in results]
    return data


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a.split("=")[0] in ("--suite", "--seeds") for a in argv):  # the scenario suite: bench/fault_suite.py
        from fault_suite import main as suite_main

        return suite_main(argv)
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _sigterm)
    try:
        data = run(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    stamp = dt.date.today().isoformat()
    suffix = "-quick" if args.quick else ""
    pngs: dict[str, str | None] = {"dated": None, "latest": None}
    if not args.no_save and data["paths"]:
        args.out_dir.mkdir(parents=True, exist_ok=True)
        png = args.out_dir / f"fault-replay-{stamp}{suffix}.png"
        if plot(data, png):
            shutil.copyfile(png, args.out_dir / f"fault-replay-latest{suffix}.png")
            pngs = {"dated": png.name, "latest": f"fault-replay-latest{suffix}.png"}
    print(report_markdown(data, pngs["latest"]))
    if not args.no_save and data["paths"]:
        (args.out_dir / f"fault-replay-{stamp}{suffix}.md").write_text(report_markdown(data, pngs["dated"]))
        (args.out_dir / f"fault-replay-latest{suffix}.md").write_text(report_markdown(data, pngs["latest"]))
    if args.json is not None:
        args.json.write_text(json.dumps(data, indent=1, default=str))
    return 1 if data["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
