"""The upstream side of the chain: fault → rate limits → quota → breaker → bulkhead → tries.

Owns ``Forward``: the stages a request passes before and while it goes to its upstream, in
order, each one the policy object of its own module (``fault.FaultInjector``,
``ratelimit.acquire_all``, ``quota.QuotaKeeper``, ``breaker.CircuitBreaker`` (refusing at once, or
waiting up to ``breaker.wait`` when the request has no STALE answer to fall back on),
``limits.Bulkhead``) and then ``tries.Tries``. ``Forward.to_upstream`` yields the last try; its
bulkhead slot and breaker permit are held until the caller has relayed (or read) its answer; then
the quota is charged what the exchange cost. A stage that refuses raises its GatewayError.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from ..breaker import admit
from ..ratelimit import acquire_all, route_keys
from .tries import Attempt, Tries

if TYPE_CHECKING:
    from ..metrics import Metrics
    from .exchange import Call

__all__ = ["Forward"]


class Forward:
    """fault → rate limits → quota → breaker → bulkhead → tries, for one call at a time."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.tries = Tries(metrics)

    @contextlib.asynccontextmanager
    async def to_upstream(self, call: Call) -> AsyncIterator[Attempt]:
        """Pass the stages in order and yield the last try (see the module's docstring)."""
        m = self.metrics
        upstream, route = call.upstream, call.route
        if route.fault is not None:
            await route.fault.apply(upstream.name, call.deadline - time.monotonic())
        if route.limiter:
            keys = route_keys(route.limiter, call.params, call.client_headers, call.body.held)
            await acquire_all(keys, upstream.name)
        quota = route.quota
        ticket = None if quota is None else await quota.admit(quota.key_of(call.params), upstream.name)
        call.meter = None if ticket is None else ticket.meter
        breaker = route.breaker
        if breaker.config.wait > 0 and not call.fallback:  # before any queueing
            permit = await admit(breaker, min(breaker.config.wait, call.deadline - time.monotonic()))
        else:
            permit = breaker.acquire()
        upstream.inflight += 1
        m.child(m.inflight, upstream.name).inc()
        last: Attempt | None = None
        try:
            async with upstream.bulkhead.slot(upstream.name):
                last = await self.tries.run(call, permit)
                yield last
        finally:
            permit.release()  # a no-op once the try recorded its outcome
            upstream.inflight -= 1
            m.child(m.inflight, upstream.name).dec()
            if ticket is not None:
                status = last.response.status if last is not None and last.response is not None else None
                await ticket.settle(call.ex.attempts, status, last.peeked if last is not None else b"")
