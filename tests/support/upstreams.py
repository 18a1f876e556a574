"""Real upstream servers on 127.0.0.1 with scripted faults, for the gateway under test to call.

- ``Upstream``: an aiohttp server whose handler is a script; it records every request it
  receives (method, raw target, headers, body) so tests can count and compare byte for byte.
- ``RawUpstream``: a bare asyncio TCP server answering fixed bytes, for malformed answers.
- ``WireUpstream``: a keep-alive server that records every byte per connection and reads them
  with h11, strictly: what reached an upstream, request by request, and any byte that did not fit.

The ``upstream_factory`` fixture (tests/conftest.py) starts ``Upstream``s and closes them after the test.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web
from multidict import CIMultiDict

from ..connkit import Listener

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


class RawUpstream(Listener):
    """A TCP server that reads a request head and answers with ``reply`` bytes (or nothing)."""

    def __init__(self, reply: bytes | None, close_after: bool = True, hold: float = 0.0) -> None:
        self.reply = reply
        self.close_after = close_after
        self.hold = hold
        self.connections = 0
        self.received: list[bytes] = []

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


class WireUpstream(Listener):
    """A keep-alive HTTP/1.1 server that records every byte it receives, per connection, and reads
    them with h11 (strict, RFC 9112): each complete request is answered 200 with a JSON echo of
    its method, target and body length; bytes h11 cannot read end the connection, recorded."""

    def __init__(self) -> None:
        self.connections: list[WireConnection] = []

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

    @property
    def requests(self) -> list[WireRequest]:
        return [r for c in self.connections for r in c.requests]
