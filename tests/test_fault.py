"""Fault injection with an injected random source and sleep."""

from __future__ import annotations

import pytest

from gateway.config import FaultSpec
from gateway.errors import FaultInjected, UpstreamTimeout
from gateway.fault import FaultInjector

from .support import FakeClock, gateway_yaml


def fault(**block) -> FaultSpec:
    return FaultSpec.model_validate(block)


class Draws:
    """A rand() that returns the given values in turn."""

    def __init__(self, *values: float) -> None:
        self.values = list(values)

    def __call__(self) -> float:
        return self.values.pop(0)


async def test_no_faults_configured():
    clock = FakeClock()
    injector = FaultInjector(fault(), rand=Draws(), sleep=clock.sleep)
    await injector.apply("graph")  # draws nothing: Draws() would raise
    assert clock.slept == []


async def test_abort_fires_below_percent():
    injector = FaultInjector(fault(abort={"percent": 5, "status": 502}), rand=Draws(0.049))
    with pytest.raises(FaultInjected) as info:
        await injector.apply("gemini")
    assert info.value.status == 502
    assert info.value.code == "fault_injected"
    assert info.value.upstream == "gemini"
    assert info.value.message == "fault injected by configuration"


async def test_abort_does_not_fire_at_or_above_percent():
    injector = FaultInjector(fault(abort={"percent": 5}), rand=Draws(0.05, 0.99))
    await injector.apply("gemini")
    await injector.apply("gemini")


async def test_abort_default_status_is_503():
    injector = FaultInjector(fault(abort={"percent": "100%"}), rand=Draws(0.999))
    with pytest.raises(FaultInjected) as info:
        await injector.apply("graph")
    assert info.value.status == 503


async def test_delay_sleeps_the_duration():
    clock = FakeClock()
    injector = FaultInjector(fault(delay={"percent": 10, "duration": "2s"}), rand=Draws(0.05, 0.5), sleep=clock.sleep)
    await injector.apply("graph")
    await injector.apply("graph")
    assert clock.slept == [2.0]


async def test_delay_then_abort_drawn_independently():
    clock = FakeClock()
    block = fault(abort={"percent": 50, "status": 500}, delay={"percent": 50, "duration": "250ms"})
    injector = FaultInjector(block, rand=Draws(0.1, 0.1, 0.9, 0.1, 0.1, 0.9), sleep=clock.sleep)
    with pytest.raises(FaultInjected):
        await injector.apply("graph")  # delayed and aborted
    with pytest.raises(FaultInjected):
        await injector.apply("graph")  # aborted only
    await injector.apply("graph")  # delayed only
    assert clock.slept == [0.25, 0.25]


async def test_zero_percent_never_fires():
    clock = FakeClock()
    injector = FaultInjector(
        fault(abort={"percent": 0}, delay={"percent": 0, "duration": "1s"}), rand=Draws(*[0.0] * 20), sleep=clock.sleep
    )
    for _ in range(10):
        await injector.apply("graph")
    assert clock.slept == []


async def test_real_sleep_by_default():
    injector = FaultInjector(fault(delay={"percent": 100, "duration": "10ms"}), rand=Draws(0.5))
    await injector.apply("graph")


async def test_a_delay_past_the_total_ends_at_the_deadline_with_a_timeout():
    clock = FakeClock()
    injector = FaultInjector(fault(delay={"percent": 100, "duration": "2s"}), rand=Draws(0.0), sleep=clock.sleep)
    with pytest.raises(UpstreamTimeout):
        await injector.apply("graph", budget=0.5)
    assert clock.slept == [0.5]


async def test_a_delay_past_the_total_is_no_breaker_sample(upstream_factory, gateway_factory):
    up = await upstream_factory()
    gw = await gateway_factory(
        gateway_yaml(
            {
                "api": f"url: {up.url}\ntimeouts: {{total: 300ms}}\nbreaker: {{failure_threshold: 1}}\n"
                "fault: {delay: {percent: 100, duration: 2s}}"
            }
        )
    )
    for _ in range(2):
        async with gw.session.get(gw.url + "/api/x") as resp:
            assert resp.status == 504
            assert (await resp.json())["error"]["code"] == "upstream_timeout"
    assert up.count == 0
    assert gw.gateway.state.runtime.breakers()["api"].state == "closed"
