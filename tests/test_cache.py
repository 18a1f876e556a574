"""The response cache through the real gateway, against real loopback upstreams.

Time inside the cache is a fake clock the test moves (``FakeClock``), so ttl and stale windows are
exercised without sleeping; upstream slowness is real.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from .support import FakeClock, RunningGateway, Upstream, free_port, gateway_yaml, sample

pytestmark = pytest.mark.timeout(60)

USERS = {"Bearer tok-alice-SECRET": "alice", "Bearer tok-bob-SECRET": "bob"}


class Script:
    """An upstream whose answer the test changes as it goes."""

    def __init__(self) -> None:
        self.status = 200
        self.headers: dict[str, str] = {}
        self.delay = 0.0
        self.body: Callable[[web.BaseRequest], bytes] = lambda r: f"v{self.version}".encode()
        self.version = 1

    async def __call__(self, request: web.BaseRequest, up: Upstream) -> web.StreamResponse:
        if self.delay:
            await asyncio.sleep(self.delay)
        return web.Response(status=self.status, body=self.body(request), headers=self.headers)


async def start(
    upstream_factory: Callable[..., Awaitable[Upstream]],
    gateway_factory: Callable[[str], Awaitable[RunningGateway]],
    routes: str,
    *,
    upstream_extra: str = "",
    extra: str = "",
    script: Script | None = None,
) -> tuple[RunningGateway, Upstream, Script, FakeClock]:
    script = script or Script()
    up = await upstream_factory(script)
    block = f"url: {up.url}\nkind: supabase\n{upstream_extra}\nroutes:\n{routes}"
    gw = await gateway_factory(gateway_yaml({"supabase": block}, extra))
    clock = FakeClock(1_000_000.0)
    gw.gateway.state.cache.clock = clock
    return gw, up, script, clock


async def get(gw: RunningGateway, path: str, **headers: str) -> tuple[int, bytes, Any]:
    async with gw.session.get(gw.url + path, headers=headers) as resp:
        return resp.status, await resp.read(), resp.headers


READ = """\
  - name: read
    match: {methods: [GET], path: "/rest/v1/{table}"}
    cache: {ttl: 5m, vary: [authorization]}
"""


# ---------------------------------------------------------------- hits, misses, headers


async def test_a_second_get_is_a_hit_with_age_and_reaches_the_upstream_once(upstream_factory, gateway_factory):
    gw, up, script, clock = await start(upstream_factory, gateway_factory, READ)
    status, body, headers = await get(gw, "/supabase/rest/v1/bots?select=*")
    assert (status, body, headers["x-gateway-cache"]) == (200, b"v1", "MISS")
    assert "Age" not in headers
    clock.advance(42)
    script.version = 2
    status, body, headers = await get(gw, "/supabase/rest/v1/bots?select=*")
    assert (status, body, headers["x-gateway-cache"], headers["Age"]) == (200, b"v1", "HIT", "42")
    assert headers["x-gateway-attempts"] == "0" and headers["x-gateway-upstream"] == "supabase"
    assert headers["x-request-id"]
    assert up.count == 1
    _, body, headers = await get(gw, "/supabase/rest/v1/bots?select=id")  # another query: another key
    assert (body, headers["x-gateway-cache"]) == (b"v2", "MISS")


async def test_head_is_answered_from_the_get_entry(upstream_factory, gateway_factory):
    gw, up, *_ = await start(upstream_factory, gateway_factory, READ)
    await get(gw, "/supabase/rest/v1/bots")
    async with gw.session.head(gw.url + "/supabase/rest/v1/bots") as resp:
        assert resp.status == 200
        assert resp.headers["x-gateway-cache"] == "HIT"
        assert resp.headers["Content-Length"] == "2"
        assert await resp.read() == b""
    assert up.count == 1
    async with gw.session.head(gw.url + "/supabase/rest/v1/other") as resp:  # a HEAD miss: forwarded, not stored
        assert (resp.status, resp.headers["x-gateway-cache"]) == (200, "MISS")
    assert [s.method for s in up.seen] == ["GET", "HEAD"]
    assert gw.gateway.state.cache.store.stats().entries == 1


async def test_client_no_cache_refetches_and_stores_no_store_bypasses(upstream_factory, gateway_factory):
    gw, up, script, _clock = await start(upstream_factory, gateway_factory, READ)
    await get(gw, "/supabase/rest/v1/bots")
    script.version = 2
    _, body, headers = await get(gw, "/supabase/rest/v1/bots", **{"Cache-Control": "no-cache"})
    assert (body, headers["x-gateway-cache"]) == (b"v2", "REVALIDATED")
    _, body, headers = await get(gw, "/supabase/rest/v1/bots")
    assert (body, headers["x-gateway-cache"]) == (b"v2", "HIT")  # the revalidated answer was stored
    script.version = 3
    _, body, headers = await get(gw, "/supabase/rest/v1/bots", **{"Cache-Control": "no-store"})
    assert (body, headers["x-gateway-cache"]) == (b"v3", "BYPASS")
    _, body, _ = await get(gw, "/supabase/rest/v1/bots")
    assert body == b"v2"  # the bypassing answer was not stored
    assert up.count == 3


async def test_writes_on_a_cacheable_route_say_bypass_and_uncached_routes_say_nothing(
    upstream_factory, gateway_factory
):
    routes = READ.replace("methods: [GET]", "methods: [GET, POST]")
    gw, *_ = await start(upstream_factory, gateway_factory, routes)
    async with gw.session.post(gw.url + "/supabase/rest/v1/bots", data=b"{}") as resp:
        assert resp.headers["x-gateway-cache"] == "BYPASS"
    async with gw.session.get(gw.url + "/supabase/auth/v1/user") as resp:
        assert "x-gateway-cache" not in resp.headers


# ---------------------------------------------------------------- per-user keys, secrets


async def test_each_user_gets_their_own_answer_even_interleaved(upstream_factory, gateway_factory):
    script = Script()
    script.body = lambda r: f"profile of {USERS[r.headers['Authorization']]}".encode()
    script.delay = 0.01
    gw, up, *_ = await start(upstream_factory, gateway_factory, READ, script=script)

    async def one(i: int) -> None:
        token = list(USERS)[i % 2]
        status, body, _ = await get(gw, "/supabase/rest/v1/profile", Authorization=token)
        assert (status, body) == (200, f"profile of {USERS[token]}".encode())

    for _ in range(2):  # a cold round (misses and collapsing), then a warm one (hits)
        await asyncio.gather(*(one(i) for i in range(50)))
    assert up.count == 2  # one fill per user


async def test_the_store_holds_no_request_header_value_in_clear(upstream_factory, gateway_factory):
    routes = """\
  - name: read
    match: {methods: [GET], path: "/rest/v1/{table}"}
    cache: {ttl: 5m, vary: [authorization, apikey, accept-profile]}
"""
    script = Script()
    script.headers = {"Vary": "Accept, Prefer, Range"}
    gw, *_ = await start(upstream_factory, gateway_factory, routes, script=script)
    secrets = ["tok-alice-SECRET", "apikey-SECRET-123", "tenant-SECRET", "prefer-SECRET", "range-SECRET"]
    await get(
        gw,
        "/supabase/rest/v1/t",
        Authorization="Bearer tok-alice-SECRET",
        apikey="apikey-SECRET-123",
        **{"Accept-Profile": "tenant-SECRET", "Prefer": "prefer-SECRET", "Range": "range-SECRET"},
    )
    store = gw.gateway.state.cache.store
    raw = [(k, e.to_bytes()) for k, e in store.raw()] + [(k, repr(v).encode()) for k, v in store.vary_records()]
    assert len(raw) == 2
    for key, value in raw:
        for secret in secrets:
            assert secret not in key and secret.encode() not in value
        assert hashlib.sha256(b"Bearer tok-alice-SECRET").hexdigest() not in key  # not a bare digest either


# ---------------------------------------------------------------- Vary and storage rules


async def test_the_upstreams_vary_keeps_one_entry_per_range(upstream_factory, gateway_factory):
    script = Script()
    script.headers = {"Vary": "Accept, Prefer, Range"}
    script.body = lambda r: f"rows {r.headers.get('Range', 'all')}".encode()
    gw, up, *_ = await start(upstream_factory, gateway_factory, READ, script=script)
    for _ in range(2):
        for rng in ("0-9", "10-19"):
            _, body, _ = await get(gw, "/supabase/rest/v1/t", Range=rng)
            assert body == f"rows {rng}".encode()
    assert up.count == 2
    assert gw.gateway.state.cache.store.stats().entries == 2


async def test_vary_star_is_never_stored(upstream_factory, gateway_factory):
    script = Script()
    script.headers = {"Vary": "*"}
    gw, up, *_ = await start(upstream_factory, gateway_factory, READ, script=script)
    for _ in range(3):
        await get(gw, "/supabase/rest/v1/t")
    assert up.count == 3 and gw.gateway.state.cache.store.stats().entries == 0


@pytest.mark.parametrize(
    ("status", "headers"),
    [
        (200, {"Cache-Control": "no-store"}),
        (200, {"Cache-Control": "private"}),
        (200, {"Set-Cookie": "session=abc"}),
        (500, {}),
    ],
    ids=["no-store", "private", "set-cookie", "500"],
)
async def test_answers_that_are_never_cached(upstream_factory, gateway_factory, status, headers):
    routes = READ.replace("vary: [authorization]", "vary: [apikey]")  # private needs authorization in vary
    script = Script()
    script.status, script.headers = status, headers
    gw, up, *_ = await start(upstream_factory, gateway_factory, routes, script=script)
    for _ in range(3):
        got, _, resp_headers = await get(gw, "/supabase/rest/v1/t")
        assert got == status and resp_headers["x-gateway-cache"] == "MISS"
    assert up.count == 3
    assert gw.gateway.state.cache.store.stats().entries == 0


async def test_private_is_stored_when_authorization_is_in_vary(upstream_factory, gateway_factory):
    script = Script()
    script.headers = {"Cache-Control": "private"}
    gw, up, *_ = await start(upstream_factory, gateway_factory, READ, script=script)
    for _ in range(2):
        await get(gw, "/supabase/rest/v1/t", Authorization="Bearer tok-alice-SECRET")
    assert up.count == 1


async def test_an_upstream_max_age_shorter_than_ttl_wins(upstream_factory, gateway_factory):
    script = Script()
    script.headers = {"Cache-Control": "max-age=1"}
    gw, up, _, clock = await start(upstream_factory, gateway_factory, READ, script=script)
    await get(gw, "/supabase/rest/v1/t")
    clock.advance(0.5)
    assert (await get(gw, "/supabase/rest/v1/t"))[2]["x-gateway-cache"] == "HIT"
    clock.advance(1)
    assert (await get(gw, "/supabase/rest/v1/t"))[2]["x-gateway-cache"] == "MISS"
    assert up.count == 2


async def test_a_body_over_max_entry_bytes_streams_and_is_not_stored(upstream_factory, gateway_factory):
    script = Script()
    script.body = lambda r: b"z" * 300_000
    gw, up, *_ = await start(
        upstream_factory,
        gateway_factory,
        READ,
        script=script,
        extra="cache_store: {type: memory, max_entry_bytes: 100KiB}",
    )
    for _ in range(2):
        status, body, headers = await get(gw, "/supabase/rest/v1/big")
        assert (status, len(body), headers["x-gateway-cache"]) == (200, 300_000, "MISS")
    assert up.count == 2


# ---------------------------------------------------------------- collapsing


async def test_twenty_concurrent_gets_on_a_cold_key_reach_the_upstream_once(upstream_factory, gateway_factory):
    script = Script()
    script.delay = 0.3
    gw, up, *_ = await start(upstream_factory, gateway_factory, READ, script=script)
    results = await asyncio.gather(*(get(gw, "/supabase/rest/v1/cold") for _ in range(20)))
    assert {(s, b) for s, b, _ in results} == {(200, b"v1")}
    assert sorted(h["x-gateway-cache"] for _, _, h in results) == ["MISS"] * 20
    assert up.count == 1
    snap = gw.gateway.state.cache.snapshot()["upstreams"]["supabase"]
    assert (snap["misses"], snap["collapsed"]) == (1, 19)


async def test_waiters_get_the_leaders_failure_and_the_next_request_tries_again(upstream_factory, gateway_factory):
    script = Script()
    script.delay, script.status = 0.3, 503
    script.body = lambda r: b'{"code":"XX000","message":"boom"}'
    gw, up, *_ = await start(
        upstream_factory, gateway_factory, READ, script=script, upstream_extra="retry: {attempts: 1}"
    )
    results = await asyncio.gather(*(get(gw, "/supabase/rest/v1/t") for _ in range(10)))
    assert {(s, b) for s, b, _ in results} == {(503, b'{"code":"XX000","message":"boom"}')}
    assert up.count == 1
    script.status, script.delay, script.body = 200, 0, Script().body
    status, body, headers = await get(gw, "/supabase/rest/v1/t")
    assert (status, body, headers["x-gateway-cache"]) == (200, b"v1", "MISS")
    assert up.count == 2


async def test_waiters_with_another_vary_value_fetch_their_own(upstream_factory, gateway_factory):
    script = Script()
    script.delay = 0.2
    script.headers = {"Vary": "Range"}
    script.body = lambda r: f"rows {r.headers.get('Range')}".encode()
    gw, up, *_ = await start(upstream_factory, gateway_factory, READ, script=script)
    first, second = await asyncio.gather(
        get(gw, "/supabase/rest/v1/t", Range="0-9"), get(gw, "/supabase/rest/v1/t", Range="10-19")
    )
    assert (first[1], second[1]) == (b"rows 0-9", b"rows 10-19")
    assert up.count == 2


# ---------------------------------------------------------------- stale_if_error

STALE_READ = """\
  - name: read
    match: {methods: [GET], path: "/rest/v1/{table}"}
    cache: {ttl: 1m, vary: [authorization], stale_if_error: 10m}
"""


@pytest.mark.parametrize("failure", ["503", "timeout", "closed port"])
async def test_stale_if_error_serves_the_old_answer_within_the_window_only(upstream_factory, gateway_factory, failure):
    script = Script()
    gw, up, _, clock = await start(
        upstream_factory,
        gateway_factory,
        STALE_READ,
        script=script,
        upstream_extra="retry: {attempts: 1}\ntimeouts: {per_try: 300ms, total: 2s}",
    )
    await get(gw, "/supabase/rest/v1/t")
    if failure == "503":
        script.status = 503
        script.body = lambda r: b'{"code":"PGRST002","message":"schema cache"}'
    elif failure == "timeout":
        script.delay = 2
    else:
        await up.close()
    clock.advance(60 + 5 * 60)  # expired, inside ttl + stale_if_error
    status, body, headers = await get(gw, "/supabase/rest/v1/t")
    assert (status, body, headers["x-gateway-cache"]) == (200, b"v1", "STALE")
    assert int(headers["Age"]) == 360
    clock.advance(5 * 60)  # past ttl + stale_if_error
    status, body, headers = await get(gw, "/supabase/rest/v1/t")
    expected = {"503": 503, "timeout": 504, "closed port": 502}[failure]
    assert status == expected
    assert headers["x-gateway-cache"] == "MISS"
    if failure == "503":
        assert body == b'{"code":"PGRST002","message":"schema cache"}'  # the real upstream error
    else:
        assert json.loads(body)["code"] in ("upstream_timeout", "upstream_unreachable")


async def test_an_open_breaker_is_answered_stale(upstream_factory, gateway_factory):
    gw, up, _script, clock = await start(
        upstream_factory,
        gateway_factory,
        STALE_READ,
        upstream_extra="breaker: {failure_threshold: 2, recovery: 1m}\nretry: {attempts: 1}",
    )
    await get(gw, "/supabase/rest/v1/t")
    gw.gateway.state.runtime.breakers()["supabase"].force_open()
    clock.advance(120)
    status, body, headers = await get(gw, "/supabase/rest/v1/t")
    assert (status, body, headers["x-gateway-cache"]) == (200, b"v1", "STALE")
    status, body, headers = await get(gw, "/supabase/rest/v1/never-cached")
    assert status == 503 and json.loads(body)["code"] == "breaker_open"  # PostgREST shape
    assert up.count == 1


async def test_failures_outside_failure_on_are_not_hidden(upstream_factory, gateway_factory):
    script = Script()
    gw, _up, _, clock = await start(
        upstream_factory, gateway_factory, STALE_READ, script=script, upstream_extra="retry: {attempts: 1}"
    )
    await get(gw, "/supabase/rest/v1/t")
    clock.advance(120)
    script.status = 401  # the user's token expired: they must see it
    status, _, headers = await get(gw, "/supabase/rest/v1/t")
    assert (status, headers["x-gateway-cache"]) == (401, "MISS")


# ---------------------------------------------------------------- stale_while_revalidate


async def test_stale_while_revalidate_answers_at_once_and_refreshes_once(upstream_factory, gateway_factory):
    routes = """\
  - name: read
    match: {methods: [GET], path: "/rest/v1/{table}"}
    cache: {ttl: 1m, stale_while_revalidate: 30s}
"""
    gw, up, script, clock = await start(upstream_factory, gateway_factory, routes)
    await get(gw, "/supabase/rest/v1/t")
    script.delay, script.version = 1.0, 2
    clock.advance(70)
    for _ in range(5):
        began = time.monotonic()
        status, body, headers = await get(gw, "/supabase/rest/v1/t")
        assert time.monotonic() - began < 0.05
        assert (status, body, headers["x-gateway-cache"]) == (200, b"v1", "STALE")
    await asyncio.sleep(1.5)
    assert up.count == 2  # the fill, and exactly one refresh
    status, body, headers = await get(gw, "/supabase/rest/v1/t")
    assert (body, headers["x-gateway-cache"], headers["Age"]) == (b"v2", "HIT", "0")


# ---------------------------------------------------------------- invalidation


def live_paths(store: Any) -> list[str]:
    """The paths of the entries a write has not invalidated (soft-purged entries stay, marked)."""
    return sorted(e.path for _, e in store.raw() if not e.invalidated)


WRITES = """\
  - name: read
    match: {methods: [GET], path: "/rest/v1/{table}"}
    cache: {ttl: 5m, vary: [authorization]}
  - name: writes
    match: {methods: [POST, PATCH, PUT, DELETE], path: "/rest/v1/{table}"}
    invalidates: ["/rest/v1/{table}"]
"""


async def test_a_2xx_write_purges_its_tables_entries_and_a_4xx_purges_nothing(upstream_factory, gateway_factory):
    script = Script()
    gw, _up, *_ = await start(upstream_factory, gateway_factory, WRITES, script=script)
    paths = [
        "/supabase/rest/v1/conversations?id=eq.5",
        "/supabase/rest/v1/conversations?select=*&order=updated_at.desc",
        "/supabase/rest/v1/messages?conversation_id=eq.5",
    ]
    for path in paths:
        await get(gw, path)
    store = gw.gateway.state.cache.store
    assert store.stats().entries == 3
    script.status = 409
    async with gw.session.patch(gw.url + "/supabase/rest/v1/conversations?id=eq.5", data=b"{}") as resp:
        assert resp.status == 409
    assert store.stats().entries == 3
    script.status = 204
    async with gw.session.patch(gw.url + "/supabase/rest/v1/conversations?id=eq.5", data=b"{}") as resp:
        assert resp.status == 204
    assert live_paths(store) == ["/rest/v1/messages"]
    script.status, script.version = 200, 2
    _, body, headers = await get(gw, paths[1])
    assert (body, headers["x-gateway-cache"]) == (b"v2", "MISS")


async def test_invalidates_fills_parameters_and_every_write_purges_its_own_path(upstream_factory, gateway_factory):
    routes = """\
  - name: one
    match: {methods: [GET], path: "/rest/v1/{table}/**"}
    cache: {ttl: 5m}
  - name: list
    match: {methods: [GET], path: "/rest/v1/{table}"}
    cache: {ttl: 5m}
  - name: rpc
    match: {methods: [POST], path: "/rest/v1/rpc/archive_{table}"}
    invalidates: ["/rest/v1/{table}", "/rest/v1/{table}/**"]
"""
    gw, _up, _script, _ = await start(upstream_factory, gateway_factory, routes)
    for path in ("/rest/v1/conversations", "/rest/v1/conversations/5", "/rest/v1/messages", "/rest/v1/other"):
        await get(gw, "/supabase" + path)
    store = gw.gateway.state.cache.store
    async with gw.session.post(gw.url + "/supabase/rest/v1/rpc/archive_conversations", data=b"{}") as resp:
        assert resp.status == 200
    assert live_paths(store) == ["/rest/v1/messages", "/rest/v1/other"]
    async with gw.session.delete(gw.url + "/supabase/rest/v1/other?id=eq.1") as resp:  # no route: own path only
        assert resp.status == 200
    assert live_paths(store) == ["/rest/v1/messages"]


async def test_a_fill_overtaken_by_a_write_is_not_stored(upstream_factory, gateway_factory):
    script = Script()

    async def slow_reads(request: web.BaseRequest, up: Upstream) -> web.StreamResponse:
        if request.method == "GET":
            await asyncio.sleep(0.4)
        return web.Response(body=b"old" if request.method == "GET" else b"")

    gw, up, *_ = await start(upstream_factory, gateway_factory, WRITES, script=script)
    up.script = slow_reads
    read = asyncio.create_task(get(gw, "/supabase/rest/v1/conversations"))
    await asyncio.sleep(0.1)
    async with gw.session.patch(gw.url + "/supabase/rest/v1/conversations?id=eq.1", data=b"{}") as resp:
        assert resp.status == 200
    assert (await read)[1] == b"old"  # the reader gets what it asked for...
    assert gw.gateway.state.cache.store.stats().entries == 0  # ...but it is not kept


SOFT = """\
  - name: read
    match: {methods: [GET], path: "/rest/v1/{table}"}
    cache: {ttl: 5m, stale_if_error: 10m}
  - name: writes
    match: {methods: [PATCH], path: "/rest/v1/{table}"}
    invalidates: ["/rest/v1/{table}"]
"""


async def test_after_a_write_the_next_read_goes_upstream_for_the_new_data(upstream_factory, gateway_factory):
    gw, up, script, _clock = await start(upstream_factory, gateway_factory, SOFT)
    path = "/supabase/rest/v1/conversations?select=*"
    assert (await get(gw, path))[2]["x-gateway-cache"] == "MISS"
    assert (await get(gw, path))[2]["x-gateway-cache"] == "HIT"
    assert up.count == 1
    script.version = 2
    async with gw.session.patch(gw.url + "/supabase/rest/v1/conversations?id=eq.5", data=b"{}") as resp:
        assert resp.status == 200
    assert up.count == 2
    status, body, headers = await get(gw, path)
    assert (status, body, headers["x-gateway-cache"]) == (200, b"v2", "MISS")
    assert "x-gateway-stale" not in headers
    assert up.count == 3
    status, body, headers = await get(gw, path)  # stored again, without the mark
    assert (status, body, headers["x-gateway-cache"]) == (200, b"v2", "HIT")
    assert up.count == 3


async def test_an_invalidated_entry_is_served_stale_when_the_next_read_fails(upstream_factory, gateway_factory):
    gw, up, script, _clock = await start(upstream_factory, gateway_factory, SOFT)
    path = "/supabase/rest/v1/conversations?select=*"
    await get(gw, path)
    async with gw.session.patch(gw.url + "/supabase/rest/v1/conversations?id=eq.5", data=b"{}") as resp:
        assert resp.status == 200
    script.status, script.version = 503, 2  # the database goes away right after the write
    status, body, headers = await get(gw, path)
    assert (status, body, headers["x-gateway-cache"], headers["x-gateway-stale"]) == (
        200,
        b"v1",
        "STALE",
        "invalidated",
    )
    assert up.count >= 3  # the read went upstream (with its retries) before falling back
    async with gw.session.get(gw.admin + "/admin/cache") as resp:
        counts = (await resp.json())["upstreams"]["supabase"]
    assert (counts["invalidated"], counts["stale_served"]) == (1, 1)


async def test_hard_invalidation_deletes_and_the_failing_read_gets_the_upstreams_error(
    upstream_factory, gateway_factory
):
    hard = SOFT.replace("invalidates: [", "invalidation: hard\n    invalidates: [")
    gw, _up, script, _clock = await start(upstream_factory, gateway_factory, hard)
    path = "/supabase/rest/v1/conversations?select=*"
    await get(gw, path)
    async with gw.session.patch(gw.url + "/supabase/rest/v1/conversations?id=eq.5", data=b"{}") as resp:
        assert resp.status == 200
    assert gw.gateway.state.cache.store.stats().entries == 0
    script.status = 503
    status, body, headers = await get(gw, path)
    assert (status, body, headers["x-gateway-cache"]) == (503, b"v1", "MISS")
    assert "x-gateway-stale" not in headers


async def test_an_invalidated_entry_is_never_served_while_revalidating(upstream_factory, gateway_factory):
    routes = SOFT.replace("stale_if_error: 10m", "stale_if_error: 10m, stale_while_revalidate: 10m")
    gw, up, script, clock = await start(upstream_factory, gateway_factory, routes)
    path = "/supabase/rest/v1/conversations"
    await get(gw, path)
    async with gw.session.patch(gw.url + path + "?id=eq.5", data=b"{}") as resp:
        assert resp.status == 200
    clock.advance(301)  # expired, inside the revalidate window: would be STALE at once without the write
    script.version = 2
    status, body, headers = await get(gw, path)
    assert (status, body, headers["x-gateway-cache"]) == (200, b"v2", "MISS")
    assert up.count == 3


# ---------------------------------------------------------------- admin and metrics


async def test_admin_cache_reports_and_purges(upstream_factory, gateway_factory):
    gw, _up, *_ = await start(upstream_factory, gateway_factory, READ)
    for path in ("/rest/v1/a", "/rest/v1/b", "/rest/v1/a"):
        await get(gw, "/supabase" + path)
    async with gw.session.get(gw.admin + "/admin/cache") as resp:
        snap = await resp.json()
    assert snap["store"] == "memory" and snap["entries"] == 2 and snap["bytes"] > 4
    assert snap["upstreams"]["supabase"] | {"bytes": 0} == {
        "entries": 2,
        "bytes": 0,
        "hits": 1,
        "misses": 2,
        "stale_served": 0,
        "collapsed": 0,
        "bypassed": 0,
        "refreshes": 0,
        "stored": 2,
        "invalidated": 0,
    }
    async with gw.session.post(gw.admin + "/admin/cache/purge", json={"path_prefix": "/supabase/rest/v1/a"}) as resp:
        assert (resp.status, (await resp.json())["deleted"]) == (200, 1)
    async with gw.session.post(gw.admin + "/admin/cache/purge", json={"upstream": "supabase"}) as resp:
        assert (await resp.json())["deleted"] == 1
    assert gw.gateway.state.cache.store.stats().entries == 0


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        (b"not json", 400, "must be JSON"),
        (b"[1]", 400, "JSON object"),
        (b'{"upstream": "supabase", "path": "/x"}', 400, "unknown keys ['path']"),
        (b'{"path_prefix": "rest"}', 400, "starting with '/'"),
        (b'{"upstream": "nope"}', 404, "no upstream named 'nope'"),
    ],
)
async def test_bad_purge_requests_are_refused_and_delete_nothing(upstream_factory, gateway_factory, body, status, says):
    gw, *_ = await start(upstream_factory, gateway_factory, READ)
    await get(gw, "/supabase/rest/v1/a")
    async with gw.session.post(gw.admin + "/admin/cache/purge", data=body) as resp:
        assert resp.status == status
        assert says in (await resp.json())["error"]["message"]
    assert gw.gateway.state.cache.store.stats().entries == 1


async def test_cache_metrics(upstream_factory, gateway_factory):
    gw, *_ = await start(upstream_factory, gateway_factory, READ)
    await get(gw, "/supabase/rest/v1/a")
    await get(gw, "/supabase/rest/v1/a")
    assert sample(gw.registry, "gateway_cache_requests_total", result="miss", route="read", upstream="supabase") == 1.0
    assert sample(gw.registry, "gateway_cache_requests_total", result="hit", route="read", upstream="supabase") == 1.0
    assert sample(gw.registry, "gateway_cache_entries") == 1.0
    assert (sample(gw.registry, "gateway_cache_bytes") or 0.0) > 0
    answered = {"method": "GET", "route": "read", "status": "200", "upstream": "supabase"}
    assert sample(gw.registry, "gateway_requests_total", source="cache", **answered) == 1.0


async def test_a_reload_keeps_the_cache_unless_the_url_changed(upstream_factory, gateway_factory, tmp_path):
    up = await upstream_factory(Script())
    other = await upstream_factory(Script())
    path = tmp_path / "gateway.yaml"

    def write(url: str) -> None:
        path.write_text(gateway_yaml({"supabase": f"url: {url}\nroutes:\n{READ}"}))

    write(up.url)
    gw = await gateway_factory(path.read_text())
    gw.gateway.path = str(path)
    await get(gw, "/supabase/rest/v1/a")
    path.write_text(path.read_text().replace("ttl: 5m", "ttl: 6m"))
    assert (await gw.gateway.reload("test"))[0]
    assert (await get(gw, "/supabase/rest/v1/a"))[2]["x-gateway-cache"] == "HIT"
    write(other.url)
    assert (await gw.gateway.reload("test"))[0]
    assert (await get(gw, "/supabase/rest/v1/a"))[2]["x-gateway-cache"] == "MISS"
    assert (up.count, other.count) == (1, 1)


async def test_no_upstream_at_all_is_an_error_not_a_cached_answer(gateway_factory):
    port = free_port()
    gw = await gateway_factory(gateway_yaml({"supabase": f"url: http://127.0.0.1:{port}\nroutes:\n{READ}"}))
    status, body, headers = await get(gw, "/supabase/rest/v1/a")
    assert (status, json.loads(body)["error"]["code"], headers["x-gateway-cache"]) == (
        502,
        "upstream_unreachable",
        "MISS",
    )


async def test_cache_hits_are_logged_with_their_result(upstream_factory, gateway_factory, caplog):
    gw, *_ = await start(upstream_factory, gateway_factory, READ)
    with caplog.at_level("INFO", logger="gateway.access"):
        await get(gw, "/supabase/rest/v1/a")
        await get(gw, "/supabase/rest/v1/a")
    caches = [getattr(r, "fields", {}).get("cache") for r in caplog.records if r.name == "gateway.access"]
    assert caches[-2:] == ["MISS", "HIT"]


_: Any = aiohttp  # the session type used through RunningGateway


async def test_misses_on_a_key_whose_answer_cannot_be_shared_stop_queueing(upstream_factory, gateway_factory):
    arrivals: list[float] = []

    async def no_store(request: web.BaseRequest, up: Upstream) -> web.StreamResponse:
        arrivals.append(time.monotonic())
        await asyncio.sleep(0.3)
        return web.Response(text="private", headers={"Cache-Control": "no-store"})

    gw, up, *_ = await start(upstream_factory, gateway_factory, READ)
    up.script = no_store
    await asyncio.gather(*(get(gw, "/supabase/rest/v1/t") for _ in range(5)))  # learns: not shareable
    assert up.count == 5  # the leader, then each waiter on its own
    arrivals.clear()
    results = await asyncio.gather(*(get(gw, "/supabase/rest/v1/t") for _ in range(5)))
    assert {(s, b) for s, b, _ in results} == {(200, b"private")}
    assert max(arrivals) - min(arrivals) < 0.2  # all went upstream at once, none waited for another
