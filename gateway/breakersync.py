"""Shared circuit breakers (``breaker: {shared: true}``): every replica's breaker kept in step through Redis.

Owns the loop that runs every ``interval`` (250 ms) while a Redis store is configured:

1. **Publish** this replica's own transitions of shared breakers, under ``b:<name>``: an open (a
   trip or a failed probe) as ``{"state": "open", "until": <wall time of half-open>, "recovery": s}``,
   a close (a successful probe or an admin reset) as ``{"state": "closed", "at": <wall time>}``.
2. **Apply** the peers' records: open here when a peer opened (until the peer's time), close here
   when a peer closed after this breaker opened. So one replica seeing an outage opens the
   breaker everywhere within about half a second, and one successful probe closes it everywhere.
3. **Lease the probe**: the replica whose breaker is about to go half-open takes ``b:<name>:probe``
   (SET NX, 5 s, renewed while its probe is in flight). The others keep ``probe_gate`` False and
   stay open (503, Retry-After 1) until the lease holder's probe decides, so half-open probes stay
   limited to ``half_open_requests`` across all replicas.

Forced opens (``POST /admin/breakers/{name}/open``) stay local to the replica asked. While Redis
is unavailable every gate opens and each breaker works alone, as without ``shared``.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from .breaker import CLOSED, HALF_OPEN, OPEN, PROBE_FAILURE, PROBE_SUCCESS, RESET, TRIP, CircuitBreaker
from .redislink import RedisLink, StoreUnavailable

__all__ = ["BreakerSync"]

_PUBLISHED = frozenset({TRIP, PROBE_FAILURE, PROBE_SUCCESS, RESET})
_RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"


class BreakerSync:
    """Keeps the shared breakers of this process in step with the other replicas' through Redis."""

    def __init__(
        self,
        link: RedisLink,
        source: Callable[[], Iterable[CircuitBreaker]],
        interval: float = 0.25,
        lease: float = 5.0,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.link = link
        self.source = source
        self.interval = interval
        self.lease = lease
        self.replica = uuid.uuid4().hex[:12]
        self._wall = wall_clock
        self._pending: dict[str, dict[str, Any]] = {}
        self._held: set[str] = set()
        self._release = link.client.register_script(_RELEASE)

    def noted(self, breaker: CircuitBreaker, before: str, after: str) -> None:
        """The transition hook: queue this replica's own opens and closes for publishing."""
        if not breaker.config.shared or breaker.last_event not in _PUBLISHED:
            return
        now = self._wall()
        if after == OPEN:
            until = (breaker.opened_wall or now) + breaker.wait
            self._pending[breaker.name] = {"state": OPEN, "until": until, "recovery": breaker.recovery}
        elif after == CLOSED:
            self._pending[breaker.name] = {"state": CLOSED, "at": now}

    async def run(self) -> None:
        while True:
            try:
                await self.sync_once()
            except StoreUnavailable:
                self._alone()
            await asyncio.sleep(self.interval)

    def _alone(self) -> None:
        """Redis is unavailable: every shared breaker works locally."""
        self._held.clear()
        for breaker in self._shared().values():
            breaker.probe_gate = True

    def _shared(self) -> dict[str, CircuitBreaker]:
        return {b.name: b for b in self.source() if b.config.shared}

    def _key(self, name: str, *rest: str) -> str:
        return self.link.key("b", name, *rest)

    async def sync_once(self) -> None:
        """Publish, apply, lease: one round. Raises StoreUnavailable when Redis fails."""
        shared = self._shared()
        if not shared:
            return
        await self._publish()
        names = list(shared)
        records = await self.link.call("breaker", lambda r: r.mget([self._key(n) for n in names]))
        now = self._wall()
        for name, raw in zip(names, records, strict=True):
            if raw is not None:
                self._apply(shared[name], json.loads(raw), now)
        for breaker in shared.values():
            await self._lease(breaker)

    async def _publish(self) -> None:
        for name in list(self._pending):
            record = self._pending.pop(name)
            alive = record["until"] - self._wall() if record["state"] == OPEN else 0.0
            value = json.dumps({**record, "by": self.replica})
            try:
                await self.link.call("breaker", _setter(self._key(name), value, int((max(alive, 0.0) + 60) * 1000)))
            except StoreUnavailable:
                self._pending.setdefault(name, record)  # published when Redis answers, unless superseded
                raise

    def _apply(self, breaker: CircuitBreaker, record: dict[str, Any], now: float) -> None:
        if record.get("by") == self.replica:
            return
        if record.get("state") == OPEN:
            remaining = float(record.get("until", 0)) - now
            if remaining > 0.05:
                breaker.open_from_peer(remaining, float(record.get("recovery", breaker.config.recovery)))
        elif record.get("state") == CLOSED and breaker.current != CLOSED:
            opened = breaker.opened_wall
            if opened is not None and float(record.get("at", 0)) > opened:
                breaker.close_from_peer()

    async def _lease(self, breaker: CircuitBreaker) -> None:
        name, key = breaker.name, self._key(breaker.name, "probe")
        ms = int(self.lease * 1000)
        if breaker.recovery_due(within=self.interval):
            if name not in self._held:
                taken = await self.link.call("breaker", lambda r: r.set(key, self.replica, nx=True, px=ms))
                if taken:
                    self._held.add(name)
            breaker.probe_gate = name in self._held
            return
        if breaker.current == HALF_OPEN and name in self._held:
            if breaker.probes_in_flight:
                await self.link.call("breaker", lambda r: r.pexpire(key, ms))
            return
        if name in self._held:
            await self.link.script("breaker", self._release, [key], [self.replica])
            self._held.discard(name)
        breaker.probe_gate = False


def _setter(key: str, value: str, ttl_ms: int) -> Callable[[Any], Any]:
    return lambda r: r.set(key, value, px=ttl_ms)
