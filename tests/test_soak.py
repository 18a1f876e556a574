"""bench/soak.py runs end to end against the sim through the gateway (issue 8, item 6).

A short run (24 s, a sample every 2 s, 6 s of warm-up) checks the outputs' structure only: the CSV has its
columns and a row per sample, every sample saw the gateway's RSS and fds, requests were sent and some
succeeded, the markdown has its table, its rule and a verdict line. The verdict itself is not asserted:
over 18 seconds an RSS slope is noise.
"""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "soak.py"
COLUMNS = {
    "t_s",
    "phase",
    "rss_kib",
    "fds",
    "fds_sockets",
    "threads",
    "conn_client",
    "conn_upstream",
    "conn_closing",
    "gateway_inflight",
    "tasks",
    "cache_entries",
    "client_in_flight",
    "sent",
    "completed",
    "ok",
    "success_rate",
    "p50_ms",
    "p95_ms",
}
DURATION, INTERVAL, WARMUP = 24, 2, 6


@pytest.mark.slow
def test_short_soak_writes_samples_and_a_verdict(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            f"--duration={DURATION}s",
            f"--interval={INTERVAL}s",
            f"--warmup={WARMUP}s",
            "--out-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=90,
        cwd=tmp_path,
    )
    # 0: no growth, 1: growth detected (noise over a short run); anything else is a failed run
    assert done.returncode in (0, 1), (
        f"exit {done.returncode}\nstdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-3000:]}"
    )
    assert "steady" in done.stderr  # the progress lines

    (csv_path,) = tmp_path.glob("soak-*.csv")
    (md_path,) = tmp_path.glob("soak-*.md")
    with csv_path.open(newline="") as f:
        reader = csv.DictReader(f)
        assert set(reader.fieldnames or ()) >= COLUMNS
        rows = list(reader)
    # start + one per interval + drained
    assert len(rows) >= DURATION // INTERVAL, len(rows)
    phases = [r["phase"] for r in rows]
    assert phases[0] == "start" and phases[-1] == "drained"
    assert "warmup" in phases
    assert phases.count("steady") >= 3
    for row in rows:
        assert int(row["rss_kib"]) > 0, row
        assert int(row["fds"]) > 0, row
        assert int(row["threads"]) > 0, row
        assert float(row["tasks"]) >= 1, row  # gateway_asyncio_tasks, read from /metrics
    assert sum(int(r["sent"]) for r in rows) > 0
    assert sum(int(r["ok"]) for r in rows) > 0
    assert max(int(r["conn_client"]) for r in rows) > 0  # the client's connections were seen on the proxy port
    assert max(int(r["conn_upstream"]) for r in rows) > 0  # and the gateway's to the sim

    md = md_path.read_text()
    assert "| when | t (m:ss) | RSS | fds |" in md
    for label in ("| start (idle) |", "| after warm-up |", "| end |", "| after drain |"):
        assert label in md, label
    assert "Rule: no growth after warm-up ⇔" in md
    verdicts = [line for line in md.splitlines() if line.startswith("**Verdict: ")]
    assert len(verdicts) == 1, verdicts
    assert ("no growth after warm-up" in verdicts[0]) == (done.returncode == 0)
    assert "| route | sent | ok | success |" in md
