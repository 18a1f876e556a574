"""Shared state through a real Redis: the cache store, global rate limits and shared breakers.

Two real gateway processes share one real redis-server (Debian's, on a free loopback port); the
upstreams are real aiohttp servers in the test. Redis is killed and restarted mid-test to check
that the gateways keep answering on local state and resume sharing without a restart.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway.breaker import CircuitBreaker
from gateway.breakersync import BreakerSync
from gateway.cache import ResponseCache, primary_key
from gateway.cachestore import Entry, FallbackStore, MemoryStore, RedisStore
from gateway.config import BreakerSpec, RateLimitSpec
from gateway.errors import BreakerOpen, RateLimited
from gateway.outcomes import Outcome
from gateway.ratelimit import GlobalRateLimiter, RateLimiter
from gateway.redislink import RedisLink, StoreUnavailable

from .support import FakeClock, RedisServer, Upstream, eventually, gateway_yaml, sample, scrape

pytestmark = pytest.mark.timeout(90)

SECRETS = ("Bearer tok-alice-SECRET", "anon-apikey-SECRET")


def shared_yaml(redis_url: str, upstream_url: str, flaky_url: str) -> str:
    return gateway_yaml(
        {
            "supabase": f"""
                url: {upstream_url}
                kind: supabase
                retry: {{attempts: 1}}
                routes:
                  - name: read
                    match: {{methods: [GET], path: "/rest/v1/{{table}}"}}
                    cache: {{ttl: 5m, vary: [authorization, apikey]}}
                  - name: writes
                    match: {{methods: [PATCH, POST], path: "/rest/v1/{{table}}"}}
                    invalidates: ["/rest/v1/{{table}}"]
                  - name: limited
                    match: {{methods: [GET], path: "/limited"}}
                    rate_limit: {{rate: 10/s, burst: 10, max_wait: 0s, scope: global}}
            """,
            "flaky": f"""
                url: {flaky_url}
                retry: {{attempts: 1}}
                breaker: {{failure_threshold: 3, recovery: 30s, shared: true}}
            """,
        },
        # 1 s: on a loaded 2-core machine a burst of 50 requests per replica can starve a 200 ms call,
        # and the global limit then (rightly) falls back to each replica's own bucket
        extra=f'cache_store: {{type: redis, url: "{redis_url}", prefix: "gwtest:", timeout: 1s}}',
    )


async def versioned(request: web.BaseRequest, up: Upstream) -> web.StreamResponse:
    return web.Response(text=f"{request.method} {request.path} #{up.count}")


async def failing(request: web.BaseRequest, up: Upstream) -> web.StreamResponse:
    return web.Response(status=503, text="down")


@pytest.fixture
async def pair(
    upstream_factory: Callable[..., Awaitable[Upstream]], gateway_process: Any, redis_server: RedisServer
) -> Any:
    up = await upstream_factory(versioned)
    flaky = await upstream_factory(failing)
    text = shared_yaml(redis_server.url, up.url, flaky.url)
    a, b = gateway_process(text), gateway_process(text)
    async with aiohttp.ClientSession() as session:
        yield session, a, b, up, flaky, redis_server


async def call(session: aiohttp.ClientSession, base: str, path: str, method: str = "GET") -> tuple[int, str, Any]:
    headers = {"Authorization": SECRETS[0], "apikey": SECRETS[1]}
    async with session.request(method, base + path, headers=headers) as resp:
        return resp.status, await resp.text(), resp.headers


# ---------------------------------------------------------------- two processes, one Redis


async def test_a_miss_through_one_replica_is_a_hit_through_the_other_and_writes_purge_everywhere(pair):
    session, a, b, up, *_ = pair
    status, body, headers = await call(session, a.url, "/supabase/rest/v1/conversations?select=*")
    assert (status, headers["x-gateway-cache"]) == (200, "MISS")
    status, body_b, headers = await call(session, b.url, "/supabase/rest/v1/conversations?select=*")
    assert (status, body_b, headers["x-gateway-cache"]) == (200, body, "HIT")
    assert up.count == 1
    status, _, _ = await call(session, b.url, "/supabase/rest/v1/conversations?id=eq.5", method="PATCH")
    assert status == 200
    status, body_a, headers = await call(session, a.url, "/supabase/rest/v1/conversations?select=*")
    assert (headers["x-gateway-cache"], body_a) == ("MISS", "GET /rest/v1/conversations #3")


async def test_a_global_limit_holds_across_two_replicas(pair):
    session, a, b, *_ = pair
    began = time.monotonic()
    results = await asyncio.gather(*(call(session, (a if i % 2 else b).url, "/supabase/limited") for i in range(100)))
    elapsed = time.monotonic() - began
    passed = sum(1 for status, _, _ in results if status == 200)
    refused = [json.loads(body) for status, body, _ in results if status == 429]
    assert passed + len(refused) == 100
    assert passed <= 10 + 10 * elapsed + 1, (passed, elapsed)  # burst + rate × time, one token of slack
    assert passed >= 10
    assert refused and all(r["error"]["code"] == "rate_limited" for r in refused)


async def test_failures_through_one_replica_open_the_others_breaker(pair):
    session, a, b, _, flaky, _ = pair
    for _ in range(3):
        status, _, _ = await call(session, a.url, "/flaky/x")
        assert status == 503
    assert flaky.count == 3

    async def b_is_open() -> bool:
        async with session.get(b.admin + "/admin/breakers") as resp:
            states = {x["name"]: x["state"] for x in (await resp.json())["breakers"]}
        return states["flaky"] == "open"

    began = time.monotonic()
    await eventually(b_is_open, 1.0, "B's breaker opened after A's", interval=0.05)
    assert time.monotonic() - began < 1.0
    status, body, headers = await call(session, b.url, "/flaky/x")
    assert (status, json.loads(body)["error"]["code"]) == (503, "breaker_open")
    assert 23 <= int(headers["Retry-After"]) <= 36  # recovery 30 s ± 20 % jitter, minus the sync delay
    assert flaky.count == 3  # B never reached the upstream


async def test_redis_killed_then_restarted_mid_run(pair):
    session, a, b, _up, _, redis = pair
    await call(session, a.url, "/supabase/rest/v1/t")
    redis.kill()
    for _ in range(3):  # the cache falls back to memory: a local miss, then local hits
        status, _, headers = await call(session, a.url, "/supabase/rest/v1/t")
        assert status == 200 and headers["x-gateway-cache"] in ("MISS", "HIT")
    statuses = [(await call(session, b.url, "/supabase/limited"))[0] for _ in range(15)]
    assert statuses.count(200) == 10 and statuses.count(429) == 5  # B's local bucket: burst 10
    errors = sample(await scrape(session, a.admin), "gateway_store_errors_total", op="get", store="redis")
    assert errors is not None and errors >= 1
    assert any("redis unavailable" in line for line in a.lines)
    async with session.get(a.admin + "/health") as resp:
        health = await resp.json()
    assert health["redis"]["up"] is False and health["redis"]["errors"] >= 1

    redis.start()  # same port, empty

    async def shared_again() -> bool:
        path = f"/supabase/rest/v1/after{time.monotonic_ns()}"
        await call(session, a.url, path)
        return (await call(session, b.url, path))[2]["x-gateway-cache"] == "HIT"

    await eventually(shared_again, 10.0, "a miss through A is a hit through B again", interval=0.05)
    assert any("redis is reachable again" in line for line in a.lines)


async def test_redis_holds_no_header_value_in_clear(pair):
    session, a, _, _, _, redis = pair
    await call(session, a.url, "/supabase/rest/v1/profiles?select=*")
    await call(session, a.url, "/supabase/limited")
    keys = redis.command("KEYS", "*")
    assert keys
    dump = b"".join(keys)
    for key in keys:
        kind = redis.command("TYPE", key)
        if kind == b"string":
            dump += redis.command("GET", key)
        elif kind == b"set":
            dump += b"".join(redis.command("SMEMBERS", key))
        elif kind == b"hash":
            dump += b"".join(redis.command("HGETALL", key))
    for secret in (*SECRETS, "tok-alice-SECRET", "anon-apikey-SECRET"):
        assert secret.encode() not in dump
    assert all(key.startswith(b"gwtest:") for key in keys)


async def test_a_write_through_one_replica_leaves_the_other_a_stale_answer_when_the_read_fails(
    upstream_factory: Callable[..., Awaitable[Upstream]], gateway_process: Any, redis_server: RedisServer
):
    down = False

    async def answer(request: web.BaseRequest, up: Upstream) -> web.StreamResponse:
        if down:
            return web.Response(status=503, text="down")
        return web.Response(text=f"{request.method} #{up.count}")

    up = await upstream_factory(answer)
    flaky = await upstream_factory(failing)
    text = shared_yaml(redis_server.url, up.url, flaky.url)
    a, b = gateway_process(text), gateway_process(text)
    async with aiohttp.ClientSession() as session:
        path = "/supabase/rest/v1/conversations?select=*"
        _, first, headers = await call(session, a.url, path)
        assert headers["x-gateway-cache"] == "MISS"
        status, _, _ = await call(session, b.url, "/supabase/rest/v1/conversations?id=eq.5", method="PATCH")
        assert status == 200
        down = True
        status, body, headers = await call(session, a.url, path)
        assert (status, body, headers["x-gateway-cache"], headers["x-gateway-stale"]) == (
            200,
            first,
            "STALE",
            "invalidated",
        )
        assert up.count == 3  # the fill, the write, and the read that failed


# ---------------------------------------------------------------- the pieces, in process


@pytest.fixture
async def link(redis_server: RedisServer) -> Any:
    errors: list[str] = []
    made = RedisLink(redis_server.url, "unit:", 0.2, on_error=lambda op, exc: errors.append(op))
    made.errors_seen = errors  # type: ignore[attr-defined]
    yield made
    await made.close()


def entry(path: str, body: bytes = b"x") -> Entry:
    return Entry("up", path, 200, "OK", (("content-type", "text/plain"),), body, time.time(), 60.0, 0.0)


async def test_the_redis_store_keeps_entries_and_vary_and_deletes_by_path(link):
    store = RedisStore(link)
    await store.put("p1", "k1", entry("/a"))
    vary_entry = Entry("up", "/b", 200, "OK", (), b"ranged", time.time(), 60.0, 0.0, ("range",))
    await store.put("p2", "k2", vary_entry)
    assert (await store.get("p1", lambda names: "k1" if names == () else "wrong")).body == b"x"
    assert (await store.get("p2", lambda names: "k2" if names == ("range",) else "wrong")).body == b"ranged"
    assert await store.get("p3", lambda names: "k3") is None
    stats = await store.refresh_stats()
    assert (stats.entries, stats.upstreams["up"]["entries"]) == (2, 2)
    assert await store.delete_where("up", lambda up, path: path == "/a") == 1
    assert await store.get("p1", lambda names: "k1") is None
    assert await store.delete_where(None, lambda up, path: True) == 1


async def test_the_redis_store_marks_entries_invalidated_until_stored_again(link):
    store = RedisStore(link)
    await store.put("p1", "k1", entry("/a"))
    await store.put("p2", "k2", entry("/b"))
    assert await store.mark_where("up", lambda up, path: path == "/a") == 1
    assert await store.mark_where("up", lambda up, path: path == "/a") == 0  # already marked
    assert (await store.get("p1", lambda names: "k1")).invalidated
    assert not (await store.get("p2", lambda names: "k2")).invalidated
    await store.put("p1", "k1", entry("/a", b"new"))
    fresh = await store.get("p1", lambda names: "k1")
    assert (fresh.body, fresh.invalidated) == (b"new", False)


async def test_the_fallback_store_answers_from_memory_while_redis_is_down(link, redis_server):
    store = FallbackStore(RedisStore(link), MemoryStore(100, 1024**2))
    cache = ResponseCache(store, 1024**2)
    redis_server.kill()
    key = primary_key("up", "/a", None, (), {})
    await cache.put(key, key, entry("/a", b"local"), cache.epoch("up"))
    assert (await cache.lookup(key, {})).body == b"local"
    assert link.errors_seen and not link.up
    assert await cache.invalidate("up", lambda up, path: True) == 1  # local now, replayed on recovery
    redis_server.start()
    await asyncio.sleep(1.1)  # past the down mark
    assert await cache.lookup(key, {}) is None  # Redis again (empty), local entries dropped
    assert store.local.stats().entries == 0


async def test_a_slow_redis_costs_one_timeout_then_fails_fast(link, redis_server):
    assert redis_server.command("PING")  # reachable
    proc = redis_server.proc
    assert proc is not None
    proc.send_signal(19)  # SIGSTOP: connections hang instead of failing
    try:
        began = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await link.call("get", lambda r: r.get("x"))
        assert time.monotonic() - began < 0.6
        began = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await link.call("get", lambda r: r.get("x"))
        assert time.monotonic() - began < 0.01  # marked down: no network
    finally:
        proc.send_signal(18)  # SIGCONT


async def test_the_global_bucket_is_one_bucket_for_every_limiter(link):
    config = RateLimitSpec.model_validate({"rate": "5/s", "burst": 5, "max_wait": "0s", "scope": "global"})
    one = GlobalRateLimiter(config, link, "up.route", RateLimiter(config))
    two = GlobalRateLimiter(config, link, "up.route", RateLimiter(config))
    taken = 0
    for limiter in (one, two, one, two, one, two, one, two):
        try:
            await limiter.acquire(None, "up")
            taken += 1
        except RateLimited as err:
            assert 0 < err.retry_after <= 0.25
    assert taken == 5


async def test_the_shared_probe_lease_admits_one_replicas_probes(link):
    clock = FakeClock(100.0)
    config = BreakerSpec.model_validate(
        {"failure_threshold": 1, "recovery": "1s", "half_open_requests": 1, "shared": True}
    )
    # the monotonic and the wall clock move together here
    breakers = [CircuitBreaker("up", "up", "-", config, clock=clock, wall_clock=clock.wall) for _ in range(2)]
    syncs = [BreakerSync(link, lambda b=b: [b], wall_clock=clock.wall) for b in breakers]
    for b, s in zip(breakers, syncs, strict=True):
        b.on_transition = s.noted
    breakers[0].acquire().record(Outcome("response", 503))  # replica 0 trips
    await syncs[0].sync_once()
    await syncs[1].sync_once()
    assert breakers[1].current == "open"  # replica 1 followed
    clock.advance(1.5)  # recovery over on both
    for s in syncs:
        await s.sync_once()
    gates = [b.probe_gate for b in breakers]
    assert sorted(gates) == [False, True]  # one lease between them
    prober, waiter = (breakers[0], breakers[1]) if gates[0] else (breakers[1], breakers[0])
    permit = prober.acquire()  # the half-open probe
    with pytest.raises(BreakerOpen) as refused:
        waiter.acquire()
    assert refused.value.retry_after == 1.0
    permit.record(Outcome("response", 200))
    assert prober.current == "closed"
    for s in syncs:
        await s.sync_once()
    assert waiter.current == "closed"  # the probe's success reached the other replica
