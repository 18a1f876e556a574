"""What the status page costs (issue 18): the memory of its 15-minute history, and one poll's document.

For 10, 100 and 1,000 routes (spread over upstreams of 10 routes each), every route having answered
in every 10-second bucket of the last 15 minutes (the worst case: every ring full), it measures

- the history's memory with ``tracemalloc`` (the counters, the Python objects around them, the
  latest errors), in all and per route;
- one ``GET /admin/status`` document, built from a real ``Gateway`` (not started) on that
  configuration: the time to build and serialise it, and its size raw and gzipped (what the page
  downloads every 2 s; Chromium asks for gzip).

    python bench/status_history.py            # prints a markdown table
"""

from __future__ import annotations

import asyncio
import gzip
import json
import sys
import time
import tracemalloc
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from gateway.config import parse_config
from gateway.history import BUCKET_SECONDS, BUCKETS, History
from gateway.server import Gateway
from gateway.statuspage import document


@dataclass
class Answer:
    upstream: str
    route: str
    method: str = "GET"
    status: int = 200
    error: str | None = None
    cache: str | None = "HIT"
    source: str = "cache"
    request_id: str = "0123456789abcdef0123456789abcdef"


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def config_text(routes: int) -> str:
    ups = []
    for u in range(max(1, routes // 10)):
        block = [f"  up{u}:", "    url: http://127.0.0.1:9", "    routes:"]
        for r in range(min(10, routes)):
            block.append(f'      - {{name: r{r}, match: {{methods: [GET], path: "/r{r}/{{id}}"}}, cache: {{ttl: 1m}}}}')
        ups.append("\n".join(block))
    return "admin: {listen: {host: 127.0.0.1, port: 0}}\nupstreams:\n" + "\n".join(ups) + "\n"


def fill(history: History, clock: Clock, keys: list[tuple[str, str]]) -> None:
    """Three answers per route in every bucket of the span, one of them failed."""
    for bucket in range(BUCKETS):
        clock.now = bucket * BUCKET_SECONDS + 1
        for upstream, route in keys:
            history.record(Answer(upstream, route), 0.012)
            history.record(Answer(upstream, route, cache="MISS", source="upstream"), 0.250)
            history.record(Answer(upstream, route, status=503, error="breaker_open", source="gateway"), 0.0001)


async def measure(routes: int) -> dict[str, float]:
    config = parse_config(config_text(routes), "bench.yaml", env={})
    gw = Gateway(config)
    keys = [(name, r.policy.name) for name, up in gw.state.runtime.upstreams.items() for r in up.routes]
    clock = Clock()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    history = History(clock=clock)
    fill(history, clock, keys)
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    gw.state.history = history
    runs = 20
    start = time.perf_counter()
    for _ in range(runs):
        body = json.dumps(document(gw), separators=(",", ":"), default=str).encode()
    build_ms = (time.perf_counter() - start) / runs * 1000
    await gw.close()
    return {
        "routes": len(keys),
        "history_bytes": held,
        "per_route": held / len(keys),
        "counters_per_route": history.nbytes() / len(keys),
        "build_ms": build_ms,
        "json_bytes": len(body),
        "gzip_bytes": len(gzip.compress(body, 6)),
    }


async def run() -> None:
    print("| routes | history memory | per route (counters) | document build + JSON | JSON | gzipped |")
    print("|---:|---:|---:|---:|---:|---:|")
    for routes in (10, 100, 1000):
        m = await measure(routes)
        print(
            f"| {m['routes']:,} | {m['history_bytes'] / 1024:,.0f} KiB | {m['per_route'] / 1024:.1f} KiB "
            f"({m['counters_per_route'] / 1024:.1f} KiB) | {m['build_ms']:.1f} ms | {m['json_bytes'] / 1024:,.0f} KiB "
            f"| {m['gzip_bytes'] / 1024:,.1f} KiB |"
        )


def main() -> int:
    asyncio.run(run())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
