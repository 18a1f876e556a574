"""The official SDKs against ``gateway sim`` through a real gateway (issue 15): the harness
(tests/sdk/conftest.py hands out its ``stack`` and ``errors`` fixtures).

- ``Stack`` (the ``stack`` fixture, once per session): ``gateway sim`` and ``gateway run`` as real
  programs. Beside each API's upstream (``graph``, ``lookaside``, ``gemini``, ``supabase``, pointed at the sim) the
  gateway has variants that make each gateway error happen on demand: ``NAME-down`` (a closed
  port; a breaker that opens on one failure), ``NAME-limited`` (a ``1/m`` rate limit),
  ``NAME-tight`` (one request at a time, no queue, 64 KiB bodies), ``NAME-fault`` (``fault.abort``
  503). Timeouts and resets come from sim scenarios (``stack.scenario``).
- ``recipe``: the README's setup block for an SDK, executed with the gateway's address (and a
  variant's prefix) written in, so the documented setup is the one under test.
- ``Table`` (the ``errors`` fixture): every SDK exception a test provokes is recorded; with
  ``SDK_ERROR_TABLE=path`` the session writes the SDK × error table there as Markdown.
- ``provoke``: arranges for each gateway error on demand.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..support import ROOT, GatewayProcess, free_port

APIS = {"graph": "graph", "lookaside": "graph", "gemini": "gemini", "supabase": "supabase"}  # name -> kind
VARIANTS = ("down", "limited", "tight", "fault")
TIGHT_BODY = 64 * 1024  # max_request_body of the -tight variants
SEND_RETRY = '[connect-failure, 429, "code:4", "code:80007", "code:130429", "code:2", "code:131000"]'


def suite_yaml(sim: dict[str, int], closed: int) -> str:
    """The gateway of the suite: each API's upstream, and its error-making variants."""
    out = [
        "listen: {host: 127.0.0.1, port: 0}",
        "admin: {listen: {host: 127.0.0.1, port: 0}}",
        "log: {level: info, format: json, access_log: true}",
        "drain: {delay: 0s, timeout: 2s}",
        "defaults:",
        "  timeouts: {connect: 1s, per_try: 1s, idle: 2s, total: 2s}",
        "  retry: {attempts: 2, backoff: {base: 50ms, max: 100ms}}",
        "  breaker: {mode: consecutive, failure_threshold: 1000, recovery: 1m}",
        "upstreams:",
    ]
    for name, kind in APIS.items():
        url = f"http://127.0.0.1:{sim[name]}"
        out += [f"  {name}:", f"    url: {url}", f"    kind: {kind}"]
        if name == "graph":  # the shipped send rule: resent only on answers that say Meta did not take it
            out += [
                "    routes:",
                "      - name: send_message",
                '        match: {methods: [POST], path: "/{version}/{phone_id}/messages"}',
                f"        retry: {{on: {SEND_RETRY}, attempts: 3}}",
            ]
        if name == "gemini":
            out += ["    retry: {methods: [GET, POST]}"]  # generation has no side effects (as shipped)
        out += [
            f"  {name}-down:",
            f"    url: http://127.0.0.1:{closed}",
            f"    kind: {kind}",
            "    retry: {attempts: 1}",
            "    breaker: {failure_threshold: 1, recovery: 1m}",
            f"  {name}-limited:",
            f"    url: {url}",
            f"    kind: {kind}",
            '    routes: [{name: all, match: {path: "/**"}, rate_limit: {rate: 1/m, burst: 1}}]',
            f"  {name}-tight:",
            f"    url: {url}",
            f"    kind: {kind}",
            "    limits: {max_concurrent: 1, max_queue: 0, max_request_body: 64KiB}",
            f"  {name}-fault:",
            f"    url: {url}",
            f"    kind: {kind}",
            "    fault: {abort: {percent: 100, status: 503}}",
        ]
    out += [  # a total above supabase-auth's own 5 s default timeout
        "  supabase-slow:",
        f"    url: http://127.0.0.1:{sim['supabase']}",
        "    kind: supabase",
        "    timeouts: {per_try: 6s, total: 6s, idle: 7s}",
        "    retry: {attempts: 1}",
    ]
    return "\n".join(out) + "\n"


def _http(method: str, url: str, body: bytes | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


class Stack:
    """``gateway sim`` and a gateway in front of it, both real processes."""

    def __init__(self, tmp: Path) -> None:
        self.sim_ports = {name: free_port() for name in APIS}
        args = [f"--{name}-port={port}" for name, port in self.sim_ports.items()]
        self._sim_log_path = tmp / "sim.log"
        self._sim_log = self._sim_log_path.open("wb")
        self.sim = subprocess.Popen(
            [sys.executable, "-m", "gateway", "sim", "--seed", "1", *args],
            cwd=ROOT,
            stdout=self._sim_log,
            stderr=subprocess.STDOUT,
        )
        self._wait_sim()
        config = tmp / "sdk-suite.yaml"
        config.write_text(suite_yaml(self.sim_ports, free_port()))
        self.gateway = GatewayProcess(config).wait_started()

    def _wait_sim(self) -> None:
        end = time.monotonic() + 15
        while time.monotonic() < end:
            with contextlib.suppress(OSError):
                if _http("GET", f"{self.sim_url('graph')}/_sim/stats")[0] == 200:
                    return
            if self.sim.poll() is not None:
                raise RuntimeError(f"gateway sim exited: {self._sim_log_path.read_text(errors='replace')}")
            time.sleep(0.05)
        raise RuntimeError("gateway sim did not start")

    @property
    def url(self) -> str:
        return self.gateway.url

    def sim_url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.sim_ports[name]}"

    def sim_stats(self) -> dict[str, Any]:
        return json.loads(_http("GET", f"{self.sim_url('graph')}/_sim/stats")[1])

    @contextlib.contextmanager
    def scenario(self, text: str) -> Iterator[None]:
        """Run the block under a sim scenario (YAML), then back to the empty one (state reset)."""
        status, body = _http("PUT", f"{self.sim_url('graph')}/_sim/scenario", textwrap.dedent(text).encode())
        assert status == 200, body
        try:
            yield
        finally:
            _http("PUT", f"{self.sim_url('graph')}/_sim/scenario", b"name: empty\n")

    def breaker(self, name: str, action: str) -> None:
        status, body = _http("POST", f"{self.gateway.admin}/admin/breakers/{name}/{action}")
        assert status == 200, body

    def sim_requests(self, upstream: str, route: str) -> int:
        return int(self.sim_stats()["upstreams"][upstream]["routes"][route]["requests"])

    @contextlib.contextmanager
    def busy(self, api: str, prefix: str) -> Iterator[None]:
        """Hold the only slot of a ``-tight`` upstream with one slow request (the sim delays answers
        by 3 s); yields once the sim has that request, so the slot is surely taken."""
        route = ROUTE_NAMES[api]
        with self.scenario("defaults: {latency: {fixed: 3s}}"):
            seen = self.sim_requests(api, route)
            url = f"{self.url}/{prefix}{ROUTE_PATHS[api]}"
            thread = threading.Thread(target=_http, args=("GET", url), daemon=True)
            thread.start()
            end = time.monotonic() + 5
            while self.sim_requests(api, route) == seen:
                assert time.monotonic() < end, "the slow request never reached the sim"
                time.sleep(0.02)
            try:
                yield
            finally:
                thread.join(10)

    def close(self) -> None:
        self.gateway.stop()
        self.sim.terminate()
        self.sim.wait(10)
        self._sim_log.close()



# ---------------------------------------------------------------- the README's recipes

README = ROOT / "README.md"


def recipe(sdk: str, replace: dict[str, str], namespace: dict[str, Any]) -> dict[str, Any]:
    """Execute README's ```python block that starts with ``# sdk: {sdk}``, after each ``replace``
    (every key must occur in the block: a README edit that drops one fails here)."""
    blocks = re.findall(r"```python\n(# sdk: " + re.escape(sdk) + r"\n.*?)```", README.read_text(), re.S)
    assert len(blocks) == 1, f"README.md has {len(blocks)} blocks for {sdk}"
    code = blocks[0]
    for old, new in replace.items():
        assert old in code, f"README's {sdk} block no longer contains {old!r}"
        code = code.replace(old, new)
    exec(compile(code, f"README.md ({sdk})", "exec"), namespace)
    return namespace


# ---------------------------------------------------------------- the measured table


@dataclass
class Row:
    sdk: str
    call: str
    error: str
    exception: str
    status: object
    code: object
    message: str


@dataclass
class Table:
    rows: list[Row] = field(default_factory=list)

    def add(self, sdk: str, call: str, error: str, exc: BaseException, status: object, code: object, message: object):
        cls = type(exc)
        self.rows.append(Row(sdk, call, error, f"{cls.__module__}.{cls.__qualname__}", status, code, str(message)))

    def markdown(self) -> str:
        lines = [
            "| SDK | call | gateway error | exception | status | code | message |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in self.rows:
            message = r.message if len(r.message) <= 90 else r.message[:87] + "..."
            lines.append(
                f"| {r.sdk} | {r.call} | {r.error} | `{r.exception}` | {r.status} | {r.code} | "
                f"{message.replace('|', '/')} |"
            )
        return "\n".join(lines) + "\n"



# ---------------------------------------------------------------- making each gateway error happen

# What each error's test expects: the HTTP status of the gateway's answer.
STATUS = {
    "breaker_open": 503,
    "upstream_unreachable": 502,
    "upstream_timeout": 504,
    "upstream_reset": 502,
    "body_too_large": 413,
    "rate_limited": 429,
    "overloaded": 503,
    "fault_injected": 503,
    "bad_request": 400,
    "no_route": 404,
}
ERRORS = tuple(STATUS)
# A path of each API that the sim answers as a route (scenario latency applies), for raw requests.
ROUTE_PATHS = {
    "graph": "/v21.0/1",
    "lookaside": "/whatsapp_business/attachments/?mid=1",
    "gemini": "/v1beta/models",
    "supabase": "/rest/v1/t",
}
ROUTE_NAMES = {"graph": "media_url", "lookaside": "media", "gemini": "models", "supabase": "rest_read"}
BAD_TIMEOUT_HEADER = {"x-gateway-timeout-ms": "soon"}  # refused with 400 bad_request after routing


@contextlib.contextmanager
def provoke(stack: Stack, error: str, api: str) -> Iterator[str]:
    """Arrange for ``error`` on calls to ``api``; yields the upstream prefix (without '/') to call.

    ``body_too_large`` needs a body over 64 KiB and ``bad_request`` the header BAD_TIMEOUT_HEADER,
    from the caller."""
    path = ROUTE_PATHS[api]
    if error in ("upstream_unreachable", "breaker_open"):
        stack.breaker(f"{api}-down", "reset")
        if error == "breaker_open":  # one connect failure opens it (failure_threshold: 1)
            assert _http("GET", f"{stack.url}/{api}-down{path}")[0] == 502
        try:
            yield f"{api}-down"
        finally:
            stack.breaker(f"{api}-down", "reset")
    elif error == "rate_limited":
        _http("GET", f"{stack.url}/{api}-limited{path}")  # takes the one token (1/m)
        yield f"{api}-limited"
    elif error == "body_too_large":
        yield f"{api}-tight"
    elif error == "overloaded":
        with stack.busy(api, f"{api}-tight"):
            yield f"{api}-tight"
    elif error == "upstream_timeout":
        with stack.scenario("defaults: {outages: [{start: 0s, duration: 1h, mode: timeout}]}"):
            yield api
    elif error == "upstream_reset":  # the sim takes the request, then drops the connection
        with stack.scenario("defaults: {resets: {rate: 100%, when: after_body}}"):
            yield api
    elif error == "fault_injected":
        yield f"{api}-fault"
    elif error == "bad_request":
        yield api
    elif error == "no_route":
        yield "nowhere"
    else:
        raise AssertionError(f"no way to provoke {error}")
