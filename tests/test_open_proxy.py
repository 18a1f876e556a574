"""Never an open proxy, never a redirect follower (issue 8, hardening item 1).

The gateway connects only to the URLs written in gateway.yaml. Every request below tries to
reach something else — another host through the request target or the Host header, another
upstream through an encoded or dotted path, the admin port's paths through the proxy port —
and each is refused (400 ``bad_request``) or unrouted (404 ``no_route``) with nothing sent to
any upstream; an upstream's redirect goes back to the client as it is, never followed.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from aiohttp import web

from .support import GatewayFactory, Upstream, UpstreamFactory, gateway_yaml, raw_request, status_of


def _error_code(answer: bytes) -> str:
    body = answer.partition(b"\r\n\r\n")[2]
    return str(json.loads(body)["error"]["code"])


async def _setup(upstream_factory: UpstreamFactory, gateway_factory: GatewayFactory) -> tuple[Any, Upstream, Upstream]:
    """A gateway with one configured upstream (``gemini``) and a second server it must never reach."""
    gemini = await upstream_factory()
    outsider = await upstream_factory()
    gw = await gateway_factory(gateway_yaml({"gemini": f"url: {gemini.url}"}))
    return gw, gemini, outsider


# Each target tries to reach the outsider (its port is filled in) or to escape the configured path.
REFUSED_TARGETS = {
    "absolute-form to another host": "GET http://127.0.0.1:{port}/gemini/x HTTP/1.1",
    "absolute-form https": "GET https://evil.example/gemini/x HTTP/1.1",
    "absolute-form with a configured prefix as host": "GET http://gemini/x HTTP/1.1",
    "authority-form CONNECT": "CONNECT 127.0.0.1:{port} HTTP/1.1",
    "CONNECT 443": "CONNECT evil.example:443 HTTP/1.1",
    "asterisk-form": "OPTIONS * HTTP/1.1",
    "network-path //host/": "GET //127.0.0.1:{port}/gemini/x HTTP/1.1",
    "network-path //host/ to a prefix": "GET //gemini/x HTTP/1.1",
    "encoded slash %2f": "GET /gemini%2f..%2fx HTTP/1.1",
    "encoded slash %2F in a segment": "GET /gemini/a%2Fb HTTP/1.1",
    "encoded backslash %5c": "GET /gemini/a%5c..%5cx HTTP/1.1",
    "raw backslash": "GET /gemini\\..\\x HTTP/1.1",
    "dot-dot raw": "GET /gemini/../x HTTP/1.1",
    "dot-dot at the end": "GET /gemini/a/.. HTTP/1.1",
    "dot raw": "GET /gemini/./x HTTP/1.1",
    "dot-dot encoded %2e%2e": "GET /gemini/%2e%2e/x HTTP/1.1",
    "dot-dot upper-case %2E%2E": "GET /gemini/%2E%2E/x HTTP/1.1",
    "dot-dot half-encoded .%2e": "GET /gemini/.%2e/x HTTP/1.1",
    "dot-dot half-encoded %2e.": "GET /gemini/%2e./x HTTP/1.1",
    "dot encoded %2e": "GET /gemini/%2e/x HTTP/1.1",
    "dot-dot before the prefix": "GET /../gemini/x HTTP/1.1",
    "empty segment": "GET /gemini//x HTTP/1.1",
    "no leading slash": "GET gemini/x HTTP/1.1",
}


@pytest.mark.parametrize("name", list(REFUSED_TARGETS))
async def test_targets_reaching_elsewhere_are_refused_and_nothing_is_sent(
    upstream_factory: UpstreamFactory, gateway_factory: GatewayFactory, name: str
) -> None:
    gw, gemini, outsider = await _setup(upstream_factory, gateway_factory)
    line = REFUSED_TARGETS[name].format(port=outsider.port)
    answer = await raw_request(gw.gateway.proxy_port, f"{line}\r\nHost: 127.0.0.1\r\n\r\n".encode(), timeout=3)
    assert status_of(answer) == 400, (name, answer[:300])
    assert b"x-gateway-error: bad_request" in answer
    assert _error_code(answer) == "bad_request"
    assert gemini.count == 0 and outsider.count == 0


@pytest.mark.parametrize(
    "host",
    ["evil.example", "127.0.0.1:{port}", "evil.example:443", "gemini", "[::1]:{port}", "user@evil.example"],
)
async def test_the_host_header_never_routes(
    upstream_factory: UpstreamFactory, gateway_factory: GatewayFactory, host: str
) -> None:
    gw, gemini, outsider = await _setup(upstream_factory, gateway_factory)
    value = host.format(port=outsider.port)
    answer = await raw_request(
        gw.gateway.proxy_port, f"GET /gemini/v1/x HTTP/1.1\r\nHost: {value}\r\nConnection: close\r\n\r\n".encode()
    )
    assert status_of(answer) == 200
    assert outsider.count == 0
    assert gemini.count == 1
    assert gemini.seen[0].headers["Host"] == f"127.0.0.1:{gemini.port}"  # the configured URL's host
    assert gemini.seen[0].target == "/v1/x"


async def test_a_host_header_naming_no_upstream_on_an_unknown_path_is_404(
    upstream_factory: UpstreamFactory, gateway_factory: GatewayFactory
) -> None:
    gw, gemini, outsider = await _setup(upstream_factory, gateway_factory)
    request = f"GET /v1/x HTTP/1.1\r\nHost: 127.0.0.1:{gemini.port}\r\n\r\n".encode()
    answer = await raw_request(gw.gateway.proxy_port, request)
    assert status_of(answer) == 404 and _error_code(answer) == "no_route"
    assert gemini.count == 0 and outsider.count == 0


@pytest.mark.parametrize(
    "head",
    [
        b"GET /gemini/x HTTP/1.1\r\n\r\n",  # HTTP/1.1 requires Host
        b"GET /gemini/x HTTP/1.1\r\nHost: a\r\nHost: 127.0.0.1\r\n\r\n",  # two Host headers
        b"GET /gemini/x HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n",  # the same, twice, other case
    ],
    ids=["missing Host on HTTP/1.1", "two different Host headers", "two equal Host headers"],
)
async def test_missing_or_repeated_host_is_refused(
    upstream_factory: UpstreamFactory, gateway_factory: GatewayFactory, head: bytes
) -> None:
    gw, gemini, outsider = await _setup(upstream_factory, gateway_factory)
    answer = await raw_request(gw.gateway.proxy_port, head, timeout=3)
    assert status_of(answer) == 400, answer[:300]
    assert b"x-gateway-error: bad_request" in answer
    assert gemini.count == 0 and outsider.count == 0


async def test_http10_without_host_still_reaches_only_the_configured_url(
    upstream_factory: UpstreamFactory, gateway_factory: GatewayFactory
) -> None:
    gw, gemini, outsider = await _setup(upstream_factory, gateway_factory)
    answer = await raw_request(gw.gateway.proxy_port, b"GET /gemini/x HTTP/1.0\r\n\r\n")
    assert status_of(answer) == 200
    assert gemini.count == 1 and outsider.count == 0
    assert gemini.seen[0].headers["Host"] == f"127.0.0.1:{gemini.port}"


@pytest.mark.parametrize(
    "path",
    ["/geminix/v1/models", "/gemini-x/y", "/gemini.x", "/GEMINI/v1/x", "/gem", "/", "/%67emini/x"],
)
async def test_a_prefix_of_another_name_is_not_routed(
    upstream_factory: UpstreamFactory, gateway_factory: GatewayFactory, path: str
) -> None:
    gw, gemini, outsider = await _setup(upstream_factory, gateway_factory)
    answer = await raw_request(gw.gateway.proxy_port, f"GET {path} HTTP/1.1\r\nHost: a\r\n\r\n".encode())
    assert status_of(answer) == 404, (path, answer[:300])
    assert _error_code(answer) == "no_route"
    assert gemini.count == 0 and outsider.count == 0


@pytest.mark.parametrize("path", ["/admin/config", "/metrics", "/health", "/readyz", "/livez", "/admin/breakers"])
async def test_the_proxy_port_never_serves_admin_paths(
    upstream_factory: UpstreamFactory, gateway_factory: GatewayFactory, path: str
) -> None:
    gw, gemini, _ = await _setup(upstream_factory, gateway_factory)
    async with gw.session.get(gw.url + path) as resp:
        body = await resp.read()
        assert resp.status == 404
        assert resp.headers["x-gateway-error"] == "no_route"
    data = json.loads(body)  # the contract's error shape, nothing of the admin answer
    assert set(data) == {"error"} and data["error"]["code"] == "no_route"
    assert b"gateway_requests_total" not in body and b"upstreams" not in body
    async with gw.session.post(gw.url + "/admin/reload") as resp:
        assert resp.status == 404
    assert gemini.count == 0
    # and the admin port does serve them
    async with gw.session.get(gw.admin + "/livez") as resp:
        assert resp.status == 200


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_an_upstream_redirect_is_passed_back_never_followed(
    upstream_factory: UpstreamFactory, gateway_factory: GatewayFactory, status: int
) -> None:
    target = await upstream_factory()

    async def redirect(request: web.BaseRequest, up: Upstream) -> web.StreamResponse:
        return web.Response(status=status, headers={"Location": f"{target.url}/stolen?x=1"}, text="moved")

    first = await upstream_factory(redirect)
    gw = await gateway_factory(gateway_yaml({"api": f"url: {first.url}"}))
    for method in ("GET", "POST"):
        async with gw.session.request(method, gw.url + "/api/a", data=b"body", allow_redirects=False) as resp:
            assert resp.status == status
            assert resp.headers["Location"] == f"{target.url}/stolen?x=1"
            assert resp.headers["x-gateway-attempts"] == "1"
            assert await resp.read() == b"moved"
    assert first.count == 2
    assert target.count == 0
