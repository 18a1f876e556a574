"""bench/instructions.py: instructions per request, counted by callgrind (deterministic, unlike time)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from .support import ROOT

sys.path.insert(0, str(ROOT / "bench"))
import instructions


def test_the_measured_window_is_read_from_the_dump(tmp_path: Path) -> None:
    out = tmp_path / "gateway.callgrind"
    (tmp_path / "gateway.callgrind.4242.1").write_text("events: Ir\nsummary: 18446744073709551431\ntotals: 905000\n")
    (tmp_path / "gateway.callgrind.4242").write_text("events: Ir\nsummary: 0\ntotals: 0\n")  # at exit, off
    assert instructions.totals(out) == 905000
    with pytest.raises(RuntimeError, match="no callgrind dump"):
        instructions.totals(tmp_path / "other.callgrind")


def test_rows_are_checked_before_anything_starts(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        instructions.parse_args(["--only", "gateway,nope"])
    assert "unknown rows ['nope']" in capsys.readouterr().err
    args = instructions.parse_args(["--only", "bare-aiohttp,gateway-cache-hit", "--requests", "8"])
    assert args.rows == ["bare-aiohttp", "gateway-cache-hit"]


@pytest.mark.slow
@pytest.mark.skipif(not (shutil.which("valgrind") and shutil.which("nginx")), reason="needs valgrind and nginx")
def test_a_cache_hit_costs_fewer_instructions_than_forwarding() -> None:
    """End to end, under valgrind: every row answers, and a memory-cache hit executes fewer
    instructions than the bare forwarder's request, the plain gateway route more (counts, not time:
    they do not depend on how busy the machine is)."""
    args = instructions.parse_args(["--only", "bare-aiohttp,gateway,gateway-cache-hit", "--requests", "200"])
    rows = {row.name: row for row in instructions.run(args)}
    assert all(row.broken is None and row.requests == 200 for row in rows.values()), rows
    bare, plain, hit = (rows[name].per_request or 0 for name in ("bare-aiohttp", "gateway", "gateway-cache-hit"))
    assert 0 < hit < bare < plain
    report = instructions.report(list(rows.values()), args, instructions.dt.datetime.now(), 1.0)
    assert "| gateway-cache-hit |" in report and "× |" in report
