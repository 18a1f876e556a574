"""What one request carries down the proxy's stages.

Owns ``Exchange`` (what is known about the request as it goes: ids, upstream, route, status,
attempts, cache label, error; logged and measured at the end), ``Call`` (the request bound for an
upstream, decided once when it is routed: its policy snapshot, path, headers, body, deadline) and
``stamp``, which adds the gateway's own headers to an answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from ..hygiene import request_headers

if TYPE_CHECKING:
    from ..quota import TokenMeter
    from ..runtime import Route, Runtime, Upstream
    from .body import RequestBody

__all__ = ["Call", "Exchange", "stamp"]


@dataclass(slots=True)
class Exchange:
    """What is known about one request as it goes down the path; logged at the end."""

    request_id: str
    start: float
    method: str
    path: str
    runtime: Runtime  # the policy the request started with; it keeps it to the end (a reload swaps State's)
    upstream: str = "-"
    route: str = "-"
    status: int = 0
    attempts: int = 0
    cache: str | None = None
    error: str | None = None
    source: str = "gateway"
    headers_sent_at: float | None = None
    answer_format: str | None = None  # the upstream's error format for the gateway's own answers
    replayed: bool = False  # an answer kept under an Idempotency-Key


@dataclass(slots=True)
class Call:
    """One request bound for an upstream: what the stages need, decided once when it is routed."""

    method: str
    upstream: Upstream
    route: Route
    path: str  # as the upstream receives it: raw, prefix removed, no query
    query: str | None
    params: dict[str, str]
    client_headers: CIMultiDictProxy[str]  # as the client sent them (cache keys read these)
    body: RequestBody
    deadline: float
    ex: Exchange
    request: web.BaseRequest | None = None  # None for a background refresh, which has ``outgoing`` set
    outgoing: CIMultiDict[str] | None = None
    meter: TokenMeter | None = None  # reads the answer's token count for a ``quota``
    fallback: bool = False  # a STALE answer is ready if the upstream fails: never wait for the breaker

    @property
    def headers(self) -> CIMultiDict[str]:
        """The headers as the upstream receives them; made on first use (a cache hit never needs them)."""
        if self.outgoing is None:
            assert self.request is not None
            self.outgoing = request_headers(self.client_headers, self.ex.request_id, self.upstream.policy.set_headers)
            if self.upstream.policy.forwarded_headers:
                _add_forwarded(self.outgoing, self.request)
        return self.outgoing


def stamp(headers: CIMultiDict[str], ex: Exchange, attempts: int) -> CIMultiDict[str]:
    """Add the gateway's own answer headers."""
    headers["x-request-id"] = ex.request_id
    headers["x-gateway-upstream"] = ex.upstream
    headers["x-gateway-attempts"] = str(attempts)
    if ex.cache is not None:
        headers["x-gateway-cache"] = ex.cache
    return headers


def _add_forwarded(headers: CIMultiDict[str], request: web.BaseRequest) -> None:
    peer = request.remote or ""
    prior = request.headers.get("x-forwarded-for")
    headers["X-Forwarded-For"] = f"{prior}, {peer}" if prior else peer
    headers["X-Forwarded-Proto"] = request.scheme
    headers["X-Forwarded-Host"] = request.host
