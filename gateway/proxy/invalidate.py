"""The invalidate stage: a 2xx write soft-purges (or deletes) what its upstream's cache holds.

Owns which entries a successful write makes stale: those of its own path and of the route's
``invalidates:`` patterns (filled with the write's path parameters), marked ``invalidated``
(served only as STALE) or deleted with ``invalidation: hard``. Only upstreams with a cached route
are asked (it saves a store call per WhatsApp send).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..cache import ResponseCache
    from .exchange import Call

__all__ = ["after_write", "invalidate"]

_READS = frozenset({"GET", "HEAD"})


async def after_write(cache: ResponseCache, call: Call, status: int | None) -> None:
    """Invalidate when ``call`` is a write its upstream answered 2xx (``status``; None: no answer)."""
    if call.upstream.caches and call.method not in _READS and status is not None and 200 <= status < 300:
        await invalidate(cache, call)


async def invalidate(cache: ResponseCache, call: Call) -> None:
    """Soft-purge (or delete, ``invalidation: hard``) the upstream's entries at the call's own path
    and at ``invalidates:``."""
    patterns = [p.fill(call.params) for p in call.route.policy.invalidates]
    own = call.path

    def doomed(_upstream: str, path: str) -> bool:
        return path == own or any(p.match(path) is not None for p in patterns)

    await cache.invalidate(call.upstream.name, doomed, hard=call.route.policy.invalidation == "hard")
