"""Rate limiting: token buckets per route, per key value, and lists of limits that must all pass.

Owns contract §2 "rate_limit": a bucket refills at ``rate`` tokens a second up to ``burst``; a
request takes one token, waiting up to ``max_wait`` for it, else is refused with 429
``rate_limited`` and a Retry-After. A waiting request reserves its token at once, taking the
bucket into debt, so waiters are served in the order they came and none is passed by a later
arrival. The decision (``TokenBucket.reserve``, ``RateLimiter.reserve``) is synchronous and reads
an injected clock; only ``acquire`` sleeps. Buckets per key value are kept in an LRU of
``max_keys`` entries; an evicted key starts again with a full bucket. ``scope: global`` is
``GlobalRateLimiter``: the same bucket arithmetic in one Lua script run by Redis, shared by
every replica, with this local limiter as its fallback while Redis is unavailable.

A limit's ``key`` (``RequestKey``) is a path parameter, ``header:NAME`` (the SHA-256 of the
header's value: a header value is never held in clear) or ``body:/json/pointer`` (RFC 6901, the
field's SHA-256, read from a JSON body no larger than ``max_replay_body``; a body that is not
JSON or lacks the field shares the bucket ``-``, or skips the limit with ``missing: skip``).
``acquire_all`` takes a token from every limit of a route: each reserves in order, a refusal gives
back what the earlier ones reserved, and the request then sleeps the longest of the reserved waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import math
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from cachetools import Cache, LRUCache

from .config import RateLimitSpec
from .errors import BadRequest, RateLimited
from .redislink import RedisLink, StoreUnavailable
from .units import format_rate

__all__ = [
    "GlobalRateLimiter",
    "Limiter",
    "RateLimiter",
    "RequestKey",
    "TokenBucket",
    "acquire_all",
    "default_burst",
    "route_keys",
]

NO_VALUE = "-"  # the bucket of requests without the key's field (a body that is not JSON, an absent header)
Undo = Callable[[], Awaitable[None]]


class RequestKey:
    """Where a limit's bucket key is read: a path parameter, a header, or a field of a JSON body."""

    __slots__ = ("kind", "name", "pointer")

    def __init__(self, spec: str | None) -> None:
        self.kind, self.name = "none", ""
        self.pointer: tuple[str, ...] = ()
        if spec is None:
            return
        kind, colon, rest = spec.partition(":")
        if colon and kind == "header":
            self.kind, self.name = "header", rest.lower()
        elif colon and kind == "body":
            self.kind, self.name = "body", rest
            self.pointer = tuple(p.replace("~1", "/").replace("~0", "~") for p in rest.split("/")[1:])
        else:
            self.kind, self.name = "path", spec

    @property
    def reads_body(self) -> bool:
        return self.kind == "body"

    def value(self, params: Mapping[str, str], headers: Mapping[str, str], body: bytes | None) -> str | None:
        """The bucket key for one request (None: the route's single bucket). Header and body values
        become SHA-256 digests. Raises BadRequest for a body key and a body that was not read into
        memory (larger than ``max_replay_body``): it cannot be inspected before it is forwarded."""
        if self.kind == "none":
            return None
        if self.kind == "path":
            return params.get(self.name)
        if self.kind == "header":
            getall = getattr(headers, "getall", None)
            values = list(getall(self.name, ())) if getall is not None else [headers.get(self.name, "")]
            values = [v for v in values if v]
            return _digest(", ".join(values)) if values else NO_VALUE
        if body is None:
            raise BadRequest(
                f"this route's rate limit is keyed on the body field {self.name!r}: the body must be JSON no larger "
                "than retry.max_replay_body so the gateway can read it before forwarding"
            )
        return self._field(body)

    def _field(self, body: bytes) -> str:
        try:
            node: Any = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return NO_VALUE
        for part in self.pointer:
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                return NO_VALUE
        text = node if isinstance(node, str) else json.dumps(node, sort_keys=True, separators=(",", ":"))
        return _digest(text)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


_EPSILON = 1e-9  # float slack: 0.1 s at 10/s must refill exactly one token


def default_burst(rate: float) -> int:
    """The burst used when the configuration sets none: one second of tokens, at least one."""
    return max(1, math.ceil(rate))


class TokenBucket:
    """``burst`` tokens, refilled at ``rate`` a second; the token count goes negative while callers wait."""

    __slots__ = ("_stamp", "_tokens", "burst", "clock", "rate")

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"a token bucket needs rate > 0 and burst >= 1, got rate={rate} burst={burst}")
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self._tokens = float(burst)
        self._stamp = clock()

    def _refill(self) -> float:
        now = self.clock()
        if now > self._stamp:
            self._tokens = min(float(self.burst), self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
        return self._tokens

    @property
    def tokens(self) -> float:
        """Tokens available now; negative while reserved tokens are still owed to waiting callers."""
        return self._refill()

    def reserve(self, max_wait: float) -> float | None:
        """Take one token: the wait in seconds before using it (0.0 when one is there now), or None,
        taking nothing, when that wait would be longer than ``max_wait``."""
        tokens = self._refill()
        if tokens >= 1 - _EPSILON:
            self._tokens = tokens - 1
            return 0.0
        wait = (1 - tokens) / self.rate
        if wait > max_wait + _EPSILON:
            return None
        self._tokens = tokens - 1
        return wait

    def refund(self) -> None:
        """Give back a reserved token whose caller left before using it (capped at ``burst``)."""
        self._tokens = min(float(self.burst), self._refill() + 1)

    def retry_after(self) -> float:
        """Seconds until a token would be free for a new caller (0.0 when one is free now)."""
        return max(0.0, (1 - self._refill()) / self.rate)


class RateLimiter:
    """The buckets of one ``rate_limit:`` block: one bucket, or one per value of its ``key`` path parameter."""

    def __init__(
        self,
        config: RateLimitSpec,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 10000,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.config = config
        self.clock = clock
        self.rate = config.rate
        self.burst = config.burst if config.burst is not None else default_burst(config.rate)
        self.max_wait = config.max_wait
        self.key = RequestKey(config.key)
        self._sleep = sleep
        self._buckets: LRUCache[str | None, TokenBucket] = LRUCache(maxsize=max_keys)

    def __len__(self) -> int:
        """The number of buckets held."""
        return len(self._buckets)

    def headroom(self) -> dict[str, float | int | None]:
        """For the status page: ``keys`` (buckets held), ``tokens_min`` (the fewest tokens left in
        any bucket: the key nearest its limit; None before the first request) and ``exhausted``
        (buckets with less than one token: the next request there waits or gets 429). Key values are
        not shown: they may be phone numbers. Reads without touching the buckets' LRU order."""
        peek = Cache.__getitem__  # LRUCache's own __getitem__ would make every bucket recently used
        tokens = [peek(self._buckets, key).tokens for key in list(self._buckets)]
        return {
            "keys": len(tokens),
            "tokens_min": round(min(tokens), 2) if tokens else None,
            "exhausted": sum(1 for t in tokens if t < 1 - _EPSILON),
        }

    def bucket(self, key: str | None) -> TokenBucket:
        """The bucket for ``key`` (the value of the configured path parameter), made full on first use.
        Without ``key:`` in the configuration every request shares one bucket, whatever ``key`` is."""
        if self.config.key is None:
            key = None
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(self.rate, self.burst, self.clock)
        return bucket

    def reserve(self, key: str | None, upstream: str) -> float:
        """Take a token for ``key``: the seconds to wait before forwarding (0.0: go now).
        Raises RateLimited (429, ``retry_after`` = seconds until a token is free) when the wait
        would be longer than ``max_wait``; nothing is taken then."""
        return self._reserve(key, upstream)[1]

    def _reserve(self, key: str | None, upstream: str) -> tuple[TokenBucket, float]:
        bucket = self.bucket(key)
        wait = bucket.reserve(self.max_wait)
        if wait is None:
            raise RateLimited(
                f"rate limit of {format_rate(self.rate)} reached: no token within {self.max_wait:g}s",
                upstream=upstream,
                retry_after=bucket.retry_after(),
            )
        return bucket, wait

    async def take(self, key: str | None, upstream: str) -> tuple[float, Undo]:
        """Reserve a token for ``key``: (seconds to wait before using it, how to give it back).
        Raises RateLimited as ``reserve``."""
        bucket, wait = self._reserve(key, upstream)

        async def undo() -> None:
            bucket.refund()

        return wait, undo

    async def acquire(self, key: str | None, upstream: str) -> None:
        """Take a token for ``key``, sleeping for the reserved wait. Raises RateLimited as ``reserve``.
        A caller cancelled while waiting gives its token back."""
        await acquire_all([(self, key)], upstream, self._sleep)


# One atomic take from a bucket kept in Redis, timed by Redis's own clock so replicas with skewed
# clocks agree. KEYS[1]: the bucket. ARGV: rate, burst, max_wait. Returns {taken (0/1), wait}:
# taken=1 with the seconds to wait before using the token (the bucket goes into debt, as the
# local bucket does); taken=0 with the seconds until a token would be free.
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rate, burst, max_wait = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens, ts = tonumber(b[1]), tonumber(b[2])
if tokens == nil or ts == nil then tokens, ts = burst, now end
if now > ts then tokens = math.min(burst, tokens + (now - ts) * rate); ts = now end
local wait = 0
if tokens < 1 - 1e-9 then
  wait = (1 - tokens) / rate
  if wait > max_wait + 1e-9 then return {0, tostring(wait)} end
end
tokens = tokens - 1
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(ts))
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) / rate * 1000) + 1000)
return {1, tostring(wait)}
"""


# Give one token back to a shared bucket (a later limit refused the request), capped at burst.
_REFUND = """
local tokens = tonumber(redis.call('HGET', KEYS[1], 'tokens'))
if tokens == nil then return 0 end
redis.call('HSET', KEYS[1], 'tokens', tostring(math.min(tonumber(ARGV[1]), tokens + 1)))
return 1
"""


class GlobalRateLimiter:
    """``scope: global``: the bucket lives in Redis, so every replica takes from the same one.

    While Redis is unavailable the route falls back to ``local`` (this replica's own bucket with the
    same rate): each replica then enforces the whole quota alone, as it would without Redis.
    A caller cancelled while waiting does not give its token back to the shared bucket.
    """

    def __init__(
        self,
        config: RateLimitSpec,
        link: RedisLink,
        name: str,
        local: RateLimiter,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.config = config
        self.link = link
        self.name = name
        self.local = local
        self.rate = config.rate
        self.burst = local.burst
        self.max_wait = config.max_wait
        self.key = local.key
        self._take = link.client.register_script(_TAKE)
        self._refund = link.client.register_script(_REFUND)
        self._sleep = sleep

    async def take(self, key: str | None, upstream: str) -> tuple[float, Undo]:
        """Reserve a token from the shared bucket (or the local one while Redis is down): (seconds to
        wait, how to give it back). Raises RateLimited when the wait would be longer than ``max_wait``."""
        bucket = self.link.key("rl", self.name, key if self.config.key is not None and key is not None else NO_VALUE)
        try:
            taken, wait = await self.link.script(
                "rate_limit", self._take, [bucket], [self.rate, self.burst, self.max_wait]
            )
        except StoreUnavailable:
            return await self.local.take(key, upstream)
        seconds = float(wait)
        if not int(taken):
            raise RateLimited(
                f"rate limit of {format_rate(self.rate)} (shared by every replica) reached: "
                f"no token within {self.max_wait:g}s",
                upstream=upstream,
                retry_after=seconds,
            )

        async def undo() -> None:
            with contextlib.suppress(StoreUnavailable):
                await self.link.script("rate_limit", self._refund, [bucket], [self.burst])

        return seconds, undo

    async def acquire(self, key: str | None, upstream: str) -> None:
        """Take a token, sleeping for the reserved wait. Raises RateLimited as ``take``."""
        await acquire_all([(self, key)], upstream, self._sleep)


Limiter = RateLimiter | GlobalRateLimiter


async def acquire_all(
    limits: Sequence[tuple[Limiter, str | None]],
    upstream: str,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> None:
    """Take a token from every (limiter, key), in order, then sleep the longest reserved wait.

    Raises RateLimited from the first limit that has no token within its ``max_wait``; tokens the
    earlier limits reserved are given back then, and when the caller is cancelled while waiting."""
    undos: list[Undo] = []
    longest = 0.0
    try:
        for limiter, key in limits:
            wait, undo = await limiter.take(key, upstream)
            undos.append(undo)
            longest = max(longest, wait)
        if longest > 0:
            await sleep(longest)
    except (RateLimited, asyncio.CancelledError):
        for undo in reversed(undos):
            await asyncio.shield(undo())
        raise


def route_keys(
    limiters: Sequence[Limiter], params: Mapping[str, str], headers: Mapping[str, str], body: bytes | None
) -> list[tuple[Limiter, str | None]]:
    """Each limiter with its bucket key for this request (see ``RequestKey.value``), without the
    limiters set to ``missing: skip`` whose key has no value in this request."""
    keyed = [(limiter, limiter.key.value(params, headers, body)) for limiter in limiters]
    return [(limiter, key) for limiter, key in keyed if key != NO_VALUE or limiter.config.missing != "skip"]
