"""Request collapsing as one object owned by the cache (``cache.Flights``; issue 14).

The end-to-end behaviour (one upstream request for N concurrent misses, waiters reusing the answer,
STALE and errors shared) is in test_cache.py; here the object alone, on a real event loop.
"""

from __future__ import annotations

import asyncio

import pytest
from multidict import CIMultiDict

from gateway.cache import STALE, Flights, Shared
from gateway.errors import UpstreamReset

ANSWER = Shared(200, "OK", CIMultiDict(), b"{}", (), "k", 1)


async def test_the_leader_publishes_what_the_waiters_get():
    flights = Flights()
    with flights.lead("k") as flight:
        assert flight.leading and len(flights) == 1
        pending = flights.pending("k")
        assert pending is not None
        with flights.lead("k") as second:  # a concurrent fetch of the same key does not lead
            assert not second.leading
        flight.publish(ANSWER)
        assert not pending.done()  # published on exit, once
    assert await pending is ANSWER
    assert len(flights) == 0 and flights.pending("k") is None


async def test_an_error_that_ends_the_fetch_is_what_the_waiters_get():
    flights = Flights()
    with pytest.raises(UpstreamReset), flights.lead("k"):
        pending = flights.pending("k")
        assert pending is not None
        raise UpstreamReset("cut")
    assert isinstance(await pending, UpstreamReset)
    with flights.lead("k") as again:  # an error is not "nothing to share": the key does not pass
        assert again.leading


async def test_a_fetch_that_published_nothing_lets_the_key_pass_until_an_answer_is_stored():
    flights = Flights()
    with flights.lead("k") as flight:
        pending = flights.pending("k")
    assert flight.result is None and await pending is None
    with flights.lead("k") as passing:  # hit-for-pass: misses go upstream at once
        assert not passing.leading and flights.pending("k") is None
    flights.stored("k")
    with flights.lead("k") as leading:
        assert leading.leading
        leading.publish(STALE)


async def test_a_fetch_cancelled_midway_releases_its_waiters():
    flights = Flights()

    async def fetch() -> None:
        with flights.lead("k"):
            await asyncio.sleep(10)

    task = asyncio.create_task(fetch())
    await asyncio.sleep(0)
    pending = flights.pending("k")
    assert pending is not None
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await pending is None and len(flights) == 0


async def test_one_background_refresh_per_key_and_none_while_a_fetch_leads():
    flights = Flights()
    assert flights.start_refresh("a") and not flights.start_refresh("a")
    flights.end_refresh("a")
    assert flights.start_refresh("a")
    with flights.lead("b") as flight:
        assert not flights.start_refresh("b")
        flight.publish(ANSWER)
    assert flights.keys() == ([], [], ["a"])
