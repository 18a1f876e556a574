"""The scenario suite's bench (bench/fault_suite.py, bench/suite_report.py; issue 13, item 3).

The pieces first, without processes: which members a spec names, the ``defaults`` config derived from
sim.yaml (no policy left, every route's match/cache/invalidates kept, valid for the gateway), how a config is
pointed at a sim, and how the report judges runs (median, worst member, losses beyond the margin). Then
``fault_replay.py --suite 2 --quick`` end to end through every path, and the report re-read from its JSON.
The figures of the real run depend on the machine, so only their shape and bounds are asserted.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.config import parse_config
from gateway.yamlfile import StrictLoader

from .support import ROOT

sys.path.insert(0, str(ROOT / "bench"))
import fault_suite
import suite_report

SIM_YAML = ROOT / "config" / "examples" / "sim.yaml"
SCRIPT = ROOT / "bench" / "fault_replay.py"
ROUTES = ("auth_user", "conversations", "bot_profiles", "conversation_update", "send_message", "generate", "media_url")
POLICIES = {"timeouts", "retry", "breaker", "limits", "fault", "rate_limit", "idempotency", "quota", "invalidation"}
SIM_PORTS = {"graph": 18081, "gemini": 18082, "supabase": 18083, "lookaside": 18084}


def test_members_by_name_and_halves():
    assert fault_suite.parse_members("seeds,1-3,7,2") == ["seeds", "1", "2", "3", "7"]
    for bad in ("3-1", "x", "1-b"):
        with pytest.raises(Exception, match="expected"):
            fault_suite.parse_members(bad)
    seeds = fault_suite.make_member("seeds", 55, 10, 15)
    assert seeds.half == "tuning" and seeds.run == 65 and seeds.schedule_seed == 7
    assert min(f["start_s"] for f in seeds.faults) == 18  # seeds' Supabase window, 10 s later
    odd, even = fault_suite.make_member("7", 55, 10, 15), fault_suite.make_member("8", 55, 10, 15)
    assert (odd.half, even.half) == ("holdout", "tuning")
    assert odd.text == fault_suite.make_member("7", 55, 10, 15).text and odd.text != even.text


def _keys(data: Any, prefix: str = "") -> set[str]:
    """Every mapping key anywhere in ``data``."""
    found: set[str] = set()
    if isinstance(data, dict):
        for k, v in data.items():
            found.add(str(k))
            found |= _keys(v)
    elif isinstance(data, list):
        for v in data:
            found |= _keys(v)
    return found


def test_defaults_config_keeps_routes_and_wiring_and_drops_every_policy():
    shipped = yaml.load(SIM_YAML.read_text(), Loader=StrictLoader)
    config, dropped = fault_suite.defaults_config(SIM_YAML)
    assert "defaults" not in config and not (_keys(config) & POLICIES)
    assert "defaults" in dropped and "upstreams.graph.retry" in dropped
    assert "upstreams.graph.routes[send_message].rate_limit" in dropped
    for name, up in shipped["upstreams"].items():
        assert config["upstreams"][name]["url"] == up["url"] and config["upstreams"][name].get("kind") == up.get("kind")
        kept = config["upstreams"][name].get("routes", [])
        assert [r["name"] for r in kept] == [r["name"] for r in up.get("routes", [])]
        for mine, theirs in zip(kept, up.get("routes", []), strict=True):
            for key in ("match", "cache", "invalidates"):
                assert mine.get(key) == theirs.get(key), (name, mine["name"], key)
    text = fault_suite.point_at_sim(config, SIM_PORTS, 18080, 19901)
    parsed = parse_config(text)  # the gateway accepts it
    assert parsed.listen.port == 18080
    assert str(parsed.upstreams["supabase"].url).startswith("http://127.0.0.1:18083")


def test_pointing_a_config_at_the_sim_rewrites_ports_and_refuses_foreign_urls():
    shipped = fault_suite.load_yaml(SIM_YAML)
    text = fault_suite.point_at_sim(shipped, SIM_PORTS, 18080, 19901)
    again = yaml.load(text, Loader=StrictLoader)
    assert again["upstreams"]["graph"]["retry"]["on"][0] == "connect-failure"  # "on" stays a key (YAML 1.2)
    assert again["upstreams"]["gemini"]["url"] == "http://127.0.0.1:18082"
    assert parse_config(text).upstreams["graph"].routes[0].name == "send_message"
    shipped["upstreams"]["graph"]["url"] = "https://graph.facebook.com"
    with pytest.raises(ValueError, match=r"upstreams\.graph\.url"):
        fault_suite.point_at_sim(shipped, SIM_PORTS, 18080, 19901)


def test_the_gateway_yaml_path_is_the_shipped_file_with_only_its_urls_changed():
    config = fault_suite.shipped_on_sim()
    shipped = fault_suite.load_yaml(fault_suite.GATEWAY_YAML)
    for name, up in shipped["upstreams"].items():
        assert config["upstreams"][name]["url"].startswith("http://127.0.0.1:808"), name
        assert {k: v for k, v in config["upstreams"][name].items() if k != "url"} == {
            k: v for k, v in up.items() if k != "url"
        }
    assert {k: v for k, v in config.items() if k != "upstreams"} == {
        k: v for k, v in shipped.items() if k != "upstreams"
    }
    text = fault_suite.point_at_sim(config, SIM_PORTS, 18080, 19901)
    assert str(parse_config(text).upstreams["graph"].url).startswith("http://127.0.0.1:18081")


def _run(member: str, half: str, path: str, rates: dict[str, float], n: int = 100, repeat: int = 0) -> dict[str, Any]:
    routes = {r: {"requests": n, "success_rate": rates.get(r, 1.0), "amplification": 1.0} for r in ROUTES}
    kinds = {
        k: {"requests": n, "success_rate": rates.get("all", 1.0), "amplification": 1.0}
        for k in suite_report.GROUPS.values()
    }
    return {"member": member, "half": half, "path": path, "repeat": repeat, "routes": routes, "kinds": kinds,
            "duplicate_sends": 1 if path == "shipped" and member == "2" else 0}  # fmt: skip


def test_report_takes_median_and_worst_and_lists_losses_beyond_the_margin():
    rows = [*ROUTES, *suite_report.GROUPS]
    runs = []
    for member, half, direct, shipped in (
        ("1", "holdout", 0.90, 0.95),
        ("2", "tuning", 0.90, 0.70),
        ("3", "holdout", 0.90, 0.89),
    ):
        runs.append(_run(member, half, "direct", {"conversations": direct}))
        runs.append(_run(member, half, "shipped", {"conversations": shipped}))
    runs.append(_run("1", "holdout", "shipped", {"conversations": 0.93}, repeat=1))  # a replay: 2 pp of noise
    data = {"meta": {"rows": rows, "paths": {"direct": {}, "shipped": {}}}, "runs": runs}
    suite_report.judge(data, None)
    conv = data["summary"]["all"]["shipped"]["conversations"]
    assert (conv["median"], conv["worst"], conv["worst_member"]) == (0.89, 0.70, "2")
    assert data["summary"]["holdout"]["shipped"]["conversations"]["worst"] == 0.89
    assert data["summary"]["all"]["shipped"]["duplicate_sends"] == {"total": 1, "max": 1, "members_with": 1}
    assert data["noise"]["max"]["conversations"] == pytest.approx(0.02)
    assert data["noise"]["margin"]["conversations"] == pytest.approx(0.058)  # 2.9 x the median spread
    assert data["noise"]["margin"]["send_message"] == 0.01  # no spread: the 1 pp floor
    losses = {(x["member"], x["row"]) for x in data["losses"]}
    assert losses == {("2", "conversations")}  # member 3 is 1 pp below direct: inside the margin
    assert data["losses"][0]["against"]["direct"]["diff"] == pytest.approx(-0.20)
    suite_report.judge(data, 0.25)  # a fixed margin wider than the loss
    assert data["losses"] == []


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists(),
    reason="nginx is not installed (Debian: apt-get install -y nginx-light)",
)
def test_quick_suite_runs_every_path_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "suite.json"
    argv = [sys.executable, str(SCRIPT), "--suite", "2", "--quick", "--parallel", "12", "--no-save", "--json", str(out)]
    argv += ["--gateway-config", f"copy={SIM_YAML}", "--no-progress"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=110, cwd=tmp_path)
    assert done.returncode == 0, (
        f"exit {done.returncode}\nstdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-3000:]}"
    )
    assert "## Success rate: median / worst member (all members)" in done.stdout
    assert not list(tmp_path.glob("*.md"))  # --no-save
    data = json.loads(out.read_text())
    paths = ("direct", "nginx", "defaults", "shipped", "gateway_yaml", "copy")
    assert list(data["meta"]["paths"]) == list(paths)
    assert [(m["name"], m["half"]) for m in data["meta"]["members"]] == [("seeds", "tuning"), ("1", "holdout")]
    assert "retry" not in data["meta"]["paths"]["defaults"]["config"]
    assert len(data["runs"]) == 12 and all("error" not in r for r in data["runs"])
    for r in data["runs"]:
        assert set(r["routes"]) == set(ROUTES), (r["member"], r["path"])
        assert all(x["requests"] > 0 and 0 <= x["success_rate"] <= 1 for x in r["routes"].values())
        assert r["kinds"]["all"]["upstream_requests"] > 0  # the sim's counters over the measured part
        assert isinstance(r["duplicate_sends"], int)
    for path in paths:
        block = data["summary"]["all"][path]
        assert block["all"]["members"] == 2 and block["all"]["worst"] <= block["all"]["median"]
    assert set(data["summary"]) == {"all", "tuning", "holdout"}
    for loss in data["losses"]:
        assert loss["path"] in ("defaults", "shipped", "gateway_yaml", "copy") and loss["against"]
    again = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "suite_report.py"), str(out), str(out), "--margin", "100"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert again.returncode == 0, again.stderr
    assert "## Where a gateway path loses to direct or nginx (0 member" in again.stdout  # nobody loses by 100 pp
