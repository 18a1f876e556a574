"""The gateway's errors: one hierarchy, each answer carrying its contract code and status.

Every exception the gateway raises, or maps from a library's, is a class of this module:

    GatewayError                      an answer the gateway makes itself (contract §3)
    ├── NoRoute                       404 no_route
    ├── BadRequest                    400 bad_request
    │   └── MalformedBody             400 the body's framing broke after its head (connection closed)
    ├── BodyTooLarge                  413 body_too_large
    ├── RequestTimeout                408 request_timeout (the client's body stalled; not in the contract)
    ├── RateLimited                   429 rate_limited
    ├── Overloaded                    503 overloaded
    ├── BreakerOpen                   503 breaker_open
    ├── UpstreamUnreachable           502 upstream_unreachable
    ├── UpstreamReset                 502 upstream_reset
    ├── UpstreamTimeout               504 upstream_timeout
    ├── FaultInjected                 (configured) fault_injected
    ├── Draining                      503 draining
    ├── IdempotencyConflict           409 idempotency_conflict
    ├── IdempotencyMismatch           422 idempotency_mismatch
    └── QuotaExhausted                429 quota_exhausted
    ClientGone                        the client left mid-body: nobody to answer (logged 499 client_disconnected)
    MalformedAnswer                   an upstream answer that must not be relayed (a 101, a control character
                                      in a header); an aiohttp ClientError, so it maps to ``reset`` → 502
    ProtocolRefused                   a request aiohttp parsed that the proxy port refuses before any handler
    │                                 (pipelined, HTTP/2, a framing look-alike) → 400 bad_request
    └── ChunkLineTooLong              a chunk-size line over ``server.max_chunk_line`` → 400 bad_request
    StoreUnavailable                  Redis failed, timed out or is marked down: the caller falls back
    IllegalTransition                 a breaker event its state does not accept (a bug, never an answer)
    ConfigError                       gateway.yaml is not valid; carries every problem found
    PatternError                      a path pattern that does not compile (the config makes it a problem)
    TlsFileError                      a ``tls:`` file that cannot be used (the config makes it a problem)
    EncryptedKey                      a ``tls.key_file`` asks for a password (never prompted): a TlsFileError

Foreign exceptions are translated at one place per side: ``outcomes.classify`` maps what an
upstream exchange raised (aiohttp, OS and timeout errors, MalformedAnswer) to an ``Outcome`` and
``outcomes.failure`` maps a failed outcome to its GatewayError; the proxy's body reader maps the
client's body (``proxy.body.RequestBody``: ClientGone, MalformedBody, RequestTimeout,
BodyTooLarge); ``listener.HardenedHandler.handle_error`` maps what aiohttp's request parser refused
(414, 431, 400). ``gateway.answers``
renders every GatewayError, in the upstream's own error format (contract §3), on the proxy port,
for raw protocol refusals and on the admin port. ``details`` holds extra google.rpc detail objects
an error carries (the ``QuotaFailure`` of a ``quota_exhausted``); the Gemini format appends them
to the ones it writes itself.
"""

from __future__ import annotations

from typing import ClassVar

import aiohttp
from aiohttp.http_exceptions import BadHttpMessage

__all__ = [
    "BadRequest",
    "BodyTooLarge",
    "BreakerOpen",
    "ChunkLineTooLong",
    "ClientGone",
    "ConfigError",
    "Draining",
    "EncryptedKey",
    "FaultInjected",
    "GatewayError",
    "IdempotencyConflict",
    "IdempotencyMismatch",
    "IllegalTransition",
    "MalformedAnswer",
    "MalformedBody",
    "NoRoute",
    "Overloaded",
    "PatternError",
    "ProtocolRefused",
    "QuotaExhausted",
    "RateLimited",
    "RequestTimeout",
    "StoreUnavailable",
    "TlsFileError",
    "UpstreamReset",
    "UpstreamTimeout",
    "UpstreamUnreachable",
]


class GatewayError(Exception):
    """An answer the gateway makes itself rather than an upstream."""

    code: ClassVar[str] = "internal_error"
    status: ClassVar[int] = 500

    def __init__(
        self,
        message: str,
        *,
        upstream: str | None = None,
        attempts: int | None = None,
        retry_after: float | None = None,
        status: int | None = None,
        code: str | None = None,
        details: tuple[dict[str, object], ...] = (),
    ) -> None:
        super().__init__(message)
        self.message = message
        self.upstream = upstream
        self.attempts = attempts
        self.retry_after = retry_after
        self.details = details
        if status is not None:
            self.status = status  # type: ignore[misc]  # instance override (fault_injected)
        if code is not None:
            self.code = code  # type: ignore[misc]  # instance override (the admin port's own codes)


class NoRoute(GatewayError):
    """No upstream prefix matches the request path."""

    code, status = "no_route", 404


class BadRequest(GatewayError):
    """The request breaks the request-hygiene rules and is never forwarded."""

    code, status = "bad_request", 400


class MalformedBody(BadRequest):
    """The request body's framing broke after its head was accepted (a bad chunk size)."""


class BodyTooLarge(GatewayError):
    """The request body is larger than ``limits.max_request_body``."""

    code, status = "body_too_large", 413


class RequestTimeout(GatewayError):
    """The client stopped sending its body for longer than ``idle``."""

    code, status = "request_timeout", 408


class RateLimited(GatewayError):
    """No rate-limit token became available within ``max_wait``."""

    code, status = "rate_limited", 429


class Overloaded(GatewayError):
    """The upstream's concurrency queue is full or ``queue_timeout`` passed."""

    code, status = "overloaded", 503


class BreakerOpen(GatewayError):
    """The breaker is open, or half-open with every probe slot taken."""

    code, status = "breaker_open", 503
    state = "open"  # why: open | half_open (probe in flight) | forced (held open by an operator)


class UpstreamUnreachable(GatewayError):
    """Connecting (TCP or TLS) failed on the last try."""

    code, status = "upstream_unreachable", 502


class UpstreamReset(GatewayError):
    """The connection dropped before a complete response arrived."""

    code, status = "upstream_reset", 502


class UpstreamTimeout(GatewayError):
    """``per_try`` on the last try, or ``total``, ran out."""

    code, status = "upstream_timeout", 504


class FaultInjected(GatewayError):
    """A configured ``fault.abort`` fired."""

    code, status = "fault_injected", 503


class Draining(GatewayError):
    """The request arrived after the gateway stopped taking new work."""

    code, status = "draining", 503


class IdempotencyConflict(GatewayError):
    """A request with the same Idempotency-Key is still in flight."""

    code, status = "idempotency_conflict", 409


class IdempotencyMismatch(GatewayError):
    """The Idempotency-Key was first used with another request (method, path or body)."""

    code, status = "idempotency_mismatch", 422


class QuotaExhausted(GatewayError):
    """A ``quota`` window (rpm, tpm, rpd) has no room within ``max_wait``."""

    code, status = "quota_exhausted", 429


class ConfigError(Exception):
    """gateway.yaml cannot be used; ``problems`` holds one line per problem, each naming its key."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__("\n".join(f"{source}: {p}" for p in problems))


class PatternError(ValueError):
    """A path pattern that cannot be compiled; the message says why."""


class TlsFileError(ValueError):
    """A ``tls:`` file cannot be used; ``key`` names the setting (``ca_file``, ``cert_file``, ``key_file``)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


class EncryptedKey(Exception):
    """The private key file asks for a password; ``tls.tls_context`` reports it as a TlsFileError."""


class ClientGone(Exception):
    """The client closed its connection while its request body was being read."""


class MalformedAnswer(aiohttp.ClientError):
    """The upstream's answer cannot be relayed: a 1xx status or a control character in a header."""


class ProtocolRefused(BadHttpMessage):
    """A request aiohttp parsed but the gateway refuses before any handler sees it."""


class ChunkLineTooLong(ProtocolRefused):
    """A chunk-size line (extensions included) longer than ``server.max_chunk_line``."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"a chunk-size line (with its extensions) is longer than {limit} bytes")


class StoreUnavailable(ConnectionError):
    """Redis failed, timed out, or is marked down: the caller falls back to local state."""


class IllegalTransition(RuntimeError):
    """An event that the current state does not accept (a bug in the caller, never an answer)."""
