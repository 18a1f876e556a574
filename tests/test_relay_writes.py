"""How relayed answers are written (``gateway.coalesce``): headers wait for body bytes only when those
are already there, and a client that stops reading still runs into the route's ``idle`` timeout."""

from __future__ import annotations

import asyncio
import time

from aiohttp import web

from .support import gateway_yaml


async def test_a_streams_headers_reach_the_client_before_its_first_event(gateway_factory, upstream_factory):
    async def late_event(request, up):
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await asyncio.sleep(1.5)  # the first event comes long after the headers
        await response.write(b"data: {}\r\n\r\n")
        await response.write_eof()
        return response

    up = await upstream_factory(late_event)
    gw = await gateway_factory(gateway_yaml({"sse": f"url: {up.url}\ntimeouts: {{idle: 5s, total: 10s}}"}))
    began = time.monotonic()
    async with gw.session.get(gw.url + "/sse/events") as resp:
        headers_after = time.monotonic() - began
        assert resp.status == 200 and resp.headers["content-type"] == "text/event-stream"
        assert await resp.read() == b"data: {}\r\n\r\n"
        body_after = time.monotonic() - began
    assert headers_after < 1.0, headers_after  # not held back until the event
    assert body_after >= 1.4, body_after


async def test_a_client_that_stops_reading_is_cut_off_after_idle(gateway_factory, upstream_factory, caplog):
    async def endless(request, up):
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        await response.prepare(request)
        chunk = b"z" * 65536
        try:
            for _ in range(2048):  # 128 MiB, far more than the socket buffers hold
                await response.write(chunk)
        except (ConnectionError, RuntimeError):
            pass
        return response

    up = await upstream_factory(endless)
    gw = await gateway_factory(gateway_yaml({"big": f"url: {up.url}\ntimeouts: {{idle: 300ms, total: 60s}}"}))
    with caplog.at_level("INFO", logger="gateway.access"):
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.gateway.proxy_port)
        try:
            writer.write(b"GET /big/blob HTTP/1.1\r\nHost: t\r\n\r\n")
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 200")
            began = time.monotonic()  # from here on the client reads nothing
            while not [r for r in caplog.records if r.name == "gateway.access"]:
                assert time.monotonic() - began < 10, "the gateway still waits on a client that reads nothing"
                await asyncio.sleep(0.05)
        finally:
            writer.close()
    (record,) = [r for r in caplog.records if r.name == "gateway.access"]
    assert (record.fields["status"], record.fields["error"]) == (200, "client_disconnected")
