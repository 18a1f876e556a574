"""The tries aiohttp makes by itself: counted without client tracing.

aiohttp resends an idempotent request once, on its own, when the pooled keep-alive connection it
picked turns out to be closed (RFC 9112 §9.3.1). That is right — the upstream closed an idle
connection — but it is a try the upstream may have seen, so the proxy must count it
(``x-gateway-attempts``, ``gateway_upstream_tries_total``, ``gateway_retries_total{reason=
"stale-connection"}``).

aiohttp builds one ``ClientRequest`` per send, its own resend included. ``CountingRequest`` (the
request class of every upstream session, ``gateway.pool``) adds one to the ``Sends`` of the try in
progress, found in a context variable that ``counting()`` sets when the try starts. This replaces
an aiohttp ``TraceConfig`` on the session, which cost every request a ``Trace`` object and two
awaited signal dispatches (about 4 % of the gateway's samples under load, issue 17); a context
variable read per send costs about 0.1 µs.

A send is counted when aiohttp builds its request, just before it takes a connection. A connect
that fails is not resent by aiohttp (it raises), so the count is the number of requests that went
out on a connection, as the trace's "headers sent" was.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

import aiohttp

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


class CountingRequest(aiohttp.ClientRequest):
    """aiohttp's request, counting itself into the current try's ``Sends`` (if any)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        sends = _CURRENT.get()
        if sends is not None:
            sends.count += 1
