"""Gemini quotas (contract §2 ``quota``): rpm, tpm and rpd per model, kept before Google enforces them.

The windows are tested on a fake wall clock (minutes and the Pacific day pass without waiting);
the gateway's part end to end with a real upstream answering in Google's shapes (JSON and
server-sent events), and with two real gateway processes sharing a real redis-server.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway.config import QuotaSpec
from gateway.errors import QuotaExhausted
from gateway.quota import PACIFIC, QuotaKeeper, TokenMeter, day_of

from .support import FakeClock, RedisServer, Upstream, gateway_yaml, sample

pytestmark = pytest.mark.timeout(60)


def pacific(*args: int) -> float:
    return dt.datetime(*args, tzinfo=PACIFIC).timestamp()


def keeper(clock: FakeClock, **block: Any) -> QuotaKeeper:
    return QuotaKeeper(QuotaSpec.model_validate({"key": "model", **block}), "gemini.generate", None, clock, clock.sleep)


async def refused(k: QuotaKeeper, key: str) -> QuotaExhausted:
    with pytest.raises(QuotaExhausted) as caught:
        await k.admit(key, "gemini")
    return caught.value


# --------------------------------------------------------------------------- windows, on a fake clock


async def test_rpm_admits_the_limit_then_refuses_with_the_wait_and_a_quota_failure():
    clock = FakeClock(pacific(2026, 5, 4, 10, 0, 0))
    k = keeper(clock, rpm=3)
    for _ in range(3):
        await k.admit("flash", "gemini")
        clock.now += 10
    error = await refused(k, "flash")
    assert error.status == 429 and error.code == "quota_exhausted"
    assert error.retry_after == pytest.approx(30.0)  # the first request leaves the minute at +60 s
    (failure,) = error.details
    assert failure["@type"] == "type.googleapis.com/google.rpc.QuotaFailure"
    violation = failure["violations"][0]
    assert violation["quotaId"] == "GatewayRequestsPerMinutePerModel"
    assert violation["quotaDimensions"] == {"model": "flash"} and violation["quotaValue"] == "3"
    await k.admit("pro", "gemini")  # another model has its own windows
    clock.now += 30
    await k.admit("flash", "gemini")


async def test_a_request_waits_up_to_max_wait_for_room():
    clock = FakeClock(1_000_000.0)
    k = keeper(clock, rpm=1, max_wait="5s")
    await k.admit("flash", "gemini")
    clock.now += 57
    await k.admit("flash", "gemini")  # room in 3 s: waited
    assert clock.slept == [pytest.approx(3.0)]
    error = await refused(k, "flash")  # room in 60 s: over max_wait
    assert error.retry_after == pytest.approx(60.0)


async def test_tpm_counts_what_answers_reported():
    clock = FakeClock(2_000_000.0)
    k = keeper(clock, tpm=1000)
    for tokens in (600, 500):
        ticket = await k.admit("flash", "gemini")
        ticket.meter.feed(b'{"usageMetadata": {"promptTokenCount": 10, "totalTokenCount": %d}}' % tokens)
        await ticket.settle(1, 200, b"")
    error = await refused(k, "flash")
    assert error.details[0]["violations"][0]["quotaId"] == "GatewayTokensPerMinutePerModel"
    clock.now += 61
    await k.admit("flash", "gemini")


async def test_retries_count_as_requests():
    clock = FakeClock(3_000_000.0)
    k = keeper(clock, rpm=3)
    ticket = await k.admit("flash", "gemini")
    await ticket.settle(3, 200, b"")  # three tries reached Google
    await refused(k, "flash")


@pytest.mark.parametrize(
    "start",
    [(2026, 5, 4, 23, 59, 30), (2026, 3, 7, 23, 59, 30), (2026, 11, 1, 23, 59, 30)],
    ids=["ordinary-day", "day-before-spring-forward", "fall-back-day"],
)
async def test_rpd_resets_at_midnight_pacific(start):
    clock = FakeClock(pacific(*start))
    k = keeper(clock, rpd=2)
    await k.admit("flash", "gemini")
    await k.admit("flash", "gemini")
    error = await refused(k, "flash")
    assert error.retry_after == pytest.approx(30.0)
    assert error.details[0]["violations"][0]["quotaId"] == "GatewayRequestsPerDayPerModel"
    clock.now += 29
    await refused(k, "flash")
    clock.now += 1.5
    await k.admit("flash", "gemini")  # a new Pacific day
    await k.admit("flash", "gemini")
    await refused(k, "flash")


def test_day_of_is_the_los_angeles_date():
    day, left = day_of(pacific(2026, 3, 8, 0, 30))  # spring forward: a 23-hour day
    assert day == "2026-03-08" and left == pytest.approx(22.5 * 3600)
    utc_evening = dt.datetime(2026, 5, 5, 6, 59, tzinfo=dt.UTC).timestamp()  # 23:59 in Los Angeles
    assert day_of(utc_evening) == ("2026-05-04", pytest.approx(60.0))


async def test_an_upstream_429_with_a_quota_failure_updates_the_view():
    clock = FakeClock(4_000_000.0)
    k = keeper(clock, rpm=15)
    ticket = await k.admit("flash", "gemini")
    await ticket.settle(1, 429, google_429(quota_value="5", delay="20s"))
    clock.now += 40
    await k.admit("flash", "gemini")  # 1 of Google's 5 used: not our traffic's doing, nothing closed
    for _ in range(3):
        ticket = await k.admit("flash", "gemini")
    await ticket.settle(1, 429, google_429(quota_value="5", delay="20s"))  # 5 of 5: explained
    probe = await k.admit("flash", "gemini")  # one probe passes (the configured 15 have room)...
    error = await refused(k, "flash")  # ...and the rest wait
    assert error.retry_after == pytest.approx(2.0)  # the next probe, before the 20 s closure ends
    await probe.settle(1, 429, google_429(quota_value="5", delay="20s"))
    clock.now += 61  # the minute slides past those six
    for _ in range(5):  # the learned limit: 5 per minute
        await k.admit("flash", "gemini")
    await k.admit("flash", "gemini")  # spent: a probe again
    error = await refused(k, "flash")
    assert error.details[0]["violations"][0]["quotaValue"] == "5"
    assert k.snapshot()["windows"] == [{"key": "flash", "window": "rpm", "remaining": 0, "limit": 5}]


async def test_a_probe_that_succeeds_forgets_the_closure_and_the_learned_limit():
    clock = FakeClock(4_000_000.0)
    k = keeper(clock, rpm=15)
    for _ in range(3):
        ticket = await k.admit("flash", "gemini")
    await ticket.settle(1, 429, google_429(quota_value="3", delay="50s"))  # explained: closed, limit 3
    probe = await k.admit("flash", "gemini")
    await refused(k, "flash")
    await probe.settle(1, 200, b"")  # Google took it: the 429's lesson was wrong, or is over
    for _ in range(5):
        await k.admit("flash", "gemini")  # the configured 15 again, no closure
    assert k.snapshot()["windows"] == [{"key": "flash", "window": "rpm", "remaining": 6, "limit": 15}]


def test_the_token_meter_reads_counts_across_chunks_and_takes_the_last():
    events = b"".join(
        b'data: {"candidates": [], "usageMetadata": {"promptTokenCount": 7, "totalTokenCount": %d}}\r\n\r\n' % n
        for n in (12, 345, 6789)
    )
    for size in (1, 2, 5, 64, len(events)):
        meter = TokenMeter()
        for i in range(0, len(events), size):
            meter.feed(events[i : i + size])
        meter.close()
        assert meter.tokens == 6789, size
    meter = TokenMeter()
    meter.feed(b'{"text": "say \\"totalTokenCount\\": 999999", "usageMetadata": {"totalTokenCount": 40}}')
    meter.close()
    assert meter.tokens == 40  # a count inside the model's text is escaped: never read


# --------------------------------------------------------------------------- through the gateway

MODEL_PATH = "/gemini/v1beta/models/{model}:{verb}"


def google_429(quota_value: str = "15", delay: str = "30s") -> bytes:
    return json.dumps(
        {
            "error": {
                "code": 429,
                "message": "You exceeded your current quota",
                "status": "RESOURCE_EXHAUSTED",
                "details": [
                    {
                        "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                        "violations": [
                            {
                                "quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                                "quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
                                "quotaDimensions": {"location": "global", "model": "gemini-x"},
                                "quotaValue": quota_value,
                            }
                        ],
                    },
                    {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay},
                ],
            }
        }
    ).encode()


def usage(total: int) -> dict[str, Any]:
    return {"promptTokenCount": 5, "candidatesTokenCount": total - 5, "totalTokenCount": total}


def gemini_script(tokens: int = 100, events: int = 3, cut: bool = False):
    async def answer(request: web.BaseRequest, up: Upstream) -> web.StreamResponse:
        if ":streamGenerateContent" not in request.path:
            body = {"candidates": [{"content": {"parts": [{"text": "hi"}]}}], "usageMetadata": usage(tokens)}
            return web.json_response(body)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for i in range(1, events + 1):
            chunk = {
                "candidates": [{"content": {"parts": [{"text": f"part {i}"}]}}],
                "usageMetadata": usage(tokens * i),
            }
            await response.write(b"data: " + json.dumps(chunk).encode() + b"\r\n\r\n")
            await asyncio.sleep(0.05)
        if cut:
            assert request.transport is not None
            request.transport.close()
            return response
        await response.write_eof()
        return response

    return answer


def gemini_yaml(url: str, quota: str, extra: str = "") -> str:
    return gateway_yaml(
        {
            "gemini": f"""
                url: {url}
                kind: gemini
                retry: {{attempts: 1}}
                routes:
                  - name: generate
                    match: {{methods: [POST], path: "/{{version}}/models/{{model}}:generateContent"}}
                    quota: {quota}
                  - name: stream
                    match: {{methods: [POST], path: "/{{version}}/models/{{model}}:streamGenerateContent"}}
                    quota: {quota}
            """
        },
        extra=extra,
    )


async def generate(
    session: aiohttp.ClientSession, base: str, model: str = "flash", verb: str = "generateContent"
) -> tuple[int, Any, bytes]:
    url = base + MODEL_PATH.format(model=model, verb=verb) + ("?alt=sse" if verb != "generateContent" else "")
    async with session.post(url, json={"contents": [{"parts": [{"text": "hello"}]}]}) as r:
        try:
            body = await r.read()
        except aiohttp.ClientPayloadError:
            body = b"<cut>"
        return r.status, r.headers, body


async def test_rpm_through_the_gateway_and_another_model_unaffected(upstream_factory, gateway_factory):
    up = await upstream_factory(gemini_script())
    gw = await gateway_factory(gemini_yaml(up.url, "{key: model, rpm: 2}"))
    assert [(await generate(gw.session, gw.url))[0] for _ in range(2)] == [200, 200]
    status, headers, body = await generate(gw.session, gw.url)
    assert (status, headers["x-gateway-error"]) == (429, "quota_exhausted")
    assert 55 <= int(headers["Retry-After"]) <= 60
    error = json.loads(body)["error"]  # Google's shape, so google-genai raises its own ClientError
    assert (error["code"], error["status"]) == (429, "RESOURCE_EXHAUSTED")
    types = [d["@type"].rsplit(".", 1)[-1] for d in error["details"]]
    assert types == ["ErrorInfo", "RetryInfo", "QuotaFailure"]
    assert error["details"][1]["retryDelay"] == headers["Retry-After"] + "s"
    failure = error["details"][2]
    assert failure["violations"][0]["quotaDimensions"] == {"model": "flash"}
    assert "rpm" in error["message"] and "flash" in error["message"]
    assert up.count == 2
    assert (await generate(gw.session, gw.url, model="pro"))[0] == 200
    assert up.count == 3
    labels = {"route": "generate", "upstream": "gemini", "window": "rpm"}
    assert sample(gw.registry, "gateway_quota_remaining", key="flash", **labels) == 0.0
    assert sample(gw.registry, "gateway_quota_remaining", key="pro", **labels) == 1.0
    async with gw.session.get(gw.admin + "/health") as r:
        quota = (await r.json())["upstreams"]["gemini"]["quota"]["generate"]
    assert {"key": "flash", "window": "rpm", "remaining": 0, "limit": 2} in quota["windows"]


async def test_generate_and_stream_of_one_model_spend_one_quota(upstream_factory, gateway_factory):
    up = await upstream_factory(gemini_script())
    gw = await gateway_factory(gemini_yaml(up.url, "{key: model, rpm: 2}"))
    assert (await generate(gw.session, gw.url))[0] == 200
    assert (await generate(gw.session, gw.url, verb="streamGenerateContent"))[0] == 200
    status, headers, _ = await generate(gw.session, gw.url, verb="streamGenerateContent")
    assert (status, headers["x-gateway-error"]) == (429, "quota_exhausted")  # Google counts both together
    assert up.count == 2


async def test_tpm_counts_tokens_of_json_answers(upstream_factory, gateway_factory):
    up = await upstream_factory(gemini_script(tokens=600))
    gw = await gateway_factory(gemini_yaml(up.url, "{key: model, tpm: 1000}"))
    assert (await generate(gw.session, gw.url))[0] == 200  # 0 used: room
    assert (await generate(gw.session, gw.url))[0] == 200  # 600 used: room
    status, headers, _ = await generate(gw.session, gw.url)  # 1200 used: none
    assert (status, headers["x-gateway-error"]) == (429, "quota_exhausted")
    assert up.count == 2


async def test_tpm_counts_a_stream_when_it_ends_and_a_cut_stream_counts_what_it_reported(
    upstream_factory, gateway_factory
):
    up = await upstream_factory(gemini_script(tokens=300, events=3))
    gw = await gateway_factory(gemini_yaml(up.url, "{key: model, tpm: 1000}"))
    status, _, body = await generate(gw.session, gw.url, verb="streamGenerateContent")
    assert status == 200 and body.count(b"data: ") == 3
    async with gw.session.get(gw.admin + "/health") as r:
        windows = (await r.json())["upstreams"]["gemini"]["quota"]["stream"]["windows"]
    assert {"key": "flash", "window": "tpm", "remaining": 100, "limit": 1000} in windows  # 900: the last count
    cut = await upstream_factory(gemini_script(tokens=40, events=2, cut=True))
    gw2 = await gateway_factory(gemini_yaml(cut.url, "{key: model, tpm: 1000}"))
    await generate(gw2.session, gw2.url, verb="streamGenerateContent")
    async with gw2.session.get(gw2.admin + "/health") as r:
        windows = (await r.json())["upstreams"]["gemini"]["quota"]["stream"]["windows"]
    assert {"key": "flash", "window": "tpm", "remaining": 920, "limit": 1000} in windows  # 80 was reported


async def test_an_upstream_429_closes_the_window_without_reaching_the_upstream_again(upstream_factory, gateway_factory):
    async def exhausted(request: web.BaseRequest, up: Upstream) -> web.StreamResponse:
        return web.Response(status=429, body=google_429(quota_value="2", delay="40s"), content_type="application/json")

    up = await upstream_factory(exhausted)
    gw = await gateway_factory(gemini_yaml(up.url, "{key: model, rpm: 15}"))
    status, headers, _ = await generate(gw.session, gw.url)
    assert status == 429 and "x-gateway-error" not in headers  # Google's own answer, passed on
    assert up.count == 1  # one request of Google's two: not explained by our use, nothing closed
    status, headers, _ = await generate(gw.session, gw.url)
    assert status == 429 and "x-gateway-error" not in headers
    status, headers, _ = await generate(gw.session, gw.url)  # two of two used: closed, but one probe passes
    assert status == 429 and "x-gateway-error" not in headers
    status, headers, _ = await generate(gw.session, gw.url)
    assert (status, headers["x-gateway-error"]) == (429, "quota_exhausted")
    assert 1 <= int(headers["Retry-After"]) <= 2  # until the next probe
    assert up.count == 3


async def test_two_processes_on_redis_share_one_quota(upstream_factory, gateway_process, redis_server: RedisServer):
    up = await upstream_factory(gemini_script(tokens=10))
    extra = f'cache_store: {{type: redis, url: "{redis_server.url}", prefix: "q:", timeout: 1s}}'
    text = gemini_yaml(up.url, "{key: model, rpm: 4}", extra)
    a, b = gateway_process(text), gateway_process(text)
    async with aiohttp.ClientSession() as session:
        statuses = [(await generate(session, (a if i % 2 else b).url))[0] for i in range(6)]
        assert statuses == [200, 200, 200, 200, 429, 429]
        assert (await generate(session, a.url, model="pro"))[0] == 200
        async with session.get(b.admin + "/health") as r:
            windows = (await r.json())["upstreams"]["gemini"]["quota"]["generate"]
        assert windows["shared"] is True
    assert up.count == 5


async def test_google_genai_raises_its_own_error_naming_the_quota(upstream_factory, gateway_factory):
    """The official SDK, pointed at the gateway, raises its ClientError with Google's fields filled."""
    genai = pytest.importorskip("google.genai")
    from google.genai import errors as genai_errors
    from google.genai import types

    up = await upstream_factory(gemini_script())
    gw = await gateway_factory(gemini_yaml(up.url, "{key: model, rpm: 1}"))
    options = types.HttpOptions(base_url=f"{gw.url}/gemini/", api_version="v1beta")
    async with genai.Client(api_key="test-key", http_options=options).aio as client:
        first = await client.models.generate_content(model="gemini-x", contents="hello")
        assert first.usage_metadata is not None and first.usage_metadata.total_token_count == 100
        with pytest.raises(genai_errors.ClientError) as info:
            await client.models.generate_content(model="gemini-x", contents="hello")
    error = info.value
    assert (error.code, error.status) == (429, "RESOURCE_EXHAUSTED")
    failure = next(d for d in error.details["error"]["details"] if d["@type"].endswith("QuotaFailure"))
    assert failure["violations"][0]["quotaDimensions"] == {"model": "gemini-x"}
    assert up.count == 1
