"""Test harness: real upstream servers on 127.0.0.1 with scripted faults, and real gateways.

- ``Upstream``: an aiohttp server whose handler is a script; it records every request it
  receives (method, raw target, headers, body) so tests can count and compare byte for byte.
- ``RawUpstream``: a bare asyncio TCP server answering fixed bytes, for malformed answers.
- ``WireUpstream``: a keep-alive server that records every byte per connection and reads them
  with h11, strictly: what reached an upstream, request by request, and any byte that did not fit.
- ``gateway`` fixture: the real ``Gateway`` in this process, on ephemeral ports.
- ``GatewayProcess``: the real program as a subprocess (signals, RSS, drain).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from hypothesis import HealthCheck, settings
from multidict import CIMultiDict

from gateway.config import parse_config
from gateway.server import Gateway

# The nightly fuzz run (`python -m pytest -m fuzz --hypothesis-profile nightly`, see tests/test_fuzz.py):
# 10,000 random examples per property (FUZZ_NIGHTLY_EXAMPLES to try the mode with fewer). CI runs the
# default profile, with each property's own derandomized count.
settings.register_profile(
    "nightly",
    max_examples=int(os.environ.get("FUZZ_NIGHTLY_EXAMPLES", "10000")),
    derandomize=False,
    database=None,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> None:
    """The nightly profile uses two cores: with pytest-xdist installed and no ``-n`` given, the
    properties run in two worker processes, split by their ``xdist_group`` (``fuzz(worker=...)``
    in tests/test_fuzz.py) into two halves of about 20 minutes of CPU each."""
    if config.getoption("hypothesis_profile", None) != "nightly" or not config.pluginmanager.hasplugin("xdist"):
        return
    given = any(arg.startswith(("-n", "--numprocesses", "--dist")) for arg in config.invocation_params.args)
    if given:
        return
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # A worker reads the command line again, where no --dist was given: it must name its tests
        # by group (xdist's remote.py reads this option at collection), as the controller schedules.
        config.option.loadgroup = True
    else:
        config.option.numprocesses = 2
        config.option.dist = "loadgroup"


ROOT = Path(__file__).resolve().parent.parent

Script = Callable[[web.BaseRequest, "Upstream"], Awaitable[web.StreamResponse]]


@dataclass
class Seen:
    method: str
    target: str
    headers: CIMultiDict[str]
    body: bytes


async def ok_script(request: web.BaseRequest, up: Upstream) -> web.StreamResponse:
    return web.Response(text="ok")


class Upstream:
    """A real HTTP server on 127.0.0.1; ``script`` decides each answer; ``seen`` records requests."""

    def __init__(self, script: Script = ok_script, read_body: bool = True) -> None:
        self.script = script
        self.read_body = read_body
        self.seen: list[Seen] = []
        self.port = 0
        self._runner: web.ServerRunner | None = None

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        body = await request.content.read() if self.read_body else b""
        self.seen.append(Seen(request.method, request.raw_path, CIMultiDict(request.headers), body))
        return await self.script(request, self)

    async def start(self) -> Upstream:
        server = web.Server(self._handle, access_log=None)
        self._runner = web.ServerRunner(server)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def count(self) -> int:
        return len(self.seen)

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


class RawUpstream:
    """A TCP server that reads a request head and answers with ``reply`` bytes (or nothing)."""

    def __init__(self, reply: bytes | None, close_after: bool = True, hold: float = 0.0) -> None:
        self.reply = reply
        self.close_after = close_after
        self.hold = hold
        self.connections = 0
        self.received: list[bytes] = []
        self._server: asyncio.Server | None = None
        self.port = 0

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            self.received.append(head)
            if self.reply is not None:
                writer.write(self.reply)
                await writer.drain()
            if self.hold:
                await asyncio.sleep(self.hold)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            if self.close_after:
                writer.close()

    async def start(self) -> RawUpstream:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()


@dataclass
class WireRequest:
    """One request as h11 read it off the wire."""

    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes = b""


@dataclass
class WireConnection:
    """One connection to a ``WireUpstream``: every byte received, the requests h11 read from them,
    and what it could not read (its error), if anything."""

    raw: bytearray = field(default_factory=bytearray)
    requests: list[WireRequest] = field(default_factory=list)
    error: str | None = None
    leftover: bytes = b""  # bytes received that never became part of a complete request


class WireUpstream:
    """A keep-alive HTTP/1.1 server that records every byte it receives, per connection, and reads
    them with h11 (strict, RFC 9112): each complete request is answered 200 with a JSON echo of
    its method, target and body length; bytes h11 cannot read end the connection, recorded."""

    def __init__(self) -> None:
        self.connections: list[WireConnection] = []
        self._server: asyncio.Server | None = None
        self.port = 0

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        import h11

        record = WireConnection()
        self.connections.append(record)
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=1 << 20)
        current: WireRequest | None = None
        try:
            while True:
                data = await reader.read(65536)
                record.raw += data
                conn.receive_data(data)
                while True:
                    event = conn.next_event()
                    if event is h11.NEED_DATA or event is h11.PAUSED or isinstance(event, h11.ConnectionClosed):
                        break
                    if isinstance(event, h11.Request):
                        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in event.headers]
                        current = WireRequest(event.method.decode(), event.target.decode("latin-1"), headers)
                    elif isinstance(event, h11.Data) and current is not None:
                        current.body += bytes(event.data)
                    elif isinstance(event, h11.EndOfMessage) and current is not None:
                        record.requests.append(current)
                        echo = json.dumps(
                            {"method": current.method, "target": current.target, "body": len(current.body)}
                        ).encode()
                        head = h11.Response(
                            status_code=200,
                            headers=[("content-type", "application/json"), ("content-length", str(len(echo)))],
                        )
                        writer.write(conn.send(head) + conn.send(h11.Data(data=echo)) + conn.send(h11.EndOfMessage()))
                        await writer.drain()
                        current = None
                        conn.start_next_cycle()
                if not data or conn.their_state is h11.CLOSED:
                    break
        except h11.RemoteProtocolError as exc:
            record.error = str(exc)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            record.leftover = conn.trailing_data[0]
            writer.close()

    async def start(self) -> WireUpstream:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def requests(self) -> list[WireRequest]:
        return [r for c in self.connections for r in c.requests]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()


def free_port() -> int:
    """A port nothing listens on (bound then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def gateway_yaml(upstreams: dict[str, str], extra: str = "", **ports: int) -> str:
    """A config with ephemeral ports and the given upstream blocks (YAML text per upstream)."""
    body = "".join(
        f"  {name}:\n{textwrap.indent(textwrap.dedent(block).strip(), '    ')}\n" for name, block in upstreams.items()
    )
    return (
        f"listen: {{host: 127.0.0.1, port: {ports.get('port', 0)}}}\n"
        f"admin: {{listen: {{host: 127.0.0.1, port: {ports.get('admin_port', 0)}}}}}\n"
        f"log: {{level: info, format: json, access_log: true}}\n"
        f"drain: {{delay: 0s, timeout: 5s}}\n"
        f"{textwrap.dedent(extra)}\n"
        f"upstreams:\n{body}"
    )


@dataclass
class RunningGateway:
    gateway: Gateway
    session: aiohttp.ClientSession
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.gateway.proxy_port}"

    @property
    def admin(self) -> str:
        return f"http://127.0.0.1:{self.gateway.admin_port}"


@pytest.fixture
async def upstream_factory() -> AsyncIterator[Callable[..., Awaitable[Upstream]]]:
    made: list[Upstream] = []

    async def make(script: Script = ok_script, read_body: bool = True) -> Upstream:
        up = await Upstream(script, read_body).start()
        made.append(up)
        return up

    yield make
    for up in made:
        await up.close()


@pytest.fixture
async def gateway_factory() -> AsyncIterator[Callable[[str], Awaitable[RunningGateway]]]:
    """Start real in-process gateways from YAML text; closed at the end of the test."""
    made: list[RunningGateway] = []

    async def make(yaml_text: str, env: dict[str, str] | None = None) -> RunningGateway:
        config = parse_config(yaml_text, "test.yaml", env=env or {})
        gw = Gateway(config)
        await gw.start()
        session = aiohttp.ClientSession(auto_decompress=False)
        running = RunningGateway(gw, session)
        made.append(running)
        return running

    yield make
    for running in made:
        await running.session.close()
        await running.gateway.close()


async def raw_request(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send raw bytes to 127.0.0.1:port and return everything read until close or timeout."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    chunks = []
    try:
        async with asyncio.timeout(timeout):
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    break
                chunks.append(chunk)
                if b"\r\n\r\n" in b"".join(chunks) and _complete(b"".join(chunks)):
                    break
    except TimeoutError:
        pass
    finally:
        writer.close()
    return b"".join(chunks)


def _complete(data: bytes) -> bool:
    head, _, body = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":", 1)[1])
    return False


class GatewayProcess:
    """The real program in a subprocess; stdout lines are collected as they come."""

    def __init__(self, config_path: Path, env: dict[str, str] | None = None, nofile: int | None = None) -> None:
        """``nofile``: run the program with RLIMIT_NOFILE set to it (soft and hard)."""
        self.lines: list[str] = []
        limit = None if nofile is None else (lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile)))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "--config", str(config_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            preexec_fn=limit,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.port = self.admin_port = 0

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_started(self, timeout: float = 15.0) -> GatewayProcess:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for line in self.lines:
                if '"gateway started"' in line:
                    data = json.loads(line)
                    self.port = int(data["proxy"].rsplit(":", 1)[1])
                    self.admin_port = int(data["admin"].rsplit(":", 1)[1])
                    return self
            if self.proc.poll() is not None:
                raise RuntimeError("gateway exited:\n" + "\n".join(self.lines))
            time.sleep(0.05)
        raise RuntimeError("gateway did not start:\n" + "\n".join(self.lines))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def signal(self, sig: int = signal.SIGTERM) -> None:
        self.proc.send_signal(sig)

    def access_lines(self) -> list[dict[str, Any]]:
        out = []
        for line in list(self.lines):
            with contextlib.suppress(ValueError):
                data = json.loads(line)
                if "request_id" in data and "status" in data:
                    out.append(data)
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


@pytest.fixture
def gateway_process(tmp_path: Path) -> Any:
    made: list[GatewayProcess] = []

    def start(yaml_text: str, env: dict[str, str] | None = None) -> GatewayProcess:
        path = tmp_path / f"gateway-{len(made)}.yaml"
        path.write_text(yaml_text)
        proc = GatewayProcess(path, env)
        made.append(proc)
        return proc.wait_started()

    yield start
    for proc in made:
        proc.stop()


class RedisServer:
    """A real redis-server (Debian's) on a free loopback port, no persistence; can be killed and restarted."""

    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.tmp = tmp
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.proc = subprocess.Popen(
            [
                *("redis-server", "--port", str(self.port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no", "--dir", str(self.tmp)),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        end = time.monotonic() + 10
        while time.monotonic() < end:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                s.sendall(b"PING\r\n")
                if s.recv(64).startswith(b"+PONG"):
                    return self
            time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def command(self, *args: str) -> Any:
        """One command through redis-py's sync client (for inspecting what the gateway stored)."""
        import redis

        client = redis.Redis(port=self.port)
        try:
            return client.execute_command(*args)
        finally:
            client.close()


@pytest.fixture
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (apt-get install -y redis-server; .ci/run does)")
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.kill()
