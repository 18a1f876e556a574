"""Forwarding (contract §1): bodies, paths and queries byte for byte, header hygiene both ways."""

from __future__ import annotations

import gzip
import os

import pytest
from aiohttp import web

from .support import RawUpstream, gateway_yaml, raw_request


def one_upstream(url: str, extra_upstream: str = "", extra: str = "") -> str:
    return gateway_yaml({"api": f"url: {url}\n{extra_upstream}"}, extra)


async def echo(request: web.BaseRequest, up: object) -> web.StreamResponse:
    body = up.seen[-1].body  # type: ignore[attr-defined]
    return web.Response(body=body, headers={"x-seen-len": str(len(body))})


@pytest.mark.parametrize("size", [0, 1024, 5 * 1024 * 1024])
@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_bodies_arrive_byte_for_byte(upstream_factory, gateway_factory, method, size):
    up = await upstream_factory(echo)
    gw = await gateway_factory(one_upstream(up.url))
    payload = os.urandom(size)
    async with gw.session.request(method, f"{gw.url}/api/upload", data=payload) as resp:
        assert resp.status == 200
        assert await resp.read() == payload
    assert up.count == 1
    assert up.seen[0].body == payload
    assert up.seen[0].method == method


async def test_path_and_query_arrive_unchanged(upstream_factory, gateway_factory):
    up = await upstream_factory()
    gw = await gateway_factory(one_upstream(up.url))
    target = "/v1/a%20b/c%2Bd:verb?x=1&x=2&q=%E2%9C%93&plus=a+b&empty=&flag&order=z,a&enc=%2F%3F"
    raw = f"GET /api{target} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n".encode()
    answer = await raw_request(gw.gateway.proxy_port, raw)
    assert answer.startswith(b"HTTP/1.1 200")
    assert up.seen[0].target == target


async def test_host_is_the_upstreams_and_hop_by_hop_headers_are_dropped(upstream_factory, gateway_factory):
    up = await upstream_factory()
    gw = await gateway_factory(one_upstream(up.url))
    headers = {
        "Host": "client.example",
        "Connection": "keep-alive, X-Private-Hop",
        "X-Private-Hop": "secret-hop",
        "Keep-Alive": "timeout=5",
        "TE": "trailers",
        "Trailer": "X-Checksum",
        "Proxy-Authorization": "Basic abc",
        "Upgrade": "websocket",
        "X-End-To-End": "kept",
    }
    async with gw.session.get(f"{gw.url}/api/x", headers=headers) as resp:
        assert resp.status == 200
    seen = up.seen[0].headers
    assert seen["Host"] == f"127.0.0.1:{up.port}"
    for name in ("X-Private-Hop", "Keep-Alive", "TE", "Trailer", "Proxy-Authorization", "Upgrade"):
        assert name not in seen, name
    assert seen["X-End-To-End"] == "kept"
    assert "X-Forwarded-For" not in seen


async def test_response_hop_by_hop_headers_are_dropped(gateway_factory):
    reply = (
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\n"
        b"Keep-Alive: timeout=5\r\nProxy-Authenticate: Basic\r\nX-Kept: yes\r\n\r\nok"
    )
    up = await RawUpstream(reply).start()
    try:
        gw = await gateway_factory(one_upstream(up.url))
        async with gw.session.get(f"{gw.url}/api/x") as resp:
            assert resp.status == 200
            assert await resp.read() == b"ok"
            assert resp.headers["X-Kept"] == "yes"
            for name in ("X-Hop", "Keep-Alive", "Proxy-Authenticate"):
                assert name not in resp.headers, name
    finally:
        await up.close()


async def test_request_id_is_kept_or_made_and_gateway_headers_are_added(upstream_factory, gateway_factory):
    up = await upstream_factory()
    gw = await gateway_factory(one_upstream(up.url))
    async with gw.session.get(f"{gw.url}/api/x", headers={"x-request-id": "abc-123"}) as resp:
        assert resp.headers["x-request-id"] == "abc-123"
        assert resp.headers["x-gateway-upstream"] == "api"
        assert resp.headers["x-gateway-attempts"] == "1"
    assert up.seen[0].headers["x-request-id"] == "abc-123"
    async with gw.session.get(f"{gw.url}/api/x") as resp:
        made = resp.headers["x-request-id"]
    assert len(made) >= 16
    assert up.seen[1].headers["x-request-id"] == made


async def test_set_headers_replace_the_clients_and_empty_ones_are_not_sent(upstream_factory, gateway_factory):
    up = await upstream_factory()
    gw = await gateway_factory(
        one_upstream(up.url, "set_headers: {x-goog-api-key: server-key, x-empty: ''}"),
    )
    async with gw.session.get(f"{gw.url}/api/x", headers={"x-goog-api-key": "client-key", "x-empty": "c"}) as resp:
        assert resp.status == 200
    seen = up.seen[0].headers
    assert seen.getall("x-goog-api-key") == ["server-key"]
    assert seen["x-empty"] == "c"  # an empty injected value injects nothing


async def test_compressed_bodies_pass_through_compressed(upstream_factory, gateway_factory):
    data = gzip.compress(b'{"hello": "world"}' * 100)

    async def gz(request, up):
        return web.Response(body=data, headers={"Content-Encoding": "gzip", "Content-Type": "application/json"})

    up = await upstream_factory(gz)
    gw = await gateway_factory(one_upstream(up.url))
    async with gw.session.get(f"{gw.url}/api/x", headers={"Accept-Encoding": "gzip"}) as resp:
        assert resp.headers["Content-Encoding"] == "gzip"
        assert await resp.read() == data
    assert up.seen[0].headers["Accept-Encoding"] == "gzip"


async def test_redirects_are_passed_back_not_followed(upstream_factory, gateway_factory):
    async def redirect(request, up):
        return web.Response(status=302, headers={"Location": "http://127.0.0.1:1/elsewhere"})

    up = await upstream_factory(redirect)
    gw = await gateway_factory(one_upstream(up.url))
    async with gw.session.get(f"{gw.url}/api/x", allow_redirects=False) as resp:
        assert resp.status == 302
        assert resp.headers["Location"] == "http://127.0.0.1:1/elsewhere"
    assert up.count == 1


async def test_upstream_error_bodies_pass_through(upstream_factory, gateway_factory):
    async def not_found(request, up):
        return web.json_response({"code": "PGRST116", "message": "no rows"}, status=406)

    up = await upstream_factory(not_found)
    gw = await gateway_factory(one_upstream(up.url, "kind: supabase"))
    async with gw.session.get(f"{gw.url}/api/rest/v1/x") as resp:
        assert resp.status == 406
        assert await resp.json() == {"code": "PGRST116", "message": "no rows"}
        assert "x-gateway-error" not in resp.headers


async def test_no_route_and_proxy_port_never_serves_admin_paths(upstream_factory, gateway_factory):
    up = await upstream_factory()
    gw = await gateway_factory(one_upstream(up.url))
    for path in ("/metrics", "/admin/config", "/apix/y", "/"):
        async with gw.session.get(gw.url + path) as resp:
            assert resp.status == 404, path
            body = await resp.json()
            assert body["error"]["code"] == "no_route"
            assert resp.headers["x-gateway-error"] == "no_route"
            assert resp.headers["Content-Type"].startswith("application/json")
    assert up.count == 0


async def test_head_keeps_content_length(upstream_factory, gateway_factory):
    async def sized(request, up):
        return web.Response(body=b"x" * 10)

    up = await upstream_factory(sized)
    gw = await gateway_factory(one_upstream(up.url))
    async with gw.session.head(f"{gw.url}/api/x") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Length"] == "10"
    assert [(s.method, s.target) for s in up.seen] == [("HEAD", "/x")]
