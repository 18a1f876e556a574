"""What the memory cache costs: bytes per 1,000 entries of 10 KiB, three ways.

Fills a ``gateway.cachestore.MemoryStore`` (``max_entries`` = N, ``max_bytes`` = 4 GiB, so nothing is
evicted) with N entries the way the proxy stores an answer (``cache.make_entry`` → ``ResponseCache.put``
→ ``await store.put(primary, key, entry)``): a 10 KiB body, six response headers of a PostgREST answer,
the upstream path without its query (``/rest/v1/t``; the query ``?id=eq.N`` only reaches the key), and
a 64-hex SHA-256 key (no ``Vary``, so the primary key is the full key, as in the gateway). Every
object an entry holds is its own, as it would be after parsing N separate answers. Then it reports:

    store      the store's own accounting, ``store.stats().bytes`` (what ``max_bytes`` is checked
               against: body + header names and values + path + ``ENTRY_OVERHEAD`` per entry)
    tracemalloc  the Python heap still allocated after the fill (``tracemalloc``, gc.collect() first):
               bodies, Entry objects, header tuples and strings, keys, the LRUs, the path index
    RSS        the growth of the process's resident memory (VmRSS from /proc/self/status): the
               tracemalloc figure plus the allocators' own overhead and fragmentation

each per 1,000 entries and as overhead over the raw 10 KiB bodies. Each (N, method) runs in a fresh
Python process (tracemalloc slows allocation and takes memory of its own, so it never runs in the
process whose RSS is measured), with this checkout first on ``PYTHONPATH``, like ``overhead.py``.

    python bench/cache_memory.py                     # N = 1,000 and 10,000; ~5 s
    python bench/cache_memory.py --counts 1000,10000,50000 --body 10240
    python bench/cache_memory.py --no-save           # print the table only

The table goes to stdout and to ``bench/results/cache-memory-<date>.md`` and ``cache-memory-latest.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import gc
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Sequence
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
BODY_BYTES = 10 * 1024
UPSTREAM = "supabase"
PATH = "/rest/v1/t"  # what an entry keeps: the upstream path, without the query
MAX_BYTES = 4 * 1024**3  # large: nothing is evicted


def fresh(text: str) -> str:
    """A new str object equal to ``text``: each entry holds its own, as after parsing its own answer."""
    return text.encode().decode()


def headers_for(i: int) -> tuple[tuple[str, str], ...]:
    """Six response headers of a PostgREST answer (as the gateway stores them: no Content-Length, Age,
    Set-Cookie, x-request-id)."""
    return (
        (fresh("Content-Type"), fresh("application/json; charset=utf-8")),
        (fresh("Content-Range"), fresh("0-0/*")),
        (fresh("Date"), fresh("Sat, 21 Nov 2026 23:50:00 GMT")),
        (fresh("Server"), fresh("postgrest/12.2.3")),
        (fresh("CF-Ray"), f"8e{i:014x}-FRA"),
        (fresh("Content-Profile"), fresh("public")),
    )


def body_for(i: int) -> bytes:
    """10 KiB (by default) of its own: a distinct bytes object per entry."""
    stamp = f"{i:016d}".encode()
    return (stamp * (BODY_BYTES // len(stamp) + 1))[:BODY_BYTES]


def key_for(i: int) -> str:
    """The 64-hex SHA-256 key of GET /rest/v1/t?id=eq.i (no Vary: the primary key is the full key)."""
    return hashlib.sha256(f"GET\n{UPSTREAM}\n{PATH}\n?id=eq.{i}".encode()).hexdigest()


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


async def fill(n: int, method: str) -> dict[str, Any]:
    """In this process: fill a fresh store with ``n`` entries and measure with ``method``."""
    from gateway.cachestore import Entry, MemoryStore

    store = MemoryStore(max_entries=n, max_bytes=MAX_BYTES)
    now = time.time()
    gc.collect()
    if method == "tracemalloc":
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
    else:
        before = rss_bytes()
    for i in range(n):
        key = key_for(i)
        entry = Entry(UPSTREAM, fresh(PATH), 200, fresh("OK"), headers_for(i), body_for(i), now, 60.0, 0.0, ())
        await store.put(key, key, entry)
    gc.collect()
    if method == "tracemalloc":
        grown = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
    else:
        grown = rss_bytes() - before
    stats = store.stats()
    if stats.entries != n:
        raise RuntimeError(f"the store holds {stats.entries} entries, not {n}: something was evicted")
    return {"n": n, "method": method, "grown": grown, "store_bytes": stats.bytes}


def child(n: int, method: str) -> None:
    result = asyncio.run(fill(n, method))
    sys.stdout.write(json.dumps(result) + "\n")


def run_child(n: int, method: str) -> dict[str, Any]:
    """One measurement in a fresh interpreter, this checkout first on PYTHONPATH."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_DIR), env.get("PYTHONPATH", "")) if p)
    argv = [sys.executable, str(Path(__file__).resolve()), "--child", f"{n}:{method}", "--body", str(BODY_BYTES)]
    done = subprocess.run(argv, capture_output=True, text=True, env=env, cwd="/", timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"{n} entries, {method}: exited {done.returncode}:\n{done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _mib(n: float) -> str:
    return f"{n / 1024**2:.2f} MiB"


def _git(*argv: str) -> str:
    try:
        done = subprocess.run(["git", *argv], capture_output=True, text=True, timeout=10, cwd=REPO_DIR)
    except (OSError, subprocess.SubprocessError):
        return "?"
    return done.stdout.strip()


def report(rows: list[dict[str, Any]], started: dt.datetime) -> str:
    dirty = _git("status", "--porcelain", "--", "gateway")
    commit = _git("rev-parse", "--short", "HEAD") + (" + uncommitted changes in gateway/" if dirty else "")
    import cachetools

    lines = [
        f"# Memory cache: bytes per 1,000 entries — {started:%Y-%m-%d %H:%M}",
        "",
        f"- Python {platform.python_version()} ({platform.machine()}), cachetools {cachetools.__version__}, "
        f"gateway commit {commit}",
        f"- entries: a {BODY_BYTES:,}-byte body, 6 response headers, path `{PATH}`, 64-hex SHA-256 key, "
        "no Vary; `MemoryStore(max_entries=N, max_bytes=4 GiB)`, nothing evicted",
        f"- raw bodies: {_mib(BODY_BYTES * 1000)} per 1,000 entries",
        "",
        "| entries | method | total | per 1,000 entries | per entry over the body | overhead over raw bodies |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    names = {
        "store": "store accounting (`stats().bytes`)",
        "tracemalloc": "tracemalloc (Python heap)",
        "rss": "RSS growth (VmRSS)",
    }
    for row in rows:
        n, total = row["n"], row["total"]
        raw = BODY_BYTES * n
        lines.append(
            f"| {n:,} | {names[row['method']]} | {_mib(total)} | {_mib(total / n * 1000)} "
            f"| {(total - raw) / n:,.0f} B | {(total - raw) / raw * 100:+.1f}% |"
        )
    lines += [
        "",
        "- store accounting: what `cache_store.max_bytes` is compared with: body + header names and values + "
        "path + `ENTRY_OVERHEAD` (256 B) per entry.",
        "- tracemalloc: Python allocations still alive after the fill (gc.collect() first), measured in a "
        "process of its own: the bodies with their bytes-object headers, the Entry objects, header tuples "
        "and strings, keys, both LRUs, the recency-free `_where` dict and the path index.",
        "- RSS growth: VmRSS after the fill minus before, in another process without tracemalloc: the heap plus "
        "malloc's per-chunk overhead and fragmentation. RSS moves in pages and with the allocator's arenas, "
        "so small counts are the least precise.",
    ]
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Memory per 1,000 entries of the gateway's memory cache store.")
    parser.add_argument("--counts", default="1000,10000", help="comma-separated entry counts (1000,10000)")
    parser.add_argument("--body", type=int, default=BODY_BYTES, help=f"body bytes per entry ({BODY_BYTES})")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR, help="where the markdown goes (bench/results)")
    parser.add_argument("--no-save", action="store_true", help="print the table only")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # "N:method": one measurement, JSON on stdout
    args = parser.parse_args(argv)
    try:
        args.counts = [int(c) for c in args.counts.split(",")]
    except ValueError:
        parser.error("--counts: comma-separated whole numbers, e.g. 1000,10000")
    if any(c < 1 for c in args.counts) or args.body < 1:
        parser.error("--counts and --body must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    global BODY_BYTES
    args = parse_args(argv)
    BODY_BYTES = args.body
    if args.child:
        n, _, method = args.child.partition(":")
        child(int(n), method)
        return 0
    started = dt.datetime.now()
    rows: list[dict[str, Any]] = []
    for n in args.counts:
        store_bytes = None
        for method in ("tracemalloc", "rss"):
            print(f"… {n:,} entries, {method}", file=sys.stderr, flush=True)
            result = run_child(n, method)
            store_bytes = result["store_bytes"]
            rows.append({"n": n, "method": method, "total": result["grown"]})
        rows.insert(len(rows) - 2, {"n": n, "method": "store", "total": store_bytes})
    text = report(rows, started)
    print(text, end="")
    if not args.no_save:
        args.out_dir.mkdir(parents=True, exist_ok=True)
        for out in (args.out_dir / f"cache-memory-{started:%Y-%m-%d}.md", args.out_dir / "cache-memory-latest.md"):
            out.write_text(text)
        print(f"\nwritten: {args.out_dir}/cache-memory-{started:%Y-%m-%d}.md, cache-memory-latest.md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
