"""Instructions per request: what the gateway costs, counted instead of timed.

On a shared machine, CPU time per request moves 15–30 % from one minute to the next (the rounds of
``bench/overhead.py`` show it), which is more than most single changes to the request path are
worth: an A/B comparison by time needs many interleaved rounds and still misleads. Valgrind's
callgrind counts the instructions a process executes in user space, and that count does not depend
on what else the machine runs: two runs of one tree agree within about 1 %.

For each path this script starts the process under ``valgrind --tool=callgrind`` with
instrumentation off (it starts at a few times native speed), sends warm-up requests, turns
instrumentation on (``callgrind_control -i on``), sends ``--requests`` keep-alive GETs over
``--connections`` connections from a plain socket client outside valgrind, turns it off, dumps, and
divides the instructions counted by the requests answered. Every answer must be 200, and for the
cache variants carry the expected ``x-gateway-cache``.

    python bench/instructions.py                                # bare forwarder + four gateway rows, ~3 min
    python bench/instructions.py --base 0e047f8                 # each gateway row also at that commit (A/B)
    python bench/instructions.py --only bare-aiohttp,gateway-cache-hit --requests 500

Instructions are not time: a cache miss in the CPU or a system call costs one count whatever it
waits for, kernel work is not counted, and the interpreter's loop runs at a different rate from
C code. So the ratio to the bare forwarder in instructions is not the ratio in req/s that
``overhead.py`` reports (the cache-hit path, mostly C, gets more done per instruction-second). Use
this to decide whether a change made the request path cheaper; use ``overhead.py`` for throughput,
latency and memory. Needs ``valgrind`` (Debian: ``apt-get install valgrind``) and nginx; the
processes, paths and configurations are ``overhead.py``'s. The table goes to stdout and to
``bench/results/instructions-<date>.md`` and ``instructions-latest.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml
from overhead import (
    BODY_BYTES,
    GATEWAY_VARIANTS,
    HOST,
    RESULTS_DIR,
    UPSTREAM_PATH,
    GatewayVariant,
    Proc,
    Processes,
    base_tree,
    free_ports,
    gateway_config,
    gateway_env,
    http_get,
    port_open,
    start_nginx,
    wait_until,
)

DEFAULT_ROWS = ("bare-aiohttp", "gateway", "gateway-access-log", "gateway-full-policy", "gateway-cache-hit")
START_TIMEOUT = 120.0  # a Python process starting under valgrind, instrumentation off
WARMUP = 200  # requests before counting: connections pooled, code paths and caches warm


@dataclass(slots=True)
class Row:
    name: str
    note: str
    requests: int = 0
    instructions: int = 0
    broken: str | None = None

    @property
    def per_request(self) -> float | None:
        return self.instructions / self.requests if self.requests and not self.broken else None


def load(port: int, path: str, per_connection: int, connections: int, expect_cache: str | None) -> int:
    """``per_connection`` keep-alive GETs on each of ``connections`` sockets; the answers counted.
    Raises when an answer is not 200 (or lacks the expected ``x-gateway-cache``)."""
    request = f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nUser-Agent: bench-instructions\r\n\r\n".encode()
    errors: list[str] = []
    done = [0] * connections

    def run(slot: int) -> None:
        try:
            with socket.create_connection((HOST, port), timeout=60) as sock:
                buf = b""
                for _ in range(per_connection):
                    sock.sendall(request)
                    while b"\r\n\r\n" not in buf:
                        chunk = sock.recv(65536)
                        if not chunk:
                            raise ConnectionError("closed by the server")
                        buf += chunk
                    head, _, buf = buf.partition(b"\r\n\r\n")
                    lines = head.decode("latin-1").split("\r\n")
                    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
                    if not lines[0].startswith("HTTP/1.1 200"):
                        raise RuntimeError(f"answer {lines[0]!r}")
                    if expect_cache is not None and headers.get("x-gateway-cache") != expect_cache:
                        raise RuntimeError(f"x-gateway-cache {headers.get('x-gateway-cache')!r}, not {expect_cache}")
                    length = int(headers["content-length"])
                    while len(buf) < length:
                        chunk = sock.recv(65536)
                        if not chunk:
                            raise ConnectionError("closed by the server mid-answer")
                        buf += chunk
                    buf = buf[length:]
                    done[slot] += 1
        except (OSError, RuntimeError, KeyError, ValueError) as exc:
            errors.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=run, args=(i,)) for i in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise RuntimeError(errors[0])
    return sum(done)


def callgrind(pid: int, *command: str) -> None:
    subprocess.run(["callgrind_control", *command, str(pid)], check=True, capture_output=True, timeout=120)


def totals(out_file: Path) -> int:
    """The instructions of the dump ``callgrind_control -d`` wrote for ``out_file`` (``<file>.1``)."""
    dumps = sorted(out_file.parent.glob(out_file.name + ".*"))
    counted = [int(m.group(1)) for d in dumps if (m := re.search(r"^totals:\s+(\d+)", d.read_text(), re.M))]
    if not counted:
        raise RuntimeError(f"no callgrind dump next to {out_file}")
    return max(counted)  # the measured window; the dump at exit holds what ran with instrumentation off


def measure(
    procs: Processes,
    row: Row,
    argv: list[str],
    env: dict[str, str] | None,
    port: int,
    path: str,
    args: argparse.Namespace,
    expect: str | None = None,
) -> None:
    """Count ``row``'s instructions per request; every answer must be 200 (and carry
    ``x-gateway-cache: expect`` when given)."""
    out_file = procs.workdir / f"{row.name}.callgrind"
    valgrind = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out_file}"]
    proc: Proc = procs.start(row.name, [*valgrind, *argv], env=env)
    try:
        wait_until(proc, lambda: port_open(port), f"listener on port {port}", timeout=START_TIMEOUT)
        status, _, _ = http_get(port, path, timeout=30)  # fills the cache of a cache variant
        if status != 200:
            raise RuntimeError(f"sanity request: {status}")
        load(port, path, WARMUP // args.connections, args.connections, expect)
        callgrind(proc.popen.pid, "-i", "on")
        callgrind(proc.popen.pid, "-z")
        row.requests = load(port, path, args.requests // args.connections, args.connections, expect)
        callgrind(proc.popen.pid, "-i", "off")
        callgrind(proc.popen.pid, "-d")
        row.instructions = totals(out_file)
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        row.broken = str(exc).splitlines()[0][:300]
    finally:
        proc.stop()


def run(args: argparse.Namespace) -> list[Row]:
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="gw-instructions-") as tmp, Processes(Path(tmp)) as procs:
        up_port = free_ports(1)[0]
        body = ("0123456789abcdef" * (BODY_BYTES // 16 + 1))[: BODY_BYTES - 1] + "\n"
        start_nginx(procs, "upstream", "nginx_upstream.conf.template", port=up_port, workers=1, body=body)
        variants = {v.name: v for v in GATEWAY_VARIANTS}
        base = base_tree(args.base, Path(tmp)) if args.base else None
        for name in args.rows:
            if name == "bare-aiohttp":
                port = free_ports(1)[0]
                forwarder = str(Path(__file__).resolve().parent / "bare_forwarder.py")
                argv = [sys.executable, forwarder, "--upstream", f"http://{HOST}:{up_port}", "--port", str(port)]
                row = Row(name, "bench/bare_forwarder.py")
                measure(procs, row, argv, None, port, UPSTREAM_PATH, args)
                rows.append(row)
                continue
            variant: GatewayVariant = variants[name]
            builds: list[tuple[str, Path | None]] = [("", None)]
            if base is not None:
                builds.append((f"@{args.base}", base))
            for suffix, tree in builds:
                port, admin_port = free_ports(2)
                conf = Path(tmp) / f"{name}{suffix}.yaml"
                conf.write_text(yaml.safe_dump(gateway_config(variant, port, admin_port, up_port), sort_keys=False))
                argv = [sys.executable, "-m", "gateway", "run", "--config", str(conf)]
                env = gateway_env(tree) if tree is not None else gateway_env()
                row = Row(name + suffix, variant.note + (f" — the gateway as of {args.base}" if suffix else ""))
                measure(procs, row, argv, env, port, variant.path, args, variant.cache)
                rows.append(row)
    return rows


def report(rows: list[Row], args: argparse.Namespace, started: dt.datetime, seconds: float) -> str:
    bare = next((r.per_request for r in rows if r.name == "bare-aiohttp"), None)
    lines = [
        f"# Instructions per request — {started:%Y-%m-%d %H:%M}",
        "",
        f"- machine: {platform.machine()}, Python {platform.python_version()}, {valgrind_version()}",
        f"- load: {args.requests} keep-alive GETs over {args.connections} connections after {WARMUP} warm-up "
        f"requests; upstream nginx answering {BODY_BYTES} bytes; total time {seconds:.0f} s",
        "- instructions: user-space instructions of the process under test (callgrind's Ir) while the "
        "measured requests ran, divided by the requests answered",
        "",
        "| path | instructions / request | vs bare aiohttp | requests |",
        "|---|---:|---:|---:|",
    ]
    for row in rows:
        if row.per_request is None:
            lines.append(f"| {row.name} | — ({row.broken}) | — | — |")
            continue
        ratio = f"{bare / row.per_request:.2f}×" if bare else "—"
        lines.append(f"| {row.name} | {row.per_request:,.0f} | {ratio} | {row.requests:,} |")
    lines += ["", "Paths:", ""]
    lines += [f"- **{row.name}**: {row.note}" for row in rows]
    lines += [
        "",
        "`vs bare aiohttp` is the bare forwarder's count divided by the row's: above 1.00× the row does "
        "less work per request than the forwarder. Instructions are not time (see the script's "
        "docstring): compare rows of one run, and trees with `--base`.",
        "",
    ]
    return "\n".join(lines)


def valgrind_version() -> str:
    try:
        return subprocess.run(["valgrind", "--version"], capture_output=True, text=True, timeout=10).stdout.strip()
    except OSError:
        return "valgrind ?"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000, help="measured requests per path (3000)")
    parser.add_argument("--connections", type=int, default=4, help="client connections (4)")
    parser.add_argument("--only", help="comma-separated rows (default: " + ",".join(DEFAULT_ROWS) + ")")
    parser.add_argument("--base", help="also run each gateway row with the gateway/ package of this commit")
    parser.add_argument("--no-save", action="store_true", help="print the report only")
    args = parser.parse_args(argv)
    known = {"bare-aiohttp", *(v.name for v in GATEWAY_VARIANTS)}
    args.rows = args.only.split(",") if args.only else list(DEFAULT_ROWS)
    unknown = [name for name in args.rows if name not in known]
    if unknown:
        parser.error(f"unknown rows {unknown}; known: {sorted(known)}")
    if any(name == "gateway-cache-hit-redis" for name in args.rows):
        parser.error("gateway-cache-hit-redis needs a redis-server: use bench/overhead.py for it")
    if args.requests < args.connections:
        parser.error("--requests must be at least --connections")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    for tool in ("valgrind", "callgrind_control"):
        if shutil.which(tool) is None:
            print(f"{tool} not found: apt-get install valgrind", file=sys.stderr)
            return 2
    started, t0 = dt.datetime.now(), time.monotonic()
    rows = run(args)
    text = report(rows, args, started, time.monotonic() - t0)
    print(text)
    if not args.no_save:
        RESULTS_DIR.mkdir(exist_ok=True)
        (RESULTS_DIR / f"instructions-{started:%Y-%m-%d}.md").write_text(text)
        (RESULTS_DIR / "instructions-latest.md").write_text(text)
    return 1 if any(row.broken for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
