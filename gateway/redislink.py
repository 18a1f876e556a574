"""The process's one connection to Redis, with a timeout on every call and a gate for outages.

Owns the redis-py asyncio client (one pooled client per process, no retries of its own) and the
rule that Redis down or slow never takes the gateway down: every call runs under
``cache_store.timeout``; a failure marks Redis down for ``retry_after`` seconds, during which calls
fail at once without touching the network (``StoreUnavailable``), so a dead Redis costs one timeout
per second, not one per request. Each failure is counted (``on_error(op, exc)``, the
``gateway_store_errors_total{store="redis",op}`` metric); the moves down and up are logged once
each; callbacks registered with ``on_recovery`` run when a call succeeds again, so users can
resynchronise (clear what they kept locally, replay invalidations).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from .errors import StoreUnavailable
from .logs import event

if TYPE_CHECKING:
    import redis.asyncio as aioredis

__all__ = ["RedisLink", "StoreUnavailable"]

T = TypeVar("T")


class RedisLink:
    """One Redis client, its timeout, and whether Redis is currently considered up."""

    def __init__(
        self,
        url: str,
        prefix: str,
        timeout: float,
        on_error: Callable[[str, BaseException], None] | None = None,
        retry_after: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # redis-py is imported here, not at module level: a gateway on the memory store never loads it (~6 MiB).
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff
        from redis.exceptions import RedisError

        self._errors: tuple[type[BaseException], ...] = (RedisError, OSError, TimeoutError)
        self.url = url  # the subscription of gateway.nearcache connects with it too
        self.prefix = prefix
        self.timeout = timeout
        self.retry_after = retry_after
        self.client: aioredis.Redis = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
        )
        self._on_error = on_error
        self._clock = clock
        self._down_until = 0.0
        self._down = False
        self._recovery: list[Callable[[], Awaitable[None]]] = []
        self.errors = 0

    @property
    def up(self) -> bool:
        """False while marked down after a failure (for ``retry_after`` seconds)."""
        return not self._down or self._clock() >= self._down_until

    def key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    def on_recovery(self, callback: Callable[[], Awaitable[None]]) -> None:
        self._recovery.append(callback)

    async def call(self, op: str, fn: Callable[[aioredis.Redis], Awaitable[T]]) -> T:
        """Run ``fn(client)`` under the timeout. Raises StoreUnavailable when Redis is marked down
        or the call fails; nothing else escapes."""
        if not self.up:
            raise StoreUnavailable("redis is marked down")
        try:
            async with asyncio.timeout(self.timeout):
                result = await fn(self.client)
        except self._errors as exc:
            self._failed(op, exc)
            raise StoreUnavailable(f"redis {op} failed: {type(exc).__name__}") from exc
        if self._down:
            self._down = False
            event("redis is reachable again; shared state resumes")
            for callback in self._recovery:
                try:
                    await callback()
                except StoreUnavailable:
                    break
        return result

    def _failed(self, op: str, exc: BaseException) -> None:
        self.errors += 1
        self._down_until = self._clock() + self.retry_after
        if self._on_error is not None:
            self._on_error(op, exc)
        if not self._down:
            self._down = True
            event(
                "redis unavailable; using local state until it answers again",
                logging.WARNING,
                op=op,
                error=type(exc).__name__,
                retry_in_s=self.retry_after,
            )

    async def script(self, op: str, source: Any, keys: list[str], args: list[Any]) -> Any:
        """Run a registered Lua script (``client.register_script``) as one call."""
        return await self.call(op, lambda _client: source(keys=keys, args=args))

    async def close(self) -> None:
        with contextlib.suppress(*self._errors):
            await self.client.aclose()
