"""Last-minute statistics per upstream, for /health.

Owns a bounded window of 60 one-second slots, each holding a request count, an error count and
a fixed log-spaced latency histogram, so that p50/p95 over the last minute cost the same memory
at 1 or 10,000 requests per second. Prometheus histograms answer the same question over any
range; this is the quick look an operator gets without a Prometheus.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["LATENCY_BOUNDS", "MinuteWindow", "latency_bin", "percentile_ms"]

# Latency bucket upper bounds in seconds: 1 ms .. ~65 s, doubling every 2 steps (~41% apart).
_BOUNDS = tuple(0.001 * (2 ** (i / 2)) for i in range(33))
LATENCY_BOUNDS = _BOUNDS
"""Upper bounds (seconds) of the latency histogram bins; one more bin holds what is above the last."""


def latency_bin(seconds: float) -> int:
    """The histogram bin of a latency of ``seconds`` (0 .. len(LATENCY_BOUNDS))."""
    return bisect.bisect_left(_BOUNDS, seconds)


def percentile_ms(hist: Sequence[int], count: int, q: float) -> float | None:
    """The ``q`` quantile of a latency histogram, in ms: the upper bound of the bin it falls in
    (twice the last bound for the overflow bin). None when ``count`` is 0."""
    if count == 0:
        return None
    rank, seen = q * count, 0
    for index, n in enumerate(hist):
        seen += n
        if seen >= rank and n:
            bound = _BOUNDS[index] if index < len(_BOUNDS) else _BOUNDS[-1] * 2
            return round(bound * 1000, 1)
    return None


class MinuteWindow:
    """Counts, errors and latencies of the last 60 seconds."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.wall = wall
        self._stamp = [-1] * 60
        self._count = [0] * 60
        self._errors = [0] * 60
        self._hist = [[0] * (len(_BOUNDS) + 1) for _ in range(60)]
        self.last_error: str | None = None
        self.last_error_at: float | None = None

    def _slot(self) -> int:
        second = int(self.clock())
        index = second % 60
        if self._stamp[index] != second:
            self._stamp[index] = second
            self._count[index] = 0
            self._errors[index] = 0
            self._hist[index] = [0] * (len(_BOUNDS) + 1)
        return index

    def record(self, seconds: float, error: str | None) -> None:
        """Count one request of ``seconds``; ``error`` names its failure (None: it succeeded)."""
        index = self._slot()
        self._count[index] += 1
        self._hist[index][latency_bin(seconds)] += 1
        if error is not None:
            self._errors[index] += 1
            self.last_error = error
            self.last_error_at = self.wall()

    def snapshot(self) -> dict[str, Any]:
        """Requests, errors, p50/p95 (ms, upper bucket bound) and the last error of the last minute."""
        oldest = int(self.clock()) - 60
        count = errors = 0
        merged = [0] * (len(_BOUNDS) + 1)
        for i in range(60):
            if self._stamp[i] > oldest:
                count += self._count[i]
                errors += self._errors[i]
                merged = [a + b for a, b in zip(merged, self._hist[i], strict=True)]
        return {
            "requests": count,
            "errors": errors,
            "p50_ms": percentile_ms(merged, count, 0.50),
            "p95_ms": percentile_ms(merged, count, 0.95),
            "last_error": self.last_error,
            "last_error_at": (
                time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.last_error_at)) if self.last_error_at else None
            ),
        }
