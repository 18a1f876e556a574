"""Fifteen minutes of history per route, for the status page (admin ``GET /``).

Owns three bounded records, fed by the request path and the breakers, read by ``statuspage``:

- per (upstream, route), a ``Series``: a ring of ``BUCKETS`` buckets of ``BUCKET_SECONDS`` (90 of
  10 s: 15 minutes), each holding the answers given, the failed ones, cache lookups, cache hits,
  STALE answers, the 429s the gateway gave itself, and a latency histogram with the bins of
  ``stats``. A series is one flat ``array`` of 32-bit counters allocated when its route first
  answers, reset bucket by bucket as the ring comes round: its size never depends on traffic
  (``Series.nbytes``; ``bench/status_history.py`` measures it). Series are keyed by configured
  names only (a request that matched no upstream counts under ``("-", "-")``), and a series whose
  route left the configuration is dropped once it has been idle for the whole span (``forget``);
- the latest ``MAX_ERRORS`` failed answers: time, code, status, who answered, upstream, route,
  method and request id. Never a path, a query, a header value or a body;
- per breaker, its latest ``MAX_TRANSITIONS`` state changes with their time and cause.

A failed answer is one the gateway made with an error code, or any 5xx (the same rule as
``/health``). Buckets follow the injected monotonic ``clock``; the ``wall`` clock only stamps
times shown to people. Not thread-safe: one history belongs to one event loop.
"""

from __future__ import annotations

import math
import time
from array import array
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from .metrics import method_label
from .stats import LATENCY_BOUNDS, latency_bin, percentile_ms

__all__ = ["BUCKETS", "BUCKET_SECONDS", "MINUTE_BUCKETS", "Answered", "History", "Series", "Totals", "View", "failed"]

BUCKET_SECONDS = 10.0
BUCKETS = 90  # 15 minutes
MINUTE_BUCKETS = 6  # "the last minute": the current bucket and the five before it (50 to 60 s)
MAX_ERRORS = 50
MAX_TRANSITIONS = 10

# Counters of one bucket, then the latency histogram's bins.
REQUESTS, ERRORS, LOOKUPS, HITS, STALE, THROTTLED = range(6)
_HIST = 6
WIDTH = _HIST + len(LATENCY_BOUNDS) + 1
_LOOKUP_LABELS = frozenset({"HIT", "MISS", "STALE", "REVALIDATED"})  # BYPASS never looked
_THROTTLE_CODES = frozenset({"rate_limited", "quota_exhausted"})


class Answered(Protocol):
    """What the history reads of a finished exchange (``proxy.exchange.Exchange`` has these)."""

    @property
    def request_id(self) -> str: ...
    @property
    def method(self) -> str: ...
    @property
    def upstream(self) -> str: ...
    @property
    def route(self) -> str: ...
    @property
    def status(self) -> int: ...
    @property
    def error(self) -> str | None: ...
    @property
    def cache(self) -> str | None: ...
    @property
    def source(self) -> str: ...


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def failed(status: int, error: str | None) -> bool:
    """Whether an answer counts as failed: an error code of the gateway's, or a 5xx."""
    return error is not None or status >= 500


@dataclass(frozen=True, slots=True)
class Totals:
    """Counters summed over some buckets of one or more series."""

    counts: tuple[int, ...]

    @classmethod
    def of(cls, rows: Iterable[Iterable[int]]) -> Totals:
        """The sum of ``rows`` (each ``WIDTH`` counters)."""
        summed = tuple(map(sum, zip(*rows, strict=True)))
        return cls(summed) if summed else EMPTY

    def __add__(self, other: Totals) -> Totals:
        return Totals(tuple(a + b for a, b in zip(self.counts, other.counts, strict=True)))

    def as_dict(self) -> dict[str, Any]:
        """requests, errors, success_rate (None without requests), p50_ms, p95_ms, cache_lookups,
        cache_hits, hit_ratio (hits over lookups; None without lookups), stale, throttled."""
        c = self.counts
        requests, lookups = c[REQUESTS], c[LOOKUPS]
        hist = c[_HIST:]
        return {
            "requests": requests,
            "errors": c[ERRORS],
            "success_rate": round(1 - c[ERRORS] / requests, 4) if requests else None,
            "p50_ms": percentile_ms(hist, requests, 0.50),
            "p95_ms": percentile_ms(hist, requests, 0.95),
            "cache_lookups": lookups,
            "cache_hits": c[HITS],
            "hit_ratio": round(c[HITS] / lookups, 4) if lookups else None,
            "stale": c[STALE],
            "throttled": c[THROTTLED],
        }


EMPTY = Totals((0,) * WIDTH)


class Series:
    """The ring of one (upstream, route): ``buckets`` rows of ``WIDTH`` 32-bit counters."""

    __slots__ = ("_counts", "_stamps", "buckets", "last")

    def __init__(self, buckets: int = BUCKETS) -> None:
        self.buckets = buckets
        self._stamps = array("q", [-1]) * buckets  # the bucket number each row holds
        self._counts = array("I", bytes(4 * WIDTH * buckets))
        self.last = -1  # the latest bucket that counted an answer

    @property
    def nbytes(self) -> int:
        """Bytes held by the counters and stamps (the Python objects around them aside)."""
        return self._counts.itemsize * len(self._counts) + self._stamps.itemsize * len(self._stamps)

    def _row(self, bucket: int) -> int:
        index = bucket % self.buckets
        base = index * WIDTH
        if self._stamps[index] != bucket:
            self._stamps[index] = bucket
            self._counts[base : base + WIDTH] = _ZERO_ROW
        return base

    def add(self, bucket: int, seconds: float, is_error: bool, cache: str | None, throttled: bool) -> None:
        """Count one answer of ``seconds`` in ``bucket``."""
        base = self._row(bucket)
        c = self._counts
        c[base + REQUESTS] += 1
        c[base + _HIST + latency_bin(seconds)] += 1
        if is_error:
            c[base + ERRORS] += 1
        if cache in _LOOKUP_LABELS:
            c[base + LOOKUPS] += 1
            if cache == "HIT":
                c[base + HITS] += 1
            elif cache == "STALE":
                c[base + STALE] += 1
        if throttled:
            c[base + THROTTLED] += 1
        self.last = bucket

    def _stale(self, bucket: int) -> list[int]:
        """Indexes of rows holding no bucket of the span ending at ``bucket`` (never used, or older)."""
        oldest = bucket - self.buckets
        return [i for i, stamp in enumerate(self._stamps) if not oldest < stamp <= bucket]

    def totals(self, bucket: int, span: int, stale: list[int] | None = None) -> Totals:
        """The counters summed over buckets ``bucket - span + 1`` .. ``bucket`` (``stale``: the
        ``_stale(bucket)`` of the caller, when it has it)."""
        c, n = self._counts, self.buckets
        if span < n:
            rows = [
                c[(b % n) * WIDTH : (b % n + 1) * WIDTH]
                for b in range(bucket - span + 1, bucket + 1)
                if self._stamps[b % n] == b
            ]
            return Totals.of(rows)
        # the whole ring: one strided slice per counter (C speed), less the rows outside the span
        sums = [sum(c[k::WIDTH]) for k in range(WIDTH)]
        for i in self._stale(bucket) if stale is None else stale:
            for k, value in enumerate(c[i * WIDTH : (i + 1) * WIDTH]):
                sums[k] -= value
        return Totals(tuple(sums))

    def column(self, bucket: int, field: int, stale: list[int] | None = None) -> list[int]:
        """One counter for each bucket of the span ending at ``bucket``, oldest first, 0 where none counted."""
        values = self._counts[field::WIDTH].tolist()
        for i in self._stale(bucket) if stale is None else stale:
            values[i] = 0
        first = (bucket + 1) % self.buckets  # the ring index of the oldest bucket of the span
        return values[first:] + values[:first]


_ZERO_ROW = array("I", bytes(4 * WIDTH))


@dataclass(frozen=True, slots=True)
class View:
    """One route's (or the sum of several routes') history as the status page shows it."""

    minute: Totals
    span: Totals
    requests: list[int]  # per bucket, oldest first
    errors: list[int]

    def __add__(self, other: View) -> View:
        return View(
            self.minute + other.minute,
            self.span + other.span,
            [a + b for a, b in zip(self.requests, other.requests, strict=True)],
            [a + b for a, b in zip(self.errors, other.errors, strict=True)],
        )


class History:
    """The series of every route, the latest errors and the breakers' latest transitions."""

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        bucket_seconds: float = BUCKET_SECONDS,
        buckets: int = BUCKETS,
        max_errors: int = MAX_ERRORS,
        max_transitions: int = MAX_TRANSITIONS,
    ) -> None:
        self.clock = clock
        self.wall = wall
        self.bucket_seconds = bucket_seconds
        self.buckets = buckets
        self.max_transitions = max_transitions
        self.series: dict[tuple[str, str], Series] = {}
        self.errors: deque[dict[str, Any]] = deque(maxlen=max_errors)
        self.transitions: dict[str, deque[dict[str, Any]]] = {}
        self.since = wall()  # when counting began (the page says so when less than the span ago)
        self.moves = 0  # breaker transitions noted: a document built before the latest one is out of date

    # ------------------------------------------------------------------ writing

    def bucket(self) -> int:
        """The number of the current bucket."""
        return math.floor(self.clock() / self.bucket_seconds)

    def record(self, answer: Answered, seconds: float) -> None:
        """Count one finished exchange that took ``seconds`` (until its answer's headers went out)."""
        key = (answer.upstream, answer.route)
        series = self.series.get(key)
        if series is None:
            series = self.series[key] = Series(self.buckets)
        is_error = failed(answer.status, answer.error)
        series.add(self.bucket(), seconds, is_error, answer.cache, answer.error in _THROTTLE_CODES)
        if is_error:
            self.errors.append(
                {
                    "at": _iso(self.wall()),
                    "code": answer.error,
                    "status": answer.status,
                    "source": answer.source,
                    "upstream": answer.upstream,
                    "route": answer.route,
                    "method": method_label(answer.method),
                    "request_id": answer.request_id,
                }
            )

    def transition(self, breaker: str, before: str, after: str, cause: str | None) -> None:
        """Note that breaker ``breaker`` moved from ``before`` to ``after`` because of ``cause``."""
        kept = self.transitions.get(breaker)
        if kept is None:
            kept = self.transitions[breaker] = deque(maxlen=self.max_transitions)
        kept.append({"at": _iso(self.wall()), "from": before, "to": after, "cause": cause})
        self.moves += 1

    def forget(self, keep: set[tuple[str, str]], breakers: set[str]) -> None:
        """Drop series not in ``keep`` that have been idle for the whole span, and the transitions of
        breakers not in ``breakers`` (routes and breakers a reload removed)."""
        idle_before = self.bucket() - self.buckets
        for key in [k for k, s in self.series.items() if k not in keep and s.last <= idle_before]:
            del self.series[key]
        for name in [n for n in self.transitions if n not in breakers]:
            del self.transitions[name]

    # ------------------------------------------------------------------ reading

    def view(self, key: tuple[str, str]) -> View:
        """What the status page shows of one (upstream, route): its last minute, its last 15
        minutes, and its requests and errors per bucket over the span, oldest first."""
        series = self.series.get(key)
        if series is None:
            zeros = [0] * self.buckets
            return View(EMPTY, EMPTY, zeros, list(zeros))
        now = self.bucket()
        stale = series._stale(now)
        return View(
            series.totals(now, MINUTE_BUCKETS),
            series.totals(now, self.buckets, stale),
            series.column(now, REQUESTS, stale),
            series.column(now, ERRORS, stale),
        )

    def span_started(self) -> str:
        """The wall time at which the oldest bucket of the span starts."""
        start = (self.bucket() - self.buckets + 1) * self.bucket_seconds
        return _iso(self.wall() - (self.clock() - start))

    def latest_errors(self) -> list[dict[str, Any]]:
        """The latest failed answers, newest first."""
        return list(reversed(self.errors))

    def transitions_of(self, breaker: str) -> list[dict[str, Any]]:
        """The breaker's latest transitions, newest first."""
        return list(reversed(self.transitions.get(breaker, ())))

    def nbytes(self) -> int:
        """Bytes held by every series' counters (see ``Series.nbytes``)."""
        return sum(s.nbytes for s in self.series.values())
