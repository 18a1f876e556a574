"""What the simulator's API modules share: errors before their shape, JSON answers, forms, tokens.

Owns ``ApiError`` (an error to answer, before ``errors.api_error`` puts it in an API's shape) and
``ApiFault`` (the same, raised by a handler in ``graph``, ``media``, ``gemini``, ``auth``,
``postgrest`` or ``storage``), ``json_response``, the ``Retry-After`` header, ``bearer`` (the
token of ``Authorization: Bearer``), ``parse_form`` (``multipart/form-data`` as Graph's media
upload and Storage's upload send it) and ``EPOCH``, the date the simulated data is stamped from.
"""

from __future__ import annotations

import datetime as dt
import email.parser
import email.policy
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass

from aiohttp import web

__all__ = ["EPOCH", "ApiError", "ApiFault", "FormPart", "bearer", "json_response", "parse_form", "retry_after_header"]

EPOCH = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


@dataclass(frozen=True, slots=True)
class ApiError:
    """An error to answer, before it is put in an API's shape."""

    status: int | None
    code: int | str | None = None
    subcode: int | None = None
    message: str | None = None
    retry_after: float | None = None
    retry_delay: float | None = None
    plain: bool = False  # the platform's proxy answers: an HTML body, no API code


class ApiFault(Exception):
    """An API error to answer: ``family`` picks the shape (graph, gemini, rest, auth, storage)."""

    def __init__(
        self,
        family: str,
        status: int | None,
        code: int | str | None = None,
        message: str | None = None,
        subcode: int | None = None,
    ) -> None:
        super().__init__(message or str(code))
        self.family, self.status, self.code, self.message, self.subcode = family, status, code, message, subcode


def json_response(status: int, data: object, headers: Mapping[str, str] | None = None) -> web.Response:
    """A compact JSON answer; ``headers`` may replace the Content-Type."""
    body = json.dumps(data, separators=(",", ":")).encode()
    out = {"Content-Type": "application/json; charset=UTF-8", **(headers or {})}
    return web.Response(status=status, body=body, headers=out)


def retry_after_header(seconds: float | None) -> dict[str, str]:
    """``Retry-After`` in whole seconds (rounded up), or no header."""
    return {} if seconds is None else {"Retry-After": str(max(0, math.ceil(seconds)))}


def bearer(request: web.BaseRequest) -> str | None:
    """The token of ``Authorization: Bearer …``, or None."""
    auth = request.headers.get("Authorization", "")
    scheme, _, token = auth.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


@dataclass(frozen=True, slots=True)
class FormPart:
    """One field of a multipart form: its bytes, and for a file its name and type."""

    data: bytes
    filename: str | None = None
    content_type: str | None = None

    @property
    def text(self) -> str:
        return self.data.decode("utf-8", "replace")


def parse_form(content_type: str, body: bytes) -> dict[str, FormPart] | None:
    """The fields of a ``multipart/form-data`` body by name; None when it is not one (or is malformed)."""
    if not content_type.lower().startswith("multipart/form-data") or "boundary=" not in content_type:
        return None
    head = f"MIME-Version: 1.0\r\nContent-Type: {content_type}\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    if not message.is_multipart() or message.defects:
        return None
    fields: dict[str, FormPart] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            continue
        payload = part.get_payload(decode=True)
        data = payload if isinstance(payload, bytes) else b""
        filename = part.get_filename()
        kind = part.get("Content-Type")
        fields[name] = FormPart(data, filename, str(kind) if kind is not None else None)
    return fields
