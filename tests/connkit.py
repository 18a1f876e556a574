"""Connection-level test parts for tests/test_pool.py: what the upstream side of a pool sees.

- ``CountingUpstream``: an HTTP/1.1 keep-alive server (plain or TLS, optionally asking for a client
  certificate) that counts the connections it accepted (for TLS: completed handshakes) and records
  which connection carried each request (``hold``: answer that much later). Its answer says so
  too: ``{"conn": N, "conn_age": s, "accepted": total}``. It can hold an idle limit as real front
  ends do: close an idle connection (``idle_limit``), or, to make the stale-connection race happen
  on purpose, lose a request that arrives on a connection idle past the limit (``lose_late``: the
  request is read, then the connection is reset, as when the upstream's close crosses the request
  on the wire).
- ``ConnectProxy``: an HTTP proxy that opens CONNECT tunnels (and relays plain absolute-form
  requests), counting them and recording ``Proxy-Authorization``; or refuses every one with 407.
- ``DelayRelay``: a TCP relay adding a one-way delay in each direction and one round trip at
  connect, for a network delay where the kernel has no netem.
- ``Listener``: start/url/close for a raw asyncio TCP server on 127.0.0.1 (these, and the raw
  upstreams of tests/support/upstreams.py; this module stays free of the gateway's imports, as
  the processes below start from it).
- ``python -m tests.connkit upstream|client …``: the same upstream, and a client that times
  requests through a gateway on a schedule, as processes (run inside network namespaces).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import ssl
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Self


class Listener:
    """A raw asyncio TCP server on 127.0.0.1: ``start`` listens on an ephemeral port and serves each
    connection with ``_serve``; ``close`` stops listening (connections already open go on)."""

    port: int = 0
    _server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    async def start(self) -> Self:
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
class Received:
    conn: int
    method: str
    target: str
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class CountingUpstream:
    context: ssl.SSLContext | None = None
    idle_limit: float | None = None
    lose_late: bool = False
    hold: float = 0.0  # seconds between reading a request and answering it
    host: str = "127.0.0.1"
    port: int = 0
    accepted_at: list[float] = field(default_factory=list)
    requests: list[Received] = field(default_factory=list)
    peer_subjects: list[str] = field(default_factory=list)
    open_now: int = 0
    closed_by_client: int = 0
    closed_idle: int = 0
    lost: int = 0
    _server: asyncio.Server | None = None

    @property
    def accepted(self) -> int:
        return len(self.accepted_at)

    @property
    def scheme(self) -> str:
        return "https" if self.context is not None else "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    async def start(self) -> CountingUpstream:
        self._server = await asyncio.start_server(self._serve, self.host, self.port, ssl=self.context)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted_at.append(time.monotonic())
        conn = self.accepted
        self.open_now += 1
        cert = writer.get_extra_info("peercert")
        if cert:
            self.peer_subjects.append(dict(x[0] for x in cert["subject"]).get("commonName", ""))
        last = time.monotonic()
        try:
            while True:
                try:
                    if self.idle_limit is not None and not self.lose_late:
                        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.idle_limit)
                    else:
                        head = await reader.readuntil(b"\r\n\r\n")
                except TimeoutError:
                    self.closed_idle += 1  # the upstream's own idle limit: it closes first
                    return
                except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
                    self.closed_by_client += 1
                    return
                if self.lose_late and self.idle_limit is not None and time.monotonic() - last > self.idle_limit:
                    self.lost += 1  # read, never answered: the connection was closing as it arrived
                    writer.transport.abort()
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                headers = {
                    k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)
                }
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                now = time.monotonic()
                self.requests.append(Received(conn, method, target, headers, body, now))
                if self.hold:
                    await asyncio.sleep(self.hold)
                answer = json.dumps(
                    {"conn": conn, "conn_age": round(now - self.accepted_at[conn - 1], 4), "accepted": self.accepted}
                ).encode()
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                    % (len(answer), answer)
                )
                await writer.drain()
                last = time.monotonic()
        finally:
            self.open_now -= 1
            writer.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


@dataclass
class ConnectProxy(Listener):
    refuse: bool = False
    tunnels: int = 0
    forwarded: int = 0
    targets: list[str] = field(default_factory=list)
    auth: list[str | None] = field(default_factory=list)
    port: int = 0
    _server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()
            return
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        self.targets.append(f"{method} {target}")
        self.auth.append(headers.get("proxy-authorization"))
        if self.refuse:
            writer.write(
                b'HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm="egress"\r\n'
                b"Content-Length: 0\r\nConnection: close\r\n\r\n"
            )
            await writer.drain()
            writer.close()
            return
        if method == "CONNECT":
            host, _, port = target.rpartition(":")
            up_reader, up_writer = await asyncio.open_connection(host, int(port))
            self.tunnels += 1
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await writer.drain()
        else:  # absolute-form: relayed as it is (the test upstream takes any target)
            hostport = target.split("://", 1)[1].split("/", 1)[0]
            host, _, port = hostport.rpartition(":")
            up_reader, up_writer = await asyncio.open_connection(host, int(port))
            self.forwarded += 1
            up_writer.write(head)
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))


@dataclass
class DelayRelay(Listener):
    """127.0.0.1:port → target, each direction delayed by ``one_way``, and one round trip at connect."""

    target_host: str
    target_port: int
    one_way: float = 0.05
    port: int = 0
    _server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(2 * self.one_way)  # SYN, SYN-ACK: the kernel here answered at once
        try:
            up_reader, up_writer = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(self._carry(reader, up_writer), self._carry(up_reader, writer))

    async def _carry(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                at, data = await queue.get()
                await asyncio.sleep(max(0.0, at - loop.time()))
                if not data:
                    with contextlib.suppress(OSError):
                        writer.close()
                    return
                writer.write(data)
                with contextlib.suppress(ConnectionError, OSError):
                    await writer.drain()

        sender = asyncio.create_task(deliver())
        try:
            while True:
                try:
                    data = await reader.read(65536)
                except (ConnectionError, OSError):
                    data = b""
                queue.put_nowait((loop.time() + self.one_way, data))
                if not data:
                    break
            await sender
        finally:
            sender.cancel()


# --------------------------------------------------------------------------- as processes


async def _upstream_main(args: argparse.Namespace) -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(args.cert, args.key)
    servers = [await CountingUpstream(context, host=args.host).start() for _ in range(args.count)]
    print(json.dumps({"ports": [s.port for s in servers]}), flush=True)
    await asyncio.Event().wait()


async def _client_main(args: argparse.Namespace) -> None:
    """Requests ``GET {gateway}/{name}/`` at each ``name@seconds`` of the schedule; one JSON line each."""
    import aiohttp

    schedule = sorted((float(at), name) for name, _, at in (item.partition("@") for item in args.schedule))
    start = time.monotonic()
    async with aiohttp.ClientSession() as session:
        for at, name in schedule:
            await asyncio.sleep(max(0.0, start + at - time.monotonic()))
            sent = time.monotonic()
            async with session.get(f"{args.gateway}/{name}/") as resp:
                body = await resp.read()
            took = time.monotonic() - sent
            row: dict[str, Any] = {"name": name, "at": at, "status": resp.status, "ms": round(took * 1000, 1)}
            with contextlib.suppress(ValueError):
                row.update(json.loads(body))
            print(json.dumps(row), flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.connkit")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("upstream")
    up.add_argument("--host", default="127.0.0.1")
    up.add_argument("--count", type=int, default=1)
    up.add_argument("--cert", required=True)
    up.add_argument("--key", required=True)
    client = sub.add_parser("client")
    client.add_argument("--gateway", required=True)
    client.add_argument("schedule", nargs="+", help="name@seconds")
    args = parser.parse_args(argv)
    asyncio.run(_upstream_main(args) if args.command == "upstream" else _client_main(args))


if __name__ == "__main__":
    sys.exit(main())
