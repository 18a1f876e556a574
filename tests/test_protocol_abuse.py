"""Protocol abuse on both sides of the gateway (issue 8, hardening item 2), over raw sockets.

Client side: framing tricks, malformed and oversized heads, bodies longer or shorter than they
say, pipelining, slow and idle connections. Each gets 400, 408, 413, 414 or 431 in the
contract's shape (or a closed connection where no answer is possible), the upstream receives
nothing it could take for a request, and the gateway keeps serving new connections.

Upstream side: malformed answers (control characters in headers, 10 MiB of headers, a switch
of protocols) become a clean 502 with none of the upstream's bytes relayed; an endless body
streams until the client leaves, and nothing stays in flight.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

import pytest
from aiohttp import web

from .support import (
    GatewayFactory,
    RawUpstream,
    RunningGateway,
    Upstream,
    UpstreamFactory,
    gateway_with_upstream,
    gateway_yaml,
    peer_closed,
    raw_request,
    read_answer,
    sample,
    status_of,
)

Reader = asyncio.StreamReader
Writer = asyncio.StreamWriter

GET = b"GET /api/x HTTP/1.1\r\nHost: a\r\n\r\n"


def _error_code(answer: bytes) -> str:
    head, _, body = answer.partition(b"\r\n\r\n")
    code = str(json.loads(body)["error"]["code"])
    assert f"x-gateway-error: {code}".encode() in head
    return code


async def _still_serves(gw: RunningGateway, up: Upstream | None = None) -> None:
    """A normal request on a new connection is answered by the upstream."""
    before = up.count if up is not None else 0
    answer = await raw_request(gw.gateway.proxy_port, b"GET /api/ok HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    if up is not None:
        assert up.count == before + 1


# --------------------------------------------------------------------------- malformed requests

POST = b"POST /api/x HTTP/1.1\r\nHost: a\r\n"
HEAD = b"GET /api/x HTTP/1.1\r\nHost: a\r\n"
CHUNKED = POST + b"Transfer-Encoding: chunked\r\n\r\n"
MANY_HEADERS = b"".join(b"X-H%d: v\r\n" % i for i in range(1000))

MALFORMED: dict[str, tuple[bytes, int]] = {
    # framing
    "CL and TE": (POST + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    "TE and CL": (POST + b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n", 400),
    "two equal Content-Lengths": (POST + b"Content-Length: 2\r\nContent-Length: 2\r\n\r\nab", 400),
    "two different Content-Lengths": (POST + b"Content-Length: 1\r\nContent-Length: 2\r\n\r\nab", 400),
    "Content-Length list": (POST + b"Content-Length: 2, 2\r\n\r\nab", 400),
    "negative Content-Length": (POST + b"Content-Length: -2\r\n\r\nab", 400),
    "signed Content-Length": (POST + b"Content-Length: +2\r\n\r\nab", 400),
    "hex Content-Length": (POST + b"Content-Length: 0x2\r\n\r\nab", 400),
    "overflowing Content-Length": (POST + b"Content-Length: 99999999999999999999999\r\n\r\n", 400),
    "TE gzip without chunked": (POST + b"Transfer-Encoding: gzip\r\n\r\nab", 400),
    "TE chunked, identity": (POST + b"Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n", 400),
    "TE xchunked": (POST + b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", 400),
    "TE twice": (POST + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    "space before the colon": (POST + b"Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n", 400),
    "TE on HTTP/1.0": (b"POST /api/x HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    "chunk size zz": (CHUNKED + b"zz\r\nab\r\n0\r\n\r\n", 400),
    "negative chunk size": (CHUNKED + b"-2\r\nab\r\n0\r\n\r\n", 400),
    "overflowing chunk size": (CHUNKED + b"fffffffffffffffffffff\r\nab\r\n0\r\n\r\n", 400),
    "NUL in a chunk extension": (CHUNKED + b"2;\x00\r\nab\r\n0\r\n\r\n", 400),
    "chunk without its CRLF": (CHUNKED + b"2\r\nabXX0\r\n\r\n", 400),
    "chunked with bare LFs": (CHUNKED + b"2\nab\n0\n\n", 400),
    # header lines
    "obs-fold": (HEAD + b"X-Fold: a\r\n b\r\n\r\n", 400),
    "obs-fold on the first line": (b"GET /api/x HTTP/1.1\r\n Host: a\r\n\r\n", 400),
    "NUL in a value": (HEAD + b"X-Bad: a\x00b\r\n\r\n", 400),
    "bare CR in a value": (HEAD + b"X-Bad: a\rX-Injected: 1\r\n\r\n", 400),
    "bare LF in a value": (HEAD + b"X-Bad: a\nX-Injected: 1\r\n\r\n", 400),
    "bare LF line ends": (b"GET /api/x HTTP/1.1\nHost: a\nX: b\n\n", 400),
    "DEL in a value": (HEAD + b"X-Bad: a\x7fb\r\n\r\n", 400),
    "ESC in a value": (HEAD + b"X-Bad: \x1b[31mred\r\n\r\n", 400),
    "space in a name": (HEAD + b"X Bad: 1\r\n\r\n", 400),
    "line without a colon": (HEAD + b"XBad\r\n\r\n", 400),
    "empty name": (HEAD + b": v\r\n\r\n", 400),
    # sizes
    "1,000 headers": (HEAD + b"" + MANY_HEADERS + b"\r\n", 431),
    "80 KiB header value": (HEAD + b"X-Big: " + b"v" * 80 * 1024 + b"\r\n\r\n", 431),
    "80 KiB header name": (HEAD + b"X" + b"n" * 80 * 1024 + b": v\r\n\r\n", 431),
    "80 KiB request line": (b"GET /api/" + b"p" * 80 * 1024 + b" HTTP/1.1\r\nHost: a\r\n\r\n", 414),
    # request line
    "HTTP/2.0 in an HTTP/1 request line": (b"GET /api/x HTTP/2.0\r\nHost: a\r\n\r\n", 400),
    "HTTP/1.2": (b"GET /api/x HTTP/1.2\r\nHost: a\r\n\r\n", 400),
    "HTTP/0.9 (no version)": (b"GET /api/x\r\n\r\n", 400),
    "bad method token": (b"G@T /api/x HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    "lower-case method": (b"get /api/x HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    "TLS ClientHello": (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40, 400),
    "HTTP/2 preface": (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400),
    "raw space in the path": (b"GET /api/a b HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    "raw high byte in the path": (b"GET /api/\xff HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    "fragment in the target": (b"GET /api/x#frag HTTP/1.1\r\nHost: a\r\n\r\n", 400),
}


@pytest.mark.parametrize("name", list(MALFORMED))
async def test_malformed_requests_are_refused_and_never_reach_the_upstream(
    upstream_factory: UpstreamFactory, gateway_factory: GatewayFactory, name: str
) -> None:
    gw, up = await gateway_with_upstream(upstream_factory, gateway_factory)
    data, status = MALFORMED[name]
    answer = await raw_request(gw.gateway.proxy_port, data, timeout=3)
    assert status_of(answer) == status, (name, answer[:300])
    assert _error_code(answer) == "bad_request"
    assert b"\x00" not in answer and b"X-Injected" not in answer and b"vvvvvvvv" not in answer  # nothing echoed
    assert up.count == 0
    await _still_serves(gw, up)


async def test_431_and_414_limits_follow_the_server_block(
    upstream_factory: UpstreamFactory, gateway_factory: GatewayFactory
) -> None:
    gw, up = await gateway_with_upstream(
        upstream_factory,
        gateway_factory,
        extra="server: {max_headers: 10, max_header_size: 1KiB, max_request_line: 2KiB}",
    )
    port = gw.gateway.proxy_port
    eleven = b"".join(b"X-H%d: v\r\n" % i for i in range(11))
    assert status_of(await raw_request(port, b"GET /api/x HTTP/1.1\r\nHost: a\r\n" + eleven + b"\r\n")) == 431
    long_value = b"GET /api/x HTTP/1.1\r\nHost: a\r\nX-Big: " + b"v" * 1100 + b"\r\n\r\n"
    assert status_of(await raw_request(port, long_value)) == 431
    assert status_of(await raw_request(port, b"GET /api/" + b"p" * 2100 + b" HTTP/1.1\r\nHost: a\r\n\r\n")) == 414
    assert up.count == 0
    # just under each limit is served
    seven = b"".join(b"X-H%d: v\r\n" % i for i in range(7))  # with Host, X-Big and Connection: 10
    line = b"GET /api/" + b"p" * 1900 + b" HTTP/1.1\r\n"
    big = b"X-Big: " + b"v" * 900 + b"\r\n"
    ok = await raw_request(port, line + b"Host: a\r\n" + big + seven + b"Connection: close\r\n\r\n")
    assert status_of(ok) == 200
    assert up.count == 1


# --------------------------------------------------------------------------- bodies and pipelining


async def test_bytes_past_content_length_never_become_a_request_upstream(
    upstream_factory: UpstreamFactory, gateway_factory: GatewayFactory
) -> None:
    gw, up = await gateway_with_upstream(upstream_factory, gateway_factory)
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.gateway.proxy_port)
    smuggled = b"GET /api/smuggled HTTP/1.1\r\nHost: a\r\n\r\n"
    writer.write(b"POST /api/x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello" + smuggled)
    first = await read_answer(reader)
    second = await read_answer(reader)
    assert await peer_closed(reader)
    writer.close()
    assert first[0] == 200
    assert second[0] == 400 and json.loads(second[2])["error"]["code"] == "bad_request"
    assert "pipelined" in json.loads(second[2])["error"]["message"]
    assert [(s.method, s.target, s.body) for s in up.seen] == [("POST", "/x", b"hello")]
    await _still_serves(gw, up)


async def test_garbage_past_content_length_is_refused_and_nothing_is_forwarded(
    upstream_factory: UpstreamFactory, gateway_factory: GatewayFactory
) -> None:
    gw, up = await gateway_with_upstream(upstream_factory, gateway_factory)
    data = b"POST /api/x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello world\r\n\r\n"
    answer = await raw_request(gw.gateway.proxy_port, data)
    assert status_of(answer) == 400
    assert up.count == 0  # aiohttp drops the whole read once part of it is not HTTP
    await _still_serves(gw, up)


async def test_a_request_sent_before_the_previous_answer_is_refused(
    upstream_factory: UpstreamFactory, gateway_factory: GatewayFactory
) -> None:
    async def slow(request: web.BaseRequest, up: Upstream) -> web.StreamResponse:
        await asyncio.sleep(0.3)
        return web.Response(text="slow")

    up = await upstream_factory(slow)
    gw = await gateway_factory(gateway_yaml({"api": f"url: {up.url}"}))
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.gateway.proxy_port)
    writer.write(b"GET /api/first HTTP/1.1\r\nHost: a\r\n\r\n")
    await asyncio.sleep(0.1)  # the first is now with the upstream
    writer.write(b"DELETE /api/second HTTP/1.1\r\nHost: a\r\n\r\n")
    first, second = await read_answer(reader), await read_answer(reader)
    assert await peer_closed(reader)
    writer.close()
    assert (first[0], first[2]) == (200, b"slow")
    assert second[0] == 400
    assert [s.target for s in up.seen] == ["/first"]
    # one request after another on a kept-alive connection is fine
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.gateway.proxy_port)
    for _ in range(3):
        writer.write(GET)
        assert (await read_answer(reader))[0] == 200
    writer.close()


async def test_body_shorter_than_content_length_then_close(
    upstream_factory: UpstreamFactory, gateway_factory: GatewayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway")
    gw, up = await gateway_with_upstream(upstream_factory, gateway_factory)
    for declared in (10, 5 * 1024 * 1024):  # read whole before forwarding, and streamed
        _, writer = await asyncio.open_connection("127.0.0.1", gw.gateway.proxy_port)
        writer.write(POST + b"Content-Length: %d\r\n\r\nabc" % declared)
        await writer.drain()
        await asyncio.sleep(0.2)
        writer.close()
    await asyncio.sleep(0.3)
    assert up.count == 0  # the streamed one reached the upstream incomplete: never a request it served
    assert gw.gateway.state.inflight == 0
    assert "unexpected error" not in caplog.text  # a client leaving is not a gateway bug
    gone = [r.fields for r in caplog.records if getattr(r, "fields", {}).get("error") == "client_disconnected"]
    assert [(f["status"], f["attempts"]) for f in gone] == [(499, 0), (499, 1)]  # logged as nginx does
    await _still_serves(gw, up)


async def test_body_shorter_than_content_length_then_silence_is_408(
    upstream_factory: UpstreamFactory, gateway_factory: GatewayFactory
) -> None:
    gw, up = await gateway_with_upstream(upstream_factory, gateway_factory, block="timeouts: {idle: 500ms}")
    start = time.monotonic()
    answer = await raw_request(
        gw.gateway.proxy_port, b"POST /api/x HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc", timeout=5
    )
    assert status_of(answer) == 408 and _error_code(answer) == "request_timeout"
    assert time.monotonic() - start < 3
    assert up.count == 0
    await _still_serves(gw, up)


@pytest.mark.parametrize(
    "chunks",
    [[b"zz\r\n"], [b"2\r\nab\r\n", b"-1\r\n"], [b"ffffffffffffffffffffff\r\n"]],
    ids=["bad size first", "bad size after a good chunk", "overflowing size"],
)
async def test_bad_chunk_arriving_after_the_head_is_400_at_once(
    upstream_factory: UpstreamFactory, gateway_factory: GatewayFactory, chunks: list[bytes]
) -> None:
    # idle is 30 s: only the framing error ends it
    gw, up = await gateway_with_upstream(upstream_factory, gateway_factory)
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.gateway.proxy_port)
    writer.write(CHUNKED)
    for chunk in chunks:
        await asyncio.sleep(0.1)
        writer.write(chunk)
    status, _, body = await read_answer(reader, timeout=3)
    assert status == 400 and json.loads(body)["error"]["code"] == "bad_request"
    assert await peer_closed(reader, timeout=3)  # the framing is lost: the connection ends
    writer.close()
    assert up.count == 0
    await _still_serves(gw, up)


async def test_expect_100_continue_is_answered_and_a_too_large_body_refused_first(
    upstream_factory: UpstreamFactory, gateway_factory: GatewayFactory
) -> None:
    gw, up = await gateway_with_upstream(upstream_factory, gateway_factory, block="limits: {max_request_body: 1KiB}")
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.gateway.proxy_port)
    writer.write(b"POST /api/x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
    async with asyncio.timeout(3):
        assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(b"hello")
    assert (await read_answer(reader))[0] == 200
    writer.close()
    assert up.seen[0].body == b"hello" and "expect" not in up.seen[0].headers
    answer = await raw_request(gw.gateway.proxy_port, POST + b"Content-Length: 4096\r\nExpect: 100-continue\r\n\r\n")
    assert status_of(answer) == 413 and b"100 Continue" not in answer
    assert up.count == 1


async def test_an_upgrade_request_is_served_as_plain_http(
    upstream_factory: UpstreamFactory, gateway_factory: GatewayFactory
) -> None:
    gw, up = await gateway_with_upstream(upstream_factory, gateway_factory)
    answer = await raw_request(
        gw.gateway.proxy_port,
        b"GET /api/x HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    assert status_of(answer) == 200
    assert "upgrade" not in up.seen[0].headers and "connection" not in up.seen[0].headers


# --------------------------------------------------------------------------- slow and idle clients


async def test_a_head_trickled_one_byte_a_second_is_cut_by_header_timeout(
    upstream_factory: UpstreamFactory, gateway_factory: GatewayFactory
) -> None:
    gw, up = await gateway_with_upstream(upstream_factory, gateway_factory, extra="server: {header_timeout: 2s}")
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.gateway.proxy_port)
    start = time.monotonic()
    answer = b""

    async def trickle() -> None:
        for byte in GET:
            writer.write(bytes([byte]))
            await asyncio.sleep(1.0)

    sender = asyncio.create_task(trickle())
    try:
        async with asyncio.timeout(6):
            while chunk := await reader.read(65536):
                answer += chunk
    finally:
        sender.cancel()
        writer.close()
    elapsed = time.monotonic() - start
    assert 1.5 < elapsed < 4.5, elapsed
    assert status_of(answer) == 408 and _error_code(answer) == "request_timeout"
    assert up.count == 0
    await _still_serves(gw, up)
    assert sample(gw.registry, "gateway_proxy_connections_closed_total", reason="header_timeout") == 1.0


async def test_a_silent_connection_is_closed_after_header_timeout_without_an_answer(
    upstream_factory: UpstreamFactory, gateway_factory: GatewayFactory
) -> None:
    gw, _ = await gateway_with_upstream(upstream_factory, gateway_factory, extra="server: {header_timeout: 500ms}")
    reader, _writer = await asyncio.open_connection("127.0.0.1", gw.gateway.proxy_port)
    start = time.monotonic()
    async with asyncio.timeout(3):
        assert await reader.read() == b""
    assert 0.3 < time.monotonic() - start < 2.5


async def test_keepalive_connections_wait_between_requests_until_keepalive_timeout(
    upstream_factory: UpstreamFactory, gateway_factory: GatewayFactory
) -> None:
    gw, _ = await gateway_with_upstream(
        upstream_factory, gateway_factory, extra="server: {header_timeout: 300ms, keepalive_timeout: 1500ms}"
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.gateway.proxy_port)
    writer.write(GET)
    assert (await read_answer(reader))[0] == 200
    await asyncio.sleep(0.6)  # past header_timeout: that timer only runs while a head is arriving
    writer.write(GET)
    assert (await read_answer(reader))[0] == 200
    start = time.monotonic()
    assert await peer_closed(reader, timeout=4)
    assert 1.0 < time.monotonic() - start < 3.5
    writer.close()


async def _keepalive(port: int, count: int) -> list[tuple[Reader, Writer]]:
    """``count`` connections that each made one request and now sit idle, kept alive."""

    async def one() -> tuple[Reader, Writer]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(GET)
        status, _, _ = await read_answer(reader, timeout=20)
        assert status == 200
        return reader, writer

    conns: list[tuple[Reader, Writer]] = []
    for start in range(0, count, 100):
        conns += await asyncio.gather(*(one() for _ in range(min(100, count - start))))
    return conns


async def test_1000_idle_keepalive_connections_do_not_stop_new_requests(
    upstream_factory: UpstreamFactory, gateway_factory: GatewayFactory
) -> None:
    gw, up = await gateway_with_upstream(upstream_factory, gateway_factory)  # max_connections: 1000, the default
    port = gw.gateway.proxy_port
    conns = await _keepalive(port, 1000)
    try:
        start = time.monotonic()
        newcomers = await _keepalive(port, 3)  # kept open too: each one makes room
        conns += newcomers
        assert time.monotonic() - start < 3
        # room was made by closing the three longest-idle connections, not by refusing anyone
        for reader, _ in conns[:3]:
            assert await peer_closed(reader, timeout=2)
        assert not await peer_closed(conns[3][0], timeout=0.2)
        assert sample(gw.registry, "gateway_proxy_connections_closed_total", reason="max_connections") == 0.0
        assert sample(gw.registry, "gateway_proxy_connections_closed_total", reason="evicted") == 3.0
        assert sample(gw.registry, "gateway_proxy_connections") == 1000.0
        assert up.count == 1003
    finally:
        for _, writer in conns:
            writer.close()


async def test_at_max_connections_with_none_idle_a_new_connection_gets_503(
    upstream_factory: UpstreamFactory, gateway_factory: GatewayFactory
) -> None:
    release = asyncio.Event()

    async def held(request: web.BaseRequest, up: Upstream) -> web.StreamResponse:
        if request.path == "/hold":
            await release.wait()
        return web.Response(text="ok")

    up = await upstream_factory(held)
    gw = await gateway_factory(gateway_yaml({"api": f"url: {up.url}"}, extra="server: {max_connections: 4}"))
    port = gw.gateway.proxy_port
    busy = [await asyncio.open_connection("127.0.0.1", port) for _ in range(4)]
    for _, writer in busy:
        writer.write(b"GET /api/hold HTTP/1.1\r\nHost: a\r\n\r\n")
    await asyncio.sleep(0.3)
    answer = await raw_request(port, GET)
    assert status_of(answer) == 503 and _error_code(answer) == "overloaded"
    assert b"Retry-After: 1" in answer
    release.set()
    for reader, _ in busy:
        assert (await read_answer(reader))[0] == 200  # the four in flight were not disturbed
    await _still_serves(gw)  # now idle: room is made for a newcomer
    for _, writer in busy:
        writer.close()


# --------------------------------------------------------------------------- upstream abuse

OK = b"HTTP/1.1 200 OK\r\n"
BAD_ANSWERS = {
    "CR in a header": OK + b"X-Evil: a\rSet-Cookie: stolen=1\r\nContent-Length: 2\r\n\r\nok",
    "NUL in a header": OK + b"X-Evil: a\x00Set-Cookie: stolen=1\r\nContent-Length: 2\r\n\r\nok",
    "control character in a header": OK + b"X-Evil: \x1b[31mSet-Cookie: stolen=1\r\nContent-Length: 2\r\n\r\nok",
    "control character in a name": OK + b"X-E\x01vil: Set-Cookie: stolen=1\r\nContent-Length: 2\r\n\r\nok",
    "10 MiB of headers": OK + b""
    + b"".join(b"X-Evil-%d: %s\r\n" % (i, b"v" * 100) for i in range(100_000))
    + b"Content-Length: 2\r\n\r\nok",
    "one 10 MiB header": OK + b"X-Evil: " + b"v" * (10 * 1024 * 1024) + b"\r\nContent-Length: 2\r\n\r\nok",
    "CL and TE": OK + b"Content-Length: 2\r\nTransfer-Encoding: chunked\r\nX-Evil: 1\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    "two Content-Lengths": OK + b"Content-Length: 2\r\nContent-Length: 3\r\nX-Evil: 1\r\n\r\nok",
    "bad chunk size": OK + b"Transfer-Encoding: chunked\r\nX-Evil: 1\r\n\r\nzz\r\nok\r\n0\r\n\r\n",
    "switching protocols": b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"X-Evil: 1\r\n\r\nraw",
    "four-digit status": b"HTTP/1.1 2000 OK\r\nX-Evil: 1\r\nContent-Length: 2\r\n\r\nok",
    "not HTTP": b"SSH-2.0-OpenSSH_9.6\r\nX-Evil: 1\r\n\r\n",
}


@pytest.mark.parametrize("name", list(BAD_ANSWERS))
async def test_malformed_upstream_answers_are_a_clean_502(
    gateway_factory: GatewayFactory, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    up = await RawUpstream(BAD_ANSWERS[name]).start()
    good = await RawUpstream(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").start()
    try:
        gw = await gateway_factory(
            gateway_yaml({"api": f"url: {up.url}\nretry: {{attempts: 1}}", "good": f"url: {good.url}"})
        )
        start = time.monotonic()
        answer = await raw_request(gw.gateway.proxy_port, GET, timeout=5)
        assert time.monotonic() - start < 3
        assert status_of(answer) == 502, answer[:300]
        assert _error_code(answer) == "upstream_reset"
        assert b"Evil" not in answer and b"stolen" not in answer and b"raw" not in answer.partition(b"\r\n\r\n")[2]
        assert up.connections == 1
        ok = await raw_request(gw.gateway.proxy_port, b"GET /good/x HTTP/1.1\r\nHost: a\r\n\r\n")
        assert status_of(ok) == 200
        assert gw.gateway.state.inflight == 0
        assert "unexpected error" not in caplog.text
    finally:
        await up.close()
        await good.close()


async def test_a_bare_lf_in_an_upstream_head_never_reaches_the_client_raw(gateway_factory: GatewayFactory) -> None:
    """aiohttp reads a bare LF as a line end (RFC 9112 §2.2 allows it; Google and Meta never send
    one): what follows it is a header of its own, written to the client with CRLF like any other."""
    up = await RawUpstream(OK + b"X-A: a\nX-B: b\r\nContent-Length: 2\r\n\r\nok").start()
    try:
        gw = await gateway_factory(gateway_yaml({"api": f"url: {up.url}"}))
        answer = await raw_request(gw.gateway.proxy_port, GET)
        head = answer.partition(b"\r\n\r\n")[0]
        assert status_of(answer) == 200
        assert b"\r\nX-A: a\r\nX-B: b\r\n" in head
        assert head.count(b"\n") == head.count(b"\r\n")  # no bare LF on the client's wire
    finally:
        await up.close()


async def test_an_endless_body_streams_until_the_client_leaves(
    upstream_factory: UpstreamFactory, gateway_factory: GatewayFactory
) -> None:
    ended = asyncio.Event()

    async def endless(request: web.BaseRequest, up: Upstream) -> web.StreamResponse:
        if request.path != "/endless":
            return web.Response(text="ok")
        resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        await resp.prepare(request)
        try:
            while True:
                await resp.write(b"e" * 65536)
                await asyncio.sleep(0)
        except (ConnectionError, RuntimeError):
            ended.set()
        return resp

    up = await upstream_factory(endless)
    gw = await gateway_factory(gateway_yaml({"api": f"url: {up.url}"}))
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.gateway.proxy_port)
    writer.write(b"GET /api/endless HTTP/1.1\r\nHost: a\r\n\r\n")
    received = 0
    async with asyncio.timeout(5):
        head = await reader.readuntil(b"\r\n\r\n")
        while received < 4 * 1024 * 1024:
            received += len(await reader.read(65536))
    assert head.startswith(b"HTTP/1.1 200") and b"Transfer-Encoding: chunked" in head
    assert gw.gateway.state.inflight == 1
    writer.close()
    async with asyncio.timeout(5):
        await ended.wait()  # the gateway let go of the upstream connection
        while gw.gateway.state.inflight:
            await asyncio.sleep(0.05)
    assert gw.gateway.state.runtime.upstreams["api"].inflight == 0
    await _still_serves(gw, up)


async def test_an_endless_body_that_stalls_is_cut_by_idle(gateway_factory: GatewayFactory) -> None:
    up = await RawUpstream(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nbody\r\n", hold=10).start()
    try:
        gw = await gateway_factory(gateway_yaml({"api": f"url: {up.url}\ntimeouts: {{idle: 500ms}}"}))
        start = time.monotonic()
        answer = await raw_request(gw.gateway.proxy_port, GET, timeout=5)
        assert time.monotonic() - start < 3
        assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"4\r\nbody\r\n")  # no final chunk
        assert gw.gateway.state.inflight == 0
    finally:
        await up.close()


# --------------------------------------------------------------------------- the admin port (server.admin)


async def test_the_admin_port_has_its_own_head_timeout_and_header_limits(
    upstream_factory: UpstreamFactory, gateway_factory: GatewayFactory
) -> None:
    gw, _ = await gateway_with_upstream(
        upstream_factory,
        gateway_factory,
        extra="server: {header_timeout: 30s, admin: {header_timeout: 1s, max_headers: 10, max_request_line: 1KiB}}",
    )
    port = gw.gateway.admin_port
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    start = time.monotonic()
    writer.write(b"GET /livez HTTP/1.1\r\nHost: a\r\n")  # and never the blank line
    async with asyncio.timeout(5):
        answer = await reader.read()
    writer.close()
    assert 0.7 < time.monotonic() - start < 3.5  # the admin's 1 s, not the proxy port's 30 s
    assert status_of(answer) == 408 and _error_code(answer) == "request_timeout"
    eleven = b"".join(b"X-H%d: v\r\n" % i for i in range(11))
    assert status_of(await raw_request(port, b"GET /livez HTTP/1.1\r\nHost: a\r\n" + eleven + b"\r\n")) == 431
    assert status_of(await raw_request(port, b"GET /livez?" + b"p" * 1100 + b" HTTP/1.1\r\nHost: a\r\n\r\n")) == 414
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /livez HTTP/1.1\r\nHost: a\r\n\r\nGET /livez HTTP/1.1\r\nHost: a\r\n\r\n")
    first, second = await read_answer(reader), await read_answer(reader)
    assert await peer_closed(reader)
    writer.close()
    assert (first[0], second[0]) == (200, 400) and b"pipelined" in second[2]
    chunk_line = b"POST /admin/cache/purge HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n" + b"0" * 2000
    assert status_of(await raw_request(port, chunk_line + b"2\r\n{}\r\n0\r\n\r\n")) == 400  # over the admin's 1 KiB
    ok = await raw_request(port, b"GET /livez HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert ok.startswith(b"HTTP/1.1 200") and ok.endswith(b"ok\n")
    assert sample(gw.registry, "gateway_admin_connections_closed_total", reason="header_timeout") == 1.0
    assert sample(gw.registry, "gateway_proxy_connections_closed_total", reason="header_timeout") == 0.0


async def test_the_admin_port_caps_its_connections_and_keeps_answering_probes(
    upstream_factory: UpstreamFactory, gateway_factory: GatewayFactory
) -> None:
    """A flood of silent connections to the admin port (aiohttp's default: no limit, no timeout)
    cannot starve the probes: at the cap, the oldest silent one makes room."""
    extra = "server: {admin: {max_connections: 8}}"
    gw, _ = await gateway_with_upstream(upstream_factory, gateway_factory, extra=extra)
    port = gw.gateway.admin_port
    silent = [await asyncio.open_connection("127.0.0.1", port) for _ in range(40)]
    try:
        await asyncio.sleep(1.2)  # FRESH_GRACE: a connection that sent nothing for 1 s may be closed for room
        for _ in range(3):
            answer = await raw_request(port, b"GET /readyz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
        closed = [await peer_closed(reader, timeout=0.5) for reader, _ in silent]
        assert sum(closed) == 40 - 8 + 1, closed  # over the cap: refused at once, or evicted
        assert sample(gw.registry, "gateway_admin_connections") is not None
        assert sample(gw.registry, "gateway_proxy_connections") == 0.0
        refused = sample(gw.registry, "gateway_admin_connections_closed_total", reason="max_connections")
        evicted = sample(gw.registry, "gateway_admin_connections_closed_total", reason="evicted")
        assert (refused, evicted) == (40 - 8, 1)  # refused at once; then one probe made room, the others found it
    finally:
        for _, writer in silent:
            writer.close()
    await _still_serves(gw)  # the proxy port never noticed
