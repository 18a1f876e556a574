"""The one fake clock of the tests: time that moves only when the test moves it.

The gateway's policies take their clock, wall clock and sleep as arguments (breaker, rate limits,
quotas, cache, history, idempotency, fault delays, the simulator); a test passes a ``FakeClock``
(or its ``wall`` / ``sleep``) and moves time by hand, so nothing waits for real time.
"""

from __future__ import annotations


class FakeClock:
    """A monotonic clock a test drives.

    - ``clock()`` (the object is the clock function) is the time now, ``clock.now``; a test moves it
      with ``advance(seconds)`` (or sets ``now``).
    - ``await clock.sleep(seconds)`` records the wait in ``slept``, then moves the clock by it, as a
      real sleep would; with ``sleep_advances=False`` it only records (to see what a policy asked
      for while time stands still). It returns at once either way.
    - ``clock.wall()`` is a wall clock that moves with it: ``wall_start`` when ``now`` is the start
      value (by default the same number as the monotonic clock).
    """

    def __init__(self, now: float = 1000.0, *, wall_start: float | None = None, sleep_advances: bool = True) -> None:
        self.start = now
        self.now = now
        self.wall_start = now if wall_start is None else wall_start
        self.sleep_advances = sleep_advances
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> float:
        return self.wall_start + (self.now - self.start)

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError(f"a monotonic clock never goes back ({seconds} s)")
        self.now += seconds

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        if self.sleep_advances:
            self.advance(max(0.0, seconds))

    def __repr__(self) -> str:
        return f"FakeClock(now={self.now}, slept={self.slept})"
