"""The proxy port's handler: the request path as a chain of stages, read top to bottom.

Owns ``Proxy.handle``: it runs the stages in order, turns whatever they raise into an answer,
and writes the access-log line, the request metrics, the upstream's last-minute statistics and
the status page's history, whatever happened, under the policy the request started with
(``Exchange.runtime``: a reload meanwhile changes nothing for it).

    drain → hygiene → route → body → idempotency ┐
                                    → cache ──────┤→ fault → rate limits → quota → breaker
                                    → (neither) ──┘    → bulkhead → tries → relay → invalidate

Each stage is a function or small object of its own module, passing the call on or raising a
``GatewayError``; ``answers`` renders that error in the upstream's own format.
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING

from aiohttp import web

from .. import answers
from ..errors import ClientGone, Draining, GatewayError, MalformedBody
from ..hygiene import check_request
from ..logs import access_log, access_logging, log, redact_query
from ..metrics import method_label
from ..requestid import new_id
from .body import RequestBody
from .cached import Cached
from .exchange import Exchange
from .forward import Forward
from .idempotent import Idempotent
from .invalidate import after_write
from .relay import relay
from .route import route

if TYPE_CHECKING:
    from ..state import State

__all__ = ["Proxy"]

_REQUEST_ID = re.compile(r"[\x21-\x7e]{1,200}")
_READS = frozenset({"GET", "HEAD"})


class Proxy:
    """The request path. ``handle`` is the aiohttp handler of the proxy port."""

    def __init__(self, state: State) -> None:
        self.state = state
        self.metrics = state.metrics
        self.forward = Forward(state.metrics)  # fault → rate limits → quota → breaker → bulkhead → tries
        self.idempotent = Idempotent(state.metrics, self.forward, state.cache)
        self.cached = Cached(state.cache, state.metrics, self.forward)

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        """Serve one request; never raises (every failure becomes an answer). Counted in
        ``State.inflight`` (what a drain waits for) until its answer is ready."""
        state = self.state
        state.inflight += 1
        runtime = state.runtime  # this request keeps this policy to the end
        incoming_id = request.headers.get("x-request-id")
        rid = incoming_id if incoming_id and _REQUEST_ID.fullmatch(incoming_id) else new_id()
        path, _, query = request.raw_path.partition("?")
        shown = f"{path}?{redact_query(query, runtime.config.log.secret_params)}" if query else path
        ex = Exchange(rid, time.monotonic(), request.method, shown, runtime)
        response: web.StreamResponse
        try:
            response = await self._serve(request, ex)
        except GatewayError as err:
            response = self._refuse(err, ex)
            if isinstance(err, MalformedBody):  # the framing is lost: nothing more can be read
                response.force_close()
        except ClientGone:  # nobody to answer; 499 as nginx logs it
            ex.status, ex.error = 499, "client_disconnected"
            response = web.Response(status=499)
            response.force_close()
        except Exception:  # a bug: answer 500, keep serving
            log.exception("unexpected error in the gateway", extra={"fields": {"request_id": rid}})
            response = self._refuse(GatewayError("internal error in the gateway"), ex)
        finally:
            state.inflight -= 1
        self._finish(ex)
        return response

    async def _serve(self, request: web.BaseRequest, ex: Exchange) -> web.StreamResponse:
        """The chain. Each line is one stage; the first to answer ends it."""
        if self.state.draining:
            raise Draining("the gateway is shutting down and takes no new requests")
        path = check_request(request.method, request.raw_path, request.headers)  # hygiene
        routed = route(request, path, ex)  # route
        policy = routed.route.policy
        body = await RequestBody.read(  # body
            request, policy.limits.max_request_body, policy.retry.max_replay_body, policy.timeouts.idle
        )
        call = routed.call(request, body, ex)
        if routed.route.idempotency is not None:  # idempotency
            claim = await self.idempotent.claim(call, request.raw_path)
            if claim is not None:
                return await self.idempotent.serve(request, call, claim)
        if policy.cache is not None:  # cache
            if request.method in _READS:
                return await self.cached.serve(request, call, policy.cache)
            ex.cache = "BYPASS"
        async with self.forward.to_upstream(call) as attempt:  # fault → … → tries
            if call.upstream.caches:  # invalidate (only upstreams with a cached route are asked)
                await after_write(self.state.cache, call, attempt.response.status if attempt.response else None)
            return await relay(request, call, attempt)  # relay

    # ------------------------------------------------------------------ answers and records

    def _refuse(self, err: GatewayError, ex: Exchange) -> web.Response:
        if err.attempts is None and ex.attempts:
            err.attempts = ex.attempts
        if err.upstream is None and ex.upstream != "-":
            err.upstream = ex.upstream
        headers = {"x-request-id": ex.request_id}
        if ex.upstream != "-":
            headers["x-gateway-upstream"] = ex.upstream
            headers["x-gateway-attempts"] = str(ex.attempts)
        if ex.cache is not None:
            headers["x-gateway-cache"] = ex.cache
        if ex.replayed:
            headers["x-gateway-idempotency"] = "replayed"
        ex.status, ex.error, ex.source = err.status, err.code, "gateway"
        if not ex.attempts and ex.upstream != "-":
            self.metrics.rejected.labels(ex.upstream, err.code).inc()
        fmt = ex.answer_format
        if fmt is None:  # refused before routing (draining, hygiene): the path's upstream still decides
            found = ex.runtime.router.match(ex.method, ex.path.partition("?")[0])
            fmt = answers.GENERIC if found is None else answers.answer_format(found.upstream.policy.kind, found.path)
        return answers.error_response(err, fmt, headers, ex.request_id)

    def _finish(self, ex: Exchange) -> None:
        now = time.monotonic()
        headers_at = ex.headers_sent_at or now
        m = self.metrics
        m.requests.labels(ex.upstream, ex.route, method_label(ex.method), str(ex.status), ex.source).inc()
        m.duration.labels(ex.upstream, ex.route).observe(headers_at - ex.start)
        upstream = ex.runtime.upstreams.get(ex.upstream)  # the request's own policy, even after a reload
        if upstream is not None:
            failed = ex.error if ex.error else (f"HTTP {ex.status}" if ex.status >= 500 else None)
            upstream.stats.record(headers_at - ex.start, failed)
        self.state.history.record(ex, headers_at - ex.start)
        if not access_logging():
            return
        access_log(
            {
                "request_id": ex.request_id,
                "upstream": ex.upstream,
                "route": ex.route,
                "method": ex.method,
                "path": ex.path,
                "status": ex.status,
                "duration_ms": round((now - ex.start) * 1000, 1),
                "attempts": ex.attempts,
                "cache": ex.cache,
                "error": ex.error,
            }
        )
