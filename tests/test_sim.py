"""The upstream simulator (issue 7, part 1): API shapes, scenario schedule, counters, scenario errors.

Every sim here runs in this process on free ports (``start_sim``); outage windows are checked on an
injected clock, plus one short real-time window. The last tests put the real gateway, configured as
``config/examples/sim.yaml``, in front of the sim, and run ``gateway sim`` as a program.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import aiohttp
import pytest

from gateway.cli import main as cli_main
from gateway.outcomes import api_error_code, retry_after_seconds
from gateway_sim import (
    UPSTREAMS,
    RoutePlan,
    Scenario,
    ScenarioError,
    Sim,
    load_scenario,
    parse_scenario,
    start_sim,
)

from .support import ROOT, FakeClock

GRAPH_AUTH = {"Authorization": "Bearer EAAG-test"}
GEMINI_KEY = {"x-goog-api-key": "test-key"}
SUPA = {"apikey": "anon-key"}
SEND = {"messaging_product": "whatsapp", "to": "+33 6 00 00 00 01", "type": "text", "text": {"body": "hi"}}
GENERATE = {"contents": [{"role": "user", "parts": [{"text": "hello"}]}]}
FREE = dict.fromkeys(UPSTREAMS, 0)


@pytest.fixture
async def sims():
    made: list[Sim] = []
    session = aiohttp.ClientSession()

    async def make(text: str = "", clock=time.monotonic) -> Sim:
        scenario = parse_scenario(textwrap.dedent(text))
        sim = await start_sim(scenario, ports=FREE, clock=clock)
        made.append(sim)
        return sim

    make.session = session  # type: ignore[attr-defined]
    yield make
    await session.close()
    for sim in made:
        await sim.close()


async def call(sims, sim: Sim, upstream: str, method: str, path: str, **kwargs):
    """One request; returns (status, headers, body bytes)."""
    async with sims.session.request(method, sim.url(upstream) + path, **kwargs) as resp:
        return resp.status, resp.headers, await resp.read()


async def stats(sims, sim: Sim) -> dict:
    _, _, body = await call(sims, sim, "graph", "GET", "/_sim/stats")
    return json.loads(body)


def only_errors(upstream: str, mix: str, route: str | None = None) -> str:
    block = f"errors: {{rate: 100%, mix: [{mix}]}}"
    if route:
        block = f"routes: {{{route}: {{{block}}}}}"
    return f"upstreams: {{{upstream}: {{{block}}}}}"


# --------------------------------------------------------------------------- answers when all is well


async def test_graph_send_media_url_and_lookaside_bytes(sims):
    sim = await sims()
    status, _, body = await call(sims, sim, "graph", "POST", "/v21.0/1234/messages", json=SEND, headers=GRAPH_AUTH)
    data = json.loads(body)
    assert status == 200 and data["messaging_product"] == "whatsapp"
    assert data["contacts"] == [{"input": SEND["to"], "wa_id": "33600000001"}]
    assert data["messages"][0]["id"].startswith("wamid.")

    status, _, body = await call(sims, sim, "graph", "GET", "/v21.0/9876", headers=GRAPH_AUTH)
    media = json.loads(body)
    assert status == 200 and media["id"] == "9876"
    # Graph's own media host, as in production: the backend swaps it for its gateway's /lookaside
    assert media["url"].startswith("https://lookaside.fbsbx.com/whatsapp_business/attachments/?mid=9876")
    assert {"mime_type", "sha256", "file_size"} <= set(media)

    local = media["url"].replace("https://lookaside.fbsbx.com", sim.url("lookaside"), 1)
    async with sims.session.get(local, headers=GRAPH_AUTH) as resp:
        data = await resp.read()
        assert resp.status == 200 and resp.headers["Content-Type"] == media["mime_type"]
    assert len(data) == media["file_size"] and hashlib.sha256(data).hexdigest() == media["sha256"]

    status, _, body = await call(sims, sim, "graph", "POST", "/v21.0/1234/messages", json=SEND)
    assert status == 400 and json.loads(body)["error"]["code"] == 104  # no access token


async def test_gemini_generate_answers_candidates(sims):
    sim = await sims()
    path = "/v1beta/models/gemini-2.5-flash:generateContent"
    status, _, body = await call(sims, sim, "gemini", "POST", path, json=GENERATE, headers=GEMINI_KEY)
    data = json.loads(body)
    assert status == 200
    assert data["candidates"][0]["content"]["parts"][0]["text"]
    assert data["candidates"][0]["finishReason"] == "STOP"
    assert data["usageMetadata"]["totalTokenCount"] > 0
    status, _, _ = await call(
        sims, sim, "gemini", "POST", path.replace("v1beta", "v1"), json=GENERATE, params={"key": "k"}
    )
    assert status == 200  # v1 and the ?key= form work too


async def test_sse_events_arrive_spaced_first_before_the_end(sims):
    sim = await sims("upstreams: {gemini: {stream: {events: 4, interval: 150ms}}}")
    url = sim.url("gemini") + "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    start = time.monotonic()
    arrivals, events = [], []
    async with sims.session.post(url, json=GENERATE, headers=GEMINI_KEY) as resp:
        assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
        async for line in resp.content:
            if line.startswith(b"data: "):
                arrivals.append(time.monotonic() - start)
                events.append(json.loads(line[6:]))
    end = time.monotonic() - start
    assert len(events) == 4
    assert arrivals[0] < end - 0.35, (arrivals, end)  # the first event came long before the stream ended
    assert all(b - a >= 0.1 for a, b in itertools.pairwise(arrivals)), arrivals
    assert events[-1]["candidates"][0]["finishReason"] == "STOP"
    assert "finishReason" not in events[0]["candidates"][0]


async def test_auth_user_returns_a_user_for_a_bearer_and_gotrue_401_without(sims):
    sim = await sims()
    status, _, body = await call(
        sims, sim, "supabase", "GET", "/auth/v1/user", headers={**SUPA, "Authorization": "Bearer user-jwt"}
    )
    user = json.loads(body)
    assert status == 200 and user["aud"] == "authenticated" and user["id"]
    status, _, body = await call(sims, sim, "supabase", "GET", "/auth/v1/user", headers=SUPA)
    assert status == 401
    assert json.loads(body) == {
        "code": 401,
        "error_code": "no_authorization",
        "msg": "This endpoint requires a valid Bearer token",
    }


# --------------------------------------------------------------------------- error shapes, one per API


@pytest.mark.parametrize(
    ("code", "status"),
    [(4, 400), (80007, 400), (130429, 429), (131056, 400), (2, 503), (131000, 500), (131048, 400)],
)
async def test_graph_error_shape_and_throttling_codes(sims, code, status):
    sim = await sims(only_errors("graph", f"{{code: {code}}}"))
    got, headers, body = await call(sims, sim, "graph", "POST", "/v21.0/1/messages", json=SEND, headers=GRAPH_AUTH)
    error = json.loads(body)["error"]
    assert got == status
    assert error["code"] == code and error["type"] == "OAuthException"
    assert error["message"].startswith(f"(#{code})") or code == 2
    assert error["fbtrace_id"] and headers["x-fb-trace-id"] == error["fbtrace_id"]
    assert api_error_code("graph", body) == str(code)  # what the gateway's `code:N` tokens read
    if code >= 80000:
        assert error["error_data"]["messaging_product"] == "whatsapp"


async def test_graph_error_subcode_and_status_override(sims):
    sim = await sims(only_errors("graph", "{code: 131056, status: 429, subcode: 2494055}", route="send_message"))
    status, _, body = await call(sims, sim, "graph", "POST", "/v21.0/1/messages", json=SEND, headers=GRAPH_AUTH)
    assert status == 429 and json.loads(body)["error"]["error_subcode"] == 2494055
    status, _, _ = await call(sims, sim, "graph", "GET", "/v21.0/55", headers=GRAPH_AUTH)
    assert status == 200  # the route block applies to send_message only


async def test_gemini_429_resource_exhausted_carries_retry_info(sims):
    sim = await sims(only_errors("gemini", "{status: 429, retry_delay: 2s}"))
    path = "/v1beta/models/gemini-2.5-flash:generateContent"
    status, headers, body = await call(sims, sim, "gemini", "POST", path, json=GENERATE, headers=GEMINI_KEY)
    error = json.loads(body)["error"]
    assert status == 429 and error["code"] == 429 and error["status"] == "RESOURCE_EXHAUSTED"
    types = [d["@type"].rsplit("/", 1)[-1] for d in error["details"]]
    assert types == ["google.rpc.QuotaFailure", "google.rpc.Help", "google.rpc.RetryInfo"]
    assert error["details"][2]["retryDelay"] == "2s"
    assert "PerMinute" in error["details"][0]["violations"][0]["quotaId"]
    assert "Retry-After" not in headers  # Google sends none; the delay is in the body
    assert retry_after_seconds("gemini", 429, None, body) == 2.0  # as the gateway reads it


async def test_gemini_503_the_model_is_overloaded(sims):
    sim = await sims(only_errors("gemini", "{status: 503}"))
    url = "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    status, headers, body = await call(sims, sim, "gemini", "POST", url, json=GENERATE, headers=GEMINI_KEY)
    assert status == 503 and headers["Content-Type"].startswith("application/json")
    assert json.loads(body) == {
        "error": {"code": 503, "message": "The model is overloaded. Please try again later.", "status": "UNAVAILABLE"}
    }
    status, _, body = await call(sims, sim, "gemini", "POST", url, json=GENERATE)
    assert status == 403  # without a key, the credential check answers first, as Google's front end does


async def test_gemini_without_key_is_permission_denied(sims):
    sim = await sims()
    path = "/v1beta/models/gemini-2.5-flash:generateContent"
    status, _, body = await call(sims, sim, "gemini", "POST", path, json=GENERATE)
    error = json.loads(body)["error"]
    assert status == 403 and error["status"] == "PERMISSION_DENIED" and error["code"] == 403


async def test_postgrest_503_pgrst002_with_retry_after(sims):
    sim = await sims(only_errors("supabase", "{code: PGRST002}"))
    status, headers, body = await call(sims, sim, "supabase", "GET", "/rest/v1/conversations", headers=SUPA)
    assert status == 503
    assert json.loads(body) == {
        "code": "PGRST002",
        "details": None,
        "hint": None,
        "message": "Could not query the database for the schema cache. Retrying.",
    }
    assert headers["Retry-After"] == "1" and headers["Vary"] == "Accept, Prefer, Range"
    assert api_error_code("supabase", body) == "PGRST002"


async def test_postgrest_codes_take_their_status_and_platform_errors_are_plain(sims):
    sim = await sims(only_errors("supabase", "{code: PGRST003}, {status: 520}, {code: '57014'}"))
    seen = {}
    for _ in range(40):
        status, _, body = await call(sims, sim, "supabase", "GET", "/rest/v1/t", headers=SUPA)
        seen[status] = body
    assert set(seen) == {504, 520, 500}
    assert json.loads(seen[504])["code"] == "PGRST003" and json.loads(seen[500])["code"] == "57014"
    assert seen[520] == b"error code: 520"


async def test_postgrest_without_apikey_is_refused_by_the_api_gateway(sims):
    sim = await sims()
    status, _, body = await call(sims, sim, "supabase", "GET", "/rest/v1/conversations")
    assert status == 401 and json.loads(body)["message"] == "No API key found in request"


async def test_gotrue_error_shape_from_a_scenario(sims):
    sim = await sims(only_errors("supabase", "{status: 429}, {status: 503}", route="auth_user"))
    seen = {}
    for _ in range(30):
        status, _, body = await call(
            sims, sim, "supabase", "GET", "/auth/v1/user", headers={**SUPA, "Authorization": "Bearer jwt"}
        )
        seen[status] = json.loads(body)
    assert seen[429] == {"code": 429, "error_code": "over_request_rate_limit", "msg": "Request rate limit reached"}
    assert seen[503]["error_code"] == "unexpected_failure" and seen[503]["code"] == 503
    status, _, _ = await call(sims, sim, "supabase", "GET", "/rest/v1/t", headers=SUPA)
    assert status == 200


# --------------------------------------------------------------------------- PostgREST tables and ranges


async def test_range_and_content_range(sims):
    sim = await sims("upstreams: {supabase: {rows: 50}}")

    async def get(path: str, **headers: str):
        status, h, body = await call(sims, sim, "supabase", "GET", path, headers={**SUPA, **headers})
        return status, h.get("Content-Range"), json.loads(body) if body else None, h

    status, crange, rows, headers = await get("/rest/v1/bot_profiles", Range="0-9")
    assert (status, crange, len(rows)) == (200, "0-9/*", 10)
    assert headers["Vary"] == "Accept, Prefer, Range"
    assert headers["Content-Type"] == "application/json; charset=utf-8"
    status, crange, rows, _ = await get("/rest/v1/bot_profiles", Range="10-19", Prefer="count=exact")
    assert (status, crange, rows[0]["id"]) == (206, "10-19/50", 11)
    status, crange, rows, _ = await get("/rest/v1/bot_profiles", Prefer="count=exact")
    assert (status, crange, len(rows)) == (200, "0-49/50", 50)
    status, crange, rows, _ = await get("/rest/v1/bot_profiles?limit=3&offset=5")
    assert (status, crange, [r["id"] for r in rows]) == (200, "5-7/*", [6, 7, 8])
    status, crange, rows, _ = await get("/rest/v1/bot_profiles?id=eq.nope", Prefer="count=exact")
    assert (status, crange, rows) == (200, "*/0", [])
    status, crange, body, _ = await get("/rest/v1/bot_profiles", Range="60-69", Prefer="count=exact")
    assert (status, crange, body["code"]) == (416, "*/50", "PGRST103")
    status, _, rows, _ = await get("/rest/v1/bot_profiles?select=id,name&status=eq.open&order=id.desc", Range="0-1")
    assert rows == [{"id": 49, "name": "bot_profiles 49"}, {"id": 47, "name": "bot_profiles 47"}]
    status, _, row, _ = await get("/rest/v1/bot_profiles?id=eq.3", Accept="application/vnd.pgrst.object+json")
    assert status == 200 and row["id"] == 3
    status, _, body, _ = await get("/rest/v1/bot_profiles", Accept="application/vnd.pgrst.object+json")
    assert status == 406 and body["code"] == "PGRST116" and body["details"] == "The result contains 50 rows"
    status, _, body, _ = await get("/rest/v1/bot_profiles?nope=eq.1")
    assert status == 400 and body["code"] == "42703"


async def test_rest_writes_change_what_reads_see(sims):
    sim = await sims("upstreams: {supabase: {rows: 2}}")
    headers = {**SUPA, "Prefer": "return=representation"}
    status, _, body = await call(
        sims, sim, "supabase", "POST", "/rest/v1/messages", json={"body": "x"}, headers=headers
    )
    assert status == 201 and json.loads(body)[0]["id"] == 3
    status, _, body = await call(sims, sim, "supabase", "POST", "/rest/v1/messages", json={"id": 1}, headers=SUPA)
    assert status == 409 and json.loads(body)["code"] == "23505"
    status, _, _ = await call(
        sims, sim, "supabase", "PATCH", "/rest/v1/messages?id=eq.1", json={"status": "read"}, headers=SUPA
    )
    assert status == 204
    status, _, _ = await call(sims, sim, "supabase", "DELETE", "/rest/v1/messages?id=eq.2", headers=SUPA)
    assert status == 204
    _, _, body = await call(sims, sim, "supabase", "GET", "/rest/v1/messages?order=id", headers=SUPA)
    assert [(r["id"], r.get("status")) for r in json.loads(body)] == [(1, "read"), (3, None)]
    assert (await stats(sims, sim))["tables"]["messages"] == {"DELETE": 1, "GET": 1, "PATCH": 1, "POST": 2}


# --------------------------------------------------------------------------- the scenario's schedule


async def test_outage_window_answers_errors_only_inside_it(sims):
    clock = FakeClock(0.0)
    sim = await sims("upstreams: {supabase: {outages: [{start: 10s, duration: 5s, mode: 503}]}}", clock=clock)
    seen = []
    for t in (0.0, 9.9, 10.0, 12.0, 14.9, 15.0, 30.0):
        clock.now = t
        status, _, body = await call(sims, sim, "supabase", "GET", "/rest/v1/t", headers=SUPA)
        seen.append(status)
        if status == 503:
            assert json.loads(body)["code"] == "PGRST002"
    assert seen == [200, 200, 503, 503, 503, 200, 200]
    status, _, _ = await call(sims, sim, "graph", "GET", "/v21.0/5", headers=GRAPH_AUTH)
    assert status == 200  # other upstreams are untouched
    route = (await stats(sims, sim))["upstreams"]["supabase"]["routes"]["rest_read"]
    assert route["outage"] == 3 and route["statuses"] == {"200": 4, "503": 3}


async def test_repeating_window_with_a_partial_rate(sims):
    clock = FakeClock(0.0)
    text = "upstreams: {gemini: {outages: [{start: 1s, duration: 1s, every: 10s, mode: 503, rate: 50%}]}}"
    sim = await sims(text, clock=clock)
    path = "/v1beta/models/m:generateContent"
    results: dict[float, list[int]] = {}
    for t in (0.5, 11.5, 13.0):
        clock.now = t
        results[t] = [
            (await call(sims, sim, "gemini", "POST", path, json=GENERATE, headers=GEMINI_KEY))[0] for _ in range(40)
        ]
    assert set(results[0.5]) == {200} and set(results[13.0]) == {200}
    assert 8 <= results[11.5].count(503) <= 32 and results[11.5].count(200) >= 8  # about half, in the 2nd window


async def test_outage_window_on_the_real_clock(sims):
    sim = await sims("upstreams: {graph: {outages: [{start: 300ms, duration: 600ms, mode: 503}]}}")
    start = time.monotonic()
    statuses = []
    for at in (0.0, 0.6, 1.2):
        await asyncio.sleep(max(0.0, start + at - time.monotonic()))
        statuses.append((await call(sims, sim, "graph", "GET", "/v21.0/5", headers=GRAPH_AUTH))[0])
    assert statuses == [200, 503, 200]


async def test_reset_and_timeout_modes(sims):
    clock = FakeClock(0.0)
    text = """
    upstreams:
      graph: {outages: [{start: 0s, duration: 10s, mode: reset}]}
      lookaside: {outages: [{start: 0s, duration: 10s, mode: timeout}]}
    """
    sim = await sims(text, clock=clock)
    with pytest.raises(aiohttp.ClientConnectionError):  # a POST: aiohttp's client resends a GET once by itself
        await call(sims, sim, "graph", "POST", "/v21.0/1/messages", json=SEND, headers=GRAPH_AUTH)
    with pytest.raises(asyncio.TimeoutError):
        await call(
            sims,
            sim,
            "lookaside",
            "GET",
            "/whatsapp_business/attachments/?mid=1",
            headers=GRAPH_AUTH,
            timeout=aiohttp.ClientTimeout(total=0.3),
        )
    data = await stats(sims, sim)
    assert data["upstreams"]["graph"]["routes"]["send_message"]["resets"] == 1
    assert data["messages"]["received"] == 0  # dropped before the body was read
    assert data["upstreams"]["lookaside"]["routes"]["media"]["timeouts"] == 1


async def test_mid_body_reset_truncates_the_answer(sims):
    sim = await sims("upstreams: {gemini: {resets: {rate: 100%, when: mid_body}, stream: {events: 4, interval: 10ms}}}")
    path = "/v1beta/models/m:generateContent"
    with pytest.raises(aiohttp.ClientPayloadError):
        await call(sims, sim, "gemini", "POST", path, json=GENERATE, headers=GEMINI_KEY)
    events = []
    with pytest.raises(aiohttp.ClientPayloadError):
        async with sims.session.post(
            sim.url("gemini") + path.replace("generateContent", "streamGenerateContent") + "?alt=sse",
            json=GENERATE,
            headers=GEMINI_KEY,
        ) as resp:
            async for line in resp.content:
                if line.startswith(b"data: "):
                    events.append(line)
    assert len(events) == 2  # half the stream, then the connection dropped


async def test_latency_distribution_follows_p50_p95_and_max():
    scenario = parse_scenario("upstreams: {graph: {latency: {p50: 100ms, p95: 400ms, max: 900ms}}}")
    plan = RoutePlan("graph", "send_message", scenario.effective("graph", "send_message"), seed=5)
    samples = sorted(plan.sample_latency() for _ in range(4000))
    assert 0.09 <= samples[2000] <= 0.11
    assert 0.34 <= samples[3800] <= 0.46
    assert samples[-1] <= 0.9 and samples[0] > 0
    fixed = parse_scenario("defaults: {latency: {fixed: 30ms}}")
    assert RoutePlan("gemini", "generate", fixed.effective("gemini", "generate"), 1).sample_latency() == 0.03


async def test_latency_is_applied(sims):
    sim = await sims("upstreams: {supabase: {routes: {rest_read: {latency: {fixed: 200ms}}}}}")
    start = time.monotonic()
    await call(sims, sim, "supabase", "GET", "/rest/v1/t", headers=SUPA)
    assert time.monotonic() - start >= 0.2
    start = time.monotonic()
    await call(sims, sim, "supabase", "GET", "/auth/v1/user", headers={"Authorization": "Bearer x"})
    assert time.monotonic() - start < 0.15


async def test_same_seed_same_decisions_and_restart_replays_them(sims):
    text = "seed: 11\nupstreams: {graph: {errors: {rate: 50%}}}"
    first, second = await sims(text), await sims(text)

    async def run(sim: Sim) -> list[int]:
        return [(await call(sims, sim, "graph", "GET", "/v21.0/1", headers=GRAPH_AUTH))[0] for _ in range(30)]

    a = await run(first)
    assert a == await run(second) and {200, 500} == set(a)
    _, _, body = await call(sims, first, "graph", "POST", "/_sim/reset?restart=1")
    assert json.loads(body)["restarted"] is True
    assert await run(first) == a


# --------------------------------------------------------------------------- counters


async def test_duplicate_sends_are_counted_by_body(sims):
    sim = await sims()
    other = {**SEND, "text": {"body": "another"}}
    read = {"messaging_product": "whatsapp", "status": "read", "message_id": "wamid.X"}
    for body in (SEND, other, SEND, read):
        status, _, _ = await call(sims, sim, "graph", "POST", "/v21.0/1/messages", json=body, headers=GRAPH_AUTH)
        assert status == 200
    # the same JSON with keys in another order is the same message
    reordered = json.dumps(dict(reversed(list(SEND.items()))))
    headers = {**GRAPH_AUTH, "Content-Type": "application/json"}
    await call(sims, sim, "graph", "POST", "/v21.0/1/messages", data=reordered, headers=headers)
    data = await stats(sims, sim)
    messages = data["messages"]
    assert messages["bodies"] == 2 and messages["received"] == 4 and messages["delivered"] == 4
    assert messages["duplicates_received"] == 2 and messages["duplicates_delivered"] == 2
    assert messages["read_receipts"] == 1
    assert messages["repeated"] == [
        {"sha256": messages["repeated"][0]["sha256"], "to": SEND["to"], "received": 3, "delivered": 3}
    ]
    assert data["upstreams"]["graph"]["routes"]["send_message"]["requests"] == 5
    assert data["upstreams"]["graph"]["requests"] == 5

    _, _, body = await call(sims, sim, "graph", "POST", "/_sim/reset")
    assert json.loads(body) == {"reset": True, "restarted": False}
    data = await stats(sims, sim)
    assert data["messages"]["received"] == 0 and data["upstreams"]["graph"]["requests"] == 0


async def test_errors_mean_received_but_not_delivered_and_lost_answers_mean_delivered(sims):
    sim = await sims(only_errors("graph", "{code: 80007}"))
    for _ in range(2):
        await call(sims, sim, "graph", "POST", "/v21.0/1/messages", json=SEND, headers=GRAPH_AUTH)
    messages = (await stats(sims, sim))["messages"]
    assert (messages["received"], messages["delivered"], messages["duplicates_delivered"]) == (2, 0, 0)

    sim = await sims("upstreams: {graph: {resets: {rate: 100%, when: after_body}}}")
    for _ in range(2):
        with pytest.raises(aiohttp.ClientConnectionError):
            await call(sims, sim, "graph", "POST", "/v21.0/1/messages", json=SEND, headers=GRAPH_AUTH)
    data = await stats(sims, sim)
    assert data["messages"]["delivered"] == 2 and data["messages"]["duplicates_delivered"] == 1
    assert data["upstreams"]["graph"]["routes"]["send_message"]["resets"] == 2


async def test_stats_list_the_outage_windows_and_the_scenario(sims):
    sim = await sims("name: x\nupstreams: {gemini: {routes: {stream: {outages: [{start: 1s, duration: 2s}]}}}}")
    data = await stats(sims, sim)
    assert data["scenario"] == "x" and set(data["ports"]) == set(UPSTREAMS)
    assert data["outages"] == [
        {
            "upstream": "gemini",
            "route": "stream",
            "start_s": 1.0,
            "duration_s": 2.0,
            "every_s": None,
            "mode": "503",
            "rate": 1.0,
        }
    ]
    _, _, body = await call(sims, sim, "gemini", "GET", "/_sim/scenario")
    assert json.loads(body)["upstreams"]["gemini"]["routes"]["stream"]["outages"][0]["start"] == "1s"


async def test_put_scenario_loads_or_refuses(sims):
    sim = await sims()
    status, _, body = await call(sims, sim, "graph", "PUT", "/_sim/scenario", data=b"upstreams: {graph: {errorz: 1}}")
    assert status == 400 and "upstreams.graph.errorz: unknown key" in json.loads(body)["problems"][0]
    status, _, _ = await call(sims, sim, "graph", "PUT", "/_sim/scenario", data=only_errors("graph", "{code: 2}"))
    assert status == 200
    status, _, _ = await call(sims, sim, "graph", "GET", "/v21.0/1", headers=GRAPH_AUTH)
    assert status == 503


# --------------------------------------------------------------------------- scenario files


@pytest.mark.parametrize("name", ["calm", "seeds", "outage"])
def test_shipped_scenarios_load(name):
    scenario = load_scenario(ROOT / "config" / "scenarios" / f"{name}.yaml")
    assert scenario.name == name and scenario.seed is not None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "upstreams: {graph: {latency: {p50: 80ms}, errorz: {rate: 5%}}}",
            "upstreams.graph.errorz: unknown key"
            " (expected one of: latency, errors, resets, outages, brownouts, routes, limits)",
        ),
        (
            "upstreams: {graph: {routes: {send: {}}}}",
            "upstreams.graph.routes.send: unknown key (expected one of: send_message, media_url, media_upload,",
        ),
        (
            "upstreams: {gemeni: {}}",
            "upstreams.gemeni: unknown key (expected one of: graph, gemini, supabase, lookaside)",
        ),
        ("defaults: {latency: {p50: fast}}", "defaults.latency.p50: expected a duration like '10s', got 'fast'"),
        (
            "upstreams: {supabase: {outages: [{start: 10, duration: 30s}]}}",
            "upstreams.supabase.outages[0].start: expected a duration like '10s', got 10",
        ),
        ("defaults: {latency: {p50: 1s, p95: 100ms}}", "defaults.latency: p95 (100ms) is below p50 (1s)"),
        ("defaults: {errors: {rate: 150%}}", "defaults.errors.rate: expected a percentage from 0 to 100"),
        ("defaults: {resets: {rate: 1%, when: later}}", "defaults.resets.when: input should be 'before_body'"),
        (
            "upstreams: {supabase: {outages: [{start: 1s, duration: 1s, mode: down}]}}",
            "upstreams.supabase.outages[0].mode:"
            " expected reset, timeout, refused or an HTTP status from 400 to 599, got 'down'",
        ),
        (
            "upstreams: {graph: {errors: {rate: 1%, mix: [{code: PGRST002}]}}}",
            "upstreams.graph.errors.mix[0].code: Meta's error codes are numbers like 131000, got 'PGRST002'",
        ),
        (
            "upstreams: {gemini: {errors: {rate: 1%, mix: [{code: OVERLOADED}]}}}",
            "upstreams.gemini.errors.mix[0].code: expected one of INVALID_ARGUMENT",
        ),
        (
            "upstreams: {graph: {errors: {rate: 1%, mix: [{code: 999}]}}}",
            "upstreams.graph.errors.mix[0].code: 999 is not in the sim's table of Meta codes: set its status too",
        ),
        (
            "upstreams: {supabase: {errors: {rate: 1%, mix: [{status: 429, retry_delay: 1s}]}}}",
            "upstreams.supabase.errors.mix[0].retry_delay: only Gemini's 429 answers carry RetryInfo",
        ),
        ("defaults: {errors: {rate: 1%, mix: [{code: 2}]}}", "defaults.errors.mix[0].code: API codes differ per API"),
        ("seed: 1\nseed: 2", "line 2, column 1: invalid YAML: duplicate key 'seed' (first written on line 1)"),
        ("- 1", "expected a mapping at the top level, got list"),
    ],
)
def test_bad_scenarios_say_where_and_what(text, expected):
    with pytest.raises(ScenarioError) as info:
        parse_scenario(text, "bad.yaml")
    assert any(line.startswith(f"bad.yaml: {expected}") for line in str(info.value).splitlines()), str(info.value)


def test_empty_scenario_is_valid():
    assert parse_scenario("") == Scenario()


def test_cli_reports_a_bad_scenario_and_exits_1(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("upstreams:\n  graph:\n    latency: {p50: soon}\n")
    assert cli_main(["sim", "--scenario", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"{path}: upstreams.graph.latency.p50: expected a duration like '10s', got 'soon'" in err
    assert cli_main(["sim", "--scenario", str(tmp_path / "missing.yaml")]) == 1
    assert "cannot read the file" in capsys.readouterr().err


def test_cli_serves_until_sigterm():
    args = [sys.executable, "-m", "gateway", "sim", "--scenario", "config/scenarios/calm.yaml", "--seed", "99"]
    args += [f"--{name}-port=0" for name in UPSTREAMS]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=os.environ)
    try:
        assert proc.stdout is not None
        started = json.loads(proc.stdout.readline())
        assert started["msg"] == "sim started" and started["scenario"] == "calm" and started["seed"] == 99
        import urllib.request

        with urllib.request.urlopen(started["stats"], timeout=5) as resp:
            assert json.loads(resp.read())["seed"] == 99
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


# --------------------------------------------------------------------------- the real gateway in front


async def test_gateway_on_the_sim_example_config_reaches_every_upstream(sims, gateway_factory):
    sim = await sims()
    text = (ROOT / "config" / "examples" / "sim.yaml").read_text()
    for name, port in (("graph", 8081), ("gemini", 8082), ("supabase", 8083), ("lookaside", 8084)):
        assert f"http://127.0.0.1:{port}" in text
        text = text.replace(f"http://127.0.0.1:{port}", sim.url(name))
    text = text.replace("port: 8080", "port: 0").replace("port: 9901", "port: 0")
    gw = await gateway_factory(text)
    s = gw.session

    async with s.post(f"{gw.url}/graph/v21.0/1234/messages", json=SEND, headers=GRAPH_AUTH) as resp:
        assert resp.status == 200 and resp.headers["x-gateway-upstream"] == "graph"
        assert (await resp.json())["messages"][0]["id"].startswith("wamid.")
    async with s.get(f"{gw.url}/graph/v21.0/4321", headers=GRAPH_AUTH) as resp:
        media = await resp.json()
    url = media["url"].replace(sim.lookaside_url, f"{gw.url}/lookaside", 1)
    async with s.get(url, headers=GRAPH_AUTH) as resp:
        assert resp.status == 200 and resp.headers["x-gateway-upstream"] == "lookaside"
        assert hashlib.sha256(await resp.read()).hexdigest() == media["sha256"]
    # no API key from the client: the gateway's set_headers injects sim.yaml's default one
    async with s.post(f"{gw.url}/gemini/v1beta/models/gemini-2.5-flash:generateContent", json=GENERATE) as resp:
        assert resp.status == 200 and (await resp.json())["candidates"]
    stream_url = f"{gw.url}/gemini/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    async with s.post(stream_url, json=GENERATE) as resp:
        assert resp.status == 200 and (await resp.read()).count(b"data: ") == 5
    async with s.get(f"{gw.url}/supabase/rest/v1/bot_profiles", headers={**SUPA, "Range": "0-4"}) as resp:
        assert resp.status == 200 and resp.headers["Content-Range"] == "0-4/*"
        assert resp.headers["x-gateway-cache"] == "MISS" and len(await resp.json()) == 5
    async with s.get(f"{gw.url}/supabase/auth/v1/user", headers={**SUPA, "Authorization": "Bearer jwt"}) as resp:
        assert resp.status == 200 and (await resp.json())["aud"] == "authenticated"

    routes = {
        (up, name): r["requests"]
        for up, data in (await stats(sims, sim))["upstreams"].items()
        for name, r in data["routes"].items()
        if r["requests"]
    }
    assert routes == {
        ("graph", "send_message"): 1,
        ("graph", "media_url"): 1,
        ("lookaside", "media"): 1,
        ("gemini", "generate"): 1,
        ("gemini", "stream"): 1,
        ("supabase", "rest_read"): 1,
        ("supabase", "auth_user"): 1,
    }
