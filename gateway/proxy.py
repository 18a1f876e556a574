"""The proxy handler: the request path, read top to bottom.

    hygiene → route → body size → fault → rate limit → breaker → bulkhead
            → tries (retry loop; one breaker sample per try) → relay the answer

Each stage either passes the exchange on or raises a ``GatewayError``, which ``handle`` turns
into the contract's JSON answer. ``handle`` also writes the access-log line and the request
metrics, whatever happened. The body is read into memory only when it is small enough to replay
(``max_replay_body``); otherwise it streams, once. Answers stream back chunk by chunk as they
arrive (server-sent events included); nothing is buffered whole except an error body of at most
64 KiB read to find its API code.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web

from . import outcomes
from .errors import (
    BadRequest,
    BodyTooLarge,
    BreakerOpen,
    Draining,
    GatewayError,
    NoRoute,
    RequestTimeout,
    UpstreamReset,
    UpstreamTimeout,
    UpstreamUnreachable,
    error_response,
)
from .hygiene import check_request, request_headers, response_headers
from .logs import access_log, log, redact_query
from .metrics import method_label
from .outcomes import Outcome

if TYPE_CHECKING:
    from .breaker import Permit
    from .runtime import Route, Runtime, Upstream
    from .server import State

__all__ = ["Proxy"]

_REQUEST_ID = re.compile(r"[\x21-\x7e]{1,200}")


@dataclass(slots=True)
class Exchange:
    """What is known about one request as it goes down the path; logged at the end."""

    request_id: str
    start: float
    method: str
    path: str
    upstream: str = "-"
    route: str = "-"
    status: int = 0
    attempts: int = 0
    cache: str | None = None
    error: str | None = None
    source: str = "gateway"
    headers_sent_at: float | None = None


@dataclass(slots=True)
class Attempt:
    """One try's result: an answer (with the error body read so far) or a failure."""

    outcome: Outcome
    response: aiohttp.ClientResponse | None = None
    peeked: bytes = b""
    retry_after: float | None = None
    cut_by_total: bool = False

    def discard(self) -> None:
        """Release the answer's connection before the next try."""
        if self.response is not None:
            self.response.release()


class RequestBody:
    """The client's body: bytes when small enough to replay, else a one-shot stream."""

    def __init__(self, request: web.BaseRequest, data: bytes | None, prefix: bytes, limit: int, idle: float) -> None:
        self._request = request
        self.data = data
        self._prefix = prefix
        self._limit = limit
        self._idle = idle
        self.started = False
        self.too_large = False
        self.stalled = False

    @classmethod
    async def read(cls, request: web.BaseRequest, limit: int, replay_limit: int, idle: float) -> RequestBody:
        """Read what can be replayed; raise BodyTooLarge when Content-Length is over ``limit``."""
        length = request.content_length
        if length is not None and length > limit:
            raise BodyTooLarge(f"the request body is {length} bytes, over the limit of {limit}")
        if not request.body_exists:
            return cls(request, None, b"", limit, idle)
        if length is not None and length > replay_limit:
            return cls(request, None, b"", limit, idle)  # streamed, Content-Length kept
        want = (length if length is not None else replay_limit + 1) or 0
        buf = bytearray()
        while len(buf) < want:
            chunk = await cls._next(request, idle, want - len(buf))
            if not chunk:
                break
            buf += chunk
        if length is None and len(buf) > limit:
            raise BodyTooLarge(f"the request body is over the limit of {limit} bytes")
        if length is None and len(buf) > replay_limit:
            return cls(request, None, bytes(buf), limit, idle)  # chunked and large: stream the rest
        return cls(request, bytes(buf), b"", limit, idle)

    @staticmethod
    async def _next(request: web.BaseRequest, idle: float, n: int) -> bytes:
        try:
            async with asyncio.timeout(idle):
                return await request.content.read(min(n, 1 << 16))
        except TimeoutError:
            raise RequestTimeout(f"the client sent no body data for {idle:g}s") from None

    @property
    def replayable(self) -> bool:
        """Whether another try can send the same body: bytes, or a stream not yet started."""
        return self.data is not None or not self.started

    def payload(self) -> bytes | AsyncIterator[bytes] | None:
        """What the client library sends: the bytes, or the stream (once)."""
        if self.data is not None or not self._request.body_exists:
            return self.data
        return self._stream()

    async def _stream(self) -> AsyncIterator[bytes]:
        self.started = True
        sent = len(self._prefix)
        if self._prefix:
            yield self._prefix
        while True:
            try:
                async with asyncio.timeout(self._idle):
                    chunk = await self._request.content.readany()
            except TimeoutError:
                self.stalled = True
                raise
            if not chunk:
                return
            sent += len(chunk)
            if sent > self._limit:
                self.too_large = True  # the upstream gets a truncated body, never a complete one
                raise BodyTooLarge(f"the request body is over the limit of {self._limit} bytes")
            yield chunk


class Proxy:
    """The request path. ``handle`` is the aiohttp handler of the proxy port."""

    def __init__(self, state: State) -> None:
        self.state = state
        self.metrics = state.metrics

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        """Serve one request; never raises (every failure becomes an answer)."""
        incoming_id = request.headers.get("x-request-id")
        rid = incoming_id if incoming_id and _REQUEST_ID.fullmatch(incoming_id) else uuid.uuid4().hex
        path, _, query = request.raw_path.partition("?")
        shown = f"{path}?{redact_query(query)}" if query else path
        ex = Exchange(rid, time.monotonic(), request.method, shown)
        response: web.StreamResponse
        try:
            response = await self._serve(request, ex)
        except GatewayError as err:
            response = self._refuse(err, ex)
        except Exception:  # a bug: answer 500, keep serving
            log.exception("unexpected error in the gateway", extra={"fields": {"request_id": rid}})
            response = self._refuse(GatewayError("internal error in the gateway"), ex)
        self._finish(ex)
        return response

    # ------------------------------------------------------------------ the request path

    async def _serve(self, request: web.BaseRequest, ex: Exchange) -> web.StreamResponse:
        if self.state.draining:
            raise Draining("the gateway is shutting down and takes no new requests")
        raw_target = request.raw_path
        path = check_request(request.method, raw_target, request.headers)
        runtime: Runtime = self.state.runtime  # this request keeps this policy to the end
        match = runtime.router.match(request.method, path)
        if match is None:
            raise NoRoute(f"no upstream prefix matches the path {path!r}")
        upstream, route = match.upstream, match.route or match.upstream.default
        ex.upstream, ex.route = upstream.name, route.policy.name
        policy = route.policy
        deadline = ex.start + self._total(request, policy.timeouts.total)
        body = await RequestBody.read(
            request, policy.limits.max_request_body, policy.retry.max_replay_body, policy.timeouts.idle
        )
        query = raw_target.partition("?")[2] if "?" in raw_target else None
        if route.fault is not None:
            await route.fault.apply(upstream.name)
        if route.limiter is not None:
            key = policy.rate_limit.key if policy.rate_limit is not None else None
            await route.limiter.acquire(match.params.get(key) if key else None, upstream.name)
        permit = route.breaker.acquire()  # open: BreakerOpen now, before any queueing
        upstream.inflight += 1
        self.metrics.inflight.labels(upstream.name).inc()
        try:
            async with upstream.bulkhead.slot(upstream.name):
                attempt = await self._tries(request, upstream, route, match.path, query, body, deadline, ex, permit)
                return await self._relay(request, upstream, route, attempt, ex)
        finally:
            permit.release()  # a no-op once the try recorded its outcome
            upstream.inflight -= 1
            self.metrics.inflight.labels(upstream.name).dec()

    @staticmethod
    def _total(request: web.BaseRequest, total: float) -> float:
        """``total``, lowered (never raised) by the client's ``x-gateway-timeout-ms``."""
        asked = request.headers.get("x-gateway-timeout-ms")
        if asked is None:
            return total
        if not asked.isdigit() or int(asked) == 0:
            raise BadRequest(f"x-gateway-timeout-ms must be a positive whole number of milliseconds, got {asked!r}")
        return min(total, int(asked) / 1000)

    async def _tries(
        self,
        request: web.BaseRequest,
        upstream: Upstream,
        route: Route,
        path: str,
        query: str | None,
        body: RequestBody,
        deadline: float,
        ex: Exchange,
        permit: Permit,
    ) -> Attempt:
        """The retry loop: try, ask the retry policy, wait, try again; return the last try.

        ``permit`` is the breaker's for the first try; each retry asks the breaker again and the
        loop stops, returning the last answer, when the breaker refuses.
        """
        policy = route.policy
        headers = request_headers(request.headers, ex.request_id, upstream.policy.set_headers)
        if upstream.policy.forwarded_headers:
            _add_forwarded(headers, request)
        url = upstream.url_for(path, query)
        route.retry.budget.record_request()
        labels = (upstream.name, policy.name)
        while True:
            ex.attempts += 1
            attempt = await self._try(request.method, url, headers, upstream, route, body, deadline)
            self.metrics.tries.labels(*labels, attempt.outcome.label).inc()
            if body.too_large or body.stalled:  # the client's fault, not the upstream's: no sample
                permit.release()
                attempt.discard()
                if body.too_large:
                    raise BodyTooLarge(f"the request body is over the limit of {policy.limits.max_request_body} bytes")
                raise RequestTimeout(f"the client sent no body data for {policy.timeouts.idle:g}s")
            permit.record(attempt.outcome)
            decision = route.retry.decide(
                request.method,
                attempt.outcome,
                ex.attempts,
                attempt.retry_after,
                deadline - time.monotonic(),
                body.replayable,
            )
            if decision.skipped:
                self.metrics.retries_skipped.labels(upstream.name, decision.skipped).inc()
            if not decision.retry:
                return attempt
            try:
                permit = route.breaker.acquire()
            except BreakerOpen:
                self.metrics.retries_skipped.labels(upstream.name, "breaker").inc()
                return attempt
            attempt.discard()
            self.metrics.retries.labels(*labels, attempt.outcome.code or attempt.outcome.label).inc()
            try:
                await asyncio.sleep(decision.delay)
            except BaseException:
                permit.release()
                raise

    async def _try(
        self,
        method: str,
        url: Any,
        headers: Any,
        upstream: Upstream,
        route: Route,
        body: RequestBody,
        deadline: float,
    ) -> Attempt:
        """Send one try and wait for its headers (and an error body's code, when its kind has one)."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return Attempt(Outcome(outcomes.TIMEOUT), cut_by_total=True)
        per_try = route.policy.timeouts.per_try
        kind = upstream.policy.kind
        response = None
        try:
            async with asyncio.timeout(min(per_try, remaining)):
                response = await upstream.session.request(
                    method,
                    url,
                    headers=headers,
                    data=body.payload(),
                    allow_redirects=False,
                    timeout=route.client_timeout,
                )
                peeked = b""
                if outcomes.needs_body(kind, response.status):
                    peeked = await _peek(response)
        except (aiohttp.ClientError, TimeoutError, OSError, BodyTooLarge) as exc:
            if response is not None:
                response.close()
            return Attempt(Outcome(outcomes.classify_exception(exc)), cut_by_total=per_try > remaining)
        code = outcomes.api_error_code(kind, peeked) if peeked else None
        retry_after = None
        if response.status in (429, 503) or "retry-after" in response.headers:
            retry_after = outcomes.retry_after_seconds(
                kind, response.status, response.headers.get("retry-after"), peeked
            )
        return Attempt(Outcome("response", response.status, code), response, peeked, retry_after)

    async def _relay(
        self,
        request: web.BaseRequest,
        upstream: Upstream,
        route: Route,
        attempt: Attempt,
        ex: Exchange,
    ) -> web.StreamResponse:
        """Send the last try's answer to the client as it streams in; or its failure as an error."""
        answer = attempt.response
        if answer is None:
            raise _failure(attempt, upstream.name, ex.attempts, route.policy.timeouts.per_try)
        ex.source = "upstream"
        ex.status = answer.status
        headers = response_headers(answer.headers)
        headers["x-request-id"] = ex.request_id
        headers["x-gateway-upstream"] = upstream.name
        headers["x-gateway-attempts"] = str(ex.attempts)
        response = web.StreamResponse(status=answer.status, reason=answer.reason, headers=headers)
        idle = route.policy.timeouts.idle
        try:
            await response.prepare(request)
            ex.headers_sent_at = time.monotonic()
            if attempt.peeked:
                await response.write(attempt.peeked)
            while True:
                try:
                    chunk = await answer.content.readany()
                except (aiohttp.ClientError, TimeoutError, OSError):
                    ex.error = "upstream_reset"  # the client sees a truncated body: never completed
                    _abort(request)
                    return response
                if not chunk:
                    break
                async with asyncio.timeout(idle):
                    await response.write(chunk)
            await response.write_eof()
        except (ConnectionError, aiohttp.ClientConnectionResetError, TimeoutError):
            ex.error = "client_disconnected"
            _abort(request)
        finally:
            answer.release()
        return response

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
        ex.status, ex.error, ex.source = err.status, err.code, "gateway"
        if not ex.attempts and ex.upstream != "-":
            self.metrics.rejected.labels(ex.upstream, err.code).inc()
        return error_response(err, headers)

    def _finish(self, ex: Exchange) -> None:
        now = time.monotonic()
        headers_at = ex.headers_sent_at or now
        self.metrics.requests.labels(ex.upstream, ex.route, method_label(ex.method), str(ex.status), ex.source).inc()
        self.metrics.duration.labels(ex.upstream, ex.route).observe(headers_at - ex.start)
        upstream = self.state.runtime.upstreams.get(ex.upstream)
        if upstream is not None:
            failed = ex.error if ex.error else (f"HTTP {ex.status}" if ex.status >= 500 else None)
            upstream.stats.record(headers_at - ex.start, failed)
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


async def _peek(response: aiohttp.ClientResponse) -> bytes:
    """Read up to ERROR_PEEK_BYTES of an error body (the rest still streams to the client)."""
    buf = bytearray()
    while len(buf) < outcomes.ERROR_PEEK_BYTES:
        chunk = await response.content.read(outcomes.ERROR_PEEK_BYTES - len(buf))
        if not chunk:
            break
        buf += chunk
    return bytes(buf)


def _failure(attempt: Attempt, upstream: str, attempts: int, per_try: float) -> GatewayError:
    kind = attempt.outcome.kind
    if kind == outcomes.CONNECT_FAILURE:
        return UpstreamUnreachable(f"could not connect to upstream {upstream!r}", upstream=upstream, attempts=attempts)
    if kind == outcomes.TIMEOUT:
        why = "the total timeout ran out" if attempt.cut_by_total else f"no answer within per_try ({per_try:g}s)"
        return UpstreamTimeout(f"upstream {upstream!r}: {why}", upstream=upstream, attempts=attempts)
    return UpstreamReset(
        f"upstream {upstream!r} dropped the connection before a complete answer", upstream=upstream, attempts=attempts
    )


def _abort(request: web.BaseRequest) -> None:
    """Close the client connection so a truncated body is visible as such (no final chunk)."""
    transport = request.transport
    if transport is not None:
        transport.abort()


def _add_forwarded(headers: Any, request: web.BaseRequest) -> None:
    peer = request.remote or ""
    prior = request.headers.get("x-forwarded-for")
    headers["X-Forwarded-For"] = f"{prior}, {peer}" if prior else peer
    headers["X-Forwarded-Proto"] = request.scheme
    headers["X-Forwarded-Host"] = request.host
