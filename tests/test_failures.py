"""The gateway's own answers when an upstream fails, and timeouts (contract §2 timeouts, §3)."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
from aiohttp import web

from .support import RawUpstream, free_port, gateway_yaml


def config(
    url: str,
    timeouts: str = "{connect: 1s, per_try: 500ms, idle: 2s, total: 3s}",
    extra: str = "",
    retry: str = "{attempts: 1}",
) -> str:
    # retry off here: these tests are about one try's failure; retries have their own tests
    return gateway_yaml({"api": f"url: {url}\ntimeouts: {timeouts}\nretry: {retry}\n{extra}"})


async def error_of(resp: aiohttp.ClientResponse) -> dict:
    assert resp.headers["Content-Type"].startswith("application/json")
    body = await resp.json()
    assert resp.headers["x-gateway-error"] == body["error"]["code"]
    return body["error"]


async def test_closed_port_is_upstream_unreachable(gateway_factory):
    gw = await gateway_factory(config(f"http://127.0.0.1:{free_port()}"))
    async with gw.session.get(f"{gw.url}/api/x") as resp:
        assert resp.status == 502
        err = await error_of(resp)
    assert err["code"] == "upstream_unreachable"
    assert err["upstream"] == "api"
    assert err["attempts"] == 1


async def test_silent_upstream_is_upstream_timeout_after_per_try(gateway_factory):
    up = await RawUpstream(None, hold=10).start()  # accepts, reads, never answers
    try:
        gw = await gateway_factory(config(up.url))
        start = time.monotonic()
        async with gw.session.get(f"{gw.url}/api/x") as resp:
            elapsed = time.monotonic() - start
            assert resp.status == 504
            assert (await error_of(resp))["code"] == "upstream_timeout"
        assert 0.4 <= elapsed < 2.5
    finally:
        await up.close()


async def test_client_timeout_header_lowers_total(upstream_factory, gateway_factory):
    async def slow(request, up):
        await asyncio.sleep(2)
        return web.Response(text="late")

    up = await upstream_factory(slow)
    gw = await gateway_factory(config(up.url, "{per_try: 5s, total: 10s}"))
    start = time.monotonic()
    async with gw.session.get(f"{gw.url}/api/x", headers={"x-gateway-timeout-ms": "200"}) as resp:
        elapsed = time.monotonic() - start
        assert resp.status == 504
        err = await error_of(resp)
    assert err["code"] == "upstream_timeout"
    assert "total" in err["message"]
    assert elapsed < 1.0
    # it can lower, never raise
    async with gw.session.get(f"{gw.url}/api/x", headers={"x-gateway-timeout-ms": "999999"}) as resp:
        assert resp.status == 200
    async with gw.session.get(f"{gw.url}/api/x", headers={"x-gateway-timeout-ms": "soon"}) as resp:
        assert resp.status == 400
        assert (await error_of(resp))["code"] == "bad_request"


async def test_reset_before_answer_is_upstream_reset(gateway_factory):
    up = await RawUpstream(b"").start()  # reads the request, then closes without a byte
    try:
        gw = await gateway_factory(config(up.url))
        async with gw.session.get(f"{gw.url}/api/x") as resp:
            assert resp.status == 502
            assert (await error_of(resp))["code"] == "upstream_reset"
    finally:
        await up.close()


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_close_mid_body_is_a_truncation_the_client_detects(gateway_factory, framing):
    if framing == "content-length":
        reply = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"a" * 100
    else:
        reply = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n64\r\n" + b"a" * 100 + b"\r\n"
    up = await RawUpstream(reply).start()
    try:
        gw = await gateway_factory(config(up.url))
        async with gw.session.get(f"{gw.url}/api/x") as resp:
            assert resp.status == 200
            with pytest.raises(aiohttp.ClientPayloadError):
                await resp.read()
    finally:
        await up.close()


async def test_idle_gap_in_the_answer_cuts_it(gateway_factory):
    reply = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"a" * 10
    up = await RawUpstream(reply, hold=5).start()  # then silence
    try:
        gw = await gateway_factory(config(up.url, "{per_try: 1s, idle: 300ms, total: 3s}"))
        start = time.monotonic()
        async with gw.session.get(f"{gw.url}/api/x") as resp:
            assert resp.status == 200
            with pytest.raises(aiohttp.ClientPayloadError):
                await resp.read()
        assert time.monotonic() - start < 2.5
    finally:
        await up.close()


async def test_body_over_max_request_body_is_413_before_any_upstream_byte(upstream_factory, gateway_factory):
    up = await upstream_factory()
    gw = await gateway_factory(config(up.url, extra="limits: {max_request_body: 1KiB}"))
    async with gw.session.post(f"{gw.url}/api/x", data=b"x" * 2048) as resp:
        assert resp.status == 413
        assert (await error_of(resp))["code"] == "body_too_large"

    async def chunks():
        for _ in range(4):
            yield b"y" * 512

    async with gw.session.post(f"{gw.url}/api/x", data=chunks()) as resp:  # chunked, no Content-Length
        assert resp.status == 413
    async with gw.session.post(f"{gw.url}/api/x", data=b"x" * 1024) as resp:
        assert resp.status == 200
    assert up.count == 1


async def test_large_chunked_body_over_the_limit_never_completes_upstream(upstream_factory, gateway_factory):
    up = await upstream_factory()
    gw = await gateway_factory(
        config(up.url, extra="limits: {max_request_body: 256KiB}", retry="{attempts: 1, max_replay_body: 64KiB}")
    )

    async def chunks():
        for _ in range(16):
            yield b"z" * 32768  # 512 KiB in all

    async with gw.session.post(f"{gw.url}/api/x", data=chunks()) as resp:
        assert resp.status == 413
    await asyncio.sleep(0.2)
    assert all(len(s.body) < 512 * 1024 for s in up.seen)
