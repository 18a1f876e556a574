"""The cache's HTTP rules, keys and the memory store, without a server."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from gateway import cache as cachemod
from gateway.cache import ResponseCache, asked, cache_control, full_key, make_entry, primary_key, verdict
from gateway.cachestore import Entry, MemoryStore
from gateway.config import CacheSpec


def policy(**kw: object) -> CacheSpec:
    return CacheSpec.model_validate({"ttl": "5m", **kw})


def h(*pairs: tuple[str, str]) -> CIMultiDict[str]:
    return CIMultiDict(pairs)


def entry(path: str = "/p", body: bytes = b"x", upstream: str = "up", ttl: float = 60, keep: float = 0) -> Entry:
    return Entry(upstream, path, 200, "OK", (("content-type", "text/plain"),), body, 1000.0, ttl, keep)


# ---------------------------------------------------------------- client directives


@pytest.mark.parametrize(
    ("headers", "no_store", "no_cache"),
    [
        (h(), False, False),
        (h(("Cache-Control", "no-store")), True, False),
        (h(("Cache-Control", "no-cache")), False, True),
        (h(("Cache-Control", "max-age=0")), False, True),
        (h(("Cache-Control", "max-age=60")), False, False),
        (h(("Pragma", "no-cache")), False, True),
        (h(("Pragma", "no-cache"), ("Cache-Control", "max-age=60")), False, False),  # Cache-Control wins
        (h(("Cache-Control", "No-Cache, NO-STORE")), True, True),
    ],
)
def test_client_directives(headers: CIMultiDict[str], no_store: bool, no_cache: bool) -> None:
    got = asked(headers)
    assert (got.no_store, got.no_cache) == (no_store, no_cache)


def test_cache_control_parses_arguments_and_repeated_headers() -> None:
    cc = cache_control(h(("Cache-Control", 'max-age="30", private'), ("cache-control", "s-maxage=10")))
    assert cc == {"max-age": "30", "private": None, "s-maxage": "10"}


# ---------------------------------------------------------------- what may be stored


@pytest.mark.parametrize(
    ("status", "headers", "pol", "stored", "ttl"),
    [
        (200, h(), policy(), True, 300),
        (404, h(), policy(), True, 300),
        (500, h(), policy(), False, 0),
        (206, h(), policy(), False, 0),
        (206, h(), policy(statuses=[200, 206]), True, 300),
        (200, h(("Vary", "Accept, *")), policy(), False, 0),
        (200, h(("Set-Cookie", "a=b")), policy(), False, 0),
        (200, h(("Cache-Control", "no-store")), policy(), False, 0),
        (200, h(("Cache-Control", "private")), policy(), False, 0),
        (200, h(("Cache-Control", "private")), policy(vary=["Authorization"]), True, 300),
        (200, h(("Cache-Control", "max-age=1")), policy(), True, 1),
        (200, h(("Cache-Control", "max-age=3600")), policy(), True, 300),  # never longer than ttl
        (200, h(("Cache-Control", "s-maxage=2, max-age=100")), policy(), True, 2),  # shared-cache age first
        (200, h(("Cache-Control", "max-age=0")), policy(), False, 0),
        (200, h(("Cache-Control", "max-age=0")), policy(stale_if_error="1m"), True, 0),  # kept for stale only
        (200, h(("Cache-Control", "no-cache")), policy(), False, 0),
        (200, h(("Content-Type", "text/event-stream")), policy(), False, 0),
    ],
)
def test_verdict(status: int, headers: CIMultiDict[str], pol: CacheSpec, stored: bool, ttl: float) -> None:
    got = verdict(status, headers, pol)
    assert got.store is stored, got.why
    if stored:
        assert got.ttl == ttl


def test_verdict_keeps_the_upstreams_vary_names_sorted_and_lower_case() -> None:
    got = verdict(200, h(("Vary", "Accept, Prefer"), ("Vary", "range, accept")), policy())
    assert got.vary == ("accept", "prefer", "range")


def test_a_compressed_answer_varies_on_accept_encoding_even_unasked() -> None:
    assert verdict(200, h(("Content-Encoding", "gzip")), policy()).vary == ("accept-encoding",)
    assert verdict(200, h(("Content-Encoding", "br"), ("Vary", "Accept-Encoding")), policy()).vary == (
        "accept-encoding",
    )


def test_entry_age_starts_at_the_upstreams_age_and_drops_per_answer_headers() -> None:
    headers = h(("Age", "30"), ("Content-Length", "2"), ("X-Request-Id", "abc"), ("ETag", '"v1"'))
    e = make_entry("up", "/p", 200, "OK", headers, b"hi", 1000.0, verdict(200, headers, policy()), policy())
    assert e.stored_at == 970.0
    assert dict(e.headers) == {"ETag": '"v1"'}


def test_entry_round_trips_through_bytes() -> None:
    e = Entry("up", "/p", 203, "Whatever", (("a", "1"), ("a", "2")), b"\x00body", 5.5, 10.0, 2.0, ("accept",))
    assert Entry.from_bytes(e.to_bytes()) == e
    with pytest.raises(ValueError):
        Entry.from_bytes(b"garbage")


# ---------------------------------------------------------------- keys


def test_keys_hold_no_header_value_and_differ_per_value() -> None:
    alice = h(("Authorization", "Bearer alice-secret"))
    bob = h(("Authorization", "Bearer bob-secret"))
    ka = primary_key("supabase", "/rest/v1/t", "a=1", ("authorization",), alice)
    kb = primary_key("supabase", "/rest/v1/t", "a=1", ("authorization",), bob)
    assert ka != kb
    assert len(ka) == 64 and "secret" not in ka
    assert primary_key("supabase", "/rest/v1/t", "a=1", ("authorization",), h()) not in (ka, kb)  # absent is a value


def test_keys_separate_query_path_and_upstream() -> None:
    keys = {
        primary_key("a", "/p", None, (), h()),
        primary_key("a", "/p", "", (), h()),
        primary_key("a", "/p", "x=1", (), h()),
        primary_key("a", "/q", None, (), h()),
        primary_key("b", "/p", None, (), h()),
    }
    assert len(keys) == 5


def test_full_key_adds_the_upstreams_vary_values() -> None:
    p = primary_key("a", "/p", None, (), h())
    assert full_key(p, (), h()) == p
    r1 = full_key(p, ("range",), h(("Range", "0-9")))
    r2 = full_key(p, ("range",), h(("Range", "10-19")))
    assert len({p, r1, r2}) == 3


# ---------------------------------------------------------------- the memory store


async def test_memory_store_bounds_bytes_and_evicts_least_recently_used_first() -> None:
    store = MemoryStore(max_entries=100_000, max_bytes=32 * 1024**2)
    body = b"x" * 10 * 1024
    for i in range(10_000):
        await store.put(f"p{i}", f"p{i}", entry(f"/item/{i}", body))
        assert store.stats().bytes <= 32 * 1024**2
    stats = store.stats()
    counted = sum(e.size for _, e in store.raw())
    assert stats.bytes == counted <= 32 * 1024**2
    held = {e.path for _, e in store.raw()}
    assert "/item/0" not in held and "/item/9999" in held
    oldest_kept = min(int(p.rsplit("/", 1)[1]) for p in held)
    assert held == {f"/item/{i}" for i in range(oldest_kept, 10_000)}  # the oldest went, none other
    assert stats.upstreams["up"] == {"entries": stats.entries, "bytes": stats.bytes}


async def test_memory_store_reads_refresh_recency() -> None:
    store = MemoryStore(max_entries=3, max_bytes=1024**2)
    for i in range(3):
        await store.put(f"k{i}", f"k{i}", entry(f"/{i}"))
    assert await store.get("k0", lambda vary: "k0") is not None  # k0 now most recent
    await store.put("k3", "k3", entry("/3"))
    assert {e.path for _, e in store.raw()} == {"/0", "/2", "/3"}


async def test_memory_store_deletes_by_path_and_keeps_its_index_exact() -> None:
    store = MemoryStore(max_entries=100, max_bytes=1024**2)
    await store.put("a", "a1", entry("/t/conversations"))
    await store.put("a", "a2", entry("/t/conversations"))
    await store.put("b", "b", entry("/t/messages"))
    await store.put("c", "c", entry("/t/conversations", upstream="other"))
    deleted = await store.delete_where("up", lambda up, path: path == "/t/conversations")
    assert deleted == 2
    assert sorted(e.path + "@" + e.upstream for _, e in store.raw()) == ["/t/conversations@other", "/t/messages@up"]
    assert await store.delete_where(None, lambda up, path: True) == 2
    assert store.stats().entries == 0 and store.stats().bytes == 0 and store.stats().upstreams == {}


async def test_memory_store_marks_without_deleting_and_a_new_put_clears_the_mark() -> None:
    store = MemoryStore(max_entries=100, max_bytes=1024**2)
    await store.put("a", "a", entry("/t/conversations"))
    await store.put("b", "b", entry("/t/messages"))
    bytes_before = store.stats().bytes
    assert await store.mark_where("up", lambda up, path: path == "/t/conversations") == 1
    assert await store.mark_where("up", lambda up, path: path == "/t/conversations") == 0
    marked = {e.path: e.invalidated for _, e in store.raw()}
    assert marked == {"/t/conversations": True, "/t/messages": False}
    assert store.stats().bytes == bytes_before and store.stats().entries == 2
    await store.put("a", "a", entry("/t/conversations"))
    assert not any(e.invalidated for _, e in store.raw())


async def test_memory_store_prunes_what_no_window_can_use() -> None:
    store = MemoryStore(max_entries=100, max_bytes=1024**2)
    await store.put("a", "a", entry("/a", ttl=10, keep=0))
    await store.put("b", "b", entry("/b", ttl=10, keep=100))
    assert store.prune(now=1000.0 + 50) == 1
    assert [e.path for _, e in store.raw()] == ["/b"]


async def test_the_response_cache_refuses_a_fill_that_an_invalidation_overtook() -> None:
    cache = ResponseCache(MemoryStore(100, 1024**2), 1024**2)
    epoch = cache.epoch("up")
    await cache.invalidate("up", lambda up, path: True)
    assert not await cache.put("k", "k", entry(), epoch)
    assert await cache.put("k", "k", entry(), cache.epoch("up"))


async def test_the_response_cache_treats_a_broken_store_as_a_miss() -> None:
    class Broken(MemoryStore):
        async def get(self, primary, key_for):  # type: ignore[no-untyped-def]
            raise ConnectionError("down")

    seen: list[tuple[str, str]] = []
    cache = ResponseCache(Broken(10, 1024), 1024, on_store_error=lambda kind, op, exc: seen.append((kind, op)))
    assert await cache.lookup("k", h()) is None
    assert seen == [("memory", "get")]
    assert cache.snapshot()["store_errors"] == 1


@settings(max_examples=300, deadline=None)
@given(
    upstream=st.sampled_from(["a", "graph", "supabase"]),
    path=st.text(alphabet="/ab%2é.", min_size=1, max_size=300),
    query=st.none() | st.text(alphabet="a=&%é?", max_size=40),
)
def test_remembered_keys_are_the_keys(upstream: str, path: str, query: str | None) -> None:
    """Keys without ``vary`` are remembered per target (a hit computes one on every request): the
    remembered key is the computed one, the first time and after, long targets included."""
    computed = cachemod._key(upstream, path, query, (), h())
    assert primary_key(upstream, path, query, (), h()) == computed
    assert primary_key(upstream, path, query, (), h()) == computed
