"""The near cache: a small in-process copy of the Redis cache store, kept coherent by pub/sub.

A Redis cache hit costs a round trip and decoding the entry (about 300 µs of gateway CPU, as much
as going upstream, issue 17). ``NearStore`` sits in front of the shared store (``FallbackStore``)
and keeps the entries this replica read or stored in a ``MemoryStore`` of its own (at most
``NEAR_ENTRIES`` entries and ``NEAR_BYTES`` bytes, least recently used evicted first), so a
repeated hit costs what a memory-cache hit costs.

Coherence. Every change ``RedisStore`` makes is announced on the channel ``<prefix>near`` in the
same call (a put, in its Lua script) or right after it (a soft or hard invalidation, a purge),
and ``ResponseCache.invalidate`` awaits that before the write's answer goes back to its client.
Every replica holds one subscription on that channel (``_Subscriber``: its own connection, whose
messages are applied in ``data_received``, synchronously, as soon as the event loop reads them)
and drops what a message names: a path's entries for a put, an upstream's entries for an
invalidation (the filter of ``invalidates:`` is a function, so the whole upstream), everything for
a purge of all upstreams. The near cache answers only while

- the subscription is confirmed by Redis and Redis was heard from in the last ``HEARD_WITHIN``
  seconds (a ``PING`` goes every ``PING_EVERY``): a connection lost, refused or silent drops the
  whole near cache and bypasses it until a new subscription is confirmed;
- nothing is waiting, unread, on the subscription's socket (``poll``: a byte, the connection's end
  or an error): a message, or the news that the subscription ended, that has reached this host is
  applied before the near cache is trusted again (meanwhile the lookup goes to Redis).

A write's answer waits for a barrier. After its invalidation, replica A publishes a barrier
(``?token``) on the same channel; PUBLISH says how many subscriptions received it, and each of them
answers ``!token`` once it has read the barrier, from its ordinary Redis connection. A subscription
reads its messages in order, so a replica that answered the barrier has applied the invalidation
before it. A waits for every answer, or for ``HEARD_WITHIN`` at most: a replica that has not
answered by then has not read from Redis for that long, and so no longer trusts its near cache
(above). So once the write's answer has left A, no replica answers the old entry from its near
cache. The price is one more round trip per write, about a millisecond on a LAN, and a full
``HEARD_WITHIN`` when a subscribed replica cannot answer (an older gateway during a rolling
upgrade: upgrade all replicas together, or accept a one-second write). When this replica has no
subscription and ``PUBSUB NUMSUB`` counts none anywhere (pub/sub refused), no near cache can hold the
entry and the write does not wait. If A's announcement itself
fails (Redis answered the invalidation, then timed out), the other replicas' near caches may hold
that upstream's entries until A's Redis link recovers and replays the invalidation
(``FallbackStore``), which announces it again.

A fill races an invalidation: a lookup that missed the near cache reads Redis, and an
invalidation may arrive before the answer does. Each change bumps a generation; an entry read from
Redis is kept near only when the generation did not move meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import select
import ssl
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from .cachestore import Entry, FallbackStore, KeyFor, MemoryStore, PathFilter, Store, StoreStats
from .logs import event
from .redislink import StoreUnavailable

__all__ = ["HEARD_WITHIN", "NEAR_BYTES", "NEAR_ENTRIES", "NearStore"]

NEAR_ENTRIES = 1_000  # at most (or cache_store.max_entries when lower)
NEAR_BYTES = 16 * 1024 * 1024  # at most (or cache_store.max_bytes when lower)
PING_EVERY = 0.25  # seconds between PINGs on the subscription
HEARD_WITHIN = 1.0  # the near cache answers only if Redis was heard from this recently
RECONNECT_MAX = 2.0  # the longest wait between subscription attempts
BARRIER, ANSWER = "?", "!"  # a write's barrier and a replica's answer to it, on the same channel


class NearStore(Store):
    """The shared store with a near cache in front (see the module's docstring)."""

    kind = "redis"

    def __init__(
        self,
        shared: FallbackStore,
        max_entries: int,
        max_bytes: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.shared = shared
        self.remote = shared.remote
        self.near = MemoryStore(min(max_entries, NEAR_ENTRIES), min(max_bytes, NEAR_BYTES))
        self.clock = clock
        self.generation = 0
        self.hits = 0  # answered from the near cache
        self._subscriber = _Subscription(self)
        self._tokens = itertools.count()
        self._barriers: dict[str, _Barrier] = {}  # this replica's barriers waiting for their answers
        self._answering: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ Store

    async def get(self, primary: str, key_for: KeyFor) -> Entry | None:
        sub = self._subscriber
        sub.start()
        trusted = sub.trusted()
        if trusted:
            entry = await self.near.get(primary, key_for)
            if entry is not None:
                self.hits += 1
                return entry
        generation = self.generation
        try:
            entry = await self.remote.get(primary, key_for)
        except StoreUnavailable:
            return await self.shared.local.get(primary, key_for)
        if entry is not None and trusted and generation == self.generation and not entry.invalidated:
            await self.near.put(primary, key_for(entry.vary), entry)  # a soft-purged entry stays remote
        return entry

    async def put(self, primary: str, key: str, entry: Entry) -> None:
        generation = self.generation
        try:
            await self.remote.put(primary, key, entry)
        except StoreUnavailable:
            await self.shared.local.put(primary, key, entry)
            return
        if self._subscriber.trusted() and generation == self.generation:
            await self.near.put(primary, key, entry)
        else:  # never leave the older near copy of this key answering
            self.near._entries.pop(key, None)

    async def delete_where(self, upstream: str | None, match: PathFilter) -> int:
        self._forget(upstream, match)
        done = await self.shared.delete_where(upstream, match)
        await self.barrier()
        return done

    async def mark_where(self, upstream: str, match: PathFilter) -> int:
        self._forget(upstream, match)
        done = await self.shared.mark_where(upstream, match)
        await self.barrier()
        return done

    def stats(self) -> StoreStats:
        return self.shared.stats()

    async def refresh_stats(self) -> StoreStats:
        return await self.shared.refresh_stats()

    def prune(self, now: float) -> int:
        self.near.prune(now)
        return self.shared.prune(now)

    async def close(self) -> None:
        await self._subscriber.stop()
        await self.shared.close()

    # ------------------------------------------------------------------ coherence

    def _forget(self, upstream: str | None, match: PathFilter) -> None:
        """Drop near entries (synchronously: ``MemoryStore`` never awaits) and void fills in flight."""
        self.generation += 1
        doomed = self.near._matching(upstream, match)
        for key in doomed:
            del self.near._entries[key]

    async def barrier(self) -> None:
        """Return once every subscribed replica has read what this replica announced so far, or after
        ``HEARD_WITHIN`` (see the module's docstring). Redis down: nothing was announced, no wait."""
        sub = self._subscriber
        sub.start()
        token = f"{self.remote.sender}:{next(self._tokens)}"
        waiting = self._barriers[token] = _Barrier()
        try:
            if not sub.subscribed:  # the answers come on the subscription: a moment for it to come up
                if not await self._listeners():
                    return  # no near cache anywhere (pub/sub refused, or no replica subscribed): no wait
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(HEARD_WITHIN):
                        await sub.up.wait()
            receivers = int(
                await self.remote.link.call("barrier", lambda r: r.publish(self.remote.channel, BARRIER + token))
            )
            if receivers == 0:
                return
            waiting.expected = receivers if sub.subscribed else 1 << 30  # deaf: wait the limit out
            if waiting.answers < waiting.expected:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(HEARD_WITHIN):
                        await waiting.all_in
        except StoreUnavailable:
            pass
        finally:
            del self._barriers[token]

    async def _listeners(self) -> int:
        """How many subscriptions (this replica's or others') listen on the channel now."""
        found = await self.remote.link.call("barrier", lambda r: r.pubsub_numsub(self.remote.channel))
        return sum(int(count) for _channel, count in found)

    def announced(self, message: bytes) -> None:
        """A message on the channel: a barrier (``?token``: answer it), an answer to one (``!token``),
        or a change another replica made: ``sender \\t upstream \\t path``; an empty path is the whole
        upstream, an empty upstream every upstream."""
        if message[:1] == b"?":
            token = message[1:].decode(errors="replace")
            task = asyncio.get_running_loop().create_task(self._answer(token))
            self._answering.add(task)  # a reference until done: the loop keeps only a weak one
            task.add_done_callback(self._answering.discard)
            return
        if message[:1] == b"!":
            waiting = self._barriers.get(message[1:].decode(errors="replace"))
            if waiting is not None:
                waiting.answered()
            return
        sender, _, rest = message.partition(b"\t")
        if sender.decode(errors="replace") == self.remote.sender:
            return  # this replica's own change: its near cache is already up to date
        upstream_raw, _, path_raw = rest.partition(b"\t")
        upstream = upstream_raw.decode(errors="replace") or None
        path = path_raw.decode(errors="replace")
        if upstream is None:
            self._forget(None, lambda _u, _p: True)
        elif path:
            self._forget(upstream, lambda _u, p: p == path)
        else:
            self._forget(upstream, lambda _u, _p: True)

    async def _answer(self, token: str) -> None:
        """Every message before the barrier is applied (one connection, read in order): say so."""
        with contextlib.suppress(StoreUnavailable):
            await self.remote.link.call("barrier", lambda r: r.publish(self.remote.channel, ANSWER + token))

    def drop_all(self) -> None:
        """The subscription is gone: nothing near may be trusted any more."""
        self._forget(None, lambda _u, _p: True)


class _Barrier:
    """One barrier of this replica: the answers counted, the number expected (PUBLISH's count)."""

    def __init__(self) -> None:
        self.answers = 0
        self.expected = 1 << 30  # until PUBLISH has said how many received it
        self.all_in: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def answered(self) -> None:
        self.answers += 1
        if self.answers >= self.expected and not self.all_in.done():
            self.all_in.set_result(None)


# --------------------------------------------------------------------------- the subscription


class _Subscription:
    """The near cache's own connection to Redis, subscribed to ``<prefix>near``; reconnects forever."""

    def __init__(self, owner: NearStore) -> None:
        self.owner = owner
        self.channel = owner.remote.channel
        self.url = owner.remote.link.url
        self.timeout = owner.remote.link.timeout
        self.clock = owner.clock
        self.subscribed = False
        self.up = asyncio.Event()  # set while subscribed (a barrier waits for it)
        self.heard = -1e9  # when Redis last sent anything on this connection
        self._poll: select.poll | None = None  # the subscription's socket, for bytes or an end not yet read
        self._task: asyncio.Task[None] | None = None
        self._protocol: _Subscriber | None = None
        self._failing = False
        self._stopped = False

    def start(self) -> None:
        if self._task is None and not self._stopped:
            self._task = asyncio.get_running_loop().create_task(self._run())

    def trusted(self) -> bool:
        """Whether the near cache may answer now: subscribed, heard recently, nothing unread."""
        if not self.subscribed or self.clock() - self.heard > HEARD_WITHIN:
            return False
        poll = self._poll
        return poll is not None and not poll.poll(0)  # readable: a message, an end or an error is waiting

    async def stop(self) -> None:
        self._stopped = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._protocol is not None:
            self._protocol.close()

    async def _run(self) -> None:
        delay = 0.1
        while not self._stopped:
            try:
                await self._session()
                delay = 0.1
            except (OSError, TimeoutError, ssl.SSLError, _Refused) as exc:
                if not self._failing:
                    self._failing = True
                    event(
                        "near cache off: no subscription to the cache's invalidations",
                        logging.WARNING,
                        error=type(exc).__name__,
                    )
            finally:
                self._lost()
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX)

    async def _session(self) -> None:
        """Connect, subscribe, ping until the connection ends."""
        loop = asyncio.get_running_loop()
        target = _target(self.url)
        async with asyncio.timeout(self.timeout * 5):
            if target.unix is not None:
                transport, protocol = await loop.create_unix_connection(lambda: _Subscriber(self), target.unix)
            else:
                transport, protocol = await loop.create_connection(
                    lambda: _Subscriber(self), target.host, target.port, ssl=target.tls
                )
        self._protocol = protocol
        self.heard = self.clock()  # connected: the silence limit counts from here (not trusted before SUBSCRIBE)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            self._poll = select.poll()
            self._poll.register(sock.fileno(), select.POLLIN | select.POLLPRI | select.POLLRDHUP)
        if target.password is not None:
            protocol.send("AUTH", *((target.username,) if target.username else ()), target.password)
        protocol.send("SUBSCRIBE", self.channel)
        while not protocol.done.done():
            protocol.send("PING")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(PING_EVERY):
                    await asyncio.shield(protocol.done)
            if self.clock() - self.heard > HEARD_WITHIN and not protocol.done.done():
                protocol.close()  # silent: as good as lost
                break
        await protocol.done  # raises what ended it (a refusal), if anything

    def _confirmed(self) -> None:
        self.owner.drop_all()
        self.subscribed = True
        self.up.set()
        if self._failing:
            self._failing = False
            event("near cache on: subscribed to the cache's invalidations again")

    def _lost(self) -> None:
        was = self.subscribed
        self.subscribed = False
        self.up.clear()
        self._poll = None
        self._protocol = None
        self.owner.drop_all()
        if was and not self._stopped and not self._failing:
            self._failing = True
            event("near cache off: the subscription to the cache's invalidations was lost", logging.WARNING)


class _Refused(Exception):
    """Redis answered the subscription with an error (AUTH refused, ACL)."""


class _Subscriber(asyncio.Protocol):
    """RESP2 on the subscription connection: replies to AUTH, SUBSCRIBE and PING, and messages,
    each applied as soon as its bytes are read."""

    def __init__(self, owner: _Subscription) -> None:
        self.owner = owner
        self.buffer = bytearray()
        self.transport: asyncio.WriteTransport | None = None
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a stream transport (uvloop's is no asyncio.Transport)

    def send(self, *args: str) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        out = bytearray(b"*%d\r\n" % len(args))
        for arg in args:
            data = arg.encode()
            out += b"$%d\r\n%s\r\n" % (len(data), data)
        self.transport.write(bytes(out))

    def data_received(self, data: bytes) -> None:
        self.owner.heard = self.owner.clock()
        self.buffer += data
        while True:
            try:
                parsed = _parse(self.buffer, 0)
            except ValueError as exc:
                self._fail(_Refused(f"unreadable reply: {exc}"))
                return
            if parsed is None:
                return
            value, end = parsed
            del self.buffer[:end]
            self._apply(value)

    def _apply(self, value: Any) -> None:
        if isinstance(value, _Error):
            self._fail(_Refused(value.text.split(" ", 1)[0]))  # the error's code only: never echo the reply
        elif isinstance(value, list) and value and isinstance(value[0], bytes):
            kind = value[0].lower()
            if kind == b"message" and len(value) == 3 and isinstance(value[2], bytes):
                self.owner.owner.announced(value[2])
            elif kind == b"subscribe":
                self.owner._confirmed()

    def _fail(self, exc: BaseException) -> None:
        if not self.done.done():
            self.done.set_exception(exc)
        self.close()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner.subscribed = False
        self.owner.up.clear()
        self.owner.owner.drop_all()
        if not self.done.done():
            self.done.set_result(None)


class _Error:
    def __init__(self, text: str) -> None:
        self.text = text


def _parse(buf: bytearray, at: int) -> tuple[Any, int] | None:
    """One RESP2 value at ``at``: (value, end), or None when incomplete."""
    line_end = buf.find(b"\r\n", at)
    if line_end < 0:
        return None
    kind, line = buf[at : at + 1], bytes(buf[at + 1 : line_end])
    end = line_end + 2
    if kind == b"+":
        return line, end
    if kind == b"-":
        return _Error(line.decode(errors="replace")), end
    if kind == b":":
        return int(line), end
    if kind == b"$":
        n = int(line)
        if n < 0:
            return None, end
        if len(buf) < end + n + 2:
            return None
        return bytes(buf[end : end + n]), end + n + 2
    if kind == b"*":
        items: list[Any] = []
        for _ in range(max(int(line), 0)):
            parsed = _parse(buf, end)
            if parsed is None:
                return None
            item, end = parsed
            items.append(item)
        return items, end
    raise ValueError(f"unknown RESP type {kind!r}")


class _Target:
    def __init__(self) -> None:
        self.host = "localhost"
        self.port = 6379
        self.unix: str | None = None
        self.tls: ssl.SSLContext | None = None
        self.username: str | None = None
        self.password: str | None = None


def _target(url: str) -> _Target:
    """Where the subscription connects, read from ``cache_store.url`` as redis-py reads it."""
    from redis.connection import parse_url

    found: dict[str, Any] = parse_url(url)  # type: ignore[no-untyped-call]
    target = _Target()
    if "path" in found:
        target.unix = found["path"]
    else:
        target.host = found.get("host") or "localhost"
        target.port = int(found.get("port") or 6379)
    if urlsplit(url).scheme == "rediss":
        context = ssl.create_default_context(cafile=found.get("ssl_ca_certs"))
        if found.get("ssl_cert_reqs") in ("none", ssl.CERT_NONE):
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        target.tls = context
    target.username = found.get("username") or None
    target.password = found.get("password") or None
    return target
