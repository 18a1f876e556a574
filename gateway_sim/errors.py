"""Which shape a simulated error takes, and whether a scenario's error code fits its API.

Owns ``family`` (a route's error shape: graph, gemini, rest for PostgREST, auth for GoTrue, or
storage), the usual transient error of each (``DEFAULT_ERROR_STATUS``, drawn by ``errors.rate``
without a ``mix``), ``plain_error`` (a load balancer's HTML page, no API code), ``api_error`` (an
``ApiError`` rendered by the family's module) and ``code_problem`` (the scenario check that a
code belongs to its upstream's API).
"""

from __future__ import annotations

from http import HTTPStatus

from aiohttp import web

from .auth import GOTRUE_CODES, gotrue_error
from .common import ApiError, retry_after_header
from .gemini import GOOGLE_STATUSES, google_error
from .graph import GRAPH_CODES, graph_error
from .postgrest import POSTGREST_CODES, postgrest_error
from .storage import STORAGE_CODES, storage_error

__all__ = ["DEFAULT_ERROR_STATUS", "api_error", "code_problem", "family", "plain_error"]

# With errors.rate set and no mix: each API's usual transient error.
DEFAULT_ERROR_STATUS = {"graph": 500, "lookaside": 500, "gemini": 503, "rest": 503, "auth": 500, "storage": 500}


def family(upstream: str, route: str) -> str:
    """Which error shape a route answers in: graph, gemini, rest (PostgREST), auth (GoTrue) or storage."""
    if upstream == "supabase":
        return "auth" if route.startswith("auth_") else "storage" if route.startswith("storage_") else "rest"
    return "graph" if upstream == "lookaside" else upstream


def plain_error(error: ApiError) -> web.Response:
    """A load balancer's or platform proxy's answer: a short HTML page, no API error code."""
    status = error.status or 503
    reason = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Error"
    text = f"<html><head><title>{status} {reason}</title></head><body><h1>{status} {reason}</h1></body></html>\n"
    headers = {"Content-Type": "text/html; charset=utf-8", **retry_after_header(error.retry_after)}
    return web.Response(status=status, body=text.encode(), headers=headers)


def api_error(family: str, error: ApiError) -> web.Response:
    """Render ``error`` in the shape of ``family`` (graph, gemini, rest, auth, storage), or plain."""
    if error.plain:
        return plain_error(error)
    if family == "graph":
        return graph_error(error)
    if family == "gemini":
        return google_error(error)
    if family == "auth":
        return gotrue_error(error)
    if family == "storage":
        code = str(error.code) if error.code is not None else None
        return storage_error(error.status, code, error.message, error.retry_after)
    return postgrest_error(error)


def code_problem(upstream: str, status: int | None, code: int | str) -> str | None:
    """Why ``code`` cannot be answered by ``upstream`` (with ``status``, if set), or None when it can."""
    if upstream in ("graph", "lookaside"):
        if not isinstance(code, int):
            return f"Meta's error codes are numbers like 131000, got {code!r}"
        if code not in GRAPH_CODES and status is None:
            return f"{code} is not in the sim's table of Meta codes: set its status too"
        return None
    if upstream == "gemini":
        if code not in GOOGLE_STATUSES:
            return f"expected one of {', '.join(GOOGLE_STATUSES)}, got {code!r}"
        if status is not None and GOOGLE_STATUSES[str(code)][0] != status:
            return f"{code} goes with status {GOOGLE_STATUSES[str(code)][0]}, not {status}"
        return None
    known = str(code) in POSTGREST_CODES or str(code) in GOTRUE_CODES or str(code) in STORAGE_CODES
    if not known and status is None:
        return f"{code!r} is not in the sim's table of PostgREST / GoTrue / Storage codes: set its status too"
    return None
