"""Cache stores: where cached answers live, behind one small async interface.

Owns ``Entry`` (one stored answer and its metadata), the ``Store`` interface and ``MemoryStore``,
the embedded default: a ``cachetools.LRUCache`` sized in bytes (``max_bytes``), also bounded by
``max_entries``, least recently used evicted first. A store knows nothing of HTTP rules (those are
in ``cache``); it keeps entries under opaque keys (SHA-256 digests, so no header value is ever
held in clear), the ``Vary`` header names an upstream answered for a primary key, and an index
by (upstream, path) for invalidation and purge. Entries are kept until their ``ttl`` plus
``keep`` (the longest stale window) has passed: ``ResponseCache`` ignores them on read and
``prune`` (once a minute) frees them; LRU eviction frees them first under pressure anyway.
"""

from __future__ import annotations

import json
import struct
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cachetools import LRUCache

__all__ = ["Entry", "MemoryStore", "Store", "StoreStats"]

# Bookkeeping bytes counted per entry besides its body and headers (keys, index, object headers).
ENTRY_OVERHEAD = 256


@dataclass(frozen=True, slots=True)
class Entry:
    """One stored answer. ``stored_at`` is wall-clock seconds (shared stores span processes),
    already moved back by the upstream's own ``Age``."""

    upstream: str
    path: str  # the upstream path (prefix removed, no query): for invalidation and purge
    status: int
    reason: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    stored_at: float
    ttl: float
    keep: float  # seconds after expiry during which the entry may still be served stale
    vary: tuple[str, ...] = ()  # header names of the upstream's Vary, lower case
    size: int = field(init=False, compare=False)  # the bytes counted against max_bytes

    def __post_init__(self) -> None:
        size = len(self.body) + sum(len(k) + len(v) for k, v in self.headers) + len(self.path) + ENTRY_OVERHEAD
        object.__setattr__(self, "size", size)

    def age(self, now: float) -> float:
        return max(0.0, now - self.stored_at)

    def removable(self, now: float) -> bool:
        """Past ttl + keep: no use left, not even stale."""
        return now >= self.stored_at + self.ttl + self.keep

    # A compact wire form for stores outside the process: 4-byte length, JSON metadata, body.
    def to_bytes(self) -> bytes:
        meta = json.dumps(
            [
                self.upstream,
                self.path,
                self.status,
                self.reason,
                self.headers,
                self.stored_at,
                self.ttl,
                self.keep,
                self.vary,
            ],
            separators=(",", ":"),
        ).encode()
        return struct.pack(">I", len(meta)) + meta + self.body

    @classmethod
    def from_bytes(cls, data: bytes) -> Entry:
        """Raise ValueError when ``data`` is not an entry."""
        try:
            (n,) = struct.unpack_from(">I", data)
            up, path, status, reason, headers, stored_at, ttl, keep, vary = json.loads(data[4 : 4 + n])
            return cls(
                up,
                path,
                int(status),
                reason,
                tuple((str(k), str(v)) for k, v in headers),
                data[4 + n :],
                float(stored_at),
                float(ttl),
                float(keep),
                tuple(vary),
            )
        except (struct.error, ValueError, TypeError) as exc:
            raise ValueError(f"not a cache entry: {exc}") from exc


@dataclass(slots=True)
class StoreStats:
    """What a store holds: totals and per upstream (entries, bytes)."""

    entries: int = 0
    bytes: int = 0
    upstreams: dict[str, dict[str, int]] = field(default_factory=dict)


PathFilter = Callable[[str, str], bool]  # (upstream, path) -> delete?
KeyFor = Callable[[tuple[str, ...]], str]  # the upstream's Vary names -> the full key


class Store(ABC):
    """Where entries live. Every method may raise ``OSError``/``ConnectionError`` for a store
    out of the process; ``cache.ResponseCache`` turns those into misses and counts them."""

    kind: str = "?"

    @abstractmethod
    async def get(self, primary: str, key_for: KeyFor) -> Entry | None:
        """The entry for ``primary`` and the request's values of the upstream's Vary headers:
        the store reads the Vary names kept for ``primary``, ``key_for`` makes the full key."""

    @abstractmethod
    async def put(self, primary: str, key: str, entry: Entry) -> None:
        """Keep ``entry`` under ``key`` and its Vary names under ``primary``."""

    @abstractmethod
    async def delete_where(self, upstream: str | None, match: PathFilter) -> int:
        """Delete the entries (of ``upstream``, or of all) whose path ``match`` accepts; return how many."""

    @abstractmethod
    def stats(self) -> StoreStats:
        """Entries and bytes held (for a remote store, as last seen)."""

    def prune(self, now: float) -> int:
        """Drop entries past ttl + keep; return how many. Remote stores expire on their own."""
        return 0

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


class _Entries(LRUCache[str, Entry]):
    """An LRU sized in bytes that also keeps the (upstream → path → keys) index and per-upstream totals."""

    def __init__(self, max_bytes: int, max_entries: int) -> None:
        super().__init__(maxsize=max_bytes, getsizeof=lambda e: e.size)
        self.max_entries = max_entries
        self.index: dict[str, dict[str, set[str]]] = {}
        self.per_upstream: dict[str, list[int]] = {}  # upstream -> [entries, bytes]
        self._where: dict[str, Entry] = {}  # key -> entry, read without touching recency

    def __setitem__(self, key: str, value: Entry, cache_setitem: Any = LRUCache.__setitem__) -> None:
        if key in self:
            del self[key]
        cache_setitem(self, key, value)
        self._where[key] = value
        self.index.setdefault(value.upstream, {}).setdefault(value.path, set()).add(key)
        totals = self.per_upstream.setdefault(value.upstream, [0, 0])
        totals[0] += 1
        totals[1] += value.size
        while len(self) > self.max_entries:
            self.popitem()

    def __delitem__(self, key: str, cache_delitem: Any = LRUCache.__delitem__) -> None:
        entry = self._where.pop(key)
        cache_delitem(self, key)
        paths = self.index.get(entry.upstream, {})
        keys = paths.get(entry.path)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del paths[entry.path]
        totals = self.per_upstream[entry.upstream]
        totals[0] -= 1
        totals[1] -= entry.size
        if totals[0] == 0:
            del self.per_upstream[entry.upstream]
            self.index.pop(entry.upstream, None)

    def peek(self, key: str) -> Entry:
        """The entry without touching its recency (KeyError when absent)."""
        return self._where[key]


class MemoryStore(Store):
    """The in-process store: LRU in bytes and entries. Not shared between replicas."""

    kind = "memory"

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries = _Entries(max_bytes, max_entries)
        self._vary: LRUCache[str, tuple[str, ...]] = LRUCache(maxsize=max_entries)

    async def get(self, primary: str, key_for: KeyFor) -> Entry | None:
        vary = self._vary.get(primary)
        if vary is None:
            return None
        return self._entries.get(key_for(vary))

    async def put(self, primary: str, key: str, entry: Entry) -> None:
        if entry.size > self.max_bytes:
            return
        self._vary[primary] = entry.vary
        self._entries[key] = entry

    async def delete_where(self, upstream: str | None, match: PathFilter) -> int:
        index = self._entries.index
        names = [upstream] if upstream is not None else list(index)
        doomed = [
            key
            for name in names
            for path, keys in list(index.get(name, {}).items())
            if match(name, path)
            for key in keys
        ]
        for key in doomed:
            del self._entries[key]
        return len(doomed)

    def has_upstream(self, upstream: str) -> bool:
        return upstream in self._entries.per_upstream

    def stats(self) -> StoreStats:
        per = {name: {"entries": t[0], "bytes": t[1]} for name, t in self._entries.per_upstream.items()}
        return StoreStats(len(self._entries), int(self._entries.currsize), per)

    def prune(self, now: float) -> int:
        doomed = [key for key, entry in self.raw() if entry.removable(now)]
        for key in doomed:
            del self._entries[key]
        return len(doomed)

    def raw(self) -> list[tuple[str, Entry]]:
        """Every (key, entry) held, without touching recency (for tests and inspection)."""
        return [(k, self._entries.peek(k)) for k in list(self._entries.keys())]

    def vary_records(self) -> list[tuple[str, tuple[str, ...]]]:
        """Every (primary key, Vary names) held (for tests and inspection)."""
        return list(self._vary.items())
