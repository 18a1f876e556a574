"""The response cache: HTTP rules, keys, request collapsing, invalidation and counters.

Owns contract §2 ``cache`` and ``invalidates``. The proxy asks, in order:

1. ``asked(headers)``: what the client's ``Cache-Control`` wants (``no-store`` bypasses the cache,
   ``no-cache`` or ``max-age=0`` fetches and stores again).
2. ``primary_key(...)``: method (GET: a HEAD reads the GET entry), upstream, raw path, raw query and
   the configured ``vary`` headers' values, all hashed with SHA-256; then ``ResponseCache.lookup``,
   which adds the values of the headers the upstream's own ``Vary`` named (``full_key``).
3. On a miss, one request per key goes upstream (``Flights``: ``with flights.lead(key) as flight:``
   … ``flight.publish(answer)``; the others ``wait`` for what it got; keys whose last answer could
   not be shared skip the queue for a while); ``verdict(...)`` decides whether
   its answer may be stored: a status in ``statuses``; no ``Vary: *``, ``no-store``, ``Set-Cookie``;
   ``private`` only when ``authorization`` is in ``vary``; the upstream's ``s-maxage``/``max-age``
   lowers ``ttl``, its ``no-cache`` makes it 0 (kept only for the stale windows).
4. ``invalidate``: a 2xx write soft-purges entries of its upstream by path (marks them
   ``invalidated``: never fresh again, but still a STALE answer when the upstream fails), or
   deletes them with ``invalidation: hard``. An invalidation also bumps the upstream's epoch so a
   fill that started before it does not store an answer read before it.

Header values reach keys only as digests; the store never sees a request header in clear.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Coroutine, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from cachetools import TTLCache
from multidict import CIMultiDict

from . import memo
from .cachestore import Entry, PathFilter, Store
from .config import CacheSpec
from .errors import GatewayError
from .logs import event

__all__ = [
    "STALE",
    "Asked",
    "Flight",
    "FlightResult",
    "Flights",
    "ResponseCache",
    "Shared",
    "Verdict",
    "asked",
    "cache_control",
    "full_key",
    "make_entry",
    "primary_key",
    "verdict",
]

Headers = Mapping[str, str]  # a CIMultiDict or its proxy; ``getall`` is used when present

PASS_SECONDS = 30.0

# Answer headers never replayed from an entry: the gateway sets them per answer.
_NOT_STORED = frozenset({"content-length", "age", "set-cookie", "x-request-id", "x-gateway-cache"})


def _values(headers: Headers, name: str) -> list[str]:
    getall = getattr(headers, "getall", None)
    if getall is not None:
        return list(getall(name, ()))
    value = headers.get(name)
    return [] if value is None else [value]


def _digest_of(headers: Headers, name: str) -> bytes:
    """SHA-256 of a header's values (joined), or a marker for an absent header."""
    values = _values(headers, name)
    if not values:
        return b"-"
    return hashlib.sha256(", ".join(values).encode("utf-8", "surrogatepass")).digest()


def primary_key(upstream: str, path: str, query: str | None, vary: tuple[str, ...], headers: Headers) -> str:
    """The key of a GET (or HEAD) before the upstream's own Vary is known. Hex SHA-256."""
    if not vary and len(path) + len(query or "") <= memo.LONGEST:
        return _target_key(upstream, path, query)
    return _key(upstream, path, query, vary, headers)


def _key(upstream: str, path: str, query: str | None, vary: tuple[str, ...], headers: Headers) -> str:
    # One buffer hashed at once (the same bytes as fed piece by piece before: keys kept in a shared
    # store stay valid across versions).
    target = f"{path}\n-" if query is None else f"{path}\n?{query}"
    raw = b"GET\n" + upstream.encode() + b"\n" + target.encode("utf-8", "surrogatepass")
    if vary:
        raw += b"".join(b"\n" + name.encode() + b"=" + _digest_of(headers, name) for name in vary)
    return hashlib.sha256(raw).hexdigest()


@memo.remembered
def _target_key(upstream: str, path: str, query: str | None) -> str:
    """The key of a route without ``vary``: upstream and target alone (a hit computes it on every
    request, so it is remembered: gateway.memo)."""
    return _key(upstream, path, query, (), {})


def full_key(primary: str, vary: tuple[str, ...], headers: Headers) -> str:
    """The entry's key: ``primary`` plus the values of the headers the upstream's Vary named."""
    if not vary:
        return primary
    h = hashlib.sha256(primary.encode())
    for name in vary:
        h.update(b"\n" + name.encode() + b"=" + _digest_of(headers, name))
    return h.hexdigest()


def cache_control(headers: Headers) -> dict[str, str | None]:
    """The ``Cache-Control`` directives, lower-cased names, unquoted arguments."""
    out: dict[str, str | None] = {}
    for value in _values(headers, "cache-control"):
        for part in value.split(","):
            name, eq, arg = part.strip().partition("=")
            if name:
                out[name.strip().lower()] = arg.strip().strip('"') if eq else None
    return out


@dataclass(frozen=True, slots=True)
class Asked:
    """What the client's request says about the cache."""

    no_store: bool = False  # bypass: neither read nor write
    no_cache: bool = False  # fetch from the upstream, then store


_NOTHING_ASKED = Asked()


def asked(headers: Headers) -> Asked:
    if "cache-control" not in headers and "pragma" not in headers:
        return _NOTHING_ASKED
    cc = cache_control(headers)
    no_cache = "no-cache" in cc or cc.get("max-age") == "0"
    if not cc and "no-cache" in ",".join(_values(headers, "pragma")).lower():
        no_cache = True
    return Asked(no_store="no-store" in cc, no_cache=no_cache)


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether an answer may be stored, for how long, and under which Vary names."""

    store: bool
    ttl: float = 0.0
    vary: tuple[str, ...] = ()
    why: str = ""


def _seconds(value: str | None) -> float | None:
    if value is None or not value.isdigit():
        return None
    return float(value)


def verdict(status: int, headers: Headers, policy: CacheSpec) -> Verdict:
    """Apply the contract's storage rules to an upstream answer's status and headers."""
    if status not in policy.statuses:
        return Verdict(False, why=f"status {status} is not cacheable")
    names: list[str] = []
    for value in _values(headers, "vary"):
        for part in value.split(","):
            name = part.strip().lower()
            if name == "*":
                return Verdict(False, why="Vary: *")
            if name and name not in names:
                names.append(name)
    if _values(headers, "set-cookie"):
        return Verdict(False, why="Set-Cookie")
    cc = cache_control(headers)
    if "no-store" in cc:
        return Verdict(False, why="Cache-Control: no-store")
    if "private" in cc and "authorization" not in policy.vary:
        return Verdict(False, why="Cache-Control: private without authorization in vary")
    if "text/event-stream" in headers.get("content-type", ""):
        return Verdict(False, why="an event stream")
    ttl = policy.ttl
    for directive in ("s-maxage", "max-age"):
        seconds = _seconds(cc.get(directive))
        if seconds is not None:
            ttl = min(ttl, seconds)
            break
    if "no-cache" in cc:
        ttl = 0.0
    if ttl <= 0 and keep_for(policy) <= 0:
        return Verdict(False, why="no freshness (max-age=0 or no-cache) and no stale window")
    if headers.get("content-encoding") and "accept-encoding" not in names:
        names.append("accept-encoding")  # a compressed body is only for clients that asked for it
    return Verdict(True, ttl, tuple(sorted(names)))


def keep_for(policy: CacheSpec) -> float:
    """How long an entry stays after it expired: the longest stale window."""
    return max(policy.stale_if_error, policy.stale_while_revalidate)


def make_entry(
    upstream: str,
    path: str,
    status: int,
    reason: str,
    headers: Headers,
    body: bytes,
    now: float,
    ruling: Verdict,
    policy: CacheSpec,
) -> Entry:
    """An entry for an answer ``verdict`` accepted; its age starts at the upstream's ``Age``."""
    age = _seconds(headers.get("age")) or 0.0
    kept = tuple((k, v) for k, v in headers.items() if k.lower() not in _NOT_STORED)
    return Entry(upstream, path, status, reason, kept, body, now - age, ruling.ttl, keep_for(policy), ruling.vary)


@dataclass(frozen=True, slots=True)
class Shared:
    """A fetched answer, read whole, that the requests waiting on the same key may reuse."""

    status: int
    reason: str
    headers: CIMultiDict[str]  # as relayed, without the gateway's own headers
    body: bytes
    vary: tuple[str, ...]  # the upstream's Vary names
    key: str  # full_key as the leader computed it: a waiter reuses only when its own matches
    attempts: int


class _Stale:
    """Marker: the leader served a stale entry; waiters with one do the same."""


STALE = _Stale()
FlightResult = Shared | GatewayError | _Stale | None  # None: nothing to share, fetch yourself


class Flight:
    """One fetch of a key; what it ``publish``es is what the requests waiting on the key get."""

    __slots__ = ("leading", "result")

    def __init__(self, leading: bool) -> None:
        self.leading = leading  # False: nobody waits on this fetch (another leads, or the key passes)
        self.result: FlightResult = None

    def publish(self, result: FlightResult) -> None:
        """What the waiters may reuse: an answer read whole, STALE (serve your stale entry), an error."""
        self.result = result


class Flights:
    """Request collapsing: one fetch per key at a time, the others wait for what it got.

    Keys whose last fetch published nothing (an answer that could be neither stored nor shared: a
    2xx with no-store, a stream) ``pass`` for PASS_SECONDS: their misses go upstream at once instead
    of queueing behind one another (Varnish's hit-for-pass); storing an answer for the key again
    ends that. Also the background refreshes (stale_while_revalidate) running, one per key."""

    def __init__(self) -> None:
        self._waiting: dict[str, asyncio.Future[FlightResult]] = {}
        self._passes: TTLCache[str, bool] = TTLCache(maxsize=10_000, ttl=PASS_SECONDS)
        self._refreshing: set[str] = set()

    def __len__(self) -> int:
        """Fetches in flight that others may wait on."""
        return len(self._waiting)

    def pending(self, key: str) -> asyncio.Future[FlightResult] | None:
        """The fetch of ``key`` in flight, if one leads."""
        return self._waiting.get(key)

    @contextlib.contextmanager
    def lead(self, key: str, collapse: bool = True) -> Iterator[Flight]:
        """Fetch ``key``, leading the requests that ask for it meanwhile (unless ``collapse`` is
        False, another fetch leads, or the key passes: then nobody waits on this one). On exit the
        waiters get what was published, or the GatewayError that ended the block; a fetch that
        published nothing makes the key pass."""
        if not collapse or key in self._waiting or key in self._passes:
            yield Flight(leading=False)
            return
        future: asyncio.Future[FlightResult] = asyncio.get_running_loop().create_future()
        self._waiting[key] = future
        flight = Flight(leading=True)
        try:
            yield flight
        except GatewayError as err:
            flight.publish(err)
            raise
        finally:
            del self._waiting[key]
            future.set_result(flight.result)
            if flight.result is None:  # nothing the next misses could have waited for
                self._passes[key] = True

    def stored(self, key: str) -> None:
        """An answer for ``key`` was stored: its misses queue behind one fetch again."""
        self._passes.pop(key, None)

    def start_refresh(self, key: str) -> bool:
        """Claim the background refresh of ``key``; False when one runs or a fetch leads."""
        if key in self._refreshing or key in self._waiting:
            return False
        self._refreshing.add(key)
        return True

    def end_refresh(self, key: str) -> None:
        self._refreshing.discard(key)

    def keys(self) -> tuple[list[str], list[str], list[str]]:
        """The keys held: in flight, passing, refreshing (for audits; keys are digests)."""
        return list(self._waiting), list(self._passes), list(self._refreshing)


class ResponseCache:
    """The process's cache: a store, the fetches in flight per key, counters per upstream."""

    def __init__(
        self,
        store: Store,
        max_entry_bytes: int,
        clock: Callable[[], float] = time.time,
        on_store_error: Callable[[str, str, BaseException], None] | None = None,
    ) -> None:
        self.store = store
        self.max_entry_bytes = max_entry_bytes
        self.clock = clock
        self.flights = Flights()
        self.counts: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self._epochs: defaultdict[str, int] = defaultdict(int)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._on_store_error = on_store_error

    # ------------------------------------------------------------------ store access (never raises)

    def _failed(self, op: str, exc: BaseException) -> None:
        self.counts["-"]["store_errors"] += 1
        if self._on_store_error is not None:
            self._on_store_error(self.store.kind, op, exc)
        event("cache store error; answering without the cache", logging.WARNING, op=op, error=type(exc).__name__)

    async def lookup(self, primary: str, headers: Headers) -> Entry | None:
        """The entry for this request, fresh or not; None on a miss or a store failure."""
        try:
            entry = await self.store.get(primary, lambda names: full_key(primary, names, headers))
        except (OSError, ConnectionError, TimeoutError, ValueError) as exc:
            self._failed("get", exc)
            return None
        if entry is not None and entry.removable(self.clock()):
            return None  # past even the stale windows; pruned later
        return entry

    def epoch(self, upstream: str) -> int:
        """Taken before a fill; ``put`` refuses the fill when an invalidation happened since."""
        return self._epochs[upstream]

    async def put(self, primary: str, key: str, entry: Entry, epoch: int) -> bool:
        if self._epochs[entry.upstream] != epoch:
            return False
        if entry.size > self.max_entry_bytes + 64 * 1024:  # the body was checked; headers are bounded
            return False
        try:
            await self.store.put(primary, key, entry)
        except (OSError, ConnectionError, TimeoutError) as exc:
            self._failed("put", exc)
            return False
        self.flights.stored(primary)
        self.counts[entry.upstream]["stored"] += 1
        return True

    async def invalidate(self, upstream: str, match: PathFilter, hard: bool = False) -> int:
        """Mark (soft) or delete (``hard``) ``upstream``'s entries whose path ``match`` accepts;
        fills in flight will not store. Returns how many entries were marked or deleted."""
        self._epochs[upstream] += 1
        op = "delete" if hard else "mark"
        try:
            if hard:
                done = await self.store.delete_where(upstream, match)
            else:
                done = await self.store.mark_where(upstream, match)
        except (OSError, ConnectionError, TimeoutError) as exc:
            self._failed(op, exc)
            return 0
        self.counts[upstream]["invalidated"] += done
        return done

    async def purge(self, upstream: str | None, match: PathFilter) -> int:
        """Admin purge: like ``invalidate`` for one upstream or all. Store errors propagate."""
        if upstream is None:
            for name in list(self._epochs):
                self._epochs[name] += 1
        else:
            self._epochs[upstream] += 1
        deleted = await self.store.delete_where(upstream, match)
        return deleted

    # ------------------------------------------------------------------ bookkeeping

    def count(self, upstream: str, result: str) -> None:
        self.counts[upstream][result] += 1

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run a background refresh; kept referenced until done, cancelled at close."""
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def prune(self) -> int:
        return self.store.prune(self.clock())

    async def refresh_stats(self) -> None:
        """Recount a remote store's entries and bytes (a no-op for memory); errors are counted."""
        try:
            await self.store.refresh_stats()
        except (OSError, ConnectionError, TimeoutError) as exc:
            self._failed("stats", exc)

    def snapshot(self) -> dict[str, Any]:
        """For GET /admin/cache: what the store holds, and what the cache did, per upstream."""
        self.prune()
        stats = self.store.stats()
        names = sorted((set(self.counts) | set(stats.upstreams)) - {"-"})
        upstreams = {}
        for name in names:
            held = stats.upstreams.get(name, {"entries": 0, "bytes": 0})
            c = self.counts.get(name, Counter())
            upstreams[name] = {
                **held,
                "hits": c["hit"],
                "misses": c["miss"] + c["revalidated"],
                "stale_served": c["stale"],
                "collapsed": c["collapsed"],
                "bypassed": c["bypass"],
                "refreshes": c["refresh"],
                "stored": c["stored"],
                "invalidated": c["invalidated"],
            }
        return {
            "store": self.store.kind,
            "entries": stats.entries,
            "bytes": stats.bytes,
            "max_entry_bytes": self.max_entry_bytes,
            "store_errors": self.counts["-"]["store_errors"],
            "in_flight": len(self.flights),
            "upstreams": upstreams,
        }

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await self.store.close()
