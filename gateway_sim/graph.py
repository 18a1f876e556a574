"""The simulated WhatsApp Graph API: messages, the business profile, and Meta's error shape.

Owns ``POST /{ver}/{phone_id}/messages`` (a message answered with its ``wamid``; a read receipt,
``"status": "read"``, with ``{"success": true}``), ``GET|POST /{ver}/{phone_id}/whatsapp_business_profile``,
Meta's error codes (``GRAPH_CODES``: code → HTTP status and message) and ``graph_error``, which
renders ``{"error": {"message", "type", "code", "error_subcode", "error_data", "fbtrace_id"}}``
with ``x-fb-trace-id`` (and ``WWW-Authenticate`` on 401). Media (upload, URL, download) is
``media``'s.
"""

from __future__ import annotations

import base64
import json
import secrets
from typing import Any

from aiohttp import web

from .common import ApiError, json_response, retry_after_header

__all__ = ["GRAPH_CODES", "business_profile", "graph_error", "send_message"]

# Meta: code → (HTTP status, message). Statuses marked unverified in upstream-apis.md are Meta's table's.
GRAPH_CODES: dict[int, tuple[int, str]] = {
    1: (400, "An unknown error occurred"),
    2: (503, "Service temporarily unavailable"),
    4: (400, "(#4) Application request limit reached"),
    10: (403, "(#10) Application does not have permission for this action"),
    100: (400, "(#100) Invalid parameter"),
    104: (400, "An access token is required to request this resource."),
    190: (401, "Invalid OAuth access token - Cannot parse access token"),
    368: (400, "(#368) Temporarily blocked for policies violations"),
    80007: (400, "(#80007) Rate limit issues"),
    130429: (429, "(#130429) Rate limit hit"),
    131000: (500, "(#131000) Something went wrong"),
    131016: (503, "(#131016) Service unavailable"),
    131026: (400, "(#131026) Message undeliverable"),
    131047: (400, "(#131047) Re-engagement message"),
    131048: (400, "(#131048) Spam rate limit hit"),
    131049: (400, "(#131049) This message was not delivered to maintain healthy ecosystem engagement."),
    131056: (400, "(#131056) (Business Account, Consumer Account) pair rate limit hit"),
    131057: (503, "(#131057) Account in maintenance mode"),
    133004: (503, "(#133004) Server temporarily unavailable"),
}
_GRAPH_BY_STATUS = {400: 100, 401: 190, 403: 10, 429: 130429, 500: 131000, 503: 2}


def graph_error(error: ApiError) -> web.Response:
    """Meta's error body; the code decides the status unless the scenario set one."""
    code = error.code if isinstance(error.code, int) else _GRAPH_BY_STATUS.get(error.status or 500, 0)
    if not code:
        code = 131000 if (error.status or 500) >= 500 else 100
    status = error.status or GRAPH_CODES.get(code, (500, ""))[0]
    message = error.message or GRAPH_CODES.get(code, (status, f"(#{code}) Error"))[1]
    body: dict[str, Any] = {"message": message, "type": "OAuthException", "code": code}
    if code >= 80000:
        body["error_data"] = {"messaging_product": "whatsapp", "details": message.split(") ", 1)[-1]}
    if error.subcode is not None:
        body["error_subcode"] = error.subcode
    trace = secrets.token_urlsafe(15)
    body["fbtrace_id"] = trace
    headers = {"x-fb-trace-id": trace, **retry_after_header(error.retry_after)}
    if status == 401:
        headers["WWW-Authenticate"] = 'OAuth "Facebook Platform" "invalid_token" "Invalid OAuth access token"'
    return json_response(status, {"error": body}, headers)


def send_message(body: bytes) -> web.Response:
    """``POST /{ver}/{phone_id}/messages``: a message (or a read receipt) answered as Meta does."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        data = None
    if not isinstance(data, dict):
        return graph_error(ApiError(400, 100, None, "(#100) Invalid parameter"))
    if data.get("messaging_product") != "whatsapp":
        return graph_error(ApiError(400, 100, None, "(#100) The parameter messaging_product is required."))
    if data.get("status") == "read":
        return json_response(200, {"success": True})
    to = data.get("to")
    if not isinstance(to, str) or not to:
        return graph_error(ApiError(400, 100, None, "(#100) The parameter to is required."))
    wamid = "wamid." + base64.b64encode(b"\x15\x02\x00\x11\x18\x12" + secrets.token_bytes(24)).decode()
    wa_id = "".join(ch for ch in to if ch.isdigit())
    return json_response(
        200,
        {"messaging_product": "whatsapp", "contacts": [{"input": to, "wa_id": wa_id}], "messages": [{"id": wamid}]},
    )


def business_profile(method: str, phone_id: str) -> web.Response:
    """``GET /{ver}/{phone_id}/whatsapp_business_profile`` (``{"data": [profile]}``); POST updates: success."""
    if method == "POST":
        return json_response(200, {"success": True})
    profile = {
        "about": "Simulated business",
        "address": "1 Loopback Road",
        "description": f"The simulator's profile of phone number {phone_id}",
        "email": "support@example.test",
        "messaging_product": "whatsapp",
        "profile_picture_url": "https://lookaside.fbsbx.com/whatsapp_business/profile/?id=1",
        "websites": ["https://example.test/"],
        "vertical": "OTHER",
    }
    return json_response(200, {"data": [profile]})
