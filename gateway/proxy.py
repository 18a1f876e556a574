"""The proxy handler: the request path, read top to bottom.

    hygiene → route → body size → idempotency key (a write on a route with ``idempotency:``)
            → cache (GET/HEAD on a route with ``cache:``)
            → fault → rate limits → quota → breaker → bulkhead
            → tries (retry loop; one breaker sample per try) → relay, or store and answer
            → on a 2xx write: invalidate cached entries

Each stage either passes the exchange on or raises a ``GatewayError``, which ``handle`` turns
into the contract's JSON answer. ``handle`` also writes the access-log line and the request
metrics, whatever happened. The cache comes before the rate limit and the breaker: a hit costs
the upstream nothing, and an open breaker or a failing upstream can still be answered STALE.

The request body is read into memory only when it is small enough to replay
(``max_replay_body``); otherwise it streams, once. Answers stream back chunk by chunk as they
arrive (server-sent events included); nothing is buffered whole except an error body of at most
64 KiB read to find its API code, and an answer being cached (at most ``max_entry_bytes``).

Failures that are not the upstream's are no breaker sample: a client that leaves mid-body
(logged 499 ``client_disconnected``), a body whose chunk framing breaks (400, connection
closed), a connect refused by the gateway's own host for want of descriptors (EMFILE: 503
``overloaded``). An upstream answer that cannot be relayed safely (a 101, a control character
in a header value) counts as a reset: 502 ``upstream_reset``, none of its bytes sent on.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import errno
import logging
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web
from aiohttp.http import HttpVersion11
from aiohttp.http_exceptions import HttpProcessingError
from multidict import CIMultiDict, CIMultiDictProxy

from . import answers, coalesce, framing, outcomes, resends
from . import cache as cachemod
from .cache import FlightResult, Shared
from .cachestore import Entry
from .config import Cache as CachePolicy
from .errors import (
    BadRequest,
    BodyTooLarge,
    BreakerOpen,
    Draining,
    FaultInjected,
    GatewayError,
    NoRoute,
    Overloaded,
    RequestTimeout,
    UpstreamReset,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from .hygiene import check_request, request_headers, response_headers
from .logs import access_log, event, log, redact_query
from .metrics import method_label
from .outcomes import Outcome
from .ratelimit import acquire_all, route_keys
from .requestid import new_id

if TYPE_CHECKING:
    from .breaker import Permit
    from .idempotency import Claim
    from .quota import TokenMeter
    from .runtime import Route, Runtime, Upstream
    from .server import State

__all__ = ["Proxy"]

_REQUEST_ID = re.compile(r"[\x21-\x7e]{1,200}")
_READS = frozenset({"GET", "HEAD"})
# Control characters an upstream's header value must not carry to the client (tab is allowed).
_BAD_HEADER_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
# Errors of the gateway's own host, not of the upstream: out of descriptors or buffers.
_LOCAL_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class ClientGone(Exception):
    """The client closed its connection while its request body was being read."""


class MalformedBody(BadRequest):
    """The request body's framing broke after its head was accepted (a bad chunk size)."""


class _MalformedAnswer(aiohttp.ClientError):
    """The upstream's answer cannot be relayed: a 1xx status or a control character in a header."""


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
    answer_format: str | None = None  # the upstream's error format for the gateway's own answers
    replayed: bool = False  # an answer kept under an Idempotency-Key


@dataclass(slots=True)
class Attempt:
    """One try's result: an answer (with the error body read so far) or a failure."""

    outcome: Outcome
    response: aiohttp.ClientResponse | None = None
    peeked: bytes = b""
    retry_after: float | None = None
    cut_by_total: bool = False
    resent: int = 0  # times aiohttp resent it by itself on a pooled connection found closed
    sent: bool = True  # False: no try reached the upstream (deadline passed, or a local failure)
    local: bool = False  # the gateway's own host failed the connect (out of file descriptors)

    def discard(self) -> None:
        """Release the answer's connection before the next try."""
        if self.response is not None:
            self.response.release()


class RequestBody:
    """The client's body: bytes when small enough to replay, else a one-shot stream."""

    def __init__(
        self, request: web.BaseRequest | None, data: bytes | None, prefix: bytes, limit: int, idle: float
    ) -> None:
        self._request = request
        self.data = data
        self._prefix = prefix
        self._limit = limit
        self._idle = idle
        self.started = False
        self.too_large = False
        self.stalled = False
        self.broken: ClientGone | MalformedBody | None = None  # the client's side failed mid-stream

    @classmethod
    async def read(cls, request: web.BaseRequest, limit: int, replay_limit: int, idle: float) -> RequestBody:
        """Read what can be replayed; raise BodyTooLarge when Content-Length is over ``limit``."""
        length = request.content_length
        if length is not None and length > limit:
            raise BodyTooLarge(f"the request body is {length} bytes, over the limit of {limit}")
        if not request.body_exists:
            return cls(request, None, b"", limit, idle)
        if request.version == HttpVersion11 and request.headers.get("expect", "").lower() == "100-continue":
            # The client waits for this before sending the body (curl: 1 s, then sends anyway).
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            request.writer.output_size = 0  # the answer proper has not started
        if length is not None and length > replay_limit:
            return cls(request, None, b"", limit, idle)  # streamed, Content-Length kept
        want = (length if length is not None else replay_limit + 1) or 0
        buf = bytearray()
        while len(buf) < want:
            chunk = await cls._next(request, idle, want - len(buf))
            if not chunk:
                break
            buf += chunk
            if length is None and len(buf) + framing.overhead(request) > limit:  # chunk framing counts
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
        except (HttpProcessingError, aiohttp.web.RequestPayloadError) as exc:
            raise MalformedBody(framing.message(exc)) from None
        except ConnectionError:
            raise ClientGone("the client closed the connection before the end of its body") from None

    @property
    def held(self) -> bytes | None:
        """The whole body when it is in memory (``b""`` for none); None when it streams."""
        if self.data is not None:
            return self.data
        return None if self._request is not None and self._request.body_exists else b""

    @property
    def replayable(self) -> bool:
        """Whether another try can send the same body: bytes, or a stream not yet started."""
        return self.data is not None or not self.started

    @classmethod
    def empty(cls) -> RequestBody:
        """No body (a background refresh's GET)."""
        return cls(None, None, b"", 0, 0.0)

    def payload(self) -> bytes | AsyncIterator[bytes] | None:
        """What the client library sends: the bytes, or the stream (once)."""
        if self.data is not None or self._request is None or not self._request.body_exists:
            return self.data
        return self._stream()

    async def _stream(self) -> AsyncIterator[bytes]:
        assert self._request is not None
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
            except (HttpProcessingError, aiohttp.web.RequestPayloadError) as exc:
                self.broken = MalformedBody(framing.message(exc))
                raise self.broken from None
            except ConnectionError:
                self.broken = ClientGone("the client closed the connection before the end of its body")
                raise self.broken from None
            if not chunk:
                return
            sent += len(chunk)
            if sent + framing.overhead(self._request) > self._limit:  # chunk framing counts
                self.too_large = True  # the upstream gets a truncated body, never a complete one
                raise BodyTooLarge(f"the request body is over the limit of {self._limit} bytes")
            yield chunk


@dataclass(slots=True)
class Call:
    """One request bound for an upstream: what the tries need, decided once in ``_serve``."""

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

    @property
    def headers(self) -> CIMultiDict[str]:
        """The headers as the upstream receives them; made on first use (a cache hit never needs them)."""
        if self.outgoing is None:
            assert self.request is not None
            self.outgoing = request_headers(self.client_headers, self.ex.request_id, self.upstream.policy.set_headers)
            if self.upstream.policy.forwarded_headers:
                _add_forwarded(self.outgoing, self.request)
        return self.outgoing


class Proxy:
    """The request path. ``handle`` is the aiohttp handler of the proxy port."""

    def __init__(self, state: State) -> None:
        self.state = state
        self.metrics = state.metrics

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        """Serve one request; never raises (every failure becomes an answer)."""
        incoming_id = request.headers.get("x-request-id")
        rid = incoming_id if incoming_id and _REQUEST_ID.fullmatch(incoming_id) else new_id()
        path, _, query = request.raw_path.partition("?")
        shown = f"{path}?{redact_query(query, self.state.runtime.config.log.secret_params)}" if query else path
        ex = Exchange(rid, time.monotonic(), request.method, shown)
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
        ex.answer_format = answers.answer_format(upstream.policy.kind, match.path)
        policy = route.policy
        deadline = ex.start + self._total(request, policy.timeouts.total)
        body = await RequestBody.read(
            request, policy.limits.max_request_body, policy.retry.max_replay_body, policy.timeouts.idle
        )
        query = raw_target.partition("?")[2] if "?" in raw_target else None
        call = Call(
            request.method,
            upstream,
            route,
            match.path,
            query,
            match.params,
            request.headers,
            body,
            deadline,
            ex,
            request,
        )
        if route.idempotency is not None and request.method not in _READS:
            labels = (self.metrics.idempotency, upstream.name, policy.name)
            claim = await route.idempotency.claim(
                request.method,
                raw_target,
                request.headers,
                body.held,
                deadline - time.monotonic(),
                lambda result: self.metrics.child(*labels, result).inc(),
            )
            if claim is not None:
                return await self._kept(request, call, claim)
        if policy.cache is not None:
            if request.method in _READS:
                return await self._cached(request, call, policy.cache)
            ex.cache = "BYPASS"
        async with self._upstream(call) as attempt:
            answer = attempt.response
            if upstream.caches and request.method not in _READS and answer is not None and 200 <= answer.status < 300:
                await self._invalidate(call)
            return await self._relay(request, call, attempt)

    @staticmethod
    def _total(request: web.BaseRequest, total: float) -> float:
        """``total``, lowered (never raised) by the client's ``x-gateway-timeout-ms``."""
        asked = request.headers.get("x-gateway-timeout-ms")
        if asked is None:
            return total
        if not asked.isdigit() or int(asked) == 0:
            raise BadRequest(f"x-gateway-timeout-ms must be a positive whole number of milliseconds, got {asked!r}")
        return min(total, int(asked) / 1000)

    @contextlib.asynccontextmanager
    async def _upstream(self, call: Call) -> AsyncIterator[Attempt]:
        """fault → rate limits → quota → breaker → bulkhead → tries. Yields the last try; its
        bulkhead slot and breaker permit are held until the caller has relayed (or read) its answer;
        then the quota is charged what the exchange cost."""
        upstream, route = call.upstream, call.route
        if route.fault is not None:
            await route.fault.apply(upstream.name, call.deadline - time.monotonic())
        if route.limiter:
            keys = route_keys(route.limiter, call.params, call.client_headers, call.body.held)
            await acquire_all(keys, upstream.name)
        quota = route.quota
        ticket = None if quota is None else await quota.admit(quota.key_of(call.params), upstream.name)
        call.meter = None if ticket is None else ticket.meter
        permit = route.breaker.acquire()  # open: BreakerOpen now, before any queueing
        upstream.inflight += 1
        self.metrics.child(self.metrics.inflight, upstream.name).inc()
        last: Attempt | None = None
        try:
            async with upstream.bulkhead.slot(upstream.name):
                last = await self._tries(call, permit)
                yield last
        finally:
            permit.release()  # a no-op once the try recorded its outcome
            upstream.inflight -= 1
            self.metrics.child(self.metrics.inflight, upstream.name).dec()
            if ticket is not None:
                status = last.response.status if last is not None and last.response is not None else None
                await ticket.settle(call.ex.attempts, status, last.peeked if last is not None else b"")

    async def _tries(self, call: Call, permit: Permit) -> Attempt:
        """The retry loop: try, ask the retry policy, wait, try again; return the last try.

        ``permit`` is the breaker's for the first try; each retry asks the breaker again and the
        loop stops, returning the last answer, when the breaker refuses.
        """
        upstream, route, body, ex = call.upstream, call.route, call.body, call.ex
        policy = route.policy
        url = upstream.url_for(call.path, call.query)
        route.retry.budget.record_request()
        labels = (upstream.name, policy.name)
        while True:
            ex.attempts += 1
            attempt = await self._try(call.method, url, call.headers, upstream, route, body, call.deadline)
            if attempt.resent:  # aiohttp's own resend on a stale pooled connection: a real try, counted
                ex.attempts += attempt.resent
                self.metrics.child(self.metrics.tries, *labels, outcomes.RESET).inc(attempt.resent)
                self.metrics.child(self.metrics.retries, *labels, "stale-connection").inc(attempt.resent)
            self.metrics.child(self.metrics.tries, *labels, attempt.outcome.label).inc()
            if body.too_large or body.stalled or body.broken:  # the client's fault, not the upstream's: no sample
                permit.release()
                attempt.discard()
                if body.broken is not None:
                    raise body.broken
                if body.too_large:
                    raise BodyTooLarge(f"the request body is over the limit of {policy.limits.max_request_body} bytes")
                raise RequestTimeout(f"the client sent no body data for {policy.timeouts.idle:g}s")
            if attempt.sent:
                permit.record(attempt.outcome)
            else:
                permit.release()
            decision = route.retry.decide(
                call.method,
                attempt.outcome,
                ex.attempts,
                attempt.retry_after,
                call.deadline - time.monotonic(),
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
        if remaining <= 0:  # nothing sent: not a sample of the upstream's health
            return Attempt(Outcome(outcomes.TIMEOUT), cut_by_total=True, sent=False)
        per_try = route.policy.timeouts.per_try
        kind = upstream.policy.kind
        response = None
        sends = resends.counting()
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
                _screen_answer(response, upstream.name)
                peeked = b""
                if outcomes.needs_body(kind, response.status):
                    peeked = await _peek(response)
        except (aiohttp.ClientError, TimeoutError, OSError, BodyTooLarge) as exc:
            if response is not None:
                response.close()
            if _local_failure(exc):  # not the upstream's doing: no breaker sample (see _failure)
                event("no file descriptor left to connect upstream", logging.WARNING, upstream=upstream.name)
                return Attempt(Outcome(outcomes.CONNECT_FAILURE), sent=False, local=True, resent=sends.resent)
            outcome = Outcome(outcomes.classify_exception(exc))
            return Attempt(outcome, cut_by_total=per_try > remaining, resent=sends.resent)
        code = outcomes.api_error_code(kind, peeked) if peeked else None
        retry_after = None
        if response.status in (429, 503) or "retry-after" in response.headers:
            retry_after = outcomes.retry_after_seconds(
                kind, response.status, response.headers.get("retry-after"), peeked
            )
        return Attempt(Outcome("response", response.status, code), response, peeked, retry_after, resent=sends.resent)

    async def _relay(self, request: web.BaseRequest, call: Call, attempt: Attempt) -> web.StreamResponse:
        """Send the last try's answer to the client as it streams in; or its failure as an error."""
        answer = attempt.response
        ex = call.ex
        if answer is None:
            raise _failure(attempt, call.upstream.name, ex.attempts, call.route.policy.timeouts.per_try)
        ex.source = "upstream"
        ex.status = answer.status
        headers = self._stamp(response_headers(answer.headers), ex, ex.attempts)
        response = coalesce.Answer(status=answer.status, reason=answer.reason, headers=headers)
        idle = call.route.policy.timeouts.idle
        try:
            await response.prepare(request)
            coalesce.unless_ready(request, answer, attempt.peeked)
            ex.headers_sent_at = time.monotonic()
            if attempt.peeked:
                await response.write(attempt.peeked)
            if call.meter is not None:
                call.meter.feed(attempt.peeked)
            while True:
                try:
                    chunk = await answer.content.readany()
                except (aiohttp.ClientError, TimeoutError, OSError) as exc:  # the client sees a truncated body
                    ex.error = "upstream_timeout" if isinstance(exc, TimeoutError) else "upstream_reset"
                    _abort(request)
                    return response
                if not chunk:
                    break
                if call.meter is not None:
                    call.meter.feed(chunk)
                await coalesce.write(request, response, chunk, idle)
            await response.write_eof()
        except (ConnectionError, aiohttp.ClientConnectionResetError, TimeoutError):
            ex.error = "client_disconnected"
            _abort(request)
        finally:
            answer.release()
        return response

    @staticmethod
    def _stamp(headers: CIMultiDict[str], ex: Exchange, attempts: int) -> CIMultiDict[str]:
        """Add the gateway's own answer headers."""
        headers["x-request-id"] = ex.request_id
        headers["x-gateway-upstream"] = ex.upstream
        headers["x-gateway-attempts"] = str(attempts)
        if ex.cache is not None:
            headers["x-gateway-cache"] = ex.cache
        return headers

    # ------------------------------------------------------------------ the idempotency stage

    async def _kept(self, request: web.BaseRequest, call: Call, claim: Claim) -> web.StreamResponse:
        """A write with an Idempotency-Key: replay what the key kept, or forward it and keep what
        its outcome proves (``gateway.idempotency``). The answer is read (up to the store's limit)
        before anything goes to the client, so a client that left still has it kept."""
        if claim.replay is not None:
            call.ex.replayed = True
            if isinstance(claim.replay, GatewayError):
                raise claim.replay
            return self._from_shared(call, claim.replay, 0, source="cache")
        try:
            async with self._upstream(call) as attempt:
                answer, timeouts = attempt.response, call.route.policy.timeouts
                if answer is None:
                    failure = _failure(attempt, call.upstream.name, call.ex.attempts, timeouts.per_try)
                    await claim.failed(failure, sent=attempt.sent)
                    raise failure
                limit, idle = claim.keeper.limit, timeouts.idle
                body, whole = await _read_upto(answer, attempt.peeked, limit, idle, call)
                if call.meter is not None:
                    call.meter.feed(body)
                headers = response_headers(answer.headers)
                await claim.answered(attempt.outcome, answer.status, answer.reason or "", headers, body, whole)
                if call.upstream.caches and 200 <= answer.status < 300:
                    await self._invalidate(call)
                if not whole:
                    attempt.peeked = body
                    return await self._relay(request, call, attempt)
                answer.release()
                kept = cachemod.Shared(answer.status, answer.reason or "", headers, body, (), "", 0)
                return self._from_shared(call, kept, call.ex.attempts)
        except GatewayError as err:
            await claim.refused(err)  # a refusal of the gateway releases the key; a cut answer keeps it
            raise
        finally:
            await claim.abandon(call.ex.attempts)  # a bug or a cancellation: unknown once a try was made

    # ------------------------------------------------------------------ the cache stage

    async def _cached(self, request: web.BaseRequest, call: Call, policy: CachePolicy) -> web.StreamResponse:
        """GET or HEAD on a route with ``cache:``: answer from the cache, or fetch (once per key)."""
        cache, ex = self.state.cache, call.ex
        wants = cachemod.asked(call.client_headers)
        if wants.no_store:
            ex.cache = "BYPASS"
            self._counted(call, "bypass")
            async with self._upstream(call) as attempt:
                return await self._relay(request, call, attempt)
        up = call.upstream.name
        primary = cachemod.primary_key(up, call.path, call.query, policy.vary, call.client_headers)
        entry = await cache.lookup(primary, call.client_headers)
        stale: Entry | None = None
        if entry is not None:
            age = entry.age(cache.clock())
            if not wants.no_cache and not entry.invalidated:  # a soft-purged entry is only ever STALE
                if age < entry.ttl:
                    return self._from_entry(call, entry, "HIT")
                if age < entry.ttl + policy.stale_while_revalidate:
                    self._refresh_later(call, primary, policy)
                    return self._from_entry(call, entry, "STALE")
            if age < entry.ttl + policy.stale_if_error:
                stale = entry
        ex.cache = "REVALIDATED" if wants.no_cache else "MISS"
        if call.method == "HEAD":  # answered from a GET entry when there is one; a miss is not stored
            return await self._fetch(request, call, primary, policy, stale, store=False)
        flight = cache.flights.get(primary)
        if flight is not None and not wants.no_cache:
            return await self._wait(request, call, flight, primary, policy, stale)
        return await self._fetch(request, call, primary, policy, stale, store=True)

    async def _fetch(
        self,
        request: web.BaseRequest,
        call: Call,
        primary: str,
        policy: CachePolicy,
        stale: Entry | None,
        store: bool,
    ) -> web.StreamResponse:
        """Go upstream for a cache miss; store what may be stored; serve ``stale`` on failure.

        With ``store``, this request leads: others asking for the same key meanwhile wait for
        it and get what it got (``_wait``).
        """
        cache = self.state.cache
        flight: asyncio.Future[FlightResult] | None = None
        if store and primary not in cache.flights and primary not in cache.passes:
            flight = cache.flights[primary] = asyncio.get_running_loop().create_future()
        shared: FlightResult = None
        epoch = cache.epoch(call.upstream.name)
        try:
            async with self._upstream(call) as attempt:
                if attempt.response is None:
                    raise _failure(attempt, call.upstream.name, call.ex.attempts, call.route.policy.timeouts.per_try)
                if stale is not None and call.route.breaker.counts_as_failure(attempt.outcome):
                    attempt.discard()
                    shared = cachemod.STALE
                    return self._from_entry(call, stale, "STALE")
                if store:
                    got = await self._take(call, attempt, primary, policy, epoch)
                    if got is not None:
                        shared = got
                        return self._from_shared(call, got, call.ex.attempts)
                return await self._relay(request, call, attempt)
        except GatewayError as err:
            if stale is not None and self._stale_worthy(call, err):
                shared = cachemod.STALE
                return self._from_entry(call, stale, "STALE")
            shared = err
            raise
        finally:
            if shared is not cachemod.STALE:  # a STALE answer was counted as such
                self._counted(call, call.ex.cache.lower() if call.ex.cache else "miss")
            if flight is not None:
                del cache.flights[primary]
                flight.set_result(shared)
                if shared is None:  # nothing the next misses could have waited for
                    cache.passes[primary] = True

    async def _wait(
        self,
        request: web.BaseRequest,
        call: Call,
        flight: asyncio.Future[FlightResult],
        primary: str,
        policy: CachePolicy,
        stale: Entry | None,
    ) -> web.StreamResponse:
        """Another request is fetching this key: wait for it and reuse what it got."""
        try:
            async with asyncio.timeout(max(0.0, call.deadline - time.monotonic())):
                result = await asyncio.shield(flight)
        except TimeoutError:
            result = UpstreamTimeout(
                "the total timeout ran out waiting for the same request in flight", upstream=call.upstream.name
            )
        if isinstance(result, cachemod.Shared):
            if result.key == cachemod.full_key(primary, result.vary, call.client_headers):
                self._counted(call, "collapsed")
                return self._from_shared(call, result, result.attempts, source="cache")
        elif isinstance(result, GatewayError):
            if stale is not None and self._stale_worthy(call, result):
                return self._from_entry(call, stale, "STALE")
            raise copy.copy(result)
        elif result is cachemod.STALE and stale is not None:
            return self._from_entry(call, stale, "STALE")
        # Nothing this request may reuse (a streamed answer, another Vary value): fetch alone.
        return await self._fetch(request, call, primary, policy, stale, store=False)

    async def _take(self, call: Call, attempt: Attempt, primary: str, policy: CachePolicy, epoch: int) -> Shared | None:
        """Read the answer whole when it may be stored (up to ``max_entry_bytes``) or is an error
        (up to 64 KiB), store it when the rules allow, and return it for this request and the
        waiters. None: too large or not shareable — the caller streams it (``attempt.peeked``
        holds what was read)."""
        cache = self.state.cache
        answer = attempt.response
        assert answer is not None
        ruling = cachemod.verdict(answer.status, answer.headers, policy)
        if ruling.store:
            limit = cache.max_entry_bytes
        elif answer.status >= 400 and "text/event-stream" not in answer.headers.get("content-type", ""):
            limit = outcomes.ERROR_PEEK_BYTES
        else:
            return None
        body, complete = await _read_upto(answer, attempt.peeked, limit, call.route.policy.timeouts.idle, call)
        if not complete:
            attempt.peeked = body
            return None
        answer.release()
        headers = response_headers(answer.headers)
        key = cachemod.full_key(primary, ruling.vary, call.client_headers)
        if ruling.store:
            entry = cachemod.make_entry(
                call.upstream.name,
                call.path,
                answer.status,
                answer.reason or "",
                headers,
                body,
                cache.clock(),
                ruling,
                policy,
            )
            await cache.put(primary, key, entry, epoch)
        return cachemod.Shared(answer.status, answer.reason or "", headers, body, ruling.vary, key, call.ex.attempts)

    def _refresh_later(self, call: Call, primary: str, policy: CachePolicy) -> None:
        """stale_while_revalidate: refresh the entry in the background, once per key at a time."""
        cache = self.state.cache
        if primary in cache.refreshing or primary in cache.flights:
            return
        cache.refreshing.add(primary)
        ex = Exchange(call.ex.request_id, time.monotonic(), "GET", call.ex.path, call.ex.upstream, call.ex.route)
        background = dataclasses.replace(
            call,
            method="GET",
            client_headers=CIMultiDictProxy(CIMultiDict(call.client_headers)),
            outgoing=CIMultiDict(call.headers),
            request=None,
            body=RequestBody.empty(),
            deadline=ex.start + call.route.policy.timeouts.total,
            ex=ex,
        )
        cache.spawn(self._refresh(background, primary, policy))

    async def _refresh(self, call: Call, primary: str, policy: CachePolicy) -> None:
        cache = self.state.cache
        cache.count(call.upstream.name, "refresh")
        outcome = "refreshed"
        try:
            epoch = cache.epoch(call.upstream.name)
            async with self._upstream(call) as attempt:
                if attempt.response is None:
                    outcome = attempt.outcome.label
                else:
                    got = await self._take(call, attempt, primary, policy, epoch)
                    if got is None:
                        attempt.discard()
                    outcome = str(attempt.response.status)
        except GatewayError as err:
            outcome = err.code
        finally:
            cache.refreshing.discard(primary)
        event(
            "cache refresh",
            logging.DEBUG,
            request_id=call.ex.request_id,
            upstream=call.upstream.name,
            route=call.route.policy.name,
            result=outcome,
        )

    async def _invalidate(self, call: Call) -> None:
        """A 2xx write: soft-purge (or delete, ``invalidation: hard``) its upstream's entries at its
        own path and at ``invalidates:``."""
        patterns = [p.fill(call.params) for p in call.route.policy.invalidates]
        own = call.path

        def doomed(_upstream: str, path: str) -> bool:
            return path == own or any(p.match(path) is not None for p in patterns)

        await self.state.cache.invalidate(call.upstream.name, doomed, hard=call.route.policy.invalidation == "hard")

    def _stale_worthy(self, call: Call, err: GatewayError) -> bool:
        """Failures that ``stale_if_error`` covers: the upstream's, or the breaker's."""
        if isinstance(err, (BreakerOpen, UpstreamUnreachable, UpstreamTimeout, UpstreamReset)):
            return True
        if isinstance(err, FaultInjected):  # a rehearsed outage: as if the upstream answered so
            return call.route.breaker.counts_as_failure(Outcome("response", err.status))
        return False

    def _from_entry(self, call: Call, entry: Entry, label: str) -> web.Response:
        ex = call.ex
        ex.cache, ex.source, ex.status = label, "cache", entry.status
        self._counted(call, label.lower())
        headers = self._stamp(CIMultiDict(entry.headers), ex, 0)
        headers["Age"] = str(int(entry.age(self.state.cache.clock())))
        if entry.invalidated:
            headers["x-gateway-stale"] = "invalidated"
        return web.Response(status=entry.status, reason=entry.reason or None, headers=headers, body=entry.body)

    def _from_shared(self, call: Call, shared: Shared, attempts: int, source: str = "upstream") -> web.Response:
        ex = call.ex
        ex.source, ex.status = source, shared.status
        headers = self._stamp(CIMultiDict(shared.headers), ex, attempts)
        headers.popall("content-length", None)
        return web.Response(status=shared.status, reason=shared.reason or None, headers=headers, body=shared.body)

    def _counted(self, call: Call, result: str) -> None:
        self.state.cache.count(call.upstream.name, result)
        self.metrics.child(self.metrics.cache_requests, call.upstream.name, call.route.policy.name, result).inc()

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
            found = self.state.runtime.router.match(ex.method, ex.path.partition("?")[0])
            fmt = answers.GENERIC if found is None else answers.answer_format(found.upstream.policy.kind, found.path)
        return answers.error_response(err, fmt, headers, ex.request_id)

    def _finish(self, ex: Exchange) -> None:
        now = time.monotonic()
        headers_at = ex.headers_sent_at or now
        m = self.metrics
        m.child(m.requests, ex.upstream, ex.route, method_label(ex.method), str(ex.status), ex.source).inc()
        m.child(m.duration, ex.upstream, ex.route).observe(headers_at - ex.start)
        upstream = self.state.runtime.upstreams.get(ex.upstream)
        if upstream is not None:
            failed = ex.error if ex.error else (f"HTTP {ex.status}" if ex.status >= 500 else None)
            upstream.stats.record(headers_at - ex.start, failed)
        self.state.history.record(ex, headers_at - ex.start)
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


async def _read_upto(
    answer: aiohttp.ClientResponse, prefix: bytes, limit: int, idle: float, call: Call
) -> tuple[bytes, bool]:
    """Read the answer's body after ``prefix`` until its end or past ``limit`` bytes.

    Returns (bytes read, whether that is the whole body). Nothing has gone to the client yet, so
    a failure here is the upstream's: UpstreamTimeout (idle) or UpstreamReset, answer closed."""
    buf = bytearray(prefix)
    name = call.upstream.name
    try:
        while len(buf) <= limit:
            async with asyncio.timeout(idle):
                chunk = await answer.content.read(limit + 1 - len(buf))
            if not chunk:
                return bytes(buf), True
            buf += chunk
    except TimeoutError:
        answer.close()
        raise UpstreamTimeout(
            f"upstream {name!r} sent no body data for {idle:g}s", upstream=name, attempts=call.ex.attempts
        ) from None
    except (aiohttp.ClientError, OSError):
        answer.close()
        raise UpstreamReset(
            f"upstream {name!r} dropped the connection before a complete answer",
            upstream=name,
            attempts=call.ex.attempts,
        ) from None
    return bytes(buf), False


async def _peek(response: aiohttp.ClientResponse) -> bytes:
    """Read up to ERROR_PEEK_BYTES of an error body (the rest still streams to the client)."""
    buf = bytearray()
    while len(buf) < outcomes.ERROR_PEEK_BYTES:
        chunk = await response.content.read(outcomes.ERROR_PEEK_BYTES - len(buf))
        if not chunk:
            break
        buf += chunk
    return bytes(buf)


def _screen_answer(response: aiohttp.ClientResponse, upstream: str) -> None:
    """Raise _MalformedAnswer for an answer that must not reach the client.

    A 1xx here is a 101 (aiohttp reads the other 1xx itself): the gateway never forwards
    ``Upgrade``, so a switch of protocols is an upstream's error, and relaying it would leave
    the client on a raw byte stream. A control character in a header value would be refused by
    the writer to the client mid-answer; checked here, it is a clean 502."""
    why = None
    if response.status < 200:
        why = f"status {response.status}"
    elif any(_BAD_HEADER_VALUE.search(value) for value in response.headers.values()):
        why = "a control character in a header value"
    if why is not None:
        event("upstream answer refused", logging.WARNING, upstream=upstream, reason=why)
        raise _MalformedAnswer(why)


def _local_failure(exc: BaseException) -> bool:
    """Whether a connect failed for want of the gateway's own resources (EMFILE and kin)."""
    error = exc.os_error if isinstance(exc, aiohttp.ClientConnectorError) else exc
    return isinstance(error, OSError) and error.errno in _LOCAL_ERRNOS


def _failure(attempt: Attempt, upstream: str, attempts: int, per_try: float) -> GatewayError:
    kind = attempt.outcome.kind
    if attempt.local:
        return Overloaded(
            "the gateway has no file descriptor left to connect upstream",
            upstream=upstream,
            attempts=attempts,
            retry_after=1,
        )
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
