"""The real program as a subprocess: drain on SIGTERM, reload on SIGHUP."""

from __future__ import annotations

import asyncio
import signal
import time

import aiohttp
from aiohttp import web

from .support import gateway_yaml, sample, scrape


async def test_sigterm_drains_readyz_503_inflight_completes_exit_0(upstream_factory, gateway_process):
    async def slow(request, up):
        await asyncio.sleep(1.5)
        return web.Response(text="done")

    up = await upstream_factory(slow)
    text = gateway_yaml({"api": f"url: {up.url}"})
    text = text.replace("drain: {delay: 0s, timeout: 5s}", "drain: {delay: 500ms, timeout: 5s}")
    gw = gateway_process(text)
    async with aiohttp.ClientSession() as session:
        inflight = asyncio.create_task(session.get(f"{gw.url}/api/slow"))
        await asyncio.sleep(0.3)
        gw.signal(signal.SIGTERM)
        await asyncio.sleep(0.2)
        async with session.get(f"{gw.admin}/readyz") as resp:
            assert resp.status == 503
            assert "draining" in await resp.text()
        resp = await inflight
        assert resp.status == 200
        assert await resp.text() == "done"
        resp.release()
    code = await asyncio.to_thread(gw.proc.wait, 10)
    assert code == 0
    messages = "\n".join(gw.lines)
    assert "drain: listener closed" in messages
    assert "drain: all in-flight requests finished" in messages


async def test_sighup_reloads_and_a_broken_file_keeps_the_old_config(upstream_factory, gateway_process, tmp_path):
    up = await upstream_factory()
    gw = gateway_process(gateway_yaml({"api": f"url: {up.url}"}))
    path = tmp_path / "gateway-0.yaml"
    path.write_text(gateway_yaml({"api": f"url: {up.url}", "second": f"url: {up.url}"}))
    gw.signal(signal.SIGHUP)
    async with aiohttp.ClientSession() as session:
        for _ in range(50):
            async with session.get(f"{gw.url}/second/x") as resp:
                if resp.status == 200:
                    break
            await asyncio.sleep(0.1)
        assert resp.status == 200
        path.write_text("upstreams: [")
        gw.signal(signal.SIGHUP)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and "config reload failed" not in "\n".join(gw.lines):
            await asyncio.sleep(0.1)
        assert "config reload failed" in "\n".join(gw.lines)
        async with session.get(f"{gw.url}/second/x") as resp:
            assert resp.status == 200
        metrics = await scrape(session, gw.admin)
        assert sample(metrics, "gateway_config_reloads_total", result="ok") == 1.0
        assert sample(metrics, "gateway_config_reloads_total", result="error") == 1.0
        async with session.post(f"{gw.admin}/admin/reload") as resp:
            assert resp.status == 400
            assert "invalid YAML" in (await resp.json())["error"]["message"]
