"""Retries end to end (contract §2 retry): what is resent, what never is, and how long to wait."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import pytest
from aiohttp import web

from gateway.server import Gateway

from .support import RawUpstream, Upstream, free_port, gateway_yaml, sample

FAST = "backoff: {base: 10ms, max: 20ms}"


def sequence(*answers):
    """A script answering each request with the next of ``answers`` (the last one repeats)."""

    async def script(request, up):
        status, body, headers = answers[min(up.count - 1, len(answers) - 1)]
        if status == "drop":
            request.transport.close()
            await asyncio.sleep(0.05)
            return web.Response()
        if status == "stall":
            await asyncio.sleep(5)
        text = body if isinstance(body, str) else json.dumps(body)
        return web.Response(
            status=int(status) if status != "stall" else 200,
            text=text,
            headers=headers or {},
            content_type="application/json",
        )

    return script


GRAPH = """
url: {url}
kind: graph
timeouts: {{per_try: 300ms, total: 5s}}
retry: {{{fast}}}
routes:
  - name: send_message
    match: {{methods: [POST], path: "/{{version}}/{{phone_id}}/messages"}}
    retry: {{on: [connect-failure, 429, "code:4", "code:80007", "code:130429", "code:2", "code:131000"]}}
"""
SEND = {"messaging_product": "whatsapp", "to": "33600000000", "type": "text", "text": {"body": "hi"}}


def graph_config(url: str) -> str:
    return gateway_yaml({"graph": GRAPH.format(url=url, fast=FAST)})


def meta_error(code: int) -> dict:
    return {"error": {"message": f"(#{code}) error", "type": "OAuthException", "code": code, "fbtrace_id": "A1"}}


async def test_get_503_503_200_is_retried_to_success(upstream_factory, gateway_factory):
    up = await upstream_factory(sequence((503, "busy", None), (503, "busy", None), (200, "fine", None)))
    gw = await gateway_factory(gateway_yaml({"api": f"url: {up.url}\nretry: {{{FAST}}}"}))
    async with gw.session.get(f"{gw.url}/api/x") as resp:
        assert resp.status == 200
        assert await resp.text() == "fine"
        assert resp.headers["x-gateway-attempts"] == "3"
    assert up.count == 3
    assert sample(gw.registry, "gateway_retries_total", reason="5xx", route="-", upstream="api") == 2.0


@pytest.mark.parametrize(("fault", "status"), [("drop", 502), ("500", 500), ("stall", 504)])
async def test_whatsapp_send_is_never_sent_twice(upstream_factory, gateway_factory, fault, status):
    answer = (fault, meta_error(1) if fault == "500" else "", None)  # code 1: ambiguous, not listed
    up = await upstream_factory(sequence(answer, (200, {"messages": [{"id": "wamid.1"}]}, None)))
    gw = await gateway_factory(graph_config(up.url))
    async with gw.session.post(f"{gw.url}/graph/v19.0/123/messages", json=SEND) as resp:
        assert resp.status == status
        assert resp.headers["x-gateway-attempts"] == "1"
    await asyncio.sleep(0.1)
    assert up.count == 1
    assert json.loads(up.seen[0].body) == SEND


async def test_graph_500_with_listed_code_131000_is_retried(upstream_factory, gateway_factory):
    up = await upstream_factory(sequence((500, meta_error(131000), None), (200, {"messages": []}, None)))
    gw = await gateway_factory(graph_config(up.url))
    async with gw.session.post(f"{gw.url}/graph/v19.0/123/messages", json=SEND) as resp:
        assert resp.status == 200
    assert up.count == 2


async def test_send_to_a_closed_port_is_retried_until_it_opens(gateway_factory):
    port = free_port()
    gw = await gateway_factory(
        gateway_yaml(
            {
                "graph": GRAPH.format(
                    url=f"http://127.0.0.1:{port}", fast="attempts: 5, backoff: {base: 200ms, max: 400ms}"
                )
            }
        )
    )
    up = Upstream(sequence((200, {"messages": [{"id": "wamid.2"}]}, None)))

    async def open_later():
        await asyncio.sleep(0.25)
        server = web.Server(up._handle, access_log=None)
        runner = web.ServerRunner(server)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        return runner

    opener = asyncio.create_task(open_later())
    async with gw.session.post(f"{gw.url}/graph/v19.0/123/messages", json=SEND) as resp:
        assert resp.status == 200, await resp.text()
        assert int(resp.headers["x-gateway-attempts"]) >= 2
    assert up.count == 1
    await (await opener).cleanup()


async def test_graph_throttling_code_in_a_400_is_retried_once(upstream_factory, gateway_factory):
    up = await upstream_factory(sequence((400, meta_error(130429), None), (200, {"messages": []}, None)))
    gw = await gateway_factory(graph_config(up.url))
    async with gw.session.post(f"{gw.url}/graph/v19.0/123/messages", json=SEND) as resp:
        assert resp.status == 200
        assert resp.headers["x-gateway-attempts"] == "2"
    assert up.count == 2


@pytest.mark.parametrize("code", [131048, 100])
async def test_graph_codes_that_must_not_be_retried_pass_through(upstream_factory, gateway_factory, code):
    up = await upstream_factory(sequence((400, meta_error(code), None), (200, {}, None)))
    gw = await gateway_factory(graph_config(up.url))
    async with gw.session.post(f"{gw.url}/graph/v19.0/123/messages", json=SEND) as resp:
        assert resp.status == 400
        assert await resp.json() == meta_error(code)
        assert "x-gateway-error" not in resp.headers
    assert up.count == 1


SUPABASE = """
url: {url}
kind: supabase
retry: {{{fast}}}
routes:
  - name: writes
    match: {{methods: [POST, PATCH, PUT, DELETE], path: "/rest/v1/{{table}}"}}
"""


async def test_supabase_write_retried_only_when_the_database_was_not_reached(upstream_factory, gateway_factory):
    pgrst = {"code": "PGRST002", "message": "Could not query the database for the schema cache. Retrying."}
    up = await upstream_factory(sequence((503, pgrst, None), (204, "", None)))
    gw = await gateway_factory(gateway_yaml({"supabase": SUPABASE.format(url=up.url, fast=FAST)}))
    url = f"{gw.url}/supabase/rest/v1/conversations?id=eq.5"
    async with gw.session.patch(url, json={"status": "closed"}) as resp:
        assert resp.status == 204
    assert up.count == 2
    assert up.seen[1].target == "/rest/v1/conversations?id=eq.5"


@pytest.mark.parametrize("fault", ["500", "drop"])
async def test_supabase_write_not_retried_after_it_may_have_run(upstream_factory, gateway_factory, fault):
    up = await upstream_factory(sequence((fault, {"code": "40001", "message": "serialization"}, None), (204, "", None)))
    gw = await gateway_factory(gateway_yaml({"supabase": SUPABASE.format(url=up.url, fast=FAST)}))
    async with gw.session.patch(f"{gw.url}/supabase/rest/v1/conversations?id=eq.5", json={}) as resp:
        assert resp.status in (500, 502)
    await asyncio.sleep(0.1)
    assert up.count == 1


async def test_the_pair_rate_code_is_retried_after_its_wait_not_after_backoff(upstream_factory, gateway_factory):
    """Meta's 131056 (pair rate) names no wait; ``retry.waits`` gives the window, and the send goes
    again once it has passed: Meta did not take the first, so resending delivers once."""
    up = await upstream_factory(sequence((400, meta_error(131056), None), (200, {"messages": [{"id": "w"}]}, None)))
    block = GRAPH.format(url=up.url, fast=FAST).replace(
        '"code:131000"]}', '"code:131000", "code:131056"], waits: {"code:131056": 1200ms}}'
    )
    gw = await gateway_factory(gateway_yaml({"graph": block}))
    start = time.monotonic()
    async with gw.session.post(f"{gw.url}/graph/v19.0/123/messages", json=SEND) as resp:
        assert resp.status == 200
        assert resp.headers["x-gateway-attempts"] == "2"
    assert time.monotonic() - start >= 1.2  # the configured wait, not the 10-20 ms backoff
    assert up.count == 2


async def test_retry_after_is_honoured(upstream_factory, gateway_factory):
    up = await upstream_factory(sequence((429, "slow down", {"Retry-After": "1"}), (200, "ok", None)))
    gw = await gateway_factory(gateway_yaml({"api": f"url: {up.url}\nretry: {{{FAST}}}"}))
    start = time.monotonic()
    async with gw.session.get(f"{gw.url}/api/x") as resp:
        assert resp.status == 200
    assert time.monotonic() - start >= 1.0
    assert up.count == 2


async def test_a_retry_after_longer_than_total_is_not_waited_for(upstream_factory, gateway_factory):
    up = await upstream_factory(sequence((429, "quota", {"Retry-After": "120"}), (200, "ok", None)))
    gw = await gateway_factory(
        gateway_yaml({"api": f"url: {up.url}\ntimeouts: {{total: 15s}}\nretry: {{retry_after: {{max: 5m}}}}"})
    )
    start = time.monotonic()
    async with gw.session.get(f"{gw.url}/api/x") as resp:
        assert resp.status == 429
        assert resp.headers["Retry-After"] == "120"
        assert await resp.text() == "quota"
    assert time.monotonic() - start < 1.0
    assert up.count == 1


async def test_gemini_retry_info_counts_as_retry_after(upstream_factory, gateway_factory):
    body = {
        "error": {
            "code": 429,
            "message": "Resource has been exhausted",
            "status": "RESOURCE_EXHAUSTED",
            "details": [
                {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": []},
                {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "1s"},
            ],
        }
    }
    up = await upstream_factory(sequence((429, body, None), (200, {"candidates": []}, None)))
    gw = await gateway_factory(
        gateway_yaml(
            {
                "gemini": f"""
                url: {up.url}
                kind: gemini
                retry: {{{FAST}}}
                routes:
                  - name: generate
                    match: {{methods: [POST], path: "/{{version}}/models/{{model}}:generateContent"}}
                    retry: {{methods: [POST]}}
                """
            }
        )
    )
    start = time.monotonic()
    async with gw.session.post(f"{gw.url}/gemini/v1beta/models/m:generateContent", json={}) as resp:
        assert resp.status == 200
    assert time.monotonic() - start >= 1.0
    assert up.count == 2


async def test_budget_caps_retries_against_an_always_failing_upstream(upstream_factory, gateway_factory):
    up = await upstream_factory(sequence((503, "down", None)))
    retry = "{backoff: {base: 1ms, max: 1ms}, budget: {percent: 20, min_per_second: 1, window: 10s}}"
    no_breaker = "breaker: {failure_threshold: 100000}"  # this test is about the budget alone
    gw = await gateway_factory(gateway_yaml({"api": f"url: {up.url}\nretry: {retry}\n{no_breaker}"}))

    async def one():
        async with gw.session.get(f"{gw.url}/api/x") as resp:
            assert resp.status == 503
            return int(resp.headers["x-gateway-attempts"])

    attempts = [await one() for _ in range(200)]
    retries = sum(a - 1 for a in attempts)
    assert up.count == 200 + retries
    assert retries <= 1 * 10 + 0.2 * 200  # min_per_second × window + percent × requests
    assert retries >= 20  # the budget allowed some
    skipped = sample(gw.registry, "gateway_retries_skipped_total", reason="budget", upstream="api")
    assert skipped is not None and skipped >= 200 - retries - 1


async def test_no_retry_for_post_on_a_timeout_even_when_listed(gateway_factory):
    up = await RawUpstream(None, hold=3).start()
    try:
        gw = await gateway_factory(
            gateway_yaml({"api": f"url: {up.url}\ntimeouts: {{per_try: 200ms}}\nretry: {{on: [timeout], {FAST}}}"})
        )
        async with gw.session.post(f"{gw.url}/api/x", data=b"once") as resp:
            assert resp.status == 504
        assert up.connections == 1
        async with gw.session.get(f"{gw.url}/api/x") as resp:  # GET is listed: retried
            assert resp.status == 504
            assert resp.headers["x-gateway-attempts"] == "3"
    finally:
        await up.close()


_ = (aiohttp, Gateway)


async def test_aiohttps_own_resend_on_a_closed_pooled_connection_is_counted(gateway_factory):
    """The upstream closes a kept-alive connection as the next request arrives: aiohttp resends
    a GET on a new connection by itself; the gateway must show that second try."""
    connections: list[int] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(len(connections))
        first = len(connections) == 1
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
            if first:
                await reader.readuntil(b"\r\n\r\n")  # the next request on this connection: dropped
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        gw = await gateway_factory(gateway_yaml({"api": f"url: http://127.0.0.1:{port}\nretry: {{attempts: 1}}"}))
        async with gw.session.get(gw.url + "/api/a") as resp:
            assert (resp.status, resp.headers["x-gateway-attempts"]) == (200, "1")
        async with gw.session.get(gw.url + "/api/b") as resp:
            assert resp.status == 200
            assert resp.headers["x-gateway-attempts"] == "2"  # the hidden resend, shown
        assert len(connections) == 2
        retries = sample(gw.registry, "gateway_retries_total", reason="stale-connection", route="-", upstream="api")
        assert retries == 1.0
    finally:
        server.close()
