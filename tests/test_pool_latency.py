"""The first request after 30 s and 90 s of quiet, over a link with 100 ms of round trip (issue 17).

The gateway, an HTTPS upstream (a test CA) and a client run as processes. Two gateway upstreams
use the shipped pool defaults (``new``), two the old behaviour (``old``: idle connections closed
after 15 s, nothing kept warm). The client sends one request to each at the start, then one to a
``30`` upstream after 30 s of quiet and one to a ``90`` upstream after 90 s. The upstream says
which connection carried each request and how many it accepted, so every number below is also a
handshake count.

The delay is added in one of two ways, and exactly one of the two tests runs:
- ``netem``: two network namespaces made by the test, joined by a veth pair made inside them,
  ``tc netem delay 50ms`` on each end; the gateway and the client in one, the upstream in the
  other. Nothing outside the two namespaces is touched. Needs root, ``ip`` and ``tc``, and a
  kernel with the netem qdisc.
- ``relay``: where that is missing, a relay on 127.0.0.1 adds 50 ms each way and one round
  trip to each connect (``tests/connkit.py``).

Each test takes about 95 s and is marked ``slow`` (CI runs it). The numbers are printed and
written to ``pool_latency.json`` in the test's temporary directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from .connkit import DelayRelay
from .support import ROOT, free_port

ONE_WAY = 0.05  # seconds, each direction: a 100 ms round trip
RTT = 2 * ONE_WAY
NAMES = ("new30", "new90", "old30", "old90")
SCHEDULE = [*(f"{n}@0" for n in NAMES), "new30@1", "old30@1", "new30@30", "old30@30", "new90@90", "old90@90"]
OLD_POOL = "{idle_timeout: 15s, keep_warm: 0, preconnect: 0}"  # what the gateway did before (aiohttp's 15 s)


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)


def _netem_missing() -> str | None:
    """Why the netem test cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root to make network namespaces (ip netns) and add a qdisc (tc)"
    if shutil.which("ip") is None or shutil.which("tc") is None:
        return "needs ip and tc (apt-get install iproute2; .ci/run does)"
    name = f"gwprobe{os.getpid()}"
    if _run("ip", "netns", "add", name).returncode != 0:
        return "cannot make a network namespace here (ip netns add failed)"
    try:
        _run("ip", "-n", name, "link", "set", "lo", "up")
        tried = _run("tc", "-n", name, "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms")
        if tried.returncode != 0:
            return f"the kernel has no netem qdisc (tc: {tried.stderr.strip()})"
    finally:
        _run("ip", "netns", "del", name)
    return None


NETEM_MISSING = _netem_missing() if sys.platform == "linux" else "network namespaces are Linux only"


class Namespaces:
    """Two namespaces ``a`` (gateway, client) and ``b`` (upstream) joined by a veth pair with netem."""

    def __init__(self) -> None:
        tag = str(os.getpid())[-6:]
        self.a, self.b = f"gwpool{tag}a", f"gwpool{tag}b"
        self.va, self.vb = f"gwp{tag}a", f"gwp{tag}b"  # interface names: at most 15 characters
        self.addr_a, self.addr_b = "10.211.0.1", "10.211.0.2"

    def __enter__(self) -> Namespaces:
        steps = [
            ("ip", "netns", "add", self.a),
            ("ip", "netns", "add", self.b),
            ("ip", "link", "add", self.va, "netns", self.a, "type", "veth", "peer", "name", self.vb, "netns", self.b),
            ("ip", "-n", self.a, "addr", "add", f"{self.addr_a}/30", "dev", self.va),
            ("ip", "-n", self.b, "addr", "add", f"{self.addr_b}/30", "dev", self.vb),
            ("ip", "-n", self.a, "link", "set", "lo", "up"),
            ("ip", "-n", self.b, "link", "set", "lo", "up"),
            ("ip", "-n", self.a, "link", "set", self.va, "up"),
            ("ip", "-n", self.b, "link", "set", self.vb, "up"),
            ("tc", "-n", self.a, "qdisc", "add", "dev", self.va, "root", "netem", "delay", f"{int(ONE_WAY * 1000)}ms"),
            ("tc", "-n", self.b, "qdisc", "add", "dev", self.vb, "root", "netem", "delay", f"{int(ONE_WAY * 1000)}ms"),
        ]
        for step in steps:
            done = _run(*step)
            if done.returncode != 0:
                self.__exit__()
                raise RuntimeError(f"{' '.join(step)}: {done.stderr.strip()}")
        return self

    def __exit__(self, *_: object) -> None:
        for name in (self.a, self.b):  # the veth pair goes with them
            _run("ip", "netns", "del", name)


async def _process(argv: list[str], tmp: Path, name: str) -> asyncio.subprocess.Process:
    """``argv`` from the repository root, stdout piped, stderr to ``<name>.log`` in ``tmp``."""
    log = os.open(tmp / f"{name}.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:  # the child keeps its own copy of the descriptor
        return await asyncio.create_subprocess_exec(
            *argv, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=log, env={**os.environ, "PYTHONUNBUFFERED": "1"}
        )
    finally:
        os.close(log)


async def _first_line(proc: asyncio.subprocess.Process, contains: str, timeout: float = 20.0) -> dict[str, Any]:
    assert proc.stdout is not None
    async with asyncio.timeout(timeout):
        while True:
            line = await proc.stdout.readline()
            if not line:
                raise RuntimeError(f"the process ended before printing {contains!r}")
            if contains.encode() in line:
                found: dict[str, Any] = json.loads(line)
                return found


@contextlib.asynccontextmanager
async def _stack(netns: Namespaces | None, tmp: Path) -> AsyncIterator[dict[str, Any]]:
    """Upstream, (relays,) gateway; yields what the client needs and how to run it."""
    procs: list[asyncio.subprocess.Process] = []
    relays: list[DelayRelay] = []
    in_a = ["ip", "netns", "exec", netns.a] if netns else []
    in_b = ["ip", "netns", "exec", netns.b] if netns else []
    host = netns.addr_b if netns else "127.0.0.1"
    ca = trustme.CA()
    cert = ca.issue_cert(host)
    ca.cert_pem.write_to_path(str(tmp / "ca.pem"))
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp / "server.pem"))
    try:
        pem = str(tmp / "server.pem")
        serve = ["upstream", "--host", host, "--count", str(len(NAMES)), "--cert", pem, "--key", pem]
        upstream = await _process([*in_b, sys.executable, "-m", "tests.connkit", *serve], tmp, "upstream")
        procs.append(upstream)
        ports = (await _first_line(upstream, '"ports"'))["ports"]
        if netns is None:
            relays = [await DelayRelay(host, port, ONE_WAY).start() for port in ports]
            ports = [relay.port for relay in relays]
        proxy_port, admin_port = (18080, 19901) if netns else (free_port(), free_port())
        blocks = ""
        for name, port in zip(NAMES, ports, strict=True):
            pool = f"\n    pool: {OLD_POOL}" if name.startswith("old") else ""  # new: the shipped defaults
            blocks += f"  {name}:\n    url: https://{host}:{port}\n    tls: {{ca_file: {tmp / 'ca.pem'}}}{pool}\n"
        config = tmp / "gateway.yaml"
        config.write_text(
            f"listen: {{host: 127.0.0.1, port: {proxy_port}}}\n"
            f"admin: {{listen: {{host: 127.0.0.1, port: {admin_port}}}}}\n"
            f"log: {{level: info, access_log: false}}\nupstreams:\n{blocks}"
        )
        gateway = await _process([*in_a, sys.executable, "-m", "gateway", "run", "--config", str(config)], tmp, "gw")
        procs.append(gateway)
        await _first_line(gateway, "gateway started")
        yield {"client": [*in_a, sys.executable, "-m", "tests.connkit", "client", "--gateway"], "port": proxy_port}
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        for relay in relays:
            await relay.close()


async def _measure(netns: Namespaces | None, tmp: Path, how: str) -> dict[str, dict[str, Any]]:
    async with _stack(netns, tmp) as stack:
        client = await _process([*stack["client"], f"http://127.0.0.1:{stack['port']}", *SCHEDULE], tmp, "client")
        assert client.stdout is not None
        rows = [json.loads(line) for line in (await asyncio.wait_for(client.stdout.read(), 150)).splitlines()]
        await client.wait()
    assert len(rows) == len(SCHEDULE), rows
    result = {f"{r['name']}@{int(r['at'])}": r for r in rows}
    (tmp / "pool_latency.json").write_text(json.dumps({"delay": how, "rows": rows}, indent=1))
    print(f"\nfirst-request latency, {how} (RTT {RTT * 1000:.0f} ms):")
    for key, r in result.items():
        print(f"  {key:10} {r['ms']:7.1f} ms  conn {r['conn']}  age {r['conn_age']:6.2f} s  accepted {r['accepted']}")
    return result


def _check(result: dict[str, dict[str, Any]]) -> None:
    warm_limit, cold_floor = 1.8 * RTT * 1000, 2.5 * RTT * 1000  # a warm request: one round trip; cold: three
    assert all(r["status"] == 200 for r in result.values())
    # the shipped defaults: the preconnected connection carries the first request; still warm after 30 s
    assert result["new30@0"]["conn"] == 1 and result["new30@0"]["accepted"] == 1
    assert result["new30@30"]["ms"] < warm_limit and result["new30@30"]["conn"] == 1
    assert result["new30@30"]["accepted"] == 1  # no handshake in 30 s: 30 s is under idle_timeout
    # after 90 s: a connection keep-warm opened before the request (replaced about every 45 s)
    new90 = result["new90@90"]
    assert new90["ms"] < warm_limit and new90["conn_age"] > new90["ms"] / 1000
    assert 2 <= new90["accepted"] <= 3 and new90["conn"] >= 2
    # the old behaviour: closed after 15 s, so both pay TCP + TLS before the request
    for key in ("old30@30", "old90@90"):
        assert result[key]["ms"] > cold_floor and result[key]["accepted"] == 2, key
        assert result[key]["conn_age"] < result[key]["ms"] / 1000, key
    assert result["old30@0"]["ms"] > cold_floor and result["old30@1"]["ms"] < warm_limit


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.skipif(NETEM_MISSING is not None, reason=f"netem test: {NETEM_MISSING}")
async def test_first_request_latency_after_quiet_through_netem(tmp_path: Path) -> None:
    with Namespaces() as netns:
        _check(await _measure(netns, tmp_path, f"netem {ONE_WAY * 1000:.0f} ms each way, veth in two namespaces"))


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.skipif(NETEM_MISSING is None, reason="netem is available: the netem test measures this")
async def test_first_request_latency_after_quiet_through_a_delay_relay(tmp_path: Path) -> None:
    _check(await _measure(None, tmp_path, f"relay on 127.0.0.1, {ONE_WAY * 1000:.0f} ms each way"))
