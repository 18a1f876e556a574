"""The gateway process: two listeners, signals, drain and reload.

Owns the lifecycle. ``Gateway.start`` opens the proxy listener (a low-level ``web.Server``: no
router, no path normalisation, the raw target reaches the handler) and the admin listener (its
own ``AppRunner``), then the signal handlers: SIGHUP reloads, SIGTERM/SIGINT drain —
readyz turns 503, the gateway keeps serving for ``drain.delay`` (the time a load balancer needs
to stop sending), closes the listener, answers any request that still arrives on an open
connection with 503 ``draining``, waits up to ``drain.timeout`` for in-flight requests, and
exits 0. A second signal skips the remaining delay.

Both ports' connections are hardened by ``gateway.listener`` (``HardenedServer``: the ``server:``
block for the proxy port, ``server.admin`` for the admin port). The request path is
``gateway.proxy``; what it and the admin port read of the process is ``gateway.state.State``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .admin import build_admin_app
from .breakersync import BreakerSync
from .cache import ResponseCache
from .cachestore import FallbackStore, MemoryStore, RedisStore, Store
from .config import Config, load_config
from .errors import (
    ConfigError,
)
from .listener import HardenedServer, descriptor_budget
from .logs import configure, event
from .metrics import Metrics
from .nearcache import NearStore
from .proxy import Proxy
from .redislink import RedisLink
from .runtime import Runtime
from .state import State

if TYPE_CHECKING:
    from .breaker import CircuitBreaker

__all__ = ["Gateway", "descriptor_budget"]


# At start, the listeners bind once the upstream pools' preconnects finish, or after this long.
PRECONNECT_WAIT = 1.0


@dataclass(slots=True)
class _Listeners:
    proxy_runner: web.ServerRunner | None = None
    proxy_site: web.TCPSite | None = None
    admin_runner: web.ServerRunner | None = None
    admin_app_runner: web.AppRunner | None = None  # the app's startup and cleanup; never listens itself
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)


class Gateway:
    """One gateway process: build with a loaded config, then ``await run()``."""

    def __init__(self, config: Config, path: str | None = None) -> None:
        self.path = path
        self.metrics = Metrics()
        self.link = _redis_link(config, self.metrics)
        self.sync = BreakerSync(self.link, self._breakers) if self.link is not None else None
        runtime = Runtime(config, hook=self._breaker_moved, link=self.link)
        self.state = State(runtime, self.metrics, build_cache(config, self.metrics, self.link))
        self.metrics.watch_breakers(lambda: self.state.runtime.breakers().values())
        self.metrics.watch_cache(self._cache_size)
        self.metrics.watch_quotas(lambda: self.state.runtime.quotas())
        self.metrics.watch_pools(lambda: [up.pool for up in self.state.runtime.upstreams.values()])
        self.started = False
        self.drain_started = False
        self._listeners = _Listeners()
        self._proxy_server: HardenedServer | None = None
        self._stop = asyncio.Event()
        self._skip_delay = asyncio.Event()
        self._mtime = _mtime(path)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Preconnect upstream pools (waiting up to PRECONNECT_WAIT), then bind both listeners.
        Raises OSError when a port cannot be bound."""
        config = self.state.runtime.config
        await self.state.runtime.start_pools(wait=PRECONNECT_WAIT)
        proxy = Proxy(self.state)
        server = HardenedServer(
            proxy.handle,
            lambda: self.state.runtime.config.server,
            self.metrics.connections,
            self.metrics.connections_closed,
            access_log=None,
        )
        server.fd_cap, nofile = descriptor_budget(config.server.max_connections, config.server.admin.max_connections)
        self._proxy_server = server
        runner = web.ServerRunner(server, handle_signals=False)
        await runner.setup()
        self._listeners.proxy_runner = runner
        site = web.TCPSite(runner, config.listen.host, config.listen.port, reuse_address=True, backlog=1024)
        await site.start()
        self._listeners.proxy_site = site
        await self._start_admin(config)
        self.started = True
        event(
            "gateway started",
            proxy=f"{config.listen.host}:{self.proxy_port}",
            admin=f"{config.admin.listen.host}:{self.admin_port}",
            upstreams=list(self.state.runtime.upstreams),
            config=self.path,
            pid=os.getpid(),
            max_connections=server.max_connections,
            nofile=nofile,
        )
        if server.max_connections < config.server.max_connections:
            event(
                "server.max_connections lowered to what the file descriptor limit allows",
                logging.WARNING,
                configured=config.server.max_connections,
                effective=server.max_connections,
                nofile=nofile,
            )
        if config.watch and self.path:
            self._listeners.tasks.append(asyncio.create_task(self._watch()))
        self._listeners.tasks.append(asyncio.create_task(self._prune_cache()))
        if self.sync is not None:
            self._listeners.tasks.append(asyncio.create_task(self.sync.run()))

    async def _start_admin(self, config: Config) -> None:
        """The admin app behind the same hardened connection handling as the proxy port, with the
        ``server.admin`` limits: its AppRunner runs the app's startup and builds a plain server,
        whose handler and request factory (public attributes) the hardened server takes over."""
        app_runner = web.AppRunner(build_admin_app(self), access_log=None, handle_signals=False)
        await app_runner.setup()
        self._listeners.admin_app_runner = app_runner
        plain = app_runner.server
        assert plain is not None
        server = HardenedServer(
            plain.request_handler,
            lambda: self.state.runtime.config.server.admin,
            self.metrics.admin_connections,
            self.metrics.admin_connections_closed,
            request_factory=plain.request_factory,
            access_log=None,
        )
        server.fd_cap = sys.maxsize  # its connections are set aside by descriptor_budget: only its own cap applies
        runner = web.ServerRunner(server, handle_signals=False)
        await runner.setup()
        self._listeners.admin_runner = runner
        await web.TCPSite(runner, config.admin.listen.host, config.admin.listen.port, reuse_address=True).start()

    @property
    def proxy_port(self) -> int:
        runner = self._listeners.proxy_runner
        return runner.addresses[0][1] if runner and runner.addresses else 0

    @property
    def admin_port(self) -> int:
        runner = self._listeners.admin_runner
        return runner.addresses[0][1] if runner and runner.addresses else 0

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_stop_signal, sig.name)
        loop.add_signal_handler(signal.SIGHUP, lambda: self._spawn(self.reload(source="SIGHUP")))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._listeners.tasks.append(task)
        task.add_done_callback(self._listeners.tasks.remove)

    def _on_stop_signal(self, name: str) -> None:
        if self._stop.is_set():
            event("second stop signal: skipping the rest of the drain delay", signal=name)
            self._skip_delay.set()
            return
        event("stop signal received", signal=name)
        self._stop.set()

    async def run(self) -> None:
        """Start, serve until SIGTERM/SIGINT, drain, close."""
        await self.start()
        self.install_signal_handlers()
        await self._stop.wait()
        await self.drain()

    async def drain(self) -> None:
        """Contract ``drain``: readyz 503, wait delay, stop accepting, finish in-flight, close."""
        drain = self.state.runtime.config.drain
        loop = asyncio.get_running_loop()
        self.drain_started = True
        event("drain: readyz now answers 503; still serving", delay_s=drain.delay, inflight=self.state.inflight)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._skip_delay.wait(), drain.delay)
        if self._listeners.proxy_site is not None:
            await self._listeners.proxy_site.stop()
        self.state.draining = True
        event(
            "drain: listener closed; waiting for in-flight requests",
            inflight=self.state.inflight,
            timeout_s=drain.timeout,
        )
        end = loop.time() + drain.timeout
        while self.state.inflight and loop.time() < end:
            await asyncio.sleep(0.05)
        if self.state.inflight:
            event("drain: timeout reached with requests still in flight", logging.WARNING, inflight=self.state.inflight)
        else:
            event("drain: all in-flight requests finished")
        await self.close()
        event("gateway stopped")

    async def close(self) -> None:
        for task in list(self._listeners.tasks):
            task.cancel()
        if self._listeners.proxy_runner is not None:
            await self._listeners.proxy_runner.cleanup()
        if self._listeners.admin_runner is not None:
            await self._listeners.admin_runner.cleanup()
        if self._listeners.admin_app_runner is not None:
            await self._listeners.admin_app_runner.cleanup()
        await self.state.cache.close()
        await self.state.runtime.close()

    def _cache_size(self) -> tuple[int, int]:
        stats = self.state.cache.store.stats()
        return stats.entries, stats.bytes

    async def _prune_cache(self) -> None:
        """Every 15 s: drop expired memory entries (past ttl + stale windows) so they free memory
        unread, and recount what a Redis store holds for the gauges."""
        while True:
            await asyncio.sleep(15)
            self.state.cache.prune()
            await self.state.cache.refresh_stats()

    def _breakers(self) -> Iterable[CircuitBreaker]:
        return self.state.runtime.breakers().values()

    def _breaker_moved(self, breaker: CircuitBreaker, before: str, after: str) -> None:
        self.metrics.breaker_transitions.labels(breaker.upstream, breaker.route, after).inc()
        self.state.history.transition(breaker.name, before, after, breaker.last_event)
        if self.sync is not None:
            self.sync.noted(breaker, before, after)
        level = logging.WARNING if after == "open" else logging.INFO
        event(
            "breaker " + after.replace("_", "-"),
            level,
            breaker=breaker.name,
            previous=before,
            retry_after_s=breaker.retry_after(),
        )

    # ------------------------------------------------------------------ probes and health

    def readiness(self) -> tuple[bool, str]:
        """Ready: listening, a valid config loaded, not draining."""
        if not self.started:
            return False, "starting"
        if self.drain_started:
            return False, "draining"
        runtime = self.state.runtime
        for name in runtime.config.readiness.require:
            up = runtime.upstreams.get(name)
            if up is not None and up.default.breaker.state == "open":
                return False, f"breaker of required upstream {name!r} is open"
        return True, "ready"

    def health(self) -> dict[str, Any]:
        """``status`` ok/degraded and each upstream's last minute."""
        upstreams: dict[str, Any] = {}
        degraded = False
        for name, up in self.state.runtime.upstreams.items():
            snap = up.stats.snapshot()
            snap["inflight"] = up.inflight
            snap["queued"] = up.bulkhead.queued
            main = up.default.breaker
            snap["breaker"] = main.state
            snap["breaker_open_for_s"] = _rounded(main.open_for())
            snap["breaker_next_probe_in_s"] = _rounded(main.next_probe_in())
            others = [b for b in up.breakers.values() if b is not main]
            snap["route_breakers"] = {b.route: b.state for b in others}
            snap["route_breakers_open_for_s"] = {b.route: _rounded(b.open_for()) for b in others}
            quotas = {r.policy.name: r.quota.snapshot() for r in up.routes if r.quota is not None}
            if quotas:
                snap["quota"] = quotas
            requests, errors = snap["requests"], snap["errors"]
            if (requests >= 5 and errors * 2 >= requests) or snap["breaker"] == "open":
                degraded = True
            upstreams[name] = snap
        result: dict[str, Any] = {"status": "degraded" if degraded else "ok", "draining": self.drain_started}
        if self.link is not None:  # shared state: whether replicas currently share it
            result["redis"] = {"up": self.link.up, "errors": self.link.errors}
        result["upstreams"] = upstreams
        return result

    # ------------------------------------------------------------------ reload

    async def reload(self, source: str) -> tuple[bool, dict[str, Any]]:
        """Load the file again; apply it when valid. Returns (ok, what changed or the error)."""
        if not self.path:
            return False, {"error": "the gateway was not started from a file"}
        try:
            config = load_config(self.path)
        except ConfigError as exc:
            self.metrics.reloads.labels("error").inc()
            event(
                "config reload failed; the previous config keeps serving", logging.ERROR, source=source, error=str(exc)
            )
            return False, {"error": str(exc)}
        old = self.state.runtime
        new = Runtime(config, old, hook=self._breaker_moved, link=self.link)
        if self._proxy_server is not None and config.server != old.config.server:
            budget = descriptor_budget(config.server.max_connections, config.server.admin.max_connections)
            self._proxy_server.fd_cap = budget[0]
        changes = _changes(old.config, config)
        self.state.runtime = new
        await new.start_pools()  # preconnect and keep-warm for the pools this reload made
        await self._drop_cached(old, new)
        self._mtime = _mtime(self.path)
        configure(config.log.level, config.log.format, config.log.access_log, config.log.redact_query)
        self.metrics.reloads.labels("ok").inc()
        event("config reloaded", source=source, **changes)
        if new.retired:
            self._spawn(new.close_retired(grace=300))
        return True, changes

    async def _drop_cached(self, old: Runtime, new: Runtime) -> None:
        """Cache state survives a reload only for upstreams whose ``url`` did not change."""
        for name, up in old.upstreams.items():
            kept = new.upstreams.get(name)
            if kept is None or kept.policy.url != up.policy.url:
                with contextlib.suppress(OSError, ConnectionError, TimeoutError):
                    await self.state.cache.purge(name, lambda _u, _p: True)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            current = _mtime(self.path)
            if current != self._mtime:
                self._mtime = current
                await self.reload(source="watch")


def _redis_link(config: Config, metrics: Metrics) -> RedisLink | None:
    """The process's Redis connection when ``cache_store.type`` is redis."""
    spec = config.cache_store
    if spec.type != "redis" or not spec.url:
        return None

    def failed(op: str, exc: BaseException) -> None:
        metrics.store_errors.labels("redis", op).inc()

    return RedisLink(spec.url, spec.prefix, spec.timeout, on_error=failed)


def build_cache(config: Config, metrics: Metrics, link: RedisLink | None = None) -> ResponseCache:
    """The process's response cache: in memory, or in Redis with memory as the fallback."""
    spec = config.cache_store
    memory = MemoryStore(spec.max_entries, spec.max_bytes)
    shared = None if link is None else FallbackStore(RedisStore(link), memory)
    store: Store = memory if shared is None else NearStore(shared, spec.max_entries, spec.max_bytes)

    def store_failed(kind: str, op: str, exc: BaseException) -> None:
        metrics.store_errors.labels(kind, op).inc()

    return ResponseCache(store, spec.max_entry_bytes, on_store_error=store_failed)


def _mtime(path: str | None) -> float | None:
    try:
        return os.stat(path).st_mtime if path else None
    except OSError:
        return None


def _changes(old: Config, new: Config) -> dict[str, Any]:
    before, after = old.upstreams, new.upstreams
    changes: dict[str, Any] = {
        "added": sorted(set(after) - set(before)),
        "removed": sorted(set(before) - set(after)),
        "changed": sorted(n for n in set(before) & set(after) if before[n] != after[n]),
    }
    restart = []
    if old.listen != new.listen:
        restart.append("listen")
    if old.admin.listen != new.admin.listen:
        restart.append("admin.listen")
    if old.cache_store != new.cache_store:
        restart.append("cache_store")
    changes["restart_required"] = restart
    return changes


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 3)
