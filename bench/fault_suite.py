"""The scenario suite (issue 13): ``fault_replay.py --suite N`` replays many fault schedules, not one.

Each member of the suite is a scenario: ``seeds`` (config/scenarios/seeds.yaml, its windows moved past the
warm-up) and the generated schedules ``suite:1`` … (``gateway_sim/suite.py``, one per seed). Every member is
replayed through every path: ``direct``, ``nginx``, ``defaults`` (a gateway config generated from
config/examples/sim.yaml keeping only the upstreams' URLs and wiring and the routes' match, cache and
invalidates: the built-in defaults for every policy), ``shipped`` (config/examples/sim.yaml as it is) and any
``--gateway-config NAME=PATH``. One run = one member through one path, against its own ``gateway sim``
process, so runs can go in parallel (``--parallel``): the paths of a member run side by side.

A run: start the sim on the member's scenario and the proxy, restart the sim's clock, replay the backend's
mix (``fault_replay.build_schedule``, open loop) for the member's ``run`` seconds; the first ``warmup`` seconds
have no fault and are not measured (caches and pools fill as in a long-running process); the sim's counters
are read at the end of the warm-up and at the end, so upstream requests per request cover the measured part.

The report (markdown and JSON, layout in bench/README.md): per path and route the median and the worst
member's success rate, upstream requests per client request, duplicate sends, per half (tuning: ``seeds`` and
even seeds; held out: odd seeds), and every member where a gateway path loses to direct or to nginx by more
than the noise margin, measured by replaying the first ``--repeat`` members a second time with the sim's
random draws reseeded (``suite_report.py`` says how the margin follows from that).

    python bench/fault_replay.py --suite 20                 # seeds + suite:1-19, 4 paths, 8 at a time: ~13 min
    python bench/fault_replay.py --suite 20 --holdout       # the held-out half only (odd seeds)
    python bench/fault_replay.py --seeds 101-120 --gateway-config tuned=/tmp/tuned.yaml
    python bench/fault_replay.py --suite 2 --quick          # a smoke test, about a minute
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import queue
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import yaml

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))
sys.path.insert(0, str(REPO_DIR))  # this checkout's gateway package, not whatever is installed
import fault_replay as fr  # noqa: E402
from overhead import Processes, free_ports, wait_until  # noqa: E402
from suite_report import GROUPS, judge, report_markdown, write_json  # noqa: E402

from gateway.yamlfile import StrictLoader  # noqa: E402
from gateway_sim import load_scenario  # noqa: E402
from gateway_sim.suite import Generated, delayed, generate  # noqa: E402

HOST = fr.HOST
SIM_CONFIG = fr.SIM_CONFIG
SEEDS_SCENARIO = fr.SCENARIOS_DIR / "seeds.yaml"
BUILTIN_PATHS = ("direct", "nginx", "defaults", "shipped", "gateway_yaml")
GATEWAY_YAML = fr.REPO_DIR / "gateway.yaml"
BIND_ATTEMPTS = 3
REPEAT_SEED_OFFSET = 100_000  # the sim's seed for a member's second replay: its seed + this
SIM_PORTS = {8081: "graph", 8082: "gemini", 8083: "supabase", 8084: "lookaside"}  # sim.yaml's upstream URLs
KEEP_TOP = ("listen", "admin", "log", "drain", "cache_store")  # not policies: wiring and logging
KEEP_UPSTREAM = ("url", "kind", "prefix", "set_headers", "forwarded_headers")
KEEP_ROUTE = ("name", "match", "cache", "invalidates")
T = TypeVar("T")
_PORT_LOCK = threading.Lock()
_PORTS_GIVEN: set[int] = set()


# --------------------------------------------------------------------------- members and paths


@dataclass(frozen=True, slots=True)
class Member:
    """One scenario of the suite."""

    name: str  # "seeds" or the generated seed as text
    seed: int | None  # the generated seed; None for seeds
    text: str  # the scenario file
    warmup: float
    run: float
    faults: list[dict[str, Any]]

    @property
    def half(self) -> str:
        return "tuning" if self.seed is None or self.seed % 2 == 0 else "holdout"

    @property
    def schedule_seed(self) -> int:
        """The seed of the request schedule, and of the sim's random draws (seeds' own seed is 7)."""
        return 7 if self.seed is None else self.seed


def make_member(name: str, length: float, warmup: float, tail: float) -> Member:
    if name == "seeds":
        scenario = delayed(load_scenario(SEEDS_SCENARIO), warmup)
        text = yaml.safe_dump(scenario.model_dump(mode="json", exclude_none=True), sort_keys=False)
        windows = [
            {
                "kind": "seeds",
                "upstream": up,
                "route": None,
                "start_s": o.start,
                "duration_s": o.duration,
                "detail": f"{o.mode}{f' {o.code}' if o.code else ''}, {o.rate * 100:g} %, every {o.every:g} s",
            }
            for up in ("graph", "gemini", "supabase")
            for o in scenario.upstream(up).outages or ()
        ]
        return Member("seeds", None, text, warmup, warmup + length, windows)
    g: Generated = generate(int(name), length=length, warmup=warmup, tail=tail)
    return Member(name, g.seed, g.text, g.warmup, g.run, [f.as_json() for f in g.faults])


def parse_members(spec: str) -> list[str]:
    """``seeds,1-10,15`` -> ["seeds", "1", …, "10", "15"]."""
    out: list[str] = []
    for item in (p.strip() for p in spec.split(",")):
        if item == "seeds":
            out.append(item)
        elif "-" in item:
            a, _, b = item.partition("-")
            if not (a.isdigit() and b.isdigit()) or int(a) > int(b):
                raise argparse.ArgumentTypeError(f"expected a range like 1-20, got {item!r}")
            out += [str(s) for s in range(int(a), int(b) + 1)]
        elif item.isdigit():
            out.append(item)
        else:
            raise argparse.ArgumentTypeError(f"expected seeds, N or A-B, got {item!r}")
    return list(dict.fromkeys(out))


def load_yaml(path: Path) -> dict[str, Any]:
    """A gateway config read as the gateway reads it (YAML 1.2 booleans: ``on:`` stays a key)."""
    data = yaml.load(path.read_text(), Loader=StrictLoader)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping")
    return data


def defaults_config(source: Path = SIM_CONFIG) -> tuple[dict[str, Any], list[str]]:
    """``source`` with every policy removed: (the config, the key paths dropped)."""
    data, dropped = load_yaml(source), []
    out: dict[str, Any] = {k: v for k, v in data.items() if k in KEEP_TOP}
    dropped += [k for k in data if k not in KEEP_TOP and k != "upstreams"]
    out["upstreams"] = {}
    for name, up in (data.get("upstreams") or {}).items():
        out["upstreams"][name] = {k: v for k, v in up.items() if k in KEEP_UPSTREAM}
        dropped += [f"upstreams.{name}.{k}" for k in up if k not in (*KEEP_UPSTREAM, "routes")]
        routes = []
        for i, route in enumerate(up.get("routes") or []):
            routes.append({k: v for k, v in route.items() if k in KEEP_ROUTE})
            dropped += [f"upstreams.{name}.routes[{route.get('name', i)}].{k}" for k in route if k not in KEEP_ROUTE]
        if routes:
            out["upstreams"][name]["routes"] = routes
    return out, dropped


def shipped_on_sim(source: Path = GATEWAY_YAML, sim: Path = SIM_CONFIG) -> dict[str, Any]:
    """The repository's ``gateway.yaml`` as it ships, each upstream's URL replaced by sim.yaml's for the same name.

    Everything else (timeouts, retries, breakers, caches, limits, environment defaults) is the file's own,
    so the suite measures the default a new user runs rather than a copy tuned for the sim.
    """
    data, urls = load_yaml(source), {n: u["url"] for n, u in (load_yaml(sim).get("upstreams") or {}).items()}
    for name, up in (data.get("upstreams") or {}).items():
        if name not in urls:
            raise ValueError(f"{source}: upstream {name!r} has no counterpart in {sim}")
        up["url"] = urls[name]
    return data


def point_at_sim(config: dict[str, Any], sim_ports: dict[str, int], port: int, admin_port: int) -> str:
    """The config as YAML text, listening on free ports, its upstreams (sim.yaml's 8081-8084) on this sim."""
    data = json.loads(json.dumps(config))  # a deep copy
    data["listen"] = {"host": HOST, "port": port}
    data.setdefault("admin", {})["listen"] = {"host": HOST, "port": admin_port}
    for name, up in data.get("upstreams", {}).items():
        parts = urlsplit(str(up.get("url", "")))
        target = SIM_PORTS.get(parts.port or 0)
        if parts.hostname != "127.0.0.1" or target is None:
            raise ValueError(f"upstreams.{name}.url: expected http://127.0.0.1:8081-8084 (sim.yaml's), got {up['url']}")
        up["url"] = urlunsplit((parts.scheme, f"{HOST}:{sim_ports[target]}", parts.path, parts.query, ""))
    return yaml.safe_dump(data, sort_keys=False)


# --------------------------------------------------------------------------- one run


@dataclass(slots=True)
class Run:
    member: Member
    path: str
    repeat: int = 0  # 1: the member again, the sim's random draws reseeded: the noise estimate
    result: dict[str, Any] = field(default_factory=dict)


def _ports(n: int) -> list[int]:
    """Free ports never handed to another run of this process (runs start in parallel)."""
    with _PORT_LOCK:
        while True:
            ports = free_ports(n)
            if not _PORTS_GIVEN.intersection(ports):
                _PORTS_GIVEN.update(ports)
                return ports


def _bound(start: Callable[[], T]) -> T:
    """``start()``; again, on new free ports, when a port it drew was taken meanwhile.

    A free port is only free when drawn: any socket of the machine (the client's own outgoing connections
    included) may take it as its local port before the process binds it.
    """
    for attempt in range(BIND_ATTEMPTS):
        try:
            return start()
        except RuntimeError as exc:
            if "in use" not in str(exc).lower() or attempt == BIND_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


def _start_sim(procs: Processes, scenario: Path, seed: int) -> dict[str, int]:
    ports = dict(zip(fr.SIM_UPSTREAMS, _ports(len(fr.SIM_UPSTREAMS)), strict=True))
    argv = [sys.executable, "-m", "gateway", "sim", "--scenario", str(scenario), "--host", HOST, "--seed", str(seed)]
    for up, port in ports.items():
        argv += [f"--{up}-port", str(port)]
    proc = procs.start("sim", argv, env=fr.gateway_env())
    for port in ports.values():
        wait_until(proc, lambda p=port: fr.http_request(p, "GET", "/_sim/stats")[0] == 200, f"sim on port {port}")
    return ports


def _start_gateway(procs: Processes, sim_ports: dict[str, int], config: dict[str, Any]) -> int:
    port, admin_port = _ports(2)
    conf = procs.workdir / "gateway.yaml"
    conf.write_text(point_at_sim(config, sim_ports, port, admin_port))
    proc = procs.start("gateway", [sys.executable, "-m", "gateway", "run", "--config", str(conf)], env=fr.gateway_env())
    wait_until(proc, lambda: fr.http_request(admin_port, "GET", "/readyz")[0] == 200, "GET /readyz 200")
    return port


def _stats(sim_ports: dict[str, int]) -> dict[str, Any]:
    """/_sim/stats from the first listener that answers (a refused window closes one)."""
    last: Exception | None = None
    for port in sim_ports.values():
        try:
            status, body = fr.http_request(port, "GET", "/_sim/stats")
            if status == 200:
                return dict(json.loads(body))
        except OSError as exc:
            last = exc
    raise RuntimeError(f"no sim listener answered /_sim/stats: {last}")


async def _replay(
    base: dict[str, str], calls: list[fr.Call], mark: float, sim_ports: dict[str, int], timeout: float
) -> tuple[list[fr.Result], dict[str, Any]]:
    """Every call at its time (open loop); the sim's counters read at ``mark`` s. (results, stats at mark)."""
    connector = aiohttp.TCPConnector(limit=512, limit_per_host=512)
    client_timeout = aiohttp.ClientTimeout(total=timeout)
    marked: dict[str, Any] = {}
    async with aiohttp.ClientSession(connector=connector, timeout=client_timeout, auto_decompress=False) as session:
        tasks: list[asyncio.Task[fr.Result]] = []
        t0 = time.monotonic()
        snap: asyncio.Future[dict[str, Any]] | None = None
        for call in calls:
            if _STOP.is_set():
                break
            if snap is None and call.at >= mark:
                await asyncio.sleep(max(0.0, t0 + mark - time.monotonic()))
                snap = asyncio.ensure_future(asyncio.to_thread(_stats, sim_ports))
            await asyncio.sleep(max(0.0, t0 + call.at - time.monotonic()))
            tasks.append(asyncio.create_task(fr._one(session, base, call, t0)))
        if tasks:
            await asyncio.wait(tasks)
        if snap is not None:
            marked = await snap
        return [t.result() for t in tasks], marked


def _delta(end: dict[str, Any], start: dict[str, Any]) -> dict[str, Any]:
    """Per-route request counts of ``end`` minus ``start`` (the measured part of the run)."""
    out: dict[str, Any] = {"upstreams": {}}
    for up, block in end.get("upstreams", {}).items():
        routes = {}
        for name, data in block.get("routes", {}).items():
            before = start.get("upstreams", {}).get(up, {}).get("routes", {}).get(name, {}).get("requests", 0)
            routes[name] = {"requests": data.get("requests", 0) - before}
        out["upstreams"][up] = {"routes": routes}
    return out


def run_one(run: Run, workdir: Path, configs: dict[str, dict[str, Any]], args: argparse.Namespace) -> None:
    """Replay one member through one path; the outcome goes to ``run.result`` (an ``error`` key on failure)."""
    started = time.monotonic()
    member = run.member
    workdir.mkdir(parents=True, exist_ok=True)
    scenario = workdir / "scenario.yaml"
    scenario.write_text(member.text)
    calls = fr.build_schedule(args.rate, member.run, args.weights, member.schedule_seed)
    routes = [r for r in fr.ROUTES if args.weights.get(r.name, 0) > 0]
    try:
        with Processes(workdir) as procs:
            _ACTIVE.add(procs)
            # a repeat keeps the fault windows and the requests, and reseeds the sim's random draws
            seed = member.schedule_seed + REPEAT_SEED_OFFSET * run.repeat
            sim_ports = _bound(lambda: _start_sim(procs, scenario, seed))
            if run.path == "direct":
                base = {up: f"http://{HOST}:{port}" for up, port in sim_ports.items()}
            elif run.path == "nginx":
                port = _bound(lambda: fr.start_nginx(procs, sim_ports))
                base = {up: f"http://{HOST}:{port}/{up}" for up in fr.SIM_UPSTREAMS}
            else:
                port = _bound(lambda: _start_gateway(procs, sim_ports, configs[run.path]))
                base = {up: f"http://{HOST}:{port}/{up}" for up in fr.SIM_UPSTREAMS}
            fr.sim_restart(sim_ports)
            results, at_mark = asyncio.run(_replay(base, calls, member.warmup, sim_ports, args.client_timeout))
            end = _stats(sim_ports)
    except (RuntimeError, OSError, ValueError) as exc:
        run.result = {"error": str(exc)[-2000:], "wall_s": round(time.monotonic() - started, 1)}
        return
    finally:
        _ACTIVE.discard(procs)
    measured = [r for r in results if r.at >= member.warmup]
    summary = fr.summarize(measured, routes, _delta(end, at_mark))
    for data in summary["routes"].values():
        data.pop("cache", None)
    for data in summary["kinds"].values():  # the routes' answers add up to these
        data.pop("cache", None)
        data.pop("statuses", None)
    run.result = {
        **summary,
        "duplicate_sends": end.get("messages", {}).get("duplicates_delivered", 0),
        "messages": {k: v for k, v in end.get("messages", {}).items() if k != "repeated"},
        "wall_s": round(time.monotonic() - started, 1),
    }


# --------------------------------------------------------------------------- many runs


_STOP = threading.Event()  # set on Ctrl-C / SIGTERM: runs in flight end early, queued ones are skipped
_ACTIVE: set[Processes] = set()


def run_all(runs: list[Run], configs: dict[str, dict[str, Any]], args: argparse.Namespace, root: Path) -> None:
    """``args.parallel`` runs at a time, in list order (a member's paths side by side)."""
    todo: queue.Queue[tuple[int, Run]] = queue.Queue()
    for i, run in enumerate(runs):
        todo.put((i, run))
    done_count = [0]
    lock = threading.Lock()
    t_start = time.monotonic()

    def worker() -> None:
        while not _STOP.is_set():
            try:
                _, run = todo.get_nowait()
            except queue.Empty:
                return
            name = f"{run.member.name}-{run.path}-{run.repeat}"
            run_one(run, root / name, configs, args)
            with lock:
                done_count[0] += 1
                if not args.no_progress:
                    k = run.result.get("kinds", {})
                    shown = (
                        f"error: {run.result['error'].splitlines()[-1][:100]}"
                        if "error" in run.result
                        else f"all {fr._pct(k['all']['success_rate'])}, reads+sends"
                        f" {fr._pct(k['reads+sends']['success_rate'])}"
                    )
                    print(
                        f"[{done_count[0]}/{len(runs)} {time.monotonic() - t_start:5.0f}s] {run.member.name:>5}"
                        f" {run.path:<9}{' (again)' if run.repeat else ''} {shown} ({run.result['wall_s']:g} s)",
                        file=sys.stderr,
                        flush=True,
                    )

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(max(1, args.parallel))]
    for t in threads:
        t.start()
    try:
        for t in threads:
            while t.is_alive():
                t.join(0.5)
    except KeyboardInterrupt:
        _STOP.set()  # no new run; replays stop launching requests
        for procs in list(_ACTIVE):  # their requests in flight fail at once
            for proc in procs.procs:
                proc.stop()
        for t in threads:
            t.join(30)
        raise


# --------------------------------------------------------------------------- command line


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="fault_replay.py --suite",
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.RawTextHelpFormatter,
    )
    which = ap.add_mutually_exclusive_group(required=True)
    which.add_argument("--suite", type=int, metavar="N", help="N members: seeds and generated seeds 1 to N-1")
    which.add_argument("--seeds", type=parse_members, metavar="LIST", help="members by name: seeds,1-19,101-120")
    half = ap.add_mutually_exclusive_group()
    half.add_argument("--tuning", action="store_true", help="only the tuning half: seeds and even seeds")
    half.add_argument("--holdout", action="store_true", help="only the held-out half: odd seeds")
    ap.add_argument(
        "--paths",
        default=None,
        help="comma-separated paths (default: direct,nginx,defaults,shipped,gateway_yaml + named)",
    )
    ap.add_argument(
        "--gateway-config",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="one more gateway path: a config pointing at sim.yaml's upstream URLs (repeatable)",
    )
    ap.add_argument("--config", type=Path, default=None, help="same as --gateway-config STEM=PATH (the file's stem)")
    ap.add_argument("--parallel", type=int, default=8, help="runs at a time, each with its own sim (default 8)")
    ap.add_argument(
        "--repeat", type=int, default=None, help="replay the first K members twice, for the noise (4; quick 0)"
    )
    ap.add_argument("--margin", type=float, default=None, help="fixed noise margin in percentage points")
    ap.add_argument("--rate", type=fr.parse_rate, default=None, help="requests per second (default 20, quick 10)")
    ap.add_argument("--length", type=float, default=None, help="seconds the faults fit in (default 55, quick 25)")
    ap.add_argument("--warmup", type=float, default=None, help="fault-free, unmeasured seconds (default 10, quick 3)")
    ap.add_argument("--tail", type=float, default=None, help="seconds of recovery after the last fault (15, quick 8)")
    ap.add_argument("--client-timeout", type=float, default=None, help="the client's timeout (30 s, quick 10 s)")
    ap.add_argument("--weights", type=fr.parse_weights, default=None, help="route=weight,... (fault_replay's ROUTES)")
    ap.add_argument("--quick", action="store_true", help="short members at 10 req/s, no repeats: a smoke test")
    ap.add_argument("--no-save", action="store_true", help="write nothing under bench/results/")
    ap.add_argument("--json", type=Path, default=None, help="also write every result as JSON here")
    ap.add_argument("--out-dir", type=Path, default=fr.RESULTS_DIR)
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    q = args.quick
    args.rate = args.rate or (10.0 if q else 20.0)
    args.length = args.length or (25.0 if q else 55.0)
    args.warmup = (3.0 if q else 10.0) if args.warmup is None else args.warmup
    args.tail = (8.0 if q else 15.0) if args.tail is None else args.tail
    args.client_timeout = args.client_timeout or (10.0 if q else 30.0)
    args.repeat = (0 if q else 4) if args.repeat is None else args.repeat
    args.weights = args.weights or {r.name: r.weight for r in fr.ROUTES}
    if args.suite is not None and args.suite < 1:
        ap.error("--suite: expected at least 1 member")
    names = ["seeds", *(str(s) for s in range(1, args.suite))] if args.suite is not None else args.seeds
    if args.tuning or args.holdout:
        want = "tuning" if args.tuning else "holdout"
        names = [n for n in names if ("tuning" if n == "seeds" or int(n) % 2 == 0 else "holdout") == want]
    if not names:
        ap.error("no member left to run")
    try:
        args.members = [make_member(n, args.length, args.warmup, args.tail) for n in names]
    except ValueError as exc:
        ap.error(str(exc))
    named: dict[str, Path] = {}
    extra = [*args.gateway_config, *([f"{args.config.stem}={args.config}"] if args.config else [])]
    for item in extra:
        name, sep, path = item.partition("=")
        if not sep or not name.replace("-", "").replace("_", "").isalnum() or name in BUILTIN_PATHS or name in named:
            ap.error(f"--gateway-config: expected a new NAME=PATH (NAME of letters, digits, - and _), got {item!r}")
        if not Path(path).is_file():
            ap.error(f"--gateway-config {name}: {path} not found")
        named[name] = Path(path)
    args.named = named
    paths = args.paths.split(",") if args.paths else [*BUILTIN_PATHS, *named]
    args.path_list = [p.strip() for p in paths if p.strip()]
    unknown = [p for p in args.path_list if p not in BUILTIN_PATHS and p not in named]
    if unknown or not args.path_list:
        ap.error(f"--paths: unknown {unknown or 'nothing'} (expected {', '.join([*BUILTIN_PATHS, *named])})")
    if args.parallel < 1:
        ap.error("--parallel: expected 1 or more")
    return args


def _sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _sigterm)
    configs: dict[str, dict[str, Any]] = {}
    described: dict[str, dict[str, Any]] = {"direct": {"what": "straight to the sim"}}
    described["nginx"] = {"what": f"bench/{fr.NGINX_TEMPLATE}"}
    configs["defaults"], dropped = defaults_config()
    described["defaults"] = {
        "what": "config/examples/sim.yaml without its policies (built-in defaults)",
        "dropped": dropped,
        "config": yaml.safe_dump(configs["defaults"], sort_keys=False),
    }
    configs["shipped"] = load_yaml(SIM_CONFIG)
    described["shipped"] = {"what": "config/examples/sim.yaml"}
    configs["gateway_yaml"] = shipped_on_sim()
    described["gateway_yaml"] = {"what": "gateway.yaml, its upstream URLs replaced by sim.yaml's"}
    for name, path in args.named.items():
        try:
            configs[name] = load_yaml(path)
            point_at_sim(configs[name], dict.fromkeys(fr.SIM_UPSTREAMS, 1), 1, 2)
        except (OSError, ValueError, yaml.YAMLError) as exc:
            print(f"--gateway-config {name}: {exc}", file=sys.stderr)
            return 2
        described[name] = {"what": fr._shown(path)}
    paths = {p: described[p] for p in args.path_list}
    if "nginx" in paths and not (shutil.which("nginx") or Path("/usr/sbin/nginx").exists()):
        print("nginx is not installed: the nginx path is skipped (apt-get install -y nginx-light)", file=sys.stderr)
        paths.pop("nginx")
    runs = [Run(member, p) for member in args.members for p in paths]
    runs += [Run(member, p, repeat=1) for member in args.members[: args.repeat] for p in paths]
    estimate = sum(r.member.run + 6 for r in runs) / args.parallel
    print(
        f"fault suite: {len(args.members)} members x {len(paths)} paths ({len(runs)} runs, {args.parallel} at a time):"
        f" about {estimate / 60:.0f} min",
        file=sys.stderr,
    )
    started = time.monotonic()
    machine = fr.machine()
    try:
        with tempfile.TemporaryDirectory(prefix="fault-suite-") as tmp:
            Path(tmp).chmod(0o755)  # nginx's workers (nobody) must reach their prefix under it
            run_all(runs, configs, args, Path(tmp))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    rows = [r.name for r in fr.ROUTES if args.weights.get(r.name, 0) > 0] + list(GROUPS)
    data: dict[str, Any] = {
        "meta": {
            "date": dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
            "quick": args.quick,
            "rate": args.rate,
            "length": args.length,
            "warmup": args.warmup,
            "tail": args.tail,
            "client_timeout": args.client_timeout,
            "parallel": args.parallel,
            "repeat": args.repeat,
            "weights": {k: v for k, v in args.weights.items() if v > 0},
            "rows": rows,
            "paths": paths,
            "members": [
                {
                    "name": m.name,
                    "seed": m.seed,
                    "half": m.half,
                    "run_s": m.run,
                    "warmup_s": m.warmup,
                    "faults": m.faults,
                }
                for m in args.members
            ],
            "machine": machine,
            "wall_s": round(time.monotonic() - started, 1),
        },
        "runs": [
            {"member": r.member.name, "half": r.member.half, "path": r.path, "repeat": r.repeat, **r.result}
            for r in runs
        ],
    }
    judge(data, None if args.margin is None else args.margin / 100)  # noise, summary, losses
    text = report_markdown(data)
    print(text)
    if not args.no_save:
        stamp, suffix = dt.date.today().isoformat(), "-quick" if args.quick else ""
        args.out_dir.mkdir(parents=True, exist_ok=True)
        for name in (f"fault-suite-{stamp}{suffix}.md", f"fault-suite-latest{suffix}.md"):
            (args.out_dir / name).write_text(text)
        write_json(args.out_dir / f"fault-suite-{stamp}{suffix}.json.gz", data)
    if args.json is not None:
        write_json(args.json, data)
    return 1 if any("error" in r.result for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
