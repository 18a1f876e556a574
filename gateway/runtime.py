"""Runtime state bound to one loaded configuration.

Owns what a request needs besides its own data: the router, and per upstream its pooled
``ClientSession`` (one connection pool each, keep-alive, TLS verified, no cookie jar, no
decompression, no redirects followed), its retry budgets and its last-minute statistics.
A reload builds a new ``Runtime`` from the previous one: upstreams whose ``url`` did not change
keep their session and state objects; in-flight requests keep the runtime they started with.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import aiohttp
from yarl import URL

from .config import Config, RoutePolicy, UpstreamPolicy, resolve
from .retry import RetryBudget, RetryPolicy
from .routing import Router
from .stats import MinuteWindow

__all__ = ["Route", "Runtime", "Upstream"]


@dataclass(frozen=True, slots=True)
class Route:
    """A route's finished policy and the policy objects built from it."""

    policy: RoutePolicy
    retry: RetryPolicy
    client_timeout: aiohttp.ClientTimeout


class Upstream:
    """One upstream: its policy, connection pool and the state that outlives a reload."""

    def __init__(self, policy: UpstreamPolicy, previous: Upstream | None = None) -> None:
        self.policy = policy
        self.name = policy.name
        self.base = str(policy.url).rstrip("/")
        self.inflight = 0
        self.session: aiohttp.ClientSession
        self.stats: MinuteWindow
        self._budgets: dict[tuple[str, float, float, float], RetryBudget]
        if previous is not None:
            self.session = previous.session
            self.stats = previous.stats
            self._budgets = previous._budgets
        else:
            self.session = _new_session()
            self.stats = MinuteWindow()
            self._budgets = {}
        self.routes = tuple(self._route(p) for p in policy.routes)
        self.default = self._route(policy.default)

    def _route(self, policy: RoutePolicy) -> Route:
        b = policy.retry.budget
        key = (policy.name, b.percent, b.min_per_second, b.window)
        budget = self._budgets.get(key)
        if budget is None:
            budget = self._budgets[key] = RetryBudget(b.percent, b.min_per_second, b.window)
        t = policy.timeouts
        return Route(
            policy=policy,
            retry=RetryPolicy(policy.retry, self.policy.kind, budget),
            client_timeout=aiohttp.ClientTimeout(total=None, connect=None, sock_connect=t.connect, sock_read=t.idle),
        )

    def url_for(self, path: str, query: str | None) -> URL:
        """The upstream URL for a raw path and raw query, byte for byte (no re-encoding)."""
        target = self.base + path if query is None else f"{self.base}{path}?{query}"
        return URL(target, encoded=True)


def _new_session() -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=60, keepalive_timeout=15)
    return aiohttp.ClientSession(
        connector=connector,
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
        trust_env=False,
        timeout=aiohttp.ClientTimeout(total=None),
        max_field_size=32 * 1024,
        max_line_size=16 * 1024,
    )


class Runtime:
    """Everything derived from one configuration that the request path reads."""

    def __init__(self, config: Config, previous: Runtime | None = None) -> None:
        self.config = config
        old = previous.upstreams if previous is not None else {}
        self.upstreams: dict[str, Upstream] = {}
        for policy in resolve(config):
            before = old.get(policy.name)
            keep = before if before is not None and before.policy.url == policy.url else None
            self.upstreams[policy.name] = Upstream(policy, keep)
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

    async def close_retired(self, grace: float) -> None:
        """Close the sessions of upstreams dropped by a reload, once their requests finish."""
        for up in self.retired:
            loop = asyncio.get_running_loop()
            end = loop.time() + grace
            while up.inflight and loop.time() < end:
                await asyncio.sleep(0.1)
            await up.session.close()

    async def close(self) -> None:
        """Close every session (at shutdown)."""
        for up in self.upstreams.values():
            await up.session.close()
