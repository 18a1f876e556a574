"""Logging: JSON (or text) lines on stdout, the access log, and query-string redaction.

Owns the log format (one JSON object per line: ``time``, ``level``, ``msg`` and fields), the
access-log line of contract §5 (time, request_id, upstream, route, method, path, status,
duration_ms, attempts, cache, error), and ``redact_query``, which shows the values of ``key``,
``token``, ``access_token``, ``apikey`` and ``signature`` as ``***``. Header values are never
logged: no function here accepts headers.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any

__all__ = ["access_log", "configure", "log", "redact_query"]

log = logging.getLogger("gateway")
_access = logging.getLogger("gateway.access")

_SECRET_PARAMS = re.compile(r"(^|&)((?:key|token|access_token|apikey|signature)=)[^&]*", re.IGNORECASE)


def redact_query(query: str) -> str:
    """Return the raw query string with secret parameter values replaced by ``***``."""
    return _SECRET_PARAMS.sub(r"\1\2***", query) if query else query


def _timestamp(created: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{int(created % 1 * 1000):03d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object per line; ``extra={"fields": {...}}`` adds fields."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {"time": _timestamp(record.created), "level": record.levelname.lower()}
        if record.name != "gateway.access":
            data["msg"] = record.getMessage()
        data.update(getattr(record, "fields", {}))
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, separators=(",", ":"), default=str)


class TextFormatter(logging.Formatter):
    """``time level msg key=value …`` for people reading a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", {})
        extra = " ".join(f"{k}={v}" for k, v in fields.items())
        line = f"{_timestamp(record.created)} {record.levelname.lower():7} {record.getMessage()} {extra}".rstrip()
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def configure(level: str = "info", fmt: str = "json", access: bool = True) -> None:
    """Send the gateway's logs to stdout in ``fmt``; silence aiohttp's own access log."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
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


def access_log(fields: dict[str, Any]) -> None:
    """Write one access-log line; ``fields`` are contract §5's, already redacted."""
    if not _access.disabled:
        _access.info("access", extra={"fields": fields})
