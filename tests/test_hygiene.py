"""Request hygiene (contract §1): refused with 400 bad_request, never forwarded."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy

from gateway import hygiene
from gateway.errors import BadRequest
from gateway.hygiene import check_request

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


_TARGET_PARTS = ["/", "a", ".", "..", "%2e", "%2E", "%2f", "%5c", "\\", "#", "?", "x=1", "//"]


@settings(max_examples=400, deadline=None)
@given(
    parts=st.lists(st.sampled_from(_TARGET_PARTS), min_size=1, max_size=12),
    pad=st.sampled_from([0, 300]),
)
def test_remembered_paths_keep_their_verdict(parts: list[str], pad: int) -> None:
    """The checks of a path are remembered (a backend asks for the same paths again and again):
    asked again, a target gets the same verdict, the same as with nothing remembered, long paths
    (checked afresh) included; a refusal is never remembered as an acceptance."""
    target = "/" + "p" * pad + "".join(parts)
    headers = CIMultiDictProxy(CIMultiDict({"Host": "a"}))

    def verdict() -> str:
        try:
            return "ok " + check_request("GET", target, headers)
        except BadRequest as exc:
            return "refused " + exc.message

    first = verdict()
    assert first.startswith("refused") == _refused(target), first
    assert verdict() == first
    hygiene._checked_path.cache_clear()
    assert verdict() == first


def _refused(target: str) -> bool:
    """The contract's target rules, written out independently of ``gateway.hygiene``."""
    if not target.startswith("/") or target.startswith("//") or "#" in target:
        return True
    path = target.split("?", 1)[0]
    lowered = path.lower()
    if "\\" in path or "%2f" in lowered or "%5c" in lowered:
        return True
    segments = path.split("/")[1:]
    if any(not segment for segment in segments[:-1]):
        return True
    return any(segment.lower().replace("%2e", ".") in (".", "..") for segment in segments)
