"""Every use of aiohttp's internals, in one place, each private name with what it is used for.

aiohttp has no public API for what the gateway needs at four places: hardening the proxy port's
connection handler (``RequestHandler``: refuse a queued request, read its closing flags, stop its
lingering), making a low-level ``web.Server`` build that handler, opening a connection into a
client pool without a request or reading the ages of pooled connections (``TCPConnector``), and
working out a client request's automatic headers cheaply (``ClientRequest``). The rest of the
gateway subclasses what is here and uses only public names: ``HandlerBase`` for
``gateway.listener``'s connection handler, ``ServerBase`` for its server, ``WarmConnector`` for
``gateway.pool``, ``RequestBase`` for ``gateway.resends``' request class, ``CoalescingResponse``
for the relay (headers sent with the first body bytes), and ``write_continue`` /
``answer_started`` for the proxy.

aiohttp is pinned below its next minor release in pyproject.toml (``>=3.12,<3.15``): these names
are the same in 3.12–3.14. ``PRIVATE_NAMES`` lists each one; ``check()`` verifies that every one
exists with the shape used here, and that no name the bases add hides one aiohttp added since;
``tests/test_aiohttp_compat.py`` runs it, so an aiohttp that moves one fails that test naming the
attribute. Raising the pin means running that test first.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import hdrs, web
from aiohttp.client_proto import ResponseHandler
from aiohttp.http import SERVER_SOFTWARE
from aiohttp.http_parser import RawRequestMessage
from aiohttp.streams import EMPTY_PAYLOAD, StreamReader
from aiohttp.web_protocol import RequestHandler, _ErrInfo
from multidict import CIMultiDict

__all__ = [
    "PRIVATE_NAMES",
    "CoalescingResponse",
    "HandlerBase",
    "PrivateName",
    "RequestBase",
    "ServerBase",
    "WarmConnector",
    "aiohttp_clock",
    "answer_started",
    "check",
    "write_continue",
]

Queued = tuple[RawRequestMessage | _ErrInfo, StreamReader]


# --------------------------------------------------------------------------- the server side


class CoalescingResponse(web.StreamResponse):
    """A streamed answer whose headers wait for its first body bytes (``gateway.coalesce``)."""

    # ``_send_headers_immediately`` (StreamResponse class attribute, 3.12+): ``prepare()`` sends the
    # headers at once when True; ``web.Response`` sets it False so headers leave with the body.
    _send_headers_immediately = False


class HandlerBase(RequestHandler):
    """aiohttp's per-connection handler, its private state behind named members."""

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        # ``_loop`` (BaseProtocol slot): the event loop the connection runs on, for timers and futures.
        return self._loop

    @property
    def queued(self) -> collections.deque[Queued]:
        # ``_messages``: the requests the parser produced that the handler task has not taken yet, as
        # (message, payload); read to screen each one as it is parsed, and replaced to refuse one.
        return self._messages

    def refuse_queued(self, index: int, status: int, exc: BaseException, message: str) -> None:
        """Replace the queued request at ``index`` by a refusal: its handler task calls
        ``handle_error(status, exc)`` instead of the proxy, with an empty body."""
        # ``_ErrInfo(status, exc, message)``: the queue entry aiohttp itself puts for a request its
        # parser refused; ``handle_error`` gets its status and exception.
        self._messages[index] = (_ErrInfo(status=status, exc=exc, message=message), EMPTY_PAYLOAD)

    @staticmethod
    def parsed(entry: RawRequestMessage | _ErrInfo) -> RawRequestMessage | None:
        """A queued entry's request; None when the parser (or ``refuse_queued``) refused it."""
        return None if isinstance(entry, _ErrInfo) else entry

    @property
    def closing(self) -> bool:
        """The connection ends after the current answer (``_close``) or at once (``_force_close``)."""
        # ``_close``: keep-alive is off (set by the answer); ``_force_close``: ``force_close()`` was called.
        return self._force_close or self._close

    @property
    def force_closing(self) -> bool:
        """``force_close()`` was called (``_force_close``)."""
        return self._force_close

    def skip_lingering(self) -> None:
        """Close once the answer is sent instead of reading the rest of the request body first."""
        # ``_lingering_time``: how long aiohttp reads and drops an unread body after the answer.
        self._lingering_time = 0.0

    @property
    def request_in_progress(self) -> bool:
        """A handler task is serving a request on this connection now."""
        # ``_request_in_progress``: set while the handler runs, cleared when its answer is finished.
        return self._request_in_progress


class ServerBase(web.Server):
    """The low-level ``web.Server``, its private state behind named members. A subclass overrides
    ``__call__`` (aiohttp's protocol factory, undocumented) to build its own ``HandlerBase``."""

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        # ``_loop``: the event loop the server was made on.
        return self._loop

    @property
    def handler_kwargs(self) -> dict[str, Any]:
        # ``_kwargs``: the RequestHandler keyword arguments given to the server (access_log, …), which
        # aiohttp's own ``__call__`` passes to every handler it builds.
        return self._kwargs


def answer_started(request: web.BaseRequest) -> bool:
    """Whether bytes of the answer already went out (then no error answer can be written)."""
    return request.writer.output_size > 0


async def write_continue(request: web.BaseRequest) -> None:
    """Send ``100 Continue`` before reading the body, leaving the answer proper not started."""
    await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    # ``StreamWriter.output_size`` counts bytes written; aiohttp's own 100-continue handling (in the
    # router, which the proxy port does not use) resets it the same way.
    request.writer.output_size = 0


# --------------------------------------------------------------------------- the client pool


class WarmConnector(aiohttp.TCPConnector):
    """A TCPConnector that can show its idle connections' ages, retire one, and open one into its
    pool without a request. The only place that touches aiohttp's private connector state."""

    def idle(self) -> list[tuple[ResponseHandler, float]]:
        """(protocol, time of release on aiohttp's clock) of every pooled idle connection."""
        # ``_conns``: key → deque of (protocol, time it was put back): the idle pool.
        return [(proto, t0) for conns in self._conns.values() for proto, t0 in conns if proto.is_connected()]

    def dead(self) -> list[tuple[ResponseHandler, float]]:
        """Pooled connections the upstream closed while they were idle (aiohttp drops them lazily)."""
        return [(proto, t0) for conns in self._conns.values() for proto, t0 in conns if not proto.is_connected()]

    @property
    def busy(self) -> int:
        """Connections carrying a request now (or being opened for one)."""
        # ``_acquired``: the set of protocols handed out to requests.
        return len(self._acquired)

    def retire(self, proto: ResponseHandler, released: float) -> bool:
        """Close an idle pooled connection, if it is still idle since ``released``; False when a
        request took it meanwhile (and perhaps put it back, fresh)."""
        for key, conns in list(self._conns.items()):
            for item in conns:
                if item[0] is proto and item[1] == released:
                    conns.remove(item)
                    if not conns:
                        del self._conns[key]
                    proto.close()
                    return True
        return False

    async def open_idle(self, req: aiohttp.ClientRequest, timeout: aiohttp.ClientTimeout) -> None:
        """Open one connection for ``req``'s key (TCP, proxy CONNECT, TLS) and pool it as idle."""
        # ``_create_connection(req, traces, timeout)``: connect (TCP, proxy CONNECT, TLS) without a request.
        proto = await self._create_connection(req, [], timeout)
        if self.closed:
            proto.close()
            raise aiohttp.ClientConnectionError("the connector was closed")
        # ``_release(key, protocol)``: put a connection in the idle pool, as the end of a request does.
        self._release(req.connection_key, proto)


# The multidicts of skipped names, one per distinct set (sessions are few: a handful of sets).
_SKIPPED: dict[frozenset[str], CIMultiDict[None]] = {}


class RequestBase(aiohttp.ClientRequest):
    """aiohttp's client request, with its automatic headers worked out without a multidict per request.

    Given ``skip_auto_headers`` (the gateway's sessions skip every automatic header but ``Host``:
    the upstream gets the client's ``Accept``, ``Accept-Encoding``, ``User-Agent`` and
    ``Content-Type``, or none), aiohttp's ``update_auto_headers`` sorts the names, builds a
    multidict of them and a copy of the request's headers extended with it, on every request
    (about 4 % of the gateway's samples under load, issue 17). This does the same with one
    multidict per distinct set of names, built once and shared (aiohttp only reads it)."""

    def update_auto_headers(self, skip_auto_headers: Iterable[str] | None) -> None:
        if skip_auto_headers is None:
            super().update_auto_headers(None)
            return
        names = skip_auto_headers if isinstance(skip_auto_headers, frozenset) else frozenset(skip_auto_headers)
        skip = _SKIPPED.get(names)
        if skip is None:
            skip = _SKIPPED[names] = CIMultiDict((name, None) for name in sorted(names))
        # ``_skip_auto_headers``: the names aiohttp must not add (read again when the body is set).
        self._skip_auto_headers = skip
        headers = self.headers
        for name, value in self.DEFAULT_HEADERS.items():
            if name not in headers and name not in skip:
                headers[name] = value
        if hdrs.USER_AGENT not in headers and hdrs.USER_AGENT not in skip:
            headers[hdrs.USER_AGENT] = SERVER_SOFTWARE


def aiohttp_clock() -> float:
    """The clock aiohttp stamps pooled connections with (``time.monotonic`` since 3.11)."""
    clock: Callable[[], float] = getattr(aiohttp.connector, "monotonic", time.monotonic)
    return clock()


# --------------------------------------------------------------------------- the check


@dataclass(frozen=True, slots=True)
class PrivateName:
    """One private aiohttp name used above: where it lives, and what ``check`` expects of it."""

    owner: str
    name: str
    shape: str


PRIVATE_NAMES: tuple[PrivateName, ...] = (
    PrivateName("aiohttp.web_protocol", "_ErrInfo", "a class made with (status=, exc=, message=)"),
    PrivateName("RequestHandler", "_messages", "a deque of (message, payload)"),
    PrivateName("RequestHandler", "_close", "a bool"),
    PrivateName("RequestHandler", "_force_close", "a bool"),
    PrivateName("RequestHandler", "_lingering_time", "a float"),
    PrivateName("RequestHandler", "_request_in_progress", "a bool"),
    PrivateName("RequestHandler", "_loop", "the running event loop"),
    PrivateName("web.Server", "_loop", "the running event loop"),
    PrivateName("web.Server", "_kwargs", "a dict of RequestHandler keyword arguments"),
    PrivateName("TCPConnector", "_conns", "a dict: key → deque of (protocol, float)"),
    PrivateName("TCPConnector", "_acquired", "a set"),
    PrivateName("TCPConnector", "_create_connection", "a coroutine function (req, traces, timeout)"),
    PrivateName("TCPConnector", "_release", "a function (key, protocol, ...)"),
    PrivateName("web.StreamResponse", "_send_headers_immediately", "a bool class attribute prepare() reads"),
    PrivateName("ClientRequest", "_skip_auto_headers", "a CIMultiDict of names (or None) update_auto_headers sets"),
)


def _params(fn: Any) -> list[str]:
    return list(inspect.signature(fn).parameters)


async def check() -> list[str]:
    """Every private name of ``PRIVATE_NAMES`` that is missing or has another shape, one line each
    (empty: this aiohttp fits). It builds a server, a handler and a connector, and closes them."""
    loop = asyncio.get_running_loop()
    problems: list[str] = []

    def expect(owner: str, name: str, ok: bool, shape: str) -> None:
        if not ok:
            problems.append(f"aiohttp {aiohttp.__version__}: {owner}.{name} is not {shape} (gateway/aiohttp_compat.py)")

    try:
        entry = _ErrInfo(status=400, exc=ValueError("x"), message="x")
        fields = (entry.status, entry.message)
        expect("aiohttp.web_protocol", "_ErrInfo", fields == (400, "x"), "(status, exc, message)")
    except TypeError:
        expect("aiohttp.web_protocol", "_ErrInfo", False, "a class made with (status=, exc=, message=)")

    for ours, theirs in ((HandlerBase, RequestHandler), (ServerBase, web.Server)):
        for name in vars(ours):
            if not name.startswith("_") and hasattr(theirs, name):
                problems.append(
                    f"aiohttp {aiohttp.__version__}: {theirs.__name__}.{name} now exists and "
                    f"{ours.__name__}.{name} hides it (gateway/aiohttp_compat.py)"
                )

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        return web.Response()

    server = web.Server(handler, access_log=None)
    expect("web.Server", "_loop", getattr(server, "_loop", None) is loop, "the running event loop")
    expect("web.Server", "_kwargs", isinstance(getattr(server, "_kwargs", None), dict), "a dict")
    try:
        proto = RequestHandler(server, loop=loop)
    except TypeError as exc:
        problems.append(f"aiohttp {aiohttp.__version__}: RequestHandler(manager, loop=) fails: {exc}")
    else:
        messages = getattr(proto, "_messages", None)
        expect("RequestHandler", "_messages", isinstance(messages, collections.deque), "a deque")
        for name, kind in (("_close", bool), ("_force_close", bool), ("_request_in_progress", bool)):
            expect("RequestHandler", name, isinstance(getattr(proto, name, None), kind), f"a {kind.__name__}")
        lingering = getattr(proto, "_lingering_time", None)
        expect("RequestHandler", "_lingering_time", isinstance(lingering, (int, float)), "a number")
        expect("RequestHandler", "_loop", getattr(proto, "_loop", None) is loop, "the running event loop")
        for hook in ("handle_error", "finish_response", "data_received", "connection_made", "connection_lost"):
            expect("RequestHandler", hook, callable(getattr(proto, hook, None)), "a method to override")
    expect("web.Server", "__call__", _params(web.Server.__call__) == ["self"], "a protocol factory taking nothing")
    expect("RawRequestMessage", "_replace", hasattr(RawRequestMessage, "_replace"), "a NamedTuple")

    connector = aiohttp.TCPConnector()
    conns = getattr(connector, "_conns", None)
    expect("TCPConnector", "_conns", isinstance(conns, dict), "a dict: key → deque of (protocol, float)")
    expect("TCPConnector", "_acquired", isinstance(getattr(connector, "_acquired", None), set), "a set")
    create = getattr(connector, "_create_connection", None)
    expect(
        "TCPConnector",
        "_create_connection",
        inspect.iscoroutinefunction(create) and _params(create)[:3] == ["req", "traces", "timeout"],
        "a coroutine function (req, traces, timeout)",
    )
    release = getattr(connector, "_release", None)
    expect(
        "TCPConnector",
        "_release",
        release is not None and _params(release)[:2] == ["key", "protocol"],
        "a function (key, protocol, ...)",
    )
    immediately = getattr(web.StreamResponse, "_send_headers_immediately", None)
    expect("web.StreamResponse", "_send_headers_immediately", isinstance(immediately, bool), "a bool")
    for name in ("send_headers", "buffer_size"):  # public, but what coalescing relies on
        expect("StreamWriter", name, hasattr(aiohttp.http_writer.StreamWriter, name), "there")
    expect(
        "ClientRequest",
        "_skip_auto_headers",
        "_skip_auto_headers" in getattr(aiohttp.ClientRequest, "__annotations__", {})
        and _params(aiohttp.ClientRequest.update_auto_headers) == ["self", "skip_auto_headers"],
        "an attribute update_auto_headers(skip_auto_headers) sets",
    )
    expect("ClientRequest", "DEFAULT_HEADERS", isinstance(aiohttp.ClientRequest.DEFAULT_HEADERS, dict), "a dict")
    clock = getattr(aiohttp.connector, "monotonic", time.monotonic)
    expect("aiohttp.connector", "monotonic", callable(clock), "a clock")
    await connector.close()
    return problems
