"""Hot reload of the real program (issue 5): SIGHUP, POST /admin/reload and ``watch: true``.

test_lifecycle.py covers SIGHUP adding an upstream and broken YAML keeping the old upstreams. These
tests cover the rest of the contract's reload rules: a changed policy applies to new requests while
a request in flight keeps the policy it started with; a file that is valid YAML but an invalid config
keeps the old *policies* serving and says which key is wrong, on the admin port, in the log and in
the metrics; breaker state survives for upstreams whose url did not change (forced or tripped) and
starts afresh for one whose url did; a changed listen address is reported as ``restart_required``;
``watch: true`` reloads without a signal.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from .support import TOKEN_FROM_ENV, GatewayProcess, free_port, gateway_yaml, sample, scrape

TOKEN = "reload-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
FAILED = "config reload failed; the previous config keeps serving"


async def slow(request: web.BaseRequest, up: Any) -> web.StreamResponse:
    """``/slow/{ms}`` answers after ms milliseconds; anything else at once."""
    parts = request.path.split("/")
    if len(parts) == 3 and parts[1] == "slow":
        await asyncio.sleep(int(parts[2]) / 1000)
    return web.Response(text="ok")


async def down(request: web.BaseRequest, up: Any) -> web.StreamResponse:
    return web.Response(status=503, text="down")


def slow_route(url: str, per_try: str) -> str:
    """Upstream ``api`` with a route ``slow`` whose per-try timeout is ``per_try``, and no retry."""
    return f"""
        url: {url}
        routes:
          - name: slow
            match: {{methods: [GET], path: "/slow/{{ms}}"}}
            timeouts: {{per_try: {per_try}, total: 5s}}
            retry: {{attempts: 1}}
    """


def events(gw: GatewayProcess, msg: str) -> list[dict[str, Any]]:
    out = []
    for line in list(gw.lines):
        if msg in line:
            try:
                data = json.loads(line)
            except ValueError:
                continue
            if data.get("msg") == msg:
                out.append(data)
    return out


async def wait_event(gw: GatewayProcess, msg: str, count: int, timeout: float = 10.0) -> dict[str, Any]:
    """The ``count``-th log event ``msg`` (1-based), waiting up to ``timeout`` seconds for it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = events(gw, msg)
        if len(found) >= count:
            return found[count - 1]
        await asyncio.sleep(0.02)
    raise AssertionError(f"no {count}th {msg!r} within {timeout}s:\n" + "\n".join(gw.lines))


async def get(session: aiohttp.ClientSession, url: str) -> tuple[int, str | None]:
    """Status and x-gateway-error of a GET."""
    async with session.get(url) as resp:
        await resp.read()
        return resp.status, resp.headers.get("x-gateway-error")


def write_atomically(path: Path, text: str) -> None:
    """Replace the file in one step, so a watcher never reads it half written."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


async def test_sighup_applies_a_new_route_timeout_to_new_requests_only(upstream_factory, gateway_process, tmp_path):
    up = await upstream_factory(slow)
    gw = gateway_process(gateway_yaml({"api": slow_route(up.url, "300ms")}))
    path = tmp_path / "gateway-0.yaml"
    async with aiohttp.ClientSession() as session:
        assert await get(session, f"{gw.url}/api/slow/600") == (504, "upstream_timeout")

        path.write_text(gateway_yaml({"api": slow_route(up.url, "2s")}))
        gw.signal(signal.SIGHUP)
        reloaded = await wait_event(gw, "config reloaded", 1)
        assert {k: reloaded[k] for k in ("source", "added", "removed", "changed", "restart_required")} == {
            "source": "SIGHUP",
            "added": [],
            "removed": [],
            "changed": ["api"],
            "restart_required": [],
        }
        assert await get(session, f"{gw.url}/api/slow/600") == (200, None)

        # A request in flight keeps the policy it started with (per_try 2s) across a reload to 300ms.
        inflight = asyncio.create_task(get(session, f"{gw.url}/api/slow/1500"))
        await asyncio.sleep(0.2)
        path.write_text(gateway_yaml({"api": slow_route(up.url, "300ms")}))
        gw.signal(signal.SIGHUP)
        await wait_event(gw, "config reloaded", 2)
        assert not inflight.done()
        assert await get(session, f"{gw.url}/api/slow/600") == (504, "upstream_timeout")
        assert await inflight == (200, None)


async def test_an_invalid_config_keeps_the_old_policies_and_says_which_key(upstream_factory, gateway_process, tmp_path):
    up = await upstream_factory(slow)
    env = {"GATEWAY_ADMIN_TOKEN": TOKEN}
    gw = gateway_process(gateway_yaml({"api": slow_route(up.url, "2s")}, admin_token=TOKEN_FROM_ENV), env)
    path = tmp_path / "gateway-0.yaml"
    where = "upstreams.api.routes[0].timeouts.per_try: expected a duration like '10s', got 'ten'"
    async with aiohttp.ClientSession() as session:
        invalid = gateway_yaml({"api": slow_route(up.url, "ten")}, admin_token=TOKEN_FROM_ENV)  # valid YAML
        path.write_text(invalid)
        gw.signal(signal.SIGHUP)
        failed = await wait_event(gw, FAILED, 1)
        assert failed["level"] == "error" and failed["source"] == "SIGHUP"
        assert failed["error"] == f"{path}: {where}"

        # still the old policy: per_try 2s lets a 600 ms answer through; still ready; config unchanged
        assert await get(session, f"{gw.url}/api/slow/600") == (200, None)
        async with session.get(f"{gw.admin}/readyz") as resp:
            assert resp.status == 200
        async with session.get(f"{gw.admin}/admin/config") as resp:
            config = await resp.json()
        assert config["upstreams"]["api"]["routes"][0]["timeouts"]["per_try"] == "2s"

        async with session.post(f"{gw.admin}/admin/reload") as resp:
            assert resp.status == 401  # the token is required
        async with session.post(f"{gw.admin}/admin/reload", headers=AUTH) as resp:
            assert resp.status == 400
            assert resp.headers["x-gateway-error"] == "config_invalid"
            assert (await resp.json())["error"] == {"code": "config_invalid", "message": f"{path}: {where}"}
        metrics = await scrape(session, gw.admin)
        assert sample(metrics, "gateway_config_reloads_total", result="error") == 2.0
        assert sample(metrics, "gateway_config_reloads_total", result="ok") == 0.0

        path.write_text(gateway_yaml({"api": slow_route(up.url, "300ms")}, admin_token=TOKEN_FROM_ENV))
        async with session.post(f"{gw.admin}/admin/reload", headers=AUTH) as resp:
            assert resp.status == 200
            assert await resp.json() == {
                "result": "ok",
                "added": [],
                "removed": [],
                "changed": ["api"],
                "restart_required": [],
            }
        assert await get(session, f"{gw.url}/api/slow/600") == (504, "upstream_timeout")
        assert sample(await scrape(session, gw.admin), "gateway_config_reloads_total", result="ok") == 1.0
        assert (await wait_event(gw, "config reloaded", 1))["source"] == "admin"


async def test_breaker_state_survives_a_reload_unless_the_url_changed(upstream_factory, gateway_process, tmp_path):
    ok = await upstream_factory()
    failing = await upstream_factory(down)
    breaker = "breaker: {failure_threshold: 2, recovery: 1m}\nretry: {attempts: 1}"

    def config(api_per_try: str, flaky_per_try: str, moved_url: str) -> str:
        return gateway_yaml(
            {
                "api": f"url: {ok.url}\ntimeouts: {{per_try: {api_per_try}}}",
                "flaky": f"url: {failing.url}\ntimeouts: {{per_try: {flaky_per_try}}}\n{breaker}",
                "moved": f"url: {moved_url}\n{breaker}",
            },
            admin_token=TOKEN_FROM_ENV,
        )

    gw = gateway_process(config("3s", "3s", failing.url), {"GATEWAY_ADMIN_TOKEN": TOKEN})
    path = tmp_path / "gateway-0.yaml"
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{gw.admin}/admin/breakers/api/open", headers=AUTH) as resp:
            assert resp.status == 200
        for name in ("flaky", "moved"):  # opened by failures
            assert [await get(session, f"{gw.url}/{name}/x") for _ in range(3)] == [
                (503, None),
                (503, None),
                (503, "breaker_open"),
            ]
        async with session.get(f"{gw.admin}/admin/breakers") as resp:
            before = {b["name"]: b for b in (await resp.json())["breakers"]}
        assert [before[n]["state"] for n in ("api", "flaky", "moved")] == ["open", "open", "open"]

        path.write_text(config("4s", "4s", ok.url))  # api and flaky: other timeouts; moved: another url
        gw.signal(signal.SIGHUP)
        reloaded = await wait_event(gw, "config reloaded", 1)
        assert reloaded["changed"] == ["api", "flaky", "moved"]

        async with session.get(f"{gw.admin}/admin/breakers") as resp:
            after = {b["name"]: b for b in (await resp.json())["breakers"]}
        assert (after["api"]["state"], after["api"]["forced"]) == ("open", True)
        assert after["flaky"]["state"] == "open"
        assert after["flaky"]["opened_at"] == before["flaky"]["opened_at"]
        assert after["flaky"]["retry_at"] == before["flaky"]["retry_at"]
        assert after["moved"]["state"] == "closed"

        seen = ok.count
        assert await get(session, f"{gw.url}/api/x") == (503, "breaker_open")
        assert await get(session, f"{gw.url}/flaky/x") == (503, "breaker_open")
        assert ok.count == seen  # the forced-open breaker let nothing through
        assert await get(session, f"{gw.url}/moved/x") == (200, None)
        metrics = await scrape(session, gw.admin)
        for name, value in (("api", 2.0), ("flaky", 2.0), ("moved", 0.0)):
            assert sample(metrics, "gateway_breaker_state", route="-", upstream=name) == value


async def test_admin_reload_reports_added_removed_and_restart_required(upstream_factory, gateway_process, tmp_path):
    up = await upstream_factory()
    gw = gateway_process(
        gateway_yaml({"api": f"url: {up.url}", "old": f"url: {up.url}"}, admin_token=TOKEN_FROM_ENV),
        {"GATEWAY_ADMIN_TOKEN": TOKEN},
    )
    path = tmp_path / "gateway-0.yaml"
    new_port, new_admin = free_port(), free_port()
    new = {"api": f"url: {up.url}", "new": f"url: {up.url}"}
    path.write_text(gateway_yaml(new, admin_token=TOKEN_FROM_ENV, port=new_port, admin_port=new_admin))
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{gw.admin}/admin/reload", headers=AUTH) as resp:
            assert resp.status == 200
            assert await resp.json() == {
                "result": "ok",
                "added": ["new"],
                "removed": ["old"],
                "changed": [],
                "restart_required": ["listen", "admin.listen"],
            }
        # the rest applied; the listeners stay where they are until a restart
        assert await get(session, f"{gw.url}/new/x") == (200, None)
        assert await get(session, f"{gw.url}/old/x") == (404, "no_route")
        for port in (new_port, new_admin):
            try:
                await get(session, f"http://127.0.0.1:{port}/livez")
            except aiohttp.ClientConnectionError:
                continue
            raise AssertionError(f"port {port} answers before a restart")


async def test_watch_reloads_when_the_file_changes(upstream_factory, gateway_process, tmp_path):
    up = await upstream_factory()
    gw = gateway_process(gateway_yaml({"api": f"url: {up.url}"}, extra="watch: true"))
    path = tmp_path / "gateway-0.yaml"
    async with aiohttp.ClientSession() as session:
        assert await get(session, f"{gw.url}/second/x") == (404, "no_route")
        write_atomically(path, gateway_yaml({"api": f"url: {up.url}", "second": f"url: {up.url}"}, extra="watch: true"))
        reloaded = await wait_event(gw, "config reloaded", 1, timeout=5)
        assert (reloaded["source"], reloaded["added"]) == ("watch", ["second"])
        assert await get(session, f"{gw.url}/second/x") == (200, None)

        write_atomically(path, "upstreams: [")
        failed = await wait_event(gw, FAILED, 1, timeout=5)
        assert failed["source"] == "watch" and "invalid YAML" in failed["error"]
        assert await get(session, f"{gw.url}/second/x") == (200, None)
        assert sample(await scrape(session, gw.admin), "gateway_config_reloads_total", result="error") == 1.0
        await asyncio.sleep(1.5)  # longer than the watch interval: no second attempt at the same file
        assert len(events(gw, FAILED)) == 1


async def test_a_request_in_flight_is_recorded_under_the_policy_it_started_with(
    upstream_factory, gateway_process, tmp_path
):
    """Reload mid-request, moving ``api`` to another url (a new pool and fresh statistics): the request
    in flight is served by the old upstream and counted in the old policy's statistics, never in the
    new one's, which /health shows; the next request goes to the new url and is counted there."""
    old, new = await upstream_factory(slow), await upstream_factory(slow)
    gw = gateway_process(gateway_yaml({"api": slow_route(old.url, "3s")}))
    path = tmp_path / "gateway-0.yaml"
    async with aiohttp.ClientSession() as session:
        inflight = asyncio.create_task(get(session, f"{gw.url}/api/slow/1200"))
        await asyncio.sleep(0.3)
        path.write_text(gateway_yaml({"api": slow_route(new.url, "3s")}))
        gw.signal(signal.SIGHUP)
        reloaded = await wait_event(gw, "config reloaded", 1)
        assert reloaded["changed"] == ["api"]
        assert not inflight.done()
        assert await inflight == (200, None)
        assert (old.count, new.count) == (1, 0)
        async with session.get(f"{gw.admin}/health") as resp:
            assert (await resp.json())["upstreams"]["api"]["requests"] == 0
        assert await get(session, f"{gw.url}/api/slow/0") == (200, None)
        assert (old.count, new.count) == (1, 1)
        async with session.get(f"{gw.admin}/health") as resp:
            assert (await resp.json())["upstreams"]["api"]["requests"] == 1
