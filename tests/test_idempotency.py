"""Idempotency keys (contract §2 ``idempotency``): a repeated send gets the first answer, never a second send.

The upstream is a real aiohttp server on 127.0.0.1 answering in Meta's shapes with scripted faults;
the gateway is the real app (in this process, or two real processes sharing a real redis-server).
Each test counts what the upstream received: that is what a customer's phone would show.
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
from multidict import CIMultiDict

from gateway.config import IdempotencySpec, RetrySpec
from gateway.errors import BadRequest, IdempotencyConflict, UpstreamReset
from gateway.idempotency import FLIGHT_SLACK, Keeper, MemoryStore, read_key
from gateway.retry import RetryBudget, RetryPolicy

from .support import FakeClock, RedisServer, RunningGateway, Upstream, free_port, gateway_yaml, sample

pytestmark = pytest.mark.timeout(60)

SEND = "/graph/v21.0/1234/messages"
TOKEN = "Bearer wa-token-SECRET"
MESSAGE = {"messaging_product": "whatsapp", "to": "15551230001", "type": "text", "text": {"body": "hello"}}


def graph_yaml(url: str, idempotency: str = "{ttl: 1h}", extra: str = "", retry: str = "") -> str:
    retry = retry or '{on: [connect-failure, 429, "code:131056", "code:130429"], attempts: 1}'
    return gateway_yaml(
        {
            "graph": f"""
                url: {url}
                kind: graph
                timeouts: {{per_try: 3s, total: 5s}}
                routes:
                  - name: send_message
                    match: {{methods: [POST], path: "/{{version}}/{{phone_id}}/messages"}}
                    retry: {retry}
                    idempotency: {idempotency}
                  - name: media
                    match: {{methods: [GET], path: "/{{version}}/{{media_id}}"}}
                    cache: {{ttl: 1m}}
            """
        },
        extra=extra,
    )


def meta_error(code: int, status: int = 400) -> web.Response:
    body = {"error": {"message": f"(#{code}) error", "type": "OAuthException", "code": code, "fbtrace_id": "x"}}
    return web.json_response(body, status=status)


async def accepted(request: web.BaseRequest, up: Upstream) -> web.StreamResponse:
    return web.json_response({"messaging_product": "whatsapp", "messages": [{"id": f"wamid.{up.count}"}]})


async def send(
    session: aiohttp.ClientSession,
    base: str,
    key: str | None = "key-1",
    body: dict[str, Any] | bytes = MESSAGE,
    auth: str = TOKEN,
    timeout: float = 10.0,
) -> tuple[int, bytes, Any]:
    headers = {"Authorization": auth, "Content-Type": "application/json"}
    if key is not None:
        headers["Idempotency-Key"] = key
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with session.post(base + SEND, data=data, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout)) as r:
        return r.status, await r.read(), r.headers


Factory = Callable[..., Awaitable[Any]]


# --------------------------------------------------------------------------- one gateway, memory store


async def test_a_repeat_gets_the_first_answer_and_the_upstream_is_reached_once(upstream_factory, gateway_factory):
    up = await upstream_factory(accepted)
    gw: RunningGateway = await gateway_factory(graph_yaml(up.url))
    first = await send(gw.session, gw.url)
    again = await send(gw.session, gw.url)
    assert first[0] == again[0] == 200
    assert again[1] == first[1] == b'{"messaging_product": "whatsapp", "messages": [{"id": "wamid.1"}]}'
    assert "x-gateway-idempotency" not in first[2]
    assert again[2]["x-gateway-idempotency"] == "replayed"
    assert again[2]["x-gateway-attempts"] == "0"
    assert again[2]["Content-Type"].startswith("application/json")
    assert up.count == 1
    other = await send(gw.session, gw.url, key="key-2")  # another key: another message
    assert other[1] != first[1] and up.count == 2
    labels = {"route": "send_message", "upstream": "graph"}
    assert sample(gw.registry, "gateway_idempotency_total", result="new", **labels) == 2.0
    assert sample(gw.registry, "gateway_idempotency_total", result="replayed", **labels) == 1.0


async def test_a_repeat_while_the_first_is_in_flight_gets_409_then_the_answer(upstream_factory, gateway_factory):
    async def slow(request: web.BaseRequest, up: Upstream) -> web.StreamResponse:
        await asyncio.sleep(1.0)
        return await accepted(request, up)

    up = await upstream_factory(slow)
    gw = await gateway_factory(graph_yaml(up.url))
    first = asyncio.create_task(send(gw.session, gw.url))
    await asyncio.sleep(0.3)
    status, body, headers = await send(gw.session, gw.url)
    assert status == 409
    assert headers["x-gateway-error"] == "idempotency_conflict"
    assert headers["Retry-After"] == "1"
    assert "in flight" in json.loads(body)["error"]["message"]
    assert (await first)[0] == 200
    status, body, headers = await send(gw.session, gw.url)
    assert (status, headers["x-gateway-idempotency"]) == (200, "replayed")
    assert up.count == 1


async def test_the_same_key_on_a_different_request_is_422(upstream_factory, gateway_factory):
    up = await upstream_factory(accepted)
    gw = await gateway_factory(graph_yaml(up.url))
    assert (await send(gw.session, gw.url))[0] == 200
    status, body, headers = await send(gw.session, gw.url, body={**MESSAGE, "to": "15559999999"})
    assert (status, headers["x-gateway-error"]) == (422, "idempotency_mismatch")
    assert "another request" in json.loads(body)["error"]["message"]
    assert up.count == 1
    # the same body under another path is another request too
    async with gw.session.post(
        gw.url + "/graph/v21.0/9999/messages",
        json=MESSAGE,
        headers={"Authorization": TOKEN, "Idempotency-Key": "key-1"},
    ) as r:
        assert r.status == 422
    assert up.count == 1


async def test_a_lost_answer_is_replayed_as_that_failure_and_never_resent(upstream_factory, gateway_factory):
    """Meta read the send (and took the message), then the connection dropped: the outcome is unknown."""

    async def drop_after_reading(request: web.BaseRequest, up: Upstream) -> web.StreamResponse:
        assert request.transport is not None
        request.transport.close()
        return web.Response()

    up = await upstream_factory(drop_after_reading)
    gw = await gateway_factory(graph_yaml(up.url))
    status, body, headers = await send(gw.session, gw.url)
    assert (status, headers["x-gateway-error"]) == (502, "upstream_reset")
    for _ in range(3):  # the backend retries, as it would after a lost answer
        status, body, headers = await send(gw.session, gw.url)
        assert (status, headers["x-gateway-error"], headers["x-gateway-idempotency"]) == (
            502,
            "upstream_reset",
            "replayed",
        )
        message = json.loads(body)["error"]["message"]
        assert "outcome is unknown" in message and "does not send it again" in message
    assert up.count == 1


async def test_an_answer_the_client_did_not_wait_for_is_still_kept(upstream_factory, gateway_factory):
    """The backend's own timeout (0.5 s) fires before Meta answers (1 s): its retry gets that answer."""

    async def slow(request: web.BaseRequest, up: Upstream) -> web.StreamResponse:
        await asyncio.sleep(1.0)
        return await accepted(request, up)

    up = await upstream_factory(slow)
    gw = await gateway_factory(graph_yaml(up.url))
    with pytest.raises(TimeoutError):
        await send(gw.session, gw.url, timeout=0.5)
    await asyncio.sleep(1.0)
    status, body, headers = await send(gw.session, gw.url)
    assert (status, headers["x-gateway-idempotency"]) == (200, "replayed")
    assert json.loads(body)["messages"][0]["id"] == "wamid.1"
    assert up.count == 1


@pytest.mark.parametrize(
    "refusal",
    [meta_error(131056), meta_error(130429, 429), web.Response(status=429), web.Response(status=409)],
    ids=["code-131056", "code-130429", "http-429", "http-409"],
)
async def test_an_answer_that_says_not_processed_releases_the_key(upstream_factory, gateway_factory, refusal):
    async def refuse_first(request: web.BaseRequest, up: Upstream) -> web.StreamResponse:
        return refusal if up.count == 1 else await accepted(request, up)

    up = await upstream_factory(refuse_first)
    gw = await gateway_factory(graph_yaml(up.url))
    status, _, headers = await send(gw.session, gw.url)
    assert status == refusal.status and "x-gateway-idempotency" not in headers
    status, body, headers = await send(gw.session, gw.url)  # sent again: the first was not taken
    assert status == 200 and "x-gateway-idempotency" not in headers
    status, again, headers = await send(gw.session, gw.url)
    assert (status, again, headers["x-gateway-idempotency"]) == (200, body, "replayed")
    assert up.count == 2


async def test_an_answer_after_processing_is_kept_even_when_it_is_an_error(upstream_factory, gateway_factory):
    async def invalid(request: web.BaseRequest, up: Upstream) -> web.StreamResponse:
        return meta_error(131026)  # message undeliverable: Meta processed it and said no

    up = await upstream_factory(invalid)
    gw = await gateway_factory(graph_yaml(up.url))
    first = await send(gw.session, gw.url)
    again = await send(gw.session, gw.url)
    assert first[0] == again[0] == 400 and first[1] == again[1]
    assert again[2]["x-gateway-idempotency"] == "replayed"
    assert up.count == 1


async def test_a_5xx_answer_is_kept_and_replayed_as_an_unknown_outcome(upstream_factory, gateway_factory):
    async def broken(request: web.BaseRequest, up: Upstream) -> web.StreamResponse:
        return web.Response(status=500, text="internal")

    up = await upstream_factory(broken)
    gw = await gateway_factory(graph_yaml(up.url))
    first = await send(gw.session, gw.url)
    again = await send(gw.session, gw.url)
    assert (first[0], first[1]) == (again[0], again[1]) == (500, b"internal")
    assert again[2]["x-gateway-idempotency-outcome"] == "unknown"
    assert up.count == 1


async def test_a_connect_failure_releases_the_key(upstream_factory, gateway_factory):
    gw = await gateway_factory(graph_yaml(f"http://127.0.0.1:{free_port()}"))
    status, _, headers = await send(gw.session, gw.url)
    assert (status, headers["x-gateway-error"]) == (502, "upstream_unreachable")
    status, _, headers = await send(gw.session, gw.url)  # forwarded again, not replayed
    assert status == 502 and "x-gateway-idempotency" not in headers
    labels = {"route": "send_message", "upstream": "graph"}
    assert sample(gw.registry, "gateway_idempotency_total", result="released", **labels) == 2.0


async def test_a_refusal_of_the_gateway_releases_the_key(upstream_factory, gateway_factory):
    up = await upstream_factory(accepted)
    limited = graph_yaml(up.url).replace(
        "idempotency: {ttl: 1h}", "idempotency: {ttl: 1h}\n        rate_limit: {rate: 2/s, burst: 1, max_wait: 0s}"
    )
    gw = await gateway_factory(limited)
    assert (await send(gw.session, gw.url, key="a"))[0] == 200
    status, _, headers = await send(gw.session, gw.url, key="b")
    assert (status, headers["x-gateway-error"]) == (429, "rate_limited")
    await asyncio.sleep(0.6)
    status, _, headers = await send(gw.session, gw.url, key="b")
    assert status == 200 and "x-gateway-idempotency" not in headers
    assert up.count == 2


async def test_different_callers_with_the_same_key_are_separate(upstream_factory, gateway_factory):
    up = await upstream_factory(accepted)
    gw = await gateway_factory(graph_yaml(up.url))
    alice = await send(gw.session, gw.url, auth="Bearer alice")
    bob = await send(gw.session, gw.url, auth="Bearer bob")
    assert alice[0] == bob[0] == 200 and alice[1] != bob[1]
    assert "x-gateway-idempotency" not in bob[2]
    assert (await send(gw.session, gw.url, auth="Bearer bob"))[1] == bob[1]
    assert up.count == 2


async def test_key_rules(upstream_factory, gateway_factory):
    up = await upstream_factory(accepted)
    gw = await gateway_factory(graph_yaml(up.url, idempotency="{ttl: 1h, required: true}"))
    status, body, _ = await send(gw.session, gw.url, key=None)
    assert status == 400 and "needs an Idempotency-Key" in json.loads(body)["error"]["message"]
    for bad in ("", "two words", "x" * 256, 'a"b'):
        assert (await send(gw.session, gw.url, key=bad))[0] == 400, bad
    assert up.count == 0
    # the draft's sf-string and the bare token name the same key
    assert (await send(gw.session, gw.url, key='"abc-123"'))[0] == 200
    status, _, headers = await send(gw.session, gw.url, key="abc-123")
    assert (status, headers["x-gateway-idempotency"]) == (200, "replayed")
    async with gw.session.post(
        gw.url + SEND,
        json=MESSAGE,
        headers=[("Authorization", TOKEN), ("Idempotency-Key", "a"), ("Idempotency-Key", "b")],
    ) as r:
        assert r.status == 400
    assert up.count == 1


def test_read_key_accepts_sf_strings_and_tokens():
    assert read_key({"idempotency-key": '"8e03978e-40d5"'}, "idempotency-key") == "8e03978e-40d5"
    assert read_key({"idempotency-key": '"a\\"b"'}, "idempotency-key") == 'a"b'
    assert read_key({"idempotency-key": "tok_123"}, "idempotency-key") == "tok_123"
    assert read_key({}, "idempotency-key") is None
    with pytest.raises(BadRequest):
        read_key({"idempotency-key": '"unterminated'}, "idempotency-key")


async def test_a_body_the_gateway_cannot_hold_is_refused_with_a_key(upstream_factory, gateway_factory):
    up = await upstream_factory(accepted)
    gw = await gateway_factory(graph_yaml(up.url, retry="{attempts: 1, max_replay_body: 1KiB}"))
    status, body, _ = await send(gw.session, gw.url, body=b'{"to": "1", "pad": "' + b"x" * 4000 + b'"}')
    assert status == 400 and "max_replay_body" in json.loads(body)["error"]["message"]
    assert (await send(gw.session, gw.url, key=None, body=b"x" * 4000))[0] == 200  # no key: forwarded
    assert up.count == 1


async def test_an_answer_over_the_store_limit_goes_whole_to_the_first_and_is_never_resent(
    upstream_factory, gateway_factory
):
    big = b"y" * 5000

    async def large(request: web.BaseRequest, up: Upstream) -> web.StreamResponse:
        return web.Response(body=big, content_type="application/json")

    up = await upstream_factory(large)
    extra = "cache_store: {type: memory, max_entry_bytes: 1KiB}"
    gw = await gateway_factory(graph_yaml(up.url, extra=extra))
    status, body, _ = await send(gw.session, gw.url)
    assert (status, body) == (200, big)
    status, body, headers = await send(gw.session, gw.url)
    assert (status, body) == (200, b"")
    assert headers["x-gateway-idempotency"] == "replayed"
    assert headers["x-gateway-idempotency-body"] == "omitted"
    assert up.count == 1


# --------------------------------------------------------------------------- Redis: replicas and outages


@pytest.fixture
async def redis_pair(upstream_factory, gateway_process, redis_server: RedisServer) -> Any:
    up = await upstream_factory(accepted)
    extra = f'cache_store: {{type: redis, url: "{redis_server.url}", prefix: "idem:", timeout: 1s}}'
    text = graph_yaml(up.url, extra=extra)
    a, b = gateway_process(text), gateway_process(text)
    async with aiohttp.ClientSession() as session:
        yield session, a, b, up, redis_server, text


async def test_a_repeat_through_another_replica_is_replayed(redis_pair, gateway_process):
    session, a, b, up, redis, text = redis_pair
    first = await send(session, a.url)
    again = await send(session, b.url)
    assert first[0] == again[0] == 200 and again[1] == first[1]
    assert again[2]["x-gateway-idempotency"] == "replayed"
    assert up.count == 1
    a.stop()  # a restarted gateway still knows the key: it lives in Redis
    c = gateway_process(text)
    assert (await send(session, c.url))[1] == first[1]
    assert up.count == 1
    dump = b""
    for key in redis.command("KEYS", "*"):
        assert redis.command("TYPE", key) == b"hash"
        fields = redis.command("HGETALL", key)
        dump += key + b"".join(k + v for k, v in (fields.items() if isinstance(fields, dict) else []))
    assert b"key-1" not in dump and b"wa-token-SECRET" not in dump  # digests only
    assert b"wamid.1" in dump  # the kept answer


async def test_a_send_in_flight_through_one_replica_is_409_through_the_other(
    upstream_factory, gateway_process, redis_server: RedisServer
):
    async def slow(request: web.BaseRequest, up: Upstream) -> web.StreamResponse:
        await asyncio.sleep(1.5)
        return await accepted(request, up)

    up = await upstream_factory(slow)
    extra = f'cache_store: {{type: redis, url: "{redis_server.url}", prefix: "idem:", timeout: 1s}}'
    text = graph_yaml(up.url, extra=extra)
    a, b = gateway_process(text), gateway_process(text)
    async with aiohttp.ClientSession() as session:
        first = asyncio.create_task(send(session, a.url))
        await asyncio.sleep(0.5)
        status, _, headers = await send(session, b.url)
        assert (status, headers["x-gateway-error"]) == (409, "idempotency_conflict")
        assert (await first)[0] == 200
        assert (await send(session, b.url))[2]["x-gateway-idempotency"] == "replayed"
    assert up.count == 1


async def test_with_redis_down_the_memory_store_takes_over(redis_pair):
    session, a, b, up, redis, _ = redis_pair
    redis.kill()
    first = await send(session, a.url, key="during-outage")
    again = await send(session, a.url, key="during-outage")
    assert first[0] == again[0] == 200 and again[2]["x-gateway-idempotency"] == "replayed"
    assert up.count == 1
    # the cost: the other replica does not know this key while Redis is down
    other = await send(session, b.url, key="during-outage")
    assert other[0] == 200 and "x-gateway-idempotency" not in other[2]
    assert up.count == 2
    redis.start()  # back, empty: A still honours what it kept in memory
    end = time.monotonic() + 10
    while time.monotonic() < end:
        _status, _, _headers = await send(session, a.url, key=f"probe-{time.monotonic_ns()}")
        if redis.command("DBSIZE"):
            break
        await asyncio.sleep(0.2)
    assert redis.command("DBSIZE"), "A writes to Redis again"
    again = await send(session, a.url, key="during-outage")
    assert again[2]["x-gateway-idempotency"] == "replayed"


async def test_a_claim_whose_gateway_stopped_reads_as_an_unknown_outcome():
    """A replica that dies mid-send leaves its claim in flight: once the request's time is up, a
    repeat is told the outcome is unknown; it is never forwarded a second time."""
    clock = FakeClock(1000.0)
    store = MemoryStore(100, 1 << 20, 1024, clock=clock)
    retry = RetryPolicy(RetrySpec(), "graph", RetryBudget(0.2, 3, 10))
    keeper = Keeper(IdempotencySpec(), "graph", "send_message", store, retry, clock=clock)
    results: list[str] = []
    args = ("POST", "/v21.0/1/messages", CIMultiDict({"idempotency-key": "k"}), b"{}", 5.0, results.append)
    claim = await keeper.claim(*args)
    assert claim is not None and claim.replay is None  # ...and its gateway stops: nothing settles it
    with pytest.raises(IdempotencyConflict):
        await keeper.claim(*args)
    clock.advance(5.0 + FLIGHT_SLACK + 1)
    again = await keeper.claim(*args)
    assert again is not None and isinstance(again.replay, UpstreamReset)
    assert "stopped before recording its outcome" in again.replay.message
    assert results == ["new", "conflict", "replayed"]
