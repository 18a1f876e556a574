"""The near cache in front of Redis (``gateway.nearcache``): two real gateway processes, one real Redis.

What a user of two replicas must be able to count on: a repeated hit is answered without asking
Redis, and a write through one replica is never answered from the other's near cache once the
write's answer has returned — nor after the other replica lost its subscription to the
invalidations (Redis restarted, the subscription's connection killed).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from gateway.cachestore import Entry, FallbackStore, MemoryStore, RedisStore
from gateway.nearcache import NearStore
from gateway.redislink import RedisLink

from .support import RedisServer, Upstream, eventually
from .test_shared import call, failing, shared_yaml, versioned

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

    await eventually(answered_near, 5.0, "a hit answered from the near cache (no MGET)", interval=0.05)


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

    await eventually(shared_again, 10.0, "a miss through A is a hit through B again", interval=0.05)
    await call(session, b.url, PATH)
    await near_hit(session, b.url, redis)
    status, _, _ = await call(session, a.url, WRITE, method="PATCH")
    assert status == 200
    status, _, headers = await call(session, b.url, PATH)
    assert headers["x-gateway-cache"] == "MISS"


# ---------------------------------------------------------------- two near caches in one process


def near_store(redis: RedisServer) -> NearStore:
    link = RedisLink(redis.url, "unit:", 0.5)
    return NearStore(FallbackStore(RedisStore(link), MemoryStore(100, 1 << 20)), 100, 1 << 20)


def entry(body: bytes, path: str = "/a") -> Entry:
    return Entry("up", path, 200, "OK", (), body, time.time(), 60.0, 0.0)


async def subscribed(store: NearStore) -> None:
    await store.get("warm-up", lambda _v: "warm-up")  # starts the subscription
    end = time.monotonic() + 5
    while not store._subscriber.trusted():
        assert time.monotonic() < end, "no subscription"
        await asyncio.sleep(0.01)


@pytest.fixture
async def two(redis_server: RedisServer) -> Any:
    a, b = near_store(redis_server), near_store(redis_server)
    await subscribed(a)
    await subscribed(b)
    yield a, b
    await a.close()
    await b.close()


async def test_a_store_through_one_replaces_the_others_near_copy(two):
    a, b = two
    await a.put("p", "k", entry(b"v1"))
    assert (await b.get("p", lambda _v: "k")).body == b"v1"  # from Redis, now near too
    hits = b.hits
    assert (await b.get("p", lambda _v: "k")).body == b"v1" and b.hits == hits + 1
    await a.put("p", "k", entry(b"v2"))
    assert (await b.get("p", lambda _v: "k")).body == b"v2"  # the announcement is applied (or waits unread)
    await a.mark_where("up", lambda _u, p: p == "/a")
    got = await b.get("p", lambda _v: "k")
    assert got is not None and got.invalidated


async def test_a_fill_an_invalidation_overtook_is_not_kept_near(two):
    a, b = two
    await a.put("p", "k", entry(b"v1"))
    real_get = b.remote.get
    reads = 0

    async def slow_get(primary, key_for):
        nonlocal reads
        reads += 1
        found = await real_get(primary, key_for)  # read before the invalidation...
        if reads == 1:
            await a.mark_where("up", lambda _u, _p: True)  # ...which B hears before its answer is used
            await asyncio.sleep(0.2)
        return found

    b.remote.get = slow_get  # type: ignore[method-assign]
    first = await b.get("p", lambda _v: "k")
    assert first is not None and not first.invalidated  # what Redis said when asked
    second = await b.get("p", lambda _v: "k")
    assert reads == 2 and second is not None and second.invalidated  # not the near copy of the old read


async def test_an_announcement_not_yet_read_already_keeps_the_near_copy_from_answering(two):
    """The announcement's bytes have reached this host but the event loop has not read them yet
    (reading paused here, to hold that moment): the near cache must not answer meanwhile."""
    a, b = two
    await a.put("p", "k", entry(b"v1"))
    await b.get("p", lambda _v: "k")
    hits = b.hits
    assert (await b.get("p", lambda _v: "k")).body == b"v1" and b.hits == hits + 1  # near
    protocol = b._subscriber._protocol
    assert protocol is not None and protocol.transport is not None
    protocol.transport.pause_reading()  # type: ignore[attr-defined]
    try:
        await a.put("p", "k", entry(b"v2"))
        await asyncio.sleep(0.05)  # the announcement sits unread in B's socket
        got = await b.get("p", lambda _v: "k")
        assert got is not None and got.body == b"v2"  # from Redis, not the near copy
        assert b.hits == hits + 1
    finally:
        protocol.transport.resume_reading()  # type: ignore[attr-defined]


async def test_a_write_returns_only_once_every_replica_has_read_its_invalidation(two):
    a, b = two
    await a.put("p", "k", entry(b"v1"))
    assert (await b.get("p", lambda _v: "k")).body == b"v1"
    answer = b._answer

    async def slow_answer(token: str) -> None:
        await asyncio.sleep(0.3)  # B is busy: its answer to the barrier comes late
        await answer(token)

    b._answer = slow_answer  # type: ignore[method-assign]
    began = time.monotonic()
    await a.mark_where("up", lambda _u, p: p == "/a")
    assert 0.3 <= time.monotonic() - began < 0.9  # waited for B's answer, not for the silence limit
    got = await b.get("p", lambda _v: "k")
    assert got is not None and got.invalidated


async def test_a_replica_that_never_answers_costs_a_write_the_silence_limit_at_most(two):
    from gateway.nearcache import HEARD_WITHIN

    a, b = two

    async def deaf(token: str) -> None:
        return None

    b._answer = deaf  # type: ignore[method-assign]
    began = time.monotonic()
    await a.mark_where("up", lambda _u, p: p == "/a")
    assert HEARD_WITHIN - 0.05 <= time.monotonic() - began < HEARD_WITHIN + 0.8


async def test_with_no_subscription_anywhere_a_write_does_not_wait(redis_server: RedisServer) -> None:
    lone = near_store(redis_server)
    lone._subscriber.start = lambda: None  # type: ignore[method-assign]  # pub/sub refused (an ACL, a proxy)
    try:
        await lone.put("p", "k", entry(b"v1"))
        began = time.monotonic()
        await lone.mark_where("up", lambda _u, p: p == "/a")
        assert time.monotonic() - began < 0.3  # nobody to wait for: no near cache can hold the entry
    finally:
        await lone.close()
