"""Gemini quotas kept before Google enforces them (contract §2 ``quota``).

Owns, per upstream and per value of a route's ``key`` path parameter (the model): requests per
minute (``rpm``), tokens per minute (``tpm``) and requests per day (``rpd``, the day ending at
midnight America/Los_Angeles, as Google's does). Minute windows slide over 60 one-second slots;
the day is a counter per Los Angeles date (``zoneinfo``, so daylight saving time is right). The use
is counted per upstream and key value, whatever the route: ``generateContent`` and
``streamGenerateContent`` of one model spend one quota, as Google counts them; each route checks
its own ``quota`` limits against it.

- ``QuotaKeeper.admit`` lets a request through while every window has room, else waits up to
  ``max_wait`` for room, else raises ``QuotaExhausted`` (429 ``quota_exhausted``) with Retry-After
  and a ``google.rpc.QuotaFailure`` naming the window in ``details``.
- ``Ticket.settle`` charges what the exchange turned out to cost once it ends: the tokens an answer
  reported (``TokenMeter`` reads ``usageMetadata.totalTokenCount`` out of JSON and server-sent
  events as they pass; the last count wins, because Gemini's stream chunks carry running totals,
  so a stream cut short counts what was reported), and every try past the first (a retry reaches
  Google and counts there too). An upstream 429 whose body carries a QuotaFailure updates the
  view when this gateway's own use of the named window has reached the violation's ``quotaValue``
  (the 429 is explained by its traffic): the window is closed for the answer's RetryInfo delay (at
  most the window's span), and its limit is lowered to ``quotaValue`` when that is smaller than
  configured (for 24 hours). A 429 that the gateway's own use does not explain (Google shedding
  shared capacity, another client of the project, a partial throttle) changes nothing: it goes
  back to the caller, and the next request is sent. The scenario suite showed why: closing on
  every 429 refused 90 % of generations during a partial throttle that let 70 % through directly.
  While a window is closed (or a learned limit spent), one request passes every ``PROBE_EVERY``
  seconds as long as the configured limits have room; a success forgets the closure and the learned
  limits, as a breaker's probe closes it (local view only: a Redis-shared closure is not probed).
- With a Redis cache store the windows live in Redis (one Lua script per admission, timed by
  Redis's clock), shared by every replica; while Redis is unavailable each replica counts alone.

Time comes from an injected wall clock (``clock``, seconds since the epoch) and sleeps from an
injected ``sleep``, so tests cross minute and day boundaries without waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import math
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

from cachetools import Cache, LRUCache

from .config import QuotaSpec
from .errors import QuotaExhausted
from .redislink import RedisLink, StoreUnavailable

__all__ = ["PACIFIC", "QuotaKeeper", "Ticket", "TokenMeter", "Usage", "day_of", "new_usages", "quota_failure"]

PACIFIC = ZoneInfo("America/Los_Angeles")
WINDOWS = ("rpm", "tpm", "rpd")
MINUTE = 60
LEARNED_FOR = 24 * 3600.0  # a limit learned from Google's 429 holds this long
PROBE_EVERY = 2.0  # while a 429 holds a window closed (or a learned limit is spent): one request through per this

EXPORTED_KEYS = 100  # gateway_quota_remaining shows at most this many key values per route
_EPSILON = 1e-6

# What each window is, in Google's words (QuotaFailure.violations[].quotaId)
_SPANS = {"rpm": ("Requests", "Minute"), "tpm": ("Tokens", "Minute"), "rpd": ("Requests", "Day")}


def day_of(now: float) -> tuple[str, float]:
    """The Los Angeles date of wall time ``now`` (``YYYY-MM-DD``) and the seconds until its midnight."""
    local = dt.datetime.fromtimestamp(now, PACIFIC)
    midnight = dt.datetime.combine(local.date() + dt.timedelta(days=1), dt.time(0), tzinfo=PACIFIC)
    return local.date().isoformat(), max(0.0, midnight.timestamp() - now)


class TokenMeter:
    """``usageMetadata.totalTokenCount`` read from an answer's bytes as they pass, whatever the
    chunking: the last count seen wins (a JSON answer has one; a stream carries running totals).

    A count inside the model's own text cannot match: there its quotes are escaped (``\\"``)."""

    _COUNT = re.compile(rb'"totalTokenCount"\s*:\s*(\d+)')
    _KEEP = 64  # bytes carried to the next chunk, so a key split across chunks is still found

    __slots__ = ("_tail", "tokens")

    def __init__(self) -> None:
        self.tokens: int | None = None
        self._tail = b""

    def feed(self, chunk: bytes) -> None:
        data = self._tail + chunk
        keep_from = max(0, len(data) - self._KEEP)
        for match in self._COUNT.finditer(data):
            if match.end() == len(data):  # the number may go on in the next chunk
                keep_from = min(keep_from, match.start())
                break
            self.tokens = int(match.group(1))
        self._tail = data[keep_from:]

    def close(self) -> None:
        """The answer ended: a count at its very end is complete."""
        match = None
        for match in self._COUNT.finditer(self._tail):  # noqa: B007 - the last one
            pass
        if match is not None:
            self.tokens = int(match.group(1))
        self._tail = b""


@dataclass(slots=True)
class Usage:
    """One key's use: per-second (second, requests, tokens) over the last minute, requests per LA
    day, windows closed by an upstream 429 until a wall time, and limits learned from Google."""

    slots: deque[list[int]] = field(default_factory=deque)
    day: str = ""
    day_requests: int = 0
    closed: dict[str, float] = field(default_factory=dict)
    learned: dict[str, tuple[int, float]] = field(default_factory=dict)  # window -> (limit, until)
    probe_next: float = 0.0  # when the next probe may pass what Google's 429 taught (closed, learned)
    seen: dict[str, int] | None = None  # shared mode: the counts Redis last reported

    def _prune(self, now: float) -> None:
        oldest = math.floor(now) - MINUTE
        while self.slots and self.slots[0][0] <= oldest:
            self.slots.popleft()
        day, _ = day_of(now)
        if day != self.day:
            self.day, self.day_requests = day, 0

    def add(self, now: float, requests: int = 0, tokens: int = 0) -> None:
        self._prune(now)
        second = math.floor(now)
        if not self.slots or self.slots[-1][0] != second:
            self.slots.append([second, 0, 0])
        self.slots[-1][1] += requests
        self.slots[-1][2] += tokens
        self.day_requests += requests

    def used(self, now: float) -> dict[str, int]:
        self._prune(now)
        return {
            "rpm": sum(s[1] for s in self.slots),
            "tpm": sum(s[2] for s in self.slots),
            "rpd": self.day_requests,
        }

    def limits(self, config: QuotaSpec, now: float) -> dict[str, int]:
        """The configured limits, each lowered by a limit learned from Google while that holds."""
        out = {}
        for window in WINDOWS:
            limit = getattr(config, window)
            learned = self.learned.get(window)
            if learned is not None and learned[1] > now:
                limit = learned[0] if limit is None else min(limit, learned[0])
            if limit is not None:
                out[window] = limit
        return out

    def wait(self, limits: dict[str, int], now: float, closed: bool = True) -> tuple[float, str]:
        """Seconds until every window has room for one more request (0.0: now), and the window
        that waits longest. ``closed=False`` ignores the windows a 429 closed."""
        used = self.used(now)
        worst, which = 0.0, ""
        for window, limit in limits.items():
            wait = 0.0
            if used[window] >= limit:
                if window == "rpd":
                    wait = day_of(now)[1]
                else:
                    column = 1 if window == "rpm" else 2
                    wait = _slide(list(self.slots), column, used[window], limit, now)
            if closed:
                wait = max(wait, self.closed.get(window, 0.0) - now)
            if wait > worst:
                worst, which = wait, window
        return worst, which


def _slide(slots: list[list[int]], column: int, used: int, limit: int, now: float) -> float:
    """Seconds until the oldest seconds of the minute slide out and ``used`` drops below ``limit``."""
    for second, *counts in slots:
        used -= counts[column - 1]
        if used <= limit - 1:
            return max(0.0, second + MINUTE - now)
    return float(MINUTE)


def quota_failure(key_name: str | None, key: str | None, window: str, limit: int, span_s: float) -> dict[str, Any]:
    """The ``google.rpc.QuotaFailure`` detail naming the exhausted window, in Google's field names."""
    what, span = _SPANS[window]
    per_key = f"Per{key_name[:1].upper()}{key_name[1:]}" if key_name else ""
    dimensions = {key_name: key} if key_name and key is not None else {}
    unit = "tokens" if window == "tpm" else "requests"
    return {
        "@type": "type.googleapis.com/google.rpc.QuotaFailure",
        "violations": [
            {
                "subject": "gateway",
                "description": f"{window}: {limit} {unit} per {span.lower()}"
                + (f" for {key_name} {key}" if dimensions else "")
                + f", kept by the gateway before Google's own quota; room again in {math.ceil(span_s)}s",
                "quotaMetric": f"gateway/{what.lower()}",
                "quotaId": f"Gateway{what}Per{span}{per_key}",
                "quotaDimensions": dimensions,
                "quotaValue": str(limit),
            }
        ],
    }


def _violations(body: bytes) -> Iterator[tuple[str, int | None]]:
    """(window, quotaValue) of each QuotaFailure violation in a Google 429 body."""
    try:
        details = json.loads(body)["error"]["details"]
    except (ValueError, UnicodeDecodeError, KeyError, TypeError):
        return
    for detail in details if isinstance(details, list) else ():
        if not isinstance(detail, dict) or not str(detail.get("@type", "")).endswith("google.rpc.QuotaFailure"):
            continue
        for v in detail.get("violations") or ():
            if not isinstance(v, dict):
                continue
            name = f"{v.get('quotaId', '')} {v.get('quotaMetric', '')}".lower()
            window = "rpd" if "perday" in name else "tpm" if "token" in name else "rpm" if "perminute" in name else ""
            if not window:
                continue
            value = v.get("quotaValue")
            yield window, int(value) if isinstance(value, (str, int)) and str(value).isdigit() else None


def _retry_delay(body: bytes) -> float | None:
    from .outcomes import retry_after_seconds

    return retry_after_seconds("gemini", 429, None, body)


# One admission in Redis, on Redis's clock. KEYS: requests per second (hash), tokens per second
# (hash), requests this LA day, windows closed until (hash). ARGV: rpm, tpm, rpd (0: none), seconds
# until LA midnight. Returns {admitted 0/1, wait, window, requests/min, tokens/min, requests/day}.
_ADMIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local sec = math.floor(now)
local function window(key, limit)
  local data = redis.call('HGETALL', key)
  local rows, total = {}, 0
  for i = 1, #data, 2 do
    local s, n = tonumber(data[i]), tonumber(data[i + 1])
    if s <= sec - 60 then redis.call('HDEL', key, data[i]) else total = total + n; rows[#rows + 1] = {s, n} end
  end
  if limit <= 0 or total < limit then return total, 0 end
  table.sort(rows, function(a, b) return a[1] < b[1] end)
  local left = total
  for _, row in ipairs(rows) do
    left = left - row[2]
    if left <= limit - 1 then return total, math.max(0, row[1] + 60 - now) end
  end
  return total, 60
end
local reqs, wait_r = window(KEYS[1], tonumber(ARGV[1]))
local toks, wait_t = window(KEYS[2], tonumber(ARGV[2]))
local day = tonumber(redis.call('GET', KEYS[3]) or '0')
local waits = {rpm = wait_r, tpm = wait_t, rpd = 0}
if tonumber(ARGV[3]) > 0 and day >= tonumber(ARGV[3]) then waits.rpd = tonumber(ARGV[4]) end
local closed = redis.call('HGETALL', KEYS[4])
for i = 1, #closed, 2 do
  local left = tonumber(closed[i + 1]) - now
  if left > (waits[closed[i]] or 0) then waits[closed[i]] = left end
end
local worst, which = 0, ''
for _, name in ipairs({'rpm', 'tpm', 'rpd'}) do
  if waits[name] > worst then worst, which = waits[name], name end
end
if worst > 0 then return {0, tostring(worst), which, reqs, toks, day} end
redis.call('HINCRBY', KEYS[1], tostring(sec), 1)
redis.call('PEXPIRE', KEYS[1], 61000)
redis.call('INCR', KEYS[3])
redis.call('PEXPIRE', KEYS[3], math.ceil(tonumber(ARGV[4]) * 1000) + 3600000)
return {1, '0', '', reqs + 1, toks, day + 1}
"""

# Charge tries past the first and the tokens an answer reported. KEYS as _ADMIT's first three.
# ARGV: extra requests, tokens, seconds until LA midnight.
_CHARGE = """
local t = redis.call('TIME')
local sec = tostring(math.floor(tonumber(t[1]) + tonumber(t[2]) / 1000000))
if tonumber(ARGV[1]) > 0 then
  redis.call('HINCRBY', KEYS[1], sec, ARGV[1])
  redis.call('PEXPIRE', KEYS[1], 61000)
  redis.call('INCRBY', KEYS[3], ARGV[1])
  redis.call('PEXPIRE', KEYS[3], math.ceil(tonumber(ARGV[3]) * 1000) + 3600000)
end
if tonumber(ARGV[2]) > 0 then
  redis.call('HINCRBY', KEYS[2], sec, ARGV[2])
  redis.call('PEXPIRE', KEYS[2], 61000)
end
return 1
"""

# Close a window for ARGV[2] seconds on Redis's clock (an upstream 429 said so). KEYS[1]: closed hash.
_CLOSE = """
local t = redis.call('TIME')
local until_ = tonumber(t[1]) + tonumber(t[2]) / 1000000 + tonumber(ARGV[2])
local old = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
if until_ > old then redis.call('HSET', KEYS[1], ARGV[1], tostring(until_)) end
redis.call('PEXPIRE', KEYS[1], math.ceil(tonumber(ARGV[2]) * 1000) + 1000)
return 1
"""


def new_usages(max_keys: int = 1000) -> LRUCache[str, Usage]:
    """One upstream's use per key value: an LRU of ``max_keys`` (an evicted key starts again empty)."""
    return LRUCache(maxsize=max_keys)


class QuotaKeeper:
    """The ``quota`` block of one route: its windows per key value, local or shared through Redis."""

    def __init__(
        self,
        config: QuotaSpec,
        name: str,
        link: RedisLink | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        usages: LRUCache[str, Usage] | None = None,
    ) -> None:
        self.config = config
        self.name = name  # the upstream: the Redis key space (shared by its routes)
        self.link = link
        self.clock = clock
        self._sleep = sleep
        self._usage: LRUCache[str, Usage] = usages if usages is not None else new_usages()
        if link is not None:
            self._admit_script = link.client.register_script(_ADMIT)
            self._charge_script = link.client.register_script(_CHARGE)
            self._close_script = link.client.register_script(_CLOSE)

    def usage(self, key: str | None) -> Usage:
        """This process's view of ``key`` (made empty on first use)."""
        name = key if key is not None else "-"
        found = self._usage.get(name)
        if found is None:
            found = self._usage[name] = Usage()
        return found

    def key_of(self, params: dict[str, str]) -> str | None:
        return params.get(self.config.key) if self.config.key is not None else None

    async def admit(self, key: str | None, upstream: str) -> Ticket:
        """Count one request for ``key`` when every window has room, waiting up to ``max_wait``.
        Raises QuotaExhausted (Retry-After: seconds until room; a QuotaFailure in ``details``)."""
        end = self.clock() + self.config.max_wait
        while True:
            wait, window = await self._try(key)
            if wait <= 0:
                return Ticket(self, key)
            if self.clock() + wait > end + _EPSILON:
                raise self._exhausted(key, window, wait, upstream)
            await self._sleep(wait)

    def _exhausted(self, key: str | None, window: str, wait: float, upstream: str) -> QuotaExhausted:
        limit = self.usage(key).limits(self.config, self.clock()).get(window, 0)
        who = f" for {self.config.key} {key!r}" if self.config.key and key is not None else ""
        unit = "tokens" if window == "tpm" else "requests"
        span = "day (Pacific time)" if window == "rpd" else "minute"
        return QuotaExhausted(
            f"quota {window} of {limit} {unit} per {span}{who} is used up: no room within "
            f"max_wait ({self.config.max_wait:g}s); room again in {math.ceil(wait)}s",
            upstream=upstream,
            retry_after=wait,
            details=(quota_failure(self.config.key, key, window, limit, wait),),
        )

    async def _try(self, key: str | None) -> tuple[float, str]:
        usage = self.usage(key)
        now = self.clock()
        limits = usage.limits(self.config, now)
        if self.link is not None:
            try:
                return await self._try_shared(key, limits, now)
            except StoreUnavailable:
                pass
        wait, window = usage.wait(limits, now)
        if wait > 0 and (usage.closed or usage.learned):
            # What Google's 429 taught holds the request back: let one through every PROBE_EVERY
            # while the configured limits have room. Its success shows the lesson wrong (see
            # ``reopen``): like a breaker's probe, so a closure never outlasts what caused it.
            configured = {w: v for w in WINDOWS if (v := getattr(self.config, w)) is not None}
            if usage.wait(configured, now, closed=False)[0] <= 0:
                if now >= usage.probe_next:
                    usage.probe_next = now + PROBE_EVERY
                    wait = 0.0
                else:
                    wait = min(wait, usage.probe_next - now)
        if wait <= 0:
            usage.add(now, requests=1)
        return wait, window

    def reopen(self, key: str | None) -> None:
        """A request the upstream answered with success: forget the closed windows and learned
        limits of ``key`` (they were wrong, or are over)."""
        usage = self.usage(key)
        usage.closed.clear()
        usage.learned.clear()

    def _keys(self, key: str | None, now: float) -> list[str]:
        assert self.link is not None
        k, name, value = self.link.key, self.name, key if key is not None else "-"
        return [k("q", name, value, "r"), k("q", name, value, "t"), k("q", name, value, "d", day_of(now)[0])]

    async def _try_shared(self, key: str | None, limits: dict[str, int], now: float) -> tuple[float, str]:
        assert self.link is not None
        keys = [*self._keys(key, now), self.link.key("q", self.name, key if key is not None else "-", "c")]
        args = [limits.get("rpm", 0), limits.get("tpm", 0), limits.get("rpd", 0), day_of(now)[1]]
        admitted, wait, window, reqs, toks, day = await self.link.script("quota", self._admit_script, keys, args)
        self.usage(key).seen = {"rpm": int(reqs), "tpm": int(toks), "rpd": int(day)}
        window = window.decode() if isinstance(window, bytes) else str(window)
        return (0.0, "") if int(admitted) else (float(wait), window)

    async def charge(self, key: str | None, tokens: int, extra_requests: int) -> None:
        """Count ``tokens`` and tries past the first against ``key``'s windows."""
        if tokens <= 0 and extra_requests <= 0:
            return
        now = self.clock()
        if self.link is not None:
            try:
                await self.link.script(
                    "quota", self._charge_script, self._keys(key, now), [extra_requests, tokens, day_of(now)[1]]
                )
                seen = self.usage(key).seen
                if seen is not None:
                    seen["tpm"] += max(0, tokens)
                    seen["rpm"] += max(0, extra_requests)
                    seen["rpd"] += max(0, extra_requests)
                return
            except StoreUnavailable:
                pass
        self.usage(key).add(now, requests=max(0, extra_requests), tokens=max(0, tokens))

    async def observe(self, key: str | None, body: bytes) -> None:
        """An upstream 429: close each window its QuotaFailure names for the RetryInfo delay (to
        the window's end when it gives none) and learn a smaller limit from ``quotaValue``."""
        now = self.clock()
        delay = _retry_delay(body)
        usage = self.usage(key)
        used = usage.used(now)
        for window, value in _violations(body):
            if value is not None and used.get(window, 0) < value:
                # Our own use of the window is under the value Google names: the 429 is not explained
                # by this gateway's traffic (load shedding of shared capacity, another client of the
                # project, a partial throttle). Closing the window on it would refuse requests Google
                # may take; the 429 itself goes back to the caller, and the next request asks again.
                continue
            window_left = day_of(now)[1] if window == "rpd" else float(MINUTE)
            closed_for = delay if delay is not None else window_left
            usage.closed[window] = max(usage.closed.get(window, 0.0), now + min(closed_for, window_left))
            configured = getattr(self.config, window)
            if value is not None and (configured is None or value < configured):
                usage.learned[window] = (value, now + LEARNED_FOR)
            if self.link is not None:
                closed = self.link.key("q", self.name, key if key is not None else "-", "c")
                with contextlib.suppress(StoreUnavailable):
                    await self.link.script("quota", self._close_script, [closed], [window, closed_for])

    def remaining(self) -> list[tuple[str, str, int, int]]:
        """(key value, window, remaining, limit) for the most recently used keys (at most
        ``EXPORTED_KEYS``); shared mode reports the counts Redis last returned."""
        now = self.clock()
        out = []
        shared = self.link is not None and self.link.up
        for name in reversed(list(self._usage.keys())[-EXPORTED_KEYS:]):
            usage: Usage = Cache.__getitem__(self._usage, name)  # a peek: LRUCache's own would reorder
            used = usage.seen if shared and usage.seen is not None else usage.used(now)
            for window, limit in usage.limits(self.config, now).items():
                out.append((name, window, max(0, limit - used[window]), limit))
        return out

    def snapshot(self) -> dict[str, Any]:
        """For /health and the status page: ``windows`` [{key, window, remaining, limit}]."""
        shared = self.link is not None and self.link.up
        return {
            "shared": shared,
            "max_wait_s": self.config.max_wait,
            "windows": [
                {"key": key, "window": window, "remaining": left, "limit": limit}
                for key, window, left, limit in self.remaining()
            ],
        }


class Ticket:
    """One admitted request: settles its cost once, when its exchange ends."""

    __slots__ = ("keeper", "key", "meter", "settled")

    def __init__(self, keeper: QuotaKeeper, key: str | None) -> None:
        self.keeper = keeper
        self.key = key
        self.meter = TokenMeter()
        self.settled = False

    async def settle(self, tries: int, status: int | None, error_body: bytes) -> None:
        """Charge the tokens the meter read and the tries past the first; learn from a 429."""
        if self.settled:
            return
        self.settled = True
        self.meter.close()
        await self.keeper.charge(self.key, self.meter.tokens or 0, max(0, tries - 1))
        if status == 429 and error_body:
            await self.keeper.observe(self.key, error_body)
        elif status is not None and status < 400:
            self.keeper.reopen(self.key)
