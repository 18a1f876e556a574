"""The tries aiohttp makes by itself: counted without client tracing.

aiohttp resends an idempotent request once, on its own, when the pooled keep-alive connection it
picked turns out to be closed (RFC 9112 §9.3.1). That is right — the upstream closed an idle
connection — but it is a try the upstream may have seen, so the proxy must count it
(``x-gateway-attempts``, ``gateway_upstream_tries_total``, ``gateway_retries_total{reason=
"stale-connection"}``).

aiohttp builds one ``ClientRequest`` per send, its own resend included. ``CountingRequest`` (the
request class of every upstream session, ``gateway.pool``) adds one to the ``Sends`` of the try in
progress when aiohttp sends it on a connection, found in a context variable that ``counting()``
sets when the try starts. This replaces
an aiohttp ``TraceConfig`` on the session, which cost every request a ``Trace`` object and two
awaited signal dispatches (about 4 % of the gateway's samples under load, issue 17); a context
variable read per send costs about 0.1 µs.

A send is counted when aiohttp writes it to a connection it holds (``ClientRequest.send``, a
public method of the public ``request_class``): the count is the number of requests that went out
on a connection, as the trace's "headers sent" was. (Counting in ``__init__``, as before, forwarded
some twenty keyword arguments per request.)
"""

from __future__ import annotations

from collections.abc import Coroutine
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

import aiohttp

from .aiohttp_compat import RequestBase

if TYPE_CHECKING:
    from aiohttp.connector import Connection

__all__ = ["CountingRequest", "Sends", "counting"]


class Sends:
    """The sends of one try: 1 normally, 2 when aiohttp resent it on a fresh connection."""

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0

    @property
    def resent(self) -> int:
        return max(0, self.count - 1)


_CURRENT: ContextVar[Sends | None] = ContextVar("gateway_sends", default=None)


def counting() -> Sends:
    """A new ``Sends`` for the try about to start in this task; the sessions' requests count into it."""
    sends = Sends()
    _CURRENT.set(sends)
    return sends


class CountingRequest(RequestBase):
    """aiohttp's request, counting each of its sends into the current try's ``Sends`` (if any)."""

    def send(self, conn: Connection) -> Coroutine[Any, Any, aiohttp.ClientResponse]:
        # A plain function handing back aiohttp's coroutine: no extra frame on the request's task.
        sends = _CURRENT.get()
        if sends is not None:
            sends.count += 1
        return super().send(conn)
