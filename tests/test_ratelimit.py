"""Token buckets and the per-key rate limiter, on a fake clock; only the async tests await (a fake sleep)."""

from __future__ import annotations

import asyncio

import pytest

from gateway.config import RateLimitSpec
from gateway.errors import RateLimited
from gateway.ratelimit import RateLimiter, TokenBucket, default_burst

from .support import FakeClock


def limiter(clock: FakeClock, max_keys: int = 10000, sleep=None, **block) -> RateLimiter:
    config = RateLimitSpec.model_validate({"rate": "10/s", "burst": 5} | block)
    if sleep is None:
        return RateLimiter(config, clock=clock, max_keys=max_keys)
    return RateLimiter(config, clock=clock, max_keys=max_keys, sleep=sleep)


def passed(rl: RateLimiter, n: int, key: str | None = None) -> int:
    count = 0
    for _ in range(n):
        try:
            assert rl.reserve(key, "graph") == 0.0
            count += 1
        except RateLimited:
            pass
    return count


def test_burst_then_refill():
    clock = FakeClock(500.0)
    rl = limiter(clock)  # 10/s, burst 5, max_wait 0
    assert passed(rl, 20) == 5
    clock.advance(0.5)
    assert passed(rl, 20) == 5
    clock.advance(0.1)
    assert passed(rl, 20) == 1


def test_refused_request_carries_retry_after():
    clock = FakeClock(500.0)
    rl = limiter(clock)
    passed(rl, 5)
    with pytest.raises(RateLimited) as info:
        rl.reserve(None, "graph")
    assert info.value.retry_after == pytest.approx(0.1)
    assert info.value.upstream == "graph"
    assert info.value.status == 429 and info.value.code == "rate_limited"
    clock.advance(0.04)
    assert rl.bucket(None).retry_after() == pytest.approx(0.06)


def test_separate_keys_have_separate_buckets():
    clock = FakeClock(500.0)
    rl = limiter(clock, key="phone_id")
    assert passed(rl, 10, "111") == 5
    assert passed(rl, 10, "222") == 5
    assert passed(rl, 10, "111") == 0
    assert len(rl) == 2


def test_without_key_every_value_shares_one_bucket():
    clock = FakeClock(500.0)
    rl = limiter(clock)
    assert passed(rl, 3, "111") + passed(rl, 10, "222") == 5
    assert len(rl) == 1


def test_max_wait_queues_waiters_with_computed_waits():
    clock = FakeClock(500.0)
    rl = limiter(clock, max_wait="250ms")
    waits = [rl.reserve(None, "graph") for _ in range(7)]
    assert waits[:5] == [0.0] * 5
    assert waits[5:] == pytest.approx([0.1, 0.2])
    with pytest.raises(RateLimited) as info:
        rl.reserve(None, "graph")  # would wait 0.3 s
    assert info.value.retry_after == pytest.approx(0.3)
    clock.advance(0.05)
    assert rl.reserve(None, "graph") == pytest.approx(0.25)  # the queue moved on by 0.05 s


def test_a_refusal_takes_nothing():
    clock = FakeClock(500.0)
    bucket = TokenBucket(10, 5, clock)
    for _ in range(5):
        bucket.reserve(0)
    for _ in range(100):
        assert bucket.reserve(0) is None
    clock.advance(0.1)
    assert bucket.reserve(0) == 0.0


def test_bucket_never_exceeds_burst():
    clock = FakeClock(500.0)
    bucket = TokenBucket(10, 5, clock)
    clock.advance(3600)
    assert bucket.tokens == 5
    assert bucket.retry_after() == 0.0


def test_refund_gives_a_token_back():
    clock = FakeClock(500.0)
    bucket = TokenBucket(1, 1, clock)
    assert bucket.reserve(0) == 0.0
    assert bucket.reserve(5) == pytest.approx(1.0)
    bucket.refund()
    assert bucket.reserve(5) == pytest.approx(1.0)


def test_slow_rates():
    clock = FakeClock(500.0)
    rl = limiter(clock, rate="30/m", burst=None)  # 0.5 tokens a second
    assert rl.burst == 1
    assert passed(rl, 3) == 1
    with pytest.raises(RateLimited) as info:
        rl.reserve(None, "gemini")
    assert info.value.retry_after == pytest.approx(2.0)


@pytest.mark.parametrize(("rate", "burst"), [(0.01, 1), (1, 1), (10, 10), (80, 80), (2.5, 3)])
def test_default_burst(rate, burst):
    assert default_burst(rate) == burst


def test_key_lru_bound():
    clock = FakeClock(500.0)
    rl = limiter(clock, max_keys=2, key="phone_id")
    passed(rl, 5, "a")
    passed(rl, 5, "b")
    passed(rl, 1, "a")  # "a" is now the most recent, "b" the least
    passed(rl, 1, "c")
    assert len(rl) == 2
    assert passed(rl, 5, "a") == 0  # kept, still empty
    assert passed(rl, 5, "b") == 5  # evicted: starts again full


def test_invalid_bucket():
    with pytest.raises(ValueError):
        TokenBucket(0, 1)
    with pytest.raises(ValueError):
        TokenBucket(1, 0)


async def test_acquire_sleeps_the_reserved_wait():
    clock = FakeClock(500.0, sleep_advances=False)
    slept = clock.slept
    rl = limiter(clock, sleep=clock.sleep, max_wait="1s", burst=2)
    for _ in range(4):
        await rl.acquire(None, "graph")
    assert slept == pytest.approx([0.1, 0.2])
    with pytest.raises(RateLimited):
        for _ in range(10):
            await rl.acquire(None, "graph")
    assert len(slept) == 10  # waits 0.3 … 1.0 were accepted, 1.1 refused


async def test_cancelled_waiter_gives_its_token_back():
    clock = FakeClock(500.0)
    rl = limiter(clock, max_wait="5s", burst=1, rate="1/s")
    await rl.acquire(None, "graph")
    task = asyncio.create_task(rl.acquire(None, "graph"))  # real asyncio.sleep(1.0)
    await asyncio.sleep(0)
    assert rl.bucket(None).tokens == pytest.approx(-1.0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert rl.bucket(None).tokens == pytest.approx(0.0)
