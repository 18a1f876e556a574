"""Bodies stream both ways: large answers never sit whole in memory; SSE events arrive live."""

from __future__ import annotations

import asyncio
import time

import aiohttp
from aiohttp import web

from .support import gateway_yaml

CHUNK = b"s" * (256 * 1024)


async def big(request, up):
    resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    resp.content_length = 200 * len(CHUNK)  # 50 MiB
    await resp.prepare(request)
    for _ in range(200):
        await resp.write(CHUNK)
    await resp.write_eof()
    return resp


async def test_50_mib_answer_streams_without_growing_rss(upstream_factory, gateway_process):
    up = await upstream_factory(big)
    gw = gateway_process(gateway_yaml({"api": f"url: {up.url}\nretry: {{attempts: 1}}"}))
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{gw.url}/api/warm") as resp:  # warm up code paths and pools
            await resp.read()
        await asyncio.sleep(0.3)
        before = gw.rss_kib()
        peak = before
        received = 0
        async with session.get(f"{gw.url}/api/big") as resp:
            assert resp.status == 200
            async for chunk in resp.content.iter_chunked(1 << 20):
                received += len(chunk)
                await asyncio.sleep(0.002)  # a slower reader than the upstream: backpressure matters
                peak = max(peak, gw.rss_kib())
    assert received == 50 * 1024 * 1024
    assert peak - before < 20 * 1024, f"RSS grew by {(peak - before) / 1024:.1f} MiB"


async def test_sse_events_reach_the_client_while_the_stream_is_open(upstream_factory, gateway_factory):
    release = asyncio.Event()

    async def sse(request, up):
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b'data: {"candidates": [1]}\r\n\r\n')
        await release.wait()  # the stream stays open until the client has the first event
        await resp.write(b'data: {"candidates": [2]}\r\n\r\n')
        await resp.write_eof()
        return resp

    up = await upstream_factory(sse)
    gw = await gateway_factory(
        gateway_yaml(
            {
                "gemini": f"""
                url: {up.url}
                kind: gemini
                routes:
                  - name: stream
                    match: {{methods: [POST], path: "/{{version}}/models/{{model}}:streamGenerateContent"}}
                    retry: {{methods: [POST]}}
                """
            }
        )
    )
    start = time.monotonic()
    url = f"{gw.url}/gemini/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse"
    async with gw.session.post(url, json={"contents": []}) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "text/event-stream"
        first = await asyncio.wait_for(resp.content.readuntil(b"\r\n\r\n"), 2)
        assert first == b'data: {"candidates": [1]}\r\n\r\n'
        assert time.monotonic() - start < 2
        release.set()
        rest = await resp.content.read()
    assert rest == b'data: {"candidates": [2]}\r\n\r\n'
    assert up.seen[0].target == "/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse"
