"""The scenario suite's generator (gateway_sim/suite.py) and the sim features it uses (issue 13, item 3).

The generator is checked on its own (same seed, same schedule; every schedule valid and inside its run;
every fault kind drawn somewhere), then the sim is run on generated schedules and on the new scenario
keys (refused connections, brownouts, plain answers, answers lost after the body) with an injected
scenario clock, asserting what a client sees on real loopback connections.
"""

from __future__ import annotations

import asyncio
import errno
import json
import subprocess
import sys
import textwrap
import time
from collections import Counter
from typing import Any

import aiohttp
import pytest

from gateway.outcomes import api_error_code
from gateway_sim import ROUTES, UPSTREAMS, Scenario, ScenarioError, load_scenario, parse_scenario, start_sim
from gateway_sim.suite import DEFAULT_TAIL, DEFAULT_WARMUP, KINDS, LEAD, MAX_OUTAGE, delayed, generate, suite_seed

from .support import ROOT, FakeClock, eventually

SUPA = {"apikey": "anon-key", "Authorization": "Bearer u1"}
GRAPH_AUTH = {"Authorization": "Bearer EAAG-test"}
SEND = {"messaging_product": "whatsapp", "to": "+33 6 00 00 00 01", "type": "text", "text": {"body": "hi"}}
FREE = dict.fromkeys(UPSTREAMS, 0)
SEEDS = range(0, 150)


def windows(scenario: Scenario) -> list[tuple[str, str | None, str, Any]]:
    """Every outage and brownout window the scenario writes: (upstream, route, key, window)."""
    found: list[tuple[str, str | None, str, Any]] = []
    for up in UPSTREAMS:
        blocks: list[tuple[str | None, Any]] = [(None, scenario.upstream(up))]
        blocks += [(r, scenario.route(up, r)) for r in ROUTES[up] if scenario.route(up, r) is not None]
        for route, block in blocks:
            found += [(up, route, "outages", o) for o in block.outages or ()]
            found += [(up, route, "brownouts", b) for b in block.brownouts or ()]
    return found


# --------------------------------------------------------------------------- the generator alone


def test_same_seed_same_schedule_and_seeds_differ():
    first, again = generate(17), generate(17)
    assert first.text == again.text
    assert first.scenario == again.scenario
    assert first.faults == again.faults and first.run == again.run
    texts = {generate(s).text for s in range(1, 41)}
    assert len(texts) == 40  # every seed its own schedule
    assert generate(17, length=70).text != first.text  # the run length is part of the draw's bounds


def test_every_schedule_validates_and_its_faults_fall_inside_the_run():
    for seed in SEEDS:
        g = generate(seed)
        assert parse_scenario(g.text) == g.scenario.model_copy(update={"name": g.scenario.name})
        assert g.scenario.seed == seed and g.scenario.name == f"suite-{seed}"
        assert g.run >= 55.0 and g.faults
        for f in g.faults:
            assert f.kind in KINDS
            assert f.start >= DEFAULT_WARMUP + LEAD - 1e-9, (seed, f)
            assert f.end <= g.run - DEFAULT_TAIL + 1e-9, (seed, f)
        ends = [f.end for f in g.faults]
        assert g.run == pytest.approx(max(55.0, max(ends) + DEFAULT_TAIL))
        for up, route, key, w in windows(g.scenario):  # the scenario's own windows, not just the report's
            end = w.start + w.duration
            assert w.start >= DEFAULT_WARMUP + LEAD - 1e-9 and end <= g.run - DEFAULT_TAIL + 1e-9, (seed, up, route, w)
            assert w.every is None  # one-off windows: nothing recurs after the run
            if key == "brownouts":
                assert 5 <= w.factor <= 20


def test_the_draw_covers_every_kind_and_the_range_of_each():
    kinds: Counter[str] = Counter()
    modes: Counter[str] = Counter()
    outage_lengths: list[float] = []
    partial_rates: list[float] = []
    details: list[str] = []
    for seed in SEEDS:
        g = generate(seed)
        kinds.update(f.kind for f in g.faults)
        details += [f.detail for f in g.faults]
        outage_lengths += [f.duration for f in g.faults if f.kind == "outage"]
        for _, _, key, w in windows(g.scenario):
            if key == "outages":
                modes[("plain " if w.plain else "") + w.mode + (f" {w.when}" if w.when else "")] += 1
                if w.rate < 1 and w.mode in ("500", "503", "504", "520"):
                    partial_rates.append(w.rate)
    assert set(kinds) == set(KINDS)
    for mode in ("503", "plain 503", "refused", "reset", "timeout", "429", "plain 429", "400", "reset after_body"):
        assert modes[mode] > 0, (mode, modes)
    assert min(outage_lengths) < 2 and max(outage_lengths) > 40 and max(outage_lengths) <= MAX_OUTAGE
    assert min(partial_rates) < 0.12 and max(partial_rates) > 0.4 and max(partial_rates) <= 0.5
    for text in ("PGRST000", "code 2", "UNAVAILABLE", "code 130429", "code 80007", "code 4", "RetryInfo", "latency x"):
        assert any(text in d for d in details), text
    assert any("Retry-After" in d for d in details) and any("429 plain" in d and "Retry" not in d for d in details)


def test_a_long_outage_makes_the_run_longer_and_short_lengths_are_refused():
    longest = max((generate(s) for s in SEEDS), key=lambda g: g.run)
    assert longest.run > 75  # an outage of tens of seconds, then the tail of recovery
    assert any(f.kind == "outage" and f.end + DEFAULT_TAIL == pytest.approx(longest.run) for f in longest.faults)
    short = generate(3, length=25, warmup=2, tail=8)
    assert all(f.start >= 4 - 1e-9 for f in short.faults) and short.run >= 25
    with pytest.raises(ValueError, match="leaves under 5 s"):
        generate(3, length=20)
    assert suite_seed("suite:17") == 17 and suite_seed("seeds") is None and suite_seed("suite:x") is None


def test_delayed_moves_every_window_later():
    seeds = load_scenario(ROOT / "config" / "scenarios" / "seeds.yaml")
    later = delayed(seeds, 10)
    assert later.name == "seeds"
    outage = later.upstreams.supabase.outages[0]
    assert outage.start == 18 and outage.every == 60 and outage.code == "PGRST002"
    assert not outage.active(8.5) and outage.active(18.5) and outage.active(78.5)
    assert later.upstreams.graph.routes.send_message == seeds.upstreams.graph.routes.send_message


def test_cli_prints_the_generated_scenario():
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "sim", "--scenario", "suite:17", "--print"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == generate(17).text
    bad = subprocess.run(
        [sys.executable, "-m", "gateway", "sim", "--scenario", "suite:1", "--length", "ten"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert bad.returncode == 2 and "--length" in bad.stderr


# --------------------------------------------------------------------------- new scenario keys, refused


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "upstreams: {supabase: {routes: {auth_user: {outages: [{start: 1s, duration: 1s, mode: refused}]}}}}",
            "upstreams.supabase.routes.auth_user.outages[0].mode: refused closes the host: set it under the upstream",
        ),
        ("upstreams: {graph: {outages: [{start: 1s, duration: 1s, mode: refused, rate: 50%}]}}", "rate must be 100%"),
        ("upstreams: {graph: {outages: [{start: 1s, duration: 1s, mode: 503, when: after_body}]}}", "when applies"),
        ("upstreams: {graph: {outages: [{start: 1s, duration: 1s, mode: 503, plain: true, code: 2}]}}", "plain"),
        ("upstreams: {graph: {outages: [{start: 1s, duration: 1s, mode: reset, plain: true}]}}", "need a status"),
        ("upstreams: {graph: {brownouts: [{start: 1s, duration: 1s, factor: 1}]}}", "greater than 1"),
        ("upstreams: {graph: {brownouts: [{start: 1s, duration: 5s, factor: 3, every: 2s}]}}", "shorter than"),
    ],
)
def test_new_keys_refuse_what_cannot_be(text, expected):
    with pytest.raises(ScenarioError) as caught:
        parse_scenario(text)
    assert expected in str(caught.value)


@pytest.fixture
async def session():
    async with aiohttp.ClientSession() as s:
        yield s


async def _get(session: aiohttp.ClientSession, url: str, **kwargs: Any) -> tuple[int, Any, bytes]:
    async with session.get(url, **kwargs) as resp:
        return resp.status, resp.headers, await resp.read()


async def test_refused_window_closes_the_listener_then_reopens_it(session):
    clock = FakeClock(0.0)
    sim = await start_sim(
        parse_scenario("upstreams: {supabase: {outages: [{start: 10s, duration: 5s, mode: refused}]}}"),
        ports=FREE,
        clock=clock,
    )
    try:
        url = sim.url("supabase") + "/rest/v1/t"
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as kept:  # one pooled connection
            assert (await _get(kept, url, headers=SUPA))[0] == 200
            clock.now = 11.0

            async def refused() -> bool:
                try:
                    await _get(session, url, headers=SUPA)
                except aiohttp.ClientConnectorError as exc:
                    assert exc.os_error.errno == errno.ECONNREFUSED
                    return True
                except aiohttp.ServerDisconnectedError:  # connected just before the listener closed: dropped
                    return False
                return False

            await eventually(refused, 2.0, "the sim did not change its listener in time")
            with pytest.raises(aiohttp.ClientConnectionError):  # the kept connection was dropped with the listener
                await _get(kept, url, headers=SUPA)
        assert (await _get(session, sim.url("graph") + "/v21.0/5", headers=GRAPH_AUTH))[0] == 200  # others stay up
        clock.now = 15.0

        async def back() -> bool:
            try:
                return (await _get(session, url, headers=SUPA))[0] == 200
            except aiohttp.ClientConnectionError:
                return False

        await eventually(back, 2.0, "the sim did not change its listener in time")
        _, _, body = await _get(session, sim.url("graph") + "/_sim/stats")
        windows_seen = json.loads(body)["outages"]
        assert windows_seen == [
            {
                "upstream": "supabase",
                "route": None,
                "start_s": 10.0,
                "duration_s": 5.0,
                "every_s": None,
                "mode": "refused",
                "rate": 1.0,
            }
        ]
    finally:
        await sim.close()


async def test_restarting_the_clock_reopens_a_refused_listener_at_once(session):
    clock = FakeClock(0.0)
    text = "upstreams: {graph: {outages: [{start: 5s, duration: 10s, mode: refused}]}}"
    sim = await start_sim(parse_scenario(text), ports=FREE, clock=clock)
    try:
        url = sim.url("graph") + "/v21.0/5"
        clock.now = 7.0

        async def refused() -> bool:
            try:
                await _get(session, url, headers=GRAPH_AUTH)
            except aiohttp.ClientConnectorError:
                return True
            return False

        await eventually(refused, 2.0, "the sim did not change its listener in time")
        async with session.post(sim.url("gemini") + "/_sim/reset?restart=1") as resp:
            assert resp.status == 200  # the control paths answer on every listener still open
        assert (await _get(session, url, headers=GRAPH_AUTH))[0] == 200  # reopened before the answer, no tick
    finally:
        await sim.close()


# --------------------------------------------------------------------------- brownouts, plain answers, lost answers


async def test_brownout_multiplies_latency_inside_its_window_only(session):
    clock = FakeClock(0.0)
    text = "upstreams: {supabase: {latency: {fixed: 40ms}, brownouts: [{start: 10s, duration: 5s, factor: 10}]}}"
    sim = await start_sim(parse_scenario(text), ports=FREE, clock=clock)
    try:
        url = sim.url("supabase") + "/rest/v1/t"
        took = {}
        for t in (5.0, 12.0, 16.0):
            clock.now = t
            start = time.monotonic()
            assert (await _get(session, url, headers=SUPA))[0] == 200
            took[t] = time.monotonic() - start
        assert took[5.0] < 0.3 and took[16.0] < 0.3
        assert 0.39 <= took[12.0] < 1.5  # 40 ms x 10
    finally:
        await sim.close()


async def test_plain_answers_carry_no_api_code_and_keep_retry_after(session):
    clock = FakeClock(0.0)
    text = """
    upstreams:
      supabase: {outages: [{start: 0s, duration: 10s, mode: 503, plain: true, retry_after: 2s}]}
      gemini: {outages: [{start: 0s, duration: 10s, mode: 429, plain: true}]}
    """
    sim = await start_sim(parse_scenario(textwrap.dedent(text)), ports=FREE, clock=clock)
    try:
        status, headers, body = await _get(session, sim.url("supabase") + "/rest/v1/t", headers=SUPA)
        assert status == 503 and headers["Retry-After"] == "2"
        assert headers["Content-Type"].startswith("text/html") and b"503 Service Unavailable" in body
        assert api_error_code("supabase", body) is None
        async with session.post(
            sim.url("gemini") + "/v1beta/models/m:generateContent",
            json={"contents": []},
            headers={"x-goog-api-key": "k"},
        ) as resp:
            body = await resp.read()
            assert resp.status == 429 and b"RetryInfo" not in body and "Retry-After" not in resp.headers
    finally:
        await sim.close()


def _first(predicate) -> Any:
    """The first generated member (seeds 1-400) with a fault that ``predicate`` accepts: (member, fault)."""
    for seed in range(1, 401):
        g = generate(seed)
        for f in g.faults:
            if predicate(f):
                return g, f
    raise AssertionError("no seed draws such a fault")


async def test_the_sim_applies_a_generated_outage_and_recovers_after_it(session):
    g, fault = _first(lambda f: f.upstream == "supabase" and f.kind == "outage" and f.detail == "503 PGRST000")
    others = [f for f in g.faults if f.upstream == "supabase" and f is not fault]
    clock = FakeClock(0.0)
    sim = await start_sim(g.scenario, ports=FREE, clock=clock)
    try:
        url = sim.url("supabase") + "/rest/v1/conversations?select=*"
        inside, after = fault.start + fault.duration / 2, fault.end + 0.5
        for t, expect in ((inside, 503), (after, None)):
            if any(o.start <= t <= o.end for o in others):
                continue  # another supabase fault overlaps: only the outage's own window is checked
            clock.now = t
            answers = await asyncio.gather(*(_get(session, url, headers=SUPA) for _ in range(20)))
            if expect == 503:
                assert all(a[0] == 503 and json.loads(a[2])["code"] == "PGRST000" for a in answers), answers[0]
            else:  # recovered: the background's few % of errors at most
                assert sum(a[0] == 200 for a in answers) >= 15
        clock.now = g.run - 1  # the tail: every fault over
        tail = await asyncio.gather(*(_get(session, url, headers=SUPA) for _ in range(20)))
        assert [a[0] for a in tail].count(200) >= 15
    finally:
        await sim.close()


async def test_the_sim_applies_generated_lost_answers_on_sends(session):
    g, fault = _first(lambda f: f.kind == "lost_answers" and f.detail.startswith(("40%", "45%", "50%")))
    clock = FakeClock(0.0)
    sim = await start_sim(g.scenario, ports=FREE, clock=clock)
    try:
        clock.now = fault.start + fault.duration / 2

        async def send(i: int) -> int | None:
            try:
                async with session.post(
                    sim.url("graph") + "/v21.0/1/messages", json={**SEND, "text": {"body": f"m{i}"}}, headers=GRAPH_AUTH
                ) as resp:
                    await resp.read()
                    return resp.status
            except aiohttp.ClientConnectionError:
                return None

        statuses = await asyncio.gather(*(send(i) for i in range(40)))
        lost, ok = statuses.count(None), statuses.count(200)
        _, _, body = await _get(session, sim.url("graph") + "/_sim/stats")
        messages = json.loads(body)["messages"]
        dropped_unread = 40 - messages["received"]  # the background's resets before the body
        assert 8 <= lost <= 32  # about the window's rate (40-50 %)
        assert messages["delivered"] == ok + lost - dropped_unread  # every lost answer was a delivered message
    finally:
        await sim.close()
