"""The near cache in front of Redis (``gateway.nearcache``): two real gateway processes, one real Redis.

What a user of two replicas must be able to count on: a repeated hit is answered without asking
Redis, and a write through one replica is never answered from the other's near cache once the
write's answer has returned — nor after the other replica lost its subscription to the
invalidations (Redis restarted, the subscription's connection killed).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from .conftest import RedisServer, Upstream
from .test_shared import call, failing, shared_yaml, versioned, wait_for

pytestmark = pytest.mark.timeout(90)

PATH = "/supabase/rest/v1/conversations?select=*"
WRITE = "/supabase/rest/v1/conversations?id=eq.5"


def redis_gets(redis: RedisServer) -> int:
    """How many MGET calls Redis has served (INFO commandstats): a near-cache hit makes none."""
    info = redis.command("INFO", "commandstats")
    stats = info.get("cmdstat_mget") if isinstance(info, dict) else None
    return int(stats["calls"]) if stats else 0


async def near_hit(session: aiohttp.ClientSession, base: str, redis: RedisServer) -> None:
    """Read PATH through ``base`` until a HIT costs Redis nothing (the subscription is up, the entry near)."""

    async def answered_near() -> bool:
        before = redis_gets(redis)
        status, _, headers = await call(session, base, PATH)
        assert (status, headers["x-gateway-cache"]) == (200, "HIT")
        return redis_gets(redis) == before

    await wait_for(answered_near, 5.0, "a hit answered from the near cache (no MGET)")


@pytest.fixture
async def pair(
    upstream_factory: Callable[..., Awaitable[Upstream]], gateway_process: Any, redis_server: RedisServer
) -> Any:
    up = await upstream_factory(versioned)
    flaky = await upstream_factory(failing)
    text = shared_yaml(redis_server.url, up.url, flaky.url)
    a, b = gateway_process(text), gateway_process(text)
    async with aiohttp.ClientSession() as session:
        yield session, a, b, up, redis_server


async def test_a_write_through_a_is_never_answered_from_bs_near_cache(pair):
    session, a, b, up, redis = pair
    status, first, headers = await call(session, b.url, PATH)
    assert (status, headers["x-gateway-cache"]) == (200, "MISS")
    await near_hit(session, b.url, redis)  # B's near cache holds the entry now
    for _ in range(20):  # each time: the write's answer is back, then B is asked at once
        status, _, _ = await call(session, a.url, WRITE, method="PATCH")
        assert status == 200
        count = up.count
        status, body, headers = await call(session, b.url, PATH)
        assert status == 200 and headers["x-gateway-cache"] == "MISS", headers
        assert body == f"GET /rest/v1/conversations #{count + 1}" != first  # the upstream's new answer
        await near_hit(session, b.url, redis)  # and near again


async def test_a_lost_subscription_drops_the_near_cache_until_subscribed_again(pair):
    session, a, b, up, redis = pair
    await call(session, b.url, PATH)
    await near_hit(session, b.url, redis)
    killed = redis.command("CLIENT", "KILL", "TYPE", "pubsub")
    assert int(killed) >= 1  # B's (A subscribes on its first cache lookup)
    # A's announcement of this write reaches no one: B has no subscription until it reconnects.
    status, _, _ = await call(session, a.url, WRITE, method="PATCH")
    assert status == 200
    count = up.count
    status, body, headers = await call(session, b.url, PATH)
    assert (status, headers["x-gateway-cache"], body) == (200, "MISS", f"GET /rest/v1/conversations #{count + 1}")
    await near_hit(session, b.url, redis)  # subscribed again: near hits resume


async def test_redis_restarted_drops_the_near_cache_and_it_comes_back(pair):
    session, a, b, up, redis = pair
    await call(session, b.url, PATH)
    await near_hit(session, b.url, redis)
    redis.kill()
    count = up.count
    status, body, headers = await call(session, b.url, PATH)  # not the near copy: Redis is gone
    assert (status, headers["x-gateway-cache"]) == (200, "MISS")
    assert body == f"GET /rest/v1/conversations #{count + 1}"
    redis.start()  # same port, empty

    async def shared_again() -> bool:
        path = f"/supabase/rest/v1/after{time.monotonic_ns()}"
        await call(session, a.url, path)
        return (await call(session, b.url, path))[2]["x-gateway-cache"] == "HIT"

    await wait_for(shared_again, 10.0, "a miss through A is a hit through B again")
    await call(session, b.url, PATH)
    await near_hit(session, b.url, redis)
    status, _, _ = await call(session, a.url, WRITE, method="PATCH")
    assert status == 200
    status, _, headers = await call(session, b.url, PATH)
    assert headers["x-gateway-cache"] == "MISS"
