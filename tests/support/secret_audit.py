"""The secret audit's parts (tests/test_secret_audit.py; tests/test_status_page.py runs the same
traffic for its canary scan of the status page).

- ``CANARIES``, ``ENV``, ``CLIENT_HEADERS``, ``QUERY``: the secrets planted, and where they enter.
- ``find_canaries`` and ``Observed``: every place searched, each canary looked for raw, in other
  case, URL-quoted, as hex and inside base64 at any alignment; ``finish`` fails on any leak.
- ``Switch``, ``make_script``, ``start_upstreams``: the scripted upstreams of every route kind.
- ``audit_yaml``: the gateway's config (debug logs, access log, admin token from the environment).
- ``drive``, ``admin_pass``, ``check_pass``, ``stop_and_collect``, ``assert_forwarded``: the traffic,
  the admin endpoints, ``gateway check``, and what is collected at the end.
"""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import aiohttp
from aiohttp import web

from gateway.admin import build_admin_app

from .gateway import ROOT, TOKEN_FROM_ENV, GatewayProcess, free_port, gateway_yaml
from .upstreams import Upstream

# '!' makes URL-quoting change the text, so the quoted form is a search of its own.
CANARIES: dict[str, str] = {
    "set_header_gemini": "CANARY!SETHDR-GEMINI!7f3a91c2",
    "set_header_graph": "CANARY!SETHDR-GRAPH!c0ffee42",
    "client_authorization": "CANARY!CLIENT-AUTH!5b8e2d10",
    "client_apikey": "CANARY!CLIENT-APIKEY!9e41aa07",
    "client_goog_key": "CANARY!CLIENT-GOOGKEY!31d6f0b8",
    "client_cookie": "CANARY!CLIENT-COOKIE!a7c3e915",
    "query_key": "CANARY!Q-KEY!4d2b7e60",
    "query_access_token": "CANARY!Q-ACCESSTOKEN!e8a1c3f5",
    "query_apikey": "CANARY!Q-APIKEY!0b9d6c21",
    "query_token": "CANARY!Q-TOKEN!f2e7a480",
    "query_signature": "CANARY!Q-SIGNATURE!6c15b3d9",
    "query_key_upper_case": "CANARY!Q-KEY-UPPER!93b0d7e1",
    "query_token_encoded_name": "CANARY!Q-TOKEN-ENCNAME!1f6a8c34",
    # log.redact_query's defaults past the contract's five (issue 19), and a name the config adds
    "query_appsecret_proof": "CANARY!Q-APPSECRETPROOF!83c1e5a0",
    "query_client_secret": "CANARY!Q-CLIENTSECRET!2f9d0b47",
    "query_fb_exchange_token": "CANARY!Q-FBEXCHANGE!c7a2e913",
    "query_input_token": "CANARY!Q-INPUTTOKEN!5e08d6b2",
    "query_hash": "CANARY!Q-HASH!a1d4c8e7",
    "query_oh": "CANARY!Q-OH!7b3f20c9",
    "query_oe": "CANARY!Q-OE!d90e6a15",
    "query_token_hash": "CANARY!Q-TOKENHASH!04b7f3d8",
    "query_refresh_token": "CANARY!Q-REFRESH!e6c91a2f",
    "query_api_key": "CANARY!Q-API-KEY!3a8d5f60",
    "query_configured_name": "CANARY!Q-CONFIGURED!9f1b7c24",
    "request_body_password": "CANARY!BODY-PASSWORD!d4f8e2a6",
    "admin_token": "CANARY!ADMIN-TOKEN!8a3f5c71",
    "redis_password": "CANARY!REDIS-PASSWORD!2e9b4d83",
    # test_url_credentials_and_config_errors: secrets in URLs, and secrets a broken file spells out
    "upstream_url_password": "CANARY!UPSTREAM-URL-PW!5d0e8b27",
    "upstream_url_bare_token": "CANARY!UPSTREAM-URL-TOKEN!b61f29ac",
    "redis_url_query_password": "CANARY!REDIS-QUERY-PW!0c7d5e93",
    "config_literal_token": "7391462850193746",
    "config_literal_header": "5820193746281937",
    "config_string_store_url": "CANARY!STORE-AS-STRING!e4a09b16",
    "config_bad_url": "CANARY!BAD-URL-PW!72c8f1d0",
}
URL_AND_CONFIG_CANARIES = [name for name in CANARIES if name.startswith(("upstream_url", "redis_url_query", "config_"))]

ENV = {
    "GEMINI_API_KEY": CANARIES["set_header_gemini"],
    "WHATSAPP_TOKEN": CANARIES["set_header_graph"],
    "GATEWAY_ADMIN_TOKEN": CANARIES["admin_token"],
}

QUERY = "&".join(
    f"{name}={CANARIES['query_' + slot]}"
    for name, slot in (
        ("key", "key"),
        ("access_token", "access_token"),
        ("apikey", "apikey"),
        ("token", "token"),
        ("signature", "signature"),
        ("KEY", "key_upper_case"),
        ("%74oken", "token_encoded_name"),  # "token", its first letter percent-encoded
        ("appsecret_proof", "appsecret_proof"),
        ("client_secret", "client_secret"),
        ("fb_exchange_token", "fb_exchange_token"),
        ("input_token", "input_token"),
        ("hash", "hash"),
        ("OH", "oh"),
        ("oe", "oe"),
        ("token_hash", "token_hash"),
        ("refresh_token", "refresh_token"),
        ("api%5Fkey", "api_key"),  # "api_key", its '_' percent-encoded
        ("x-sig", "configured_name"),  # added by the audit's log.redact_query
    )
)
# The audit's log.redact_query: the defaults, and one name of its own.
REDACT_QUERY = (
    "[key, token, access_token, apikey, signature, appsecret_proof, client_secret, fb_exchange_token, "
    "input_token, hash, oh, oe, token_hash, refresh_token, api_key, x-sig]"
)

CLIENT_HEADERS = {
    "Authorization": f"Bearer {CANARIES['client_authorization']}",
    "apikey": CANARIES["client_apikey"],
    "x-goog-api-key": CANARIES["client_goog_key"],
    "Cookie": f"sb-access-token={CANARIES['client_cookie']}; theme=dark",
}


# --------------------------------------------------------------------------- the finder


def encodings(value: str) -> dict[str, tuple[bytes, bool]]:
    """Forms of ``value`` to look for: (bytes, case-insensitive?). Base64 at every alignment:
    only the characters that depend on ``value`` alone, so a canary inside a longer encoded
    string is found too."""
    raw = value.encode()
    out: dict[str, tuple[bytes, bool]] = {
        "raw": (raw, True),
        "url-quoted": (quote(value, safe="").encode(), True),
        "url-quoted-plus": (quote_plus(value).encode(), True),
        "hex": (raw.hex().encode(), True),
    }
    for offset in range(3):
        encoded = base64.b64encode(b"\0" * offset + raw)
        inner = encoded[-(-4 * offset // 3) : (offset + len(raw)) * 4 // 3]
        out[f"base64@{offset}"] = (inner, False)
        out[f"base64url@{offset}"] = (inner.translate(bytes.maketrans(b"+/", b"-_")), False)
    unique: dict[str, tuple[bytes, bool]] = {}
    for form, (needle, folded) in out.items():  # quote_plus or base64url may equal another form
        if all(needle != other for other, _ in unique.values()):
            unique[form] = (needle, folded)
    return unique


NEEDLES = {name: encodings(value) for name, value in CANARIES.items()}


def find_canaries(haystack: bytes) -> list[str]:
    """``canary name/encoding`` for every canary form found in ``haystack``."""
    lowered = haystack.lower()
    return [
        f"{name}/{form}"
        for name, forms in NEEDLES.items()
        for form, (needle, folded) in forms.items()
        if (needle.lower() in lowered if folded else needle in haystack)
    ]


@dataclass
class Observed:
    """Everything the audit could see, by place."""

    places: dict[str, bytes] = field(default_factory=dict)

    def add(self, place: str, data: bytes | str) -> None:
        blob = data.encode("utf-8", "surrogateescape") if isinstance(data, str) else data
        name, n = place, 1
        while name in self.places:
            n += 1
            name = f"{place} #{n}"
        self.places[name] = blob

    async def answer(self, place: str, resp: aiohttp.ClientResponse) -> bytes:
        body = await resp.read()
        head = f"HTTP/{resp.version.major}.{resp.version.minor} {resp.status} {resp.reason}\r\n".encode()
        head += b"".join(k + b": " + v + b"\r\n" for k, v in resp.raw_headers)
        self.add(place, head + b"\r\n" + body)
        return body

    def leaks(self) -> dict[str, list[str]]:
        return {place: found for place, data in self.places.items() if (found := find_canaries(data))}

    def report(self, title: str, canaries: Iterable[str]) -> dict[str, list[str]]:
        names = list(canaries)
        leaks = self.leaks()
        forms = sum(len(NEEDLES[n]) for n in names)
        print(
            f"\n[secret audit: {title}] canaries: {len(names)} ({forms} encoded forms), "
            f"places searched: {len(self.places)} ({sum(map(len, self.places.values()))} bytes), "
            f"canaries found: {sum(map(len, leaks.values()))} (must be 0)"
        )
        for place in self.places:
            print(f"  searched: {place}")
        for place, found in leaks.items():
            print(f"  LEAK in {place}: {found}")
        return leaks


# --------------------------------------------------------------------------- upstreams


@dataclass
class Switch:
    """What the scripted upstreams do now."""

    fail: bool = False


def _json(data: Any, status: int = 200, **headers: str) -> web.Response:
    return web.json_response(data, status=status, headers=headers)


def make_script(kind: str, switch: Switch) -> Callable[[web.BaseRequest, Upstream], Any]:
    """An upstream that never echoes what it was sent (the path at most, never the query)."""

    async def script(request: web.BaseRequest, up: Upstream) -> web.StreamResponse:
        path = request.path
        if kind == "slow":
            await asyncio.sleep(2)
            return _json({"late": True})
        if "/boom" in path:
            return _json({"error": {"message": "internal", "code": 2}}, 500)
        if switch.fail and kind == "supabase":
            return _json({"code": "XX000", "message": "database exploded"}, 500)
        if kind == "gemini" and "streamGenerateContent" in path:
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            for i in range(3):
                await resp.write(f'data: {{"candidates": [{{"index": {i}}}]}}\r\n\r\n'.encode())
            await resp.write_eof()
            return resp
        if kind == "lookaside":
            return web.Response(body=b"\x89PNG fake media bytes", content_type="image/png")
        if kind == "supabase" and path.startswith("/auth/v1/user"):
            return _json({"id": "user-1", "email": "a@example.com"}, **{"Cache-Control": "private, max-age=60"})
        if kind == "supabase" and request.method == "GET":
            return _json([{"id": 1, "name": "bot"}], **{"Vary": "Accept, Prefer, Range"})
        return _json({"ok": True, "kind": kind, "path": path})

    return script


UPSTREAM_KINDS = ("graph", "lookaside", "gemini", "supabase", "slow")


async def start_upstreams(factory: Callable[..., Any], switch: Switch) -> dict[str, Upstream]:
    return {kind: await factory(make_script(kind, switch)) for kind in UPSTREAM_KINDS}


def audit_yaml(ups: dict[str, Upstream], cache_store: str = "", shared: bool = False) -> str:
    """Every route kind of gateway.yaml, plus failing upstreams; secrets only through ${ENV}."""
    scope = "global" if shared else "local"
    blocks = {
        "graph": f"""
            url: {ups["graph"].url}
            kind: graph
            set_headers: {{authorization: "Bearer ${{WHATSAPP_TOKEN}}"}}
            retry: {{attempts: 1}}
            routes:
              - name: send_message
                match: {{methods: [POST], path: "/{{version}}/{{phone_id}}/messages"}}
                rate_limit: {{rate: 1/m, burst: 1, key: phone_id, max_wait: 0s, scope: {scope}}}
              - name: media_url
                match: {{methods: [GET], path: "/{{version}}/{{media_id}}"}}
                cache: {{ttl: 5m}}
            """,
        "lookaside": f"""
            url: {ups["lookaside"].url}
            kind: graph
            """,
        "gemini": f"""
            url: {ups["gemini"].url}
            kind: gemini
            set_headers: {{x-goog-api-key: "${{GEMINI_API_KEY}}"}}
            limits: {{max_request_body: 1KiB}}
            routes:
              - name: generate
                match: {{methods: [POST], path: "/{{version}}/models/{{model}}:generateContent"}}
                retry: {{methods: [POST]}}
              - name: stream
                match: {{methods: [POST], path: "/{{version}}/models/{{model}}:streamGenerateContent"}}
              - name: maintenance
                match: {{methods: [GET], path: "/maintenance"}}
                fault: {{abort: {{percent: 100, status: 503}}}}
            """,
        "supabase": f"""
            url: {ups["supabase"].url}
            kind: supabase
            retry: {{attempts: 1}}
            breaker: {{failure_threshold: 2, recovery: 1m, shared: {str(shared).lower()}}}
            routes:
              - name: auth_user
                match: {{methods: [GET], path: "/auth/v1/user"}}
                cache: {{ttl: 2m, vary: [authorization]}}
              - name: bot_profiles
                match: {{methods: [GET], path: "/rest/v1/bot_profiles"}}
                cache: {{ttl: 1s, vary: [authorization, apikey, accept, range, accept-profile],
                        stale_if_error: 10m, stale_while_revalidate: 30s}}
              - name: writes
                match: {{methods: [POST, PATCH, PUT, DELETE], path: "/rest/v1/{{table}}"}}
                invalidates: ["/rest/v1/{{table}}"]
            """,
        "slow": f"""
            url: {ups["slow"].url}
            timeouts: {{per_try: 300ms, total: 1s}}
            retry: {{attempts: 1}}
            """,
        "dead": f"""
            url: http://127.0.0.1:{free_port()}
            retry: {{attempts: 1}}
            breaker: {{failure_threshold: 2, recovery: 1m}}
            """,
    }
    text = gateway_yaml(blocks, "server: {header_timeout: 300ms}\n" + cache_store, admin_token=TOKEN_FROM_ENV)
    assert "token: '${GATEWAY_ADMIN_TOKEN}'" in text
    return text.replace("log: {level: info,", f"log: {{level: debug, redact_query: {REDACT_QUERY},")


def admin_get_paths() -> list[str]:
    """Every GET path of the admin app, read from the app itself (a new endpoint is audited too)."""
    app = build_admin_app(object())  # type: ignore[arg-type]
    paths = []
    for route in app.router.routes():
        if route.method == "GET":
            info = route.resource.get_info() if route.resource is not None else {}
            assert "path" in info, f"a dynamic admin GET route needs a case in this audit: {info}"
            paths.append(info["path"])
    assert {"/health", "/metrics", "/admin/config", "/admin/cache", "/admin/breakers"} <= set(paths)
    return sorted(paths)


# --------------------------------------------------------------------------- traffic


async def drive(gw: GatewayProcess, ups: dict[str, Upstream], switch: Switch, seen: Observed) -> None:
    """Traffic on every route, successes and failures; every answer recorded."""
    url, q = gw.url, QUERY
    h = CLIENT_HEADERS
    async with aiohttp.ClientSession(auto_decompress=False) as s:

        async def call(place: str, method: str, path: str, expect: int, **kw: Any) -> aiohttp.ClientResponse:
            kw.setdefault("headers", h)
            async with s.request(method, f"{url}{path}", **kw) as resp:
                body = await seen.answer(place, resp)
                assert resp.status == expect, (place, resp.status, body[:300])
                return resp

        # successes, on every upstream kind
        await call("graph send", "POST", f"/graph/v21.0/1234/messages?{q}", 200, json={"to": "1", "type": "text"})
        resp = await call("graph send rate limited", "POST", f"/graph/v21.0/1234/messages?{q}", 429, json={})
        assert resp.headers["x-gateway-error"] == "rate_limited"
        await call("graph media url MISS", "GET", f"/graph/v21.0/5678?{q}", 200)
        resp = await call("graph media url HIT", "GET", f"/graph/v21.0/5678?{q}", 200)
        assert resp.headers["x-gateway-cache"] == "HIT"
        await call(
            "lookaside media",
            "GET",
            f"/lookaside/whatsapp_business/attachments/?mid=1&ext=2&hash=3&{q}",
            200,
        )
        await call("gemini generate", "POST", f"/gemini/v1beta/models/g:generateContent?{q}", 200, json={"q": 1})
        await call("gemini stream", "POST", f"/gemini/v1beta/models/g:streamGenerateContent?alt=sse&{q}", 200, json={})
        await call("gemini list models", "GET", f"/gemini/v1beta/models?{q}", 200)
        await call("supabase auth_user MISS", "GET", f"/supabase/auth/v1/user?{q}", 200)
        resp = await call("supabase auth_user HIT", "GET", f"/supabase/auth/v1/user?{q}", 200)
        assert resp.headers["x-gateway-cache"] == "HIT"
        login = {"email": "a@example.com", "password": CANARIES["request_body_password"]}
        await call(
            "supabase password login", "POST", f"/supabase/auth/v1/token?grant_type=password&{q}", 200, json=login
        )
        profiles = f"/supabase/rest/v1/bot_profiles?select=*&{q}"
        await call("supabase bot_profiles MISS", "GET", profiles, 200)
        resp = await call("supabase bot_profiles HIT", "GET", profiles, 200)
        assert resp.headers["x-gateway-cache"] == "HIT"
        await call("supabase write", "PATCH", f"/supabase/rest/v1/messages?id=eq.1&{q}", 200, json={"read": True})
        await call("supabase no-store bypass", "GET", profiles, 200, headers={**h, "Cache-Control": "no-store"})

        # refusals made by the gateway
        resp = await call(
            "413 body too large", "POST", f"/gemini/v1beta/models/g:generateContent?{q}", 413, data=b"x" * 4096
        )
        await call("404 no route", "GET", f"/nowhere/at/all?{q}", 404)
        await call(
            "400 bad x-gateway-timeout-ms",
            "GET",
            f"/gemini/v1beta/models?{q}",
            400,
            headers={**h, "x-gateway-timeout-ms": "soon"},
        )
        await call("fault injected", "GET", f"/gemini/maintenance?{q}", 503)

        # upstream failures: a 500, a timeout, a closed port, then its breaker open
        await call("upstream 500", "GET", f"/gemini/v1beta/boom?{q}", 500)
        await call("upstream timeout", "GET", f"/slow/anything?{q}", 504)
        await call("upstream unreachable", "GET", f"/dead/x?{q}", 502)
        await call("upstream unreachable 2", "GET", f"/dead/x?{q}", 502)
        resp = await call("breaker open", "GET", f"/dead/x?{q}", 503)
        assert resp.headers["x-gateway-error"] == "breaker_open"

        # stale answers: expired entry, upstream 500 → STALE; then its breaker opens → STALE, and 503 elsewhere
        await asyncio.sleep(1.3)
        switch.fail = True
        resp = await call("supabase STALE on 500", "GET", profiles, 200, headers={**h, "Cache-Control": "no-cache"})
        assert resp.headers["x-gateway-cache"] == "STALE"
        await call("supabase write fails", "POST", f"/supabase/rest/v1/other?{q}", 500, json={})
        resp = await call("supabase STALE, breaker open", "GET", profiles, 200)
        assert resp.headers["x-gateway-cache"] == "STALE"
        resp = await call("supabase breaker open", "GET", f"/supabase/rest/v1/other?{q}", 503)
        assert resp.headers["x-gateway-error"] == "breaker_open"
        switch.fail = False

    # malformed requests, sent as raw bytes: refused by hygiene or by the HTTP parser
    auth = f"Authorization: Bearer {CANARIES['client_authorization']}\r\napikey: {CANARIES['client_apikey']}\r\n"
    raw_cases = {
        "refused: dot segment": f"GET /supabase/rest/v1/../../x?{q} HTTP/1.1\r\nHost: gw\r\n{auth}\r\n",
        "refused: encoded dot segment": f"GET /supabase/%2e%2e/x?{q} HTTP/1.1\r\nHost: gw\r\n{auth}\r\n",
        "refused: absolute-form": f"GET http://evil.example/?{q} HTTP/1.1\r\nHost: evil.example\r\n{auth}\r\n",
        "refused: CONNECT": f"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n{auth}\r\n",
        "refused: CL and TE": (
            f"POST /supabase/rest/v1/x?{q} HTTP/1.1\r\nHost: gw\r\n{auth}"
            "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        ),
        "refused: control character in a header": (
            f"GET /gemini/v1beta/models?{q} HTTP/1.1\r\nHost: gw\r\n"
            f"x-goog-api-key: {CANARIES['client_goog_key']}\x01\r\n{auth}\r\n"
        ),
        "refused: header too large": (
            f"GET /gemini/v1beta/models?{q} HTTP/1.1\r\nHost: gw\r\n"
            f"Cookie: {CANARIES['client_cookie']}{'x' * 9000}\r\n{auth}\r\n"
        ),
        "refused: bad request line": f"GET /gemini/v1beta/models?{q} HTTP/1.1 junk\r\nHost: gw\r\n{auth}\r\n",
        "refused: request head too slow": f"GET /gemini/v1beta/models?{q} HTTP/1.1\r\nHost: gw\r\n{auth}",
        "refused: request line too long": f"GET /gemini/v1beta/models?{q}&pad={'p' * 17000} HTTP/1.1\r\n{auth}\r\n",
        "refused: too many headers": f"GET /x?{q} HTTP/1.1\r\n{auth}" + "x-h: 1\r\n" * 200 + "\r\n",
        "refused: pipelined request": (
            "GET /gemini/v1beta/models HTTP/1.1\r\nHost: gw\r\n\r\n"
            f"GET /gemini/v1beta/models?{q} HTTP/1.1\r\nHost: gw\r\n{auth}\r\n"
        ),
        "refused: header without colon": (
            f"GET /x?{q} HTTP/1.1\r\nHost: gw\r\nBearer {CANARIES['client_authorization']}\r\n\r\n"
        ),
    }
    for place, request in raw_cases.items():
        answer = await read_until_closed(gw.port, request.encode("latin-1"))
        seen.add(place, answer)
        last = answer[answer.rfind(b"HTTP/1.") :]  # a pipelined request: the second answer
        assert last.split(b" ", 2)[1:2] in ([b"400"], [b"408"], [b"414"], [b"431"]), (place, answer[:300])


async def read_until_closed(port: int, data: bytes, timeout: float = 3.0, idle: float = 0.2) -> bytes:
    """Send ``data`` to the proxy port; read until it closes, or ``idle`` passes after some bytes
    (a refusal made by the handler keeps the connection), or ``timeout`` in all."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    got = bytearray()
    end = asyncio.get_running_loop().time() + timeout
    try:
        writer.write(data)
        await writer.drain()
        while (left := end - asyncio.get_running_loop().time()) > 0:
            try:
                chunk = await asyncio.wait_for(reader.read(65536), min(left, idle) if got else left)
            except TimeoutError:
                break
            if not chunk:
                break
            got += chunk
    finally:
        writer.close()
    return bytes(got)


async def admin_pass(gw: GatewayProcess, seen: Observed, config_path: Path) -> None:
    """Every admin GET; every POST with a wrong token (same length, other length, none) and the right one."""
    token = CANARIES["admin_token"]
    same_length = "X" * len(token)
    wrong = {
        "no token": {},
        "wrong token, same length": {"Authorization": f"Bearer {same_length}"},
        "wrong token, other length": {"Authorization": "Bearer nope"},
        "token without Bearer": {"Authorization": token},
    }
    right = {"Authorization": f"Bearer {token}"}
    posts = [
        ("/admin/breakers/dead/open", None),
        ("/admin/breakers/dead/reset", None),
        ("/admin/cache/purge", {"path_prefix": "/nothing-matches"}),
        ("/admin/reload", None),
    ]
    async with aiohttp.ClientSession() as s:
        for path in admin_get_paths():
            async with s.get(gw.admin + path, headers=CLIENT_HEADERS) as resp:
                await seen.answer(f"admin GET {path}", resp)
                assert resp.status == 200, path
        for path, body in posts:
            for label, headers in wrong.items():
                async with s.post(gw.admin + path, json=body, headers=headers) as resp:
                    await seen.answer(f"admin POST {path} ({label})", resp)
                    assert resp.status == 401, (path, label)
            async with s.post(gw.admin + path, json=body, headers=right) as resp:
                await seen.answer(f"admin POST {path} (right token)", resp)
                assert resp.status == 200, path
        # a reload that fails: the error is answered and logged; the old config keeps serving
        good = await asyncio.to_thread(config_path.read_text)
        await asyncio.to_thread(config_path.write_text, broken_copy(good))
        async with s.post(gw.admin + "/admin/reload", headers=right) as resp:
            await seen.answer("admin POST /admin/reload (invalid file)", resp)
            assert resp.status == 400
        await asyncio.to_thread(config_path.write_text, good)
        for path in admin_get_paths():  # once more, after the POSTs
            async with s.get(gw.admin + path) as resp:
                await seen.answer(f"admin GET {path} (after POSTs)", resp)


def broken_copy(text: str) -> str:
    """``text`` made invalid: a bad duration and an unknown key."""
    return text.replace("per_try: 300ms", "per_try: soon") + "bogus_key: 1\n"


async def check_pass(config_path: Path, env: dict[str, str], seen: Observed) -> None:
    """``gateway check`` on the file and on a broken copy of it: output searched."""
    broken = config_path.with_name("broken.yaml")
    text = await asyncio.to_thread(config_path.read_text)
    await asyncio.to_thread(broken.write_text, broken_copy(text))
    for label, path, code in (("valid", config_path, 0), ("invalid", broken, 1)):
        done = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "gateway", "check", "--config", str(path)],
            capture_output=True,
            cwd=ROOT,
            env={**env, "PATH": "/usr/bin:/bin"},
        )
        seen.add(f"gateway check ({label}) stdout", done.stdout)
        seen.add(f"gateway check ({label}) stderr", done.stderr)
        assert done.returncode == code, done.stderr


def stop_and_collect(gw: GatewayProcess, seen: Observed) -> None:
    gw.signal()
    gw.proc.wait(10)
    logs = "\n".join(gw.lines)
    seen.add("gateway stdout+stderr (event and access logs, debug level)", logs)
    # the logs are real: debug level, an access line per request, a reload and a failed one
    assert '"level":"debug"' in logs and len(gw.access_lines()) > 20
    assert "config reload failed" in logs and "config reloaded" in logs


def assert_forwarded(ups: dict[str, Upstream]) -> None:
    """The canaries are real: the upstreams received them (forwarding is not leaking)."""
    every = b"\n".join(
        f"{r.method} {r.target}\n{dict(r.headers)}\n".encode() + r.body for up in ups.values() for r in up.seen
    )
    for name in CANARIES:
        if name.startswith(("query_", "client_", "set_header", "request_body")):
            assert f"{name}/raw" in find_canaries(every), f"{name} never reached an upstream"
    gemini = ups["gemini"].seen[0].headers
    assert gemini["x-goog-api-key"] == CANARIES["set_header_gemini"]  # injected, replacing the client's


def finish(seen: Observed, title: str, canaries: Iterable[str]) -> None:
    leaks = seen.report(title, canaries)
    assert leaks == {}, f"secrets leaked: {json.dumps(leaks, indent=1)}"
