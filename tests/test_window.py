"""SlidingCounts: counts over the last N seconds, with a fake clock."""

from gateway.window import SlidingCounts

from .support import FakeClock


def test_counts_slide_out_after_the_window():
    clock = FakeClock()
    counts = SlidingCounts(3, 2, clock)
    counts.add(1, 1)
    clock.now += 1
    counts.add(2)
    assert counts.totals() == [3, 1]
    clock.now += 2  # the first second is now 3 s old: out of a 3 s window
    assert counts.totals() == [2, 0]
    clock.now += 1
    assert counts.totals() == [0, 0]


def test_a_slot_reused_a_window_later_starts_from_zero():
    clock = FakeClock()
    counts = SlidingCounts(2, 1, clock)
    counts.add(5)
    clock.now += 2  # same slot index, a new second
    counts.add(1)
    assert counts.totals() == [1]


def test_clear_and_fractional_windows():
    clock = FakeClock()
    counts = SlidingCounts(0.5, 1, clock)  # rounds up to one slot
    counts.add(4)
    assert counts.totals() == [4]
    counts.clear()
    assert counts.totals() == [0]
