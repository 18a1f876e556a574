"""A breaker never outlasts the failure (contract §2, issue 13): the real program, a real upstream.

The gateway runs as a subprocess on the contract's defaults (a config with only the upstream's URL),
in front of an aiohttp upstream that answers 503 for 6 s and then 200. A client sends a request
every 50 ms throughout; the last ``breaker_open`` answer must come within 3 s of the recovery.
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

from .support import Upstream, gateway_yaml, sample, scrape

pytestmark = pytest.mark.timeout(90)

OUTAGE = 6.0


@pytest.mark.slow
async def test_on_contract_defaults_refusals_stop_within_3s_of_an_upstream_recovery(
    upstream_factory: Callable[..., Awaitable[Upstream]], gateway_process: Any
) -> None:
    down_until = 0.0

    async def answer(request: web.BaseRequest, up: Upstream) -> web.StreamResponse:
        if time.monotonic() < down_until:
            return web.Response(status=503, text="down")
        return web.Response(text="ok")

    up = await upstream_factory(answer)
    gw = gateway_process(gateway_yaml({"api": f"url: {up.url}"}))
    refusals: list[float] = []
    statuses: list[int] = []

    async def one(session: aiohttp.ClientSession) -> None:
        async with session.get(gw.url + "/api/items") as resp:
            statuses.append(resp.status)
            if resp.headers.get("x-gateway-error") == "breaker_open":
                refusals.append(time.monotonic())
                body = await resp.json()
                assert "circuit breaker api is" in json.dumps(body)

    async with aiohttp.ClientSession() as session:
        await one(session)  # warm: the pool and the breaker closed
        down_until = time.monotonic() + OUTAGE
        recovered = down_until
        tasks = []
        while time.monotonic() < recovered + 8.0:
            tasks.append(asyncio.create_task(one(session)))
            await asyncio.sleep(0.05)
        await asyncio.gather(*tasks)
        async with session.get(gw.admin + "/health") as resp:
            health = await resp.json()
        metrics = await scrape(session, gw.admin)
        async with session.get(gw.admin + "/admin/breakers") as resp:
            (breaker,) = (await resp.json())["breakers"]
    assert refusals, "the 6 s outage opened the breaker (requests were refused fast)"
    last = max(refusals) - recovered
    assert last <= 3.0, f"the last breaker_open came {last:.2f}s after the upstream recovered"
    assert statuses[-20:] == [200] * 20  # and it serves again
    assert health["upstreams"]["api"]["breaker"] == "closed"
    assert health["upstreams"]["api"]["breaker_open_for_s"] is None
    # why requests were refused: counted by the breaker's state, and its transitions kept
    refused = sample(metrics, "gateway_breaker_refusals_total", route="-", state="open", upstream="api")
    assert refused is not None and refused >= 1
    assert sample(metrics, "gateway_breaker_open_seconds", route="-", upstream="api") == 0.0
    assert breaker["refusals"]["open"] == refused
    assert [t["to"] for t in breaker["transitions"]][:1] == ["closed"]
    assert "open" in [t["to"] for t in breaker["transitions"]]
