"""Logging: JSON (or text) lines on stdout, the access log, and query-string redaction.

Owns the log format (one JSON object per line: ``time``, ``level``, ``msg`` and fields), the
access-log line of contract §5 (time, request_id, upstream, route, method, path, status,
duration_ms, attempts, cache, error), and the redaction of what may carry a secret:

- ``redact_query``: the values of the query parameters ``log.redact_query`` names (the contract's
  ``key``, ``token``, ``access_token``, ``apikey`` and ``signature`` always among them; by default also
  Graph's ``appsecret_proof``, lookaside's ``hash``/``oh``/``oe`` and Supabase's other token forms;
  names matched case-insensitively and percent-decoded) shown as ``***``;
- ``redact_text``: in free text (event fields, exception text, config errors), URL passwords (or
  a bare userinfo), secret query values inside URLs (the default names, those ``configure`` was
  given, and ``password``), and the values a config problem quotes for a secret key (``admin.token``,
  ``set_headers``, ``cache_store.url``) shown as ``***``. Every line the formatters write, except
  the access log (already redacted), goes through it;
- ``redact_data``: ``redact_text`` on every string of JSON-able data (``/admin/config``, ``gateway check``).

Header values are never logged: no function here accepts headers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import sys
import time
from collections.abc import Iterable
from json.encoder import encode_basestring_ascii as _quote  # the C speedup
from typing import Any, TextIO
from urllib.parse import unquote_plus

__all__ = [
    "CONTRACT_REDACT_QUERY",
    "DEFAULT_REDACT_QUERY",
    "access_log",
    "access_logging",
    "configure",
    "log",
    "redact_data",
    "redact_query",
    "redact_text",
]

log = logging.getLogger("gateway")
_access = logging.getLogger("gateway.access")

# Contract §5: always hidden, whatever log.redact_query says.
CONTRACT_REDACT_QUERY = frozenset({"key", "token", "access_token", "apikey", "signature"})
# log.redact_query's default: the contract's five, then what the three APIs put in URLs.
DEFAULT_REDACT_QUERY: tuple[str, ...] = (
    "key",
    "token",
    "access_token",
    "apikey",
    "signature",
    # Graph: the app secret's HMAC of the token, token exchange and debugging
    "appsecret_proof",
    "client_secret",
    "fb_exchange_token",
    "input_token",
    # lookaside.fbsbx.com media URLs: the signature and its expiry
    "hash",
    "oh",
    "oe",
    # Supabase: email links (token_hash), refresh tokens, the Realtime/REST key spelled with '_'
    "token_hash",
    "refresh_token",
    "api_key",
)
SECRET_PARAMS = frozenset(DEFAULT_REDACT_QUERY)


def redact_query(query: str, names: frozenset[str] = SECRET_PARAMS) -> str:
    """Return the raw query string with the values of the parameters in ``names`` (lower-case)
    replaced by ``***``.

    A parameter's name is compared percent-decoded and case-folded (``%6Bey`` and ``KEY`` are
    ``key`` to an upstream, so they are here too); everything else is returned byte for byte."""
    if not query:
        return query
    parts = query.split("&")
    for i, part in enumerate(parts):
        name, eq, _ = part.partition("=")
        if eq and unquote_plus(name).strip().lower() in names:
            parts[i] = name + "=***"
    return "&".join(parts)


# userinfo of a URL: "user:password@" keeps the user, a bare "token@" is hidden whole
_URL_USERINFO = re.compile(r"(?P<scheme>\b[a-z][a-z0-9+.\-]*://)(?P<info>[^\s/?#@'\"]*)@", re.IGNORECASE)


def _url_param(names: Iterable[str]) -> re.Pattern[str]:
    """Secret query values inside a URL (after '?' or '&'); "password" for redis://host/0?password=..."""
    alternatives = "|".join(re.escape(name) for name in sorted({*names, "password"}, key=len, reverse=True))
    return re.compile(rf"(?P<lead>[?&](?:{alternatives})=)[^&\s'\"#]*", re.IGNORECASE)


_URL_PARAM = _url_param(SECRET_PARAMS)
# a config problem ("<file>: <location>: <message>, got <value>") about a secret key
_SECRET_PROBLEM = re.compile(
    r"^(?P<head>(?:[^\n]*?: )?(?:[\w\-\[\]]+\.)*(?:token|password|set_headers(?:\.[^\s:]+)?|cache_store(?:\.url)?)"
    r": (?!names use)[^\n]*?, got )[^\n]*$",
    re.MULTILINE,
)


def _userinfo(match: re.Match[str]) -> str:
    user, colon, _ = match["info"].partition(":")
    return f"{match['scheme']}{user}:***@" if colon else f"{match['scheme']}***@"


def redact_text(text: str) -> str:
    """``text`` with URL credentials, secret URL query values and quoted secret config values as ``***``."""
    if "://" in text:
        text = _URL_USERINFO.sub(_userinfo, text)
    if "=" in text:
        text = _URL_PARAM.sub(r"\g<lead>***", text)
    if ", got " in text:
        text = _SECRET_PROBLEM.sub(r"\g<head>***", text)
    return text


def redact_data(data: Any) -> Any:
    """``redact_text`` applied to every string in JSON-like ``data`` (dicts, lists, tuples)."""
    if isinstance(data, str):
        return redact_text(data)
    if isinstance(data, dict):
        return {key: redact_data(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [redact_data(value) for value in data]
    return data


_second: tuple[int, str] = (-1, "")  # the last whole second formatted, and its text


def _timestamp(created: float) -> str:
    global _second
    whole = int(created)
    if whole != _second[0]:
        _second = (whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)))
    return f"{_second[1]}.{int(created % 1 * 1000):03d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object per line; ``extra={"fields": {...}}`` adds fields."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {"time": _timestamp(record.created), "level": record.levelname.lower()}
        if record.name == "gateway.access":  # built from redacted parts; the hot path stays cheap
            data.update(getattr(record, "fields", {}))
            return json.dumps(data, separators=(",", ":"), default=str)
        data["msg"] = redact_text(record.getMessage())
        for name, value in getattr(record, "fields", {}).items():
            data[name] = redact_text(value) if isinstance(value, str) else value
        if record.exc_info:
            data["exception"] = redact_text(self.formatException(record.exc_info))
        return json.dumps(data, separators=(",", ":"), default=str)


class TextFormatter(logging.Formatter):
    """``time level msg key=value …`` for people reading a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", {})
        extra = " ".join(f"{k}={v}" for k, v in fields.items())
        line = f"{_timestamp(record.created)} {record.levelname.lower():7} {record.getMessage()} {extra}".rstrip()
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line if record.name == "gateway.access" else redact_text(line)


def configure(level: str = "info", fmt: str = "json", access: bool = True, redact: Iterable[str] = ()) -> None:
    """Send the gateway's logs to stdout in ``fmt``; silence aiohttp's own access log. ``redact``:
    ``log.redact_query``, whose names free text hides inside URLs too (with the defaults)."""
    global _URL_PARAM
    _URL_PARAM = _url_param(SECRET_PARAMS | {name.lower() for name in redact})
    global _direct
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    _direct = handler if fmt == "json" else None
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    log.setLevel(level.upper())
    _access.disabled = not access
    _access.setLevel(logging.INFO)
    logging.getLogger("aiohttp.access").disabled = True


def event(msg: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log a lifecycle event with fields (never header values or secrets)."""
    log.log(level, msg, extra={"fields": fields})


def access_logging() -> bool:
    """Whether access-log lines are written (``log.access_log``): a caller skips building one when not."""
    return not _access.disabled


def access_log(fields: dict[str, Any]) -> None:
    """Write one access-log line; ``fields`` are contract §5's, already redacted.

    While the JSON handler ``configure`` installed is the only one (as in production), the line is
    written straight to its stream, the same bytes ``JsonFormatter`` writes, without a ``LogRecord``,
    the logging module's locks and lookups or ``json.dumps`` (about 45 µs a line, issue 17; this path
    about 3 µs), and the lines of one event-loop turn are flushed together, at its end. Any other
    set-up (a text format, another handler such as a test's log capture) goes through ``logging``."""
    if _access.disabled:
        return
    root = logging.root.handlers
    direct = _direct
    if direct is None or len(root) != 1 or root[0] is not direct or _access.handlers:
        _access.info("access", extra={"fields": fields})
        return
    cache, error = fields["cache"], fields["error"]
    line = (
        f'{{"time":"{_timestamp(time.time())}","level":"info","request_id":{_quote(fields["request_id"])},'
        f'"upstream":{_quote(fields["upstream"])},"route":{_quote(fields["route"])},"method":{_quote(fields["method"])},'
        f'"path":{_quote(fields["path"])},"status":{int(fields["status"])},"duration_ms":{float(fields["duration_ms"])!r},'
        f'"attempts":{int(fields["attempts"])},"cache":{"null" if cache is None else _quote(cache)},'
        f'"error":{"null" if error is None else _quote(error)}}}\n'
    )
    with contextlib.suppress(OSError, ValueError):  # as logging.StreamHandler: a log write never fails a request
        direct.stream.write(line)
    _flush_soon(direct.stream)


_direct: logging.StreamHandler[TextIO] | None = None  # configure's JSON handler: access lines bypass logging
_flush_pending = False


def _flush_soon(stream: TextIO) -> None:
    """Flush ``stream`` once the event loop's current turn ends (at once when no loop runs)."""
    global _flush_pending
    if _flush_pending:
        return
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        stream.flush()
        return
    _flush_pending = True
    loop.call_soon(_flush, stream)


def _flush(stream: TextIO) -> None:
    global _flush_pending
    _flush_pending = False
    with contextlib.suppress(OSError, ValueError):  # stdout closed: as logging.StreamHandler, never raise
        stream.flush()
