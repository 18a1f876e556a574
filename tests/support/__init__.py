"""Shared test parts, imported by the tests (tests/conftest.py keeps only fixtures and hooks).

- ``upstreams``: real upstream servers on 127.0.0.1 with scripted faults (``Upstream``, ``RawUpstream``,
  ``WireUpstream``).
- ``gateway``: the gateway under test (``gateway_yaml``, ``RunningGateway``, ``GatewayProcess``,
  ``gateway_with_upstream``, the fixtures' types), raw HTTP on a socket (``raw_request``,
  ``read_answer``, ``status_of``, ``peer_closed``), ``free_port``, ``ROOT``.
- ``redis_server``: a real redis-server (``RedisServer``).
- ``clock``: the one fake clock (``FakeClock``): monotonic now, advance, an async sleep that records.
- ``waiting``: ``eventually``, polling a condition until it holds or a timeout.
- ``metrics``: sample values from a gateway's registry or a scraped /metrics, the same way.

The names most tests use are re-exported here: ``from .support import Upstream, gateway_yaml``.
"""

from .clock import FakeClock
from .gateway import (
    ROOT,
    TOKEN_FROM_ENV,
    GatewayFactory,
    GatewayProcess,
    RunningGateway,
    UpstreamFactory,
    free_port,
    gateway_with_upstream,
    gateway_yaml,
    peer_closed,
    raw_request,
    read_answer,
    status_of,
)
from .metrics import parse_metrics, sample, scrape, total
from .redis_server import RedisServer
from .upstreams import RawUpstream, Script, Seen, Upstream, WireUpstream, ok_script
from .waiting import eventually

__all__ = [
    "ROOT",
    "TOKEN_FROM_ENV",
    "FakeClock",
    "GatewayFactory",
    "GatewayProcess",
    "RawUpstream",
    "RedisServer",
    "RunningGateway",
    "Script",
    "Seen",
    "Upstream",
    "UpstreamFactory",
    "WireUpstream",
    "eventually",
    "free_port",
    "gateway_with_upstream",
    "gateway_yaml",
    "ok_script",
    "parse_metrics",
    "peer_closed",
    "raw_request",
    "read_answer",
    "sample",
    "scrape",
    "status_of",
    "total",
]
