"""``breaker.wait``: a refused request waits for the breaker's next probe window instead of failing at once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway.breaker import CLOSED, HALF_OPEN, WAIT_POLL, CircuitBreaker, admit
from gateway.errors import BreakerOpen

from .support import FakeClock, Upstream, gateway_yaml
from .test_breaker import E503, OK, make, trip


def sleeper(
    breaker: CircuitBreaker, clock: FakeClock, naps: list[float], during: Callable[[], None] | None = None
) -> Callable[[float], Awaitable[None]]:
    async def sleep(seconds: float) -> None:
        naps.append(seconds)
        clock.advance(seconds)
        if during is not None:
            during()

    return sleep


async def test_a_request_waits_out_the_open_period_and_becomes_the_probe() -> None:
    breaker, clock, _ = make()  # recovery 10 s, no jitter
    trip(breaker)
    naps: list[float] = []
    permit = await admit(breaker, 15.0, sleeper(breaker, clock, naps))
    assert breaker.state == HALF_OPEN and permit.probe
    assert sum(naps) == pytest.approx(10.0) and max(naps) <= WAIT_POLL
    assert breaker.refusals == {"open": 0, "half_open": 0, "forced": 0}  # waiting is not refusing
    permit.record(OK)
    assert breaker.state == CLOSED


async def test_a_wait_shorter_than_the_open_period_is_refused_once_at_its_end() -> None:
    breaker, clock, _ = make()
    trip(breaker)
    naps: list[float] = []
    with pytest.raises(BreakerOpen) as info:
        await admit(breaker, 3.0, sleeper(breaker, clock, naps))
    assert sum(naps) == pytest.approx(3.0)
    assert info.value.retry_after == pytest.approx(7.0)
    assert breaker.refusals["open"] == 1


async def test_waiters_go_through_once_the_probe_in_flight_closes_the_breaker() -> None:
    breaker, clock, _ = make()
    trip(breaker)
    clock.advance(10.0)
    probe = breaker.acquire()
    assert probe.probe
    naps: list[float] = []
    permit = await admit(breaker, 5.0, sleeper(breaker, clock, naps, during=lambda: probe.record(OK)))
    assert not permit.probe and breaker.state == CLOSED
    assert naps == [WAIT_POLL]  # the first look after the probe's success lets it through


async def test_a_failed_probe_sends_the_waiters_back_to_sleep_until_the_next_window() -> None:
    breaker, clock, _ = make()
    trip(breaker)
    clock.advance(10.0)
    probe = breaker.acquire()
    naps: list[float] = []
    with pytest.raises(BreakerOpen):
        await admit(breaker, 5.0, sleeper(breaker, clock, naps, during=lambda: probe.record(E503)))
    assert sum(naps) == pytest.approx(5.0)  # re-opened for 20 s (doubled): no window within the wait
    assert breaker.refusals["open"] == 1


async def test_forced_open_and_no_wait_refuse_at_once() -> None:
    breaker, clock, _ = make()
    breaker.force_open()
    naps: list[float] = []
    with pytest.raises(BreakerOpen):
        await admit(breaker, 5.0, sleeper(breaker, clock, naps))
    assert naps == [] and breaker.refusals["forced"] == 1
    other, clock2, _ = make()
    trip(other)
    with pytest.raises(BreakerOpen):
        await admit(other, 0.0, sleeper(other, clock2, naps))
    assert naps == []


# ---------------------------------------------------------------- the real program


async def _outage_run(
    upstream_factory: Callable[..., Awaitable[Upstream]], gateway_process: Any, wait: str
) -> tuple[list[tuple[float, float, int, str]], float]:
    """Upstream down 2 s (503), a GET every 50 ms through a gateway whose breaker has ``wait``."""
    down = [0.0, 0.0]

    async def answer(request: web.BaseRequest, up: Upstream) -> web.StreamResponse:
        now = time.monotonic()
        if down[0] <= now < down[1]:
            return web.Response(status=503, text="down")
        return web.Response(text="ok")

    up = await upstream_factory(answer)
    block = f"url: {up.url}\nbreaker: {{mode: consecutive, failure_threshold: 3, wait: {wait}}}\nretry: {{attempts: 1}}"
    gw = gateway_process(gateway_yaml({"api": block}))
    seen: list[tuple[float, float, int, str]] = []

    async def one(session: aiohttp.ClientSession) -> None:
        start = time.monotonic()
        async with session.get(gw.url + "/api/x") as resp:
            await resp.read()
            seen.append((start, time.monotonic(), resp.status, resp.headers.get("x-gateway-error", "")))

    async with aiohttp.ClientSession() as session:
        await one(session)
        down[0], down[1] = time.monotonic(), time.monotonic() + 2.0
        tasks = []
        while time.monotonic() < down[1] + 3.0:
            tasks.append(asyncio.create_task(one(session)))
            await asyncio.sleep(0.05)
        await asyncio.gather(*tasks)
    return seen[1:], down[1]


@pytest.mark.timeout(60)
async def test_through_the_real_program_waiting_requests_are_answered_after_a_short_outage(
    upstream_factory: Callable[..., Awaitable[Upstream]], gateway_process: Any
) -> None:
    seen, recovered = await _outage_run(upstream_factory, gateway_process, "5s")
    refused = [s for s in seen if s[3] == "breaker_open"]
    failed = [s for s in seen if s[2] != 200]
    assert not refused, refused[:3]
    assert len(failed) <= 5  # the tries that tripped the breaker (threshold 3) and maybe a failed probe
    waited = [s for s in seen if s[0] < recovered - 0.5 and s[2] == 200]
    assert len(waited) >= 15  # requests sent in the outage, answered once it ended
    assert all(end < recovered + 2.0 + 1.5 for _, end, _, _ in waited)  # within recovery_max (2 s) and margin

    seen0, _ = await _outage_run(upstream_factory, gateway_process, "0s")
    assert sum(1 for s in seen0 if s[3] == "breaker_open") >= 15  # the contract's fail-fast: refused at once
