"""The route stage: which upstream and route serve a request, under the policy it started with.

Owns matching the checked path against the request's runtime snapshot (``routing.Router``:
upstream prefix, then the route's methods and path pattern, else the upstream's default route),
the error format of the gateway's own answers from then on (``answers.answer_format``), and the
request's deadline: the route's ``timeouts.total``, lowered (never raised) by the client's
``x-gateway-timeout-ms``. No match is 404 ``no_route``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import web

from .. import answers
from ..errors import BadRequest, NoRoute
from .exchange import Call

if TYPE_CHECKING:
    from ..runtime import Route, Upstream
    from .body import RequestBody
    from .exchange import Exchange

__all__ = ["Routed", "route"]


@dataclass(slots=True)
class Routed:
    """Where a request goes: its upstream, route, path as the upstream receives it, and deadline."""

    upstream: Upstream
    route: Route
    path: str
    params: dict[str, str]
    deadline: float

    def call(self, request: web.BaseRequest, body: RequestBody, ex: Exchange) -> Call:
        """The call the later stages serve, once the body is read."""
        raw_target = request.raw_path
        query = raw_target.partition("?")[2] if "?" in raw_target else None
        return Call(
            request.method,
            self.upstream,
            self.route,
            self.path,
            query,
            self.params,
            request.headers,
            body,
            self.deadline,
            ex,
            request,
        )


def route(request: web.BaseRequest, path: str, ex: Exchange) -> Routed:
    """Match ``path`` (hygiene-checked) in the request's runtime; record upstream, route and the
    answer format on ``ex``. Raises NoRoute, or BadRequest for a malformed ``x-gateway-timeout-ms``."""
    match = ex.runtime.router.match(request.method, path)
    if match is None:
        raise NoRoute(f"no upstream prefix matches the path {path!r}")
    upstream, chosen = match.upstream, match.route or match.upstream.default
    ex.upstream, ex.route = upstream.name, chosen.policy.name
    ex.answer_format = answers.answer_format(upstream.policy.kind, match.path)
    deadline = ex.start + _total(request, chosen.policy.timeouts.total)
    return Routed(upstream, chosen, match.path, match.params, deadline)


def _total(request: web.BaseRequest, total: float) -> float:
    """``total``, lowered (never raised) by the client's ``x-gateway-timeout-ms``."""
    asked = request.headers.get("x-gateway-timeout-ms")
    if asked is None:
        return total
    if not asked.isdigit() or int(asked) == 0:
        raise BadRequest(f"x-gateway-timeout-ms must be a positive whole number of milliseconds, got {asked!r}")
    return min(total, int(asked) / 1000)
