"""The cache stage: GET and HEAD on a route with ``cache:``, answered from the cache or fetched once per key.

Owns how the request path uses ``gateway.cache``: the client's ``Cache-Control`` (no-store
bypasses, no-cache revalidates), HIT / STALE (stale_while_revalidate, with one background refresh
per key) / MISS, collapsing (the first miss of a key leads the fetch through
``ResponseCache.flights``; the others wait for what it publishes and reuse it when their Vary
values match), storing what ``cache.verdict`` allows, and ``stale_if_error``: an entry past its
ttl answers STALE when the upstream, or its breaker, fails. It comes before the rate limits and
the breaker: a hit costs the upstream nothing, and an open breaker can still be answered STALE.
The ``x-gateway-cache`` label and ``gateway_cache_requests_total`` are counted here, once each.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import logging
import time
from typing import TYPE_CHECKING

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from .. import cache as cachemod
from .. import outcomes
from ..errors import BreakerOpen, FaultInjected, GatewayError, UpstreamReset, UpstreamTimeout, UpstreamUnreachable
from ..hygiene import response_headers
from ..logs import event
from ..outcomes import Outcome
from .body import RequestBody
from .exchange import Call, Exchange, stamp
from .relay import answer_from, read_upto, relay

if TYPE_CHECKING:
    from ..cache import FlightResult, ResponseCache, Shared
    from ..cachestore import Entry
    from ..config import CacheSpec as CachePolicy
    from ..metrics import Metrics
    from .forward import Forward
    from .tries import Attempt

__all__ = ["Cached"]


class Cached:
    """The cache stage of the proxy (see the module's docstring)."""

    def __init__(self, cache: ResponseCache, metrics: Metrics, forward: Forward) -> None:
        self.cache = cache
        self.metrics = metrics
        self.forward = forward

    async def serve(self, request: web.BaseRequest, call: Call, policy: CachePolicy) -> web.StreamResponse:
        """GET or HEAD on a route with ``cache:``: answer from the cache, or fetch (once per key)."""
        cache, ex = self.cache, call.ex
        wants = cachemod.asked(call.client_headers)
        if wants.no_store:
            ex.cache = "BYPASS"
            self._counted(call, "bypass")
            async with self.forward.to_upstream(call) as attempt:
                return await relay(request, call, attempt)
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
        pending = cache.flights.pending(primary)
        if pending is not None and not wants.no_cache:
            return await self._wait(request, call, pending, primary, policy, stale)
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
        it and get what it publishes (``_wait``); a GatewayError that ends it is published too."""
        epoch = self.cache.epoch(call.upstream.name)
        call.fallback = stale is not None
        with self.cache.flights.lead(primary, collapse=store) as flight:
            try:
                async with self.forward.to_upstream(call) as attempt:
                    if attempt.response is None:
                        timeouts = call.route.policy.timeouts
                        raise outcomes.failure(attempt.outcome, call.upstream.name, call.ex.attempts, timeouts.per_try)
                    if stale is not None and call.route.breaker.counts_as_failure(attempt.outcome):
                        attempt.discard()
                        flight.publish(cachemod.STALE)
                        return self._from_entry(call, stale, "STALE")
                    if store:
                        got = await self._take(call, attempt, primary, policy, epoch)
                        if got is not None:
                            flight.publish(got)
                            return answer_from(call, got, call.ex.attempts)
                    return await relay(request, call, attempt)  # nothing published: waiters fetch alone
            except GatewayError as err:
                if stale is not None and self._stale_worthy(call, err):
                    flight.publish(cachemod.STALE)
                    return self._from_entry(call, stale, "STALE")
                raise
            finally:
                if flight.result is not cachemod.STALE:  # a STALE answer was counted as such
                    self._counted(call, call.ex.cache.lower() if call.ex.cache else "miss")

    async def _wait(
        self,
        request: web.BaseRequest,
        call: Call,
        pending: asyncio.Future[FlightResult],
        primary: str,
        policy: CachePolicy,
        stale: Entry | None,
    ) -> web.StreamResponse:
        """Another request is fetching this key: wait for it and reuse what it got."""
        result: FlightResult
        try:
            async with asyncio.timeout(max(0.0, call.deadline - time.monotonic())):
                result = await asyncio.shield(pending)
        except TimeoutError:
            result = UpstreamTimeout(
                "the total timeout ran out waiting for the same request in flight", upstream=call.upstream.name
            )
        if isinstance(result, cachemod.Shared):
            if result.key == cachemod.full_key(primary, result.vary, call.client_headers):
                self._counted(call, "collapsed")
                return answer_from(call, result, result.attempts, source="cache")
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
        cache = self.cache
        answer = attempt.response
        assert answer is not None
        ruling = cachemod.verdict(answer.status, answer.headers, policy)
        if ruling.store:
            limit = cache.max_entry_bytes
        elif answer.status >= 400 and "text/event-stream" not in answer.headers.get("content-type", ""):
            limit = outcomes.ERROR_PEEK_BYTES
        else:
            return None
        body, complete = await read_upto(answer, attempt.peeked, limit, call.route.policy.timeouts.idle, call)
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
        if not self.cache.flights.start_refresh(primary):
            return
        ex = Exchange(
            call.ex.request_id, time.monotonic(), "GET", call.ex.path, call.ex.runtime, call.ex.upstream, call.ex.route
        )
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
        self.cache.spawn(self._refresh(background, primary, policy))

    async def _refresh(self, call: Call, primary: str, policy: CachePolicy) -> None:
        cache = self.cache
        cache.count(call.upstream.name, "refresh")
        outcome = "refreshed"
        try:
            epoch = cache.epoch(call.upstream.name)
            async with self.forward.to_upstream(call) as attempt:
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
            cache.flights.end_refresh(primary)
        event(
            "cache refresh",
            logging.DEBUG,
            request_id=call.ex.request_id,
            upstream=call.upstream.name,
            route=call.route.policy.name,
            result=outcome,
        )

    @staticmethod
    def _stale_worthy(call: Call, err: GatewayError) -> bool:
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
        response = web.Response(status=entry.status, reason=entry.reason or None, body=entry.body)
        headers = response.headers  # filled in place: the entry's headers are copied once
        headers.extend(entry.headers)
        stamp(headers, ex, 0)
        headers["Age"] = str(int(entry.age(self.cache.clock())))
        if entry.invalidated:
            headers["x-gateway-stale"] = "invalidated"
        return response

    def _counted(self, call: Call, result: str) -> None:
        self.cache.count(call.upstream.name, result)
        m = self.metrics
        m.cache_requests.labels(call.upstream.name, call.route.policy.name, result).inc()
