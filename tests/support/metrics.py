"""Reading a gateway's metrics in tests: one shape for an in-process registry and a scraped /metrics.

- An in-process gateway (``gateway_factory``) has its own ``CollectorRegistry``: ``gw.registry``.
- A gateway in a subprocess is scraped over HTTP: ``await scrape(session, gw.admin)`` parses its
  /metrics with ``prometheus_client.parser.text_string_to_metric_families`` into a registry of
  its own, so the same calls read both.
- ``sample(registry, name, **labels)``: one sample's value by its exact labels
  (``CollectorRegistry.get_sample_value``), None when there is no such sample.
- ``total(registry, name, **labels)``: the sum over the samples of ``name`` whose labels include
  the given ones (other labels any), 0.0 when there is none.

Tests whose point is the exposition text itself (format, HELP/TYPE lines, label escaping,
promtool, a real Prometheus) read the text; every other test reads values through these.
"""

from __future__ import annotations

from collections.abc import Iterable

import aiohttp
from prometheus_client import CollectorRegistry, Metric
from prometheus_client.parser import text_string_to_metric_families


class _Parsed:
    """A collector that gives back the metric families parsed from a /metrics text."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families


def parse_metrics(text: str) -> CollectorRegistry:
    """A Prometheus text exposition as a registry of its own (read it with ``sample``/``total``)."""
    registry = CollectorRegistry()
    registry.register(_Parsed(list(text_string_to_metric_families(text))))
    return registry


async def scrape(session: aiohttp.ClientSession, admin: str) -> CollectorRegistry:
    """GET ``{admin}/metrics`` (200 expected) and parse it."""
    async with session.get(f"{admin}/metrics") as resp:
        text = await resp.text()
        assert resp.status == 200, text[:500]
    return parse_metrics(text)


def sample(registry: CollectorRegistry, name: str, /, **labels: str) -> float | None:
    """The value of the sample ``name`` with exactly these labels, or None."""
    return registry.get_sample_value(name, labels)


def total(registry: CollectorRegistry, name: str, /, **labels: str) -> float:
    """The sum of the samples ``name`` whose labels include these (0.0 when none)."""
    return sum(
        s.value
        for family in registry.collect()
        for s in family.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )
