"""The status page of the admin port (contract §4 ``GET /``): a page for a person during an incident.

Owns the page's routes and the JSON document it polls:

- ``GET /`` the page, ``GET /status.css`` and ``GET /status.js`` its style and script, read from
  the package (``gateway/static/``, shipped as package data). Nothing comes from another origin:
  every answer carries a Content-Security-Policy that lets the page load and fetch from the admin
  port only, and that no other site may frame it (its buttons change breakers).
- ``GET /admin/status``: one JSON document with everything the page shows (``document``), read
  from the live runtime, the response cache and ``history``; built at most once a second
  (``DOCUMENT_TTL``) unless a breaker moved, so many open pages cost what one does. Open like the other admin GETs; the
  admin POSTs the page offers (breaker reset and force-open, cache purge) still need the token,
  which the page asks for and keeps in the tab's ``sessionStorage`` only.

The document names configured things (upstreams, routes, breakers, path patterns) and counts;
the latest errors carry a code, a status, names, a time and the request id. It never holds a
path that was requested, a query, a header value, a body, an upstream URL or a rate-limit key
value (a phone number, a header digest). A ``quota`` block is added to a route when the route's
runtime object has a ``quota`` with a ``snapshot()`` (see the README for the shape the page reads).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any

from aiohttp import web

from . import __version__
from .history import MINUTE_BUCKETS, View

if TYPE_CHECKING:
    from .breaker import CircuitBreaker
    from .history import History
    from .runtime import Route
    from .state import Control

__all__ = ["DOCUMENT_TTL", "POLL_SECONDS", "document", "routes"]

POLL_SECONDS = 2.0
"""How often the page asks for ``/admin/status`` (at most; never while the last answer is awaited)."""

DOCUMENT_TTL = 1.0
"""A document is reused for this long (unless a breaker moved meanwhile): however many pages are
open, the gateway builds at most one a second."""

_ASSETS = {
    "/": ("status.html", "text/html"),
    "/status.css": ("status.css", "text/css"),
    "/status.js": ("status.js", "text/javascript"),
}
_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


@cache
def _asset(name: str) -> bytes:
    """A file of ``gateway/static/``, read once."""
    return (resources.files(__package__) / "static" / name).read_bytes()


def routes(gateway_of: Callable[[web.Request], Control]) -> list[web.RouteDef]:
    """The page's GET routes; ``gateway_of`` finds the gateway an admin request belongs to."""

    async def asset(request: web.Request) -> web.Response:
        name, kind = _ASSETS[request.path]
        return web.Response(
            body=_asset(name),
            content_type=kind,
            charset="utf-8",
            headers={**_SECURITY_HEADERS, "Cache-Control": "no-cache"},
        )

    built: list[tuple[float, int, str]] = []  # (when, breaker moves then, body): the last document

    async def status(request: web.Request) -> web.Response:
        gw = gateway_of(request)
        now, moves = time.monotonic(), gw.state.history.moves
        if built and now - built[0][0] < DOCUMENT_TTL and built[0][1] == moves:
            body = built[0][2]
        else:
            body = json.dumps(document(gw), separators=(",", ":"), default=str)
            built[:] = [(now, moves, body)]
        response = web.Response(
            text=body, content_type="application/json", headers={**_SECURITY_HEADERS, "Cache-Control": "no-store"}
        )
        response.enable_compression()  # gzip or deflate when the browser asks: ~10x smaller
        return response

    return [*(web.get(path, asset) for path in _ASSETS), web.get("/admin/status", status)]


# --------------------------------------------------------------------------- the document


def document(gw: Control) -> dict[str, Any]:
    """Everything the status page shows, as one JSON-ready dict (see ``/admin/status`` in the README)."""
    state = gw.state
    runtime, history = state.runtime, state.history
    health = gw.health()
    counts = state.cache.counts
    held = state.cache.store.stats()
    upstreams = []
    seen: set[tuple[str, str]] = {("-", "-")}
    total: View | None = None
    for name, up in runtime.upstreams.items():
        route_docs = []
        up_view: View | None = None
        for route in (*up.routes, up.default):
            key = (name, route.policy.name)
            seen.add(key)
            view = history.view(key)
            up_view = view if up_view is None else up_view + view
            route_docs.append(_route(route, view))
        assert up_view is not None  # every upstream has its default route
        total = up_view if total is None else total + up_view
        c: Mapping[str, int] = counts.get(name, {})
        upstreams.append(
            {
                "name": name,
                "kind": up.policy.kind,
                "prefix": up.policy.prefix,
                "inflight": up.inflight,
                "active": up.bulkhead.inflight,
                "queued": up.bulkhead.queued,
                "max_concurrent": up.bulkhead.max_concurrent,
                "max_queue": up.bulkhead.max_queue,
                **_windows(up_view),
                "breakers": [_breaker(b, history) for b in up.breakers.values()],
                "cache": {
                    **held.upstreams.get(name, {"entries": 0, "bytes": 0}),
                    "hits": c.get("hit", 0),
                    "misses": c.get("miss", 0) + c.get("revalidated", 0),
                    "stale_served": c.get("stale", 0),
                },
                "routes": route_docs,
            }
        )
    unrouted = history.view(("-", "-"))
    total = unrouted if total is None else total + unrouted
    history.forget(seen, set(runtime.breakers()))
    now = time.time()
    return {
        "gateway": {
            "version": __version__,
            "status": health["status"],
            "draining": health["draining"],
            "inflight": state.inflight,
            "now": _iso(now),
            "counting_since": _iso(history.since),
            **({"redis": health["redis"]} if "redis" in health else {}),
        },
        "admin": {"token_required": bool(runtime.config.admin.token)},
        "poll_seconds": POLL_SECONDS,
        "history": {
            "bucket_seconds": history.bucket_seconds,
            "buckets": history.buckets,
            "minute_buckets": MINUTE_BUCKETS,
            "span_started": history.span_started(),
            "bytes": history.nbytes(),
        },
        **_windows(total),
        "unrouted": {"last_1m": unrouted.minute.as_dict(), "last_15m": unrouted.span.as_dict()},
        "cache": {
            "store": state.cache.store.kind,
            "entries": held.entries,
            "bytes": held.bytes,
            "store_errors": counts["-"]["store_errors"] if "-" in counts else 0,
        },
        "upstreams": upstreams,
        "errors": history.latest_errors(),
    }


def _iso(timestamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(timestamp)) + f".{int(timestamp % 1 * 1000):03d}Z"


def _windows(view: View) -> dict[str, Any]:
    return {
        "last_1m": view.minute.as_dict(),
        "last_15m": view.span.as_dict(),
        "sparkline": {"requests": view.requests, "errors": view.errors},
    }


def _route(route: Route, view: View) -> dict[str, Any]:
    policy = route.policy
    doc: dict[str, Any] = {
        "name": policy.name,
        "default": policy.name == "-",  # the upstream's requests that matched none of its routes
        "methods": sorted(policy.methods),
        "path": policy.pattern.source,
        "breaker": route.breaker.name,
        "cache": policy.cache is not None,
        **_windows(view),
        "rate_limit": _rate_limits(route),
    }
    quota = _quota(route)
    if quota is not None:
        doc["quota"] = quota
    return doc


def _breaker(breaker: CircuitBreaker, history: History) -> dict[str, Any]:
    """The breaker's own snapshot (every key it has, so new ones reach the page), its latest
    transitions, and ``next_probe_at``: when an open breaker lets its next probe through."""
    snap = dict(breaker.snapshot())
    snap.setdefault("next_probe_at", snap.get("retry_at"))
    snap["transitions"] = history.transitions_of(breaker.name)
    return snap


def _limiters(route: Route) -> Iterable[Any]:
    """The route's rate limiters: none, one, or several (``rate_limit:`` as a list)."""
    limiter: Any = route.limiter
    if limiter is None:
        return ()
    return tuple(limiter) if isinstance(limiter, (list, tuple)) else (limiter,)


def _rate_limits(route: Route) -> list[dict[str, Any]]:
    out = []
    for limiter in _limiters(route):
        config = limiter.config
        entry: dict[str, Any] = {
            "rate_per_s": limiter.rate,
            "burst": limiter.burst,
            "max_wait_s": limiter.max_wait,
            "key": config.key,
            "scope": config.scope,
        }
        headroom = getattr(limiter, "headroom", None)
        if callable(headroom):  # a shared (Redis) bucket has no local count to show
            entry.update(headroom())
        out.append(entry)
    return out


def _quota(route: Route) -> Any:
    quota = getattr(route, "quota", None)
    snapshot = getattr(quota, "snapshot", None)
    return snapshot() if callable(snapshot) else None
