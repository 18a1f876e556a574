"""Circuit breaker: whether a try may go to an upstream, decided from the outcomes of earlier tries.

Owns the state of one breaker (contract §2 "breaker"): the states ``closed``, ``open`` and
``half_open``, every move between them written in ``TRANSITIONS``, the failure counters of the
two modes (``consecutive`` failures, or the failure ratio of a sliding ``window`` of one-second
buckets once ``min_requests`` samples are in it), the recovery delay that doubles on each failed
probe up to ``recovery_max`` and is jittered by ± ``RECOVERY_JITTER`` each time the breaker opens,
the probes of a half-open period, and the snapshot the admin port shows. It does no I/O, starts no
timers and reads only the clocks and the randomness it is given, so it is tested without sleeping:
the move from open to half-open is made lazily, when ``acquire``, ``state`` or ``snapshot`` reads the clock.

A breaker never outlasts the failure it reacts to (contract §2): it stays open one (jittered)
recovery interval, then lets a probe through; while half-open, a probe holds its slot for one
recovery interval at most, after which another probe may go even if the first has not answered
(a probe stuck on a stalled connection must not keep refusals going after the upstream is back).
So, while the upstream fails, at most ``half_open_requests`` probes start per recovery interval,
and once it answers again, refusals stop within one interval (``recovery_max`` at the worst) plus
the time a probe takes. For the same reason a failure is old news, and not counted, when a try that
started after it has already succeeded, or when it is a probe and a later probe is still in flight:
tries stuck in a stall report their timeouts up to ``per_try`` after the stall ended, and must not
trip (or re-open) a breaker on an upstream that is answering.

Use, once per try::

    permit = breaker.acquire()        # raises BreakerOpen (503 breaker_open) when refused
    try:
        outcome = await one_try()     # the try's Outcome, exceptions already classified
        permit.record(outcome)
    finally:
        permit.release()              # no-op after record(); frees a probe slot if abandoned

Each try is one sample. An outcome in ``failure_on`` is a failure; any other (a 429 by default)
is a success. A permit's outcome counts only in the state period it was issued in: an answer that
arrives after the breaker moved (a closed-period try ending after the breaker opened, a second
probe ending after the first one closed the breaker) is dropped, because the breaker has already
decided about that period. Not thread-safe: one breaker belongs to one event loop. ``shared:``
(state kept in redis) is not handled here; this is the local state machine.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Final

from .config import BreakerSpec
from .errors import BreakerOpen, IllegalTransition
from .outcomes import Outcome, OutcomeSet
from .window import SlidingCounts

__all__ = [
    "CLOSED",
    "HALF_OPEN",
    "HALF_OPEN_BUSY_RETRY_AFTER",
    "OPEN",
    "RECOVERY_JITTER",
    "STATE_VALUES",
    "TRANSITIONS",
    "CircuitBreaker",
    "IllegalTransition",
    "Permit",
    "admit",
    "next_state",
]

CLOSED: Final = "closed"
OPEN: Final = "open"
HALF_OPEN: Final = "half_open"

# Events, the only causes of a transition.
TRIP: Final = "trip"  # closed: the failure threshold or ratio was reached
RECOVERY_ELAPSED: Final = "recovery_elapsed"  # open: the recovery delay has passed
PROBE_SUCCESS: Final = "probe_success"  # half-open: a probe's outcome was a success
PROBE_FAILURE: Final = "probe_failure"  # half-open: a probe's outcome was a failure
RESET: Final = "reset"  # admin: close
FORCE_OPEN: Final = "force_open"  # admin: open for maintenance, until reset
PEER_OPEN: Final = "peer_open"  # shared: another replica's breaker opened
PEER_CLOSE: Final = "peer_close"  # shared: another replica's probe succeeded (or it was reset)

TRANSITIONS: Final[dict[str, dict[str, str]]] = {
    CLOSED: {TRIP: OPEN, FORCE_OPEN: OPEN, PEER_OPEN: OPEN},
    OPEN: {RECOVERY_ELAPSED: HALF_OPEN, RESET: CLOSED, PEER_CLOSE: CLOSED},
    HALF_OPEN: {
        PROBE_SUCCESS: CLOSED,
        PROBE_FAILURE: OPEN,
        RESET: CLOSED,
        FORCE_OPEN: OPEN,
        PEER_OPEN: OPEN,
        PEER_CLOSE: CLOSED,
    },
}
"""state → event → next state. A pair not listed is an illegal move."""

STATE_VALUES: Final[dict[str, int]] = {CLOSED: 0, HALF_OPEN: 1, OPEN: 2}
"""The value of ``gateway_breaker_state`` for each state (contract §4)."""

HALF_OPEN_BUSY_RETRY_AFTER: Final = 1.0
WAIT_POLL: Final = 0.25  # a waiting request looks again at least this often (a probe may close it sooner)
"""Retry-After (seconds) when open with the recovery passed but another replica holding the probe
lease: that replica's probe decides within about one try."""

RECOVERY_JITTER: Final = 0.2
"""Each open period lasts the recovery delay ± this share, drawn when the breaker opens, so that
replicas (and breakers of one upstream) that opened together do not probe in lockstep."""

HISTORY: Final = 8
"""Transitions kept for the snapshot (``transitions``: the latest first)."""


def next_state(state: str, event: str) -> str:
    """The state ``event`` moves ``state`` to. Raises IllegalTransition when the move is not in the table."""
    try:
        return TRANSITIONS[state][event]
    except KeyError:
        raise IllegalTransition(f"breaker: no transition from {state!r} on {event!r}") from None


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, tz=UTC).isoformat(timespec="milliseconds")


class Permit:
    """Leave for one try, given by ``CircuitBreaker.acquire``; settled once by ``record`` or ``release``."""

    __slots__ = ("_breaker", "_done", "epoch", "probe", "started")

    def __init__(self, breaker: CircuitBreaker, epoch: int, probe: bool, started: float) -> None:
        self._breaker = breaker
        self._done = False
        self.epoch = epoch  # the breaker's state period this permit was issued in
        self.probe = probe  # True for a half-open probe (it holds a probe slot for one recovery interval)
        self.started = started  # monotonic time the try was let through

    @property
    def done(self) -> bool:
        """True once ``record`` or ``release`` was called."""
        return self._done

    def record(self, outcome: Outcome) -> None:
        """Count the try's ``outcome`` (a failure when it is in ``failure_on``), moving the breaker
        if it decides. A second call, or a call after ``release``, does nothing."""
        if self._done:
            return
        self._done = True
        self._breaker._record(self, outcome)

    def release(self) -> None:
        """Settle a try abandoned without an outcome (cancelled, or the caller gave up): nothing is
        counted, a probe slot is freed. Does nothing after ``record``, so it fits a ``finally``."""
        if self._done:
            return
        self._done = True
        self._breaker._release(self)

    def __enter__(self) -> Permit:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class CircuitBreaker:
    """One breaker (per upstream, or per route that sets ``breaker:``): a transition table plus counters.

    ``clock`` is monotonic seconds and drives every decision; ``wall_clock`` (seconds since the
    epoch) only dates ``opened_at``, ``retry_at`` and transitions in the snapshot; ``rng`` (uniform
    in [0, 1)) draws the jitter of each open period. ``on_transition(breaker, from_state, to_state)``
    is called after every transition, the breaker already in its new state (an exception it raises
    reaches the caller of the method that made the move).
    """

    def __init__(
        self,
        name: str,
        upstream: str,
        route: str,
        config: BreakerSpec,
        clock: Callable[[], float] = time.monotonic,
        on_transition: Callable[[CircuitBreaker, str, str], None] | None = None,
        wall_clock: Callable[[], float] = time.time,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.name = name
        self.upstream = upstream
        self.route = route
        self.clock = clock
        self.wall_clock = wall_clock
        self.rng = rng
        self.on_transition = on_transition
        self._state: str = CLOSED
        self.last_event: str | None = None  # the event of the latest transition
        self.probe_gate = True  # shared breakers: False while another replica holds the probe lease
        self._epoch = 0
        self._forced = False
        self._probes: list[Permit] = []  # probe permits of the current half-open period not yet settled
        self._opened_at: float | None = None  # monotonic
        self._opened_wall: float | None = None
        self._consecutive = 0
        self.config = config
        self._failure_on = OutcomeSet(config.failure_on)
        self._recovery = config.recovery
        self._wait = config.recovery  # the current open period's length: the recovery delay, jittered
        self.tripped_by = ""  # what the try that opened the breaker came to ('503', 'timeout'…)
        self._last_success_started = -float("inf")  # start of the latest try that succeeded
        self._history: deque[dict[str, Any]] = deque(maxlen=HISTORY)
        self.refusals: dict[str, int] = {"open": 0, "half_open": 0, "forced": 0}  # refused tries, by why
        self._reset_window()

    # ------------------------------------------------------------------ configuration

    def update_config(self, config: BreakerSpec) -> None:
        """Apply a reloaded ``config`` keeping the state. The counters restart when the mode or the
        window changes; the recovery delay of an open breaker is kept, capped at the new maximum."""
        old, self.config = self.config, config
        self._failure_on = OutcomeSet(config.failure_on)
        if not config.shared:
            self.probe_gate = True  # no longer leased through Redis
        if old.mode != config.mode or old.window != config.window:
            self._consecutive = 0
            self._reset_window()
        self._recovery = config.recovery if self._state == CLOSED else min(self._recovery, config.ceiling)
        self._wait = min(self._wait, self._recovery * (1 + RECOVERY_JITTER))

    # ------------------------------------------------------------------ reading

    @property
    def state(self) -> str:
        """``closed``, ``open`` or ``half_open``; an open breaker whose recovery has passed becomes half-open here."""
        self._maybe_half_open()
        return self._state

    @property
    def forced(self) -> bool:
        """True while held open by ``force_open``."""
        return self._forced

    @property
    def recovery(self) -> float:
        """The current recovery delay in seconds (doubled after each failed probe)."""
        return self._recovery

    @property
    def wait(self) -> float:
        """The length of the current (or last) open period in seconds: ``recovery`` with its jitter."""
        return self._wait

    @property
    def failures(self) -> int:
        """Consecutive failures (``consecutive`` mode), or failures in the window (``rate`` mode)."""
        if self.config.mode == "consecutive":
            return self._consecutive
        return self._window.totals()[1]

    def retry_after(self) -> float | None:
        """Seconds until an open breaker becomes half-open; None when it is not open, or is forced open."""
        self._maybe_half_open()
        if self._state != OPEN or self._forced or self._opened_at is None:
            return None
        return max(0.0, self._opened_at + self._wait - self.clock())

    def next_probe_in(self) -> float | None:
        """Seconds until a probe may go: 0 when half-open with a slot free, the time until a slot
        frees when half-open and busy, the time until half-open when open; None when closed or
        forced open."""
        self._maybe_half_open()
        if self._state == HALF_OPEN:
            return self._probe_slot_in(self.clock())
        return self.retry_after()

    def open_for(self) -> float | None:
        """Seconds since the breaker last opened (None when closed)."""
        if self._state == CLOSED or self._opened_at is None:
            return None
        return max(0.0, self.clock() - self._opened_at)

    def snapshot(self) -> dict[str, Any]:
        """The breaker for ``GET /admin/breakers``: upstream, route, name, state, failures, opened_at,
        retry_at (ISO 8601 UTC, or None), recovery_s, forced; and why and how long: open_for_s,
        next_probe_at (ISO, or None), next_probe_in_s, probes_in_flight, tripped_by, refusals (tries
        refused since start, by state: open, half_open, forced), and the latest transitions
        (``{to, event, at}``, newest first)."""
        state = self.state
        retry_at = None
        if state == OPEN and not self._forced and self._opened_wall is not None:
            retry_at = _iso(self._opened_wall + self._wait)
        probe_in = self.next_probe_in()
        open_for = self.open_for()
        return {
            "upstream": self.upstream,
            "route": self.route,
            "name": self.name,
            "state": state,
            "failures": self.failures,
            "opened_at": _iso(self._opened_wall) if state != CLOSED and self._opened_wall is not None else None,
            "retry_at": retry_at,
            "recovery_s": self._recovery,
            "forced": self._forced,
            "open_for_s": None if open_for is None else round(open_for, 3),
            "next_probe_in_s": None if probe_in is None else round(probe_in, 3),
            "next_probe_at": None if probe_in is None else _iso(self.wall_clock() + probe_in),
            "probes_in_flight": len(self._probes),
            "tripped_by": self.tripped_by if state != CLOSED else "",
            "refusals": dict(self.refusals),
            "transitions": list(reversed(self._history)),
        }

    def __repr__(self) -> str:
        return f"<CircuitBreaker {self.name} {self._state} failures={self.failures}>"

    # ------------------------------------------------------------------ the request path

    def counts_as_failure(self, outcome: Outcome) -> bool:
        """Whether ``outcome`` is in ``failure_on`` (also what ``stale_if_error`` covers)."""
        return self._failure_on.matches(outcome)

    def acquire(self, counted: bool = True) -> Permit:
        """Leave for one try. Raises BreakerOpen when open (``retry_after`` = seconds until half-open;
        None when forced open: no wait is known), or when half-open with all
        ``half_open_requests`` probe slots taken (``retry_after`` = ``HALF_OPEN_BUSY_RETRY_AFTER``).
        ``counted=False``: a refusal is not counted in ``refusals`` (a waiting request that asks again)."""
        self._maybe_half_open()
        state = self._state
        now = self.clock()
        if state == CLOSED:
            return Permit(self, self._epoch, False, now)
        if state == HALF_OPEN:
            free_in = self._probe_slot_in(now)
            if free_in == 0.0:
                permit = Permit(self, self._epoch, True, now)
                self._probes.append(permit)
                return permit
            text = f"is half-open and its probe is in flight ({self._since(now)}; next probe in {free_in:.1f}s)"
            raise self._refused("half_open", text, free_in, counted)
        if self._forced:
            raise self._refused("forced", f"is held open by an operator ({self._since(now)})", None, counted)
        wait = self.retry_after()
        if not wait:  # recovery passed, but another replica holds the probe lease
            raise self._refused(
                "open", f"is open; another replica is probing ({self._since(now)})", HALF_OPEN_BUSY_RETRY_AFTER, counted
            )
        raise self._refused("open", f"is open ({self._since(now)}; next probe in {wait:.1f}s)", wait, counted)

    def _refused(self, why: str, text: str, retry_after: float | None, counted: bool) -> BreakerOpen:
        if counted:
            self.refusals[why] += 1
        err = BreakerOpen(f"circuit breaker {self.name} {text}", upstream=self.upstream, retry_after=retry_after)
        err.state = why
        return err

    def _since(self, now: float) -> str:
        opened = "" if self._opened_at is None else f" {now - self._opened_at:.1f}s ago"
        cause = f" after {self.tripped_by}" if self.tripped_by else ""
        return f"opened{opened}{cause}"

    def _probe_slot_in(self, now: float) -> float:
        """Half-open: 0 when a probe may start now, else seconds until the oldest probe still
        holding a slot has held it for one recovery interval."""
        holding = [p.started for p in self._probes if now - p.started < self._recovery]
        if len(holding) < self.config.half_open_requests:
            return 0.0
        return max(0.0, min(holding) + self._recovery - now)

    def _record(self, permit: Permit, outcome: Outcome) -> None:
        failure = self._failure_on.matches(outcome)
        if permit.epoch != self._epoch:
            return  # issued before the last transition: the breaker already decided about that period
        if not failure:
            self._last_success_started = max(self._last_success_started, permit.started)
        elif permit.started < self._last_success_started:
            if permit in self._probes:
                self._probes.remove(permit)
            return  # a later try has succeeded since this one started: old news
        if self._state == HALF_OPEN:
            if permit in self._probes:
                self._probes.remove(permit)
            if failure and any(p.started > permit.started for p in self._probes):
                return  # a later probe is in flight: it decides (this one may have been stuck in a stall)
            if failure:
                self._recovery = min(self._recovery * 2, self.config.ceiling)
                self.tripped_by = outcome.label if outcome.kind != "response" else str(outcome.status)
                self._open(PROBE_FAILURE)
            else:
                self._close(PROBE_SUCCESS)
            return
        if self._state != CLOSED:
            return  # not reached: every transition starts a new epoch, and an open period issues no permits
        if self.config.mode == "consecutive":
            if not failure:
                self._consecutive = 0
                return
            self._consecutive += 1
            if self._consecutive >= self.config.failure_threshold:
                self._trip(outcome)
            return
        self._window.add(1, 1 if failure else 0)
        if failure:
            total, failed = self._window.totals()
            # ratio >= failure_rate, written without division and tolerant of 0.3 * 10 = 3.0000000000000004
            if total >= self.config.min_requests and failed >= self.config.failure_rate * total - 1e-9:
                self._trip(outcome)

    def _trip(self, outcome: Outcome) -> None:
        self._recovery = self.config.recovery
        self.tripped_by = outcome.label if outcome.kind != "response" else str(outcome.status)
        self._open(TRIP)

    def _release(self, permit: Permit) -> None:
        if permit.probe and permit.epoch == self._epoch and permit in self._probes:
            self._probes.remove(permit)

    # ------------------------------------------------------------------ admin

    def reset(self) -> None:
        """Close the breaker (``POST /admin/breakers/{name}/reset``): counters cleared, recovery back to
        ``config.recovery``, a forced open lifted. On a closed breaker only the counters are cleared."""
        self._maybe_half_open()
        if self._state == CLOSED:
            self._consecutive = 0
            self._reset_window()
            self._recovery = self.config.recovery
            return
        self._close(RESET)

    def force_open(self) -> None:
        """Open the breaker for maintenance (``POST /admin/breakers/{name}/open``). It stays open, with no
        half-open and no probes, until ``reset``; requests get 503 ``breaker_open``. On an open breaker it
        only cancels the coming half-open."""
        self._maybe_half_open()
        if self._state == OPEN:
            self._forced = True
            return
        self._open(FORCE_OPEN, forced=True)

    # ------------------------------------------------------------------ other replicas (shared: true)

    @property
    def current(self) -> str:
        """The state as last moved, without applying a due half-open (``state`` applies it)."""
        return self._state

    @property
    def probes_in_flight(self) -> int:
        return len(self._probes)

    def recovery_due(self, within: float = 0.0) -> bool:
        """Open (not forced) with its recovery delay over, or over within ``within`` seconds."""
        return (
            self._state == OPEN
            and not self._forced
            and self._opened_at is not None
            and self.clock() + within >= self._opened_at + self._wait
        )

    @property
    def opened_wall(self) -> float | None:
        """Wall-clock time the breaker last opened (None when closed)."""
        return self._opened_wall

    def open_from_peer(self, remaining: float, recovery: float) -> None:
        """Another replica opened this breaker: be open for ``remaining`` seconds, with its
        ``recovery`` (so a failed probe here doubles from the same value). A breaker already open
        only waits longer when the peer's wait ends later; a forced breaker is left alone."""
        if self._forced or remaining <= 0:
            return
        self._maybe_half_open()
        ends = None if self._opened_at is None else self._opened_at + self._wait
        if self._state == OPEN and ends is not None and ends >= self.clock() + remaining:
            return
        self._recovery = recovery
        self._wait = max(recovery, remaining)
        opened_ago = max(0.0, self._wait - remaining)
        self._opened_at = self.clock() - opened_ago
        self._opened_wall = self.wall_clock() - opened_ago
        if self._state != OPEN:
            self._move(PEER_OPEN)

    def close_from_peer(self) -> None:
        """Another replica's probe succeeded (or an operator reset it there): close here too.
        A forced breaker is left alone."""
        self._maybe_half_open()
        if self._forced or self._state == CLOSED:
            return
        self._close(PEER_CLOSE)

    # ------------------------------------------------------------------ transitions

    def _move(self, event: str) -> None:
        before = self._state
        self.last_event = event
        self._state = next_state(before, event)
        self._epoch += 1
        self._probes = []
        self._history.append({"to": self._state, "event": event, "at": _iso(self.wall_clock())})
        if self.on_transition is not None:
            self.on_transition(self, before, self._state)

    def _open(self, event: str, forced: bool = False) -> None:
        self._opened_at = self.clock()
        self._opened_wall = self.wall_clock()
        self._forced = forced
        self._wait = self._recovery * (1.0 + RECOVERY_JITTER * (2.0 * self.rng() - 1.0))
        if forced:
            self.tripped_by = "operator"
        self._move(event)

    def _close(self, event: str) -> None:
        self._forced = False
        self._consecutive = 0
        self._reset_window()
        self._recovery = self.config.recovery
        self._opened_at = self._opened_wall = None
        self._move(event)

    def _maybe_half_open(self) -> None:
        if (
            self._state == OPEN
            and not self._forced
            and self.probe_gate
            and self._opened_at is not None
            and self.clock() >= self._opened_at + self._wait
        ):
            self._move(RECOVERY_ELAPSED)

    # ------------------------------------------------------------------ rate mode window

    def _reset_window(self) -> None:
        self._window = SlidingCounts(self.config.window, 2, self.clock)  # (samples, failures)


async def admit(
    breaker: CircuitBreaker, wait: float, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
) -> Permit:
    """``breaker.acquire()``, but a refusal waits up to ``wait`` seconds for the breaker to let it through.

    ``breaker.wait`` (README, "Waiting for the breaker"): while the breaker is open or half-open and
    busy, the request sleeps until the next probe window (looking again every ``WAIT_POLL`` at most, so
    a probe that closes the breaker lets the waiters go within that), then asks again; it takes a probe
    slot when one frees, or goes through once the breaker has closed. Only the last refusal is counted
    and raised (``BreakerOpen``); a breaker forced open by an operator refuses at once. ``wait`` <= 0 is
    ``acquire()``.
    """
    end = breaker.clock() + wait
    while True:
        left = end - breaker.clock()
        if left <= 0 or breaker.forced:
            return breaker.acquire()
        free_in = breaker.next_probe_in()  # None: closed; 0: a probe slot is free
        if not free_in:
            try:
                return breaker.acquire(counted=False)
            except BreakerOpen:  # another replica holds the probe lease: not the last word
                free_in = HALF_OPEN_BUSY_RETRY_AFTER
        await sleep(min(left, free_in, WAIT_POLL))
