"""The admin port (contract §4): probes, health, metrics, config, reload and the token rule."""

from __future__ import annotations

import re

import pytest

from gateway.config import parse_config
from gateway.errors import ConfigError

from .support import gateway_yaml


async def test_probes_health_and_metrics(upstream_factory, gateway_factory):
    up = await upstream_factory()
    gw = await gateway_factory(gateway_yaml({"api": f"url: {up.url}"}))
    async with gw.session.get(f"{gw.admin}/livez") as resp:
        assert resp.status == 200
        assert (await resp.text()).strip() == "ok"
    async with gw.session.get(f"{gw.admin}/readyz") as resp:
        assert resp.status == 200
    for _ in range(3):
        async with gw.session.get(f"{gw.url}/api/x") as resp:
            assert resp.status == 200
    async with gw.session.get(f"{gw.admin}/health") as resp:
        health = await resp.json()
    assert health["status"] == "ok"
    assert health["upstreams"]["api"]["requests"] == 3
    assert health["upstreams"]["api"]["errors"] == 0
    assert health["upstreams"]["api"]["p95_ms"] is not None
    async with gw.session.get(f"{gw.admin}/metrics") as resp:
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = await resp.text()
    assert 'gateway_requests_total{method="GET",route="-",source="upstream",status="200",upstream="api"} 3.0' in text
    assert 'gateway_request_duration_seconds_count{route="-",upstream="api"} 3.0' in text
    assert 'gateway_upstream_tries_total{outcome="2xx",route="-",upstream="api"} 3.0' in text
    assert "# HELP gateway_requests_total" in text
    tasks = re.search(r"^gateway_asyncio_tasks (\S+)$", text, re.M)
    assert tasks is not None and float(tasks.group(1)) >= 1  # at least the scrape's own handler task
    assert re.search(r"^process_open_fds [1-9]", text, re.M)
    assert re.search(r"^process_resident_memory_bytes [1-9]", text, re.M)


async def test_admin_posts_need_the_token_when_set(upstream_factory, gateway_factory, tmp_path):
    up = await upstream_factory()
    gw = await gateway_factory(gateway_yaml({"api": f"url: {up.url}"}, admin_token="s3cret"))
    async with gw.session.post(f"{gw.admin}/admin/reload") as resp:
        assert resp.status == 401
        assert (await resp.json())["error"]["code"] == "unauthorized"
    async with gw.session.post(f"{gw.admin}/admin/reload", headers={"Authorization": "Bearer wrong"}) as resp:
        assert resp.status == 401
    async with gw.session.post(f"{gw.admin}/admin/reload", headers={"Authorization": "Bearer s3cret"}) as resp:
        # authorised; this in-process gateway has no file to reload, which it says
        assert resp.status == 400
        assert "not started from a file" in (await resp.json())["error"]["message"]
    async with gw.session.get(f"{gw.admin}/admin/config") as resp:  # GETs are open
        assert resp.status == 200
        assert (await resp.json())["admin"]["token"] == "***"


def test_refuses_a_non_loopback_admin_host_without_a_token():
    text = "admin: {listen: {host: 0.0.0.0, port: 9901}}\nupstreams: {a: {url: 'http://127.0.0.1:1'}}"
    with pytest.raises(ConfigError) as err:
        parse_config(text, "g.yaml", env={})
    assert "admin.token: required when admin.listen.host is not loopback" in str(err.value)
    parse_config(text.replace("9901}", "9901}, token: t"), "g.yaml", env={})


async def test_admin_posts_from_another_origin_are_refused_even_without_a_token(upstream_factory, gateway_factory):
    up = await upstream_factory()
    gw = await gateway_factory(gateway_yaml({"api": f"url: {up.url}"}))
    own = gw.admin  # the status page's origin: http://127.0.0.1:PORT
    for headers in ({"Origin": "https://evil.example"}, {"Sec-Fetch-Site": "cross-site"}, {"Origin": "null"}):
        async with gw.session.post(f"{gw.admin}/admin/breakers/api/open", headers=headers) as resp:
            assert resp.status == 403, headers
            assert resp.headers["x-gateway-error"] == "forbidden"
    async with gw.session.get(f"{gw.admin}/admin/breakers") as resp:
        assert [b["state"] for b in (await resp.json())["breakers"]] == ["closed"]
    async with gw.session.post(f"{gw.admin}/admin/breakers/api/open", headers={"Origin": own}) as resp:
        assert resp.status == 200  # the status page itself
    async with gw.session.post(f"{gw.admin}/admin/breakers/api/reset") as resp:
        assert resp.status == 200  # curl and scripts send no Origin
