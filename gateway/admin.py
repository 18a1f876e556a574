"""The admin port: probes, health, metrics, configuration, breakers and reload (contract §4).

Owns the admin ``web.Application``: GET /livez, /readyz, /health, /metrics, /admin/config,
/admin/breakers, and POST /admin/reload, /admin/breakers/{name}/reset and /open. POSTs need
``Authorization: Bearer <admin.token>`` when a token is set, compared in constant time. The
admin app shares nothing with the proxy port: the proxy never serves these paths.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .config import redacted
from .metrics import CONTENT_TYPE

if TYPE_CHECKING:
    from .server import Gateway

__all__ = ["build_admin_app"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
GATEWAY_KEY = web.AppKey("gateway", object)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        status=status, text=json.dumps(data, indent=2, default=str) + "\n", content_type="application/json"
    )


def _error(status: int, code: str, message: str) -> web.Response:
    resp = _json({"error": {"code": code, "message": message}}, status)
    resp.headers["x-gateway-error"] = code
    return resp


def _gateway(request: web.Request) -> Gateway:
    return request.app[GATEWAY_KEY]  # type: ignore[return-value]


@web.middleware
async def require_token(request: web.Request, handler: Handler) -> web.StreamResponse:
    """POSTs need the admin bearer token when one is configured."""
    if request.method == "POST":
        token = _gateway(request).state.runtime.config.admin.token
        if token:
            given = request.headers.get("Authorization", "")
            expected = f"Bearer {token}"
            if not hmac.compare_digest(given.encode(), expected.encode()):
                resp = _error(401, "unauthorized", "admin POSTs need 'Authorization: Bearer <admin.token>'")
                resp.headers["WWW-Authenticate"] = 'Bearer realm="gateway-admin"'
                return resp
    return await handler(request)


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
    return _json(redacted(_gateway(request).state.runtime.config))


async def reload(request: web.Request) -> web.Response:
    ok, detail = await _gateway(request).reload(source="admin")
    if ok:
        return _json({"result": "ok", **detail})
    return _error(400, "config_invalid", detail["error"])


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


def build_admin_app(gateway: Gateway) -> web.Application:
    """The admin application for ``gateway``."""
    app = web.Application(middlewares=[require_token])
    app[GATEWAY_KEY] = gateway
    app.router.add_get("/livez", livez)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/admin/config", config)
    app.router.add_post("/admin/reload", reload)
    app.router.add_get("/admin/breakers", breakers)
    app.router.add_post("/admin/breakers/{name}/{action:reset|open}", breaker_action)
    return app
