"""Rate limits keyed on the request (contract §2 ``rate_limit`` key ``body:`` / ``header:``, and lists).

Pacing per WhatsApp recipient is the case that matters: Meta refuses a second message to one user
inside its pair window (131056). The gateway under test is the real app; the upstream a real
server counting what it received and when.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from typing import Any

import pytest
from aiohttp import web

from gateway.config import RateLimitSpec
from gateway.errors import BadRequest, RateLimited
from gateway.ratelimit import NO_VALUE, RateLimiter, RequestKey, acquire_all

from .support import FakeClock, Upstream, gateway_yaml

pytestmark = pytest.mark.timeout(60)

PATH = "/graph/v21.0/1234/messages"


def paced(url: str, limits: str, retry: str = "{attempts: 1, max_replay_body: 1KiB}") -> str:
    return gateway_yaml(
        {
            "graph": f"""
                url: {url}
                kind: graph
                routes:
                  - name: send_message
                    match: {{methods: [POST], path: "/{{version}}/{{phone_id}}/messages"}}
                    retry: {retry}
                    rate_limit: {limits}
            """
        }
    )


async def post(gw: Any, body: bytes | dict[str, Any], headers: dict[str, str] | None = None) -> tuple[int, Any, float]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    began = time.monotonic()
    async with gw.session.post(gw.url + PATH, data=data, headers=headers or {}) as r:
        await r.read()
        return r.status, r.headers, time.monotonic() - began


def to(number: str) -> dict[str, Any]:
    return {"messaging_product": "whatsapp", "to": number, "type": "text", "text": {"body": "hi"}}


async def test_a_second_send_to_one_recipient_waits_and_another_recipient_passes(upstream_factory, gateway_factory):
    up = await upstream_factory()
    gw = await gateway_factory(paced(up.url, '{rate: 2/s, burst: 1, key: "body:/to", max_wait: 2s}'))
    first, second, other = await asyncio.gather(post(gw, to("111")), post(gw, to("111")), post(gw, to("222")))
    assert first[0] == second[0] == other[0] == 200
    assert max(first[2], second[2]) >= 0.4  # one of the two to 111 waited for the next token (0.5 s)
    assert min(first[2], second[2]) < 0.3 and other[2] < 0.3  # the other recipient did not wait
    assert up.count == 3


async def test_beyond_max_wait_the_send_is_refused_with_retry_after(upstream_factory, gateway_factory):
    up = await upstream_factory()
    gw = await gateway_factory(paced(up.url, '{rate: 10/m, burst: 1, key: "body:/to", max_wait: 0s}'))
    assert (await post(gw, to("111")))[0] == 200
    status, headers, _ = await post(gw, to("111"))
    assert (status, headers["x-gateway-error"]) == (429, "rate_limited")
    assert 5 <= int(headers["Retry-After"]) <= 6  # the pair window: one message per 6 s
    assert (await post(gw, to("222")))[0] == 200
    assert up.count == 2


async def test_bodies_without_the_field_share_one_bucket(upstream_factory, gateway_factory):
    up = await upstream_factory()
    gw = await gateway_factory(paced(up.url, '{rate: 10/m, burst: 1, key: "body:/to", max_wait: 0s}'))
    assert (await post(gw, b"not json"))[0] == 200
    assert (await post(gw, {"messaging_product": "whatsapp"}))[0] == 429  # no "to": the same bucket "-"
    assert (await post(gw, b""))[0] == 429  # no body at all: "-" too
    assert (await post(gw, to("111")))[0] == 200


async def test_a_body_over_max_replay_body_is_refused_where_a_body_key_is_set(upstream_factory, gateway_factory):
    up = await upstream_factory()
    gw = await gateway_factory(paced(up.url, '{rate: 10/s, key: "body:/to"}'))
    big = json.dumps({**to("111"), "pad": "x" * 2000}).encode()
    status, headers, _ = await post(gw, big)
    assert (status, headers["x-gateway-error"]) == (400, "bad_request")
    async with gw.session.post(gw.url + PATH, data=big) as r:
        message = (await r.json())["error"]["message"]
    assert "body field '/to'" in message and "max_replay_body" in message
    assert up.count == 0
    plain = await gateway_factory(paced(up.url, "{rate: 10/s, key: phone_id}"))
    assert (await post(plain, big))[0] == 200  # a path key never reads the body: it streams


async def test_every_limit_of_a_list_must_pass_and_a_refusal_gives_the_others_back(upstream_factory, gateway_factory):
    up = await upstream_factory()
    limits = '[{rate: 1/m, burst: 3, key: phone_id}, {rate: 1/m, burst: 1, key: "body:/to", max_wait: 0s}]'
    gw = await gateway_factory(paced(up.url, limits))
    assert (await post(gw, to("111")))[0] == 200
    assert (await post(gw, to("111")))[0] == 429  # the recipient's bucket refuses: the number's token is given back
    assert (await post(gw, to("222")))[0] == 200
    assert (await post(gw, to("333")))[0] == 200  # the number's burst of 3 is intact: 111, 222, 333
    status, headers, _ = await post(gw, to("444"))
    assert (status, headers["x-gateway-error"]) == (429, "rate_limited")  # now the number's bucket is empty
    assert up.count == 3


async def test_a_header_key_keeps_a_bucket_per_value(upstream_factory, gateway_factory):
    up = await upstream_factory()
    gw = await gateway_factory(paced(up.url, '{rate: 10/m, burst: 1, key: "header:X-Tenant", max_wait: 0s}'))
    assert (await post(gw, to("1"), {"X-Tenant": "a"}))[0] == 200
    assert (await post(gw, to("1"), {"X-Tenant": "a"}))[0] == 429
    assert (await post(gw, to("1"), {"X-Tenant": "b"}))[0] == 200
    assert (await post(gw, to("1")))[0] == 200  # no header: bucket "-"
    assert (await post(gw, to("1")))[0] == 429


def test_request_key_reads_json_pointers_and_digests_values():
    key = RequestKey("body:/messages/0/to~1x")
    body = json.dumps({"messages": [{"to/x": "555"}]}).encode()
    value = key.value({}, {}, body)
    assert value is not None and len(value) == 64 and "555" not in value  # a digest, never the value
    assert key.value({}, {}, json.dumps({"messages": []}).encode()) == NO_VALUE
    assert RequestKey("body:/to").value({}, {}, b"\xff\xfe") == NO_VALUE
    assert RequestKey("body:/n").value({}, {}, b'{"n": 5}') == RequestKey("body:/n").value({}, {}, b'{"n":5}')
    assert RequestKey("phone_id").value({"phone_id": "9"}, {}, None) == "9"
    assert RequestKey(None).value({}, {}, None) is None
    with pytest.raises(BadRequest):
        RequestKey("body:/to").value({}, {}, None)  # a streamed body


async def test_acquire_all_sleeps_the_longest_wait_and_refunds_on_cancel():
    clock = FakeClock(100.0, sleep_advances=False)
    slept = clock.slept
    gate = asyncio.Event()

    async def sleep(seconds: float) -> None:  # records the wait, then holds until cancelled
        await clock.sleep(seconds)
        await gate.wait()

    def make(rate: str) -> RateLimiter:
        return RateLimiter(
            RateLimitSpec.model_validate({"rate": rate, "burst": 1, "max_wait": "10s"}), clock=clock
        )

    one, two = make("1/s"), make("30/m")
    await acquire_all([(one, None), (two, None)], "up", sleep)  # tokens there: no sleep
    task = asyncio.create_task(acquire_all([(one, None), (two, None)], "up", sleep))
    await asyncio.sleep(0)
    assert slept == [pytest.approx(2.0)]  # the longer of 1 s and 2 s
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert one.bucket(None).tokens == pytest.approx(0.0) and two.bucket(None).tokens == pytest.approx(0.0)
    empty = make("1/h")
    assert empty.bucket(None).reserve(0) == 0.0  # its only token taken: the next is an hour away
    with pytest.raises(RateLimited):
        await acquire_all([(one, None), (empty, None)], "up", sleep)  # the second refuses outright
    assert one.bucket(None).tokens == pytest.approx(0.0)  # the first's reservation was given back


async def test_the_upstream_sees_sends_to_one_recipient_no_faster_than_the_pair_rate(upstream_factory, gateway_factory):
    arrivals: list[float] = []

    async def record(request: web.BaseRequest, up: Upstream) -> web.StreamResponse:
        arrivals.append(time.monotonic())
        return web.Response(text="ok")

    up = await upstream_factory(record)
    gw = await gateway_factory(paced(up.url, '{rate: 4/s, burst: 1, key: "body:/to", max_wait: 5s}'))
    results = await asyncio.gather(*(post(gw, to("111")) for _ in range(5)))
    assert [r[0] for r in results] == [200] * 5
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert all(gap >= 0.2 for gap in gaps), gaps  # 0.25 s apart, with scheduling slack


async def test_missing_skip_exempts_bodies_without_the_field(upstream_factory, gateway_factory):
    """Read receipts go to the same endpoint with no ``to``: they are not messages to a user."""
    up = await upstream_factory()
    gw = await gateway_factory(paced(up.url, '{rate: 10/m, burst: 1, key: "body:/to", max_wait: 0s, missing: skip}'))
    receipt = {"messaging_product": "whatsapp", "status": "read", "message_id": "wamid.1"}
    assert [(await post(gw, receipt))[0] for _ in range(5)] == [200] * 5
    assert (await post(gw, to("111")))[0] == 200
    assert (await post(gw, to("111")))[0] == 429  # messages are still paced
