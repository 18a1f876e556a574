"""Upstream connections: how the gateway connects to each upstream, and keeping that warm.

Owns, per upstream, the aiohttp ``ClientSession`` and its connector: one keep-alive pool, TLS
verified (against the system's CAs, or ``tls.ca_file``), an optional client certificate
(``tls.cert_file``/``key_file``), an optional egress HTTP proxy (``proxy:``, resolved by the
config); no cookie jar, no decompression, no redirects followed, ``trust_env`` off (nothing is
read from the environment here, not even ``.netrc``). And the ``pool:`` policy:

- ``idle_timeout``: a pooled connection unused this long is closed and never written on again
  (aiohttp checks the age before each reuse, and its cleanup closes it);
- ``preconnect``: connections opened when the pool is made (at start, and when a reload gives
  the upstream a new pool), before any request needs one;
- ``keep_warm``: while traffic is quiet the pool keeps that many connections open. A warm
  connection that nears ``idle_timeout`` unused is replaced: a new connection is opened first,
  then the old one is closed by the gateway. No request is sent to keep a connection alive.

**The stale-connection race.** An upstream closes a connection that has been idle for its own
limit. A request written on that connection just as the upstream closes it is lost: aiohttp
resends a GET by itself (counted as a ``stale-connection`` retry), but a POST (a WhatsApp send)
cannot be resent safely, so it fails as ``upstream_reset``. The race only exists when the
gateway may write on a connection older than the upstream's limit. Here it never does: a
connection idle ``idle_timeout`` is never reused, ``idle_timeout`` defaults below the upstreams'
documented limits (README), and keep-warm replaces a warm connection before ``idle_timeout``
instead of resetting its clock (a connection the gateway only holds, never uses, is never put
back as if it had just carried a request).

The keep-warm decision is ``plan()``: pure, ages in, what to open and close out, tested on a
fake clock. ``Pool`` runs it: it reads the connector's idle connections, opens, retires, sleeps.

**aiohttp internals.** aiohttp has no public API to open a connection into a pool or to read the
ages of pooled connections. ``WarmConnector`` (a ``TCPConnector`` in ``gateway.aiohttp_compat``, the
one module that touches aiohttp's private names) does both; ``tests/test_aiohttp_compat.py`` and
``tests/test_pool.py::test_the_aiohttp_internals_the_pool_uses_are_there`` fail if a release
changes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp
from yarl import URL

from .aiohttp_compat import WarmConnector, aiohttp_clock
from .logs import event, redact_text
from .tls import tls_context

if TYPE_CHECKING:
    from .config.spec import PoolSpec as PoolPolicy
    from .config.spec import TlsSpec

__all__ = ["Plan", "Pool", "WarmConnector", "plan"]

_log = logging.getLogger("gateway")
_BACKOFF_MAX = 60.0  # seconds between warm connects while they fail


def _file_stamp(path: str | None) -> tuple[str, int, int] | None:
    """Path, mtime and size: a rotated certificate makes a reload build a new pool."""
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return (path, 0, 0)
    return (path, st.st_mtime_ns, st.st_size)


# --------------------------------------------------------------------------- the keep-warm plan


@dataclass(frozen=True, slots=True)
class Plan:
    """What keep-warm does now: open ``open`` connections; then close the idle connections at
    ``retire`` (indexes into the ages given), or only those at ``expired`` if an open failed;
    look again in ``wake_in`` seconds."""

    open: int
    retire: tuple[int, ...]
    expired: tuple[int, ...]
    wake_in: float


def margin(idle_timeout: float) -> float:
    """How long before ``idle_timeout`` a warm connection is replaced: a tenth, 50 ms to 5 s."""
    return min(5.0, max(0.05, idle_timeout / 10))


def plan(idle_ages: Sequence[float], busy: int, keep_warm: int, idle_timeout: float) -> Plan:
    """Decide one keep-warm step.

    ``idle_ages``: seconds since each pooled idle connection last carried a request (or was
    opened); ``busy``: connections carrying a request now. A connection idle ``idle_timeout``
    is dead weight (never reused); one idle past ``idle_timeout - margin`` is due for
    replacement. Opens enough for ``busy`` + fresh idle to reach ``keep_warm``.
    """
    early = margin(idle_timeout)
    due = idle_timeout - early
    expired = tuple(i for i, age in enumerate(idle_ages) if age >= idle_timeout)
    retire = tuple(i for i, age in enumerate(idle_ages) if age >= due)
    fresh = [age for age in idle_ages if age < due]
    wanted = max(0, keep_warm - busy - len(fresh))
    wake = min([early, *(due - age for age in fresh)])
    return Plan(wanted, retire, expired, max(wake, 0.01))


# --------------------------------------------------------------------------- the pool


@dataclass(frozen=True, slots=True)
class Settings:
    """What a session is built from: a reload that changes any of it gives the upstream a new pool."""

    url: str
    idle_timeout: float
    tls: Any  # the Tls block (frozen, compared by value), or None
    tls_files: tuple[tuple[str, int, int] | None, ...]
    proxy: URL | None = field(repr=False)  # may hold the proxy's password


class Pool:
    """One upstream's connection pool: its session, and the task that preconnects and keeps it warm.

    ``start()`` begins preconnect and keep-warm in the background (once); ``ready(timeout)``
    waits for the preconnect; ``update(policy)`` takes a reload's ``keep_warm``/``preconnect``;
    ``close()`` stops the task and closes every connection.
    """

    def __init__(
        self,
        name: str,
        url: URL,
        policy: PoolPolicy,
        tls: TlsSpec | None,
        proxy: URL | None,
        connect_timeout: float,
        request_class: type[aiohttp.ClientRequest] = aiohttp.ClientRequest,  # gateway.resends counts sends
        clock: Callable[[], float] = aiohttp_clock,
        sleep: Callable[[float], Any] = asyncio.sleep,
    ) -> None:
        self.name = name
        self.url = url
        self.policy = policy
        self.proxy = proxy
        self.connect_timeout = connect_timeout
        self.settings = settings_for(url, policy, tls, proxy)
        self.opened = 0  # connections the pool opened by itself (preconnect and keep-warm)
        self.failed = 0  # of which failed
        self.closed_early = 0  # idle connections the upstream closed before idle_timeout
        self._warned_early = False
        self._clock = clock
        self._sleep = sleep
        self._task: asyncio.Task[None] | None = None
        self._preconnected = asyncio.Event()
        self._failing = False
        self.connector = WarmConnector(
            limit=0,
            ttl_dns_cache=60,
            keepalive_timeout=policy.idle_timeout,
            ssl=tls_context(tls) if tls is not None else True,
        )
        self.session = aiohttp.ClientSession(
            request_class=request_class,
            connector=self.connector,
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            trust_env=False,
            proxy=proxy,  # credentials in its userinfo become Proxy-Authorization (CONNECT, or each plain request)
            timeout=aiohttp.ClientTimeout(total=None),
            max_field_size=32 * 1024,
            max_line_size=16 * 1024,
        )

    def fits(self, url: URL, policy: PoolPolicy, tls: TlsSpec | None, proxy: URL | None) -> bool:
        """Whether a reload to these settings may keep this pool (and its connections)."""
        return self.settings == settings_for(url, policy, tls, proxy)

    def update(self, policy: PoolPolicy, connect_timeout: float) -> None:
        """A reload kept this pool: take the new ``keep_warm`` (and restart keep-warm if it had stopped)."""
        self.policy = policy
        self.connect_timeout = connect_timeout
        if self._task is not None and self._task.done() and policy.keep_warm > 0 and not self.session.closed:
            self._task = asyncio.get_running_loop().create_task(self._keep_warm())

    def start(self) -> None:
        """Preconnect, then keep warm, in the background. Does nothing the second time."""
        if self._task is None and not self.session.closed:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def ready(self, timeout: float) -> None:
        """Wait up to ``timeout`` for the preconnect to finish (successfully or not)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._preconnected.wait()

    def counts(self) -> tuple[int, int]:
        """(idle, busy) connections now."""
        return len(self.connector.idle()), self.connector.busy

    def stop_warming(self) -> None:
        """No more preconnect or keep-warm (a reload retired this pool); open connections stay for
        the requests still in flight."""
        if self._task is not None:
            self._task.cancel()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.session.close()

    # ------------------------------------------------------------------ the background task

    async def _run(self) -> None:
        try:
            idle, busy = self.counts()
            await self._open(max(self.policy.preconnect, self.policy.keep_warm) - idle - busy)
        finally:
            self._preconnected.set()
        if self.policy.keep_warm > 0:
            await self._keep_warm()

    async def _keep_warm(self) -> None:
        backoff = 0.0
        while self.policy.keep_warm > 0 and not self.session.closed:
            now = self._clock()
            self._closed_by_upstream(now)
            idle = self.connector.idle()
            ages = [now - t0 for _, t0 in idle]
            step = plan(ages, self.connector.busy, self.policy.keep_warm, self.policy.idle_timeout)
            ok = await self._open(step.open)
            for i in step.retire if ok else step.expired:
                self.connector.retire(*idle[i])
            if ok:
                backoff = 0.0
                wake = step.wake_in
            else:  # the upstream cannot be reached: look again later, less often while it lasts
                backoff = min(_BACKOFF_MAX, max(2 * backoff, margin(self.policy.idle_timeout)))
                wake = backoff
            await self._sleep(wake)

    def _closed_by_upstream(self, now: float) -> None:
        """Count (and say once) that the upstream closes idle connections sooner than ``idle_timeout``:
        its own limit is shorter, and a request may meet its close (README, the stale-connection race)."""
        for proto, released in self.connector.dead():
            self.connector.retire(proto, released)
            idle_for = now - released
            if idle_for >= self.policy.idle_timeout:
                continue
            self.closed_early += 1
            if not self._warned_early:
                self._warned_early = True
                event(
                    "upstream pool: the upstream closed an idle connection before pool.idle_timeout; "
                    "set idle_timeout below its limit",
                    logging.WARNING,
                    upstream=self.name,
                    idle_s=round(idle_for, 1),
                    idle_timeout_s=self.policy.idle_timeout,
                )

    async def _open(self, count: int) -> bool:
        """Open ``count`` connections into the pool, one after the other. False if one failed."""
        for _ in range(max(0, count)):
            loop = asyncio.get_running_loop()
            req = aiohttp.ClientRequest("GET", self.url, loop=loop, proxy=self.proxy, ssl=True)
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.connect_timeout)
            try:
                async with asyncio.timeout(self.connect_timeout):
                    await self.connector.open_idle(req, timeout)
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                self.failed += 1
                self._report(exc)
                return False
            except Exception:  # a bug: keep-warm must not die of it; it retries with backoff
                self.failed += 1
                _log.exception("upstream pool: unexpected error opening a warm connection")
                return False
            self.opened += 1
            if self._failing:
                self._failing = False
                event("upstream pool: connected again", upstream=self.name)
        return True

    def _report(self, exc: BaseException) -> None:
        # aiohttp's proxy errors quote the proxy URL, credentials included: hidden here already
        why = redact_text(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
        if not self._failing:
            self._failing = True
            event(
                "upstream pool: cannot open a warm connection; retrying with backoff",
                logging.WARNING,
                upstream=self.name,
                error=why,
            )
        else:
            _log.debug("warm connection failed", extra={"fields": {"upstream": self.name, "error": why}})


def settings_for(url: URL, policy: PoolPolicy, tls: TlsSpec | None, proxy: URL | None) -> Settings:
    files = () if tls is None else tuple(_file_stamp(p) for p in (tls.ca_file, tls.cert_file, tls.key_file))
    return Settings(str(url), policy.idle_timeout, tls, files, proxy)
