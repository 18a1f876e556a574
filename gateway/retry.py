"""Retry policy: whether a try that failed is tried again, and after how long.

Owns the contract's rule (a)–(e): the outcome is in ``on``; tries remain; the budget allows;
the wait fits before ``total``; and resending is safe (the method is listed, or nothing reached
the upstream, or the upstream said it did not process the request). Waits are full-jitter
exponential backoff, or the upstream's Retry-After when honoured and under ``max``, or the route's
``waits`` for an outcome whose answer names no wait (Meta's pair rate, ``code:131056``). The budget
is a ``SlidingCounts`` window of one-second slots. The loop that runs tries lives in ``gateway.proxy.tries``;
this module only decides, with an injected clock and random source, so it is tested alone.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from .config import RetrySpec
from .outcomes import CONNECT_FAILURE, Outcome, OutcomeSet
from .window import SlidingCounts

__all__ = ["Decision", "RetryBudget", "RetryPolicy"]

_PGRST_NOT_REACHED = frozenset({"PGRST000", "PGRST001", "PGRST002", "PGRST003"})


@dataclass(frozen=True, slots=True)
class Decision:
    """``retry`` after ``delay`` seconds; or not, with ``skipped`` naming why a wanted retry was not made."""

    retry: bool
    delay: float = 0.0
    skipped: str | None = None  # budget | deadline | unsafe | retry_after


STOP = Decision(False)


class RetryBudget:
    """Retries allowed over a sliding ``window``: ``min_per_second`` × window + ``percent`` of requests."""

    def __init__(
        self,
        percent: float,
        min_per_second: float,
        window: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.percent = percent
        self.floor = min_per_second * window
        self._counts = SlidingCounts(window, 2, clock)  # (requests, retries)

    def record_request(self) -> None:
        """Count one client request (its first try)."""
        self._counts.add(1)

    def try_spend(self) -> bool:
        """Take one retry from the budget; False when the window has none left."""
        requests, retries = self._counts.totals()
        if retries + 1 > self.floor + self.percent * requests:
            return False
        self._counts.add(0, 1)
        return True


class RetryPolicy:
    """The decision part of retrying, built from a route's finished ``retry`` block."""

    def __init__(
        self,
        config: RetrySpec,
        kind: str,
        budget: RetryBudget,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.config = config
        self.kind = kind
        self.budget = budget
        self.on = OutcomeSet(config.on)
        self.methods = frozenset(config.methods)
        self.waits = [(OutcomeSet([token]), wait) for token, wait in config.waits.items()]
        self.rand = rand

    def is_safe(self, method: str, outcome: Outcome) -> bool:
        """Rule (e): resending cannot make the upstream act twice."""
        if method in self.methods or outcome.kind == CONNECT_FAILURE:
            return True
        return self.not_processed(outcome)

    def not_processed(self, outcome: Outcome) -> bool:
        """Whether the upstream answered that it did not process the request: a 429, a listed
        ``code:N`` of a graph upstream, a 503/504 PGRST000-003 of a supabase one. A reset or a
        timeout after the request was sent proves nothing."""
        if outcome.kind != "response":
            return False
        if outcome.status == 429:
            return True
        if self.kind == "graph" and self.on.matches_code(outcome):
            return True
        return self.kind == "supabase" and outcome.status in (503, 504) and outcome.code in _PGRST_NOT_REACHED

    def wait_for(self, outcome: Outcome) -> float | None:
        """The configured ``waits`` entry for ``outcome`` (the first that matches), if any."""
        return next((wait for tokens, wait in self.waits if tokens.matches(outcome)), None)

    def backoff(self, retry_number: int) -> float:
        """Full jitter: uniform in [0, min(max, base × 2^(n-1))] for the n-th retry."""
        b = self.config.backoff
        return float(self.rand() * min(b.max, b.base * (2 ** (retry_number - 1))))

    def decide(
        self,
        method: str,
        outcome: Outcome,
        tries: int,
        retry_after: float | None,
        remaining: float,
        replayable: bool,
    ) -> Decision:
        """Decide after try number ``tries`` came to ``outcome``, with ``remaining`` seconds of total."""
        if not self.on.matches(outcome) or tries >= self.config.attempts:
            return STOP
        if not replayable or not self.is_safe(method, outcome):
            return Decision(False, skipped="unsafe")
        ra = self.config.retry_after
        if ra.honor and retry_after is not None:
            if retry_after > ra.max:
                return Decision(False, skipped="retry_after")
            delay = retry_after
        elif (wait := self.wait_for(outcome)) is not None:
            delay = wait
        else:
            delay = self.backoff(tries)
        if delay >= remaining:
            return Decision(False, skipped="deadline")
        if not self.budget.try_spend():
            return Decision(False, skipped="budget")
        return Decision(True, delay)
