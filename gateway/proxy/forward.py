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

import time
from types import TracebackType
from typing import TYPE_CHECKING

from ..breaker import admit
from ..ratelimit import acquire_all, route_keys
from .tries import Attempt, Tries

if TYPE_CHECKING:
    from ..breaker import Permit
    from ..metrics import Metrics
    from ..quota import Ticket
    from .exchange import Call

__all__ = ["Forward", "Passage"]


class Forward:
    """fault → rate limits → quota → breaker → bulkhead → tries, for one call at a time."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.tries = Tries(metrics)

    def to_upstream(self, call: Call) -> Passage:
        """``async with forward.to_upstream(call) as attempt``: pass the stages in order and get the
        last try (see the module's docstring)."""
        return Passage(self, call)


class Passage:
    """One call's way through the upstream stages; an async context manager, entered once.

    A class rather than ``contextlib.asynccontextmanager``: the plain route enters one per request,
    and a generator-based manager costs a generator, its wrapper and two extra coroutine frames on
    every resumption of the request's task (issue 17)."""

    __slots__ = ("_call", "_forward", "_last", "_permit", "_slot", "_ticket")

    def __init__(self, forward: Forward, call: Call) -> None:
        self._forward = forward
        self._call = call
        self._permit: Permit | None = None
        self._ticket: Ticket | None = None
        self._slot = False
        self._last: Attempt | None = None

    async def __aenter__(self) -> Attempt:
        call = self._call
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
        self._permit, self._ticket = permit, ticket
        m = self._forward.metrics
        upstream.inflight += 1
        m.inflight.labels(upstream.name).inc()
        try:
            bulkhead = upstream.bulkhead
            if not bulkhead.try_acquire():
                await bulkhead.acquire(upstream.name)
            self._slot = True
            self._last = await self._forward.tries.run(call, permit)
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self._last

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Give back the bulkhead slot and the breaker permit, and charge the quota (the order the
        stages were passed in, reversed)."""
        call, last = self._call, self._last
        upstream = call.upstream
        if self._slot:
            self._slot = False
            upstream.bulkhead.release()
        assert self._permit is not None
        self._permit.release()  # a no-op once the try recorded its outcome
        upstream.inflight -= 1
        m = self._forward.metrics
        m.inflight.labels(upstream.name).dec()
        ticket = self._ticket
        if ticket is not None:
            status = last.response.status if last is not None and last.response is not None else None
            await ticket.settle(call.ex.attempts, status, last.peeked if last is not None else b"")
