"""Breakers, bulkhead, rate limits and fault injection end to end (contract §2, §3, §4)."""

from __future__ import annotations

import asyncio
import time

from aiohttp import web

from .support import gateway_yaml, sample, total


def status_script(status_of):
    async def script(request, up):
        status = status_of(up)
        if isinstance(status, tuple):
            await asyncio.sleep(status[1])
            status = status[0]
        return web.Response(status=status, text=str(status))

    return script


BREAKER = "retry: {attempts: 1}\nbreaker: {failure_threshold: 3, recovery: 300ms, recovery_max: 2s}"


async def test_breaker_opens_fails_fast_probes_and_backs_off(upstream_factory, gateway_factory):
    mode = {"status": 503}
    up = await upstream_factory(status_script(lambda up: mode["status"]))
    gw = await gateway_factory(gateway_yaml({"api": f"url: {up.url}\n{BREAKER}"}))
    for _ in range(3):
        async with gw.session.get(f"{gw.url}/api/x") as resp:
            assert resp.status == 503
            assert "x-gateway-error" not in resp.headers  # the upstream's own 503
    start = time.perf_counter()
    async with gw.session.get(f"{gw.url}/api/x") as resp:
        elapsed = time.perf_counter() - start
        assert resp.status == 503
        assert resp.headers["x-gateway-error"] == "breaker_open"
        assert 0 < int(resp.headers["Retry-After"]) <= 1
        body = await resp.json()
    assert body["error"]["code"] == "breaker_open"
    assert up.count == 3
    assert elapsed < 0.05  # the request never left the gateway (generous bound for a shared machine)
    assert sample(gw.registry, "gateway_breaker_state", route="-", upstream="api") == 2.0

    # half-open: one probe goes through, the 20 others are refused while it runs
    await asyncio.sleep(0.35)
    mode["status"] = (200, 0.3)

    async def call():
        async with gw.session.get(f"{gw.url}/api/x") as resp:
            return resp.status, resp.headers.get("x-gateway-error")

    results = await asyncio.gather(*(call() for _ in range(21)))
    assert sorted(results, key=str).count((200, None)) == 1
    assert results.count((503, "breaker_open")) == 20
    assert up.count == 4
    async with gw.session.get(f"{gw.url}/api/x") as resp:  # the good probe closed it
        assert resp.status == 200

    # open again, then a bad probe doubles the recovery
    mode["status"] = 503
    for _ in range(3):
        async with gw.session.get(f"{gw.url}/api/x") as resp:
            pass
    await asyncio.sleep(0.35)
    async with gw.session.get(f"{gw.url}/api/x") as resp:  # the probe fails
        assert resp.status == 503 and "x-gateway-error" not in resp.headers
    async with gw.session.get(f"{gw.admin}/admin/breakers") as resp:
        snap = (await resp.json())["breakers"][0]
    assert snap["state"] == "open"
    assert snap["recovery_s"] == 0.6
    await asyncio.sleep(0.35)  # the old recovery is not enough any more
    async with gw.session.get(f"{gw.url}/api/x") as resp:
        assert resp.headers.get("x-gateway-error") == "breaker_open"
    for to in ("open", "half_open", "closed"):
        assert total(gw.registry, "gateway_breaker_transitions_total", to=to) > 0, to


async def test_429_does_not_open_the_breaker_by_default(upstream_factory, gateway_factory):
    up = await upstream_factory(status_script(lambda up: 429))
    gw = await gateway_factory(gateway_yaml({"api": f"url: {up.url}\n{BREAKER}"}))
    for _ in range(10):
        async with gw.session.get(f"{gw.url}/api/x") as resp:
            assert resp.status == 429
            assert "x-gateway-error" not in resp.headers
    assert up.count == 10


async def test_rate_mode_opens_only_after_min_requests(upstream_factory, gateway_factory):
    # every other request fails: 50% failure rate
    up = await upstream_factory(status_script(lambda up: 500 if up.count % 2 else 200))
    breaker = "breaker: {mode: rate, failure_rate: 50%, min_requests: 10, window: 30s, recovery: 10s}"
    gw = await gateway_factory(gateway_yaml({"api": f"url: {up.url}\nretry: {{attempts: 1}}\n{breaker}"}))
    statuses = []
    for _ in range(12):
        async with gw.session.get(f"{gw.url}/api/x") as resp:
            statuses.append(resp.headers.get("x-gateway-error") or resp.status)
    assert "breaker_open" not in statuses[:10]  # fewer than min_requests samples: never opens
    assert "breaker_open" in statuses[10:]


async def test_bulkhead_serves_max_concurrent_plus_queue_and_refuses_the_rest(upstream_factory, gateway_factory):
    up = await upstream_factory(status_script(lambda up: (200, 0.5)))
    limits = "limits: {max_concurrent: 5, max_queue: 10, queue_timeout: 5s}"
    gw = await gateway_factory(gateway_yaml({"api": f"url: {up.url}\n{limits}"}))

    async def call():
        start = time.monotonic()
        async with gw.session.get(f"{gw.url}/api/x") as resp:
            return resp.status, resp.headers.get("x-gateway-error"), time.monotonic() - start

    results = await asyncio.wait_for(asyncio.gather(*(call() for _ in range(50))), 20)
    served = [r for r in results if r[0] == 200]
    refused = [r for r in results if r[1] == "overloaded"]
    assert len(served) == 15
    assert len(refused) == 35
    assert all(r[0] == 503 and r[2] < 0.4 for r in refused)  # refused at once, not after a wait
    assert up.count == 15
    assert total(gw.registry, "gateway_rejected_total", reason="overloaded") > 0


async def test_queue_timeout_answers_overloaded(upstream_factory, gateway_factory):
    up = await upstream_factory(status_script(lambda up: (200, 1.0)))
    limits = "limits: {max_concurrent: 1, max_queue: 5, queue_timeout: 200ms}"
    gw = await gateway_factory(gateway_yaml({"api": f"url: {up.url}\n{limits}"}))

    async def call():
        async with gw.session.get(f"{gw.url}/api/x") as resp:
            return resp.headers.get("x-gateway-error") or resp.status

    assert sorted(await asyncio.gather(call(), call()), key=str) == [200, "overloaded"]


ROUTE = """
url: {url}
routes:
  - name: send_message
    match: {{methods: [POST], path: "/{{version}}/{{phone_id}}/messages"}}
    rate_limit: {{rate: 10/s, burst: 5, key: phone_id, max_wait: 0s}}
"""


async def test_rate_limit_per_key_with_retry_after(upstream_factory, gateway_factory):
    up = await upstream_factory()
    gw = await gateway_factory(gateway_yaml({"graph": ROUTE.format(url=up.url)}))

    async def send(phone):
        async with gw.session.post(f"{gw.url}/graph/v19.0/{phone}/messages", data=b"{}") as resp:
            return resp.status, resp.headers.get("x-gateway-error"), resp.headers.get("Retry-After")

    results = await asyncio.gather(*(send("111") for _ in range(20)))
    passed = [r for r in results if r[0] == 200]
    limited = [r for r in results if r[0] == 429]
    assert 5 <= len(passed) <= 6  # the burst, plus at most one token refilled while they arrive
    assert len(passed) + len(limited) == 20
    assert all(r[1] == "rate_limited" and r[2] is not None and int(r[2]) >= 1 for r in limited)
    # another phone number has its own bucket
    other = await asyncio.gather(*(send("222") for _ in range(5)))
    assert [r[0] for r in other] == [200] * 5
    assert up.count == len(passed) + 5


async def test_fault_abort_and_delay(upstream_factory, gateway_factory):
    up = await upstream_factory()
    gw = await gateway_factory(
        gateway_yaml(
            {
                "api": f"url: {up.url}\nfault: {{abort: {{percent: 100, status: 503}}}}",
                "slow": f"url: {up.url}\nfault: {{delay: {{percent: 100, duration: 300ms}}}}",
            }
        )
    )
    async with gw.session.get(f"{gw.url}/api/x") as resp:
        assert resp.status == 503
        assert resp.headers["x-gateway-error"] == "fault_injected"
    start = time.monotonic()
    async with gw.session.get(f"{gw.url}/slow/x") as resp:
        assert resp.status == 200
    assert time.monotonic() - start >= 0.3
    assert up.count == 1


async def test_admin_breaker_reset_and_open_need_the_token(upstream_factory, gateway_factory):
    up = await upstream_factory()
    text = gateway_yaml({"api": f"url: {up.url}\n{BREAKER}"}, admin_token="tok")
    gw = await gateway_factory(text)
    auth = {"Authorization": "Bearer tok"}
    async with gw.session.post(f"{gw.admin}/admin/breakers/api/open") as resp:
        assert resp.status == 401
    async with gw.session.post(f"{gw.admin}/admin/breakers/api/open", headers=auth) as resp:
        assert resp.status == 200
        assert (await resp.json())["state"] == "open"
    async with gw.session.get(f"{gw.url}/api/x") as resp:
        assert resp.headers["x-gateway-error"] == "breaker_open"
    assert up.count == 0
    assert sample(gw.registry, "gateway_breaker_state", route="-", upstream="api") == 2.0
    async with gw.session.get(f"{gw.admin}/health") as resp:
        health = await resp.json()
    assert health["status"] == "degraded"
    assert health["upstreams"]["api"]["breaker"] == "open"
    async with gw.session.post(f"{gw.admin}/admin/breakers/api/reset", headers=auth) as resp:
        assert (await resp.json())["state"] == "closed"
    async with gw.session.get(f"{gw.url}/api/x") as resp:
        assert resp.status == 200
    async with gw.session.post(f"{gw.admin}/admin/breakers/nope/reset", headers=auth) as resp:
        assert resp.status == 404
    assert sample(gw.registry, "gateway_breaker_state", route="-", upstream="api") == 0.0


async def test_route_breaker_is_separate_and_readiness_can_require_it(upstream_factory, gateway_factory):
    up = await upstream_factory(status_script(lambda up: 500))
    block = f"""
    url: {up.url}
    retry: {{attempts: 1}}
    breaker: {{failure_threshold: 2, recovery: 10s}}
    routes:
      - name: fragile
        match: {{path: "/fragile/**"}}
        breaker: {{failure_threshold: 1}}
    """
    gw = await gateway_factory(gateway_yaml({"api": block}, "readiness: {require: [api]}"))
    async with gw.session.get(f"{gw.url}/api/fragile/1") as resp:
        assert resp.status == 500
    async with gw.session.get(f"{gw.url}/api/fragile/2") as resp:
        assert resp.headers["x-gateway-error"] == "breaker_open"
    async with gw.session.get(f"{gw.url}/api/other") as resp:  # the upstream's breaker is still closed
        assert resp.status == 500
    async with gw.session.get(f"{gw.admin}/readyz") as resp:
        assert resp.status == 200
    async with gw.session.get(f"{gw.url}/api/other") as resp:
        assert resp.status == 500
    async with gw.session.get(f"{gw.admin}/readyz") as resp:
        assert resp.status == 503
    async with gw.session.get(f"{gw.admin}/admin/breakers") as resp:
        names = {b["name"]: b["state"] for b in (await resp.json())["breakers"]}
    assert names == {"api": "open", "api.fragile": "open"}
