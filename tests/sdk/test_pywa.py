"""pywa through the gateway: sends, media URL, media download and upload, business profile, and
every gateway error as pywa's own ``WhatsAppError`` (integer Meta code, subcode, is_transient,
details, fbtrace_id = request id) — where the issue saw ``int('breaker_open')`` crash (issue 15)."""

from __future__ import annotations

import hashlib

import httpx
import pytest
from pywa.errors import RateLimitHit, ServiceUnavailable, WhatsAppError

from gateway.answers import MAPPINGS

from .harness import BAD_TIMEOUT_HEADER, ERRORS, STATUS, TIGHT_BODY, Stack, provoke, recipe

PHONE = "1234"
TO = "15550001111"
API_ERRORS = [e for e in ERRORS if e != "no_route"]
# pywa's class for the Meta code the gateway writes (README, "The gateway's own answers, per API").
PYWA_CLASS = {131016: ServiceUnavailable, 130429: RateLimitHit, 1: WhatsAppError, 100: WhatsAppError}


def client(stack: Stack, graph: str = "graph", lookaside: str = "lookaside") -> dict:
    """The README's setup (``wa``, ``session``), its transport pointed at ``graph`` and ``lookaside``."""
    return recipe(
        "pywa",
        {
            '"http://127.0.0.1:8080"': f'"{stack.url}"',
            '"/graph"': f'"/{graph}"',
            '"/lookaside"': f'"/{lookaside}"',
        },
        {"PHONE_ID": PHONE, "WHATSAPP_TOKEN": "EAAG-test"},
    )


# ---------------------------------------------------------------- normal calls


def test_send_upload_media_url_download_delete_and_profile(stack):
    wa = client(stack)["wa"]
    sent = wa.send_message(to=TO, text="hello from the suite")
    assert sent.id.startswith("wamid.")

    data = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 50
    media = wa.upload_media(data, mime_type="image/jpeg", filename="photo.jpg")
    url = wa.get_media_url(media.id)
    assert (url.mime_type, url.file_size, url.sha256) == ("image/jpeg", len(data), hashlib.sha256(data).hexdigest())
    assert url.url.startswith("https://lookaside.fbsbx.com/whatsapp_business/attachments/?mid=")  # Graph's host
    assert wa.get_media_bytes(url.url, timeout=65.0) == data  # through the transport, the gateway's /lookaside
    assert wa.delete_media(media.id).success is True
    with pytest.raises(WhatsAppError) as gone:  # deleted: Meta says it does not exist
        wa.get_media_url(media.id)
    assert (gone.value.code, gone.value.subcode) == (100, 33)

    profile = wa.get_business_profile()
    assert profile.industry.value == "OTHER" and profile.email == "support@example.test"


def test_requests_reach_the_sim_through_the_gateway(stack):
    before = stack.sim_stats()["upstreams"]["graph"]["routes"]["send_message"]["requests"]
    ns = client(stack)
    ns["wa"].send_message(to=TO, text="counted")
    after = stack.sim_stats()["upstreams"]["graph"]["routes"]["send_message"]["requests"]
    assert after == before + 1


# ---------------------------------------------------------------- gateway errors


def _check(err: WhatsAppError, error: str) -> None:
    row = MAPPINGS[error]
    code = {503: 131016}.get(STATUS[error], row.meta_code) if error == "fault_injected" else row.meta_code
    assert isinstance(err, PYWA_CLASS[code]) and err.code == code
    assert err.status_code == STATUS[error] and err.details == error and err.type == "GatewayException"
    assert err.subcode == row.subcode and err.message.startswith("gateway, upstream")
    assert err.fbtrace_id == err.raw_response.headers["x-request-id"]
    assert err.is_transient is (code in (131016, 130429))


@pytest.mark.parametrize("error", API_ERRORS)
def test_send_raises_whatsapp_error(stack, errors, error):
    text = "x" * (TIGHT_BODY + 1) if error == "body_too_large" else f"about {error}"
    with provoke(stack, error, "graph") as prefix:
        ns = client(stack, graph=prefix)
        if error == "bad_request":
            ns["session"].headers.update(BAD_TIMEOUT_HEADER)
        before = stack.sim_stats()["messages"]
        with pytest.raises(WhatsAppError) as info:
            ns["wa"].send_message(to=TO, text=text)
        after = stack.sim_stats()["messages"]
    err = info.value
    _check(err, error)
    if error in ("upstream_reset", "upstream_timeout"):
        assert not err.is_transient and err.code == 1  # the lost answer: never a code the send rule resends on
    if error == "upstream_reset":  # the sim took the message, the answer was lost: sent once, not twice
        assert after["received"] - before["received"] == 1 and after["delivered"] - before["delivered"] == 1
    errors.add("pywa", "send_message", error, err, err.status_code, f"{err.code}/{err.subcode}", err.message)


@pytest.mark.parametrize("error", ["breaker_open", "upstream_timeout", "rate_limited", "fault_injected"])
def test_media_url_and_upload_raise_whatsapp_error(stack, errors, error):
    with provoke(stack, error, "graph") as prefix:
        wa = client(stack, graph=prefix)["wa"]
        with pytest.raises(WhatsAppError) as url:
            wa.get_media_url("98765")
        with pytest.raises(WhatsAppError) as upload:
            wa.upload_media(b"\xff\xd8" * 100, mime_type="image/jpeg", filename="a.jpg")
    for call, err in (("get_media_url", url.value), ("upload_media", upload.value)):
        _check(err, error)
        errors.add("pywa", call, error, err, err.status_code, f"{err.code}/{err.subcode}", err.message)


def test_upload_over_the_limit_is_body_too_large(stack, errors):
    wa = client(stack, graph="graph-tight")["wa"]
    with pytest.raises(WhatsAppError) as info:
        wa.upload_media(b"\xff\xd8" * TIGHT_BODY, mime_type="image/jpeg", filename="big.jpg")
    _check(info.value, "body_too_large")
    err = info.value
    errors.add("pywa", "upload_media", "body_too_large", err, err.status_code, f"{err.code}/{err.subcode}", err.message)


@pytest.mark.parametrize("error", [e for e in API_ERRORS if e != "body_too_large"])
def test_media_download_raises_http_status_error_with_metas_body(stack, errors, error):
    """pywa streams downloads and calls ``raise_for_status()``: httpx's error, whose response (closed
    unread by pywa) still carries the status, ``x-gateway-error`` and ``x-request-id``."""
    media_url = "https://lookaside.fbsbx.com/whatsapp_business/attachments/?mid=42&ext=1&hash=x"
    with provoke(stack, error, "lookaside") as prefix:
        ns = client(stack, lookaside=prefix)
        if error == "bad_request":
            ns["session"].headers.update(BAD_TIMEOUT_HEADER)
        with pytest.raises(httpx.HTTPStatusError) as info:
            ns["wa"].get_media_bytes(media_url, timeout=65.0)
    response = info.value.response
    assert response.status_code == STATUS[error] and response.headers["x-gateway-error"] == error
    assert response.headers["x-request-id"] and response.headers["x-gateway-upstream"] == prefix
    code = response.headers["x-gateway-error"]
    errors.add("pywa", "get_media_bytes", error, info.value, response.status_code, f"header: {code}", str(info.value))


def test_no_route_is_a_wrong_transport_prefix(stack, errors):
    """No upstream matched: the generic shape, whose string code pywa cannot read (it parses Meta's
    code as an int). Only a transport prefix that names no upstream gets here; measured, not promised."""
    wa = client(stack, graph="nowhere")["wa"]
    with pytest.raises(Exception) as info:
        wa.send_message(to=TO, text="lost")
    errors.add("pywa", "send_message", "no_route", info.value, 404, None, str(info.value))


async def test_pywa_async_sends_and_raises_the_same(stack, errors):
    def async_client(graph: str) -> dict:
        replace = {'"http://127.0.0.1:8080"': f'"{stack.url}"', '"/graph"': f'"/{graph}"'}
        return recipe("pywa_async", replace, {"PHONE_ID": PHONE, "WHATSAPP_TOKEN": "EAAG-test"})

    ns = async_client("graph")
    sent = await ns["wa"].send_message(to=TO, text="hello, async")
    assert sent.id.startswith("wamid.")
    await ns["session"].aclose()
    with provoke(stack, "breaker_open", "graph") as prefix:
        ns = async_client(prefix)
        with pytest.raises(WhatsAppError) as info:
            await ns["wa"].send_message(to=TO, text="refused")
        await ns["session"].aclose()
    _check(info.value, "breaker_open")
    err = info.value
    errors.add(
        "pywa_async", "send_message", "breaker_open", err, err.status_code, f"{err.code}/{err.subcode}", err.message
    )
