"""Outcomes of one try, and how upstream answers are read.

Owns the single translation of what an upstream exchange raised into an outcome (``classify``:
``connect-failure``, ``timeout``, ``reset``; whether the try reached the upstream, whether the
gateway's own host failed it, whether the total timeout cut it), and of a failed outcome into the
gateway's answer (``failure``: upstream_unreachable, upstream_timeout, upstream_reset, or
overloaded when the host ran out of descriptors); reading an API error code out of an error body according to the
upstream's ``kind`` (Meta's ``error.code``, PostgREST's ``code``, Google's ``error.status``),
the ``Retry-After`` of an answer (header in seconds or HTTP date; for ``gemini`` also
``google.rpc.RetryInfo.retryDelay`` in a 429 body), and ``OutcomeSet``: the compiled form of an
``on:`` / ``failure_on:`` list.
"""

from __future__ import annotations

import asyncio
import errno
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime

import aiohttp

from .errors import GatewayError, Overloaded, UpstreamReset, UpstreamTimeout, UpstreamUnreachable

__all__ = [
    "CONNECT_FAILURE",
    "RESET",
    "TIMEOUT",
    "Outcome",
    "OutcomeSet",
    "answered",
    "api_error_code",
    "classify",
    "failure",
    "retry_after_seconds",
]

CONNECT_FAILURE = "connect-failure"
TIMEOUT = "timeout"
RESET = "reset"

# How much of an error body is read to find its code; larger bodies are not inspected.
ERROR_PEEK_BYTES = 64 * 1024
# Errors of the gateway's own host, not of the upstream: out of descriptors or buffers.
_LOCAL_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one try came to: a failure kind, or an answer's status (and API code, if any)."""

    kind: str  # connect-failure | timeout | reset | response
    status: int = 0
    code: str | None = None
    # How a failure came about (not part of what the outcome is: breaker and retry rules ignore it).
    sent: bool = field(default=True, compare=False)  # False: nothing reached the upstream, no breaker sample
    local: bool = field(default=False, compare=False)  # the gateway's own host failed the connect (EMFILE)
    cut_by_total: bool = field(default=False, compare=False)  # the total timeout, not per_try, ran out

    @property
    def label(self) -> str:
        """A bounded label for metrics: the failure kind, or the status class ('2xx'…)."""
        return self.kind if self.kind != "response" else f"{self.status // 100}xx"


_ANSWERED: dict[int, Outcome] = {}


def answered(status: int, code: str | None = None) -> Outcome:
    """The outcome of an answer with ``status`` (and API ``code``). Outcomes are frozen, so the
    common ones (no code) are made once per status and shared: a try builds none (issue 17)."""
    if code is not None:
        return Outcome("response", status, code)
    found = _ANSWERED.get(status)
    if found is None:
        found = _ANSWERED[status] = Outcome("response", status)  # statuses are 3 digits: at most 900 kept
    return found


def classify(exc: BaseException, *, cut_by_total: bool = False) -> Outcome:
    """The outcome of a try that raised ``exc`` while sending, awaiting headers or reading the body.

    A connect refused by the gateway's own host for want of descriptors (EMFILE and kin) is
    ``connect-failure`` that was never sent and is ``local``: not the upstream's doing. A connect
    (TCP/TLS) that did not finish, or an egress proxy refusing the tunnel, is ``connect-failure``:
    nothing reached the upstream. A timeout is ``timeout`` (``cut_by_total`` when the total timeout,
    shorter than per_try, was the one running); anything else (a reset, a malformed answer) ``reset``."""
    error = exc.os_error if isinstance(exc, aiohttp.ClientConnectorError) else exc
    if isinstance(error, OSError) and error.errno in _LOCAL_ERRNOS:
        return Outcome(CONNECT_FAILURE, sent=False, local=True)
    if isinstance(exc, (aiohttp.ConnectionTimeoutError, aiohttp.ClientConnectorError, aiohttp.ClientHttpProxyError)):
        return Outcome(CONNECT_FAILURE, cut_by_total=cut_by_total)
    if isinstance(exc, (asyncio.TimeoutError, aiohttp.ServerTimeoutError)):
        return Outcome(TIMEOUT, cut_by_total=cut_by_total)
    return Outcome(RESET, cut_by_total=cut_by_total)


def failure(
    outcome: Outcome, upstream: str, attempts: int, per_try: float = 0.0, idle: float | None = None
) -> GatewayError:
    """The gateway's answer for a failed ``outcome`` (not a ``response``) on ``upstream``.

    ``per_try`` words a timeout of the tries; ``idle`` one of an answer's body (no data for that long)."""
    if outcome.local:
        return Overloaded(
            "the gateway has no file descriptor left to connect upstream",
            upstream=upstream,
            attempts=attempts,
            retry_after=1,
        )
    if outcome.kind == CONNECT_FAILURE:
        return UpstreamUnreachable(f"could not connect to upstream {upstream!r}", upstream=upstream, attempts=attempts)
    if outcome.kind == TIMEOUT:
        if idle is not None:
            message = f"upstream {upstream!r} sent no body data for {idle:g}s"
        else:
            why = "the total timeout ran out" if outcome.cut_by_total else f"no answer within per_try ({per_try:g}s)"
            message = f"upstream {upstream!r}: {why}"
        return UpstreamTimeout(message, upstream=upstream, attempts=attempts)
    return UpstreamReset(
        f"upstream {upstream!r} dropped the connection before a complete answer", upstream=upstream, attempts=attempts
    )


class OutcomeSet:
    """A compiled list of outcome tokens: ``connect-failure``, ``timeout``, ``reset``,
    ``503``, ``5xx``, ``code:N``."""

    __slots__ = ("classes", "codes", "kinds", "statuses")

    def __init__(self, tokens: Iterable[str]) -> None:
        self.kinds: set[str] = set()
        self.statuses: set[int] = set()
        self.classes: set[int] = set()
        self.codes: set[str] = set()
        for token in tokens:
            if token in (CONNECT_FAILURE, TIMEOUT, RESET):
                self.kinds.add(token)
            elif token.startswith("code:"):
                self.codes.add(token[5:])
            elif token.endswith("xx"):
                self.classes.add(int(token[0]))
            else:
                self.statuses.add(int(token))

    def matches(self, outcome: Outcome) -> bool:
        """True when ``outcome`` is one of the set's tokens."""
        if outcome.kind != "response":
            return outcome.kind in self.kinds
        return (
            outcome.status in self.statuses
            or outcome.status // 100 in self.classes
            or (outcome.code is not None and outcome.code in self.codes)
        )

    def matches_code(self, outcome: Outcome) -> bool:
        """True when ``outcome`` matched through a ``code:N`` token."""
        return outcome.code is not None and outcome.code in self.codes


def needs_body(kind: str, status: int) -> bool:
    """Whether the error body must be read to classify an answer of ``status`` from ``kind``."""
    if status < 400 or kind == "generic":
        return False
    if kind == "gemini":
        return status == 429
    return True


def api_error_code(kind: str, body: bytes) -> str | None:
    """The API error code in an error body: Meta's ``error.code``, PostgREST's ``code``."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict):
        return None
    if kind == "graph":
        error = data.get("error")
        code = error.get("code") if isinstance(error, dict) else None
    elif kind == "supabase":
        code = data.get("code") or data.get("error_code")
    elif kind == "gemini":
        error = data.get("error")
        code = error.get("status") if isinstance(error, dict) else None
    else:
        code = None
    return str(code) if isinstance(code, (int, str)) and not isinstance(code, bool) else None


def _retry_delay(body: bytes) -> float | None:
    """``google.rpc.RetryInfo.retryDelay`` ("53s", "1.5s") in a Google error body."""
    try:
        details = json.loads(body)["error"]["details"]
    except (ValueError, UnicodeDecodeError, KeyError, TypeError):
        return None
    for detail in details if isinstance(details, list) else ():
        if isinstance(detail, dict) and str(detail.get("@type", "")).endswith("google.rpc.RetryInfo"):
            delay = detail.get("retryDelay")
            if isinstance(delay, str) and delay.endswith("s"):
                try:
                    return max(0.0, float(delay[:-1]))
                except ValueError:
                    return None
    return None


def retry_after_seconds(kind: str, status: int, header: str | None, body: bytes | None) -> float | None:
    """The wait an answer asks for, in seconds, or None when it asks for none."""
    if header:
        header = header.strip()
        if header.isdigit():
            return float(header)
        try:
            when = parsedate_to_datetime(header)
        except (TypeError, ValueError, IndexError):
            when = None
        if when is not None and when.tzinfo is not None:
            return max(0.0, when.timestamp() - time.time())
    if kind == "gemini" and status == 429 and body:
        return _retry_delay(body)
    return None
