"""bench/suite_ceiling.py: the share of a member's requests an ideal proxy could answer, from the schedule alone."""

from __future__ import annotations

import sys

import pytest

from .support import ROOT

sys.path.insert(0, str(ROOT / "bench"))
import fault_suite
import suite_ceiling

SCENARIO = """
name: ceiling-test
upstreams:
  supabase:
    outages:
      - {start: 20s, duration: 10s, mode: "503"}
  graph:
    routes:
      send_message:
        outages:
          - {start: 20s, duration: 10s, mode: reset, when: after_body, rate: 40%}
"""
WEIGHTS = {"conversation_update": 1.0, "send_message": 1.0, "bot_profiles": 1.0}


def _member() -> fault_suite.Member:
    return fault_suite.Member("t", 1, SCENARIO, warmup=10.0, run=40.0, faults=[])


def test_a_write_in_an_outage_is_lost_unless_the_proxy_may_wait_past_its_end() -> None:
    calls = [c for c in suite_ceiling.fr.build_schedule(10.0, 40.0, WEIGHTS, 1) if c.at >= 10.0]
    writes = [c for c in calls if c.route == "conversation_update"]
    outside = sum(1 for c in writes if not 20.0 <= c.at < 30.0) / len(writes)
    now = suite_ceiling.member_ceiling(_member(), 10.0, WEIGHTS, dict.fromkeys(suite_ceiling.fr.SIM_UPSTREAMS, 0.0))
    assert now["conversation_update"]["ceiling"] == pytest.approx(outside)
    assert 0.6 < outside < 0.8
    late = suite_ceiling.member_ceiling(_member(), 10.0, WEIGHTS, dict.fromkeys(suite_ceiling.fr.SIM_UPSTREAMS, 10.0))
    assert late["conversation_update"]["ceiling"] == 1.0


def test_reads_of_a_key_fetched_before_are_served_and_lost_answers_are_never_won_back() -> None:
    got = suite_ceiling.member_ceiling(_member(), 10.0, WEIGHTS, dict.fromkeys(suite_ceiling.fr.SIM_UPSTREAMS, 10.0))
    calls = [c for c in suite_ceiling.fr.build_schedule(10.0, 40.0, WEIGHTS, 1) if c.at >= 10.0]
    sends = [c for c in calls if c.route == "send_message"]
    inside = sum(1 for c in sends if 20.0 <= c.at < 30.0)
    assert got["send_message"]["ceiling"] == pytest.approx(1 - 0.4 * inside / len(sends))
    cold = suite_ceiling.member_ceiling(_member(), 10.0, WEIGHTS, dict.fromkeys(suite_ceiling.fr.SIM_UPSTREAMS, 0.0))
    reads = [c for c in calls if c.route == "bot_profiles"]
    seen: set[tuple[str, str, str]] = set()
    expected = 0
    for c in suite_ceiling.fr.build_schedule(10.0, 40.0, WEIGHTS, 1):
        if c.route != "bot_profiles":
            continue
        key = suite_ceiling._key(c)
        down = 20.0 <= c.at < 30.0
        if c.at >= 10.0:
            expected += 0 if down and key not in seen else 1
        if not down:
            seen.add(key)
    assert cold["bot_profiles"]["ceiling"] == pytest.approx(expected / len(reads))
    assert cold["bot_profiles"]["ceiling"] > cold["conversation_update"]["ceiling"]


def test_sends_lose_what_fails_after_they_went_out_and_reads_retry_it() -> None:
    text = """
name: ceiling-resets
defaults:
  resets: {rate: 1%, when: before_body}
upstreams:
  graph:
    outages:
      - {start: 20s, duration: 10s, mode: reset, rate: 30%}
"""
    member = fault_suite.Member("r", 1, text, warmup=10.0, run=40.0, faults=[])
    weights = {"send_message": 1.0, "media_url": 1.0}
    got = suite_ceiling.member_ceiling(member, 10.0, weights, dict.fromkeys(suite_ceiling.fr.SIM_UPSTREAMS, 0.0))
    sends = [
        c for c in suite_ceiling.fr.build_schedule(10.0, 40.0, weights, 1) if c.at >= 10.0 and c.route == "send_message"
    ]
    inside = sum(1 for c in sends if 20.0 <= c.at < 30.0)
    assert got["send_message"]["ceiling"] == pytest.approx(1 - 0.01 - 0.3 * inside / len(sends))
    assert got["media_url"]["ceiling"] == 1.0  # a GET is resent after a reset: nothing lost
