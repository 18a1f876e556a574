"""What deploy/ monitors the gateway with, for the tests that check it (tests/test_deploy.py with
promtool, tests/test_prometheus.py with a real Prometheus).

- ``ALERTS``, ``DASHBOARD``: deploy's alert rules and Grafana dashboard.
- ``alert_exprs``, ``dashboard_panels``, ``dashboard_exprs``: their PromQL, by where it stands;
  ``concrete``: a dashboard expression with Grafana's variables filled in.
- ``busy_gateway``: an in-process gateway after traffic that creates a sample in every metric family.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from .gateway import ROOT, free_port, gateway_yaml

ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboard.json"


def alert_exprs() -> dict[str, str]:
    rules = yaml.safe_load(ALERTS.read_text())
    return {
        f"alert {rule['alert']} #{i}": rule["expr"]
        for group in rules["groups"]
        for i, rule in enumerate(group["rules"])
    }


def dashboard_panels() -> list[dict[str, Any]]:
    panels = []
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))  # panels inside collapsed rows
    return panels


def dashboard_exprs() -> dict[str, str]:
    out = {}
    for panel in dashboard_panels():
        for target in panel.get("targets", []):
            out[f"panel {panel['title']!r} {target['refId']}"] = target["expr"]
    for var in json.loads(DASHBOARD.read_text())["templating"]["list"]:
        if var["type"] == "query":
            out[f"variable {var['name']}"] = var["definition"]
    return out


def concrete(expr: str) -> str:
    """A dashboard expression with Grafana's variables replaced, so Prometheus can parse and run it."""
    for var, value in {
        "$__rate_interval": "1m",
        "$__range": "5m",
        "$instance": ".*",
        "$upstream": ".*",
    }.items():
        expr = expr.replace(var, value)
    assert "$" not in expr, expr
    return expr


async def busy_gateway(upstream_factory: Any, gateway_factory: Any, tmp_path: Path) -> tuple[Any, str]:
    """A gateway after traffic that creates a sample in every metric family: requests, latency, tries,
    retries, skipped retries, cache hits and misses, a breaker transition and a refusal, a failed and a
    good reload, and Redis store errors (its cache store is a Redis nothing listens for: the gateway
    goes on with its memory store). Returns the running gateway and its /metrics text."""

    async def script(request: web.BaseRequest, up: Any) -> web.StreamResponse:
        if request.path.startswith(("/fail", "/flaky")):
            return web.Response(status=503, text="down")
        return web.Response(text="ok", headers={"Content-Type": "text/plain"})

    up = await upstream_factory(script)
    text = gateway_yaml(
        {
            "api": f"""
                url: {up.url}
                retry: {{backoff: {{base: 1ms, max: 2ms}}}}
                routes:
                  - name: cached
                    match: {{methods: [GET], path: "/cached/**"}}
                    cache: {{ttl: 1m}}
                  - name: flaky
                    match: {{methods: [GET], path: "/flaky/**"}}
                    breaker: {{failure_threshold: 1, recovery: 1m}}
            """
        },
        extra=f"cache_store: {{type: redis, url: 'redis://127.0.0.1:{free_port()}/0', timeout: 50ms}}",
    )
    path = tmp_path / "busy.yaml"
    path.write_text(text)
    gw = await gateway_factory(text)
    gw.gateway.path = str(path)
    calls = [
        ("GET", "/api/x"),  # requests, duration, tries, inflight
        ("GET", "/api/cached/a"),  # cache miss, entries, bytes
        ("GET", "/api/cached/a"),  # cache hit (source="cache")
        ("GET", "/api/fail"),  # retries of 5xx
        ("POST", "/api/fail"),  # a retry skipped: unsafe
        ("GET", "/api/flaky/a"),  # the route's breaker opens: a transition
        ("GET", "/api/flaky/a"),  # refused: breaker_open (rejected)
        ("GET", "/nope"),  # no upstream: upstream="-"
    ]
    for method, target in calls:
        async with gw.session.request(method, f"{gw.url}{target}") as resp:
            await resp.read()
    path.write_text("upstreams: [")
    async with gw.session.post(f"{gw.admin}/admin/reload") as resp:
        assert resp.status == 400
    path.write_text(text)
    async with gw.session.post(f"{gw.admin}/admin/reload") as resp:
        assert resp.status == 200
    async with gw.session.get(f"{gw.admin}/metrics") as resp:
        return gw, await resp.text()
