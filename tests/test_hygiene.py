"""Request hygiene (contract §1): refused with 400 bad_request, never forwarded."""

from __future__ import annotations

import pytest

from .support import gateway_yaml, raw_request

REFUSED = {
    "absolute-form": b"GET http://other.host/api/x HTTP/1.1\r\nHost: other.host\r\n\r\n",
    "absolute-form-same-prefix": b"GET http://127.0.0.1/api/x HTTP/1.1\r\nHost: a\r\n\r\n",
    "authority-form CONNECT": b"CONNECT other.host:443 HTTP/1.1\r\nHost: other.host:443\r\n\r\n",
    "dot-dot": b"GET /api/a/../x HTTP/1.1\r\nHost: a\r\n\r\n",
    "dot": b"GET /api/./x HTTP/1.1\r\nHost: a\r\n\r\n",
    "encoded dot-dot": b"GET /api/a/%2e%2E/x HTTP/1.1\r\nHost: a\r\n\r\n",
    "half-encoded dot-dot": b"GET /api/.%2e/x HTTP/1.1\r\nHost: a\r\n\r\n",
    "encoded slash": b"GET /api/a%2Fb HTTP/1.1\r\nHost: a\r\n\r\n",
    "double slash": b"GET //api/x HTTP/1.1\r\nHost: a\r\n\r\n",
    "empty segment": b"GET /api//x HTTP/1.1\r\nHost: a\r\n\r\n",
    "backslash": b"GET /api/a\\..\\x HTTP/1.1\r\nHost: a\r\n\r\n",
    "CL and TE": (
        b"POST /api/x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    ),
    "two content-lengths": b"POST /api/x HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    "NUL in header": b"GET /api/x HTTP/1.1\r\nHost: a\r\nX-Bad: a\x00b\r\n\r\n",
    "control char in header": b"GET /api/x HTTP/1.1\r\nHost: a\r\nX-Bad: a\x07b\r\n\r\n",
    "obs-fold": b"GET /api/x HTTP/1.1\r\nHost: a\r\nX-Fold: a\r\n b\r\n\r\n",
    "bare LF in header": b"GET /api/x HTTP/1.1\r\nHost: a\r\nX-Bad: a\nX-Injected: 1\r\n\r\n",
}


@pytest.mark.parametrize("name", list(REFUSED))
async def test_refused_with_400_and_never_forwarded(upstream_factory, gateway_factory, name):
    up = await upstream_factory()
    gw = await gateway_factory(gateway_yaml({"api": f"url: {up.url}"}))
    answer = await raw_request(gw.gateway.proxy_port, REFUSED[name], timeout=3)
    status_line = answer.split(b"\r\n", 1)[0]
    # refused by the gateway, or by its HTTP parser before the gateway saw it (then HTTP/1.0)
    assert status_line.split(b" ")[1] == b"400", (name, answer[:300])
    assert b"x-gateway-error: bad_request" in answer
    assert b"\x00" not in answer.partition(b"\r\n\r\n")[2]  # the offending bytes are not echoed
    assert up.count == 0
    # the gateway keeps serving
    ok = await raw_request(gw.gateway.proxy_port, b"GET /api/x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert ok.startswith(b"HTTP/1.1 200")
    assert up.count == 1


async def test_refusals_made_by_the_gateway_use_the_contract_shape(upstream_factory, gateway_factory):
    up = await upstream_factory()
    gw = await gateway_factory(gateway_yaml({"api": f"url: {up.url}"}))
    answer = await raw_request(gw.gateway.proxy_port, b"GET /api/a/%2e%2e/x HTTP/1.1\r\nHost: a\r\n\r\n")
    assert b"x-gateway-error: bad_request" in answer
    assert b'"code":"bad_request"' in answer
