"""The proxy and admin ports' client connections, hardened: head deadline, no pipelining, framing, limits.

Owns ``HardenedHandler`` (one client connection: aiohttp's connection handler with the checks
below) and ``HardenedServer`` (the low-level server making them, counting connections against
``max_connections``), for both ports: the ``server:`` block applies to the proxy port,
``server.admin`` to the admin port. And ``descriptor_budget``: how many client connections the
process's file descriptors allow.

- a deadline for the request head (``header_timeout``); 414/431 for oversized heads;
- no pipelining, only HTTP/1.0 and 1.1, the framing rules of ``hygiene.screen_framing``;
- chunk-size lines bounded and followed (``gateway.framing``), a lingering close after a framing error;
- a connection limit (for the proxy port derived from RLIMIT_NOFILE) that closes idle connections to
  make room before it refuses new ones with 503 ``overloaded``.

Every refusal is written by ``gateway.answers`` (``raw_answer`` before a request exists,
``error_response`` after). aiohttp's private state is reached only through ``gateway.aiohttp_compat``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from aiohttp import web
from aiohttp.http import HttpVersion10, HttpVersion11
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong
from aiohttp.streams import StreamReader

from .aiohttp_compat import HandlerBase, ServerBase, answer_started
from .answers import error_response, raw_answer
from .config import ListenerSpec, ServerSpec
from .errors import (
    BadRequest,
    BodyTooLarge,
    ChunkLineTooLong,
    GatewayError,
    Overloaded,
    ProtocolRefused,
    RequestTimeout,
)
from .framing import WireFraming
from .hygiene import screen_framing
from .logs import event

if TYPE_CHECKING:
    from prometheus_client import Counter, Gauge

__all__ = [
    "FD_RESERVE",
    "FRESH_GRACE",
    "LINGER",
    "LINGER_BYTES",
    "HardenedHandler",
    "HardenedServer",
    "descriptor_budget",
]

# File descriptors kept aside from client connections: listeners, the event loop, logs, Redis,
# admin connections, resolver threads. Each client connection may hold an upstream socket too.
FD_RESERVE = 64
# A connection that has sent nothing yet may be closed to make room at the limit after this long.
FRESH_GRACE = 1.0
# How long, and how much, a connection closed for a framing error keeps reading and dropping.
LINGER = 2.0
LINGER_BYTES = 256 * 1024


class HardenedHandler(HandlerBase):
    """aiohttp's connection handler, hardened for the proxy port.

    - Requests its parser refuses get the contract's answer: aiohttp's own echoes the offending
      bytes and logs them with a traceback (a malformed header may be a credential). Too many or
      too long headers get 431, a too long request line 414, anything else 400, all ``bad_request``.
    - The request head (request line and headers) must arrive within ``server.header_timeout``
      of its first byte (of the connection's start, for the first request): else 408, closed.
    - Only HTTP/1.0 and 1.1; HTTP/1.0 with Transfer-Encoding is refused (RFC 9112 §6.1), and so are
      the requests ``hygiene.screen_framing`` refuses (a transfer coding other than chunked, a
      look-alike framing header); it may also drop headers (``server.headers_with_underscores``).
    - No pipelining: a request whose bytes arrive before the previous one on the connection was
      answered is refused with 400 and the connection closed after that answer. No HTTP client
      the backend uses pipelines; refusing it means bytes past a body's declared length can never
      become a request the upstream receives ("request smuggling").
    - A request asking for a protocol switch (``Upgrade`` with ``Connection: upgrade``, CONNECT) is
      answered as plain HTTP and the connection closed after it, unread: aiohttp would drop the
      bytes that followed it in the same read (h2c) or parse them later, outside ``data_received``
      (websocket), where neither the pipelining check nor ``framing`` sees them.
    - A framing error in a body being read (a bad chunk size) fails that body's read at once.
      ``framing`` follows the connection's bytes: a chunk-size line over ``max_chunk_line`` fails
      the body being read with ChunkLineTooLong (400), and nothing more is read from the connection.
    - Connections are counted against ``server.max_connections`` (see ``HardenedServer.admit``).
    """

    def __init__(self, manager: HardenedServer, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._gate = manager  # aiohttp drops its own reference at connection_lost
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_bytes = False  # part of a request head has arrived, not all of it
        self._last_payload: StreamReader | None = None  # the body of the last request parsed
        self._unanswered = 0  # requests parsed whose answer is not yet finished
        self.admitted = False
        self._switch_asked = False  # a request asked for a protocol switch: nothing after it is read
        self._linger_until: asyncio.Future[None] | None = None  # set while lingering (see _linger)
        self._lingered = 0  # bytes dropped while lingering
        settings = manager.settings()
        head = settings.max_request_line + settings.max_headers * (2 * settings.max_header_size + 4)
        self.framing = WireFraming(settings.max_chunk_line, head)  # read by gateway.framing.overhead

    # ------------------------------------------------------------------ connection

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self._gate.admit(self):
            error = Overloaded(
                f"the gateway has {self._gate.max_connections} client connections open, its limit", retry_after=1
            )
            cast(asyncio.Transport, transport).write(raw_answer(error))
            transport.close()
            return
        self.admitted = True
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self.admitted:
            return
        if self._linger_until is not None and not self._linger_until.done():
            self._linger_until.set_result(None)
        self._disarm_head_timer()
        self._gate.release(self)
        super().connection_lost(exc)

    def evict(self) -> None:
        """Close this idle connection to make room for a new one (the server is at its limit)."""
        self._gate.release(self)
        self.force_close()

    # ------------------------------------------------------------------ reading requests

    def data_received(self, data: bytes) -> None:
        if self._linger_until is not None:  # dropped; a client that keeps sending is cut off
            self._lingered += len(data)
            if self._lingered > LINGER_BYTES and not self._linger_until.done():
                self._linger_until.set_result(None)
            return
        if not self.admitted or self.closing or not self.framing.following:
            return
        if self._switch_asked and (self._last_payload is None or self._last_payload.is_eof()):
            return  # what follows a request that asked for a protocol switch is never read
        heads = self.framing.heads
        failure = None
        try:
            self.framing.feed(data)  # first: bytes breaking a bound in a body underway never reach the parser
        except ChunkLineTooLong as exc:
            failure = exc
            if self.framing.heads == heads:
                self._framing_refused(failure)
                return
        expecting_head = self._last_payload is None or self._last_payload.is_eof()
        before = len(self.queued)
        super().data_received(data)
        after = len(self.queued)
        if after > before:
            self._disarm_head_timer()
            self._head_bytes = False
            for index in range(before, after):
                self._screen(index)
        elif data and expecting_head and not self._head_bytes:
            self._head_bytes = True
            self._gate.busy(self)
            self._arm_head_timer()
        if failure is not None:  # in a body whose head came in this same read: its request, just parsed
            self._framing_refused(failure)

    def _framing_refused(self, exc: ChunkLineTooLong) -> None:
        """The body being received breaks a framing bound; nothing more is read from this connection.

        Its request, when still queued (just parsed, or waiting for the handler), is refused whole:
        400, closed. When its handler already reads the body, that read fails (the handler answers
        400 and closes); the parser never saw the rest of the body, so it cannot have ended."""
        payload = self._last_payload
        if payload is None:  # the parser refused the request already: that answer closes the connection
            return
        for index, (_, queued) in enumerate(self.queued):
            if queued is payload:
                refused = ProtocolRefused(exc.message)
                self.refuse_queued(index, 400, refused, exc.message)
                return
        if not payload.is_eof():
            payload.set_exception(exc)
            self.skip_lingering()
        else:  # a pipelined request's body, its request already refused: the connection ends now
            self.force_close()

    def _screen(self, index: int) -> None:
        """Refuse a request just parsed when it is pipelined or of another HTTP version."""
        entry, payload = self.queued[index]
        self._gate.busy(self)
        message = self.parsed(entry)
        if message is None:
            # A framing error: if it is in the body being read, that read fails now.
            if self._last_payload is not None and not self._last_payload.is_eof():
                self._last_payload.set_exception(BadHttpMessage("malformed request body framing"))
                self.skip_lingering()  # nothing more to read: close once it is answered
            self._last_payload = None
            self._unanswered += 1
            return
        refusal = None
        if self._unanswered:
            refusal = "pipelined request: send a request only after the answer to the previous one"
        elif message.version not in (HttpVersion10, HttpVersion11):
            refusal = "only HTTP/1.0 and HTTP/1.1 are accepted"
        elif message.version == HttpVersion10 and "transfer-encoding" in message.headers:
            refusal = "Transfer-Encoding in an HTTP/1.0 request"
        else:
            settings = self._gate.settings()
            underscores = settings.headers_with_underscores if isinstance(settings, ServerSpec) else "allow"
            try:
                kept = screen_framing(message.headers, underscores)
            except BadRequest as exc:
                refusal = exc.message
            else:
                if kept is not None:  # dropped headers: the request reads as if they were never sent
                    raw = tuple((k, v) for k, v in message.raw_headers if k.decode("utf-8", "surrogateescape") in kept)
                    message = message._replace(headers=kept, raw_headers=raw)
                if message.upgrade:  # never switched: answered as plain HTTP, then the connection closes
                    message = message._replace(should_close=True)
                    self._switch_asked = True
                if message is not entry:  # changed: the handler must get this one
                    self.queued[index] = (message, payload)
        self._last_payload = payload
        self._unanswered += 1
        if refusal is not None:
            self.refuse_queued(index, 400, ProtocolRefused(refusal), refusal)

    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self._gate.settings().header_timeout, self._head_timed_out)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        transport = self.transport
        if transport is None or self.force_closing:
            return
        self._gate.closed.labels("header_timeout").inc()
        if self._head_bytes and not self.request_in_progress and not self.queued:
            timeout = self._gate.settings().header_timeout
            transport.write(raw_answer(RequestTimeout(f"the request head did not arrive within {timeout:g}s")))
        event("client connection closed: no complete request head in time", logging.DEBUG, partial=self._head_bytes)
        self.force_close()

    async def finish_response(
        self, request: web.BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        try:
            result = await super().finish_response(request, resp, start_time)
        finally:
            self._unanswered = max(0, self._unanswered - 1)
            if not self._unanswered and not self.queued and not self.closing:
                self._gate.idle(self)
        if not self.framing.following and not resp.keep_alive:
            await self._linger()
        return result

    async def _linger(self) -> None:
        """After the answer that ends a connection whose input was cut off mid-request (a framing
        error), half-close and read and drop what the client still sends, until it closes, for
        ``LINGER`` seconds or ``LINGER_BYTES`` at most: closing with unread bytes sends a reset,
        which can destroy the answer before the client reads it (nginx's ``lingering_close``)."""
        transport = self.transport
        if transport is None or transport.is_closing() or not transport.can_write_eof():
            return
        self._linger_until = self.loop.create_future()
        with contextlib.suppress(OSError, RuntimeError):
            transport.write_eof()
            transport.resume_reading()  # it may be paused for a full body buffer
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._linger_until), LINGER)

    # ------------------------------------------------------------------ answers

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if answer_started(request):
            raise ConnectionError("the answer was already started; closing the connection")
        error: GatewayError
        if status == 413:
            error = BodyTooLarge("the request is too large")
        elif isinstance(exc, LineTooLong) and _limit_of(exc) == self.max_line_size != self.max_field_size:
            error = BadRequest(f"the request line is longer than {self.max_line_size} bytes", status=414)
        elif isinstance(exc, LineTooLong):
            error = BadRequest(f"a request header is longer than {self.max_field_size} bytes", status=431)
        elif isinstance(exc, BadHttpMessage) and "Too many headers" in exc.message:
            error = BadRequest(f"the request has more than {self.max_headers} headers", status=431)
        elif isinstance(exc, ProtocolRefused):
            error = BadRequest(exc.message)
        elif 400 <= status < 500:
            error = BadRequest("malformed HTTP request (request line, headers or framing)", status=status)
        else:
            error = GatewayError("internal error in the gateway", status=status)
        event("request refused by the HTTP parser", logging.INFO, status=error.status, reason=type(exc).__name__)
        response = error_response(error)
        response.force_close()
        return response


def _limit_of(exc: LineTooLong) -> int | None:
    """The limit a LineTooLong names (the C parser gives an int, the Python one a string)."""
    try:
        return int(exc.args[1])
    except (IndexError, TypeError, ValueError):
        return None


class HardenedServer(ServerBase):
    """The low-level server, making connections with ``HardenedHandler`` and counting them.

    ``settings`` returns the current ``server:`` block, or ``server.admin`` for the admin port (a
    reload applies to new connections); ``gauge`` and ``closed`` are the port's connection metrics.
    At ``max_connections`` (the configured value, lowered to what RLIMIT_NOFILE allows), a new
    connection makes room by closing the longest-idle keep-alive connection, or else one that
    has sent nothing for ``FRESH_GRACE``; when none is idle it gets 503 ``overloaded`` and is
    closed at once, before reading anything (its descriptor is the scarce thing).
    """

    def __init__(
        self, handler: Any, settings: Callable[[], ListenerSpec], gauge: Gauge, closed: Counter, **kwargs: Any
    ) -> None:
        super().__init__(handler, **kwargs)
        self.settings = settings
        self.gauge = gauge
        self.closed = closed
        self.fd_cap = settings().max_connections
        self.open = 0
        self._counted: set[HardenedHandler] = set()
        self._fresh: OrderedDict[HardenedHandler, float] = OrderedDict()  # admitted, nothing received yet
        self._kept: OrderedDict[HardenedHandler, None] = OrderedDict()  # idle between requests, oldest first

    def __call__(self) -> HardenedHandler:
        s = self.settings()
        return HardenedHandler(
            self,
            loop=self.loop,
            keepalive_timeout=s.keepalive_timeout,
            max_line_size=s.max_request_line,
            max_field_size=s.max_header_size,
            max_headers=s.max_headers,
            **self.handler_kwargs,
        )

    @property
    def max_connections(self) -> int:
        return min(self.settings().max_connections, self.fd_cap)

    def admit(self, conn: HardenedHandler) -> bool:
        """Count a new connection in, making room if needed; False: refuse it."""
        if self.open >= self.max_connections:
            victim = self._evictable()
            if victim is None:
                self.closed.labels("max_connections").inc()
                return False
            self.closed.labels("evicted").inc()
            victim.evict()
        self.open += 1
        self._counted.add(conn)
        self._fresh[conn] = self.loop.time()
        self.gauge.set(self.open)
        return True

    def _evictable(self) -> HardenedHandler | None:
        if self._kept:
            return next(iter(self._kept))
        if self._fresh:
            conn, since = next(iter(self._fresh.items()))
            if self.loop.time() - since >= FRESH_GRACE:
                return conn
        return None

    def busy(self, conn: HardenedHandler) -> None:
        self._fresh.pop(conn, None)
        self._kept.pop(conn, None)

    def idle(self, conn: HardenedHandler) -> None:
        if conn in self._counted:
            self._kept[conn] = None
            self._kept.move_to_end(conn)

    def release(self, conn: HardenedHandler) -> None:
        """Count a connection out (closed, or being closed to make room); once."""
        if conn in self._counted:
            self._counted.discard(conn)
            self.busy(conn)
            self.open -= 1
            self.gauge.set(self.open)


def descriptor_budget(wanted: int, admin: int = 0) -> tuple[int, int]:
    """Client connections the process's file descriptors allow, and RLIMIT_NOFILE's soft limit.

    Raises the soft limit toward what ``wanted`` connections need (two descriptors each, the
    client's and an upstream's, plus ``FD_RESERVE`` and the ``admin`` port's connection cap), never
    past the hard limit, as Go and nginx (``worker_rlimit_nofile``) do; then returns what the limit
    allows, at most ``wanted``."""
    reserve = FD_RESERVE + admin
    need = 2 * wanted + reserve
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(need, hard)
        if target > soft:
            with contextlib.suppress(ValueError, OSError):
                resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
                soft = target
    if soft == resource.RLIM_INFINITY:
        return wanted, soft
    return max(1, min(wanted, (soft - reserve) // 2)), soft
