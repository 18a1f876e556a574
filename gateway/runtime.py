"""Runtime state bound to one loaded configuration.

Owns what a request needs besides its own data: the router, and per upstream its connection
pool (``gateway.pool``: the ``ClientSession``, TLS, egress proxy, preconnect and keep-warm), its
bulkhead, its circuit breakers (one for the upstream,
one per route that sets ``breaker:``), its rate limiters, quota keepers, idempotency keepers,
retry budgets and last-minute statistics; and the process's idempotency store (memory, or Redis
with memory as its fallback). A reload builds a new ``Runtime`` from the previous one: upstreams
whose ``url`` did not change keep their pool (and its open connections, unless ``tls``,
``proxy`` or ``pool.idle_timeout`` changed), breakers (with the new settings), budgets,
limiters, quotas and statistics; the idempotency store is always kept; in-flight requests keep
the runtime they started with. ``start_pools`` starts preconnect and keep-warm for the new pools.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
from cachetools import LRUCache
from yarl import URL

from . import idempotency
from .breaker import CircuitBreaker
from .config import Config, RateLimitSpec, RoutePolicy, UpstreamPolicy
from .fault import FaultInjector
from .limits import Bulkhead
from .pool import Pool
from .quota import QuotaKeeper, Usage, new_usages
from .ratelimit import GlobalRateLimiter, Limiter, RateLimiter
from .redislink import RedisLink
from .resends import CountingRequest
from .retry import RetryBudget, RetryPolicy
from .routing import Router
from .stats import MinuteWindow

__all__ = ["Route", "Runtime", "Upstream", "build_keys"]


@dataclass(frozen=True, slots=True)
class Route:
    """A route's finished policy and the policy objects built from it."""

    policy: RoutePolicy
    retry: RetryPolicy
    breaker: CircuitBreaker
    limiter: tuple[Limiter, ...]  # every one must pass (``rate_limit:`` one block or a list)
    fault: FaultInjector | None
    client_timeout: aiohttp.ClientTimeout
    quota: QuotaKeeper | None = None
    idempotency: idempotency.Keeper | None = None


BreakerHook = Callable[[CircuitBreaker, str, str], None]


class Upstream:
    """One upstream: its policy, connection pool and the state that outlives a reload."""

    def __init__(
        self,
        policy: UpstreamPolicy,
        previous: Upstream | None = None,
        hook: BreakerHook | None = None,
        link: RedisLink | None = None,
        keys: idempotency.Store | None = None,
    ) -> None:
        self.policy = policy
        self.link = link
        self.keys: idempotency.Store | None = keys
        self.name = policy.name
        self.base = str(policy.url).rstrip("/")
        self.inflight = 0
        self._hook = hook
        self.pool: Pool
        self.session: aiohttp.ClientSession
        self.stats: MinuteWindow
        self._budgets: dict[tuple[str, float, float, float], RetryBudget]
        self._limiters: dict[tuple[str, int, RateLimitSpec], Limiter]
        self._usages: LRUCache[str, Usage]  # quota use per key value, shared by the routes
        self.bulkhead: Bulkhead
        self.breakers: dict[str, CircuitBreaker] = {}
        old_breakers: dict[str, CircuitBreaker] = {}
        limits = policy.limits
        connect = policy.default.timeouts.connect
        if previous is not None and previous.pool.fits(policy.url, policy.pool, policy.tls, policy.proxy):
            self.pool = previous.pool
            self.pool.update(policy.pool, connect)
        else:
            self.pool = Pool(policy.name, policy.url, policy.pool, policy.tls, policy.proxy, connect, CountingRequest)
        self.session = self.pool.session
        if previous is not None:
            self.stats = previous.stats
            self._budgets = previous._budgets
            self._limiters = previous._limiters
            self._usages = previous._usages
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
            self._usages = new_usages()
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
        limiters = tuple(self._limiter(policy.name, i, config) for i, config in enumerate(policy.rate_limit))
        quota = None
        if policy.quota is not None:
            quota = QuotaKeeper(policy.quota, self.name, self.link, usages=self._usages)
        retry = RetryPolicy(policy.retry, self.policy.kind, budget)
        keeper = None
        if policy.idempotency is not None and self.keys is not None:
            keeper = idempotency.Keeper(policy.idempotency, self.name, policy.name, self.keys, retry)
        t = policy.timeouts
        return Route(
            policy=policy,
            retry=retry,
            breaker=self._breaker(policy, old_breakers),
            limiter=limiters,
            fault=FaultInjector(policy.fault) if policy.fault is not None else None,
            client_timeout=aiohttp.ClientTimeout(total=None, connect=None, sock_connect=t.connect, sock_read=t.idle),
            quota=quota,
            idempotency=keeper,
        )

    def _limiter(self, route: str, index: int, config: RateLimitSpec) -> Limiter:
        """The limiter of ``config``, kept across reloads while the block is unchanged."""
        limiter_key = (route, index, config)
        limiter = self._limiters.get(limiter_key)
        if limiter is None:
            limiter = RateLimiter(config)
            if config.scope == "global" and self.link is not None:
                name = f"{self.name}.{route}" + (f".{index}" if index else "")
                limiter = GlobalRateLimiter(config, self.link, name, local=limiter)
            self._limiters[limiter_key] = limiter
        return limiter

    def url_for(self, path: str, query: str | None) -> URL:
        """The upstream URL for a raw path and raw query, byte for byte (no re-encoding)."""
        target = self.base + path if query is None else f"{self.base}{path}?{query}"
        return URL(target, encoded=True)


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
        self.keys: idempotency.Store = previous.keys if previous is not None else build_keys(config, link)
        self.upstreams: dict[str, Upstream] = {}
        for policy in config.policies:
            before = old.get(policy.name)
            keep = before if before is not None and before.policy.url == policy.url else None
            self.upstreams[policy.name] = Upstream(policy, keep, hook, link, self.keys)
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

    def quotas(self) -> list[tuple[str, str, QuotaKeeper]]:
        """(upstream, route, keeper) of every route with a ``quota``."""
        return [(up.name, r.policy.name, r.quota) for up in self.upstreams.values() for r in up.routes if r.quota]


def build_keys(config: Config, link: RedisLink | None) -> idempotency.Store:
    """The process's idempotency store: memory, or Redis with memory as the fallback. Answers are
    kept up to ``cache_store.max_entry_bytes``; the memory store has the cache's bounds (its own)."""
    spec = config.cache_store
    memory = idempotency.MemoryStore(spec.max_entries, spec.max_bytes, spec.max_entry_bytes)
    if link is None:
        return memory
    return idempotency.FallbackStore(idempotency.RedisStore(link, spec.max_entry_bytes), memory)
