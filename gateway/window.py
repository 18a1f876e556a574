"""Sliding windows of counters in one-second slots, read against an injected clock.

Owns the one mechanism the breaker's rate mode (samples, failures) and the retry budget
(requests, retries) both need: counts over the last ``window`` seconds, in O(window) memory
whatever the traffic, with slots reset lazily when their second comes round again.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

__all__ = ["SlidingCounts"]


class SlidingCounts:
    """``width`` counters summed over the last ``window`` seconds (the current second included)."""

    def __init__(self, window: float, width: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.width = width
        self.slots = max(1, math.ceil(window))
        self.clear()

    def clear(self) -> None:
        """Forget every count."""
        self._stamp = [-1] * self.slots
        self._counts = [[0] * self.width for _ in range(self.slots)]

    def add(self, *values: int) -> None:
        """Add ``values`` (one per counter, missing ones 0) to the current second."""
        second = math.floor(self.clock())
        index = second % self.slots
        if self._stamp[index] != second:
            self._stamp[index] = second
            self._counts[index] = [0] * self.width
        row = self._counts[index]
        for k, value in enumerate(values):
            row[k] += value

    def totals(self) -> list[int]:
        """Each counter summed over the window."""
        oldest = math.floor(self.clock()) - self.slots
        out = [0] * self.width
        for stamp, row in zip(self._stamp, self._counts, strict=True):
            if stamp > oldest:
                for k, value in enumerate(row):
                    out[k] += value
        return out
