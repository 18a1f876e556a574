"""The gateway process: two listeners, signals, drain and reload.

Owns the lifecycle. ``Gateway.start`` opens the proxy listener (a low-level ``web.Server``: no
router, no path normalisation, the raw target reaches the handler) and the admin listener (its
own ``AppRunner``), then the signal handlers: SIGHUP reloads, SIGTERM/SIGINT drain —
readyz turns 503, the gateway keeps serving for ``drain.delay`` (the time a load balancer needs
to stop sending), closes the listener, answers any request that still arrives on an open
connection with 503 ``draining``, waits up to ``drain.timeout`` for in-flight requests, and
exits 0. A second signal skips the remaining delay.

Both ports' connections are hardened here (``_ProxyProtocol``, ``_ProxyServer``; the ``server:``
block for the proxy port, ``server.admin`` for the admin port): a deadline for the request head,
no pipelining, 414/431 for oversized heads, chunk-size lines bounded and followed
(``gateway.framing``), the framing rules of ``hygiene.screen_framing``, and a connection limit
(for the proxy port derived from RLIMIT_NOFILE) that closes idle connections to make room before
it refuses new ones with 503 ``overloaded``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import signal
import sys
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from aiohttp import web
from aiohttp.http import HttpVersion10, HttpVersion11
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong
from aiohttp.streams import EMPTY_PAYLOAD, StreamReader
from aiohttp.web_protocol import RequestHandler, _ErrInfo

from .admin import build_admin_app
from .answers import error_response, raw_answer
from .breakersync import BreakerSync
from .cache import ResponseCache
from .cachestore import FallbackStore, MemoryStore, RedisStore, Store
from .config import Config, Listener, Server, load_config
from .errors import (
    BadRequest,
    BodyTooLarge,
    ConfigError,
    GatewayError,
    Overloaded,
    RequestTimeout,
)
from .framing import ChunkLineTooLong, WireFraming
from .history import History
from .hygiene import screen_framing
from .logs import configure, event
from .metrics import Metrics
from .nearcache import NearStore
from .proxy import Proxy
from .redislink import RedisLink
from .runtime import Runtime

if TYPE_CHECKING:
    from prometheus_client import Counter, Gauge

    from .breaker import CircuitBreaker

__all__ = ["Gateway", "State", "descriptor_budget"]


@dataclass(slots=True)
class State:
    """What the request path reads from the process: the current runtime, metrics, cache, drain flag."""

    runtime: Runtime
    metrics: Metrics
    cache: ResponseCache
    draining: bool = False
    inflight: int = 0
    history: History = field(default_factory=History)  # the status page's 15 minutes


# File descriptors kept aside from client connections: listeners, the event loop, logs, Redis,
# admin connections, resolver threads. Each client connection may hold an upstream socket too.
FD_RESERVE = 64
# A connection that has sent nothing yet may be closed to make room at the limit after this long.
FRESH_GRACE = 1.0
# How long, and how much, a connection closed for a framing error keeps reading and dropping.
LINGER = 2.0
LINGER_BYTES = 256 * 1024
# At start, the listeners bind once the upstream pools' preconnects finish, or after this long.
PRECONNECT_WAIT = 1.0


class _Refused(BadHttpMessage):
    """A request aiohttp parsed but the gateway refuses before any handler sees it."""


class _ProxyProtocol(RequestHandler):
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
    - Connections are counted against ``server.max_connections`` (see ``_ProxyServer.admit``).
    """

    def __init__(self, manager: _ProxyServer, **kwargs: Any) -> None:
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
        if not self.admitted or self._force_close or self._close or not self.framing.following:
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
        before = len(self._messages)
        super().data_received(data)
        after = len(self._messages)
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
        for index, (_, queued) in enumerate(self._messages):
            if queued is payload:
                refused = _Refused(exc.message)
                self._messages[index] = (_ErrInfo(status=400, exc=refused, message=exc.message), EMPTY_PAYLOAD)
                return
        if not payload.is_eof():
            payload.set_exception(exc)
            self._lingering_time = 0.0
        else:  # a pipelined request's body, its request already refused: the connection ends now
            self.force_close()

    def _screen(self, index: int) -> None:
        """Refuse a request just parsed when it is pipelined or of another HTTP version."""
        message, payload = self._messages[index]
        self._gate.busy(self)
        if isinstance(message, _ErrInfo):
            # A framing error: if it is in the body being read, that read fails now.
            if self._last_payload is not None and not self._last_payload.is_eof():
                self._last_payload.set_exception(BadHttpMessage("malformed request body framing"))
                self._lingering_time = 0.0  # nothing more to read: close once it is answered
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
            underscores = settings.headers_with_underscores if isinstance(settings, Server) else "allow"
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
                self._messages[index] = (message, payload)
        self._last_payload = payload
        self._unanswered += 1
        if refusal is not None:
            self._messages[index] = (_ErrInfo(status=400, exc=_Refused(refusal), message=refusal), EMPTY_PAYLOAD)

    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self._loop.call_later(self._gate.settings().header_timeout, self._head_timed_out)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        transport = self.transport
        if transport is None or self._force_close:
            return
        self._gate.closed.labels("header_timeout").inc()
        if self._head_bytes and not self._request_in_progress and not self._messages:
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
            if not self._unanswered and not self._messages and not self._force_close and not self._close:
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
        self._linger_until = self._loop.create_future()
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
        if request.writer.output_size > 0:
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
        elif isinstance(exc, _Refused):
            error = BadRequest(exc.message)
        elif 400 <= status < 500:
            error = BadRequest("malformed HTTP request (request line, headers or framing)", status=status)
        else:
            error = GatewayError("internal error in the gateway", status=status)
        event(
            "request refused by the HTTP parser", logging.INFO, status=error.status, reason=type(exc).__name__
        )
        response = error_response(error)
        response.force_close()
        return response


def _limit_of(exc: LineTooLong) -> int | None:
    """The limit a LineTooLong names (the C parser gives an int, the Python one a string)."""
    try:
        return int(exc.args[1])
    except (IndexError, TypeError, ValueError):
        return None


class _ProxyServer(web.Server):
    """The low-level server, making connections with ``_ProxyProtocol`` and counting them.

    ``settings`` returns the current ``server:`` block, or ``server.admin`` for the admin port (a
    reload applies to new connections); ``gauge`` and ``closed`` are the port's connection metrics.
    At ``max_connections`` (the configured value, lowered to what RLIMIT_NOFILE allows), a new
    connection makes room by closing the longest-idle keep-alive connection, or else one that
    has sent nothing for ``FRESH_GRACE``; when none is idle it gets 503 ``overloaded`` and is
    closed at once, before reading anything (its descriptor is the scarce thing).
    """

    def __init__(
        self, handler: Any, settings: Callable[[], Listener], gauge: Gauge, closed: Counter, **kwargs: Any
    ) -> None:
        super().__init__(handler, **kwargs)
        self.settings = settings
        self.gauge = gauge
        self.closed = closed
        self.fd_cap = settings().max_connections
        self.open = 0
        self._counted: set[_ProxyProtocol] = set()
        self._fresh: OrderedDict[_ProxyProtocol, float] = OrderedDict()  # admitted, nothing received yet
        self._kept: OrderedDict[_ProxyProtocol, None] = OrderedDict()  # idle between requests, oldest first

    def __call__(self) -> RequestHandler:
        s = self.settings()
        return _ProxyProtocol(
            self,
            loop=self._loop,
            keepalive_timeout=s.keepalive_timeout,
            max_line_size=s.max_request_line,
            max_field_size=s.max_header_size,
            max_headers=s.max_headers,
            **self._kwargs,
        )

    @property
    def max_connections(self) -> int:
        return min(self.settings().max_connections, self.fd_cap)

    def admit(self, conn: _ProxyProtocol) -> bool:
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
        self._fresh[conn] = self._loop.time()
        self.gauge.set(self.open)
        return True

    def _evictable(self) -> _ProxyProtocol | None:
        if self._kept:
            return next(iter(self._kept))
        if self._fresh:
            conn, since = next(iter(self._fresh.items()))
            if self._loop.time() - since >= FRESH_GRACE:
                return conn
        return None

    def busy(self, conn: _ProxyProtocol) -> None:
        self._fresh.pop(conn, None)
        self._kept.pop(conn, None)

    def idle(self, conn: _ProxyProtocol) -> None:
        if conn in self._counted:
            self._kept[conn] = None
            self._kept.move_to_end(conn)

    def release(self, conn: _ProxyProtocol) -> None:
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


@dataclass(slots=True)
class _Listeners:
    proxy_runner: web.ServerRunner | None = None
    proxy_site: web.TCPSite | None = None
    admin_runner: web.ServerRunner | None = None
    admin_app_runner: web.AppRunner | None = None  # the app's startup and cleanup; never listens itself
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)


class Gateway:
    """One gateway process: build with a loaded config, then ``await run()``."""

    def __init__(self, config: Config, path: str | None = None) -> None:
        self.path = path
        self.metrics = Metrics()
        self.link = _redis_link(config, self.metrics)
        self.sync = BreakerSync(self.link, self._breakers) if self.link is not None else None
        runtime = Runtime(config, hook=self._breaker_moved, link=self.link)
        self.state = State(runtime, self.metrics, build_cache(config, self.metrics, self.link))
        self.metrics.watch_breakers(lambda: self.state.runtime.breakers().values())
        self.metrics.watch_cache(self._cache_size)
        self.metrics.watch_quotas(lambda: self.state.runtime.quotas())
        self.metrics.watch_pools(lambda: [up.pool for up in self.state.runtime.upstreams.values()])
        self.started = False
        self.drain_started = False
        self._listeners = _Listeners()
        self._proxy_server: _ProxyServer | None = None
        self._stop = asyncio.Event()
        self._skip_delay = asyncio.Event()
        self._mtime = _mtime(path)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Preconnect upstream pools (waiting up to PRECONNECT_WAIT), then bind both listeners.
        Raises OSError when a port cannot be bound."""
        config = self.state.runtime.config
        await self.state.runtime.start_pools(wait=PRECONNECT_WAIT)
        proxy = Proxy(self.state)
        server = _ProxyServer(
            self._counted(proxy.handle),
            lambda: self.state.runtime.config.server,
            self.metrics.connections,
            self.metrics.connections_closed,
            access_log=None,
        )
        server.fd_cap, nofile = descriptor_budget(config.server.max_connections, config.server.admin.max_connections)
        self._proxy_server = server
        runner = web.ServerRunner(server, handle_signals=False)
        await runner.setup()
        self._listeners.proxy_runner = runner
        site = web.TCPSite(runner, config.listen.host, config.listen.port, reuse_address=True, backlog=1024)
        await site.start()
        self._listeners.proxy_site = site
        await self._start_admin(config)
        self.started = True
        event(
            "gateway started",
            proxy=f"{config.listen.host}:{self.proxy_port}",
            admin=f"{config.admin.listen.host}:{self.admin_port}",
            upstreams=list(self.state.runtime.upstreams),
            config=self.path,
            pid=os.getpid(),
            max_connections=server.max_connections,
            nofile=nofile,
        )
        if server.max_connections < config.server.max_connections:
            event(
                "server.max_connections lowered to what the file descriptor limit allows",
                logging.WARNING,
                configured=config.server.max_connections,
                effective=server.max_connections,
                nofile=nofile,
            )
        if config.watch and self.path:
            self._listeners.tasks.append(asyncio.create_task(self._watch()))
        self._listeners.tasks.append(asyncio.create_task(self._prune_cache()))
        if self.sync is not None:
            self._listeners.tasks.append(asyncio.create_task(self.sync.run()))

    async def _start_admin(self, config: Config) -> None:
        """The admin app behind the same hardened connection handling as the proxy port, with the
        ``server.admin`` limits: its AppRunner runs the app's startup and builds a plain server,
        whose handler and request factory (public attributes) the hardened server takes over."""
        app_runner = web.AppRunner(build_admin_app(self), access_log=None, handle_signals=False)
        await app_runner.setup()
        self._listeners.admin_app_runner = app_runner
        plain = app_runner.server
        assert plain is not None
        server = _ProxyServer(
            plain.request_handler,
            lambda: self.state.runtime.config.server.admin,
            self.metrics.admin_connections,
            self.metrics.admin_connections_closed,
            request_factory=plain.request_factory,
            access_log=None,
        )
        server.fd_cap = sys.maxsize  # its connections are set aside by descriptor_budget: only its own cap applies
        runner = web.ServerRunner(server, handle_signals=False)
        await runner.setup()
        self._listeners.admin_runner = runner
        await web.TCPSite(runner, config.admin.listen.host, config.admin.listen.port, reuse_address=True).start()

    def _counted(self, handler: Any) -> Any:
        state = self.state

        async def counted(request: web.BaseRequest) -> web.StreamResponse:
            state.inflight += 1
            try:
                response: web.StreamResponse = await handler(request)
                return response
            finally:
                state.inflight -= 1

        return counted

    @property
    def proxy_port(self) -> int:
        runner = self._listeners.proxy_runner
        return runner.addresses[0][1] if runner and runner.addresses else 0

    @property
    def admin_port(self) -> int:
        runner = self._listeners.admin_runner
        return runner.addresses[0][1] if runner and runner.addresses else 0

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_stop_signal, sig.name)
        loop.add_signal_handler(signal.SIGHUP, lambda: self._spawn(self.reload(source="SIGHUP")))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._listeners.tasks.append(task)
        task.add_done_callback(self._listeners.tasks.remove)

    def _on_stop_signal(self, name: str) -> None:
        if self._stop.is_set():
            event("second stop signal: skipping the rest of the drain delay", signal=name)
            self._skip_delay.set()
            return
        event("stop signal received", signal=name)
        self._stop.set()

    async def run(self) -> None:
        """Start, serve until SIGTERM/SIGINT, drain, close."""
        await self.start()
        self.install_signal_handlers()
        await self._stop.wait()
        await self.drain()

    async def drain(self) -> None:
        """Contract ``drain``: readyz 503, wait delay, stop accepting, finish in-flight, close."""
        drain = self.state.runtime.config.drain
        loop = asyncio.get_running_loop()
        self.drain_started = True
        event("drain: readyz now answers 503; still serving", delay_s=drain.delay, inflight=self.state.inflight)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._skip_delay.wait(), drain.delay)
        if self._listeners.proxy_site is not None:
            await self._listeners.proxy_site.stop()
        self.state.draining = True
        event(
            "drain: listener closed; waiting for in-flight requests",
            inflight=self.state.inflight,
            timeout_s=drain.timeout,
        )
        end = loop.time() + drain.timeout
        while self.state.inflight and loop.time() < end:
            await asyncio.sleep(0.05)
        if self.state.inflight:
            event("drain: timeout reached with requests still in flight", logging.WARNING, inflight=self.state.inflight)
        else:
            event("drain: all in-flight requests finished")
        await self.close()
        event("gateway stopped")

    async def close(self) -> None:
        for task in list(self._listeners.tasks):
            task.cancel()
        if self._listeners.proxy_runner is not None:
            await self._listeners.proxy_runner.cleanup()
        if self._listeners.admin_runner is not None:
            await self._listeners.admin_runner.cleanup()
        if self._listeners.admin_app_runner is not None:
            await self._listeners.admin_app_runner.cleanup()
        await self.state.cache.close()
        await self.state.runtime.close()

    def _cache_size(self) -> tuple[int, int]:
        stats = self.state.cache.store.stats()
        return stats.entries, stats.bytes

    async def _prune_cache(self) -> None:
        """Every 15 s: drop expired memory entries (past ttl + stale windows) so they free memory
        unread, and recount what a Redis store holds for the gauges."""
        while True:
            await asyncio.sleep(15)
            self.state.cache.prune()
            await self.state.cache.refresh_stats()

    def _breakers(self) -> Iterable[CircuitBreaker]:
        return self.state.runtime.breakers().values()

    def _breaker_moved(self, breaker: CircuitBreaker, before: str, after: str) -> None:
        self.metrics.breaker_transitions.labels(breaker.upstream, breaker.route, after).inc()
        self.state.history.transition(breaker.name, before, after, breaker.last_event)
        if self.sync is not None:
            self.sync.noted(breaker, before, after)
        level = logging.WARNING if after == "open" else logging.INFO
        event(
            "breaker " + after.replace("_", "-"),
            level,
            breaker=breaker.name,
            previous=before,
            retry_after_s=breaker.retry_after(),
        )

    # ------------------------------------------------------------------ probes and health

    def readiness(self) -> tuple[bool, str]:
        """Ready: listening, a valid config loaded, not draining."""
        if not self.started:
            return False, "starting"
        if self.drain_started:
            return False, "draining"
        runtime = self.state.runtime
        for name in runtime.config.readiness.require:
            up = runtime.upstreams.get(name)
            if up is not None and up.default.breaker.state == "open":
                return False, f"breaker of required upstream {name!r} is open"
        return True, "ready"

    def health(self) -> dict[str, Any]:
        """``status`` ok/degraded and each upstream's last minute."""
        upstreams: dict[str, Any] = {}
        degraded = False
        for name, up in self.state.runtime.upstreams.items():
            snap = up.stats.snapshot()
            snap["inflight"] = up.inflight
            snap["queued"] = up.bulkhead.queued
            main = up.default.breaker
            snap["breaker"] = main.state
            snap["breaker_open_for_s"] = _rounded(main.open_for())
            snap["breaker_next_probe_in_s"] = _rounded(main.next_probe_in())
            others = [b for b in up.breakers.values() if b is not main]
            snap["route_breakers"] = {b.route: b.state for b in others}
            snap["route_breakers_open_for_s"] = {b.route: _rounded(b.open_for()) for b in others}
            quotas = {r.policy.name: r.quota.snapshot() for r in up.routes if r.quota is not None}
            if quotas:
                snap["quota"] = quotas
            requests, errors = snap["requests"], snap["errors"]
            if (requests >= 5 and errors * 2 >= requests) or snap["breaker"] == "open":
                degraded = True
            upstreams[name] = snap
        result: dict[str, Any] = {"status": "degraded" if degraded else "ok", "draining": self.drain_started}
        if self.link is not None:  # shared state: whether replicas currently share it
            result["redis"] = {"up": self.link.up, "errors": self.link.errors}
        result["upstreams"] = upstreams
        return result

    # ------------------------------------------------------------------ reload

    async def reload(self, source: str) -> tuple[bool, dict[str, Any]]:
        """Load the file again; apply it when valid. Returns (ok, what changed or the error)."""
        if not self.path:
            return False, {"error": "the gateway was not started from a file"}
        try:
            config = load_config(self.path)
        except ConfigError as exc:
            self.metrics.reloads.labels("error").inc()
            event(
                "config reload failed; the previous config keeps serving", logging.ERROR, source=source, error=str(exc)
            )
            return False, {"error": str(exc)}
        old = self.state.runtime
        new = Runtime(config, old, hook=self._breaker_moved, link=self.link)
        if self._proxy_server is not None and config.server != old.config.server:
            budget = descriptor_budget(config.server.max_connections, config.server.admin.max_connections)
            self._proxy_server.fd_cap = budget[0]
        changes = _changes(old.config, config)
        self.state.runtime = new
        await new.start_pools()  # preconnect and keep-warm for the pools this reload made
        await self._drop_cached(old, new)
        self._mtime = _mtime(self.path)
        configure(config.log.level, config.log.format, config.log.access_log, config.log.redact_query)
        self.metrics.reloads.labels("ok").inc()
        event("config reloaded", source=source, **changes)
        if new.retired:
            self._spawn(new.close_retired(grace=300))
        return True, changes

    async def _drop_cached(self, old: Runtime, new: Runtime) -> None:
        """Cache state survives a reload only for upstreams whose ``url`` did not change."""
        for name, up in old.upstreams.items():
            kept = new.upstreams.get(name)
            if kept is None or kept.policy.url != up.policy.url:
                with contextlib.suppress(OSError, ConnectionError, TimeoutError):
                    await self.state.cache.purge(name, lambda _u, _p: True)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            current = _mtime(self.path)
            if current != self._mtime:
                self._mtime = current
                await self.reload(source="watch")


def _redis_link(config: Config, metrics: Metrics) -> RedisLink | None:
    """The process's Redis connection when ``cache_store.type`` is redis."""
    spec = config.cache_store
    if spec.type != "redis" or not spec.url:
        return None

    def failed(op: str, exc: BaseException) -> None:
        metrics.store_errors.labels("redis", op).inc()

    return RedisLink(spec.url, spec.prefix, spec.timeout, on_error=failed)


def build_cache(config: Config, metrics: Metrics, link: RedisLink | None = None) -> ResponseCache:
    """The process's response cache: in memory, or in Redis with memory as the fallback."""
    spec = config.cache_store
    memory = MemoryStore(spec.max_entries, spec.max_bytes)
    shared = None if link is None else FallbackStore(RedisStore(link), memory)
    store: Store = memory if shared is None else NearStore(shared, spec.max_entries, spec.max_bytes)

    def store_failed(kind: str, op: str, exc: BaseException) -> None:
        metrics.store_errors.labels(kind, op).inc()

    return ResponseCache(store, spec.max_entry_bytes, on_store_error=store_failed)


def _mtime(path: str | None) -> float | None:
    try:
        return os.stat(path).st_mtime if path else None
    except OSError:
        return None


def _changes(old: Config, new: Config) -> dict[str, Any]:
    before, after = old.upstreams, new.upstreams
    changes: dict[str, Any] = {
        "added": sorted(set(after) - set(before)),
        "removed": sorted(set(before) - set(after)),
        "changed": sorted(n for n in set(before) & set(after) if before[n] != after[n]),
    }
    restart = []
    if old.listen != new.listen:
        restart.append("listen")
    if old.admin.listen != new.admin.listen:
        restart.append("admin.listen")
    if old.cache_store != new.cache_store:
        restart.append("cache_store")
    changes["restart_required"] = restart
    return changes


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 3)
