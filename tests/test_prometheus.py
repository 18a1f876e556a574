"""A real Prometheus scrapes the gateway's admin port (issue 5).

The Debian package ``prometheus`` provides the binary; the test starts it on a free loopback port
with a 1 s scrape interval, its TSDB in a temporary folder, and deploy/prometheus/alerts.yml as its
rule file, then reads it back through its HTTP API. Skipped only where the binary is absent.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from .support import eventually, free_port
from .support.monitoring import ALERTS, busy_gateway, concrete, dashboard_exprs

WAIT = 30.0  # seconds: the longest any poll below waits


@pytest.fixture
def prometheus_binary() -> str:
    import shutil

    path = shutil.which("prometheus")
    if path is None:
        pytest.skip("the prometheus binary is not installed (Debian package prometheus; .ci/run installs it)")
    return path


class Prometheus:
    """A Prometheus process scraping one gateway admin port every second."""

    def __init__(self, binary: str, tmp_path: Path, admin_port: int) -> None:
        self.port = free_port()
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(ALERTS)],
            "scrape_configs": [
                {
                    "job_name": "gateway",
                    "metrics_path": "/metrics",
                    "static_configs": [{"targets": [f"127.0.0.1:{admin_port}"]}],
                }
            ],
        }
        path = tmp_path / "prometheus.yml"
        path.write_text(yaml.safe_dump(config))
        empty = tmp_path / "consoles"
        empty.mkdir()
        self.log = tmp_path / "prometheus.log"
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(
                [
                    binary,
                    f"--config.file={path}",
                    f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                    "--storage.tsdb.retention.time=1h",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    f"--web.console.templates={empty}",
                    f"--web.console.libraries={empty}",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.url = f"http://127.0.0.1:{self.port}"

    async def wait_ready(self, session: aiohttp.ClientSession) -> None:
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"prometheus exited {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                async with session.get(f"{self.url}/-/ready") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.1)
        pytest.fail(f"prometheus not ready after {WAIT}s:\n{self.log.read_text()}")

    async def api(self, session: aiohttp.ClientSession, path: str, **params: str) -> Any:
        async with session.get(f"{self.url}/api/v1/{path}", params=params) as resp:
            body = await resp.json()
        assert body["status"] == "success", body
        return body["data"]

    async def poll(self, session: aiohttp.ClientSession, what: str, check: Any) -> Any:
        """Call ``check()`` until it returns something true; fail after WAIT seconds, with Prometheus's log."""
        return await eventually(check, WAIT, lambda: f"{what}:\n{self.log.read_text()}", interval=0.25)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@pytest.fixture
def prometheus(prometheus_binary: str, tmp_path: Path) -> Any:
    made: list[Prometheus] = []

    def start(admin_port: int) -> Prometheus:
        prom = Prometheus(prometheus_binary, tmp_path, admin_port)
        made.append(prom)
        return prom

    yield start
    for prom in made:
        prom.stop()


async def test_prometheus_scrapes_the_gateway_and_runs_the_alerts_and_dashboard_queries(
    upstream_factory, gateway_factory, prometheus, tmp_path
):
    """One Prometheus (its first scrape takes about 5 s to be scheduled, so the checks share it):
    - a query through its HTTP API returns gateway_requests_total for the upstream the test called;
    - alerts.yml loads and evaluates without error, and the two alerts the gateway's state calls for
      (a route breaker open, a failed reload) go pending and firing with the right labels;
    - every dashboard query runs; all have data but the one that needs a stale cache answer."""
    gw, _ = await busy_gateway(upstream_factory, gateway_factory, tmp_path)  # one GET /api/x among its calls
    prom = prometheus(gw.gateway.admin_port)
    async with aiohttp.ClientSession() as session:
        await prom.wait_ready(session)

        async def series() -> list[dict[str, Any]]:
            data = await prom.api(session, "query", query="gateway_requests_total")
            return [s for s in data["result"] if s["metric"].get("upstream") == "api"]

        found = await prom.poll(session, "gateway_requests_total for upstream api", series)
        plain = [s for s in found if s["metric"]["route"] == "-" and s["metric"]["status"] == "200"]
        assert len(plain) == 1
        assert plain[0]["metric"] == {
            "__name__": "gateway_requests_total",
            "upstream": "api",
            "route": "-",
            "method": "GET",
            "status": "200",
            "source": "upstream",
            "job": "gateway",
            "instance": f"127.0.0.1:{gw.gateway.admin_port}",
        }
        assert plain[0]["value"][1] == "1"
        assert {(s["metric"]["route"], s["metric"]["source"]) for s in found} >= {
            ("cached", "cache"),
            ("flaky", "gateway"),
        }
        targets = await prom.api(session, "targets")
        assert [t["health"] for t in targets["activeTargets"]] == ["up"]

        async def traffic_seen() -> bool:
            async with gw.session.get(f"{gw.url}/api/x") as resp:  # keeps rates above zero
                await resp.read()
            query = 'sum by (status, source) (rate(gateway_requests_total{upstream="api"}[1m]))'
            data = await prom.api(session, "query", query=query)
            return any(float(s["value"][1]) > 0 for s in data["result"])

        await prom.poll(session, "a rate of gateway_requests_total", traffic_seen)

        async def rules_evaluated() -> list[dict[str, Any]]:
            data = await prom.api(session, "rules")
            rules = [r for g in data["groups"] for r in g["rules"]]
            done = all(not r["lastEvaluation"].startswith("0001") for r in rules)
            return rules if done else []

        rules = await prom.poll(session, "every rule evaluated", rules_evaluated)
        assert len(rules) == len(yaml.safe_load(ALERTS.read_text())["groups"][0]["rules"])
        assert [(r["name"], r["health"], r.get("lastError", "")) for r in rules if r["health"] != "ok"] == []

        async def alerts() -> dict[str, dict[str, Any]]:
            data = await prom.api(session, "alerts")
            found = {a["labels"]["alertname"]: a for a in data["alerts"]}
            return found if {"GatewayBreakerOpen", "GatewayConfigReloadFailed"} <= set(found) else {}

        firing = await prom.poll(session, "the breaker and reload alerts", alerts)
        breaker = firing["GatewayBreakerOpen"]
        assert breaker["state"] == "pending"  # for: 1m
        assert (breaker["labels"]["upstream"], breaker["labels"]["route"]) == ("api", "flaky")
        assert firing["GatewayConfigReloadFailed"]["state"] == "firing"  # the first failure, a new series

        empty = []
        for where, expr in dashboard_exprs().items():
            if expr.startswith("label_values("):
                series = expr[len("label_values(") :].rsplit(",", 1)[0]
                data = await prom.api(session, "series", **{"match[]": concrete(series)})
                assert data, where
                continue
            data = await prom.api(session, "query", query=concrete(expr))
            if not data["result"]:
                empty.append(where)
        # Every query has data after this traffic, except the stale ratio: the busy gateway never
        # answers from a stale entry, so that series does not exist yet.
        assert empty == ["panel 'Cache hit ratio per upstream' B"]
