"""The field types of gateway.yaml: units, outcome tokens, methods, path patterns, egress proxies.

Owns the annotated types the spec models are written with — ``Duration``, ``Size``, ``Rate`` and
``Percent`` (parsed by ``gateway.units``, dumped back as text), ``Secret`` (dumped as ``***``),
``OutcomeToken`` (``connect-failure``, ``timeout``, ``reset``, ``503``, ``5xx``, ``code:N``; the
``outcomes.Outcome`` of a try is something else), ``Method``, ``Pattern`` (a path pattern that
compiles) and ``Proxy`` (``env``, ``direct`` or an ``http://`` URL, never quoted back) — and the
final-text validation error they raise (``error``). ``redact_url`` hides a URL's credentials.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer, WithJsonSchema
from pydantic_core import PydanticCustomError
from yarl import URL

from ..routing import PathPattern, PatternError
from ..units import (
    format_duration,
    format_percent,
    format_rate,
    format_size,
    parse_duration,
    parse_percent,
    parse_rate,
    parse_size,
    shown,
)

__all__ = [
    "METHODS",
    "Duration",
    "Method",
    "OutcomeToken",
    "Pattern",
    "Percent",
    "Proxy",
    "Rate",
    "Secret",
    "Size",
    "error",
    "proxy_url_ok",
    "redact_url",
]

METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def error(kind: str, message: str) -> PydanticCustomError:
    """A validation error whose message is final text (no context: nothing is templated)."""
    return PydanticCustomError(kind, message)


def _unit(parser: Any, kind: str) -> Any:
    def validate(value: object) -> object:
        try:
            return parser(value)
        except ValueError as exc:
            raise error(kind, str(exc)) from None

    return BeforeValidator(validate)


Duration = Annotated[
    float,
    _unit(parse_duration, "duration"),
    PlainSerializer(format_duration, return_type=str),
    WithJsonSchema({"type": "string", "pattern": r"^(\d+(\.\d+)?(ms|s|m|h))+$", "examples": ["250ms", "10s"]}),
]
Size = Annotated[
    int,
    _unit(parse_size, "size"),
    PlainSerializer(format_size, return_type=str),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": 0},
                {"type": "string", "pattern": r"^\d+(\.\d+)?\s*(B|KB|MB|GB|KiB|MiB|GiB)?$"},
            ],
            "examples": ["1MiB"],
        }
    ),
]
Rate = Annotated[
    float,
    _unit(parse_rate, "rate"),
    PlainSerializer(format_rate, return_type=str),
    WithJsonSchema({"type": "string", "pattern": r"^\d+(\.\d+)?\s*/\s*(s|m|h)$"}),
]
Percent = Annotated[
    float,
    _unit(parse_percent, "percent"),
    PlainSerializer(format_percent, return_type=str),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "minimum": 0, "maximum": 100},
                {"type": "string", "pattern": r"^\d+(\.\d+)?%$"},
            ]
        }
    ),
]
Secret = Annotated[str, PlainSerializer(lambda v: "***" if v else "", return_type=str)]

_TOKEN = re.compile(r"connect-failure|timeout|reset|[1-5]xx|[1-5]\d\d|code:[A-Za-z0-9_.\-]+", re.ASCII)


def _outcome_token(value: object) -> str:
    token = str(value).strip() if isinstance(value, (str, int)) else None
    if token is None or not _TOKEN.fullmatch(token):
        raise error(
            "outcome",
            "expected an outcome: connect-failure, timeout, reset, a status like 503, "
            f"a class like 5xx, or code:N; got {shown(value)}",
        )
    return token


def _method(value: object) -> str:
    if not isinstance(value, str) or value.upper() not in METHODS:
        raise error("method", f"expected one of {' '.join(METHODS)}, got {shown(value)}")
    return value.upper()


OutcomeToken = Annotated[str, BeforeValidator(_outcome_token), WithJsonSchema({"type": ["string", "integer"]})]
Method = Annotated[str, BeforeValidator(_method), WithJsonSchema({"enum": list(METHODS)})]


def _pattern(value: object) -> str:
    if not isinstance(value, str):
        raise error("pattern", f"expected a path pattern like '/v1/{{id}}', got {shown(value)}")
    try:
        PathPattern.compile(value)
    except PatternError as exc:
        raise error("pattern", str(exc)) from None
    return value


Pattern = Annotated[str, BeforeValidator(_pattern)]

_PROXY_WORDS = ("env", "direct")


def _proxy(value: object) -> str:
    """``env``, ``direct`` or ``http://[user:password@]host:port`` (never quoted back: it may hold a password)."""
    if isinstance(value, str) and value in _PROXY_WORDS:
        return value
    if not isinstance(value, str) or not proxy_url_ok(value):
        raise error(
            "proxy",
            "expected 'env', 'direct' or an http:// proxy URL like 'http://proxy.internal:3128' "
            "(no path, no query; https:// proxies are not supported)",
        )
    return value


def proxy_url_ok(text: str) -> bool:
    try:
        url = URL(text)
    except ValueError:
        return False
    bare = url.path in ("", "/") and not url.query_string and not url.fragment
    return bool(url.scheme == "http" and url.host and bare)


Proxy = Annotated[
    str,
    BeforeValidator(_proxy),
    PlainSerializer(lambda v: redact_url(v) if v not in _PROXY_WORDS else v, return_type=str),
    WithJsonSchema(
        {
            "type": "string",
            "description": "egress HTTP proxy: 'env' (HTTPS_PROXY, HTTP_PROXY, NO_PROXY), 'direct', or an http:// URL",
            "examples": ["env", "direct", "http://proxy.internal:3128"],
        }
    ),
]


def redact_url(url: str) -> str:
    """``url`` with its password (or a bare token as its user) shown as ``***``; ``***`` when unreadable."""
    try:
        parsed = URL(url)
    except ValueError:
        return "***"
    if not parsed.scheme:  # not read as a URL: its userinfo, if any, cannot be told apart
        return "***"
    if parsed.password:
        return str(parsed.with_password("***"))
    return str(parsed.with_user("***")) if parsed.user else url  # a bare token as the user
