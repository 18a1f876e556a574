"""Framing bounds on the proxy port (issue 19, items 1 and 2), over raw sockets.

- ``gateway.framing.WireFraming`` alone: it follows heads, Content-Length bodies and chunks the
  same whatever the bytes' split into reads, counts framing bytes, and raises on a long chunk line.
- Chunk-size lines: ``server.max_chunk_line`` (4 KiB) is the longest accepted, one byte more is
  400 ``bad_request``, whether the line arrives with the head or later; 200 MiB of leading zeros
  is cut off after a few KiB, and the upstream never receives a request.
- Framing counts toward ``limits.max_request_body``: many tiny chunks with extensions are 413 where
  the same data in one chunk is forwarded, read whole or streamed.
- ``server.headers_with_underscores``: look-alikes of the framing headers are refused (allow,
  reject) or dropped (drop), other underscore names forwarded, dropped or refused; an upstream
  that records every byte (``WireUpstream``) shows what crossed.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.framing import ChunkLineTooLong, WireFraming
from gateway.hygiene import lookalike

from .support import (
    GatewayFactory,
    RunningGateway,
    UpstreamFactory,
    WireUpstream,
    gateway_with_upstream,
    gateway_yaml,
    raw_request,
    status_of,
)

POST = b"POST /api/x HTTP/1.1\r\nHost: a\r\n"
CHUNKED = POST + b"Transfer-Encoding: chunked\r\n\r\n"


def _body(answer: bytes) -> dict[str, object]:
    return json.loads(answer.partition(b"\r\n\r\n")[2])  # type: ignore[no-any-return]


# --------------------------------------------------------------------------- WireFraming alone

STREAM = (
    b"\r\n"  # an empty line before a request line is skipped, as llhttp does
    + CHUNKED
    + b"3;a=b\r\nabc\r\n10\r\n"
    + b"x" * 16
    + b"\r\n0\r\nX-T: 1\r\n\r\n"
    + b"GET /api/y HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello"
    + CHUNKED
    + b"2\r\nhi\r\n0\r\n\r\n"
)


@pytest.mark.parametrize("step", [1, 2, 3, 5, 7, 64, len(STREAM)])
def test_wire_framing_reads_the_same_whatever_the_split(step: int) -> None:
    framing = WireFraming(max_chunk_line=16, max_head=4096)
    first_body_end = STREAM.index(b"GET /api/y")
    for i in range(0, len(STREAM), step):
        piece = STREAM[i : i + step]
        if i < first_body_end <= i + len(piece):  # stop exactly where the first request ends
            framing.feed(piece[: first_body_end - i])
            # its framing: "3;a=b\r\n" 7 + "\r\n" 2 + "10\r\n" 4 + "\r\n" 2 + "0\r\n" 3 + "X-T: 1\r\n" 8 + "\r\n" 2
            assert (framing.heads, framing.overhead) == (1, 28)
            piece = piece[first_body_end - i :]
        framing.feed(piece)
    assert framing.following and framing.heads == 3
    assert framing.overhead == len(b"2\r\n") + 2 + len(b"0\r\n\r\n")  # the last body's framing only


def test_wire_framing_raises_on_a_long_chunk_line_whatever_the_split() -> None:
    for line in (b"0" * 17 + b"5", b"5;" + b"e" * 15):
        for step in (1, 4, 100):
            framing = WireFraming(max_chunk_line=16, max_head=4096)
            data = CHUNKED + line + b"\r\nhello\r\n0\r\n\r\n"
            with pytest.raises(ChunkLineTooLong, match="longer than 16 bytes"):
                for i in range(0, len(data), step):
                    framing.feed(data[i : i + step])
            assert not framing.following
    exact = WireFraming(max_chunk_line=16, max_head=4096)
    exact.feed(CHUNKED + b"0" * 15 + b"5\r\nhello\r\n0\r\n\r\n")  # 16 bytes: the limit itself is fine
    assert exact.following and exact.heads == 1


def test_wire_framing_stops_where_the_parser_must_refuse() -> None:
    for garbage in (CHUNKED + b"zz\r\n", POST + b"Content-Length: 0x5\r\n\r\n", b"x" * 5000):
        framing = WireFraming(max_chunk_line=16, max_head=4096)
        framing.feed(garbage)
        assert not framing.following, garbage[:40]
        framing.feed(b"0" * 100)  # nothing more is followed, nothing raised


# --------------------------------------------------------------------------- chunk-size lines


@pytest.mark.parametrize("kind", ["leading zeros", "extension", "last chunk's extension"])
async def test_a_chunk_line_of_4_KiB_passes_and_one_byte_more_is_400(
    upstream_factory: UpstreamFactory, gateway_factory: GatewayFactory, kind: str
) -> None:
    gw, up = await gateway_with_upstream(upstream_factory, gateway_factory)

    def body(line_length: int) -> bytes:
        if kind == "leading zeros":
            return b"0" * (line_length - 1) + b"5\r\nhello\r\n0\r\n\r\n"
        if kind == "extension":
            return b"5;x=" + b"y" * (line_length - 4) + b"\r\nhello\r\n0\r\n\r\n"
        return b"5\r\nhello\r\n0;x=" + b"y" * (line_length - 4) + b"\r\n\r\n"

    ok = await raw_request(gw.gateway.proxy_port, CHUNKED + body(4096))
    assert status_of(ok) == 200 and up.seen[-1].body == b"hello"
    too_long = await raw_request(gw.gateway.proxy_port, CHUNKED + body(4097))
    assert status_of(too_long) == 400
    assert _body(too_long)["error"] == {
        "code": "bad_request",
        "message": "a chunk-size line (with its extensions) is longer than 4096 bytes",
    }
    assert b"yyyy" not in too_long
    assert up.count == 1


async def test_max_chunk_line_is_configurable_and_applies_to_a_line_arriving_later(
    upstream_factory: UpstreamFactory, gateway_factory: GatewayFactory
) -> None:
    gw, up = await gateway_with_upstream(upstream_factory, gateway_factory, extra="server: {max_chunk_line: 100}")
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.gateway.proxy_port)
    writer.write(CHUNKED + b"5\r\nhello\r\n")  # a good first chunk: the handler is reading the body
    await asyncio.sleep(0.2)
    writer.write(b"5;" + b"e" * 60)
    await asyncio.sleep(0.2)
    writer.write(b"e" * 60 + b"\r\nworld\r\n0\r\n\r\n")
    async with asyncio.timeout(3):
        answer = await reader.read()  # the answer, then the connection closes
    writer.close()
    assert status_of(answer) == 400 and b"longer than 100 bytes" in answer
    assert up.count == 0


async def test_a_client_still_writing_after_the_refusal_reads_its_400(
    upstream_factory: UpstreamFactory, gateway_factory: GatewayFactory
) -> None:
    """Lingering close: the gateway half-closes and drops what still arrives, so the bytes the client
    sends after the refusal do not turn into a reset that destroys the answer before it is read."""
    gw, up = await gateway_with_upstream(upstream_factory, gateway_factory)
    for _ in range(3):
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.gateway.proxy_port)
        writer.write(CHUNKED + b"0" * 5000)
        for _ in range(100):  # still sending, a little at a time, while the gateway answers
            await asyncio.sleep(0.002)
            writer.write(b"0" * 64)
        async with asyncio.timeout(3):
            answer = await reader.read()  # the answer, then the gateway's FIN
        writer.close()
        assert status_of(answer) == 400 and b"chunk-size line" in answer
    assert up.count == 0


async def test_200_MiB_of_leading_zeros_are_cut_off_after_a_few_KiB(
    upstream_factory: UpstreamFactory, gateway_factory: GatewayFactory
) -> None:
    """Was: accepted whole (llhttp keeps no chunk-size line), counted toward no limit."""
    gw, up = await gateway_with_upstream(upstream_factory, gateway_factory)
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.gateway.proxy_port)
    writer.write(CHUNKED)
    zeros, sent, start = b"0" * 65536, 0, time.monotonic()
    try:
        while sent < 200 * 1024 * 1024 and time.monotonic() - start < 20:
            writer.write(zeros)
            await writer.drain()
            sent += len(zeros)
    except ConnectionError:
        pass
    answer = b""
    try:
        async with asyncio.timeout(5):
            while chunk := await reader.read(65536):
                answer += chunk
    except ConnectionError:
        pass
    writer.close()
    # The 400 goes out at once, but a client still writing may see it lost to the reset that
    # closing a socket with unread bytes sends (a smaller line gets its 400 in the tests above).
    assert answer == b"" or (status_of(answer) == 400 and b"chunk-size line" in answer), answer[:200]
    assert sent < 32 * 1024 * 1024, sent  # the gateway stopped reading; what was sent sat in socket buffers
    assert time.monotonic() - start < 10
    assert up.count == 0
    ok = await raw_request(gw.gateway.proxy_port, b"GET /api/ok HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert status_of(ok) == 200


# --------------------------------------------------------------------------- framing counts toward the body limit


def _chunks(data: bytes, size: int, extension: bytes = b"") -> bytes:
    out = b"".join(
        b"%x%s\r\n%s\r\n" % (len(part), extension, part)
        for part in (data[i : i + size] for i in range(0, len(data), size))
    )
    return out + b"0\r\n\r\n"


@pytest.mark.parametrize("replayed", [True, False], ids=["read whole", "streamed"])
async def test_chunk_framing_counts_toward_max_request_body(
    upstream_factory: UpstreamFactory, gateway_factory: GatewayFactory, replayed: bool
) -> None:
    replay = "64KiB" if replayed else "1KiB"
    gw, up = await gateway_with_upstream(
        upstream_factory,
        gateway_factory,
        block=f"limits: {{max_request_body: 8KiB}}\nretry: {{max_replay_body: {replay}}}",
    )
    data = bytes(range(256)) * 24  # 6 KiB of data: under the limit
    one_chunk = await raw_request(gw.gateway.proxy_port, CHUNKED + _chunks(data, len(data)))
    assert status_of(one_chunk) == 200 and up.seen[-1].body == data
    small_chunks = _chunks(data, 64, b";ext=" + b"e" * 40)  # 6 KiB of data in 96 chunks: 10 KiB on the wire
    assert len(small_chunks) > 8 * 1024
    answer = await raw_request(gw.gateway.proxy_port, CHUNKED + small_chunks)
    assert status_of(answer) == 413 and _body(answer)["error"]["code"] == "body_too_large"
    assert up.count == 1  # the upstream never received a complete request for it
    plain = _chunks(data, 1024)  # ordinary framing: 6 chunks, a few dozen bytes
    assert status_of(await raw_request(gw.gateway.proxy_port, CHUNKED + plain)) == 200
    assert up.count == 2


# --------------------------------------------------------------------------- headers with underscores


def test_lookalike_names_what_a_name_imitates() -> None:
    imitations = {
        "Transfer_Encoding": "transfer-encoding",
        "content_length": "content-length",
        "CONTENT_LENGTH": "content-length",
        "Hoſt": "host",  # long s: upper-cases to S
        "Connectıon": "connection",  # dotless i: upper-cases to I
        "ＨＯＳＴ": "host",  # fullwidth: NFKC
    }
    for name, framing in imitations.items():
        assert lookalike(name) == framing, name
    for name in ("Transfer-Encoding", "HOST", "X_Trace", "Transfer__Encoding", "Content_Length_", "x-host"):
        assert lookalike(name) is None, name


async def _wire_gateway(gateway_factory: GatewayFactory, setting: str | None) -> tuple[RunningGateway, WireUpstream]:
    up = await WireUpstream().start()
    extra = f"server: {{headers_with_underscores: {setting}}}" if setting else ""
    gw = await gateway_factory(gateway_yaml({"api": f"url: {up.url}\nretry: {{attempts: 1}}"}, extra=extra))
    return gw, up


LOOKALIKES = {
    "Transfer_Encoding beside Content-Length": POST + b"Content-Length: 5\r\nTransfer_Encoding: chunked\r\n\r\nhello",
    "Content_Length beside Content-Length: 0": POST + b"Content-Length: 0\r\nContent_Length: 5\r\n\r\n",
    "lower-case content_length": POST + b"Content-Length: 5\r\ncontent_length: 5\r\n\r\nhello",
    "TRANSFER_ENCODING": POST + b"Content-Length: 5\r\nTRANSFER_ENCODING: chunked\r\n\r\nhello",
}


@pytest.mark.parametrize("setting", [None, "allow", "reject"])
@pytest.mark.parametrize("name", list(LOOKALIKES))
async def test_a_framing_lookalike_is_refused_unless_dropping(gateway_factory: GatewayFactory, setting, name) -> None:
    gw, up = await _wire_gateway(gateway_factory, setting)
    try:
        answer = await raw_request(gw.gateway.proxy_port, LOOKALIKES[name])
        assert status_of(answer) == 400
        message = str(_body(answer)["error"]["message"])  # type: ignore[index]
        assert "reads as" in message and "_" not in message.partition("reads as")[2].split("'")[1]
        assert up.requests == []
    finally:
        await up.close()


@pytest.mark.parametrize("name", list(LOOKALIKES))
async def test_drop_forwards_the_request_without_any_underscore_header(gateway_factory: GatewayFactory, name) -> None:
    gw, up = await _wire_gateway(gateway_factory, "drop")
    try:
        answer = await raw_request(gw.gateway.proxy_port, LOOKALIKES[name])
        assert status_of(answer) == 200, answer
        (request,) = up.requests
        body = LOOKALIKES[name].partition(b"\r\n\r\n")[2]
        assert request.body == body  # framed by the real Content-Length alone
        assert not [n for n, _ in request.headers if "_" in n]
        assert up.connections[0].error is None and up.connections[0].leftover == b""
    finally:
        await up.close()


@pytest.mark.parametrize(
    ("setting", "outcome"), [(None, "forwarded"), ("allow", "forwarded"), ("drop", "dropped"), ("reject", 400)]
)
async def test_other_underscore_headers_follow_the_setting(gateway_factory: GatewayFactory, setting, outcome) -> None:
    gw, up = await _wire_gateway(gateway_factory, setting)
    try:
        answer = await raw_request(
            gw.gateway.proxy_port, b"GET /api/x HTTP/1.1\r\nHost: a\r\nX_Trace: t-1\r\nX-Keep: k\r\n\r\n"
        )
        if outcome == 400:
            assert status_of(answer) == 400 and "server.headers_with_underscores: reject" in str(_body(answer))
            assert up.requests == []
            return
        assert status_of(answer) == 200
        (request,) = up.requests
        headers = dict(request.headers)  # h11 gives names lower-case
        assert headers["x-keep"] == "k"
        assert ("x_trace" in headers) == (outcome == "forwarded")
    finally:
        await up.close()


def _framing_by_lines(head: bytes) -> tuple[bool, bytes | None]:
    """The framing headers of a head read line by line (how ``_begin_body`` read them before it
    searched the lowered head): the oracle for the faster search."""
    chunked, length = False, None
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.lower() == b"transfer-encoding":
            chunked = True
        elif name.lower() == b"content-length":
            length = value.strip(b" \t")
    return chunked, length


_NAMES = [b"Host", b"Content-Length", b"content-length", b"CONTENT-length", b"Transfer-Encoding", b"transfer-encoding "]
_NAMES += [b"X-Content-Length", b"Transfer_Encoding", b"Content-Length\n", b"\nContent-Length", b"a"]


@settings(max_examples=500, deadline=None)
@given(
    lines=st.lists(
        st.tuples(
            st.sampled_from(_NAMES),
            st.sampled_from([b":", b": ", b" :"]),
            st.sampled_from([b" 5", b"5", b"\t12 ", b"", b" chunked", b"x:y", b" 0", b"1\n2", b" 07"]),
        ),
        max_size=6,
    )
)
def test_framing_headers_are_found_as_line_by_line(lines: list[tuple[bytes, bytes, bytes]]) -> None:
    head = b"\r\n".join([b"POST /x HTTP/1.1", *(name + colon + value for name, colon, value in lines)])
    chunked, length = _framing_by_lines(head)
    framing = WireFraming(100, 10_000)
    framing.feed(head + b"\r\n\r\n")
    if chunked:
        assert framing.following and framing.overhead == 0
        framing.feed(b"3\r\nabc\r\n")  # a chunk is followed: its size line counts as framing
        assert framing.overhead == len(b"3\r\n\r\n")
    elif length is None or length == b"0" or (length.isdigit() and int(length) == 0):
        assert framing.following
        framing.feed(b"GET /next HTTP/1.1\r\n\r\n")
        assert framing.heads == 2  # no body: the next bytes are the next head
    elif length.isdigit():
        framing.feed(b"x" * int(length) + b"GET /next HTTP/1.1\r\n\r\n")
        assert framing.heads == 2 and framing.overhead == 0
    else:
        assert not framing.following  # a Content-Length that is not a number: the parser's to refuse
