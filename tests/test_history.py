"""The status page's memory (``gateway/history.py``) on a fake clock, and its JSON (``GET /admin/status``)."""

from __future__ import annotations

import asyncio
import gzip
import json
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
from aiohttp import web

from gateway.history import BUCKETS, WIDTH, History, Series
from gateway.stats import percentile_ms
from gateway.statuspage import DOCUMENT_TTL, _quota

from .support import ROOT, FakeClock, gateway_yaml


@dataclass
class Answer:
    upstream: str = "api"
    route: str = "r"
    method: str = "GET"
    status: int = 200
    error: str | None = None
    cache: str | None = None
    source: str = "upstream"
    request_id: str = "rid"


def make() -> tuple[History, FakeClock]:
    clock = FakeClock(1000.0, wall_start=1_700_000_000.0 + 1000.0)
    return History(clock=clock, wall=clock.wall), clock


def test_minute_and_fifteen_minutes_roll_with_the_clock() -> None:
    history, clock = make()
    for _ in range(10):
        history.record(Answer(), 0.010)
    history.record(Answer(status=503), 0.5)
    history.record(Answer(error="breaker_open", status=503, source="gateway"), 0.0001)
    view = history.view(("api", "r"))
    minute, span = view.minute.as_dict(), view.span.as_dict()
    assert minute["requests"] == span["requests"] == 12
    assert minute["errors"] == 2 and minute["success_rate"] == round(10 / 12, 4)
    assert view.requests[-1] == 12 and view.errors[-1] == 2 and sum(view.requests) == 12
    clock.now += 65  # past the minute: still in the 15 minutes, one bucket further back each 10 s
    view = history.view(("api", "r"))
    assert view.minute.as_dict()["requests"] == 0 and view.minute.as_dict()["success_rate"] is None
    assert view.span.as_dict()["requests"] == 12
    assert view.requests[-7] == 12 and view.errors[-7] == 2  # 65 s ago: six buckets before the current one
    history.record(Answer(), 0.010)
    assert history.view(("api", "r")).span.as_dict()["requests"] == 13
    clock.now += BUCKETS * 10 - 60  # the first dozen are now more than 15 minutes old
    view = history.view(("api", "r"))
    assert view.span.as_dict()["requests"] == 1 and sum(view.requests) == 1
    assert view.requests[BUCKETS - 1 - 84] == 1  # counted 84 buckets before the current one
    clock.now += 60
    assert history.view(("api", "r")).span.as_dict()["requests"] == 0


def test_a_ring_reused_after_a_long_silence_holds_no_old_counts() -> None:
    """A bucket whose slot comes round again is reset before it counts, even after hours."""
    history, clock = make()
    history.record(Answer(status=500), 1.0)
    clock.now += 3 * 3600 + 0.5  # the same slot of the ring, many laps later
    history.record(Answer(), 0.001)
    span = history.view(("api", "r")).span.as_dict()
    assert span["requests"] == 1 and span["errors"] == 0


def test_percentiles_match_the_health_window() -> None:
    history, _ = make()
    latencies = [0.001 * i for i in range(1, 101)]
    for seconds in latencies:
        history.record(Answer(), seconds)
    minute = history.view(("api", "r")).minute.as_dict()
    from gateway.stats import MinuteWindow

    window = MinuteWindow()
    for seconds in latencies:
        window.record(seconds, None)
    health = window.snapshot()
    assert (minute["p50_ms"], minute["p95_ms"]) == (health["p50_ms"], health["p95_ms"])
    assert 50 <= minute["p50_ms"] <= 50 * 1.42 and 95 <= minute["p95_ms"] <= 95 * 1.42
    assert percentile_ms([0] * 34, 0, 0.5) is None


def test_cache_and_throttle_counters() -> None:
    history, _ = make()
    for label in ("HIT", "HIT", "MISS", "STALE", "REVALIDATED", "BYPASS", None):
        history.record(Answer(cache=label), 0.001)
    history.record(Answer(error="rate_limited", status=429, source="gateway"), 0.001)
    history.record(Answer(error="quota_exhausted", status=429, source="gateway"), 0.001)
    span = history.view(("api", "r")).span.as_dict()
    assert span["cache_lookups"] == 5 and span["cache_hits"] == 2 and span["hit_ratio"] == 0.4
    assert span["stale"] == 1 and span["throttled"] == 2 and span["errors"] == 2


def test_memory_is_bounded_whatever_the_traffic() -> None:
    """One series per configured (upstream, route), of a fixed size; 100,000 answers change nothing."""
    history, clock = make()
    history.record(Answer(), 0.01)
    size = history.nbytes()
    assert size == Series().nbytes == BUCKETS * (WIDTH * 4 + 8)
    for i in range(100_000):
        clock.now += 0.02
        history.record(Answer(route=f"r{i % 5}", status=500 if i % 7 == 0 else 200), 0.001 * (i % 900))
    assert len(history.series) == 6
    assert history.nbytes() == 6 * size
    assert len(history.errors) == 50


def test_latest_errors_are_newest_first_and_hold_no_path() -> None:
    history, _ = make()
    for i in range(60):
        history.record(Answer(status=502, error="upstream_reset", request_id=f"id-{i}", method="BREW"), 0.1)
    history.record(Answer(status=200), 0.1)  # a success is not an error
    errors = history.latest_errors()
    assert len(errors) == 50 and errors[0]["request_id"] == "id-59" and errors[-1]["request_id"] == "id-10"
    assert set(errors[0]) == {"at", "code", "status", "source", "upstream", "route", "method", "request_id"}
    assert errors[0]["method"] == "OTHER"  # bounded: any method outside the standard ones
    assert errors[0]["at"].endswith("Z")


def test_transitions_and_forgetting_what_a_reload_removed() -> None:
    history, clock = make()
    for i in range(12):
        history.transition("api", "closed" if i % 2 == 0 else "open", "open" if i % 2 == 0 else "closed", "trip")
    moves = history.transitions_of("api")
    assert len(moves) == 10 and moves[0]["from"] == "open" and moves[0]["to"] == "closed"
    history.record(Answer(upstream="gone", route="x"), 0.01)
    history.forget({("api", "r")}, {"api"})
    assert ("gone", "x") in history.series  # idle for less than the span: kept
    clock.now += BUCKETS * 10 + 10
    history.forget({("api", "r")}, set())
    assert ("gone", "x") not in history.series and history.transitions_of("api") == []


def test_a_quota_block_is_shown_when_the_route_has_one() -> None:
    """The seam for the quota issue: a route's ``quota`` with a ``snapshot()`` reaches the document."""
    windows = {"windows": [{"key": "gemini-2.0-flash", "window": "rpm", "limit": 15, "remaining": 4}]}
    assert _quota(SimpleNamespace(quota=SimpleNamespace(snapshot=lambda: windows))) == windows  # type: ignore[arg-type]
    assert _quota(SimpleNamespace(quota=None)) is None  # type: ignore[arg-type]
    assert _quota(SimpleNamespace()) is None  # type: ignore[arg-type]


async def test_status_json_per_upstream_and_route(upstream_factory, gateway_factory) -> None:
    async def script(request: web.BaseRequest, up) -> web.StreamResponse:
        if request.path.endswith("/fail"):
            return web.json_response({"error": "x"}, status=500)
        return web.json_response([{"id": 1}])

    up = await upstream_factory(script)
    text = gateway_yaml(
        {
            "api": f"""
                url: {up.url}
                retry: {{attempts: 1}}
                breaker: {{failure_threshold: 2, recovery: 1m}}
                routes:
                  - name: send
                    match: {{methods: [POST], path: "/{{phone_id}}/messages"}}
                    rate_limit: {{rate: 1/m, burst: 2, key: phone_id, max_wait: 0s}}
                  - name: cached
                    match: {{methods: [GET], path: "/cached"}}
                    cache: {{ttl: 1m}}
            """
        }
    )
    gw = await gateway_factory(text)
    s = gw.session
    for _ in range(3):
        async with s.post(f"{gw.url}/api/15550001234/messages", json={}) as resp:
            await resp.read()
    for _ in range(2):
        async with s.get(f"{gw.url}/api/cached?key=QUERYSECRET") as resp:
            await resp.read()
    for _ in range(3):
        async with s.get(f"{gw.url}/api/fail", headers={"x-request-id": "req-fail-1"}) as resp:
            await resp.read()
    async with s.get(f"{gw.url}/nowhere") as resp:
        assert resp.status == 404
    async with s.get(f"{gw.admin}/admin/status", headers={"Accept-Encoding": "gzip"}) as resp:
        assert resp.status == 200 and resp.headers["Cache-Control"] == "no-store"
        assert resp.headers["Content-Encoding"] == "gzip"
        raw = gzip.decompress(await resp.read()).decode()  # this session leaves bodies as sent
    doc = json.loads(raw)
    assert doc["admin"] == {"token_required": False} and doc["poll_seconds"] == 2.0
    assert doc["history"]["bucket_seconds"] == 10 and doc["history"]["buckets"] == BUCKETS
    (api,) = doc["upstreams"]
    routes = {r["name"]: r for r in api["routes"]}
    assert list(routes) == ["send", "cached", "-"] and routes["-"]["default"] is True
    assert routes["send"]["last_1m"]["requests"] == 3 and routes["send"]["last_1m"]["throttled"] == 1
    (limit,) = routes["send"]["rate_limit"]
    assert limit["keys"] == 1 and limit["exhausted"] == 1 and limit["tokens_min"] < 1 and limit["key"] == "phone_id"
    assert routes["cached"]["last_15m"]["cache_hits"] == 1 and routes["cached"]["last_15m"]["hit_ratio"] == 0.5
    assert routes["-"]["last_1m"]["errors"] == 3  # 500, 500, then breaker_open
    assert api["last_1m"]["requests"] == 8 and api["last_1m"]["errors"] == 4  # the 429 counts as failed
    assert len(api["sparkline"]["errors"]) == BUCKETS and api["sparkline"]["errors"][-1] == 4
    (breaker,) = api["breakers"]
    assert breaker["state"] == "open" and breaker["next_probe_at"] == breaker["retry_at"] is not None
    assert [(t["from"], t["to"], t["cause"]) for t in breaker["transitions"]] == [("closed", "open", "trip")]
    assert api["cache"]["hits"] == 1 and api["cache"]["entries"] == 1
    assert doc["unrouted"]["last_1m"]["requests"] == 1
    assert doc["last_1m"]["requests"] == 9
    codes = [(e["code"], e["status"], e["route"]) for e in doc["errors"]]
    assert codes[0] == ("no_route", 404, "-") and ("breaker_open", 503, "-") in codes
    assert (None, 500, "-") in codes and ("rate_limited", 429, "send") in codes
    assert "req-fail-1" in {e["request_id"] for e in doc["errors"]}
    # what the document must never hold: a requested path, a query value, a rate-limit key value
    for secret in ("15550001234", "QUERYSECRET", "/nowhere", up.url):
        assert secret not in raw


async def test_page_and_assets_carry_a_strict_policy(gateway_factory, upstream_factory) -> None:
    up = await upstream_factory()
    gw = await gateway_factory(gateway_yaml({"api": f"url: {up.url}"}))
    for path, kind in (("/", "text/html"), ("/status.css", "text/css"), ("/status.js", "text/javascript")):
        async with gw.session.get(gw.admin + path) as resp:
            assert resp.status == 200 and resp.content_type == kind
            csp = resp.headers["Content-Security-Policy"]
            assert "default-src 'none'" in csp and "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
            assert resp.headers["X-Content-Type-Options"] == "nosniff"
            body = await resp.text()
            body = body.replace('"http://www.w3.org/2000/svg"', "")  # the SVG namespace: a name, never fetched
            assert "http://" not in body and "https://" not in body
    async with gw.session.post(gw.admin + "/") as resp:  # the page changes nothing by itself
        assert resp.status == 405


def test_the_built_package_ships_the_page(tmp_path: Path) -> None:
    """What the build backend (hatchling, pyproject.toml) puts in the wheel: the page's files."""
    pytest.importorskip("hatchling", reason="the build backend (pyproject.toml); .ci/run installs it")
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(ROOT / "pyproject.toml", src)
    shutil.copy(ROOT / "README.md", src)
    shutil.copytree(ROOT / "gateway", src / "gateway", ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path / "build"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(src)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    static = sorted(p.name for p in (ROOT / "gateway" / "static").iterdir())
    assert static == ["status.css", "status.html", "status.js"]
    (wheel,) = out.glob("*.whl")
    with zipfile.ZipFile(wheel) as built:
        for name in static:
            assert built.read(f"gateway/static/{name}") == (ROOT / "gateway" / "static" / name).read_bytes()


@pytest.mark.parametrize("routes", [1, 300])
def test_document_cost_with_many_routes(routes: int) -> None:
    """A series costs the same whatever the traffic; 300 routes stay well under a megabyte each way."""
    history, clock = make()
    for i in range(routes):
        for _ in range(20):
            clock.now += 0.5
            history.record(Answer(route=f"r{i}"), 0.01)
    assert history.nbytes() == routes * Series().nbytes
    assert history.nbytes() <= 300 * 15_200


async def test_one_document_a_second_unless_a_breaker_moves(upstream_factory, gateway_factory) -> None:
    """However many pages poll, the document is built at most once a second; a breaker that moves
    (an operator's reset or force-open from the page) shows at once."""
    up = await upstream_factory()
    gw = await gateway_factory(gateway_yaml({"api": f"url: {up.url}"}))
    s = gw.session

    async def status() -> dict:
        async with s.get(f"{gw.admin}/admin/status", headers={"Accept-Encoding": "identity"}) as resp:
            return json.loads(await resp.read())

    first = await status()
    async with s.get(f"{gw.url}/api/x") as resp:
        assert resp.status == 200
    again = await status()
    assert again == first and again["last_1m"]["requests"] == 0  # the same document, within the second
    async with s.post(f"{gw.admin}/admin/breakers/api/open") as resp:
        assert resp.status == 200
    moved = await status()
    assert moved["upstreams"][0]["breakers"][0]["forced"] is True and moved["last_1m"]["requests"] == 1
    await asyncio.sleep(DOCUMENT_TTL + 0.1)
    async with s.get(f"{gw.url}/api/x") as resp:
        assert resp.status == 503
    assert (await status())["last_1m"]["requests"] == 2
