"""Idempotency keys: a write repeated with the same key gets the first answer, never a second send.

Owns contract §2 ``idempotency`` (the IETF draft "The Idempotency-Key HTTP Header Field"):

- **The key.** One ``Idempotency-Key`` header (the name is configurable), an RFC 8941 sf-string
  (``"8e03978e-…"``, the draft's form) or a bare token (what most clients send); both spellings
  of one value are one key. 1-255 printable ASCII characters; anything else, or two such headers,
  is 400 ``bad_request``; no key where ``required: true`` is 400 too.
- **Scope and fingerprint.** A key is scoped to the upstream, the route, the key's value and a
  digest of the client's ``Authorization``, so two callers never share one; the request is
  fingerprinted by method, request target (path and query as received) and a digest of the body.
  The body must have been read into memory (at most ``retry.max_replay_body``): a larger body
  with a key is 400, since it could not be compared with a repeat. Everything written to a store is
  a SHA-256 digest or the upstream's answer: never a request header value in clear.
- **The claim.** The first request with a key claims it atomically (the memory store in the event
  loop; Redis with one Lua script) with an in-flight record. A repeat while it is in flight gets
  409 ``idempotency_conflict`` with ``Retry-After: 1``; a repeat with another fingerprint gets 422
  ``idempotency_mismatch``; a repeat of a kept outcome gets it back (``replay``) without reaching
  the upstream, with ``x-gateway-idempotency: replayed``. An in-flight record whose gateway
  stopped before recording an outcome (past the request's ``total`` plus ``FLIGHT_SLACK``) counts
  as an unknown outcome.
- **What an outcome keeps** (``Claim``): an answer the upstream gave after processing (2xx, 3xx,
  and 4xx other than 408, 409, 425, 429 and the route's not-accepted ``code:N``) is kept for ``ttl``
  and replayed. An outcome that proves the request was not processed (a connect failure, any
  refusal of the gateway, a 429, 408/409/425, a not-accepted code once tries ran out) releases the
  key, so a repeat is forwarded. An unknown outcome (a reset or timeout after the request was sent,
  another 5xx, an answer cut after its headers, a gateway that stopped mid-request) is kept and
  replayed as that failure: the gateway error with a message saying the outcome is unknown, or the
  upstream's 5xx with ``x-gateway-idempotency-outcome: unknown``.
- **Bodies kept** are answers up to the store's ``max_entry_bytes``. A larger answer still goes to
  the first client whole; its repeats get the same status and headers with an empty body and
  ``x-gateway-idempotency-body: omitted`` (the request is still never sent twice).
- **Stores.** ``MemoryStore`` (one process, lost on restart, LRU-bounded in bytes and records; an
  in-flight record is never evicted); ``RedisStore`` (shared by every replica, survives restarts);
  ``FallbackStore``: Redis while it answers, memory while it does not (records made during an
  outage stay local to the replica that made them, and are still honoured after Redis returns).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import secrets
import struct
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from cachetools import LRUCache
from multidict import CIMultiDict

from .cache import Shared
from .config import IdempotencySpec
from .errors import (
    BadRequest,
    GatewayError,
    IdempotencyConflict,
    IdempotencyMismatch,
    Overloaded,
    UpstreamReset,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from .outcomes import Outcome
from .redislink import RedisLink, StoreUnavailable
from .retry import RetryPolicy

__all__ = [
    "Claim",
    "FallbackStore",
    "Keeper",
    "MemoryStore",
    "Record",
    "RedisStore",
    "Store",
    "read_key",
]

FLIGHT_SLACK = 10.0  # an in-flight record outlives its request's total timeout by this much
CONFLICT_RETRY_AFTER = 1  # seconds: the first request usually ends within its own answer time
NOT_PROCESSED_STATUSES = frozenset({408, 409, 425, 429})
_NOT_KEPT_HEADERS = frozenset({"content-length", "set-cookie", "x-request-id", "x-gateway-cache"})
_TOKEN = re.compile(r"[\x21-\x7e]{1,255}")
_SF_STRING = re.compile(r'"((?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\["\\])*)"')
FLIGHT, KEPT = "flight", "kept"


def read_key(headers: Mapping[str, str], name: str) -> str | None:
    """The Idempotency-Key's value (an sf-string unquoted), or None when absent.
    Raises BadRequest for a malformed value or more than one header."""
    getall = getattr(headers, "getall", None)
    values = list(getall(name, ())) if getall is not None else ([headers[name]] if name in headers else [])
    if not values:
        return None
    if len(values) > 1:
        raise BadRequest(f"more than one {name} header: send exactly one")
    raw = values[0].strip()
    quoted = _SF_STRING.fullmatch(raw)
    value = re.sub(r"\\(.)", r"\1", quoted.group(1)) if quoted else raw
    if not _TOKEN.fullmatch(value) or (not quoted and '"' in value):
        raise BadRequest(
            f"{name} must be 1 to 255 printable ASCII characters without spaces, optionally in double quotes "
            '(e.g. "8e03978e-40d5-43e8-bc93-6894a57f9324")'
        )
    return value


def _sha(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(hashlib.sha256(part).digest())
    return h.hexdigest()


# --------------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class Record:
    """What a store keeps under a key's scope: a claim in flight, or the outcome kept."""

    state: str  # flight | kept
    fingerprint: str
    token: str  # the claim's own id: only its holder may finish or release it
    until: float = 0.0  # flight: wall time after which its gateway is taken to have stopped
    status: int = 0
    reason: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    failure: str | None = None  # kept failure: the gateway error code (upstream_reset, upstream_timeout)
    message: str = ""
    unknown: bool = False  # the upstream may or may not have processed the request
    omitted: int = 0  # answer bytes not kept (over the store's limit)
    attempts: int = 0
    size: int = field(init=False, compare=False)

    def __post_init__(self) -> None:
        text = sum(len(k) + len(v) for k, v in self.headers)
        object.__setattr__(self, "size", len(self.body) + text + len(self.message) + 400)

    def to_bytes(self) -> bytes:
        meta = json.dumps(
            [
                self.state,
                self.fingerprint,
                self.token,
                self.until,
                self.status,
                self.reason,
                self.headers,
                self.failure,
                self.message,
                self.unknown,
                self.omitted,
                self.attempts,
            ],
            separators=(",", ":"),
        ).encode()
        return struct.pack(">I", len(meta)) + meta + self.body

    @classmethod
    def from_bytes(cls, data: bytes) -> Record:
        """Raise ValueError when ``data`` is not a record."""
        try:
            (n,) = struct.unpack_from(">I", data)
            state, fp, token, until, status, reason, headers, failure, message, unknown, omitted, attempts = json.loads(
                data[4 : 4 + n]
            )
            return cls(
                str(state),
                str(fp),
                str(token),
                float(until),
                int(status),
                str(reason),
                tuple((str(k), str(v)) for k, v in headers),
                data[4 + n :],
                failure,
                str(message),
                bool(unknown),
                int(omitted),
                int(attempts),
            )
        except (struct.error, ValueError, TypeError) as exc:
            raise ValueError(f"not an idempotency record: {exc}") from exc


# --------------------------------------------------------------------------- stores


class Store(ABC):
    """Where records live. Redis failures surface as ``StoreUnavailable`` (``FallbackStore`` hides them)."""

    max_body: int

    @abstractmethod
    async def claim(self, scope: str, record: Record, ttl: float) -> Record | None:
        """Keep ``record`` (in flight) under ``scope`` unless one is there: None when claimed, else
        the record found."""

    @abstractmethod
    async def finish(self, scope: str, record: Record, ttl: float) -> None:
        """Replace the claim ``record.token`` holds with ``record`` (kept), for ``ttl`` seconds."""

    @abstractmethod
    async def release(self, scope: str, token: str) -> None:
        """Forget the claim ``token`` holds (a repeat will be forwarded)."""

    def __len__(self) -> int:
        return 0


class MemoryStore(Store):
    """One process's records: in-flight claims in a dict (never evicted), kept outcomes in an LRU
    sized in bytes (``max_bytes``) and records (``max_records``), each with its own expiry."""

    def __init__(self, max_records: int, max_bytes: int, max_body: int, clock: Callable[[], float] = time.time) -> None:
        self.max_body = max_body
        self.clock = clock
        self._flights: dict[str, Record] = {}
        self._kept: LRUCache[str, tuple[float, Record]] = LRUCache(maxsize=max_bytes, getsizeof=lambda v: v[1].size)
        self._max_records = max_records

    def __len__(self) -> int:
        return len(self._flights) + len(self._kept)

    def _find(self, scope: str) -> Record | None:
        found = self._flights.get(scope)
        if found is not None:
            return found
        kept = self._kept.get(scope)
        if kept is None:
            return None
        if kept[0] <= self.clock():
            del self._kept[scope]
            return None
        return kept[1]

    async def claim(self, scope: str, record: Record, ttl: float) -> Record | None:
        found = self._find(scope)
        if found is not None:
            return found
        self._flights[scope] = record
        return None

    async def finish(self, scope: str, record: Record, ttl: float) -> None:
        held = self._flights.get(scope)
        if held is not None and held.token != record.token:
            return
        self._flights.pop(scope, None)
        if record.size > self._kept.maxsize:
            return
        self._kept[scope] = (self.clock() + ttl, record)
        while len(self._kept) > self._max_records:
            self._kept.popitem()

    async def release(self, scope: str, token: str) -> None:
        held = self._flights.get(scope)
        if held is not None and held.token == token:
            del self._flights[scope]

    def has(self, scope: str) -> Record | None:
        return self._find(scope)


# claim: the record under KEYS[1] when there is one, else keep ARGV[1] with its token ARGV[2] for
# ARGV[3] ms and answer nil. finish: replace the record only while ARGV[2] holds it. release: delete
# the record only while ARGV[1] holds it.
_CLAIM = """
local found = redis.call('HGET', KEYS[1], 'rec')
if found then return found end
redis.call('HSET', KEYS[1], 'rec', ARGV[1], 'tok', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return false
"""
_FINISH = """
if redis.call('HGET', KEYS[1], 'tok') ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], 'rec', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""
_RELEASE = """
if redis.call('HGET', KEYS[1], 'tok') ~= ARGV[1] then return 0 end
return redis.call('DEL', KEYS[1])
"""


class RedisStore(Store):
    """Records in Redis (``<prefix>idem:<scope>``, a hash of the record and its claim token), shared
    by every replica and kept across restarts. Bounded by Redis's own ``maxmemory``."""

    def __init__(self, link: RedisLink, max_body: int) -> None:
        self.link = link
        self.max_body = max_body
        self._claim = link.client.register_script(_CLAIM)
        self._finish = link.client.register_script(_FINISH)
        self._release = link.client.register_script(_RELEASE)

    async def claim(self, scope: str, record: Record, ttl: float) -> Record | None:
        ms = max(1, int(ttl * 1000))
        found = await self.link.script(
            "idempotency", self._claim, [self.link.key("idem", scope)], [record.to_bytes(), record.token, ms]
        )
        if found is None:
            return None
        return Record.from_bytes(found if isinstance(found, bytes) else str(found).encode())

    async def finish(self, scope: str, record: Record, ttl: float) -> None:
        ms = max(1, int(ttl * 1000))
        key = self.link.key("idem", scope)
        await self.link.script("idempotency", self._finish, [key], [record.to_bytes(), record.token, ms])

    async def release(self, scope: str, token: str) -> None:
        await self.link.script("idempotency", self._release, [self.link.key("idem", scope)], [token])


class FallbackStore(Store):
    """Redis while it answers, this replica's memory while it does not.

    A claim made in memory during an outage is finished in memory; one made in Redis that cannot be
    finished there (Redis went away mid-request) is finished in memory too, and its Redis record,
    left in flight, reads as an unknown outcome to the other replicas once its time has passed.
    Records made in memory are consulted before Redis, also after Redis returns.
    """

    def __init__(self, remote: RedisStore, local: MemoryStore) -> None:
        self.remote = remote
        self.local = local
        self.max_body = remote.max_body
        self._where: dict[str, str] = {}  # token -> "remote" | "local" for claims in flight

    def __len__(self) -> int:
        return len(self.local)

    async def claim(self, scope: str, record: Record, ttl: float) -> Record | None:
        if len(self.local):
            found = self.local.has(scope)
            if found is not None:
                return found
        try:
            found = await self.remote.claim(scope, record, ttl)
            where = "remote"
        except StoreUnavailable:
            found = await self.local.claim(scope, record, ttl)
            where = "local"
        if found is None:
            self._where[record.token] = where
        return found

    async def finish(self, scope: str, record: Record, ttl: float) -> None:
        if self._where.pop(record.token, "local") == "remote":
            try:
                await self.remote.finish(scope, record, ttl)
                return
            except StoreUnavailable:
                pass
        await self.local.finish(scope, record, ttl)

    async def release(self, scope: str, token: str) -> None:
        if self._where.pop(token, "local") == "remote":
            # when Redis is down, its record reads as an unknown outcome once its flight time has passed
            with contextlib.suppress(StoreUnavailable):
                await self.remote.release(scope, token)
            return
        await self.local.release(scope, token)


# --------------------------------------------------------------------------- the route's keeper

Count = Callable[[str], None]


@dataclass(slots=True)
class Claim:
    """A key this request holds: settles once, from what its outcome proves; or a replay."""

    keeper: Keeper
    scope: str
    record: Record  # the in-flight record (token, fingerprint)
    count: Count
    replay: Shared | GatewayError | None = None
    settled: bool = False

    async def answered(
        self, outcome: Outcome, status: int, reason: str, headers: Any, body: bytes, whole: bool
    ) -> None:
        """The upstream answered with ``status``; ``body`` is all of it when ``whole``."""
        if self.keeper.not_processed(outcome, status):
            await self._release()
            return
        kept = tuple((k, v) for k, v in headers.items() if k.lower() not in _NOT_KEPT_HEADERS)
        omitted = 0 if whole else max(1, len(body))
        record = replace(
            self.record,
            state=KEPT,
            status=status,
            reason=reason,
            headers=kept,
            body=body if whole else b"",
            unknown=status >= 500,
            omitted=omitted,
        )
        await self._keep(record)

    async def failed(self, error: GatewayError, sent: bool) -> None:
        """The tries ended without an answer (``error`` is what the client gets)."""
        if not sent or isinstance(error, (UpstreamUnreachable, Overloaded)):
            await self._release()
            return
        await self._keep_failure(error, "after the request was sent")

    async def refused(self, error: GatewayError) -> None:
        """A gateway error ended the request before it settled: a refusal (rate limit, breaker,
        quota, fault, draining) releases the key; an answer cut after its headers is unknown."""
        if self.settled:
            return
        if isinstance(error, (UpstreamReset, UpstreamTimeout)):
            await self._keep_failure(error, "after the upstream began to answer")
        else:
            await self._release()

    async def abandon(self, attempts: int) -> None:
        """The request ended without settling (the gateway stopped serving it, or a bug): unknown
        when a try was made, released otherwise."""
        if self.settled:
            return
        if attempts:
            error = UpstreamReset("the gateway stopped serving the request")
            await self._keep_failure(error, "after the request was sent")
        else:
            await self._release()

    async def _keep_failure(self, error: GatewayError, when: str) -> None:
        message = (
            f"the first request with this {self.keeper.config.header} ended in {error.code} {when}: its outcome is "
            "unknown (the upstream may have processed it), so the gateway does not send it again; "
            f"send it anew with a new key. First answer: {error.message}"
        )
        record = replace(
            self.record, state=KEPT, failure=error.code, status=error.status, message=message, unknown=True
        )
        await self._keep(record)

    async def _keep(self, record: Record) -> None:
        self.settled = True
        await self.keeper.store.finish(self.scope, record, self.keeper.config.ttl)

    async def _release(self) -> None:
        self.settled = True
        await self.keeper.store.release(self.scope, self.record.token)
        self.count("released")


class Keeper:
    """One route's ``idempotency`` block, bound to the process's store and the route's retry rules."""

    def __init__(
        self,
        config: IdempotencySpec,
        upstream: str,
        route: str,
        store: Store,
        retry: RetryPolicy,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.upstream = upstream
        self.route = route
        self.store = store
        self.retry = retry
        self.clock = clock

    @property
    def limit(self) -> int:
        """The largest answer body kept for replay."""
        return self.store.max_body

    def not_processed(self, outcome: Outcome, status: int) -> bool:
        return status in NOT_PROCESSED_STATUSES or self.retry.not_processed(outcome)

    async def claim(
        self,
        method: str,
        target: str,
        headers: Mapping[str, str],
        body: bytes | None,
        remaining: float,
        count: Count,
    ) -> Claim | None:
        """Claim the request's key, or find what it kept. None: no key (and none required).

        ``body`` is the request body held in memory (``b""`` for none), None when it streams.
        Raises BadRequest (key malformed or missing where required, body not held),
        IdempotencyConflict (in flight) and IdempotencyMismatch (another request)."""
        name = self.config.header
        key = read_key(headers, name)
        if key is None:
            if self.config.required:
                raise BadRequest(f"this route needs an {name} header (one key per operation, reused on every retry)")
            return None
        if body is None:
            raise BadRequest(
                f"a request with {name} must have a body no larger than retry.max_replay_body, so that a repeat can "
                "be compared with it"
            )
        auth = headers.get("authorization")
        scope = _sha(
            self.upstream.encode(),
            self.route.encode(),
            key.encode(),
            b"-" if auth is None else b"auth:" + auth.encode("utf-8", "surrogatepass"),
        )
        fingerprint = _sha(method.encode(), target.encode("utf-8", "surrogatepass"), body)
        record = Record(FLIGHT, fingerprint, secrets.token_hex(16), until=self.clock() + remaining + FLIGHT_SLACK)
        found = await self.store.claim(scope, record, self.config.ttl)
        if found is None:
            count("new")
            return Claim(self, scope, record, count)
        if found.fingerprint != fingerprint:
            count("mismatch")
            raise IdempotencyMismatch(
                f"this {name} was first used with another request (method, path or body differ): a key names one "
                "operation; use a new key for a new request"
            )
        if found.state == FLIGHT and found.until > self.clock():
            count("conflict")
            raise IdempotencyConflict(
                f"a request with this {name} is still in flight: ask again after Retry-After to get its answer",
                retry_after=CONFLICT_RETRY_AFTER,
            )
        count("replayed")
        return Claim(self, scope, record, count, replay=self._replay(found), settled=True)

    def _replay(self, found: Record) -> Shared | GatewayError:
        if found.state == FLIGHT:  # its gateway stopped before recording an outcome
            return UpstreamReset(
                f"the first request with this {self.config.header} was in flight in a gateway that stopped before "
                "recording its outcome: the outcome is unknown (the upstream may have processed it), so the gateway "
                "does not send it again; send it anew with a new key"
            )
        if found.failure is not None:
            error = _FAILURES.get(found.failure, UpstreamReset)(found.message)
            return error
        headers = list(found.headers)
        if found.unknown:
            headers.append(("x-gateway-idempotency-outcome", "unknown"))
        if found.omitted:
            headers.append(("x-gateway-idempotency-body", "omitted"))
        headers.append(("x-gateway-idempotency", "replayed"))
        return Shared(found.status, found.reason, CIMultiDict(headers), found.body, (), "", found.attempts)


_FAILURES: dict[str, type[GatewayError]] = {"upstream_reset": UpstreamReset, "upstream_timeout": UpstreamTimeout}
