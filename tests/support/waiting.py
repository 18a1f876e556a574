"""Waiting for something the test cannot await directly: a server's state, a scrape, a page."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any


async def eventually(
    check: Callable[[], Any | Awaitable[Any]],
    timeout: float = 5.0,
    what: str | Callable[[], str] = "",
    interval: float = 0.02,
) -> Any:
    """Call ``check`` (plain or async) every ``interval`` seconds until it returns something true,
    and return that; after ``timeout`` seconds fail with ``what`` (text, or a function that
    writes it then, e.g. with a log read at the time of failure)."""
    end = time.monotonic() + timeout
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > end:
            said = what() if callable(what) else what
            raise AssertionError(f"not within {timeout} s: {said or check}")
        await asyncio.sleep(interval)
