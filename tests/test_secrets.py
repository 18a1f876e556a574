"""Secrets never show: not in the access log, /admin/config, error bodies or `gateway check`."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import aiohttp

from .support import ROOT, TOKEN_FROM_ENV, gateway_yaml

CANARIES = {
    "set_header": "CANARY-SETHEADER-4f1d",
    "authorization": "CANARY-AUTH-9a7c",
    "query_key": "CANARY-QUERYKEY-21be",
    "apikey": "CANARY-APIKEY-77e0",
    "token": "CANARY-ADMINTOKEN-0c3a",
}


async def test_no_secret_in_logs_admin_or_answers(upstream_factory, gateway_process, tmp_path):
    up = await upstream_factory()
    text = gateway_yaml(
        {"gemini": f"url: {up.url}\nkind: gemini\nset_headers: {{x-goog-api-key: '${{GEMINI_API_KEY}}'}}"},
        admin_token=TOKEN_FROM_ENV,
    )
    env = {"GEMINI_API_KEY": CANARIES["set_header"], "GATEWAY_ADMIN_TOKEN": CANARIES["token"]}
    gw = gateway_process(text, env)
    seen = []
    async with aiohttp.ClientSession() as session:
        headers = {"Authorization": f"Bearer {CANARIES['authorization']}", "apikey": CANARIES["apikey"]}
        url = f"{gw.url}/gemini/v1beta/models?key={CANARIES['query_key']}&pageSize=5&apikey={CANARIES['apikey']}"
        async with session.get(url, headers=headers) as resp:
            assert resp.status == 200
            seen.append(await resp.text() + str(resp.headers))
        async with session.get(f"{gw.url}/nowhere?token={CANARIES['query_key']}", headers=headers) as resp:
            seen.append(await resp.text() + str(resp.headers))
        for path in ("/admin/config", "/health", "/metrics", "/readyz"):
            async with session.get(gw.admin + path) as resp:
                seen.append(await resp.text())
    # the upstream did get them: the canaries are real
    assert up.seen[0].headers["x-goog-api-key"] == CANARIES["set_header"]
    assert CANARIES["query_key"] in up.seen[0].target
    gw.signal()
    gw.proc.wait(10)
    logs = "\n".join(gw.lines)
    assert "key=***" in logs and "pageSize=5" in logs
    path = tmp_path / "gateway-0.yaml"
    check = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "gateway", "check", "--config", str(path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**env, "PATH": "/usr/bin:/bin"},
    )
    assert check.returncode == 0, check.stderr
    everything = "\n".join([logs, *seen, check.stdout, check.stderr])
    found = [name for name, value in CANARIES.items() if value in everything]
    assert found == []
