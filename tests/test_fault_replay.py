"""bench/fault_replay.py --quick runs end to end against the sim, through every path (issue 7).

Only the report's structure is checked: every path ran, every route of the mix is there, the figures are
numbers. Their values depend on the machine and on the scenario's random draws, so none is asserted.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "fault_replay.py"
PATHS = ("direct", "nginx", "gateway")
ROUTES = (
    "auth_user",
    "conversations",
    "bot_profiles",
    "conversation_update",
    "send_message",
    "generate",
    "media_url",
)
NUMBERS = ("requests", "ok", "success_rate", "p50_ms", "p95_ms", "p99_ms", "max_ms", "stale", "hits")

pytestmark = pytest.mark.skipif(
    shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists(),
    reason="nginx is not installed (Debian: apt-get install -y nginx-light): fault_replay.py needs it",
)


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@pytest.mark.slow
def test_quick_run_exercises_every_path_and_route(tmp_path: Path) -> None:
    out = tmp_path / "fault-replay.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--no-save", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=90,
        cwd=tmp_path,
    )
    assert done.returncode == 0, (
        f"exit {done.returncode}\nstdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-3000:]}"
    )
    assert "| path | route |" in done.stdout  # the markdown table went to stdout
    assert not list(tmp_path.glob("*.md"))  # --no-save: nothing written but the JSON

    data = json.loads(out.read_text())
    assert data["errors"] == {}
    assert data["meta"]["quick"] is True
    assert data["meta"]["scenario"]
    assert data["meta"]["requests"] > 0
    assert data["meta"]["outages"], "the quick scenario has outage windows, listed from /_sim/stats"
    assert set(data["paths"]) == set(PATHS)
    for name, path in data["paths"].items():
        assert set(path["routes"]) == set(ROUTES), name
        for route, r in path["routes"].items():
            assert r["requests"] > 0, (name, route)
            for key in NUMBERS:
                assert _number(r[key]), (name, route, key, r[key])
            assert 0.0 <= r["success_rate"] <= 1.0
            assert _number(r["sim_route_amplification"]), (name, route)
        assert sum(r["requests"] for r in path["routes"].values()) == data["meta"]["requests"], name
        assert _number(path["duplicate_sends"])
        assert _number(path["kinds"]["all"]["amplification"])
        assert path["kinds"]["all"]["upstream_requests"] > 0, f"{name}: the sim saw no request"
        assert path["timeline"] and all(_number(b["requests"]) for b in path["timeline"])
