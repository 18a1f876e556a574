"""The one translation of an upstream exchange's exception into an outcome, and of a failed outcome
into the gateway's answer (``outcomes.classify``, ``outcomes.failure``; issue 14).

Real exception objects as aiohttp and the OS raise them; end-to-end cases (a refused connect, a
reset, a per-try timeout, EMFILE) are in test_failures.py and test_fd_limits.py.
"""

from __future__ import annotations

import errno

import aiohttp
import pytest
from aiohttp.client_reqrep import ConnectionKey

from gateway import outcomes
from gateway.errors import MalformedAnswer, Overloaded, UpstreamReset, UpstreamTimeout, UpstreamUnreachable
from gateway.outcomes import CONNECT_FAILURE, RESET, TIMEOUT, Outcome

KEY = ConnectionKey("api.test", 443, True, True, None, None, None)


def connector_error(code: int) -> aiohttp.ClientConnectorError:
    return aiohttp.ClientConnectorError(KEY, OSError(code, "os error"))


@pytest.mark.parametrize(
    ("exc", "kind", "sent", "local"),
    [
        (connector_error(errno.ECONNREFUSED), CONNECT_FAILURE, True, False),
        (connector_error(errno.EMFILE), CONNECT_FAILURE, False, True),
        (OSError(errno.ENFILE, "table full"), CONNECT_FAILURE, False, True),
        (aiohttp.ConnectionTimeoutError("connect"), CONNECT_FAILURE, True, False),
        (aiohttp.SocketTimeoutError("read"), TIMEOUT, True, False),
        (TimeoutError(), TIMEOUT, True, False),
        (aiohttp.ServerDisconnectedError(), RESET, True, False),
        (aiohttp.ClientPayloadError("cut"), RESET, True, False),
        (ConnectionResetError(errno.ECONNRESET, "reset"), RESET, True, False),
        (MalformedAnswer("status 101"), RESET, True, False),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else str(v),
)
def test_each_exception_becomes_one_outcome(exc, kind, sent, local):
    outcome = outcomes.classify(exc)
    assert (outcome.kind, outcome.sent, outcome.local) == (kind, sent, local)


def test_how_a_failure_came_about_is_not_part_of_what_it_is():
    """Breaker and retry rules compare outcomes: ``sent``, ``local`` and ``cut_by_total`` do not count."""
    assert outcomes.classify(TimeoutError(), cut_by_total=True) == Outcome(TIMEOUT)
    assert outcomes.classify(connector_error(errno.EMFILE)) == Outcome(CONNECT_FAILURE)


@pytest.mark.parametrize(
    ("outcome", "kwargs", "error", "message"),
    [
        (Outcome(CONNECT_FAILURE), {}, UpstreamUnreachable, "could not connect to upstream 'api'"),
        (Outcome(CONNECT_FAILURE, sent=False, local=True), {}, Overloaded, "no file descriptor left"),
        (Outcome(TIMEOUT), {"per_try": 2.5}, UpstreamTimeout, "no answer within per_try (2.5s)"),
        (Outcome(TIMEOUT, cut_by_total=True), {"per_try": 2.5}, UpstreamTimeout, "the total timeout ran out"),
        (Outcome(TIMEOUT), {"idle": 3.0}, UpstreamTimeout, "sent no body data for 3s"),
        (Outcome(RESET), {}, UpstreamReset, "dropped the connection before a complete answer"),
    ],
)
def test_each_failed_outcome_becomes_one_answer(outcome, kwargs, error, message):
    err = outcomes.failure(outcome, "api", 3, **kwargs)
    assert type(err) is error and message in err.message
    assert (err.upstream, err.attempts) == ("api", 3)
    if error is Overloaded:
        assert err.retry_after == 1
