"""The gateway under test: its config text, the in-process gateway, the real program as a subprocess.

- ``gateway_yaml``: a config with ephemeral ports and the given upstream blocks.
- ``RunningGateway``: what the ``gateway_factory`` fixture (tests/conftest.py) returns: the real
  ``Gateway`` in this process, on ephemeral ports, with a client session and its metrics registry.
- ``GatewayProcess``: the real program (``python -m gateway run``) as a subprocess: signals, RSS,
  its log lines, drain; the ``gateway_process`` fixture starts one from YAML text and kills it afterwards.
- ``gateway_with_upstream``: the usual pair for one test, an ``api`` upstream and a gateway in front.
- ``raw_request``: raw bytes to a port, everything read back; ``read_answer`` one answer off a
  kept-alive connection, ``status_of`` a raw answer's status, ``peer_closed`` whether the other
  side closed.
- ``ROOT`` (the repository) and ``free_port``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client import CollectorRegistry

from gateway.server import Gateway

from .upstreams import Upstream

ROOT = Path(__file__).resolve().parent.parent.parent


def free_port() -> int:
    """A port nothing listens on (bound then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ``gateway_yaml(..., admin_token=TOKEN_FROM_ENV)``: admin POSTs need the token in $GATEWAY_ADMIN_TOKEN.
TOKEN_FROM_ENV = "'${GATEWAY_ADMIN_TOKEN}'"


def gateway_yaml(upstreams: dict[str, str], extra: str = "", admin_token: str | None = None, **ports: int) -> str:
    """A config with ephemeral ports (or ``port``, ``admin_port``) and the given upstream blocks (YAML
    text per upstream); ``admin_token``: the admin's ``token`` as YAML text (a literal, or ``TOKEN_FROM_ENV``)."""
    body = "".join(
        f"  {name}:\n{textwrap.indent(textwrap.dedent(block).strip(), '    ')}\n" for name, block in upstreams.items()
    )
    token = "" if admin_token is None else f", token: {admin_token}"
    return (
        f"listen: {{host: 127.0.0.1, port: {ports.get('port', 0)}}}\n"
        f"admin: {{listen: {{host: 127.0.0.1, port: {ports.get('admin_port', 0)}}}{token}}}\n"
        f"log: {{level: info, format: json, access_log: true}}\n"
        f"drain: {{delay: 0s, timeout: 5s}}\n"
        f"{textwrap.dedent(extra)}\n"
        f"upstreams:\n{body}"
    )


@dataclass
class RunningGateway:
    """An in-process gateway (``gateway_factory``): its addresses, a client session, its metrics registry."""

    gateway: Gateway
    session: aiohttp.ClientSession
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.gateway.proxy_port}"

    @property
    def admin(self) -> str:
        return f"http://127.0.0.1:{self.gateway.admin_port}"

    @property
    def registry(self) -> CollectorRegistry:
        """The gateway's own Prometheus registry: what its /metrics serves (read it with tests/support/metrics.py)."""
        return self.gateway.metrics.registry


UpstreamFactory = Callable[..., Awaitable[Upstream]]  # the upstream_factory fixture
GatewayFactory = Callable[[str], Awaitable[RunningGateway]]  # the gateway_factory fixture


async def gateway_with_upstream(
    upstream_factory: UpstreamFactory, gateway_factory: GatewayFactory, block: str = "", extra: str = ""
) -> tuple[RunningGateway, Upstream]:
    """An in-process gateway whose one upstream ``api`` (``block``: more of its YAML) is a fresh ``Upstream``
    answering 200 ``ok``; ``extra``: top-level YAML."""
    up = await upstream_factory()
    gw = await gateway_factory(gateway_yaml({"api": f"url: {up.url}\n{block}"}, extra=extra))
    return gw, up


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


def status_of(answer: bytes) -> int:
    """The status code of a raw HTTP/1.1 answer."""
    return int(answer.split(b"\r\n", 1)[0].split(b" ")[1])


async def read_answer(reader: asyncio.StreamReader, timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    """One answer with a Content-Length body, read off a kept-alive connection: status, headers
    (lower-case names), body."""
    async with asyncio.timeout(timeout):
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        body = await reader.readexactly(int(headers.get("content-length", "0")))
    return int(lines[0].split(" ")[1]), headers, body


async def peer_closed(reader: asyncio.StreamReader, timeout: float = 5.0) -> bool:
    """Whether the peer closes the connection within ``timeout`` (what it sends first is read and dropped)."""
    try:
        async with asyncio.timeout(timeout):
            while await reader.read(65536):
                pass
    except TimeoutError:
        return False
    except ConnectionError:
        pass
    return True


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
