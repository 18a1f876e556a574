"""Cache stores: where cached answers live, behind one small async interface.

Owns ``Entry`` (one stored answer and its metadata), the ``Store`` interface, ``RedisStore`` (shared
by replicas; ``FallbackStore`` answers from memory while Redis is down) and ``MemoryStore``, the
embedded default: a ``cachetools.LRUCache`` sized in bytes (``max_bytes``), also bounded by
``max_entries``, least recently used evicted first. A store knows nothing of HTTP rules (those are
in ``cache``); it keeps entries under opaque keys (SHA-256 digests, so no header value is ever
held in clear), the ``Vary`` header names an upstream answered for a primary key, and an index
by (upstream, path) for invalidation and purge. Entries are kept until their ``ttl`` plus
``keep`` (the longest stale window) has passed: ``ResponseCache`` ignores them on read and
``prune`` (every 15 s) frees them; LRU eviction frees them first under pressure anyway.

Invalidation comes in two strengths (contract §2 ``invalidates``): ``delete_where`` removes entries
(a hard purge, and the admin purge); ``mark_where`` keeps them but marks them ``invalidated`` (a
soft purge, as Fastly's and Varnish's): ``cache`` then never answers such an entry as fresh, but may
still serve it STALE when the upstream fails. A marked entry that is stored again loses its mark.
"""

from __future__ import annotations

import json
import os
import struct
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

from cachetools import LRUCache

from .redislink import RedisLink, StoreUnavailable

__all__ = ["Entry", "FallbackStore", "MemoryStore", "RedisStore", "Store", "StoreStats"]

# Bytes counted per entry besides its body, header text and path: the Entry object, its key (in
# the LRU, its order and the index), the index sets; and per header, the two str objects and the
# tuple around them. Calibrated with bench/cache_memory.py (RSS growth per entry), so that
# max_bytes is close to the memory the cache really takes.
ENTRY_OVERHEAD = 900
HEADER_OVERHEAD = 160


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
    invalidated: bool = False  # soft-purged by a write: never fresh, still servable STALE on error
    size: int = field(init=False, compare=False)  # the bytes counted against max_bytes

    def __post_init__(self) -> None:
        text = sum(len(k) + len(v) + HEADER_OVERHEAD for k, v in self.headers)
        size = len(self.body) + text + len(self.path) + ENTRY_OVERHEAD
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
    async def mark_where(self, upstream: str, match: PathFilter) -> int:
        """Mark ``upstream``'s entries whose path ``match`` accepts as invalidated (soft purge);
        return how many were newly marked."""

    @abstractmethod
    def stats(self) -> StoreStats:
        """Entries and bytes held (for a remote store, as last seen)."""

    def prune(self, now: float) -> int:
        """Drop entries past ttl + keep; return how many. Remote stores expire on their own."""
        return 0

    async def refresh_stats(self) -> StoreStats:
        """``stats()``, first brought up to date when the store is remote."""
        return self.stats()

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

    def _matching(self, upstream: str | None, match: PathFilter) -> list[str]:
        index = self._entries.index
        names = [upstream] if upstream is not None else list(index)
        return [
            key
            for name in names
            for path, keys in list(index.get(name, {}).items())
            if match(name, path)
            for key in keys
        ]

    async def delete_where(self, upstream: str | None, match: PathFilter) -> int:
        doomed = self._matching(upstream, match)
        for key in doomed:
            del self._entries[key]
        return len(doomed)

    async def mark_where(self, upstream: str, match: PathFilter) -> int:
        marked = 0
        for key in self._matching(upstream, match):
            entry = self._entries.peek(key)
            if not entry.invalidated:
                self._entries[key] = replace(entry, invalidated=True)
                marked += 1
        return marked

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


# --------------------------------------------------------------------------- redis

# put: the entry and its Vary names with the entry's lifetime, and the (upstream, path) index sets,
# whose lifetime only grows; a soft-purge mark on the key is cleared; the change is announced to the
# near caches (``gateway.nearcache``). KEYS: entry, vary, path set, upstream set, mark. ARGV: entry
# bytes, vary JSON, lifetime ms, entry key, path, announcement channel, announcement.
_PUT = """
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
redis.call('DEL', KEYS[5])
local ms = tonumber(ARGV[3])
redis.call('SADD', KEYS[3], ARGV[4])
if redis.call('PTTL', KEYS[3]) < ms then redis.call('PEXPIRE', KEYS[3], ms) end
redis.call('SADD', KEYS[4], ARGV[5])
if redis.call('PTTL', KEYS[4]) < ms then redis.call('PEXPIRE', KEYS[4], ms) end
redis.call('PUBLISH', ARGV[6], ARGV[7])
return 1
"""

# mark: a soft purge of one path. Every entry key in the path set gets a mark key living as long as
# the entry. KEYS: the path set. ARGV: entry key prefix, mark key prefix, the time of the mark.
# Returns how many entries were newly marked.
_MARK = """
local n = 0
for _, key in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local ms = redis.call('PTTL', ARGV[1] .. key)
  if ms > 0 and redis.call('SET', ARGV[2] .. key, ARGV[3], 'PX', ms, 'NX') then n = n + 1 end
end
return n
"""


class RedisStore(Store):
    """Entries in Redis, shared by every replica. Keys, under ``prefix``:

    - ``e:<key>``: the entry (``Entry.to_bytes``), expiring at ttl + keep;
    - ``v:<primary>``: the upstream's Vary names for a primary key (JSON list);
    - ``p:<upstream>:<path>``: the set of entry keys at a path, and ``u:<upstream>``: the set of
      paths, for invalidation and purge. Stale members (expired entries) are harmless;
    - ``i:<key>``: present while the entry is soft-purged (``mark_where``), expiring with it.

    Every change is announced on the channel ``near`` (``sender \\t upstream \\t path``; the path
    empty for a whole upstream, the upstream empty for all): a put in its own script, an
    invalidation or purge once done, before the call returns. ``gateway.nearcache`` listens.

    Keys are SHA-256 digests; paths appear in clear (they are the upstream's URLs, not header
    values). Bounds are Redis's own (``maxmemory`` and its eviction policy); ``max_entry_bytes``
    still applies. Single-node Redis (the multi-key script assumes one slot space).
    """

    kind = "redis"

    def __init__(self, link: RedisLink) -> None:
        self.link = link
        self.channel = link.key("near")
        self.sender = os.urandom(8).hex()  # this replica, in its announcements
        self._put = link.client.register_script(_PUT)
        self._mark = link.client.register_script(_MARK)
        self._stats = StoreStats()

    async def get(self, primary: str, key_for: KeyFor) -> Entry | None:
        k = self.link.key
        plain = key_for(())  # the key when the upstream sent no Vary: read with the Vary record, one round trip
        vary_raw, data, mark = await self.link.call(
            "get", lambda r: r.mget([k("v", primary), k("e", plain), k("i", plain)])
        )
        if vary_raw is None:
            return None
        vary = tuple(json.loads(vary_raw))
        if vary:
            key = key_for(vary)
            data, mark = await self.link.call("get", lambda r: r.mget([k("e", key), k("i", key)]))
        if data is None:
            return None
        entry = Entry.from_bytes(data if isinstance(data, bytes) else data.encode())
        return entry if mark is None else replace(entry, invalidated=True)

    async def put(self, primary: str, key: str, entry: Entry) -> None:
        k = self.link.key
        lifetime = entry.stored_at + entry.ttl + entry.keep - time.time()
        if lifetime <= 0:
            return
        keys = [k("e", key), k("v", primary), k("p", entry.upstream, entry.path), k("u", entry.upstream), k("i", key)]
        lifetime_ms = max(1, int(lifetime * 1000))
        args = [entry.to_bytes(), json.dumps(list(entry.vary)), lifetime_ms, key, entry.path, self.channel]
        args.append(self._announcement(entry.upstream, entry.path))
        await self.link.script("put", self._put, keys, args)

    def _announcement(self, upstream: str | None, path: str = "") -> str:
        return f"{self.sender}\t{upstream or ''}\t{path}"

    async def _announce(self, op: str, upstream: str | None) -> None:
        """Tell the near caches that ``upstream``'s entries (every upstream's for None) changed."""
        message = self._announcement(upstream)
        await self.link.call(op, lambda r: r.publish(self.channel, message))

    async def _upstreams(self) -> list[str]:
        pattern = self.link.key("u", "*")
        start = len(self.link.key("u", ""))

        async def scan(r: Any) -> list[str]:
            return [name.decode()[start:] async for name in r.scan_iter(match=pattern, count=500)]

        names: list[str] = await self.link.call("scan", scan)
        return names

    async def _members(self, op: str, key: str) -> list[str]:
        async def smembers(r: Any) -> list[str]:
            return [m.decode() for m in await r.smembers(key)]

        members: list[str] = await self.link.call(op, smembers)
        return members

    async def delete_where(self, upstream: str | None, match: PathFilter) -> int:
        k = self.link.key
        names = [upstream] if upstream is not None else await self._upstreams()
        deleted = 0
        for name in names:
            for path in [p for p in await self._members("delete", k("u", name)) if match(name, p)]:
                doomed = [k("e", key) for key in await self._members("delete", k("p", name, path))]
                deleted += await self.link.call("delete", _dropper(doomed, k("p", name, path), k("u", name), path))
        await self._announce("delete", upstream)
        return deleted

    async def mark_where(self, upstream: str, match: PathFilter) -> int:
        k = self.link.key
        marked = 0
        for path in [p for p in await self._members("mark", k("u", upstream)) if match(upstream, p)]:
            args = [k("e", ""), k("i", ""), repr(time.time())]
            marked += int(await self.link.script("mark", self._mark, [k("p", upstream, path)], args))
        await self._announce("mark", upstream)
        return marked

    def stats(self) -> StoreStats:
        return self._stats

    async def refresh_stats(self) -> StoreStats:
        """Count the entries and their bytes in Redis (SCAN + STRLEN): for /admin/cache and the gauges."""
        k = self.link.key
        stats = StoreStats()
        for name in await self._upstreams():
            keys: set[str] = set()
            for path in await self._members("stats", k("u", name)):
                keys.update(await self._members("stats", k("p", name, path)))
            held = [n for n in await self.link.call("stats", _sizer([k("e", key) for key in keys])) if n]
            if held:
                stats.upstreams[name] = {"entries": len(held), "bytes": sum(held)}
                stats.entries += len(held)
                stats.bytes += sum(held)
        self._stats = stats
        return stats


def _dropper(entries: list[str], path_set: str, upstream_set: str, path: str) -> Callable[[Any], Awaitable[int]]:
    """One pipelined round trip deleting a path's entries and its index records; returns entries deleted."""

    async def drop(r: Any) -> int:
        async with r.pipeline(transaction=False) as pipe:
            if entries:
                pipe.delete(*entries)
            pipe.delete(path_set)
            pipe.srem(upstream_set, path)
            results = await pipe.execute()
        return int(results[0]) if entries else 0

    return drop


def _sizer(keys: list[str]) -> Callable[[Any], Awaitable[list[int]]]:
    async def sizes(r: Any) -> list[int]:
        async with r.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.strlen(key)
            return [int(n) for n in await pipe.execute()]

    return sizes


class FallbackStore(Store):
    """Redis while it answers, the memory store while it does not.

    Entries written during an outage stay local and are dropped when Redis answers again (other
    replicas may have invalidated them meanwhile). Invalidations that could not reach Redis are
    kept (the latest 1,000) and replayed on recovery, so a write during the outage still marks or
    purges the shared entries it should have.
    """

    kind = "redis"

    def __init__(self, remote: RedisStore, local: MemoryStore) -> None:
        self.remote = remote
        self.local = local
        self._missed: deque[tuple[str | None, PathFilter, bool]] = deque(maxlen=1000)  # (upstream, match, hard)
        remote.link.on_recovery(self._recovered)

    async def _recovered(self) -> None:
        await self.local.delete_where(None, lambda _u, _p: True)
        while self._missed:
            upstream, match, hard = self._missed[0]
            if hard or upstream is None:
                await self.remote.delete_where(upstream, match)
            else:
                await self.remote.mark_where(upstream, match)
            self._missed.popleft()

    async def get(self, primary: str, key_for: KeyFor) -> Entry | None:
        try:
            return await self.remote.get(primary, key_for)
        except StoreUnavailable:
            return await self.local.get(primary, key_for)

    async def put(self, primary: str, key: str, entry: Entry) -> None:
        try:
            await self.remote.put(primary, key, entry)
        except StoreUnavailable:
            await self.local.put(primary, key, entry)

    async def delete_where(self, upstream: str | None, match: PathFilter) -> int:
        deleted = await self.local.delete_where(upstream, match)
        try:
            deleted += await self.remote.delete_where(upstream, match)
        except StoreUnavailable:
            self._missed.append((upstream, match, True))
        return deleted

    async def mark_where(self, upstream: str, match: PathFilter) -> int:
        marked = await self.local.mark_where(upstream, match)
        try:
            marked += await self.remote.mark_where(upstream, match)
        except StoreUnavailable:
            self._missed.append((upstream, match, False))
        return marked

    def stats(self) -> StoreStats:
        return self.remote.stats() if self.remote.link.up else self.local.stats()

    async def refresh_stats(self) -> StoreStats:
        try:
            return await self.remote.refresh_stats()
        except StoreUnavailable:
            return self.local.stats()

    def prune(self, now: float) -> int:
        return self.local.prune(now)

    async def close(self) -> None:
        await self.remote.link.close()
