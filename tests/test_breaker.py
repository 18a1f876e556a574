"""The circuit breaker state machine, driven by a fake clock (no sleeping)."""

from __future__ import annotations

import heapq
import itertools
import random

import pytest

from gateway.breaker import (
    CLOSED,
    HALF_OPEN,
    OPEN,
    RECOVERY_JITTER,
    TRANSITIONS,
    CircuitBreaker,
    IllegalTransition,
    next_state,
)
from gateway.config import BreakerSpec
from gateway.errors import BreakerOpen
from gateway.outcomes import Outcome

from .support import FakeClock

OK = Outcome("response", 200)
E503 = Outcome("response", 503)
E429 = Outcome("response", 429)
E404 = Outcome("response", 404)
TIMEOUT = Outcome("timeout")
CONNECT = Outcome("connect-failure")
WALL_EPOCH = 1_700_000_000.0  # 2023-11-14T22:13:20Z


def make(rng=lambda: 0.5, **overrides) -> tuple[CircuitBreaker, FakeClock, list[tuple[str, str]]]:
    """A breaker on a fake clock; ``rng`` 0.5 draws no jitter (each open period is exactly ``recovery``)."""
    clock = FakeClock(1000.0, wall_start=WALL_EPOCH)
    transitions: list[tuple[str, str]] = []

    def on_transition(breaker: CircuitBreaker, before: str, after: str) -> None:
        transitions.append((before, after))

    config = BreakerSpec.model_validate(
        {"failure_threshold": 3, "recovery": "10s", "recovery_max": "35s", "min_requests": 4} | overrides
    )
    breaker = CircuitBreaker(
        "graph",
        "graph",
        "-",
        config,
        clock=clock,
        on_transition=on_transition,
        wall_clock=clock.wall,
        rng=rng,
    )
    return breaker, clock, transitions


def try_once(breaker: CircuitBreaker, outcome: Outcome) -> None:
    breaker.acquire().record(outcome)


def trip(breaker: CircuitBreaker) -> None:
    for _ in range(breaker.config.failure_threshold):
        try_once(breaker, E503)
    assert breaker.state == OPEN


# ---------------------------------------------------------------- consecutive mode


def test_consecutive_opens_at_threshold_not_before():
    breaker, _, transitions = make()
    try_once(breaker, E503)
    try_once(breaker, TIMEOUT)
    assert breaker.state == CLOSED
    assert breaker.failures == 2
    try_once(breaker, CONNECT)
    assert breaker.state == OPEN
    assert transitions == [(CLOSED, OPEN)]


def test_success_resets_the_consecutive_count():
    breaker, _, _ = make()
    for _ in range(5):
        try_once(breaker, E503)
        try_once(breaker, E503)
        try_once(breaker, OK)
    assert breaker.state == CLOSED
    assert breaker.failures == 0


def test_open_fails_fast_with_retry_after_until_half_open():
    breaker, clock, _ = make()
    trip(breaker)
    clock.advance(4)
    with pytest.raises(BreakerOpen) as info:
        breaker.acquire()
    assert info.value.retry_after == pytest.approx(6.0)
    assert info.value.upstream == "graph"
    assert info.value.status == 503 and info.value.code == "breaker_open"
    clock.advance(5.9)
    assert breaker.state == OPEN
    clock.advance(0.1)
    assert breaker.state == HALF_OPEN


def test_half_open_admits_only_half_open_requests_probes():
    breaker, clock, _ = make(half_open_requests=2)
    trip(breaker)
    clock.advance(10)
    probes = [breaker.acquire(), breaker.acquire()]
    assert all(p.probe for p in probes)
    refused = 0
    for _ in range(20):
        with pytest.raises(BreakerOpen) as info:
            breaker.acquire()
        assert info.value.retry_after == pytest.approx(10.0)  # until the probes' slots expire
        refused += 1
    assert refused == 20
    assert breaker.state == HALF_OPEN


def test_a_probe_holds_its_slot_one_recovery_interval_then_another_may_go():
    breaker, clock, _ = make()
    trip(breaker)
    clock.advance(10)
    stuck = breaker.acquire()  # on a stalled connection: no answer for a long while
    clock.advance(9.9)
    with pytest.raises(BreakerOpen) as info:
        breaker.acquire()
    assert info.value.retry_after == pytest.approx(0.1)
    clock.advance(0.1)
    second = breaker.acquire()
    assert second.probe and breaker.probes_in_flight == 2
    second.record(OK)  # the upstream is back: the fresh probe closes the breaker
    assert breaker.state == CLOSED
    stuck.record(TIMEOUT)  # the stuck probe ends later: that period is decided, ignored
    assert breaker.state == CLOSED


def test_a_stuck_probes_timeout_does_not_reopen_while_a_later_probe_is_in_flight():
    breaker, clock, transitions = make()
    trip(breaker)
    clock.advance(10)
    stuck = breaker.acquire()
    clock.advance(10)
    later = breaker.acquire()
    stuck.record(TIMEOUT)  # the first probe's try times out: the later one will decide
    assert breaker.state == HALF_OPEN
    later.record(OK)
    assert breaker.state == CLOSED
    assert transitions[-1] == (HALF_OPEN, CLOSED)


def test_a_failure_from_a_try_older_than_a_success_is_not_counted():
    breaker, clock, _ = make()
    stalled = [breaker.acquire() for _ in range(3)]  # three tries sent into a stall
    clock.advance(1)
    breaker.acquire().record(OK)  # the upstream answers a later try
    clock.advance(7)
    for permit in stalled:
        permit.record(TIMEOUT)  # the stalled tries time out: old news
    assert breaker.failures == 0 and breaker.state == CLOSED
    try_once(breaker, E503)
    assert breaker.failures == 1


def test_each_open_period_is_the_recovery_delay_jittered_by_20_percent():
    waits = []
    for draw in (0.0, 0.25, 0.5, 0.999):
        breaker, _clock, _ = make(rng=lambda draw=draw: draw)
        trip(breaker)
        waits.append(breaker.retry_after())
    assert waits == pytest.approx([8.0, 9.0, 10.0, 11.996])


def test_good_probe_closes_and_resets():
    breaker, clock, transitions = make()
    trip(breaker)
    clock.advance(10)
    breaker.acquire().record(OK)
    assert breaker.state == CLOSED
    assert breaker.failures == 0
    assert breaker.recovery == 10
    assert transitions == [(CLOSED, OPEN), (OPEN, HALF_OPEN), (HALF_OPEN, CLOSED)]
    # a fresh count: threshold failures again are needed to re-open
    try_once(breaker, E503)
    try_once(breaker, E503)
    assert breaker.state == CLOSED


def test_429_probe_is_a_success():
    breaker, clock, _ = make()
    trip(breaker)
    clock.advance(10)
    breaker.acquire().record(E429)
    assert breaker.state == CLOSED


def test_bad_probe_reopens_with_doubled_recovery_capped():
    breaker, clock, transitions = make()  # recovery 10s, recovery_max 35s
    trip(breaker)
    waits = []
    for _ in range(4):
        clock.advance(breaker.recovery)
        assert breaker.state == HALF_OPEN
        breaker.acquire().record(E503)
        assert breaker.state == OPEN
        waits.append(breaker.recovery)
        with pytest.raises(BreakerOpen) as info:
            breaker.acquire()
        assert info.value.retry_after == pytest.approx(breaker.recovery)
    assert waits == [20, 35, 35, 35]
    assert transitions[:3] == [(CLOSED, OPEN), (OPEN, HALF_OPEN), (HALF_OPEN, OPEN)]
    # not half-open one second early
    clock.advance(34)
    assert breaker.state == OPEN
    clock.advance(1)
    breaker.acquire().record(OK)
    assert breaker.state == CLOSED
    assert breaker.recovery == 10  # back to config.recovery once closed


def test_released_probe_frees_its_slot_without_counting():
    breaker, clock, transitions = make()
    trip(breaker)
    clock.advance(10)
    probe = breaker.acquire()
    with pytest.raises(BreakerOpen):
        breaker.acquire()
    probe.release()  # e.g. the client went away
    assert breaker.state == HALF_OPEN
    second = breaker.acquire()
    second.record(OK)
    assert breaker.state == CLOSED
    assert transitions[-1] == (HALF_OPEN, CLOSED)


def test_permit_settles_once():
    breaker, clock, _ = make()
    trip(breaker)
    clock.advance(10)
    with breaker.acquire() as probe:
        probe.record(E503)  # re-opens
        probe.record(OK)  # ignored
    assert probe.done
    assert breaker.state == OPEN


def test_late_outcomes_from_a_previous_period_are_dropped():
    breaker, clock, _ = make(half_open_requests=2)
    slow = [breaker.acquire() for _ in range(3)]  # started while closed
    trip(breaker)
    for permit in slow:
        permit.record(OK)  # answers after the breaker opened: no effect
    assert breaker.state == OPEN
    clock.advance(10)
    first, second = breaker.acquire(), breaker.acquire()
    first.record(OK)
    assert breaker.state == CLOSED
    second.record(E503)  # the other probe answers after the breaker closed
    assert breaker.state == CLOSED
    assert breaker.failures == 0


def test_acquire_in_closed_state_is_never_refused():
    breaker, _, _ = make()
    permits = [breaker.acquire() for _ in range(1000)]
    assert not any(p.probe for p in permits)
    for p in permits:
        p.release()
    assert breaker.state == CLOSED


# ---------------------------------------------------------------- classification


@pytest.mark.parametrize("outcome", [E429, E404, OK, Outcome("response", 400, "80007")])
def test_not_failures_by_default(outcome):
    breaker, _, _ = make(failure_threshold=1)
    for _ in range(10):
        try_once(breaker, outcome)
    assert breaker.state == CLOSED


@pytest.mark.parametrize("outcome", [E503, Outcome("response", 500), TIMEOUT, CONNECT])
def test_failures_by_default(outcome):
    breaker, _, _ = make(failure_threshold=1)
    try_once(breaker, outcome)
    assert breaker.state == OPEN


def test_reset_is_not_a_failure_by_default():
    breaker, _, _ = make(failure_threshold=1)
    try_once(breaker, Outcome("reset"))
    assert breaker.state == CLOSED


def test_failure_on_customised():
    breaker, _, _ = make(failure_threshold=2, failure_on=["429", "code:80007", "reset"])
    try_once(breaker, E503)  # 5xx no longer listed: a success
    try_once(breaker, E429)
    assert breaker.state == CLOSED
    try_once(breaker, Outcome("response", 400, "80007"))
    assert breaker.state == OPEN


# ---------------------------------------------------------------- rate mode


def rate_breaker(**overrides):
    return make(mode="rate", failure_rate="50%", window="10s", min_requests=10, **overrides)


def test_rate_mode_waits_for_min_requests():
    breaker, _, _ = rate_breaker()
    for _ in range(9):
        try_once(breaker, E503)
    assert breaker.state == CLOSED  # 100% failures, but only 9 samples
    assert breaker.failures == 9
    try_once(breaker, E503)
    assert breaker.state == OPEN


def test_rate_mode_opens_at_the_configured_ratio():
    breaker, _, _ = rate_breaker()
    for _ in range(6):
        try_once(breaker, OK)
    for _ in range(5):
        try_once(breaker, E503)
    assert breaker.state == CLOSED  # 5 / 11 < 50%
    try_once(breaker, E503)
    assert breaker.state == OPEN  # 6 / 12 = 50%


def test_rate_mode_fractional_ratio_is_exact():
    breaker, _, _ = make(mode="rate", failure_rate="30%", window="10s", min_requests=10)
    for _ in range(7):
        try_once(breaker, OK)
    for _ in range(2):
        try_once(breaker, E503)
    assert breaker.state == CLOSED
    try_once(breaker, E503)  # 3 / 10 = 30%, despite 0.3 * 10 = 3.0000000000000004
    assert breaker.state == OPEN


def test_rate_mode_success_never_opens():
    breaker, _, _ = rate_breaker()
    for _ in range(9):
        try_once(breaker, E503)
    try_once(breaker, OK)  # 9 / 10 failed, but a success does not trip
    assert breaker.state == CLOSED


def test_rate_mode_window_slides():
    breaker, clock, _ = rate_breaker()
    for _ in range(9):
        try_once(breaker, E503)
    clock.advance(9)
    assert breaker.failures == 9  # still inside the 10 s window
    clock.advance(1)
    assert breaker.failures == 0  # the first second left the window
    try_once(breaker, E503)
    assert breaker.state == CLOSED  # 1 sample in the window: below min_requests
    for _ in range(4):
        try_once(breaker, OK)
    clock.advance(5)
    for _ in range(4):
        try_once(breaker, E503)
    assert breaker.state == CLOSED  # 5 / 9 samples
    try_once(breaker, E503)
    assert breaker.state == OPEN  # 6 / 10 samples, spread over two buckets


def test_rate_mode_half_open_and_close_clear_the_window():
    breaker, clock, _ = rate_breaker()
    for _ in range(10):
        try_once(breaker, E503)
    clock.advance(10)
    breaker.acquire().record(OK)
    assert breaker.state == CLOSED
    assert breaker.failures == 0
    try_once(breaker, E503)
    assert breaker.state == CLOSED


# ---------------------------------------------------------------- admin


def test_reset_closes_an_open_breaker():
    breaker, _, transitions = make()
    trip(breaker)
    breaker.reset()
    assert breaker.state == CLOSED
    assert breaker.failures == 0
    assert transitions == [(CLOSED, OPEN), (OPEN, CLOSED)]
    breaker.acquire().record(OK)


def test_reset_of_a_closed_breaker_only_clears_counters():
    breaker, _, transitions = make()
    try_once(breaker, E503)
    breaker.reset()
    assert breaker.failures == 0
    assert transitions == []


def test_force_open_holds_until_reset():
    breaker, clock, transitions = make()
    breaker.force_open()
    assert breaker.state == OPEN and breaker.forced
    clock.advance(10_000)
    assert breaker.state == OPEN  # no half-open while forced
    with pytest.raises(BreakerOpen) as info:
        breaker.acquire()
    assert info.value.retry_after is None  # no wait is known: no Retry-After
    assert "held open by an operator" in str(info.value)
    assert breaker.retry_after() is None
    snap = breaker.snapshot()
    assert snap["forced"] is True and snap["retry_at"] is None and snap["opened_at"] is not None
    breaker.reset()
    assert breaker.state == CLOSED
    assert breaker.snapshot()["forced"] is False
    assert transitions == [(CLOSED, OPEN), (OPEN, CLOSED)]


def test_force_open_of_an_open_breaker_cancels_its_half_open():
    breaker, clock, transitions = make()
    trip(breaker)
    breaker.force_open()
    clock.advance(100)
    assert breaker.state == OPEN
    assert transitions == [(CLOSED, OPEN)]


def test_force_open_while_half_open_drops_probes():
    breaker, clock, transitions = make()
    trip(breaker)
    clock.advance(10)
    probe = breaker.acquire()
    breaker.force_open()
    probe.record(OK)  # from the half-open period: ignored
    assert breaker.state == OPEN
    assert transitions[-1] == (HALF_OPEN, OPEN)


# ---------------------------------------------------------------- snapshot, hook, table


def test_snapshot():
    breaker, clock, _ = make()
    closed = breaker.snapshot()
    assert closed == {
        "upstream": "graph",
        "route": "-",
        "name": "graph",
        "state": "closed",
        "failures": 0,
        "opened_at": None,
        "retry_at": None,
        "recovery_s": 10.0,
        "forced": False,
        "open_for_s": None,
        "next_probe_in_s": None,
        "next_probe_at": None,
        "probes_in_flight": 0,
        "tripped_by": "",
        "refusals": {"open": 0, "half_open": 0, "forced": 0},
        "transitions": [],
    }
    trip(breaker)
    clock.advance(4)
    opened = breaker.snapshot()
    assert opened["state"] == "open"
    assert opened["failures"] == 3
    assert opened["opened_at"] == "2023-11-14T22:13:20.000+00:00"
    assert opened["retry_at"] == "2023-11-14T22:13:30.000+00:00"
    assert (opened["open_for_s"], opened["next_probe_in_s"]) == (4.0, 6.0)
    assert opened["next_probe_at"] == "2023-11-14T22:13:30.000+00:00"
    assert opened["tripped_by"] == "503"
    assert opened["transitions"] == [{"to": "open", "event": "trip", "at": "2023-11-14T22:13:20.000+00:00"}]
    clock.advance(6)
    half = breaker.snapshot()
    assert half["state"] == "half_open" and half["retry_at"] is None
    assert half["next_probe_in_s"] == 0.0
    probe = breaker.acquire()
    assert breaker.snapshot()["probes_in_flight"] == 1 and breaker.snapshot()["next_probe_in_s"] == 10.0
    probe.record(OK)
    closed_again = breaker.snapshot()
    assert [t["to"] for t in closed_again["transitions"]] == ["closed", "half_open", "open"]
    assert closed_again["open_for_s"] is None and closed_again["tripped_by"] == ""


def test_on_transition_sees_every_move():
    seen: list[tuple[str, str, str]] = []
    clock = FakeClock()
    config = BreakerSpec.model_validate({"failure_threshold": 1, "recovery": "5s", "recovery_max": "20s"})
    breaker = CircuitBreaker(
        "gemini.generate",
        "gemini",
        "generate",
        config,
        clock=clock,
        on_transition=lambda b, before, after: seen.append((b.name, before, after)),
        rng=lambda: 0.5,
    )
    try_once(breaker, E503)
    clock.advance(5)
    breaker.acquire().record(TIMEOUT)
    clock.advance(10)
    breaker.acquire().record(OK)
    breaker.force_open()
    breaker.reset()
    assert seen == [
        ("gemini.generate", CLOSED, OPEN),
        ("gemini.generate", OPEN, HALF_OPEN),
        ("gemini.generate", HALF_OPEN, OPEN),
        ("gemini.generate", OPEN, HALF_OPEN),
        ("gemini.generate", HALF_OPEN, CLOSED),
        ("gemini.generate", CLOSED, OPEN),
        ("gemini.generate", OPEN, CLOSED),
    ]


@pytest.mark.parametrize(
    ("state", "event"),
    [
        (CLOSED, "recovery_elapsed"),
        (CLOSED, "probe_success"),
        (OPEN, "trip"),
        (OPEN, "probe_failure"),
        (HALF_OPEN, "trip"),
    ],
)
def test_illegal_transition_raises(state, event):
    with pytest.raises(IllegalTransition):
        next_state(state, event)


def test_transition_table_is_closed():
    for moves in TRANSITIONS.values():
        assert set(moves.values()) <= set(TRANSITIONS)
    assert next_state(HALF_OPEN, "probe_failure") == OPEN


def test_update_config_keeps_state():
    breaker, _, _ = make()
    trip(breaker)
    breaker.update_config(breaker.config.model_copy(update={"recovery_max": 15.0, "failure_threshold": 9}))
    assert breaker.state == OPEN
    assert breaker.recovery == 10
    assert breaker.config.failure_threshold == 9


# ---------------------------------------------------------------- never outlasting the failure


def drive(outage: float, rate: float, stall: bool, seed: int) -> tuple[list[float], list[float], CircuitBreaker]:
    """Steady traffic (one try every 1/rate s, no retries) on a breaker with the built-in defaults,
    against an upstream that fails from t=10 for ``outage`` seconds: at once with a 503, or (``stall``)
    by answering nothing until an 8 s timeout. Returns when tries were refused and when probes started."""
    clock = FakeClock(0.0)
    rng = random.Random(seed)
    breaker = CircuitBreaker("up", "up", "-", BreakerSpec(), clock=clock, rng=rng.random)
    start, end = 10.0, 10.0 + outage
    pending: list[tuple[float, int, object, Outcome]] = []  # (answer time, order, permit, outcome)
    refused, probes = [], []
    t, n = 0.0, 0
    while t < end + 20:
        while pending and pending[0][0] <= t:
            clock.now, _, permit, outcome = heapq.heappop(pending)
            permit.record(outcome)
        clock.now = t
        try:
            permit = breaker.acquire()
        except BreakerOpen:
            refused.append(t)
        else:
            if permit.probe:
                probes.append(t)
            failing = start <= t < end
            latency = (8.0 if stall else 0.02) if failing else 0.05
            heapq.heappush(pending, (t + latency, n, permit, TIMEOUT if failing and stall else E503 if failing else OK))
        n += 1
        t = n / rate
    return refused, probes, breaker


@pytest.mark.parametrize("outage", [1.0, 7.0, 30.0, 60.0])
@pytest.mark.parametrize("rate", [1.0, 5.0, 40.0])
@pytest.mark.parametrize("stall", [False, True], ids=["503", "stall"])
def test_refusals_end_within_3s_of_recovery_and_one_probe_per_interval_while_failing(outage, rate, stall):
    for seed in range(3):
        refused, probes, breaker = drive(outage, rate, stall, seed)
        recovered = 10.0 + outage
        after = [t - recovered for t in refused if t >= recovered]
        assert not after or max(after) <= 3.0, (seed, max(after))
        # while failing, probes start at most once per recovery interval (the shortest: jittered down 20 %)
        during = [t for t in probes if t < recovered]
        gaps = [b - a for a, b in itertools.pairwise(during)]
        shortest = BreakerSpec().recovery * (1 - RECOVERY_JITTER)
        assert all(gap >= shortest - 1e-9 for gap in gaps), (seed, gaps)
        assert breaker.state == CLOSED  # a probe that succeeded closed it
        if outage >= 7 and not stall:
            assert refused, "a 503 outage of 7 s or more opens the breaker"
