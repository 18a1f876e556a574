"""Runtime state bound to one loaded configuration.

Owns what a request needs besides its own data: the router, and per upstream its connection
pool (``gateway.pool``: the ``ClientSession``, TLS, egress proxy, preconnect and keep-warm), its
bulkhead, its circuit breakers (one for the upstream, one per route that sets ``breaker:``), its
rate limiters, retry budgets and last-minute statistics. A reload builds a new ``Runtime`` from
the previous one: upstreams whose ``url`` did not change keep their breakers (with the new
settings), budgets, limiters and statistics, and their pool with its open connections unless
``tls``, ``proxy`` or ``pool.idle_timeout`` changed; in-flight requests keep the runtime they
started with. ``start_pools`` starts preconnect and keep-warm for the pools that are new.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from yarl import URL

from .breaker import CircuitBreaker
from .config import Config, RoutePolicy, UpstreamPolicy, resolve
from .fault import FaultInjector
from .limits import Bulkhead
from .pool import Pool
from .ratelimit import GlobalRateLimiter, RateLimiter
from .redislink import RedisLink
from .retry import RetryBudget, RetryPolicy
from .routing import Router
from .stats import MinuteWindow

__all__ = ["Route", "Runtime", "Upstream"]


@dataclass(frozen=True, slots=True)
class Route:
    """A route's finished policy and the policy objects built from it."""

    policy: RoutePolicy
    retry: RetryPolicy
    breaker: CircuitBreaker
    limiter: RateLimiter | GlobalRateLimiter | None
    fault: FaultInjector | None
    client_timeout: aiohttp.ClientTimeout


BreakerHook = Callable[[CircuitBreaker, str, str], None]


class Upstream:
    """One upstream: its policy, connection pool and the state that outlives a reload."""

    def __init__(
        self,
        policy: UpstreamPolicy,
        previous: Upstream | None = None,
        hook: BreakerHook | None = None,
        link: RedisLink | None = None,
    ) -> None:
        self.policy = policy
        self.link = link
        self.name = policy.name
        self.base = str(policy.url).rstrip("/")
        self.inflight = 0
        self._hook = hook
        self.pool: Pool
        self.session: aiohttp.ClientSession
        self.stats: MinuteWindow
        self._budgets: dict[tuple[str, float, float, float], RetryBudget]
        self._limiters: dict[tuple[str, Any], RateLimiter | GlobalRateLimiter]
        self.bulkhead: Bulkhead
        self.breakers: dict[str, CircuitBreaker] = {}
        old_breakers: dict[str, CircuitBreaker] = {}
        limits = policy.limits
        connect = policy.default.timeouts.connect
        if previous is not None and previous.pool.fits(policy.url, policy.pool, policy.tls, policy.proxy):
            self.pool = previous.pool
            self.pool.update(policy.pool, connect)
        else:
            self.pool = Pool(policy.name, policy.url, policy.pool, policy.tls, policy.proxy, connect, [_TRACE])
        self.session = self.pool.session
        if previous is not None:
            self.stats = previous.stats
            self._budgets = previous._budgets
            self._limiters = previous._limiters
            old_breakers = previous.breakers
            old = previous.policy.limits
            same = (old.max_concurrent, old.max_queue, old.queue_timeout)
            if same == (limits.max_concurrent, limits.max_queue, limits.queue_timeout):
                self.bulkhead = previous.bulkhead
            else:
                self.bulkhead = Bulkhead(limits.max_concurrent, limits.max_queue, limits.queue_timeout)
        else:
            self.stats = MinuteWindow()
            self._budgets = {}
            self._limiters = {}
            self.bulkhead = Bulkhead(limits.max_concurrent, limits.max_queue, limits.queue_timeout)
        self.routes = tuple(self._route(p, old_breakers) for p in policy.routes)
        self.default = self._route(policy.default, old_breakers)
        # Whether a write here may have something to invalidate (saves a store call per WhatsApp send).
        self.caches = any(r.policy.cache is not None for r in self.routes)

    def _breaker(self, policy: RoutePolicy, old: dict[str, CircuitBreaker]) -> CircuitBreaker:
        name = policy.breaker_name
        breaker = self.breakers.get(name)
        if breaker is not None:
            return breaker
        breaker = old.get(name)
        if breaker is not None:
            breaker.update_config(policy.breaker)
        else:
            route = policy.name if name != self.name else "-"
            breaker = CircuitBreaker(name, self.name, route, policy.breaker, on_transition=self._hook)
        self.breakers[name] = breaker
        return breaker

    def _route(self, policy: RoutePolicy, old_breakers: dict[str, CircuitBreaker]) -> Route:
        b = policy.retry.budget
        key = (policy.name, b.percent, b.min_per_second, b.window)
        budget = self._budgets.get(key)
        if budget is None:
            budget = self._budgets[key] = RetryBudget(b.percent, b.min_per_second, b.window)
        limiter = None
        if policy.rate_limit is not None:
            limiter_key = (policy.name, policy.rate_limit)
            limiter = self._limiters.get(limiter_key)
            if limiter is None:
                limiter = RateLimiter(policy.rate_limit)
                if policy.rate_limit.scope == "global" and self.link is not None:
                    name = f"{self.name}.{policy.name}"
                    limiter = GlobalRateLimiter(policy.rate_limit, self.link, name, local=limiter)
                self._limiters[limiter_key] = limiter
        t = policy.timeouts
        return Route(
            policy=policy,
            retry=RetryPolicy(policy.retry, self.policy.kind, budget),
            breaker=self._breaker(policy, old_breakers),
            limiter=limiter,
            fault=FaultInjector(policy.fault) if policy.fault is not None else None,
            client_timeout=aiohttp.ClientTimeout(total=None, connect=None, sock_connect=t.connect, sock_read=t.idle),
        )

    def url_for(self, path: str, query: str | None) -> URL:
        """The upstream URL for a raw path and raw query, byte for byte (no re-encoding)."""
        target = self.base + path if query is None else f"{self.base}{path}?{query}"
        return URL(target, encoded=True)


async def _headers_sent(
    session: aiohttp.ClientSession, ctx: Any, params: aiohttp.TraceRequestHeadersSentParams
) -> None:
    sends = ctx.trace_request_ctx
    if sends is not None:
        sends.count += 1


# aiohttp resends an idempotent request once by itself when a pooled keep-alive connection turns
# out to be closed. That is right (the upstream closed an idle connection) but it must be seen:
# the proxy counts the times headers went out and reports the extra ones as tries.
_TRACE = aiohttp.TraceConfig()
_TRACE.on_request_headers_sent.append(_headers_sent)
_TRACE.freeze()


class Runtime:
    """Everything derived from one configuration that the request path reads."""

    def __init__(
        self,
        config: Config,
        previous: Runtime | None = None,
        hook: BreakerHook | None = None,
        link: RedisLink | None = None,
    ) -> None:
        self.config = config
        old = previous.upstreams if previous is not None else {}
        self.upstreams: dict[str, Upstream] = {}
        for policy in resolve(config):
            before = old.get(policy.name)
            keep = before if before is not None and before.policy.url == policy.url else None
            self.upstreams[policy.name] = Upstream(policy, keep, hook, link)
        self.router: Router[Upstream, Route] = Router(
            (
                up.policy.prefix,
                up,
                [(r.policy.methods, r.policy.pattern, r) for r in up.routes],
            )
            for up in self.upstreams.values()
        )
        # Sessions of the previous runtime that this one no longer uses.
        kept = {id(up.session) for up in self.upstreams.values()}
        self.retired = [up for up in old.values() if id(up.session) not in kept]

    def breakers(self) -> dict[str, CircuitBreaker]:
        """Every breaker by name (``upstream`` or ``upstream.route``)."""
        return {name: b for up in self.upstreams.values() for name, b in up.breakers.items()}

    async def start_pools(self, wait: float = 0.0) -> None:
        """Start preconnect and keep-warm on every pool not yet started; wait up to ``wait``
        seconds for the preconnects (they go on in the background after that)."""
        for up in self.upstreams.values():
            up.pool.start()
        if wait > 0:
            await asyncio.gather(*(up.pool.ready(wait) for up in self.upstreams.values()))

    async def close_retired(self, grace: float) -> None:
        """Close the pools of upstreams dropped (or given a new pool) by a reload, once their requests finish."""
        for up in self.retired:
            up.pool.stop_warming()
        for up in self.retired:
            loop = asyncio.get_running_loop()
            end = loop.time() + grace
            while up.inflight and loop.time() < end:
                await asyncio.sleep(0.1)
            await up.pool.close()

    async def close(self) -> None:
        """Close every pool (at shutdown)."""
        for up in self.upstreams.values():
            await up.pool.close()
