"""Fault injection: configured delays and aborts applied before forwarding, for rehearsing outages.

Owns contract §2 "fault" (off unless written): with probability ``delay.percent`` a request is held
``delay.duration`` seconds; then, with probability ``abort.percent``, it is answered by the gateway
with ``abort.status`` and code ``fault_injected`` instead of being forwarded. As in Envoy, the delay
comes first and the two draws are independent, so one request may be both delayed and aborted.
The random source and the sleep are injected, so tests neither wait nor depend on chance.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable

from .config import FaultSpec
from .errors import FaultInjected, UpstreamTimeout

__all__ = ["FaultInjector"]


class FaultInjector:
    """The ``fault:`` block of one upstream or route. ``rand()`` returns a float in [0, 1)."""

    def __init__(
        self,
        config: FaultSpec,
        rand: Callable[[], float] = random.random,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.config = config
        self._rand = rand
        self._sleep = sleep

    def should_delay(self) -> float:
        """Draw for the delay: the seconds to hold the request, 0.0 for none."""
        delay = self.config.delay
        if delay is not None and delay.duration > 0 and self._rand() < delay.percent:
            return delay.duration
        return 0.0

    def should_abort(self) -> int | None:
        """Draw for the abort: the status to answer with, or None to forward."""
        abort = self.config.abort
        if abort is not None and self._rand() < abort.percent:
            return abort.status
        return None

    async def apply(self, upstream: str, budget: float | None = None) -> None:
        """Apply the configured faults to one request: maybe sleep ``delay.duration``, then maybe raise
        FaultInjected (status ``abort.status``). A delay longer than ``budget`` (the seconds left
        before the request's ``total``) sleeps ``budget`` and raises UpstreamTimeout, as a slow
        upstream would answer; no try is made, so no breaker sample either."""
        delay = self.should_delay()
        if delay > 0:
            if budget is not None and delay > budget:
                await self._sleep(max(0.0, budget))
                raise UpstreamTimeout(
                    f"upstream {upstream!r}: the total timeout ran out during an injected delay", upstream=upstream
                )
            await self._sleep(delay)
        status = self.should_abort()
        if status is not None:
            raise FaultInjected("fault injected by configuration", upstream=upstream, status=status)
