"""The status page in a real browser (issue 18): Debian's Chromium, headless, driven by Playwright.

A real gateway subprocess sits in front of a real upstream that starts failing on command. What a
person sees on the page is read from the rendered DOM, never from the JSON: the breaker opening,
the error counts rising without a reload, STALE answers counted, the latest errors with their
request ids; then the admin token (asked for, kept in sessionStorage only) and the reset /
force-open / purge buttons with their confirmations, checked against the admin API. Every network
request the page makes is recorded: all go to the admin port's own origin, the JSON at most once
per 2 s; a Content-Security-Policy violation or a script error would show as a console error.
A last test drives the secret audit's traffic and scans the rendered page, its JSON and every
answer the browser received for the audit's canaries.

The browser is Debian's (``/usr/bin/chromium``, ``executable_path``): nothing is downloaded.
``.ci/run`` installs it (apt) and Playwright (pip). One browser serves the whole module.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web

from .support import TOKEN_FROM_ENV, GatewayProcess, Upstream, gateway_yaml, waiting
from .support.secret_audit import (
    CANARIES,
    CLIENT_HEADERS,
    ENV,
    URL_AND_CONFIG_CANARIES,
    Observed,
    Switch,
    audit_yaml,
    drive,
    finish,
    make_script,
)

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
HAVE_CHROMIUM = Path(CHROMIUM).exists()
try:
    from playwright.async_api import Browser, BrowserContext, Page, async_playwright
except ImportError:  # pragma: no cover - .ci/run installs it
    async_playwright = None  # type: ignore[assignment]

pytestmark = pytest.mark.asyncio(loop_scope="module")

TOKEN = "page-test-admin-token-5f1c"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser() -> AsyncIterator[Browser]:
    """Debian's Chromium; skipped where it or Playwright is missing, except in CI (``CI`` set), where
    that is a failure: ``.ci/run`` installs both, and a silent skip would hide these tests."""
    missing = "pip install playwright" if async_playwright is None else None
    if missing is None and not HAVE_CHROMIUM:
        missing = "apt-get install chromium"
    if missing is not None:
        if os.environ.get("CI"):
            pytest.fail(f"{missing}: .ci/run installs it; the status page tests need it")
        pytest.skip(f"{missing} (.ci/run does) to run the status page in a browser")
    async with async_playwright() as pw:
        launched = await pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        await launched.close()


@dataclass
class Recorder:
    """Everything a page did on the network, and what its console said."""

    origin: str
    requests: list[tuple[float, str, str, dict[str, str]]] = field(default_factory=list)  # (t, method, url, headers)
    bodies: dict[str, bytes] = field(default_factory=dict)
    console_errors: list[str] = field(default_factory=list)
    reading: set[asyncio.Future[None]] = field(default_factory=set)

    def attach(self, context: BrowserContext) -> None:
        context.on("request", lambda r: self.requests.append((time.monotonic(), r.method, r.url, r.headers)))
        context.on("response", self._response)
        context.on("console", lambda m: self.console_errors.append(m.text) if m.type == "error" else None)
        context.on("weberror", lambda e: self.console_errors.append(str(e.error)))

    def _response(self, response: Any) -> None:
        async def keep() -> None:
            with contextlib.suppress(Exception):  # a redirect or an aborted request has no body
                self.bodies[f"{response.request.method} {response.url} #{len(self.bodies)}"] = await response.body()

        task = asyncio.ensure_future(keep())
        self.reading.add(task)
        task.add_done_callback(self.reading.discard)

    def posts(self) -> list[tuple[str, dict[str, str]]]:
        return [(url, headers) for _, method, url, headers in self.requests if method == "POST"]

    def polls(self, since: float = 0.0) -> list[float]:
        return [t for t, method, url, _ in self.requests if url.endswith("/admin/status") and t >= since]

    def foreign(self) -> list[str]:
        return [url for _, _, url, _ in self.requests if not url.startswith(self.origin + "/")]


async def open_page(browser: Browser, admin: str, **context_args: Any) -> tuple[Page, Recorder]:
    context = await browser.new_context(**context_args)
    recorder = Recorder(admin)
    recorder.attach(context)
    page = await context.new_page()
    page.set_default_timeout(10_000)
    await page.goto(admin + "/")
    await page.wait_for_selector("[data-upstream]")
    return page, recorder


async def eventually(check: Callable[[], Awaitable[Any]], timeout: float = 10.0, what: str = "") -> Any:
    """Poll ``check`` until it returns something truthy (the page refreshes every 2 s)."""
    return await waiting.eventually(check, timeout, what, interval=0.2)


def field_of(page: Page, upstream: str, name: str, route: str | None = None) -> Any:
    scope = f"[data-upstream='{upstream}']" + (f" tr[data-route='{route}']" if route else " .figures")
    return page.locator(f"{scope} [data-field='{name}']")


async def number(page: Page, upstream: str, name: str, route: str | None = None) -> int:
    text = await field_of(page, upstream, name, route).inner_text()
    digits = text.split()[0].replace(",", "")
    return int(digits) if digits.isdigit() else 0


async def breaker_state(page: Page, name: str) -> str:
    return await page.locator(f".breaker[data-breaker='{name}']").get_attribute("data-state") or ""


async def admin_json(admin: str, path: str) -> Any:
    async with aiohttp.ClientSession() as s, s.get(admin + path) as resp:
        return await resp.json()


async def server_breaker(admin: str, name: str) -> dict[str, Any]:
    breakers = (await admin_json(admin, "/admin/breakers"))["breakers"]
    return next(b for b in breakers if b["name"] == name)


@pytest_asyncio.fixture(loop_scope="module")
async def incident(tmp_path: Path) -> AsyncIterator[tuple[GatewayProcess, Switch]]:
    """A gateway with an admin token in front of ``api`` (fails on command) and ``calm`` (never fails)."""
    switch = Switch()

    async def api(request: web.BaseRequest, up: Upstream) -> web.StreamResponse:
        if switch.fail:
            return web.json_response({"message": "database exploded"}, status=500)
        return web.json_response([{"id": 1}])

    async def calm(request: web.BaseRequest, up: Upstream) -> web.StreamResponse:
        return web.json_response({"ok": True})

    failing, healthy = await Upstream(api).start(), await Upstream(calm).start()
    text = gateway_yaml(
        {
            "api": f"""
                url: {failing.url}
                retry: {{attempts: 1}}
                breaker: {{failure_threshold: 3, recovery: 5m}}
                routes:
                  - name: profiles
                    match: {{methods: [GET], path: "/profiles"}}
                    cache: {{ttl: 1s, stale_if_error: 10m}}
                  - name: items
                    match: {{methods: [GET], path: "/items/{{id}}"}}
            """,
            "calm": f"url: {healthy.url}",
        },
        admin_token=TOKEN_FROM_ENV,
    )
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    gw = GatewayProcess(path, {"GATEWAY_ADMIN_TOKEN": TOKEN})
    try:
        await asyncio.to_thread(gw.wait_started)
        yield gw, switch
    finally:
        gw.stop()
        await failing.close()
        await healthy.close()


async def get(s: aiohttp.ClientSession, url: str, **headers: str) -> aiohttp.ClientResponse:
    async with s.get(url, headers=headers) as resp:
        await resp.read()
        return resp


@pytest.mark.slow
async def test_an_incident_as_the_page_shows_it(browser: Browser, incident: tuple[GatewayProcess, Switch]) -> None:
    gw, switch = incident
    page, rec = await open_page(browser, gw.admin, viewport={"width": 1366, "height": 900})
    async with aiohttp.ClientSession() as s:
        # calm: answers, a cached one filled then hit
        for _ in range(3):
            assert (await get(s, f"{gw.url}/api/profiles")).status == 200
            assert (await get(s, f"{gw.url}/api/items/1")).status == 200
            assert (await get(s, f"{gw.url}/calm/x")).status == 200
        await eventually(lambda: _at_least(page, "api", "requests-1m", 6, route="items", minimum=3), what="requests")
        assert await breaker_state(page, "api") == "closed"
        assert await number(page, "api", "errors-1m") == 0
        assert (await field_of(page, "api", "hit-ratio-15m", "profiles").inner_text()) == "66.7 % of 3"

        # the upstream fails: errors rise on the page, live, without a reload
        switch.fail = True
        for i in range(2):
            assert (await get(s, f"{gw.url}/api/items/{i}")).status == 500
        await eventually(lambda: _at_least(page, "api", "errors-1m", 2), what="2 errors on the page")
        assert await breaker_state(page, "api") == "closed"
        await asyncio.sleep(1.1)  # the cached profile expires (ttl 1s); stale_if_error keeps it 10 min
        assert (await get(s, f"{gw.url}/api/items/3")).status == 500  # third failure: the breaker opens
        resp = await get(s, f"{gw.url}/api/items/4", **{"x-request-id": "incident-rid-4"})
        assert resp.status == 503 and resp.headers["x-gateway-error"] == "breaker_open"
        for _ in range(3):
            resp = await get(s, f"{gw.url}/api/profiles")
            assert resp.status == 200 and resp.headers["x-gateway-cache"] == "STALE"
        await eventually(lambda: _breaker_is(page, "api", "open"), what="the breaker open on the page")
        assert await number(page, "api", "errors-1m") == 4  # three 500s, one breaker_open
        assert await page.locator("[data-upstream='api'] [data-field='upstream-breaker']").inner_text() == (
            "breaker open"
        )
        breaker = page.locator(".breaker[data-breaker='api']")
        assert "closed → open · trip" in await breaker.locator(".transitions").inner_text()
        probe = await breaker.locator("[data-field='next-probe']").inner_text()
        assert any(f"(in {m} min)" in probe for m in (4, 5, 6)), probe  # recovery 5m ± 20 % jitter
        await eventually(lambda: _at_least(page, "api", "stale-15m", 3), what="STALE count")
        assert (await field_of(page, "api", "stale", "profiles").inner_text()) == "3 / 3"
        assert "breaker open" in await page.locator("[data-chip='api']").inner_text()  # the strip at the top
        assert await page.locator("[data-upstream='calm'] .breaker").get_attribute("data-state") == "closed"
        assert await number(page, "calm", "errors-1m") == 0
        row = page.locator("#errors tbody tr", has_text="incident-rid-4")
        assert await row.count() == 1
        assert "breaker_open" in await row.inner_text() and "items" in await row.inner_text()

        # more failures: the counts keep rising on the same page
        before = await number(page, "api", "errors-1m")
        for i in range(3):
            await get(s, f"{gw.url}/api/items/{i}")
        await eventually(lambda: _at_least(page, "api", "errors-1m", before + 3), what="errors rising again")
        await get(s, f"{gw.url}/api/profiles")
        await eventually(lambda: _at_least(page, "api", "stale-15m", 4), what="STALE rising again")

    # at most one small poll every 2 s while nobody acts
    quiet = time.monotonic()
    await asyncio.sleep(6.5)
    polls = rec.polls(since=quiet)
    assert 2 <= len(polls) <= 4, polls
    assert all(b - a >= 1.9 for a, b in itertools.pairwise(polls)), polls

    # the admin token: asked for; without it no POST is sent
    assert await page.locator("#login").is_visible()
    await breaker.get_by_role("button", name="Reset").click()
    assert "admin token" in await page.locator("#notice").inner_text()
    assert rec.posts() == []
    # a wrong token: the gateway refuses it, the page says so and asks again; the breaker stays open
    await page.fill("#token", "not-the-token")
    await page.click("#token-use")
    await breaker.get_by_role("button", name="Reset").click()
    assert "Reset breaker api?" in await page.locator("#confirm-text").inner_text()
    await page.click("#confirm-ok")
    await eventually(lambda: _text_has(page, "#notice", "refused"), what="the refusal")
    assert await page.locator("#login").is_visible()
    assert (await server_breaker(gw.admin, "api"))["state"] == "open"
    # the right token; a cancelled confirmation sends nothing
    await page.fill("#token", TOKEN)
    await page.press("#token", "Enter")
    assert await page.locator("#logged").is_visible()
    posts = len(rec.posts())
    await breaker.get_by_role("button", name="Reset").click()
    await page.click("#confirm-cancel")
    await asyncio.sleep(0.3)
    assert len(rec.posts()) == posts and (await server_breaker(gw.admin, "api"))["state"] == "open"
    # reset, confirmed: closed on the gateway and on the page
    await breaker.get_by_role("button", name="Reset").click()
    await page.click("#confirm-ok")
    await eventually(lambda: _server_state(gw.admin, "api", "closed"), what="the reset")
    await eventually(lambda: _breaker_is(page, "api", "closed"), what="closed on the page")
    url, headers = rec.posts()[-1]
    assert url == f"{gw.admin}/admin/breakers/api/reset" and headers["authorization"] == f"Bearer {TOKEN}"
    # force open, confirmed: held open on the gateway and shown so
    await page.locator(".breaker[data-breaker='api']").get_by_role("button", name="Force open").click()
    assert "until someone resets it" in await page.locator("#confirm-text").inner_text()
    await page.click("#confirm-ok")
    await eventually(lambda: _server_forced(gw.admin, "api"), what="forced open")
    await eventually(lambda: _text_has(page, ".breaker[data-breaker='api'] [data-field='breaker-state']", "forced"))
    assert "held open by an operator" in await page.locator(".breaker[data-breaker='api']").inner_text()
    # purge a prefix, confirmed: the entry is gone
    assert (await admin_json(gw.admin, "/admin/cache"))["upstreams"]["api"]["entries"] == 1
    await page.select_option("#purge-upstream", "api")
    await page.fill("#purge-prefix", "/api/profiles")
    await page.click("#purge")
    assert "upstream api under /api/profiles" in await page.locator("#confirm-text").inner_text()
    await page.click("#confirm-ok")
    await eventually(lambda: _text_has(page, "#notice", "Purged 1 cached answer"), what="the purge")
    assert (await admin_json(gw.admin, "/admin/cache"))["upstreams"]["api"]["entries"] == 0
    assert [u for u, _ in rec.posts()][-3:] == [
        f"{gw.admin}/admin/breakers/api/reset",
        f"{gw.admin}/admin/breakers/api/open",
        f"{gw.admin}/admin/cache/purge",
    ]

    # the token lives in this tab's sessionStorage only
    storage = await page.evaluate(
        "() => [sessionStorage.getItem('gateway-admin-token'), localStorage.length, document.cookie]"
    )
    assert storage == [TOKEN, 0, ""]
    other, _ = await open_page(browser, gw.admin)
    assert await other.evaluate("() => sessionStorage.length") == 0
    assert await other.locator("#login").is_visible()
    await other.context.close()

    # nothing came from another origin; only the page's own paths were asked for
    assert rec.foreign() == []
    paths = {url.removeprefix(gw.admin) for _, _, url, _ in rec.requests}
    assert paths <= {
        "/",
        "/status.css",
        "/status.js",
        "/admin/status",
        "/admin/breakers/api/reset",
        "/admin/breakers/api/open",
        "/admin/cache/purge",
    }, paths
    assert rec.console_errors == ["Failed to load resource: the server responded with a status of 401 (Unauthorized)"]
    await page.context.close()


async def _at_least(page: Page, upstream: str, name: str, n: int, route: str | None = None, minimum: int = 0) -> bool:
    value = await number(page, upstream, name)
    if route is not None:
        return value >= n and await number(page, upstream, name, route) >= minimum
    return value >= n


async def _breaker_is(page: Page, name: str, state: str) -> bool:
    return await breaker_state(page, name) == state


async def _text_has(page: Page, selector: str, text: str) -> bool:
    return text in await page.locator(selector).inner_text()


async def _server_state(admin: str, name: str, state: str) -> bool:
    return (await server_breaker(admin, name))["state"] == state


async def _server_forced(admin: str, name: str) -> bool:
    return (await server_breaker(admin, name))["forced"] is True


async def test_readable_on_a_phone_and_a_laptop(browser: Browser, incident: tuple[GatewayProcess, Switch]) -> None:
    """No sideways scrolling of the page; on a phone each route is a block of labelled values."""
    gw, _ = incident
    async with aiohttp.ClientSession() as s:
        for _ in range(3):
            await get(s, f"{gw.url}/api/items/1")
            await get(s, f"{gw.url}/api/profiles")
    phone = {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True, "device_scale_factor": 3}
    laptop = {"viewport": {"width": 1280, "height": 800}}
    for label, args in (("phone", phone), ("laptop", laptop)):
        page, rec = await open_page(browser, gw.admin, **args)
        await eventually(lambda p=page: _at_least(p, "api", "requests-1m", 6), what=f"{label}: traffic")
        width = await page.evaluate("() => [document.documentElement.scrollWidth, window.innerWidth]")
        assert width[0] <= width[1], (label, width)
        cell = page.locator("[data-upstream='api'] tr[data-route='items'] [data-field='requests-1m']")
        display = await cell.evaluate("el => getComputedStyle(el).display")
        assert display == ("flex" if label == "phone" else "table-cell"), (label, display)
        if label == "phone":  # the label of each value is shown next to it
            assert await cell.evaluate("el => getComputedStyle(el, '::before').content") == '"req 1 min"'
        for locator in (
            page.locator("[data-upstream='api'] .breaker").get_by_role("button", name="Reset"),
            page.locator("#purge"),
            page.locator("#overall"),
        ):
            box = await locator.bounding_box()
            assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= width[1], (label, box)
        font = await page.locator("[data-upstream='api'] h2").evaluate(
            "el => parseFloat(getComputedStyle(el).fontSize)"
        )
        assert font >= 14, (label, font)
        assert rec.foreign() == [] and rec.console_errors == []
        await page.context.close()


async def test_page_and_json_hold_no_canary(browser: Browser, tmp_path: Path) -> None:
    """The secret audit's traffic (canaries in set_headers, client headers, queries, bodies, the
    admin token), then the page as rendered, its text, its JSON and every answer the browser got."""
    switch = Switch()
    ups = {
        kind: await Upstream(make_script(kind, switch)).start()
        for kind in ("graph", "lookaside", "gemini", "supabase", "slow")
    }
    path = tmp_path / "gateway.yaml"
    path.write_text(audit_yaml(ups))
    gw = GatewayProcess(path, ENV)
    try:
        await asyncio.to_thread(gw.wait_started)
        await drive(gw, ups, switch, Observed())  # successes and failures on every route kind, with secrets
        seen = Observed()
        page, rec = await open_page(browser, gw.admin)
        await eventually(lambda: _text_has(page, "#errors", "breaker_open"), what="errors on the page")
        await page.click("#errors-more")
        await page.fill("#token", CANARIES["admin_token"])  # typed in: kept in sessionStorage, not shown
        await page.click("#token-use")
        await page.wait_for_timeout(2500)  # one more poll, drawn with the token set
        assert await page.locator("[data-upstream='dead'] .breaker").get_attribute("data-state") == "open"
        assert await page.locator("#errors tbody tr").count() > 12
        seen.add("rendered page (DOM)", await page.content())
        seen.add("rendered page (text)", await page.locator("body").inner_text())
        seen.add("rendered page (attribute values)", await page.evaluate(_ALL_ATTRIBUTES))
        async with aiohttp.ClientSession() as s, s.get(gw.admin + "/admin/status", headers=CLIENT_HEADERS) as resp:
            document = await seen.answer("GET /admin/status", resp)
        assert json.loads(document)["errors"]
        await asyncio.gather(*rec.reading)  # the last bodies are read
        assert any("/admin/status" in k for k in rec.bodies) and any(
            k.startswith("GET " + gw.admin + "/ ") for k in rec.bodies
        )
        for place, body in rec.bodies.items():
            seen.add(f"browser received: {place}", body)
        finish(seen, "status page", [n for n in CANARIES if n != "redis_password" and n not in URL_AND_CONFIG_CANARIES])
        assert rec.foreign() == [] and rec.console_errors == []
        await page.context.close()
    finally:
        gw.stop()
        for up in ups.values():
            await up.close()


_ALL_ATTRIBUTES = """() => Array.from(document.querySelectorAll('*'))
    .flatMap(el => Array.from(el.attributes).map(a => a.name + '=' + a.value)
    .concat(el.value !== undefined ? ['value=' + el.value] : [])).join('\\n')"""
