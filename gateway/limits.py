"""Concurrency limits: the bulkhead in front of one upstream.

Owns contract §2 "limits" (the concurrency part; ``max_request_body`` is checked by the proxy):
at most ``max_concurrent`` requests inside, at most ``max_queue`` more waiting, in arrival order,
each for at most ``queue_timeout``; a request arriving to a full queue, or still waiting when its
``queue_timeout`` passes, gets 503 ``overloaded``. A leaving request hands its slot straight to
the oldest waiter, so a newcomer never overtakes the queue. Uncontended, taking a slot is a
counter increment: no future, no task, no timer. Cancellation never leaks a slot: a waiter
cancelled after being handed one passes it on. Not thread-safe: one bulkhead belongs to one event
loop.

Use::

    async with bulkhead.slot(upstream_name):
        ...  # forward the request
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from types import TracebackType

from .errors import Overloaded

__all__ = ["Bulkhead", "Slot"]


class Bulkhead:
    """``max_concurrent`` slots and a FIFO queue of ``max_queue`` waiters, each waiting ``queue_timeout`` seconds."""

    def __init__(self, max_concurrent: int, max_queue: int, queue_timeout: float) -> None:
        if max_concurrent < 1 or max_queue < 0 or queue_timeout < 0:
            raise ValueError(
                "a bulkhead needs max_concurrent >= 1, max_queue >= 0 and queue_timeout >= 0, "
                f"got {max_concurrent}, {max_queue}, {queue_timeout}"
            )
        self.max_concurrent = max_concurrent
        self.max_queue = max_queue
        self.queue_timeout = queue_timeout
        self._inflight = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def inflight(self) -> int:
        """Requests holding a slot."""
        return self._inflight

    @property
    def queued(self) -> int:
        """Requests waiting for a slot."""
        return sum(1 for waiter in self._waiters if not waiter.done())

    def __repr__(self) -> str:
        return f"<Bulkhead inflight={self._inflight}/{self.max_concurrent} queued={self.queued}/{self.max_queue}>"

    def slot(self, upstream: str) -> Slot:
        """An async context manager holding one slot for its body. Raises Overloaded on entry as ``acquire``."""
        return Slot(self, upstream)

    def try_acquire(self) -> bool:
        """Take a slot if one is free and nobody queues for it, without waiting; True if taken
        (then it needs one ``release``). ``acquire`` is the waiting form."""
        if self._inflight < self.max_concurrent and not self._waiters:
            self._inflight += 1
            return True
        return False

    async def acquire(self, upstream: str) -> None:
        """Take a slot, waiting in the queue when all are taken. Raises Overloaded (503) at once when
        the queue is full, or when ``queue_timeout`` passes first. Every successful call needs one
        ``release``."""
        if self._inflight < self.max_concurrent and not self._waiters:
            self._inflight += 1
            return
        if len(self._waiters) >= self.max_queue:
            raise Overloaded(
                f"{self._inflight} requests in flight and {len(self._waiters)} queued: the queue is full",
                upstream=upstream,
            )
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(self.queue_timeout):
                await waiter
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled():
                self.release()  # handed a slot just as the wait ended: pass it on
            else:
                with contextlib.suppress(ValueError):  # already skipped by a release
                    self._waiters.remove(waiter)
            if isinstance(exc, TimeoutError):
                raise Overloaded(
                    f"no concurrency slot within queue_timeout ({self.queue_timeout:g}s)",
                    upstream=upstream,
                ) from None
            raise
        # the releasing request handed its slot over: _inflight already counts this one

    def release(self) -> None:
        """Give back a slot: to the oldest waiter, or to the pool. Raises RuntimeError when none is held."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        if self._inflight <= 0:
            raise RuntimeError("Bulkhead.release() called more times than acquire()")
        self._inflight -= 1


class Slot:
    """``async with`` form of ``Bulkhead.acquire`` / ``release``."""

    __slots__ = ("_bulkhead", "_upstream")

    def __init__(self, bulkhead: Bulkhead, upstream: str) -> None:
        self._bulkhead = bulkhead
        self._upstream = upstream

    async def __aenter__(self) -> None:
        await self._bulkhead.acquire(self._upstream)

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._bulkhead.release()
