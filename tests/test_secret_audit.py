"""Secret audit (issue 8): canaries go in everywhere a secret can enter; none may come out anywhere.

Secrets enter through ``set_headers`` (``${ENV}``), the client's ``Authorization``, ``apikey``,
``x-goog-api-key`` and ``Cookie`` headers, the query parameters ``key``, ``access_token``,
``apikey``, ``token`` and ``signature`` (the contract's), ``appsecret_proof``, ``client_secret``,
``fb_exchange_token``, ``input_token``, ``hash``, ``oh``, ``oe``, ``token_hash``, ``refresh_token`` and
``api_key`` (``log.redact_query``'s defaults) and one name the config adds, a request body, the
admin token and the Redis URL's password. A real gateway (a subprocess, debug logs, access log
on) serves traffic on every route kind, successes and failures; then everything observable is
searched: stdout/stderr, every answer's status line, headers and body, every admin GET endpoint
(enumerated from the admin app), ``gateway check`` (valid and invalid file), and the cache store
(memory: the admin listing, and the store's own bytes in-process; Redis: every key and value). The
upstreams legitimately receive the secrets (that is forwarding) and answer bodies without them.

A second gateway takes a secret inside a URL (``?password=`` in the Redis URL) and a broken file
that spells secrets out (a numeric token, a store URL given as a string, credentials in upstream
URLs, which are refused with a pointer to ``set_headers``): /admin/config, the reload answer, the
logs, ``gateway check`` and ``gateway run`` must hide them.

The search looks for each canary raw and case-insensitively, URL-quoted, as hex, and inside base64
at any alignment; ``test_the_finder_finds_planted_canaries`` proves it would see a leak. Each audit
prints its count of canaries, places searched and canaries found (``pytest -s``).
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import logging
import subprocess
import sys
from typing import Any
from urllib.parse import quote

import aiohttp

from gateway import admin as admin_module
from gateway.cachestore import FallbackStore, MemoryStore
from gateway.logs import JsonFormatter, TextFormatter, redact_data, redact_query, redact_text

from .support import ROOT, TOKEN_FROM_ENV, RedisServer, free_port, gateway_yaml
from .support.secret_audit import (
    CANARIES,
    CLIENT_HEADERS,
    ENV,
    QUERY,
    URL_AND_CONFIG_CANARIES,
    Observed,
    Switch,
    admin_get_paths,
    admin_pass,
    assert_forwarded,
    audit_yaml,
    check_pass,
    drive,
    find_canaries,
    finish,
    make_script,
    start_upstreams,
    stop_and_collect,
)


def test_the_finder_finds_planted_canaries() -> None:
    """The audit can fail: every canary is found raw, quoted, in other case, inside base64."""
    for name, value in CANARIES.items():
        assert find_canaries(f"a {value} b".encode()) == [f"{name}/raw"]
        assert f"{name}/raw" in find_canaries(value.lower().encode())
        quoted = "url-quoted" if quote(value, safe="") != value else "raw"
        assert find_canaries(f"x={quote(value, safe='')}&".encode()) == [f"{name}/{quoted}"]
        for prefix in ("", "B", "Be", "Bearer ", "user:"):
            blob = base64.b64encode(f"{prefix}{value}!tail".encode())
            assert any(hit.startswith(f"{name}/base64@") for hit in find_canaries(b"Basic " + blob)), prefix
            urlsafe = base64.urlsafe_b64encode(f"{prefix}{value}?".encode())
            assert any(hit.startswith(f"{name}/base64") for hit in find_canaries(urlsafe)), prefix
        assert find_canaries(value.encode().hex().upper().encode()) == [f"{name}/hex"]
    assert find_canaries(b"CANARY!ADMIN-TOKEN!8a3f5c7") == []  # one character short: no match
    seen = Observed()
    seen.add("planted", f"log line path=/x?key={CANARIES['query_key']}")
    assert seen.leaks() == {"planted": ["query_key/raw"]}


def test_redaction_hides_secrets_and_keeps_the_rest() -> None:
    """The helpers the audit relies on, case by case; what is not a secret stays byte for byte."""
    assert redact_query("key=A&pageSize=5&KEY=B&%6Bey=C&access%5Ftoken=D&x=key=E&apikey&signature=") == (
        "key=***&pageSize=5&KEY=***&%6Bey=***&access%5Ftoken=***&x=key=E&apikey&signature=***"
    )
    assert redact_query("alt=sse&select=*,bots(id)") == "alt=sse&select=*,bots(id)"
    assert redact_query("appsecret_proof=A&hash=B&OH=C&oe=D&mid=E&token_hash=F&api%5Fkey=G") == (
        "appsecret_proof=***&hash=***&OH=***&oe=***&mid=E&token_hash=***&api%5Fkey=***"
    )
    assert redact_query("session=A&hash=B", frozenset({"session"})) == "session=***&hash=B"  # the names given
    assert redact_text("fetching https://lookaside.fbsbx.com/a/?mid=1&oh=SECRET&oe=5F2&_nc=x failed") == (
        "fetching https://lookaside.fbsbx.com/a/?mid=1&oh=***&oe=***&_nc=x failed"
    )
    cases = {
        "redis://:pw@h:6379/0": "redis://:***@h:6379/0",
        "redis://user:pw@h/0?password=pw&db=1": "redis://user:***@h/0?password=***&db=1",
        "https://tok@h/x": "https://***@h/x",
        "https://h/p@x?q=a@b": "https://h/p@x?q=a@b",
        "f.yaml: admin.token: input should be a valid string, got 1234": (
            "f.yaml: admin.token: input should be a valid string, got ***"
        ),
        "f.yaml: upstreams.a.set_headers.x-k: input should be a valid string, got [1]": (
            "f.yaml: upstreams.a.set_headers.x-k: input should be a valid string, got ***"
        ),
        "f.yaml: cache_store: input should be a valid dictionary, got 'redis://:pw@h'": (
            "f.yaml: cache_store: input should be a valid dictionary, got ***"
        ),
        "f.yaml: upstreams.a.set_headers: names use a-z, 0-9, '_' and '-', got 'x k'": (
            "f.yaml: upstreams.a.set_headers: names use a-z, 0-9, '_' and '-', got 'x k'"
        ),
        "f.yaml: upstreams.a.timeouts.per_try: expected a duration like '10s', got 'ten'": (
            "f.yaml: upstreams.a.timeouts.per_try: expected a duration like '10s', got 'ten'"
        ),
    }
    for text, shown in cases.items():
        assert redact_text(text) == shown, text
    assert redact_data({"a": ["https://u:pw@h"], "n": 1, "t": ("x",)}) == {"a": ["https://u:***@h"], "n": 1, "t": ["x"]}
    secret = CANARIES["upstream_url_password"]
    record = logging.LogRecord("gateway", logging.ERROR, __file__, 1, "cannot reach http://u:%s@h", (secret,), None)
    record.fields = {"error": f"redis://:{secret}@h/0", "n": 3}  # type: ignore[attr-defined]
    for formatter in (JsonFormatter(), TextFormatter()):
        line = formatter.format(record)
        assert find_canaries(line.encode()) == [] and "u:***@h" in line and "redis://:***@h/0" in line, line


# --------------------------------------------------------------------------- the audits


async def test_no_canary_leaks_memory_store(upstream_factory, gateway_process, tmp_path) -> None:
    switch = Switch()
    ups = await start_upstreams(upstream_factory, switch)
    gw = gateway_process(audit_yaml(ups), ENV)
    config_path = tmp_path / "gateway-0.yaml"
    seen = Observed()
    await drive(gw, ups, switch, seen)
    await admin_pass(gw, seen, config_path)
    await check_pass(config_path, ENV, seen)
    stop_and_collect(gw, seen)
    assert_forwarded(ups)
    finish(seen, "memory store", [n for n in CANARIES if n != "redis_password" and n not in URL_AND_CONFIG_CANARIES])
    logs = "\n".join(gw.lines)  # redacted, not dropped: the parameter names stay, byte for byte
    assert "key=***" in logs and "signature=***" in logs and "KEY=***" in logs and "%74oken=***" in logs


async def test_no_canary_leaks_redis_store(upstream_factory, gateway_process, redis_server, tmp_path) -> None:
    password = CANARIES["redis_password"]
    redis_server.command("CONFIG", "SET", "requirepass", password)
    switch = Switch()
    ups = await start_upstreams(upstream_factory, switch)
    env = {**ENV, "REDIS_URL": f"redis://:{quote(password, safe='')}@127.0.0.1:{redis_server.port}/0"}
    store = "cache_store: {type: redis, url: '${REDIS_URL}', prefix: 'gw:', timeout: 1s}"
    gw = gateway_process(audit_yaml(ups, store, shared=True), env)
    config_path = tmp_path / "gateway-0.yaml"
    seen = Observed()
    await drive(gw, ups, switch, seen)
    await admin_pass(gw, seen, config_path)
    await check_pass(config_path, env, seen)
    held = dump_redis(redis_server, password)
    assert any(b":e:" in key or key.startswith(b"gw:e:") for key in held), "no cache entry reached Redis"
    assert any(key.startswith(b"gw:rl:") for key in held), "the global rate limit did not use Redis"
    for key, value in held.items():
        seen.add(f"redis {key.decode(errors='replace')}", key + b"\n" + value)
    stop_and_collect(gw, seen)
    assert "redis unavailable" not in "\n".join(gw.lines), "the gateway could not use the password-protected Redis"
    assert_forwarded(ups)
    finish(seen, "redis store", [n for n in CANARIES if n not in URL_AND_CONFIG_CANARIES])


def dump_redis(server: RedisServer, password: str) -> dict[bytes, bytes]:
    """Every key and its value, raw bytes, whatever its type."""
    import redis

    client = redis.Redis(port=server.port, password=password)
    out: dict[bytes, bytes] = {}
    try:
        for key in client.scan_iter(count=1000):
            kind = client.type(key)
            if kind == b"string":
                value = client.get(key) or b""
            elif kind == b"hash":
                value = b"\n".join(k + b"=" + v for k, v in client.hgetall(key).items())
            elif kind == b"set":
                value = b"\n".join(sorted(client.smembers(key)))
            elif kind == b"zset":
                value = b"\n".join(m + b" " + str(sc).encode() for m, sc in client.zrange(key, 0, -1, withscores=True))
            elif kind == b"list":
                value = b"\n".join(client.lrange(key, 0, -1))
            else:
                value = b"<" + kind + b">"
            out[key] = value
    finally:
        client.close()
    return out


async def test_memory_store_holds_no_canary(upstream_factory, gateway_factory) -> None:
    """In-process: the memory store's own keys, entries (as bytes) and Vary records."""
    switch = Switch()
    ups = await start_upstreams(upstream_factory, switch)
    gw = await gateway_factory(audit_yaml(ups), ENV)
    for path in (
        f"/graph/v21.0/5678?{QUERY}",
        f"/supabase/auth/v1/user?{QUERY}",
        f"/supabase/rest/v1/bot_profiles?select=*&{QUERY}",
    ):
        for _ in range(2):
            async with gw.session.get(gw.url + path, headers=CLIENT_HEADERS) as resp:
                assert resp.status == 200
                await resp.read()
    store = gw.gateway.state.cache.store
    memory = store.local if isinstance(store, FallbackStore) else store
    assert isinstance(memory, MemoryStore)
    seen = Observed()
    entries = memory.raw()
    assert len(entries) == 3
    for key, entry in entries:
        seen.add(f"memory entry {key}", key.encode() + b"\n" + entry.to_bytes())
    for primary, vary in memory.vary_records():
        seen.add(f"memory vary record {primary}", f"{primary} {vary}")
    cache = gw.gateway.state.cache
    seen.add("cache bookkeeping", repr((cache.flights.keys(), dict(cache.counts))))
    finish(seen, "memory store contents", CANARIES)


async def test_url_credentials_and_config_errors_never_show(upstream_factory, gateway_process, tmp_path) -> None:
    """A secret inside a URL (a Redis password as a query parameter) and secrets a broken file spells
    out (a numeric token, a store URL where a mapping belongs, credentials in upstream URLs, which
    `gateway check` refuses and points to set_headers): not in /admin/config, the logs, the reload
    answer, nor `gateway check` / `gateway run` output."""
    up = await upstream_factory(make_script("graph", Switch()))
    env = {
        **ENV,
        "UPSTREAM_PASSWORD": CANARIES["upstream_url_password"],
        "UPSTREAM_TOKEN": CANARIES["upstream_url_bare_token"],
        "REDIS_QUERY_PASSWORD": CANARIES["redis_url_query_password"],
    }
    host = f"127.0.0.1:{up.port}"
    store = (
        f"cache_store: {{type: redis, url: 'redis://127.0.0.1:{free_port()}/0?password=${{REDIS_QUERY_PASSWORD}}',"
        " timeout: 200ms}"
    )
    blocks = {
        "basic": f"""
            url: "http://{host}"
            routes: [{{name: cached, match: {{methods: [GET], path: "/cached"}}, cache: {{ttl: 1m}}}}]
            """,
        "bare": f'url: "http://{host}"',
    }
    text = gateway_yaml(blocks, store, admin_token=TOKEN_FROM_ENV)
    gw = gateway_process(text, env)
    config_path = tmp_path / "gateway-0.yaml"
    seen = Observed()
    async with aiohttp.ClientSession() as s:
        for path in ("/basic/cached", "/basic/cached", "/basic/other", "/bare/x"):
            async with s.get(gw.url + path) as resp:
                await seen.answer(f"GET {path}", resp)
        for path in admin_get_paths():
            async with s.get(gw.admin + path) as resp:
                await seen.answer(f"admin GET {path}", resp)
                assert resp.status == 200
        broken = (
            text.replace("token: '${GATEWAY_ADMIN_TOKEN}'", f"token: {CANARIES['config_literal_token']}")
            .replace(store, f"cache_store: 'redis://:{CANARIES['config_string_store_url']}@127.0.0.1:6379/0'")
            .replace(f'url: "http://{host}"\n', f'url: "http://svc:${{UPSTREAM_PASSWORD}}@{host}"\n', 1)
            .replace(
                f'url: "http://{host}"\n',
                f"set_headers: {{x-api-key: {CANARIES['config_literal_header']}}}\n"
                f'    url: "http://${{UPSTREAM_TOKEN}}@{host}"\n',
                1,
            )
            .replace(
                "upstreams:\n",
                f'upstreams:\n  odd:\n    url: "http://u:{CANARIES["config_bad_url"]}@host.example/?key='
                f'{CANARIES["config_bad_url"]}"\n    prefix: "@"\n',
            )
        )
        assert broken.count("CANARY") == 3 and CANARIES["config_literal_token"] in broken
        config_path.write_text(broken)
        right = {"Authorization": f"Bearer {CANARIES['admin_token']}"}
        async with s.post(gw.admin + "/admin/reload", headers=right) as resp:
            reload_body = await seen.answer("admin POST /admin/reload (file with secrets spelled out)", resp)
            assert resp.status == 400
    bad_path = tmp_path / "spelled-out.yaml"
    bad_path.write_text(broken)
    config_path.write_text(text)
    await check_pass(config_path, env, seen)
    outputs = {}
    for command, path, code in (("check", bad_path, 1), ("run", bad_path, 1)):
        done = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "gateway", command, "--config", str(path)],
            capture_output=True,
            cwd=ROOT,
            env={**env, "PATH": "/usr/bin:/bin"},
            timeout=20,
        )
        seen.add(f"gateway {command} (secrets spelled out) output", done.stdout + done.stderr)
        assert done.returncode == code
        assert b"admin.token" in done.stderr
        outputs[command] = done.stderr.decode()
    gw.signal()
    gw.proc.wait(10)
    logs = "\n".join(gw.lines)
    seen.add("gateway stdout+stderr", logs)
    assert "config reload failed" in logs and "redis unavailable" in logs
    finish(seen, "URL credentials and config errors", [*URL_AND_CONFIG_CANARIES, "admin_token"])
    # hidden, not dropped: the URLs keep their shape, each broken secret is still reported
    config = json.loads(seen.places["admin GET /admin/config"].partition(b"\r\n\r\n")[2])
    assert config["cache_store"]["url"].endswith("/0?password=***")
    assert config["upstreams"]["basic"]["url"] == f"http://{host}"
    for problem in ("admin.token", "set_headers.x-api-key", "cache_store", "upstreams.odd.url"):
        assert f"{problem}: ".encode() in reload_body, problem
    # credentials in an upstream URL: refused, the way out named (was: 500 once a client sent Authorization)
    for where in (reload_body.decode(), outputs["check"], outputs["run"]):
        for name in ("basic", "bare"):
            assert f"upstreams.{name}.url: credentials in the URL are not accepted" in where, where
        assert "send the header with set_headers" in where


# --------------------------------------------------------------------------- the admin token


async def test_admin_token_is_compared_in_constant_time(upstream_factory, gateway_factory, monkeypatch) -> None:
    """Wrong tokens of the same and of another length get 401, the right one passes; every
    comparison goes through hmac.compare_digest (no timing measured)."""
    up = await upstream_factory()
    token = CANARIES["admin_token"]
    text = gateway_yaml({"api": f"url: {up.url}"}, admin_token=TOKEN_FROM_ENV)
    gw = await gateway_factory(text, {"GATEWAY_ADMIN_TOKEN": token})
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(admin_module.hmac, "compare_digest", spy)
    cases = {
        "same length": (f"Bearer {'X' * len(token)}", 401),
        "one character off": (f"Bearer {token[:-1]}0", 401),
        "shorter": ("Bearer nope", 401),
        "longer": (f"Bearer {token}{token}", 401),
        "prefix of the token": (f"Bearer {token[:5]}", 401),
        "empty": ("", 401),
        "right": (f"Bearer {token}", 200),
    }
    for label, (value, status) in cases.items():
        headers = {"Authorization": value} if value else {}
        async with gw.session.post(f"{gw.admin}/admin/breakers/api/reset", headers=headers) as resp:
            body = await resp.read()
            assert resp.status == status, label
            assert token.encode() not in body
            if status == 401:
                assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert len(compared) == len(cases)
    assert all(b == f"Bearer {token}".encode() for _, b in compared)
