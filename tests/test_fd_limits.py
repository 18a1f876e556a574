"""Resource limits: file descriptors (issue 8, hardening item 5).

The proxy port admits at most ``server.max_connections`` client connections, lowered at start
to what RLIMIT_NOFILE allows (two descriptors a connection, plus a reserve). Above that a
connection gets 503 ``overloaded`` and is closed before anything is read, so a flood never
takes the descriptors the gateway needs for upstream sockets and its admin port. When a
connect upstream still fails for want of descriptors (EMFILE), the answer is 503 ``overloaded``
and the failure is the gateway's own: it is not a breaker sample, so the breaker stays closed
and the gateway serves again as soon as descriptors are free.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import resource
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from .support import (
    GatewayFactory,
    GatewayProcess,
    Upstream,
    UpstreamFactory,
    gateway_yaml,
    read_answer,
    sample,
    scrape,
)

GET = b"GET /api/x HTTP/1.1\r\nHost: a\r\n\r\n"


@pytest.fixture
def enough_descriptors() -> Iterator[None]:
    """This process holds the flood's client sockets: make sure it may."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 4096
    if soft != resource.RLIM_INFINITY and soft < want:
        if hard != resource.RLIM_INFINITY and hard < want:
            pytest.skip(f"RLIMIT_NOFILE hard limit {hard} is too low for the flood's client side")
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def _one(port: int) -> str:
    """One connection, one request; what came back: a status and error code, or how it failed."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10)
    except (OSError, TimeoutError):
        return "connect failed"
    try:
        writer.write(b"GET /api/x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        data = await asyncio.wait_for(reader.read(), 15)
    except ConnectionError:
        return "reset"
    except TimeoutError:
        return "no answer"
    finally:
        writer.close()
    if not data:
        return "closed"
    status = data.split(b" ", 2)[1].decode()
    body = data.partition(b"\r\n\r\n")[2]
    return f"{status} {json.loads(body)['error']['code']}" if body.startswith(b'{"error"') else status


async def test_a_flood_past_the_descriptor_limit_is_refused_and_the_gateway_recovers(
    upstream_factory: UpstreamFactory, tmp_path: Path, enough_descriptors: None
) -> None:
    async def slow(request: web.BaseRequest, up: Upstream) -> web.StreamResponse:
        await asyncio.sleep(0.3)
        return web.Response(text="ok")

    up = await upstream_factory(slow)
    path = tmp_path / "gateway.yaml"
    path.write_text(gateway_yaml({"api": f"url: {up.url}"}))
    gw = GatewayProcess(path, nofile=256)
    try:
        gw.wait_started()
        started = json.loads(next(line for line in gw.lines if '"gateway started"' in line))
        assert (started["max_connections"], started["nofile"]) == ((256 - 64 - 64) // 2, 256)  # admin: 64 kept
        assert any("max_connections lowered" in line for line in gw.lines)

        results = collections.Counter(await asyncio.gather(*(_one(gw.port) for _ in range(600))))
        assert gw.proc.poll() is None, "\n".join(gw.lines[-30:])
        assert set(results) <= {"200", "503 overloaded", "closed", "reset", "connect failed"}, results
        assert 50 <= results["200"] <= 200, results  # about max_connections were served, none failed
        assert results["503 overloaded"] >= 300, results

        # the flood is over: served normally at once, the breaker untouched, admin answering
        async with aiohttp.ClientSession() as session:
            for _ in range(10):
                async with session.get(f"{gw.url}/api/x") as resp:
                    assert resp.status == 200, await resp.text()
            async with session.get(f"{gw.admin}/health") as resp:
                health = await resp.json()
                assert resp.status == 200
            assert health["upstreams"]["api"]["breaker"] == "closed"
            assert health["upstreams"]["api"]["inflight"] == 0
            metrics = await scrape(session, gw.admin)
        refused = sample(metrics, "gateway_proxy_connections_closed_total", reason="max_connections")
        assert refused == results["503 overloaded"]
    finally:
        gw.stop()


async def test_emfile_connecting_upstream_is_503_and_not_a_breaker_failure(
    upstream_factory: UpstreamFactory, gateway_factory: GatewayFactory
) -> None:
    async def closing(request: web.BaseRequest, up: Upstream) -> web.StreamResponse:
        resp = web.Response(text="ok")
        resp.force_close()  # no pooled upstream connection: each request must connect anew
        return resp

    up = await upstream_factory(closing)
    block = "url: {url}\nretry: {{backoff: {{base: 5ms, max: 10ms}}}}\nbreaker: {{failure_threshold: 2}}"
    gw = await gateway_factory(gateway_yaml({"api": block.format(url=up.url)}))
    conns = [await asyncio.open_connection("127.0.0.1", gw.gateway.proxy_port) for _ in range(4)]
    for reader, writer in conns:  # accepted and served: the client side needs no new descriptor
        writer.write(GET)
        assert (await read_answer(reader))[0] == 200
    await asyncio.sleep(0.3)  # the upstream's closed connections are gone

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lowest = os.dup(0)  # the lowest free descriptor number: with the limit there, no socket can open
    os.close(lowest)
    answers = []
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (lowest, hard))
        for reader, writer in conns:
            writer.write(GET)
            answers.append(await read_answer(reader))
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    for status, headers, body in answers:
        assert status == 503
        error = json.loads(body)["error"]
        assert (error["code"], error["upstream"], error["attempts"]) == ("overloaded", "api", 3)
        assert headers["retry-after"] == "1"
    assert up.count == 4  # only the first round reached it
    assert gw.gateway.state.runtime.breakers()["api"].state == "closed"  # 12 local failures, no sample
    for reader, writer in conns:  # descriptors are back: served again, nothing to wait for
        writer.write(GET)
        assert (await read_answer(reader))[0] == 200
        writer.close()
    assert up.count == 8


