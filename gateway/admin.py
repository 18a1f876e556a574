"""The admin port: probes, health, metrics, configuration, breakers and reload (contract §4).

Owns the admin ``web.Application``: GET /livez, /readyz, /health, /metrics, /admin/config,
/admin/breakers, /admin/cache, and POST /admin/reload, /admin/breakers/{name}/reset and /open,
/admin/cache/purge. POSTs need
``Authorization: Bearer <admin.token>`` when a token is set, compared in constant time. The
admin app shares nothing with the proxy port: the proxy never serves these paths.
The status page's GET routes (``/``, its assets, ``/admin/status``) come from ``statuspage``.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from .answers import error_response
from .config import redacted
from .errors import GatewayError
from .logs import redact_data, redact_text
from .metrics import CONTENT_TYPE
from .state import Control
from .statuspage import routes as status_page_routes

__all__ = ["build_admin_app"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
CONTROL_KEY: web.AppKey[Control] = web.AppKey("control")


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        status=status, text=json.dumps(data, indent=2, default=str) + "\n", content_type="application/json"
    )


def _error(status: int, code: str, message: str) -> web.Response:
    """The admin port's errors: the gateway's generic shape, through the one renderer."""
    return error_response(GatewayError(message, status=status, code=code))


def _gateway(request: web.Request) -> Control:
    return request.app[CONTROL_KEY]


@web.middleware
async def require_token(request: web.Request, handler: Handler) -> web.StreamResponse:
    """POSTs need the admin bearer token when one is configured, and never come from another site.

    A browser on any web page can send a simple POST to 127.0.0.1:9901 without a preflight; it then
    sends an ``Origin`` header (and ``Sec-Fetch-Site``). A POST whose Origin is not the admin port's
    own origin (the status page's), or that a browser marks ``cross-site``, is refused with 403
    whether or not a token is set; a client that sends neither (curl, scripts) is unaffected."""
    if request.method == "POST":
        if _cross_site(request):
            return _error(403, "forbidden", "admin POSTs are not accepted from another origin")
        token = _gateway(request).state.runtime.config.admin.token
        if token:
            given = request.headers.get("Authorization", "")
            expected = f"Bearer {token}"
            if not hmac.compare_digest(given.encode(), expected.encode()):
                resp = _error(401, "unauthorized", "admin POSTs need 'Authorization: Bearer <admin.token>'")
                resp.headers["WWW-Authenticate"] = 'Bearer realm="gateway-admin"'
                return resp
    return await handler(request)


def _cross_site(request: web.Request) -> bool:
    if request.headers.get("Sec-Fetch-Site", "").lower() == "cross-site":
        return True
    origin = request.headers.get("Origin")
    if origin is None:
        return False
    own = f"{request.scheme}://{request.headers.get('Host', '')}".lower()
    return origin.strip().lower() != own


async def livez(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def readyz(request: web.Request) -> web.Response:
    gw = _gateway(request)
    ready, why = gw.readiness()
    return web.Response(status=200 if ready else 503, text=("ready" if ready else why) + "\n")


async def health(request: web.Request) -> web.Response:
    return _json(_gateway(request).health())


async def metrics(request: web.Request) -> web.Response:
    body = _gateway(request).state.metrics.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


async def config(request: web.Request) -> web.Response:
    return _json(redact_data(redacted(_gateway(request).state.runtime.config)))


async def reload(request: web.Request) -> web.Response:
    ok, detail = await _gateway(request).reload(source="admin")
    if ok:
        return _json({"result": "ok", **detail})
    return _error(400, "config_invalid", redact_text(detail["error"]))


async def breakers(request: web.Request) -> web.Response:
    runtime = _gateway(request).state.runtime
    return _json({"breakers": [b.snapshot() for b in runtime.breakers().values()]})


async def breaker_action(request: web.Request) -> web.Response:
    name, action = request.match_info["name"], request.match_info["action"]
    breaker = _gateway(request).state.runtime.breakers().get(name)
    if breaker is None:
        return _error(404, "no_breaker", f"no breaker named {name!r} (see GET /admin/breakers)")
    if action == "reset":
        breaker.reset()
    else:
        breaker.force_open()
    return _json(breaker.snapshot())


async def cache(request: web.Request) -> web.Response:
    response_cache = _gateway(request).state.cache
    await response_cache.refresh_stats()
    return _json(response_cache.snapshot())


async def cache_purge(request: web.Request) -> web.Response:
    """Delete entries by upstream and/or gateway path prefix (both optional: everything)."""
    gw = _gateway(request)
    raw = await request.read()
    try:
        spec = json.loads(raw) if raw.strip() else {}
    except ValueError:
        return _error(
            400,
            "bad_request",
            'the body must be JSON like {"upstream": "supabase", "path_prefix": "/supabase/rest/v1/"}',
        )
    if not isinstance(spec, dict):
        return _error(400, "bad_request", "the body must be a JSON object")
    unknown = sorted(set(spec) - {"upstream", "path_prefix"})
    if unknown:
        return _error(400, "bad_request", f"unknown keys {unknown}; allowed: upstream, path_prefix")
    upstream, prefix = spec.get("upstream"), spec.get("path_prefix")
    if upstream is not None and not isinstance(upstream, str):
        return _error(400, "bad_request", "upstream must be a string")
    if prefix is not None and (not isinstance(prefix, str) or not prefix.startswith("/")):
        return _error(400, "bad_request", "path_prefix must be a string starting with '/'")
    upstreams = gw.state.runtime.upstreams
    if upstream is not None and upstream not in upstreams:
        return _error(404, "no_upstream", f"no upstream named {upstream!r}")
    prefixes = {name: up.policy.prefix.rstrip("/") for name, up in upstreams.items()}

    def match(name: str, path: str) -> bool:
        # path_prefix is a path as the backend calls the gateway: the upstream's prefix included.
        return prefix is None or (prefixes.get(name, "\0") + path).startswith(prefix)

    try:
        deleted = await gw.state.cache.purge(upstream, match)
    except (OSError, ConnectionError, TimeoutError) as exc:
        return _error(503, "store_unavailable", f"the cache store did not answer: {type(exc).__name__}")
    return _json({"deleted": deleted, "upstream": upstream, "path_prefix": prefix})


def build_admin_app(gateway: Control) -> web.Application:
    """The admin application for ``gateway`` (the process, seen through ``Control``)."""
    app = web.Application(middlewares=[require_token])
    app[CONTROL_KEY] = gateway
    app.router.add_get("/livez", livez)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/admin/config", config)
    app.router.add_post("/admin/reload", reload)
    app.router.add_get("/admin/breakers", breakers)
    app.router.add_post("/admin/breakers/{name}/{action:reset|open}", breaker_action)
    app.router.add_get("/admin/cache", cache)
    app.router.add_post("/admin/cache/purge", cache_purge)
    app.add_routes(status_page_routes(_gateway))  # GET /, its assets, GET /admin/status
    return app
