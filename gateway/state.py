"""What the request path and the admin port read from the running process.

Owns ``State`` (the current runtime, metrics, response cache, drain flag, in-flight count and the
status page's history) and ``Control``, the small protocol the admin port and the status page
depend on instead of the whole ``Gateway``: its ``state``, readiness, health and reload. A
request reads ``State.runtime`` once, when it starts, and keeps that snapshot to its end.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from .cache import ResponseCache
from .history import History
from .metrics import Metrics
from .runtime import Runtime

__all__ = ["Control", "State"]


@dataclass(slots=True)
class State:
    """What the request path reads from the process: the current runtime, metrics, cache, drain flag."""

    runtime: Runtime
    metrics: Metrics
    cache: ResponseCache
    draining: bool = False
    inflight: int = 0
    history: History = field(default_factory=History)  # the status page's 15 minutes


class Control(Protocol):
    """What the admin port asks of the process (``gateway.server.Gateway`` is one)."""

    state: State

    def readiness(self) -> tuple[bool, str]:
        """(ready, why): listening, a valid config loaded, not draining."""
        ...

    def health(self) -> dict[str, Any]:
        """``status`` ok/degraded and each upstream's last minute."""
        ...

    async def reload(self, source: str) -> tuple[bool, dict[str, Any]]:
        """Load the config file again; (applied, what changed or the error)."""
        ...
