"""Fixtures and hooks only; the test parts they hand out live in tests/support/ (import them from there).

- ``upstream_factory``: real ``Upstream`` servers on 127.0.0.1, closed after the test.
- ``gateway_factory``: the real ``Gateway`` in this process, from YAML text, on ephemeral ports.
- ``gateway_process``: the real program as a subprocess, from YAML text, killed after the test.
- ``redis_server``: a real redis-server (skipped where none is installed).
- The hypothesis ``nightly`` profile and the hook that spreads it over two cores.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, settings

from gateway.config import parse_config
from gateway.server import Gateway

from .support import GatewayProcess, RedisServer, RunningGateway, Script, Upstream, ok_script

# The nightly fuzz run (`python -m pytest -m fuzz --hypothesis-profile nightly`, see tests/test_fuzz.py):
# 10,000 random examples per property (FUZZ_NIGHTLY_EXAMPLES to try the mode with fewer). CI runs the
# default profile, with each property's own derandomized count.
settings.register_profile(
    "nightly",
    max_examples=int(os.environ.get("FUZZ_NIGHTLY_EXAMPLES", "10000")),
    derandomize=False,
    database=None,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> None:
    """The nightly profile uses two cores: with pytest-xdist installed and no ``-n`` given, the
    properties run in two worker processes, split by their ``xdist_group`` (``fuzz(worker=...)``
    in tests/test_fuzz.py) into two halves of about 20 minutes of CPU each."""
    if config.getoption("hypothesis_profile", None) != "nightly" or not config.pluginmanager.hasplugin("xdist"):
        return
    given = any(arg.startswith(("-n", "--numprocesses", "--dist")) for arg in config.invocation_params.args)
    if given:
        return
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # A worker reads the command line again, where no --dist was given: it must name its tests
        # by group (xdist's remote.py reads this option at collection), as the controller schedules.
        config.option.loadgroup = True
    else:
        config.option.numprocesses = 2
        config.option.dist = "loadgroup"


@pytest.fixture
async def upstream_factory() -> AsyncIterator[Callable[..., Awaitable[Upstream]]]:
    made: list[Upstream] = []

    async def make(script: Script = ok_script, read_body: bool = True) -> Upstream:
        up = await Upstream(script, read_body).start()
        made.append(up)
        return up

    yield make
    for up in made:
        await up.close()


@pytest.fixture
async def gateway_factory() -> AsyncIterator[Callable[[str], Awaitable[RunningGateway]]]:
    """Start real in-process gateways from YAML text; closed at the end of the test."""
    made: list[RunningGateway] = []

    async def make(yaml_text: str, env: dict[str, str] | None = None) -> RunningGateway:
        config = parse_config(yaml_text, "test.yaml", env=env or {})
        gw = Gateway(config)
        await gw.start()
        session = aiohttp.ClientSession(auto_decompress=False)
        running = RunningGateway(gw, session)
        made.append(running)
        return running

    yield make
    for running in made:
        await running.session.close()
        await running.gateway.close()


@pytest.fixture
def gateway_process(tmp_path: Path) -> Any:
    made: list[GatewayProcess] = []

    def start(yaml_text: str, env: dict[str, str] | None = None) -> GatewayProcess:
        path = tmp_path / f"gateway-{len(made)}.yaml"
        path.write_text(yaml_text)
        proc = GatewayProcess(path, env)
        made.append(proc)
        return proc.wait_started()

    yield start
    for proc in made:
        proc.stop()


@pytest.fixture
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (apt-get install -y redis-server; .ci/run does)")
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.kill()
