"""The overhead benchmark: what the gateway costs per request, next to what a proxy has to cost.

One run, one upstream, one wrk load, several paths to that upstream:

    direct               wrk → upstream nginx                      (the ceiling: no proxy at all)
    bare-aiohttp         wrk → bench/bare_forwarder.py → upstream  (the floor for any aiohttp proxy)
    nginx-proxy          wrk → nginx reverse proxy → upstream      (what a C proxy costs on this machine)
    gateway[-variant]    wrk → python -m gateway run → upstream    (one per entry of GATEWAY_VARIANTS)

The upstream is nginx answering a fixed 1 KiB body from memory (``return 200``) on 127.0.0.1: it
needs a fraction of a core at the rates a Python proxy reaches, and its CPU use is reported for every
run so that "the upstream was not the bottleneck" can be checked rather than assumed.

For every path: requests/s, p50 and p99 latency (wrk --latency), errors (socket errors and non-2xx),
req/s as a ratio of the bare forwarder's and of nginx's, CPU used by the process under test and by the
upstream during the measured run, and the RSS of the process under test idle (after start-up and one
sanity request) and under load (peak of samples taken every 0.2 s). The table goes to stdout and to
``bench/results/overhead-<date>.md`` and ``overhead-latest.md`` (``-quick`` suffixed for ``--quick``).

    python bench/overhead.py                    # default: -t2 -c32 -d10s, 2 s warm-up per path, ~2 min
    python bench/overhead.py --quick            # ~20 s: 3 s runs, only the quick variants (smoke test)
    python bench/overhead.py --rounds 3         # interleaved rounds, median req/s per path
    python bench/overhead.py --only gateway,bare-aiohttp --duration 30 --connections 64
    python bench/overhead.py --no-flame         # skip the flame graphs (py-spy) of the gateway rows
    python bench/overhead.py --base main        # each gateway row twice: this tree, and main's gateway/ (A/B)

After the measured rounds, each gateway row gets one more load run of ``--flame-duration`` seconds
under ``py-spy record`` (never during a measured run: sampling pauses the process): a flame graph
``bench/results/flame-<row>-<date>.svg`` and, in the report, the frames that took the largest share
of the samples, so the next person sees where the time goes. Needs ``py-spy`` (the ``bench`` extra)
and ptrace rights over the gateway (root, or ``kernel.yama.ptrace_scope=0``); without them the run
goes on and the report says why there is no flame graph.

Everything runs on 127.0.0.1 with free ports, in a temporary directory that is removed afterwards;
every process is started in its own process group and killed (SIGTERM, then SIGKILL) on the way out,
whatever happens. Needs ``nginx`` and ``wrk`` on PATH (Debian: ``apt-get install nginx-light wrk``).

To add a gateway variant, append a ``GatewayVariant`` to ``GATEWAY_VARIANTS``: its YAML snippet is
deep-merged into the base configuration (``base_gateway_config``), whose one upstream is named
``bench`` (prefix ``/bench``) and points at the upstream nginx.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import http.client
import json
import os
import platform
import re
import shutil
import signal
import socket
import string
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
HOST = "127.0.0.1"
BODY_BYTES = 1024
UPSTREAM_PATH = "/ok"  # what the upstream is asked for, on every path
GATEWAY_UPSTREAM = "bench"  # the gateway's upstream name, hence its prefix /bench
START_TIMEOUT = 20.0
STOP_TIMEOUT = 5.0
SAMPLE_EVERY = 0.2
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- gateway variants


@dataclass(frozen=True, slots=True)
class GatewayVariant:
    """A named gateway configuration: ``snippet`` (YAML) is deep-merged into the base configuration.

    ``path`` is what wrk asks the gateway for (the upstream receives it without the ``/bench`` prefix);
    ``quick`` variants also run under ``--quick``. ``headers`` are sent with every request (wrk ``-H``).
    ``cache`` is the ``x-gateway-cache`` value the answers must carry (checked on two requests before
    the load); the route's cache counters (``GET /admin/cache``) over the measured run go in the report.
    """

    name: str
    snippet: str
    note: str
    path: str = f"/{GATEWAY_UPSTREAM}{UPSTREAM_PATH}"
    quick: bool = False
    headers: tuple[str, ...] = ()  # request headers ("Name: value") wrk and the sanity request send
    cache: str | None = None  # the x-gateway-cache every answer must carry; the cache's counters are reported
    redis: bool = False  # the run starts a redis-server; ``{redis_url}`` in the snippet is its URL


GATEWAY_VARIANTS: list[GatewayVariant] = [
    GatewayVariant(
        "gateway",
        "log: {access_log: false}",
        "one generic upstream, no routes (the upstream's default policy: retry, breaker, limits), "
        "no cache, no access log",
        quick=True,
    ),
    GatewayVariant(
        "gateway-access-log",
        "log: {access_log: true}",
        "as `gateway`, with one JSON access-log line per request (stdout, redirected to a file)",
    ),
    GatewayVariant(
        "gateway-full-policy",
        """
        log: {access_log: false}
        upstreams:
          bench:
            routes:
              - name: ok
                match: {methods: [GET], path: "/ok"}
                rate_limit: {rate: 1000000/s, burst: 1000000}
                fault: {delay: {percent: 0, duration: 1s}, abort: {percent: 0, status: 503}}
                breaker: {mode: rate, min_requests: 10}
        """,
        "a matched route with every policy on: retry, a route breaker (rate mode), bulkhead, "
        "a rate limit and fault injection that never bite",
    ),
    GatewayVariant(
        "gateway-cache-hit",
        """
        log: {access_log: false}
        upstreams: {bench: {routes: [{name: ok, match: {methods: [GET], path: "/ok"}, cache: {ttl: 1h}}]}}
        """,
        "a GET route with `cache: {ttl: 1h}` (memory store): the sanity request fills the cache, so every "
        "measured request is a memory-cache hit and never reaches the upstream",
        cache="HIT",
    ),
    GatewayVariant(
        "gateway-cache-hit-redis",
        """
        log: {access_log: false}
        cache_store: {type: redis, url: "{redis_url}", timeout: 100ms}
        upstreams: {bench: {routes: [{name: ok, match: {methods: [GET], path: "/ok"}, cache: {ttl: 1h}}]}}
        """,
        "as `gateway-cache-hit`, with the entries in Redis (a local redis-server, no persistence); the hits "
        "are answered by the near cache in front of Redis (gateway.nearcache: no round trip while its "
        "subscription to Redis's invalidations is up)",
        cache="HIT",
        redis=True,
    ),
    GatewayVariant(
        "gateway-cache-miss",
        """
        log: {access_log: false}
        upstreams: {bench: {routes: [{name: ok, match: {methods: [GET], path: "/ok"}, cache: {ttl: 1h}}]}}
        """,
        "the same cached route, every request sent with `Cache-Control: no-cache`: each one looks its key up, "
        "goes upstream, reads the answer whole, stores it again and answers from memory (a miss's full cost)",
        headers=("Cache-Control: no-cache",),
        cache="REVALIDATED",
    ),
    GatewayVariant(
        "gateway-cache-uncacheable",
        """
        log: {access_log: false}
        upstreams: {bench: {routes: [{name: nostore, match: {methods: [GET], path: "/nostore"}, cache: {ttl: 1h}}]}}
        """,
        "a cached route whose upstream answers `Cache-Control: no-store` (upstream path /nostore): each "
        "request looks its key up, misses, goes upstream, is refused storage and is streamed like `gateway`",
        path=f"/{GATEWAY_UPSTREAM}/nostore",
        cache="MISS",
    ),
]


def base_gateway_config(port: int, admin_port: int, upstream_port: int) -> dict[str, Any]:
    """The configuration every variant starts from: one generic upstream ``bench``, quick drain."""
    return {
        "listen": {"host": HOST, "port": port},
        "admin": {"listen": {"host": HOST, "port": admin_port}},
        "log": {"level": "info", "format": "json", "access_log": False},
        "drain": {"delay": "0s", "timeout": "2s"},
        "upstreams": {GATEWAY_UPSTREAM: {"url": f"http://{HOST}:{upstream_port}", "kind": "generic"}},
    }


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``extra`` over ``base``, mappings merged key by key, anything else replaced."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def gateway_config(
    variant: GatewayVariant, port: int, admin_port: int, upstream_port: int, redis_url: str = ""
) -> dict[str, Any]:
    snippet = yaml.safe_load(variant.snippet.replace("{redis_url}", redis_url)) or {}
    if not isinstance(snippet, dict):
        raise ValueError(f"variant {variant.name}: the snippet must be a YAML mapping")
    return deep_merge(base_gateway_config(port, admin_port, upstream_port), snippet)


# --------------------------------------------------------------------------- processes


def gateway_env(tree: Path = REPO_DIR) -> dict[str, str]:
    """The gateway's environment: this checkout (or ``tree``) first on PYTHONPATH, no GATEWAY_* variables.

    ``python -m gateway`` would otherwise import whatever the installed distribution points at (an editable
    install may point at another copy of the repository), and measure code other than this working tree's.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(tree), env.get("PYTHONPATH", "")) if p)
    return env


def base_tree(rev: str, workdir: Path) -> Path:
    """The ``gateway`` package as of commit ``rev`` (``git archive``), for the ``--base`` rows."""
    tree = workdir / "base"
    tree.mkdir()
    archive = subprocess.run(
        ["git", "archive", "--format=tar", rev, "gateway"], capture_output=True, cwd=REPO_DIR, timeout=60
    )
    if archive.returncode != 0:
        raise RuntimeError(f"--base {rev}: git archive failed: {archive.stderr.decode(errors='replace').strip()}")
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True, timeout=60)
    return tree


def gateway_module() -> str:
    """Where the gateway package the benchmark runs is imported from (``gateway_env``)."""
    code = "import gateway, sys; sys.stdout.write(gateway.__file__ + ' ' + gateway.__version__)"
    try:
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, env=gateway_env(), cwd="/"
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return f"? ({exc})"
    if done.returncode != 0:
        return f"? (import failed: {done.stderr.strip().splitlines()[-1:]})"
    path, _, version = done.stdout.partition(" ")
    return f"{Path(path).parent} (version {version})"


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports free on 127.0.0.1 right now (held open together, so never the same twice)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((HOST, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def group_pids(pgid: int) -> list[int]:
    """The live processes of process group ``pgid`` (nginx: master and workers)."""
    pids: list[int] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid:  # fields[0] is state (field 3 of stat), fields[2] is pgrp (field 5)
            pids.append(int(entry))
    return pids


def proc_status(pid: int, field: str) -> int:
    """A number of ``/proc/PID/status`` (``VmRSS`` in KiB, ``Threads``…), 0 when the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_kib(pid: int) -> int:
    """VmRSS of one process in KiB, 0 when it is gone."""
    return proc_status(pid, "VmRSS")


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process, in seconds."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime: fields 14 and 15 of stat


@dataclass(slots=True)
class Proc:
    """A process we started, in its own process group; ``log`` holds its stdout and stderr."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pgid(self) -> int:
        return self.popen.pid  # start_new_session: the leader's pid is the group id

    def rss_kib(self) -> int:
        return sum(rss_kib(pid) for pid in group_pids(self.pgid))

    def cpu_seconds(self) -> float:
        return sum(cpu_seconds(pid) for pid in group_pids(self.pgid))

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGTERM to the group, SIGKILL after STOP_TIMEOUT; never raises."""
        for sig, wait in ((signal.SIGTERM, STOP_TIMEOUT), (signal.SIGKILL, STOP_TIMEOUT)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pgid, sig)
            try:
                self.popen.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue
        # workers that outlived their master (never expected) go too
        for pid in group_pids(self.pgid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


class Processes(contextlib.AbstractContextManager["Processes"]):
    """Every process of the run; all stopped on exit, in reverse order of start."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[Proc] = []

    def start(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None) -> Proc:
        log = self.workdir / f"{name}.log"
        with log.open("wb") as out:
            popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=self.workdir,
                env=env,
            )
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def __exit__(self, *exc: object) -> None:
        for proc in reversed(self.procs):
            proc.stop()


def _header(line: str) -> tuple[str, str]:
    name, _, value = line.partition(":")
    return name.strip(), value.strip()


def http_get(
    port: int, path: str, timeout: float = 2.0, headers: Sequence[str] = ()
) -> tuple[int, dict[str, str], bytes]:
    """One GET; ``headers`` as ``"Name: value"`` lines (the form wrk's ``-H`` takes)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", path, headers=dict(_header(h) for h in headers))
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def wait_until(proc: Proc, ready: Any, what: str, timeout: float = START_TIMEOUT) -> None:
    """Poll ``ready()`` until true; raise with the process's log when it dies or time runs out."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited ({proc.popen.returncode}) before {what}:\n{proc.log_tail()}")
        with contextlib.suppress(OSError, http.client.HTTPException):
            if ready():
                return
        time.sleep(0.05)
    raise RuntimeError(f"{proc.name}: no {what} after {timeout:g}s:\n{proc.log_tail()}")


def port_open(port: int) -> bool:
    with socket.create_connection((HOST, port), timeout=0.5):
        return True


def render(template: str, workdir: Path, **values: object) -> Path:
    text = string.Template((BENCH_DIR / template).read_text()).substitute({k: str(v) for k, v in values.items()})
    out = workdir / template.removesuffix(".template")
    out.write_text(text)
    return out


def start_nginx(procs: Processes, name: str, template: str, **values: object) -> Proc:
    prefix = procs.workdir / name
    prefix.mkdir()
    conf = render(template, prefix, prefix=prefix, **values)
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    check = subprocess.run(
        [nginx, "-t", "-q", "-p", str(prefix), "-e", str(prefix / "error.log"), "-c", str(conf)],
        capture_output=True,
        text=True,
        timeout=15,
    )
    if check.returncode != 0:
        raise RuntimeError(f"{name}: nginx -t failed:\n{check.stderr}")
    proc = procs.start(name, [nginx, "-p", str(prefix), "-e", str(prefix / "error.log"), "-c", str(conf)])
    port = int(str(values["port"]))
    wait_until(proc, lambda: port_open(port), f"listener on port {port}")
    return proc


# --------------------------------------------------------------------------- targets and measurements


@dataclass(slots=True)
class Target:
    """One path to the upstream: where wrk points, and the process whose cost we measure (if any)."""

    name: str
    kind: str  # direct | bare | nginx | gateway
    port: int
    path: str
    note: str
    proc: Proc | None = None
    idle_rss_kib: int | None = None
    broken: str | None = None  # why it was not benchmarked
    sanity: dict[str, str] = field(default_factory=dict)
    headers: tuple[str, ...] = ()  # sent with every request
    cache: str | None = None  # the x-gateway-cache every answer must carry (gateway variants with a cache)
    admin_port: int | None = None  # the gateway's, for GET /admin/cache

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}{self.path}"


@dataclass(slots=True)
class WrkResult:
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    requests: int
    socket_errors: int
    non_2xx: int
    raw: str


@dataclass(slots=True)
class Measurement:
    target: str
    round: int
    wrk: WrkResult
    proxy_cpu_pct: float | None  # of one core, process group under test
    upstream_cpu_pct: float
    rss_peak_kib: int | None
    rss_end_kib: int | None
    cache_counts: dict[str, int] | None = None  # GET /admin/cache counters of the upstream, over the measured run


_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_DURATION = r"([\d.]+)(us|ms|s|m|h)"


def _ms(value: str, unit: str) -> float:
    return float(value) * _UNIT_MS[unit]


def parse_wrk(out: str) -> WrkResult:
    """Requests/s, p50, p99 and error counts from ``wrk --latency`` output."""
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", out, re.M)
    p50 = re.search(rf"^\s+50(?:\.0+)?%\s+{_DURATION}", out, re.M)
    p99 = re.search(rf"^\s+99(?:\.0+)?%\s+{_DURATION}", out, re.M)
    total = re.search(r"^\s+(\d+) requests in", out, re.M)
    if not (rps and p50 and p99 and total):
        raise ValueError(f"cannot read wrk's output:\n{out}")
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return WrkResult(
        requests_per_s=float(rps.group(1)),
        p50_ms=_ms(*p50.groups()),
        p99_ms=_ms(*p99.groups()),
        requests=int(total.group(1)),
        socket_errors=sum(int(g) for g in sock.groups()) if sock else 0,
        non_2xx=int(non2xx.group(1)) if non2xx else 0,
        raw=out,
    )


def run_wrk(url: str, threads: int, connections: int, seconds: float, headers: Sequence[str] = ()) -> WrkResult:
    wrk = shutil.which("wrk") or "wrk"
    argv = [wrk, f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s", "--latency", "--timeout", "5s"]
    for header in headers:
        argv += ["-H", header]
    argv.append(url)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30, start_new_session=True)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr.strip()}\n{done.stdout}")
    return parse_wrk(done.stdout)


class RssSampler(threading.Thread):
    """Samples a process group's RSS every SAMPLE_EVERY seconds until stopped; keeps the peak."""

    def __init__(self, proc: Proc) -> None:
        super().__init__(daemon=True)
        self.proc = proc
        self.peak = 0
        self.last = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self._sample()
            self._stop_event.wait(SAMPLE_EVERY)

    def _sample(self) -> None:
        rss = self.proc.rss_kib()
        if rss:
            self.last = rss
            self.peak = max(self.peak, rss)

    def finish(self) -> tuple[int, int]:
        self._sample()  # the end of the load
        self._stop_event.set()
        self.join(2)
        return self.peak, self.last


_CACHE_COUNTERS = ("hits", "misses", "stale_served", "collapsed", "bypassed", "stored", "entries")


def cache_counters(target: Target) -> dict[str, int]:
    """The gateway's cache counters for the bench upstream (GET /admin/cache); {} when there are none."""
    if target.admin_port is None:
        return {}
    try:
        status, _, body = http_get(target.admin_port, "/admin/cache", timeout=5.0)
    except (OSError, http.client.HTTPException) as exc:
        raise RuntimeError(f"GET /admin/cache failed: {exc!r}") from exc
    if status != 200:
        raise RuntimeError(f"GET /admin/cache: status {status}: {body[:200]!r}")
    counts = json.loads(body).get("upstreams", {}).get(GATEWAY_UPSTREAM, {})
    return {k: int(counts.get(k, 0)) for k in _CACHE_COUNTERS}


def measure(target: Target, upstream: Proc, args: argparse.Namespace, round_no: int) -> Measurement:
    # warm-up: pools, caches, JIT-less but hot
    run_wrk(target.url, args.threads, args.connections, args.warmup, target.headers)
    cache0 = cache_counters(target) if target.cache else {}
    sampler = RssSampler(target.proc) if target.proc else None
    proxy_cpu0 = target.proc.cpu_seconds() if target.proc else 0.0
    up_cpu0 = upstream.cpu_seconds()
    t0 = time.monotonic()
    if sampler:
        sampler.start()
    try:
        result = run_wrk(target.url, args.threads, args.connections, args.duration, target.headers)
    finally:
        peak, end = sampler.finish() if sampler else (0, 0)
    wall = time.monotonic() - t0
    cache_counts = None
    if target.cache:
        cache1 = cache_counters(target)
        # the counters grow, except `entries`, which is what the store holds at the end
        cache_counts = {k: v - (cache0.get(k, 0) if k != "entries" else 0) for k, v in cache1.items()}
    proxy_cpu = (target.proc.cpu_seconds() - proxy_cpu0) / wall * 100 if target.proc else None
    return Measurement(
        target=target.name,
        round=round_no,
        wrk=result,
        proxy_cpu_pct=proxy_cpu,
        upstream_cpu_pct=(upstream.cpu_seconds() - up_cpu0) / wall * 100,
        rss_peak_kib=peak if sampler else None,
        rss_end_kib=end if sampler else None,
        cache_counts=cache_counts,
    )


def sanity_check(target: Target) -> None:
    """One request before any load: 200 and the 1 KiB body, or the target is marked broken.

    A variant with ``cache`` gets a second request, whose ``x-gateway-cache`` must be that value (the
    first one filled the cache, so a ``HIT`` variant is a hit from the second request on).
    """
    keep = ("server", "content-length", "transfer-encoding", "x-gateway-upstream", "x-gateway-attempts")
    keep += ("x-gateway-cache",)
    for n in range(2 if target.cache else 1):
        try:
            status, headers, body = http_get(target.port, target.path, timeout=5.0, headers=target.headers)
        except (OSError, http.client.HTTPException) as exc:
            target.broken = f"sanity GET {target.path} failed: {exc!r}"
            return
        target.sanity = {k: v for k, v in headers.items() if k in keep}
        if status != 200 or len(body) != BODY_BYTES:
            target.broken = (
                f"sanity GET {target.path}: status {status}, {len(body)} body bytes (want 200 and {BODY_BYTES}); "
                f"headers {headers}; body {body[:300]!r}"
            )
            return
        if n == 1 and headers.get("x-gateway-cache") != target.cache:
            target.broken = (
                f"sanity GET {target.path}, second request: x-gateway-cache {headers.get('x-gateway-cache')!r} "
                f"(want {target.cache!r}); headers {headers}"
            )


# --------------------------------------------------------------------------- setting the run up


def start_targets(
    procs: Processes, args: argparse.Namespace, variants: list[GatewayVariant]
) -> tuple[Proc, list[Target]]:
    n_ports = 3 + 2 * len(variants) * (2 if args.base else 1)
    ports = iter(free_ports(n_ports))
    up_port = next(ports)
    body = ("0123456789abcdef" * (BODY_BYTES // 16 + 1))[: BODY_BYTES - 1] + "\n"
    upstream = start_nginx(
        procs, "upstream", "nginx_upstream.conf.template", port=up_port, workers=args.upstream_workers, body=body
    )
    targets: list[Target] = []
    wanted = set(args.only.split(",")) if args.only else None

    def want(name: str) -> bool:
        return wanted is None or name in wanted

    if want("direct"):
        targets.append(Target("direct", "direct", up_port, UPSTREAM_PATH, "wrk → upstream nginx (no proxy)"))

    port = next(ports)
    if want("bare-aiohttp"):
        proc = procs.start(
            "bare-aiohttp",
            [
                sys.executable,
                str(BENCH_DIR / "bare_forwarder.py"),
                "--upstream",
                f"http://{HOST}:{up_port}",
                "--port",
                str(port),
            ],
        )
        wait_until(proc, lambda: port_open(port), f"listener on port {port}")
        targets.append(Target("bare-aiohttp", "bare", port, UPSTREAM_PATH, "bench/bare_forwarder.py", proc))

    port = next(ports)
    if want("nginx-proxy"):
        proc = start_nginx(
            procs,
            "nginx-proxy",
            "nginx_proxy.conf.template",
            port=port,
            upstream_port=up_port,
            upstream_host=f"{HOST}:{up_port}",
            workers=args.proxy_workers,
        )
        note = f"bench/nginx_proxy.conf.template, {args.proxy_workers} worker(s), keepalive pool"
        targets.append(Target("nginx-proxy", "nginx", port, UPSTREAM_PATH, note, proc))

    redis_url = ""
    if any(v.redis and want(v.name) for v in variants):
        redis_port = free_ports(1)[0]
        redis_argv = ["redis-server", "--port", str(redis_port), "--bind", HOST, "--save", "", "--appendonly", "no"]
        redis = procs.start("redis", redis_argv)
        wait_until(redis, lambda: port_open(redis_port), f"redis-server on port {redis_port}")
        redis_url = f"redis://{HOST}:{redis_port}/0"

    builds: list[tuple[str, Path, str]] = [("", REPO_DIR, "")]  # (name suffix, tree, note suffix)
    if args.base:
        builds.append((f"@{args.base}", base_tree(args.base, procs.workdir), f" — the gateway as of {args.base}"))
    for variant, (suffix, tree, aside) in [(v, b) for v in variants for b in builds]:
        port, admin_port = next(ports), next(ports)
        if not want(variant.name):
            continue
        name = variant.name + suffix
        conf = procs.workdir / f"{name}.yaml"
        config = gateway_config(variant, port, admin_port, up_port, redis_url)
        conf.write_text(yaml.safe_dump(config, sort_keys=False))
        argv = [sys.executable, "-m", "gateway", "run", "--config", str(conf)]
        proc = procs.start(name, argv, env=gateway_env(tree))
        target = Target(
            name,
            "gateway",
            port,
            variant.path,
            variant.note + aside,
            proc,
            headers=variant.headers,
            cache=variant.cache,
            admin_port=admin_port,
        )
        try:
            wait_until(proc, lambda p=admin_port: http_get(p, "/readyz")[0] == 200, "200 from /readyz")
        except RuntimeError as exc:
            target.broken = str(exc)
        targets.append(target)
    return upstream, targets


def settle_and_record_idle(targets: list[Target]) -> None:
    time.sleep(0.5)
    for target in targets:
        if target.proc is not None and target.broken is None:
            target.idle_rss_kib = target.proc.rss_kib()


# --------------------------------------------------------------------------- flame graphs

# py-spy's flame graph frames: "<title>f (file:line) (9 samples, 1.2%)</title><rect … y="84" … fg:x="7" fg:w="2"/>"
_FRAME = re.compile(
    r"<title>(?P<frame>.+?) \([\d,]+ samples?, [\d.]+%\)</title><rect [^>]*?y=\"(?P<y>\d+)\"[^>]*?"
    r"fg:x=\"(?P<x>\d+)\" fg:w=\"(?P<w>\d+)\""
)


@dataclass(slots=True)
class Flame:
    svg: Path | None
    requests_per_s: float = 0.0
    own: list[tuple[str, float]] = field(default_factory=list)  # (frame, % of samples in the frame itself)
    gateway: list[tuple[str, float]] = field(default_factory=list)  # gateway/ frames, callees included
    error: str | None = None


def _unescape(text: str) -> str:
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", '"').replace("&amp;", "&")


def flame_frames(svg: str, limit: int = 15) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
    """From py-spy's SVG: the frames with the most samples of their own (the function itself, not its
    callees; line numbers dropped, summed over every place the function appears), and the gateway's own
    functions with their callees (counted once per stack: a frame under itself is not added twice)."""
    frames = [(_unescape(m["frame"]), int(m["y"]), int(m["x"]), int(m["w"])) for m in _FRAME.finditer(svg)]
    if not frames:
        return [], []
    total = sum(w for _f, y, _x, w in frames if y == min(fy for _n, fy, _fx, _fw in frames))
    by_level: dict[int, list[tuple[str, int, int]]] = {}
    for name, y, x, w in frames:
        by_level.setdefault(y, []).append((name, x, w))
    levels = sorted(by_level)
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    for i, y in enumerate(levels):
        deeper = by_level[levels[i + 1]] if i + 1 < len(levels) else []
        for name, x, w in by_level[y]:
            covered = sum(cw for _c, cx, cw in deeper if x <= cx < x + w)
            function = re.sub(r":\d+\)$", ")", name)
            own[function] = own.get(function, 0) + w - covered
            if "(gateway/" in name:
                inclusive.setdefault(function, 0)
                inclusive[function] = max(inclusive[function], 0) + w
    pct = 100.0 / max(total, 1)
    top_own = sorted(((f, n * pct) for f, n in own.items() if n > 0), key=lambda fp: -fp[1])[:limit]
    top_gateway = sorted(((f, min(n * pct, 100.0)) for f, n in inclusive.items()), key=lambda fp: -fp[1])[:limit]
    return top_own, top_gateway


def record_flame(target: Target, args: argparse.Namespace, started: dt.datetime) -> Flame:
    """One load run of ``--flame-duration`` seconds with py-spy sampling the gateway; the SVG and its top frames."""
    assert target.proc is not None
    pyspy = shutil.which("py-spy")
    if pyspy is None:
        return Flame(None, error="py-spy not found (pip install py-spy, or the bench extra)")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    svg = args.out_dir / f"flame-{target.name}-{started:%Y-%m-%d}.svg"
    seconds = max(1, round(args.flame_duration))
    argv = [pyspy, "record", "--pid", str(target.proc.popen.pid), "--rate", "250", "--duration", str(seconds)]
    argv += ["--format", "flamegraph", "--output", str(svg), "--nonblocking"]
    spy = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        time.sleep(0.5)  # py-spy attaches
        result = run_wrk(target.url, args.threads, args.connections, seconds, target.headers)
        out, _ = spy.communicate(timeout=seconds + 30)
    except (RuntimeError, ValueError, subprocess.TimeoutExpired) as exc:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(spy.pid, signal.SIGKILL)
        spy.wait()
        return Flame(None, error=f"flame run failed: {exc}")
    if spy.returncode != 0 or not svg.exists():
        text = out.decode(errors="replace").strip().splitlines()
        return Flame(None, error=f"py-spy exited {spy.returncode}: {text[-1] if text else ''}")
    own, gateway = flame_frames(svg.read_text(errors="replace"))
    return Flame(svg, result.requests_per_s, own, gateway)


# --------------------------------------------------------------------------- the report


def _run(argv: Sequence[str]) -> str:
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=10, cwd=REPO_DIR)
    except (OSError, subprocess.SubprocessError):
        return "?"
    return (done.stdout or done.stderr).strip()


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "?"


def machine() -> dict[str, str]:
    model = cpu_model()
    versions: dict[str, str] = {}
    for mod in ("aiohttp", "uvloop", "yarl", "multidict"):
        try:
            versions[mod] = __import__(mod).__version__
        except ImportError:
            versions[mod] = "not installed"
    commit = _run(["git", "rev-parse", "--short", "HEAD"])
    dirty = _run(["git", "status", "--porcelain", "--", "gateway"])
    return {
        "nproc": str(len(os.sched_getaffinity(0))),
        "cpu": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "aiohttp": versions["aiohttp"],
        "uvloop": versions["uvloop"],
        "yarl": versions["yarl"],
        "multidict": versions["multidict"],
        "nginx": _run(["nginx", "-v"]).removeprefix("nginx version: "),
        "wrk": _run(["wrk", "-v"]).splitlines()[0].split(" [")[0] if shutil.which("wrk") else "?",
        "gateway": f"{commit}{' + uncommitted changes in gateway/' if dirty and dirty != '?' else ''}",
        "gateway_module": gateway_module(),
        "loadavg": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
    }


def _mib(kib: int | None) -> str:
    return f"{kib / 1024:.1f} MiB" if kib else "—"


def _ratio(value: float, ref: float | None) -> str:
    return f"{value / ref:.2f}×" if ref else "—"


def _pct(value: float | None) -> str:
    return f"{value:.0f}%" if value is not None else "—"


def _per_request(cpu_pct: float | None, rps: float) -> str:
    """CPU time per request in microseconds: the cost that does not depend on how much CPU was free."""
    return f"{cpu_pct / 100 / rps * 1e6:.0f} µs" if cpu_pct is not None and rps > 0 else "—"


def summarize(target: Target, runs: list[Measurement]) -> Measurement | None:
    """The run with the median req/s (the only run when there is one)."""
    if not runs:
        return None
    ordered = sorted(runs, key=lambda m: m.wrk.requests_per_s)
    return ordered[(len(ordered) - 1) // 2]


def report(
    args: argparse.Namespace,
    info: dict[str, str],
    targets: list[Target],
    results: dict[str, list[Measurement]],
    started: dt.datetime,
    elapsed: float,
    flames: dict[str, Flame] | None = None,
) -> str:
    best = {t.name: summarize(t, results.get(t.name, [])) for t in targets}
    bare = best.get("bare-aiohttp")
    nginx = best.get("nginx-proxy")
    bare_rps = bare.wrk.requests_per_s if bare else None
    nginx_rps = nginx.wrk.requests_per_s if nginx else None
    cpus = int(info["nproc"])
    lines = [
        f"# Gateway overhead benchmark — {started:%Y-%m-%d %H:%M} {'(quick)' if args.quick else ''}".rstrip(),
        "",
        f"- machine: {info['nproc']} CPU(s), {info['cpu']}, Linux {info['kernel']}, load average at start "
        f"{info['loadavg']}",
        f"- software: Python {info['python']}, aiohttp {info['aiohttp']}, uvloop {info['uvloop']}, "
        f"yarl {info['yarl']}, multidict {info['multidict']}, nginx {info['nginx']}, {info['wrk']}; "
        f"Python paths on {'uvloop' if info['uvloop'] != 'not installed' else 'the asyncio loop'}; "
        f"gateway from {info['gateway_module']}, commit {info['gateway']}",
        f"- load: `wrk -t{args.threads} -c{args.connections} -d{args.duration:g}s --latency`, after a "
        f"{args.warmup:g} s warm-up per path; {args.rounds} round(s)"
        + (", rounds interleaved, the run with the median req/s shown" if args.rounds > 1 else "")
        + f"; total time {elapsed:.0f} s",
        f"- upstream: nginx, {args.upstream_workers} worker(s), `return 200` with a {BODY_BYTES}-byte body, "
        "keep-alive; all traffic on 127.0.0.1",
        "",
        "| path | req/s | p50 | p99 | vs bare aiohttp | vs nginx proxy | errors | proxy CPU | proxy CPU/req "
        "| upstream CPU | idle RSS | loaded RSS (peak) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for t in targets:
        m = best[t.name]
        if m is None:
            lines.append(f"| {t.name} | not run | | | | | | | | | {_mib(t.idle_rss_kib)} | |")
            continue
        w = m.wrk
        spread = ""
        if args.rounds > 1:
            all_rps = [r.wrk.requests_per_s for r in results[t.name]]
            spread = f" ({min(all_rps):.0f}–{max(all_rps):.0f})"
        errors = w.socket_errors + w.non_2xx
        lines.append(
            f"| {t.name} | {w.requests_per_s:,.0f}{spread} | {w.p50_ms:.2f} ms | {w.p99_ms:.2f} ms "
            f"| {_ratio(w.requests_per_s, bare_rps)} | {_ratio(w.requests_per_s, nginx_rps)} "
            f"| {errors} | {_pct(m.proxy_cpu_pct)} | {_per_request(m.proxy_cpu_pct, w.requests_per_s)} "
            f"| {_pct(m.upstream_cpu_pct)} "
            f"| {_mib(t.idle_rss_kib)} | {_mib(m.rss_peak_kib)} |"
        )
    lines += ["", "Paths:", ""]
    for t in targets:
        line = f"- **{t.name}**: {t.note}"
        if t.headers:
            line += f" (wrk -H {', '.join(repr(h) for h in t.headers)})"
        m = best[t.name]
        if m is not None and m.cache_counts is not None:
            c = m.cache_counts
            line += (
                f". Cache over the shown run: {c['hits']:,} hits, {c['misses']:,} misses (revalidations "
                f"included), {c['stored']:,} stored, {c['collapsed']:,} collapsed, {c['stale_served']:,} stale "
                f"for wrk's {m.wrk.requests:,} answers; {c['entries']} entr{'y' if c['entries'] == 1 else 'ies'} "
                f"held at the end; every answer expected `x-gateway-cache: {t.cache}`"
            )
        if t.broken:
            line += f" — **not benchmarked**: {t.broken}"
        lines.append(line)
    lines += [
        "",
        "How to read it:",
        "",
        "- req/s and latency are measured by wrk on the same machine. **Ratios matter more than absolute "
        "numbers**: `vs bare aiohttp` is the share of the bare aiohttp forwarder's throughput the path keeps "
        "(the gateway's own per-request work shows as the gap below 1.00×); `vs nginx proxy` puts it next to a "
        "C proxy.",
        f"- **Shared CPU**: this machine has {cpus} CPU(s); wrk ({args.threads} threads), the upstream nginx and "
        "the proxy under test all run on them at once, so every path is partly limited by wrk's and the "
        "upstream's own CPU use, and the direct and nginx rows are held down by wrk more than the Python rows."
        if cpus <= 4
        else f"- wrk, the upstream and the proxy under test share this machine's {cpus} CPUs.",
        "- proxy CPU / upstream CPU: CPU time used during the measured run, in % of one core (user + system, "
        "all processes of the group: nginx master + workers). A Python proxy near 100% is CPU-bound on its "
        "single event loop; an upstream well under 100% was not the bottleneck. proxy CPU/req = proxy CPU time "
        "÷ requests served: the per-request cost, which depends less than req/s on how much CPU wrk and "
        "other tenants left free.",
        "- RSS: VmRSS from /proc, summed over the process group (for nginx this counts shared pages more than "
        "once). Idle: after start-up and one request, before any load; loaded: peak of samples every "
        f"{SAMPLE_EVERY:g} s during the measured run.",
        "- errors: wrk socket errors plus non-2xx answers; any non-zero value makes that row suspect.",
    ]
    if flames:
        lines += [
            "",
            "## Where the gateway's time goes (py-spy)",
            "",
            f"One extra {args.flame_duration:g} s load run per gateway row after the measured rounds, sampled by "
            "`py-spy record --rate 250 --nonblocking` (not part of the numbers above). Shares are of all the "
            "samples of the process: *own* is time in the function itself (a system call such as a socket "
            "write counts for the Python function that made it), summed over every place it appears; the "
            "gateway's functions are also shown with their callees.",
            "",
        ]
        for name, flame in flames.items():
            if flame.svg is None:
                lines.append(f"- **{name}**: no flame graph: {flame.error}")
                continue
            lines += [f"### {name} — `{flame.svg.name}` ({flame.requests_per_s:,.0f} req/s while sampled)", ""]
            lines += ["| own time: function | share |", "|---|---:|"]
            lines += [f"| `{frame}` | {pct:.1f}% |" for frame, pct in flame.own]
            lines += ["", "| gateway function, callees included | share |", "|---|---:|"]
            lines += [f"| `{frame}` | {pct:.1f}% |" for frame, pct in flame.gateway]
            lines.append("")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Compare direct, bare aiohttp, nginx and gateway paths to one upstream under one wrk load."
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of measured load per path (10)")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (32)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (2)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up load per path, discarded (2)")
    parser.add_argument("--rounds", type=int, default=1, help="interleaved rounds; the median req/s is shown (1)")
    parser.add_argument("--only", help="comma-separated path names to run, e.g. gateway,bare-aiohttp")
    parser.add_argument("--upstream-workers", type=int, default=1, help="nginx workers of the upstream (1)")
    parser.add_argument("--proxy-workers", type=int, default=1, help="nginx workers of the nginx proxy (1)")
    parser.add_argument("--quick", action="store_true", help="~20 s: 3 s runs, 1 s warm-up, quick variants only")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR, help="where the markdown goes (bench/results)")
    parser.add_argument("--no-save", action="store_true", help="print the table only")
    parser.add_argument("--json", type=Path, help="also write the raw results as JSON to this file")
    parser.add_argument("--list", action="store_true", help="list the paths and gateway variants, then exit")
    parser.add_argument("--no-flame", action="store_true", help="no py-spy flame graphs of the gateway rows")
    parser.add_argument(
        "--base", metavar="REV", help="also run every gateway row with the gateway as of commit REV (A/B in one run)"
    )
    parser.add_argument(
        "--flame-duration", type=float, default=5.0, help="seconds of sampled load per gateway row, for its flame graph"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.warmup, args.rounds = min(args.duration, 3.0), min(args.warmup, 1.0), 1
        args.no_flame = True
    if args.no_save:  # nothing written to results/, the SVGs included
        args.no_flame = True
    if args.threads < 1 or args.connections < args.threads:
        parser.error("--connections must be at least --threads, and --threads at least 1")
    if args.duration <= 0 or args.warmup < 0 or args.rounds < 1:
        parser.error("--duration must be > 0, --warmup >= 0, --rounds >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    variants = [v for v in GATEWAY_VARIANTS if v.quick or not args.quick]
    if args.list:
        for name in ("direct", "bare-aiohttp", "nginx-proxy"):
            print(name)
        for v in GATEWAY_VARIANTS:
            print(f"{v.name}{' (quick)' if v.quick else ''}: {v.note}")
        return 0
    for tool in ("nginx", "wrk"):
        if not shutil.which(tool) and not Path(f"/usr/sbin/{tool}").exists():
            print(f"overhead.py: `{tool}` not found (Debian: apt-get install -y nginx-light wrk)", file=sys.stderr)
            return 2
    # SIGTERM unwinds like Ctrl-C, so the finally blocks stop every process and remove the temp dir
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = dt.datetime.now()
    t0 = time.monotonic()
    info = machine()
    results: dict[str, list[Measurement]] = {}
    with tempfile.TemporaryDirectory(prefix="gw-overhead-") as tmp, Processes(Path(tmp)) as procs:
        upstream, targets = start_targets(procs, args, variants)
        for target in targets:
            if target.broken is None:
                sanity_check(target)
        settle_and_record_idle(targets)
        runnable = [t for t in targets if t.broken is None]
        for round_no in range(args.rounds):
            shift = round_no % max(len(runnable), 1)
            for target in runnable[shift:] + runnable[:shift]:
                if target.proc is not None and not target.proc.alive():
                    target.broken = f"process exited ({target.proc.popen.returncode}):\n{target.proc.log_tail()}"
                    continue
                print(f"… {target.name} (round {round_no + 1}/{args.rounds})", file=sys.stderr, flush=True)
                try:
                    results.setdefault(target.name, []).append(measure(target, upstream, args, round_no))
                except (RuntimeError, ValueError, subprocess.TimeoutExpired) as exc:
                    target.broken = f"load run failed: {exc}"
            runnable = [t for t in runnable if t.broken is None]
        flames: dict[str, Flame] = {}
        if not args.no_flame:
            for target in runnable:
                this_tree = target.kind == "gateway" and "@" not in target.name  # not the --base rows
                if this_tree and target.proc is not None and target.proc.alive():
                    print(f"… {target.name} (flame graph)", file=sys.stderr, flush=True)
                    flames[target.name] = record_flame(target, args, started)
        text = report(args, info, targets, results, started, time.monotonic() - t0, flames)
    print(text, end="")
    if not args.no_save:
        args.out_dir.mkdir(parents=True, exist_ok=True)
        suffix = "-quick" if args.quick else ""
        dated = args.out_dir / f"overhead-{started:%Y-%m-%d}{suffix}.md"
        latest = args.out_dir / f"overhead-latest{suffix}.md"
        dated.write_text(text)
        latest.write_text(text)
        print(
            f"\nwritten: {dated.relative_to(Path.cwd()) if dated.is_relative_to(Path.cwd()) else dated}, {latest.name}",
            file=sys.stderr,
        )
    if args.json:
        payload = {
            "started": started.isoformat(timespec="seconds"),
            "machine": info,
            "parameters": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "targets": [
                {
                    "name": t.name,
                    "note": t.note,
                    "broken": t.broken,
                    "idle_rss_kib": t.idle_rss_kib,
                    "sanity_headers": t.sanity,
                    "runs": [
                        {**asdict(m), "wrk": {k: v for k, v in asdict(m.wrk).items() if k != "raw"}}
                        for m in results.get(t.name, [])
                    ],
                }
                for t in targets
            ],
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
    broken = [t.name for t in targets if t.broken]
    return 1 if broken else 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except KeyboardInterrupt:
        print("overhead.py: interrupted; every process stopped, temporary files removed", file=sys.stderr)
        raise SystemExit(130) from None
