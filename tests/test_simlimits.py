"""The simulator enforces the real APIs' limits (scenario ``limits:``): Meta's pair rate (131056) and
number throughput (130429), Google's per-model quotas (429 with QuotaFailure and RetryInfo).

The sim runs in this process on free ports with an injected clock for the token buckets; the last
test puts the real gateway, paced per recipient, in front of it.
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest

from gateway.outcomes import api_error_code, retry_after_seconds
from gateway_sim import UPSTREAMS, parse_scenario, start_sim

from .support import FakeClock, gateway_yaml

pytestmark = pytest.mark.timeout(60)

FREE = dict.fromkeys(UPSTREAMS, 0)
AUTH = {"Authorization": "Bearer EAAG-test"}
KEY = {"x-goog-api-key": "test-key"}

LIMITS = """
upstreams:
  graph:
    limits:
      pair: {rate: 10/m, burst: 2}
      throughput: {rate: 5/s, burst: 5}
  gemini:
    limits:
      rpm: 3
      tpm: 100000
      models: {gemini-2.5-pro: {rpm: 1}}
"""


@pytest.fixture
async def sim() -> Any:
    clock = FakeClock(0.0)
    made = await start_sim(parse_scenario(LIMITS), ports=FREE, clock=clock)
    made.test_clock = clock  # type: ignore[attr-defined]
    async with aiohttp.ClientSession() as session:
        yield made, session, clock
    await made.close()


def message(to: str) -> dict[str, Any]:
    return {"messaging_product": "whatsapp", "to": to, "type": "text", "text": {"body": "hi"}}


async def send(sim: Any, session: aiohttp.ClientSession, to: str, number: str = "1234") -> tuple[int, Any]:
    async with session.post(f"{sim.url('graph')}/v21.0/{number}/messages", json=message(to), headers=AUTH) as r:
        return r.status, await r.json()


async def test_the_pair_rate_refuses_a_burst_to_one_user_with_131056(sim):
    made, session, clock = sim
    assert [(await send(made, session, "+33 6 00 00 00 01"))[0] for _ in range(2)] == [200, 200]  # the burst
    status, body = await send(made, session, "33600000001")  # the same user, written otherwise
    assert status == 400 and body["error"]["code"] == 131056
    assert api_error_code("graph", json.dumps(body).encode()) == "131056"
    assert (await send(made, session, "33600000002"))[0] == 200  # another user
    clock.now += 6.0  # one pair token back
    assert (await send(made, session, "33600000001"))[0] == 200
    stats = await (await session.get(made.url("graph") + "/_sim/stats")).json()
    assert stats["limits"]["refused"] == {"131056": 1}
    assert stats["messages"]["delivered"] == 4


async def test_the_number_throughput_refuses_with_130429(sim):
    made, session, clock = sim
    statuses = [(await send(made, session, f"3360000{i:04d}"))[0] for i in range(7)]
    assert statuses == [200] * 5 + [429] * 2
    assert (await send(made, session, "33600009999", number="5678"))[0] == 200  # another number
    clock.now += 1.0
    assert (await send(made, session, "33600009998"))[0] == 200


async def generate(made: Any, session: aiohttp.ClientSession, model: str) -> tuple[int, bytes]:
    url = f"{made.url('gemini')}/v1beta/models/{model}:generateContent"
    async with session.post(url, json={"contents": [{"parts": [{"text": "hi"}]}]}, headers=KEY) as r:
        return r.status, await r.read()


async def test_gemini_quotas_per_model_answer_googles_429(sim):
    made, session, _ = sim
    assert [(await generate(made, session, "gemini-2.5-flash"))[0] for _ in range(3)] == [200] * 3
    status, body = await generate(made, session, "gemini-2.5-flash")
    assert status == 429
    error = json.loads(body)["error"]
    assert error["status"] == "RESOURCE_EXHAUSTED"
    failure = next(d for d in error["details"] if d["@type"].endswith("QuotaFailure"))
    assert failure["violations"][0]["quotaId"] == "GenerateRequestsPerMinutePerProjectPerModel-FreeTier"
    assert failure["violations"][0]["quotaDimensions"]["model"] == "gemini-2.5-flash"
    assert failure["violations"][0]["quotaValue"] == "3"
    assert 1 <= retry_after_seconds("gemini", 429, None, body) <= 60
    assert (await generate(made, session, "gemini-2.5-pro"))[0] == 200  # its own quota: 1 a minute
    assert (await generate(made, session, "gemini-2.5-pro"))[0] == 429


async def test_gemini_tokens_per_minute_count_what_answers_report():
    scenario = parse_scenario("upstreams:\n  gemini:\n    limits: {tpm: 20}\n")
    made = await start_sim(scenario, ports=FREE)
    try:
        async with aiohttp.ClientSession() as session:
            statuses = [(await generate(made, session, "m"))[0] for _ in range(4)]
            stats = await (await session.get(made.url("gemini") + "/_sim/stats")).json()
    finally:
        await made.close()
    assert statuses[0] == 200 and 429 in statuses  # each answer reports ~15 tokens
    assert stats["limits"]["refused"]["gemini_tpm"] >= 1


async def test_without_limits_nothing_is_refused():
    made = await start_sim(parse_scenario(""), ports=FREE)
    try:
        async with aiohttp.ClientSession() as session:
            assert [(await send(made, session, "1"))[0] for _ in range(10)] == [200] * 10
    finally:
        await made.close()


async def test_the_gateway_paced_per_recipient_meets_no_131056(gateway_factory):
    """Paced a little below the pair rate (2.4 s against 2 s): at exactly the pair rate, a first send
    slowed by its connection set-up lands under 2 s before the second, and Meta refuses it."""
    made = await start_sim(
        parse_scenario("upstreams:\n  graph:\n    limits: {pair: {rate: 30/m, burst: 1}}\n"), ports=FREE
    )
    try:
        text = gateway_yaml(
            {
                "graph": f"""
                    url: {made.url("graph")}
                    kind: graph
                    routes:
                      - name: send_message
                        match: {{methods: [POST], path: "/{{version}}/{{phone_id}}/messages"}}
                        retry: {{on: [connect-failure, 429, "code:131056"], waits: {{"code:131056": 2s}}}}
                        rate_limit: {{rate: 25/m, burst: 1, key: "body:/to", max_wait: 5s}}
                """
            }
        )
        gw = await gateway_factory(text)
        results = []
        for _ in range(3):
            async with gw.session.post(f"{gw.url}/graph/v21.0/1/messages", json=message("1"), headers=AUTH) as r:
                results.append(r.status)
        stats = await (await gw.session.get(made.url("graph") + "/_sim/stats")).json()
    finally:
        await made.close()
    assert results == [200, 200, 200]
    assert stats["limits"]["refused"].get("131056", 0) == 0
