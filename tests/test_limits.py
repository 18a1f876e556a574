"""The bulkhead: concurrency slots, a bounded FIFO queue, queue_timeout, cancellation."""

from __future__ import annotations

import asyncio
import time

import pytest

from gateway.errors import Overloaded
from gateway.limits import Bulkhead


async def settle() -> None:
    """Let every ready task run until it blocks."""
    for _ in range(5):
        await asyncio.sleep(0)


async def test_fifty_tasks_five_slots_ten_queued():
    bulkhead = Bulkhead(max_concurrent=5, max_queue=10, queue_timeout=5.0)
    gate = asyncio.Event()
    served: list[int] = []
    peak = 0

    async def request(i: int) -> None:
        nonlocal peak
        async with bulkhead.slot("graph"):
            peak = max(peak, bulkhead.inflight)
            await gate.wait()
            served.append(i)

    started = time.monotonic()
    tasks = [asyncio.create_task(request(i)) for i in range(50)]
    await settle()
    rejected = [t for t in tasks if t.done()]
    assert len(rejected) == 35
    assert time.monotonic() - started < 0.5  # refused at once, not after queue_timeout
    for task in rejected:
        error = task.exception()
        assert isinstance(error, Overloaded)
        assert error.upstream == "graph" and error.status == 503 and error.code == "overloaded"
    assert bulkhead.inflight == 5 and bulkhead.queued == 10
    gate.set()
    await asyncio.gather(*(t for t in tasks if t not in rejected))
    assert sorted(served) == list(range(15))
    assert served[5:] == list(range(5, 15))  # the queue is served in arrival order
    assert peak == 5
    assert bulkhead.inflight == 0 and bulkhead.queued == 0


async def test_uncontended_acquire_does_not_suspend():
    bulkhead = Bulkhead(2, 0, 1.0)
    coro = bulkhead.acquire("graph")
    with pytest.raises(StopIteration):
        coro.send(None)  # finished without yielding to the loop
    assert bulkhead.inflight == 1
    bulkhead.release()
    assert bulkhead.inflight == 0


async def test_queue_timeout_expires():
    bulkhead = Bulkhead(1, 5, queue_timeout=0.05)
    await bulkhead.acquire("gemini")
    started = time.monotonic()
    with pytest.raises(Overloaded) as info:
        await bulkhead.acquire("gemini")
    assert 0.04 <= time.monotonic() - started < 1.0
    assert "queue_timeout" in info.value.message
    assert bulkhead.queued == 0 and bulkhead.inflight == 1
    bulkhead.release()
    assert bulkhead.inflight == 0


async def test_zero_queue_refuses_at_once():
    bulkhead = Bulkhead(1, 0, 10.0)
    async with bulkhead.slot("graph"):
        with pytest.raises(Overloaded):
            await bulkhead.acquire("graph")
    assert bulkhead.inflight == 0


async def test_cancelled_waiter_frees_its_place():
    bulkhead = Bulkhead(1, 1, 10.0)
    await bulkhead.acquire("graph")
    waiter = asyncio.create_task(bulkhead.acquire("graph"))
    await settle()
    assert bulkhead.queued == 1
    with pytest.raises(Overloaded):
        await bulkhead.acquire("graph")  # queue full
    waiter.cancel()
    await settle()
    assert waiter.cancelled()
    assert bulkhead.queued == 0
    second = asyncio.create_task(bulkhead.acquire("graph"))  # its place is free again
    await settle()
    assert bulkhead.queued == 1
    bulkhead.release()
    await second
    assert bulkhead.inflight == 1
    bulkhead.release()
    assert bulkhead.inflight == 0


async def test_waiter_cancelled_just_after_being_handed_a_slot_passes_it_on():
    bulkhead = Bulkhead(1, 2, 10.0)
    await bulkhead.acquire("graph")
    first = asyncio.create_task(bulkhead.acquire("graph"))
    second = asyncio.create_task(bulkhead.acquire("graph"))
    await settle()
    bulkhead.release()  # hands the slot to `first`…
    first.cancel()  # …which is cancelled before it runs again
    await settle()
    assert first.cancelled()
    assert second.done() and second.exception() is None  # the slot went on to `second`
    assert bulkhead.inflight == 1 and bulkhead.queued == 0
    bulkhead.release()
    assert bulkhead.inflight == 0


async def test_no_slot_leaked_when_bodies_fail_or_are_cancelled():
    bulkhead = Bulkhead(3, 20, 5.0)

    async def failing() -> None:
        async with bulkhead.slot("supabase"):
            await asyncio.sleep(0)
            raise ValueError("upstream exploded")

    async def slow() -> None:
        async with bulkhead.slot("supabase"):
            await asyncio.sleep(10)

    tasks = [asyncio.create_task(failing()) for _ in range(10)] + [asyncio.create_task(slow()) for _ in range(10)]
    await settle()
    for task in tasks[10:]:
        task.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, (ValueError, asyncio.CancelledError)) for r in results)
    assert bulkhead.inflight == 0 and bulkhead.queued == 0
    async with bulkhead.slot("supabase"):
        assert bulkhead.inflight == 1


async def test_newcomer_does_not_overtake_the_queue():
    bulkhead = Bulkhead(1, 5, 10.0)
    order: list[str] = []
    await bulkhead.acquire("graph")

    async def request(name: str) -> None:
        async with bulkhead.slot("graph"):
            order.append(name)

    early = asyncio.create_task(request("early"))
    await settle()
    bulkhead.release()  # handed to `early`, which has not run yet
    late = asyncio.create_task(request("late"))
    await asyncio.gather(early, late)
    assert order == ["early", "late"]
    assert bulkhead.inflight == 0


async def test_release_without_acquire_raises():
    with pytest.raises(RuntimeError):
        Bulkhead(1, 1, 1.0).release()


def test_invalid_sizes():
    with pytest.raises(ValueError):
        Bulkhead(0, 1, 1.0)
    with pytest.raises(ValueError):
        Bulkhead(1, -1, 1.0)
