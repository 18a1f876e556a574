"""The gateway's own answers, written in the upstream's own error format (contract §3).

Owns the one renderer of every answer the gateway makes itself: a ``GatewayError`` raised on the
request path (``error_response``, with the format picked by ``answer_format``), a connection
refused before any request exists (``raw_answer``, bytes on the socket), and the admin port's
errors. Each answer carries ``x-gateway-error: CODE``, ``Content-Type: application/json`` and
``Retry-After`` where a wait is known, and a body an official SDK parses into its own exception:

    format     picked by                                   body
    generic    no route, ``kind: generic``, admin, raw     {"error": {"code", "message", "upstream",
                                                            "attempts", "retry_after_s"}}
    gemini     ``kind: gemini``                             google.rpc: {"error": {"code", "message",
                                                            "status", "details": [ErrorInfo, RetryInfo,
                                                            the error's own details (QuotaFailure)]}}
    graph      ``kind: graph``                              Meta: {"error": {"message", "type", "code",
                                                            "error_subcode", "is_transient",
                                                            "fbtrace_id", "error_data": {"details"}}}
    postgrest  ``kind: supabase``, path /rest/v1/…          {"code", "message", "details", "hint"}
    gotrue     ``kind: supabase``, path /auth/v1/…          {"code": status, "error_code", "msg"}
    storage    ``kind: supabase``, path /storage/v1/…       {"statusCode": "status", "error", "code",
                                                            "message"}

``MAPPINGS`` holds, per gateway code, Google's canonical status and Meta's code, subcode and
``is_transient``. Meta's code is chosen by what the outcome proves: a refusal that never reached
Meta says so with a code clients resend on (131016, 130429); an outcome that may have reached Meta
(``upstream_reset``, ``upstream_timeout``) carries code 1 with ``is_transient: false``, which no
route's retry rule lists, so neither the gateway nor a client resends a message Meta may have taken.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Final

from aiohttp import web

from .errors import GatewayError

__all__ = [
    "FORMATS",
    "GEMINI",
    "GENERIC",
    "GOTRUE",
    "GRAPH",
    "MAPPINGS",
    "POSTGREST",
    "STORAGE",
    "Mapping",
    "Rendered",
    "answer_format",
    "error_response",
    "mapping",
    "raw_answer",
    "render",
]

GENERIC: Final = "generic"
GEMINI: Final = "gemini"
GRAPH: Final = "graph"
POSTGREST: Final = "postgrest"
GOTRUE: Final = "gotrue"
STORAGE: Final = "storage"
FORMATS: Final = (GENERIC, GEMINI, GRAPH, POSTGREST, GOTRUE, STORAGE)

# Supabase serves three APIs with three error shapes under one host; the path says which.
_SUPABASE_APIS: Final = (("/rest/v1", POSTGREST), ("/auth/v1", GOTRUE), ("/storage/v1", STORAGE))

# Meta's codes the gateway writes (developers.facebook.com, WhatsApp Cloud API error codes).
META_UNKNOWN: Final = 1  # "An unknown error occurred": the outcome is not known
META_THROTTLED_APP: Final = 4  # "Application request limit reached"
META_INVALID: Final = 100  # "Invalid parameter"
META_RATE_LIMIT: Final = 130429  # "Rate limit hit" (throughput)
META_UNAVAILABLE: Final = 131016  # "Service unavailable": not taken, try again later
# error_subcode = SUBCODE_BASE + the code's number in MAPPINGS: one per gateway code, in a range
# Meta's own subcodes (33, 463, 2018001, 2494010, …) do not use.
SUBCODE_BASE: Final = 9_990_000


@dataclass(frozen=True, slots=True)
class Mapping:
    """How one gateway code reads in each API: Google's canonical status, Meta's code and flag."""

    number: int  # error_subcode = SUBCODE_BASE + number
    google: str
    meta_code: int
    meta_transient: bool
    hint: str

    @property
    def subcode(self) -> int:
        return SUBCODE_BASE + self.number


MAPPINGS: Final[dict[str, Mapping]] = {
    "no_route": Mapping(
        1, "NOT_FOUND", META_INVALID, False, "The first path segment must be an upstream prefix of gateway.yaml."
    ),
    "bad_request": Mapping(
        2, "INVALID_ARGUMENT", META_INVALID, False, "The gateway refused the request before forwarding it."
    ),
    "body_too_large": Mapping(
        3, "INVALID_ARGUMENT", META_INVALID, False, "The body is over the upstream's limits.max_request_body."
    ),
    "request_timeout": Mapping(
        4, "DEADLINE_EXCEEDED", META_UNKNOWN, True, "The client stopped sending its body; nothing was processed."
    ),
    "rate_limited": Mapping(
        5, "RESOURCE_EXHAUSTED", META_RATE_LIMIT, True, "Not forwarded: retry after Retry-After seconds."
    ),
    "overloaded": Mapping(
        6, "UNAVAILABLE", META_UNAVAILABLE, True, "Not forwarded: too many requests in flight; retry shortly."
    ),
    "breaker_open": Mapping(
        7, "UNAVAILABLE", META_UNAVAILABLE, True, "Not forwarded: the upstream is failing; retry after Retry-After."
    ),
    "upstream_unreachable": Mapping(
        8, "UNAVAILABLE", META_UNAVAILABLE, True, "Not delivered: no connection to the upstream could be made."
    ),
    "upstream_reset": Mapping(
        9, "UNAVAILABLE", META_UNKNOWN, False, "The outcome is unknown: the upstream may have processed it."
    ),
    "upstream_timeout": Mapping(
        10, "DEADLINE_EXCEEDED", META_UNKNOWN, False, "The outcome is unknown: the upstream may have processed it."
    ),
    "fault_injected": Mapping(11, "", 0, False, "A rehearsed failure (fault.abort in gateway.yaml); not forwarded."),
    "draining": Mapping(
        12, "UNAVAILABLE", META_UNAVAILABLE, True, "Not forwarded: this gateway is shutting down; retry."
    ),
    "idempotency_conflict": Mapping(
        13, "ABORTED", META_UNKNOWN, True, "The same Idempotency-Key is in flight; retry after Retry-After."
    ),
    "idempotency_mismatch": Mapping(
        14, "FAILED_PRECONDITION", META_INVALID, False, "This Idempotency-Key was used for another request."
    ),
    "quota_exhausted": Mapping(
        15, "RESOURCE_EXHAUSTED", META_THROTTLED_APP, True, "Not forwarded: quota used up; retry after Retry-After."
    ),
    "internal_error": Mapping(
        16, "INTERNAL", META_UNKNOWN, False, "An error in the gateway itself; the outcome is unknown."
    ),
}

# google.rpc.Code by HTTP status (the HTTP mapping of google/rpc/code.proto), for statuses that
# come from configuration (fault_injected) or codes without a row above.
_GOOGLE_BY_STATUS: Final = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    408: "DEADLINE_EXCEEDED",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def mapping(code: str, status: int) -> Mapping:
    """The row for ``code``; for ``fault_injected`` and unlisted codes, one derived from ``status``.

    A fault never reached the upstream, so its 5xx reads as "unavailable, not taken"; any other
    unlisted 5xx reads as "unknown", which no retry rule resends."""
    row = MAPPINGS.get(code)
    if row is not None and row.google:
        return row
    google = _GOOGLE_BY_STATUS.get(status, "INTERNAL" if status >= 500 else "FAILED_PRECONDITION")
    if status == 429:
        meta, transient = META_RATE_LIMIT, True
    elif status >= 500:
        meta, transient = (META_UNAVAILABLE, True) if code == "fault_injected" else (META_UNKNOWN, False)
    else:
        meta, transient = META_INVALID, False
    number = row.number if row is not None else 0
    hint = row.hint if row is not None else "An answer of the gateway itself, not of the upstream."
    return Mapping(number, google, meta, transient, hint)


def answer_format(kind: str | None, path: str) -> str:
    """The error format for an upstream of ``kind`` and the ``path`` it receives (prefix removed)."""
    if kind == "gemini":
        return GEMINI
    if kind == "graph":
        return GRAPH
    if kind == "supabase":
        for prefix, fmt in _SUPABASE_APIS:
            if path == prefix or path.startswith(prefix + "/"):
                return fmt
    return GENERIC


@dataclass(frozen=True, slots=True)
class Rendered:
    """An answer ready to send: status, headers (the gateway's own), JSON body."""

    status: int
    headers: dict[str, str]
    body: bytes


def _seconds(retry_after: float | None) -> int | None:
    return None if retry_after is None else max(0, math.ceil(retry_after))


def _text(error: GatewayError) -> str:
    """The message an SDK shows: the gateway, the upstream, what happened, and the gateway's code (some
    SDK exceptions keep nothing else: supabase-auth's AuthRetryableError has no code for a 502/503/504)."""
    where = f"gateway, upstream {error.upstream}" if error.upstream else "gateway"
    return f"{where}: {error.message} [{error.code}]"


def _generic(error: GatewayError, wait: int | None) -> dict[str, Any]:
    body: dict[str, Any] = {"code": error.code, "message": error.message}
    if error.upstream is not None:
        body["upstream"] = error.upstream
    if error.attempts is not None:
        body["attempts"] = error.attempts
    if wait is not None:
        body["retry_after_s"] = wait
    return {"error": body}


def _gemini(error: GatewayError, row: Mapping, wait: int | None, request_id: str | None) -> dict[str, Any]:
    metadata: dict[str, str] = {}  # google.rpc.ErrorInfo.metadata is map<string, string>
    if error.upstream is not None:
        metadata["upstream"] = error.upstream
        metadata["attempts"] = str(error.attempts or 0)
    if request_id is not None:
        metadata["request_id"] = request_id
    details: list[dict[str, Any]] = [
        {
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": error.code.upper(),
            "domain": "gateway",
            "metadata": metadata,
        }
    ]
    if wait is not None:
        details.append({"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{wait}s"})
    details.extend(error.details)  # the error's own (a quota_exhausted's QuotaFailure)
    body = {"code": error.status, "message": _text(error), "status": row.google, "details": details}
    return {"error": body}


def _graph(error: GatewayError, row: Mapping, request_id: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "message": _text(error),
        "type": "GatewayException",
        "code": row.meta_code,
        "error_subcode": row.subcode,
        "is_transient": row.meta_transient,
    }
    if request_id is not None:
        body["fbtrace_id"] = request_id
    body["error_data"] = {"details": error.code}
    return {"error": body}


def _details(error: GatewayError, wait: int | None, request_id: str | None) -> str:
    """PostgREST's ``details``: what the SDK's exception cannot otherwise show (it keeps no response)."""
    parts = [f"HTTP {error.status} from the gateway, not from the upstream"]
    if error.upstream is not None:
        parts.append(f"upstream: {error.upstream}")
        parts.append(f"attempts: {error.attempts or 0}")
    if request_id is not None:
        parts.append(f"x-request-id: {request_id}")
    if wait is not None:
        parts.append(f"Retry-After: {wait}s")
    return "; ".join(parts)


def render(error: GatewayError, fmt: str = GENERIC, request_id: str | None = None) -> Rendered:
    """``error`` in format ``fmt`` (one of FORMATS): status, the gateway's headers and the body.

    ``no_route`` is always generic: no upstream was chosen, so there is no API to imitate."""
    wait = _seconds(error.retry_after)
    row = mapping(error.code, error.status)
    if error.code == "no_route":
        fmt = GENERIC
    data: dict[str, Any]
    if fmt == GEMINI:
        data = _gemini(error, row, wait, request_id)
    elif fmt == GRAPH:
        data = _graph(error, row, request_id)
    elif fmt == POSTGREST:
        data = {"code": error.code, "message": _text(error), "details": _details(error, wait, request_id)}
        data["hint"] = row.hint
    elif fmt == GOTRUE:
        data = {"code": error.status, "error_code": error.code, "msg": _text(error)}
    elif fmt == STORAGE:
        data = {"statusCode": str(error.status), "error": error.code, "code": error.code, "message": _text(error)}
    else:
        data = _generic(error, wait)
    headers = {"Content-Type": "application/json", "x-gateway-error": error.code}
    if wait is not None:
        headers["Retry-After"] = str(wait)
    return Rendered(error.status, headers, json.dumps(data, separators=(",", ":")).encode())


def error_response(
    error: GatewayError,
    fmt: str = GENERIC,
    headers: dict[str, str] | None = None,
    request_id: str | None = None,
) -> web.Response:
    """``render`` as an aiohttp response; ``headers`` (x-request-id, x-gateway-*) are added."""
    rendered = render(error, fmt, request_id)
    out = {**(headers or {}), **rendered.headers}
    return web.Response(status=rendered.status, body=rendered.body, headers=out)


def raw_answer(error: GatewayError) -> bytes:
    """A whole HTTP/1.1 answer, generic format, for a connection that has no request object."""
    rendered = render(error)
    head = [f"HTTP/1.1 {rendered.status} {HTTPStatus(rendered.status).phrase}"]
    head += [f"{name}: {value}" for name, value in rendered.headers.items()]
    head += [f"Content-Length: {len(rendered.body)}", "Connection: close"]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + rendered.body
