"""Prometheus metrics: the gateway's own registry and every metric it exports.

Owns one ``CollectorRegistry`` per gateway (never the global one), the metric objects with their
HELP texts, and the label rules: labels are configured names only (upstream, route) or bounded
sets (method, status, outcome, reason), never raw paths or ids. Components receive a
``Metrics`` and update it; /metrics serves ``render()``.
"""

from __future__ import annotations

import asyncio
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

if TYPE_CHECKING:
    from .breaker import CircuitBreaker
    from .pool import Pool
    from .quota import QuotaKeeper

__all__ = ["CONTENT_TYPE", "Metrics", "method_label"]

CONTENT_TYPE = CONTENT_TYPE_LATEST
disable_created_metrics()  # type: ignore[no-untyped-call]  # no *_created series: they double the series count for nothing here
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0)


def method_label(method: str) -> str:
    """The method as a label value: one of the standard methods, or OTHER."""
    return method if method in _METHODS else "OTHER"


class Metrics:
    """Every metric of contract §4, registered on a registry of this gateway's own."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        r = self.registry
        # The request path's metrics: updated several times per request, so lock-free (see _Family).
        self.requests = _Family(
            r,
            "counter",
            "gateway_requests_total",
            "Requests answered, by upstream, route, method, status and who answered (upstream, gateway or cache).",
            ("upstream", "route", "method", "status", "source"),
        )
        self.duration = _Family(
            r,
            "histogram",
            "gateway_request_duration_seconds",
            "Time from the request's arrival until its answer's headers were sent to the client.",
            ("upstream", "route"),
        )
        self.tries = _Family(
            r,
            "counter",
            "gateway_upstream_tries_total",
            "Tries sent to upstreams, by outcome (a status class, connect-failure, timeout or reset).",
            ("upstream", "route", "outcome"),
        )
        self.retries = _Family(
            r,
            "counter",
            "gateway_retries_total",
            "Retries made, by the outcome of the try that was retried.",
            ("upstream", "route", "reason"),
        )
        self.retries_skipped = Counter(
            "gateway_retries_skipped_total",
            "Retries wanted by the outcome but not made (budget, deadline, unsafe, retry_after, breaker).",
            ["upstream", "reason"],
            registry=r,
        )
        self.inflight = _Family(
            r,
            "gauge",
            "gateway_inflight_requests",
            "Requests being served per upstream, queued ones included.",
            ("upstream",),
        )
        self.rejected = Counter(
            "gateway_rejected_total",
            "Requests the gateway refused before forwarding, by upstream and reason (error code).",
            ["upstream", "reason"],
            registry=r,
        )
        self.reloads = Counter(
            "gateway_config_reloads_total",
            "Configuration reloads, by result (ok or error).",
            ["result"],
            registry=r,
        )
        for result in ("ok", "error"):  # both series from the start, so the first failure is an increase
            self.reloads.labels(result)

        self.cache_requests = _Family(
            r,
            "counter",
            "gateway_cache_requests_total",
            "Requests on cacheable routes, by result: hit, miss, stale, bypass, revalidated, or collapsed "
            "(waited for the same request in flight).",
            ("upstream", "route", "result"),
        )
        self.store_errors = Counter(
            "gateway_store_errors_total",
            "Failed calls to a state store (the request went on without it), by store and operation.",
            ["store", "op"],
            registry=r,
        )
        self.breaker_transitions = Counter(
            "gateway_breaker_transitions_total",
            "Circuit breaker state changes, by the state entered (closed, half_open, open).",
            ["upstream", "route", "to"],
            registry=r,
        )
        self.connections = Gauge(
            "gateway_proxy_connections",
            "Client connections open on the proxy port.",
            registry=r,
        )
        self.connections_closed = Counter(
            "gateway_proxy_connections_closed_total",
            "Client connections the gateway closed itself, by reason: max_connections (refused with 503 at "
            "the limit), evicted (idle, closed to make room at the limit), header_timeout.",
            ["reason"],
            registry=r,
        )
        self.admin_connections = Gauge(
            "gateway_admin_connections",
            "Client connections open on the admin port.",
            registry=r,
        )
        self.admin_connections_closed = Counter(
            "gateway_admin_connections_closed_total",
            "Admin-port connections the gateway closed itself, by reason (as gateway_proxy_connections_closed_total).",
            ["reason"],
            registry=r,
        )
        for reason in ("max_connections", "evicted", "header_timeout"):
            self.connections_closed.labels(reason)
            self.admin_connections_closed.labels(reason)
        self.idempotency = Counter(
            "gateway_idempotency_total",
            "Writes with an Idempotency-Key, by result: new (forwarded), replayed (the kept answer), conflict "
            "(409, the first still in flight), mismatch (422, another request), released (the outcome proved "
            "the request was not processed: a repeat is forwarded).",
            ["upstream", "route", "result"],
            registry=r,
        )
        r.register(_Tasks())
        ProcessCollector(registry=r)  # process_resident_memory_bytes, process_open_fds, … (Linux /proc)

    def child(self, metric: Any, *values: str) -> Any:
        """``metric.labels(*values)``, memoised, for prometheus-client's own metrics: their
        ``labels()`` costs a lock and a dict build each time. Label values are configured names
        and bounded sets, so the memo is bounded too. (A ``_Family``'s ``labels()`` is already one
        dict lookup: the request path calls it directly.)"""
        key = (id(metric), values)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*values)
        return found

    def watch_breakers(self, source: Callable[[], Iterable[CircuitBreaker]]) -> None:
        """Export ``gateway_breaker_state`` for the breakers ``source`` returns, read at scrape time."""
        self.registry.register(_BreakerStates(source))

    def watch_cache(self, source: Callable[[], tuple[int, int]]) -> None:
        """Export ``gateway_cache_entries`` and ``gateway_cache_bytes`` from ``source()``, read at scrape time."""
        self.registry.register(_CacheSize(source))

    def watch_quotas(self, source: Callable[[], Iterable[tuple[str, str, QuotaKeeper]]]) -> None:
        """Export ``gateway_quota_remaining`` from the (upstream, route, keeper) ``source`` returns."""
        self.registry.register(_QuotaRemaining(source))

    def watch_pools(self, source: Callable[[], Iterable[Pool]]) -> None:
        """Export ``gateway_upstream_connections``, ``gateway_upstream_warm_connects_total`` and
        ``gateway_upstream_closed_idle_total`` for the pools ``source`` returns, read at scrape time."""
        self.registry.register(_Pools(source))

    def render(self) -> bytes:
        """The registry in Prometheus text format."""
        return generate_latest(self.registry)


class _Child:
    """One labelled series of a ``_Family``: a plain number (or buckets), no lock."""

    __slots__ = ("buckets", "counts", "value")

    def __init__(self, buckets: tuple[float, ...] = ()) -> None:
        self.value = 0.0  # the count, the gauge's value, or a histogram's sum
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)  # per bucket, the last one +Inf; not cumulative

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError("counters can only be incremented by non-negative amounts")
        self.value += amount

    def dec(self, amount: float = 1.0) -> None:  # gauges only
        self.value -= amount

    def observe(self, amount: float) -> None:  # histograms only
        self.value += amount
        self.counts[bisect_left(self.buckets, amount)] += 1


class _Family(Collector):
    """A counter, gauge or histogram whose children are plain numbers, exported at scrape time.

    prometheus-client's own metrics take a lock on every ``inc``/``observe`` (it supports threads);
    the request path updates six to eight series per request, which showed as ~3 % of the gateway's
    samples under load (``MutexValue.inc``, issue 17). Every update and every scrape of these runs
    on the event loop's thread, so no lock is needed. The exposition is the same as the client's
    (names, HELP, TYPE, labels, ``le`` buckets), and ``labels(*values)`` works the same way."""

    def __init__(
        self, registry: CollectorRegistry, kind: str, name: str, doc: str, labelnames: tuple[str, ...]
    ) -> None:
        self.kind = kind
        self.name = name.removesuffix("_total") if kind == "counter" else name
        self.doc = doc
        self.labelnames = labelnames
        self.buckets = _BUCKETS if kind == "histogram" else ()
        self._children: dict[tuple[str, ...], _Child] = {}
        registry.register(self)

    def labels(self, *values: str) -> _Child:
        child = self._children.get(values)
        if child is None:
            if len(values) != len(self.labelnames):
                raise ValueError(f"{self.name}: {len(self.labelnames)} label values expected, got {len(values)}")
            child = self._children[values] = _Child(self.buckets)
        return child

    def describe(self) -> Iterator[Metric]:
        yield self._family()

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        for values, child in list(self._children.items()):
            if isinstance(family, HistogramMetricFamily):
                cumulative, running = [], 0
                for bound, count in zip((*self.buckets, float("inf")), child.counts, strict=True):
                    running += count
                    cumulative.append((floatToGoString(bound), running))  # type: ignore[no-untyped-call]
                family.add_metric(list(values), cumulative, child.value)
            else:
                family.add_metric(list(values), child.value)
        yield family

    def _family(self) -> CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily:
        labels = list(self.labelnames)
        if self.kind == "counter":
            return CounterMetricFamily(self.name, self.doc, labels=labels)
        if self.kind == "gauge":
            return GaugeMetricFamily(self.name, self.doc, labels=labels)
        return HistogramMetricFamily(self.name, self.doc, labels=labels)


class _BreakerStates(Collector):
    """``gateway_breaker_state``, ``gateway_breaker_open_seconds``, ``gateway_breaker_next_probe_seconds``
    and ``gateway_breaker_refusals_total``: read from the live breakers when Prometheus scrapes."""

    def __init__(self, source: Callable[[], Iterable[CircuitBreaker]]) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        from .breaker import STATE_VALUES

        family = GaugeMetricFamily(
            "gateway_breaker_state",
            "Circuit breaker state: 0 closed, 1 half-open, 2 open.",
            labels=["upstream", "route"],
        )
        open_for = GaugeMetricFamily(
            "gateway_breaker_open_seconds",
            "Seconds since the breaker last opened (0 while closed).",
            labels=["upstream", "route"],
        )
        next_probe = GaugeMetricFamily(
            "gateway_breaker_next_probe_seconds",
            "Seconds until the breaker lets its next probe through (0 while closed or a probe may go now).",
            labels=["upstream", "route"],
        )
        refusals = CounterMetricFamily(
            "gateway_breaker_refusals",
            "Tries the breaker refused, by its state: open, half_open (probe in flight) or forced.",
            labels=["upstream", "route", "state"],
        )
        for breaker in self.source():
            labels = [breaker.upstream, breaker.route]
            family.add_metric(labels, STATE_VALUES[breaker.state])
            open_for.add_metric(labels, breaker.open_for() or 0.0)
            next_probe.add_metric(labels, breaker.next_probe_in() or 0.0)
            for why, count in breaker.refusals.items():
                refusals.add_metric([*labels, why], count)
        yield family
        yield open_for
        yield next_probe
        yield refusals


class _CacheSize(Collector):
    """``gateway_cache_entries`` and ``gateway_cache_bytes``: read from the store when scraped."""

    def __init__(self, source: Callable[[], tuple[int, int]]) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        entries, size = self.source()
        yield GaugeMetricFamily("gateway_cache_entries", "Answers held by the cache store.", value=entries)
        yield GaugeMetricFamily(
            "gateway_cache_bytes", "Bytes held by the cache store (bodies, headers, bookkeeping).", value=size
        )


class _QuotaRemaining(Collector):
    """``gateway_quota_remaining{upstream,route,key,window}``: read from the quota keepers when scraped."""

    def __init__(self, source: Callable[[], Iterable[tuple[str, str, QuotaKeeper]]]) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "gateway_quota_remaining",
            "Room left in a quota window (rpm, tpm, rpd) for a key value (the model), as this replica last saw it.",
            labels=["upstream", "route", "key", "window"],
        )
        for upstream, route, keeper in self.source():
            for key, window, left, _limit in keeper.remaining():
                family.add_metric([upstream, route, key, window], left)
        yield family


class _Pools(Collector):
    """Upstream connection pools: open connections by state, and the connections each pool opened by
    itself (preconnect and keep-warm) by result. A pool a reload replaced starts again from 0."""

    def __init__(self, source: Callable[[], Iterable[Pool]]) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        open_now = GaugeMetricFamily(
            "gateway_upstream_connections",
            "Connections open to the upstream: idle (pooled, ready) or busy (carrying a request).",
            labels=["upstream", "state"],
        )
        warm = CounterMetricFamily(
            "gateway_upstream_warm_connects",
            "Connections the pool opened without a request (preconnect, keep-warm), by result: ok or failed.",
            labels=["upstream", "result"],
        )
        early = CounterMetricFamily(
            "gateway_upstream_closed_idle",
            "Idle connections the upstream closed before pool.idle_timeout (seen by keep-warm): its own "
            "idle limit is shorter, and idle_timeout should go below it.",
            labels=["upstream"],
        )
        for pool in self.source():
            idle, busy = pool.counts()
            open_now.add_metric([pool.name, "idle"], idle)
            open_now.add_metric([pool.name, "busy"], busy)
            warm.add_metric([pool.name, "ok"], pool.opened)
            warm.add_metric([pool.name, "failed"], pool.failed)
            early.add_metric([pool.name], pool.closed_early)
        yield open_now
        yield warm
        yield early


class _Tasks(Collector):
    """``gateway_asyncio_tasks``: the event loop's live tasks when scraped (a task leak shows here
    before it shows in memory)."""

    def collect(self) -> Iterator[Metric]:
        try:
            count = len(asyncio.all_tasks())
        except RuntimeError:  # scraped with no running loop (a test calling render() directly)
            return
        yield GaugeMetricFamily("gateway_asyncio_tasks", "Tasks alive on the gateway's event loop.", value=count)
