"""Memos of the request path: per-target work a backend repeats, remembered, bounded.

Owns the one policy the request path's memos share. A backend asks for the same few paths again
and again (a cache hit always does), and some work depends on the target alone: the path checks
(``hygiene``), the route (``routing.Router``), the cache key of a route without ``vary``
(``cache``). Each keeps the results for its last ``ENTRIES`` distinct keys (``functools.lru_cache``:
C, least recently used first), and only for targets of at most ``LONGEST`` characters, which the
caller checks before asking; longer ones are worked out afresh each time. A function that raises
remembers nothing. At most ~0.5 MiB per memo, however many distinct targets clients send.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

__all__ = ["ENTRIES", "LONGEST", "remembered"]

ENTRIES = 1024
LONGEST = 256

F = TypeVar("F", bound=Callable[..., object])


def remembered(fn: F) -> F:
    """``fn`` with its last ``ENTRIES`` results remembered (its arguments must be hashable)."""
    return functools.lru_cache(maxsize=ENTRIES)(fn)  # type: ignore[return-value]
