"""Request smuggling (issue 19, item 7): a raw-socket corpus of the classes outside scanners try.

Each case is sent on its own client connection to a gateway whose upstream (``WireUpstream``)
records every byte per connection and reads them with h11, strictly. Before the case a priming
request opens the gateway's pooled upstream connection; after it, a victim request goes through
that same pooled connection. A case passes when:

- the client gets the expected answer (the gateway's own 4xx in the contract's shape, or the
  upstream's 200 when the request is forwarded);
- the upstream connection carried exactly the priming request, the case's request as the gateway
  forwards it (or nothing), and the victim, byte for byte readable by h11, no byte left over;
- the smuggling marker appears in the upstream's bytes only inside a request body it was framed
  in, and no forwarded request carries a framing or upgrade header the client sent;
- the victim gets its own answer.

The classes are those of defparam/smuggler (default, exhaustive and doubles configurations:
Transfer-Encoding obfuscations, in CL.TE and TE-only probes), duplicate and odd Content-Length,
obs-fold, HTTP/0.9 to 1.2 and the HTTP/2 preface, absolute- and authority-form targets, chunk-size
overflow and over-long chunk lines, pipelining after ``Content-Length: 0``, and BishopFox/h2csmuggler's
h2c upgrade. ``test_the_corpus_counts`` states how many there are.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass

import pytest

from .support import GatewayFactory, WireUpstream, gateway_yaml

MARK = b"SMUGGLED"
SMUGGLED = b"GET /api/SMUGGLED HTTP/1.1\r\nHost: a\r\n\r\n"
POST = b"POST /api/x HTTP/1.1\r\nHost: a\r\n"
GET = b"GET /api/x HTTP/1.1\r\nHost: a\r\n"
CHUNKED_BODY = b"5\r\nhello\r\n0\r\n\r\n"
H2C = b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\nConnection: Upgrade, HTTP2-Settings\r\n"
CL_TE_BODY = b"0\r\n\r\n" + SMUGGLED  # CL.TE: by its length, all of it is body; by its chunks, a request follows


@dataclass(frozen=True)
class Case:
    """Bytes to send (one write, or several 100 ms apart), the statuses the client gets on that
    connection, and the request the upstream gets from it (method, target, body) or None."""

    parts: tuple[bytes, ...]
    statuses: tuple[int, ...]
    forwarded: tuple[str, str, bytes] | None = None


def refused(data: bytes, status: int = 400) -> Case:
    return Case((data,), (status,))


def forwarded(data: bytes, body: bytes, method: str = "POST", target: str = "/x", status: int = 200) -> Case:
    return Case((data,), (status,), (method, target, body))


def cl_te(te_line: bytes) -> bytes:
    """A CL.TE probe: Content-Length covers the whole body; a TE reader ends it after '0'."""
    return POST + b"Content-Length: %d\r\n" % len(CL_TE_BODY) + te_line + b"\r\n\r\n" + CL_TE_BODY


def te_cl(te_line: bytes) -> bytes:
    """A TE.CL probe: the chunks end after 'hello'; Content-Length: 3 would end inside the first chunk."""
    return POST + te_line + b"\r\nContent-Length: 3\r\n\r\n" + CHUNKED_BODY


def te_only(te_line: bytes) -> bytes:
    """Only the (obfuscated) Transfer-Encoding: a chunk reader finds 'hello'; anything else a second request."""
    return POST + te_line + b"\r\n\r\n" + CHUNKED_BODY


# Transfer-Encoding obfuscations (smuggler's mutations, and byte mutations of its exhaustive set).
# "chunked": read as a Transfer-Encoding of chunked alone; anything else is refused.
TE_MUTATIONS: dict[str, tuple[bytes, str]] = {
    "plain": (b"Transfer-Encoding: chunked", "chunked"),
    "yelling": (b"TRANSFER-ENCODING: CHUNKED", "chunked"),
    "sarcasm": (b"TrAnSFer-EnCODinG: cHuNkeD", "chunked"),
    "tab before the value": (b"Transfer-Encoding:\tchunked", "chunked"),
    "tab after the value": (b"Transfer-Encoding: chunked\t", "refused"),
    "space after the value": (b"Transfer-Encoding: chunked ", "chunked"),
    "no space": (b"Transfer-Encoding:chunked", "chunked"),
    "space before the colon": (b"Transfer-Encoding : chunked", "refused"),
    "tab before the colon": (b"Transfer-Encoding\t: chunked", "refused"),
    "leading space on the name": (b" Transfer-Encoding: chunked", "refused"),
    "underscore": (b"Transfer_Encoding: chunked", "refused"),
    "space in the name": (b"Transfer Encoding: chunked", "refused"),
    "dotless i": ("Transfer-Encodıng: chunked".encode(), "refused"),
    "long s": ("Tranſfer-Encoding: chunked".encode(), "refused"),
    "vertical tab prefix": (b"Transfer-Encoding:\x0bchunked", "refused"),
    "form feed prefix": (b"Transfer-Encoding:\x0cchunked", "refused"),
    "NBSP prefix": (b"Transfer-Encoding:\xa0chunked", "refused"),
    "0xff suffix": (b"Transfer-Encoding: chunked\xff", "refused"),
    "NUL suffix": (b"Transfer-Encoding: chunked\x00", "refused"),
    "CR suffix": (b"Transfer-Encoding: chunked\r", "refused"),
    "CR in the name": (b"Transfer\r-Encoding: chunked", "refused"),
    "bare CR before": (b"X: X\rTransfer-Encoding: chunked", "refused"),
    "bare LF before": (b"X: X\nTransfer-Encoding: chunked", "refused"),
    "LF before the colon": (b"Transfer-Encoding\n: chunked", "refused"),
    "line-wrapped value": (b"Transfer-Encoding:\r\n chunked", "refused"),
    "line-wrapped tab": (b"Transfer-Encoding:\r\n\tchunked", "refused"),
    "quoted": (b'Transfer-Encoding: "chunked"', "refused"),
    "single-quoted": (b"Transfer-Encoding: 'chunked'", "refused"),
    "chunk": (b"Transfer-Encoding: chunk", "refused"),
    "xchunked": (b"Transfer-Encoding: xchunked", "refused"),
    "chunked-false": (b"Transfer-Encoding: chunked-false", "refused"),
    "chunked, cow": (b"Transfer-Encoding: chunked, cow", "refused"),
    "cow, chunked": (b"Transfer-Encoding: cow, chunked", "refused"),
    "gzip, chunked": (b"Transfer-Encoding: gzip, chunked", "refused"),
    "gzip;chunked": (b"Transfer-Encoding: gzip;chunked", "refused"),
    "chunked, chunked": (b"Transfer-Encoding: chunked, chunked", "refused"),
    "identity, chunked": (b"Transfer-Encoding: identity, chunked", "refused"),
    "comma prefix": (b"Transfer-Encoding: ,chunked", "refused"),
    "two headers, cow last": (b"Transfer-Encoding: chunked\r\nTransfer-Encoding: cow", "refused"),
    "two headers, cow first": (b"Transfer-Encoding: cow\r\nTransfer-Encoding: chunked", "refused"),
    "two headers, both chunked": (b"Transfer-Encoding: chunked\r\ntransfer-encoding: chunked", "refused"),
    "TE and its look-alike": (b"Transfer-Encoding: chunked\r\nTransfer_Encoding: x", "refused"),
}

CASES: dict[str, Case] = {}
for _name, (_line, _kind) in TE_MUTATIONS.items():
    CASES[f"CL.TE {_name}"] = refused(cl_te(_line))  # Content-Length with any Transfer-Encoding: refused
    CASES[f"TE.CL {_name}"] = refused(te_cl(_line))
    CASES[f"TE only, {_name}"] = forwarded(te_only(_line), b"hello") if _kind == "chunked" else refused(te_only(_line))
CASES["Content-Encoding: chunked (not a transfer coding)"] = forwarded(cl_te(b"Content-Encoding: chunked"), CL_TE_BODY)

CASES.update(
    {
        # duplicate and odd Content-Length
        "two equal Content-Lengths": refused(POST + b"Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello"),
        "two different Content-Lengths": refused(POST + b"Content-Length: 5\r\nContent-Length: 3\r\n\r\nhello"),
        "Content-Length list": refused(POST + b"Content-Length: 5, 5\r\n\r\nhello"),
        "Content-Length and its look-alike": refused(POST + b"Content-Length: 0\r\nContent_Length: 5\r\n\r\nhello"),
        "Content-Length look-alike alone": refused(POST + b"content_length: 40\r\n\r\n" + SMUGGLED),
        "plus sign": refused(POST + b"Content-Length: +5\r\n\r\nhello"),
        "minus sign": refused(POST + b"Content-Length: -5\r\n\r\nhello"),
        "hex": refused(POST + b"Content-Length: 0x5\r\n\r\nhello"),
        "exponent": refused(POST + b"Content-Length: 5e0\r\n\r\nhello"),
        "decimal point": refused(POST + b"Content-Length: 5.0\r\n\r\nhello"),
        "space inside": refused(POST + b"Content-Length: 5 5\r\n\r\nhello"),
        "space before the colon (CL)": refused(POST + b"Content-Length : 5\r\n\r\nhello"),
        "NUL after": refused(POST + b"Content-Length: 5\x00\r\n\r\nhello"),
        "vertical tab": refused(POST + b"Content-Length:\x0b5\r\n\r\nhello"),
        "overflowing": refused(POST + b"Content-Length: 99999999999999999999999\r\n\r\nhello"),
        "2^64": refused(POST + b"Content-Length: 18446744073709551616\r\n\r\nhello"),
        "leading zeros": forwarded(POST + b"Content-Length: 005\r\n\r\nhello", b"hello"),
        "trailing whitespace": forwarded(POST + b"Content-Length: 5 \t\r\n\r\nhello", b"hello"),
        "Content-Length longer than the data": refused(POST + b"Content-Length: 50\r\n\r\nhello", 408),
        "bytes past Content-Length": refused(POST + b"Content-Length: 5\r\n\r\nhello" + b"GARBAGE\r\n\r\n"),
        "CL.0: GET with a body that is a request": Case(
            (GET + b"Content-Length: %d\r\n\r\n" % len(SMUGGLED) + SMUGGLED,), (200,), ("GET", "/x", SMUGGLED)
        ),
        # obs-fold
        "obs-fold in a plain header": refused(GET + b"X-A: a\r\n b\r\n\r\n"),
        "obs-fold of Content-Length": refused(POST + b"Content-Length: 5\r\n 0\r\n\r\nhello"),
        "obs-fold onto Transfer-Encoding": refused(POST + b"Transfer-Encoding: chunked\r\n ,identity\r\n\r\n0\r\n\r\n"),
        "obs-fold of the Host": refused(b"GET /api/x HTTP/1.1\r\nHost: a\r\n b\r\n\r\n"),
        "folded first header line": refused(b"GET /api/x HTTP/1.1\r\n Host: a\r\n\r\n"),
        # versions and the HTTP/2 preface
        "HTTP/0.9 (no version)": refused(b"GET /api/SMUGGLED\r\n\r\n"),
        "HTTP/0.9": refused(b"GET /api/x HTTP/0.9\r\n\r\n"),
        "HTTP/1.0": forwarded(b"GET /api/x HTTP/1.0\r\n\r\n", b"", "GET", status=200),
        "HTTP/1.0 with Content-Length": forwarded(b"POST /api/x HTTP/1.0\r\nContent-Length: 5\r\n\r\nhello", b"hello"),
        "HTTP/1.0 with chunked": refused(b"POST /api/x HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n" + CHUNKED_BODY),
        "HTTP/1.2": refused(b"GET /api/x HTTP/1.2\r\nHost: a\r\n\r\n"),
        "HTTP/1.10": refused(b"GET /api/x HTTP/1.10\r\nHost: a\r\n\r\n"),
        "HTTP/2.0 request line": refused(b"GET /api/x HTTP/2.0\r\nHost: a\r\n\r\n"),
        "HTTP/3": refused(b"GET /api/x HTTP/3\r\nHost: a\r\n\r\n"),
        "lower-case protocol": refused(b"GET /api/x http/1.1\r\nHost: a\r\n\r\n"),
        "HTTP/2 preface": refused(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
        "HTTP/2 preface and a SETTINGS frame": refused(
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00"
        ),
        "no Host on HTTP/1.1": refused(b"GET /api/x HTTP/1.1\r\n\r\n"),
        "two Hosts": refused(b"GET /api/x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
        "Host look-alike": refused(GET + "Hoſt: 127.0.0.1\r\n\r\n".encode()),
        "Connection look-alike": refused(GET + "Connectıon: close\r\n\r\n".encode()),
        # absolute-form and authority-form
        "absolute-form to the upstream": refused(b"GET http://127.0.0.1:1/SMUGGLED HTTP/1.1\r\nHost: a\r\n\r\n"),
        "absolute-form with the prefix": refused(b"GET http://a/api/x HTTP/1.1\r\nHost: a\r\n\r\n"),
        "absolute-form HTTPS": refused(b"GET https://graph.facebook.com/ HTTP/1.1\r\nHost: a\r\n\r\n"),
        "authority-form CONNECT": refused(b"CONNECT 127.0.0.1:1 HTTP/1.1\r\nHost: 127.0.0.1:1\r\n\r\n"),
        "authority-form GET": refused(b"GET 127.0.0.1:1 HTTP/1.1\r\nHost: a\r\n\r\n"),
        "scheme-relative": refused(b"GET //127.0.0.1:1/x HTTP/1.1\r\nHost: a\r\n\r\n"),
        "asterisk-form": refused(b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n"),
        # chunk sizes
        "chunk size 2^64": refused(POST + b"Transfer-Encoding: chunked\r\n\r\n10000000000000000\r\nab\r\n0\r\n\r\n"),
        "chunk size of 17 f": refused(POST + b"Transfer-Encoding: chunked\r\n\r\nfffffffffffffffff\r\nab\r\n0\r\n\r\n"),
        "chunk size 0x": refused(POST + b"Transfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n"),
        "negative chunk size": refused(POST + b"Transfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n"),
        "signed chunk size": refused(POST + b"Transfer-Encoding: chunked\r\n\r\n+5\r\nhello\r\n0\r\n\r\n"),
        "space after the size": refused(POST + b"Transfer-Encoding: chunked\r\n\r\n5 \r\nhello\r\n0\r\n\r\n"),
        "chunk larger than its data": refused(
            POST + b"Transfer-Encoding: chunked\r\n\r\n8\r\nhello\r\n0\r\n\r\n" + SMUGGLED
        ),
        "chunk smaller than its data": refused(POST + b"Transfer-Encoding: chunked\r\n\r\n3\r\nhello\r\n0\r\n\r\n"),
        "no last chunk, a request instead": Case(
            (POST + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n" + SMUGGLED,), (400,)
        ),
        "bare LF chunk lines": refused(POST + b"Transfer-Encoding: chunked\r\n\r\n5\nhello\n0\n\n"),
        "5,000 leading zeros": refused(
            POST + b"Transfer-Encoding: chunked\r\n\r\n" + b"0" * 5000 + b"5\r\nhello\r\n0\r\n\r\n"
        ),
        "5,000 bytes of chunk extension": refused(
            POST + b"Transfer-Encoding: chunked\r\n\r\n5;x=" + b"y" * 5000 + b"\r\nhello\r\n0\r\n\r\n"
        ),
        "a long extension on the last chunk": refused(
            POST + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0;x=" + b"y" * 5000 + b"\r\n\r\n"
        ),
        "leading zeros after the head": Case(
            (POST + b"Transfer-Encoding: chunked\r\n\r\n", b"0" * 3000, b"0" * 3000 + b"5\r\nhello\r\n0\r\n\r\n"),
            (400,),
        ),
        "short extensions, trailers": forwarded(
            POST + b'Transfer-Encoding: chunked\r\n\r\n2;a=b\r\nhe\r\n3;c="d;e"\r\nllo\r\n0\r\nX-T: 1\r\n\r\n', b"hello"
        ),
        # pipelining after Content-Length: 0, and other requests after a complete one
        "pipelined after Content-Length: 0": Case(
            (POST + b"Content-Length: 0\r\n\r\n" + SMUGGLED,), (200, 400), ("POST", "/x", b"")
        ),
        "pipelined after a GET": Case((GET + b"\r\n" + SMUGGLED,), (200, 400), ("GET", "/x", b"")),
        "pipelined after a chunked body": Case(
            (te_only(b"Transfer-Encoding: chunked") + SMUGGLED,), (200, 400), ("POST", "/x", b"hello")
        ),
        "Expect: 100-continue and a request": Case(
            (POST + b"Content-Length: 5\r\nExpect: 100-continue\r\n\r\nhello" + SMUGGLED,),
            (200, 400),
            ("POST", "/x", b"hello"),
        ),
        # h2c and other upgrades: served as plain HTTP/1.1, never switched
        "h2c upgrade": forwarded(GET + H2C + b"\r\n", b"", "GET"),
        "h2c upgrade, then the preface": Case(
            (GET + H2C + b"\r\nPRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",),
            (200,),  # answered as plain HTTP, then closed: the preface is never read
            ("GET", "/x", b""),
        ),
        "h2c upgrade on a POST": forwarded(
            POST + b"Upgrade: h2c\r\nConnection: Upgrade\r\nContent-Length: 5\r\n\r\nhello", b"hello"
        ),
        "websocket upgrade, then raw bytes": Case(
            (
                GET + b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                b"Sec-WebSocket-Version: 13\r\n\r\n" + SMUGGLED,
            ),
            (200,),
            ("GET", "/x", b""),
        ),
    }
)

# What no forwarded request may carry: the client's framing and upgrade headers, or look-alikes.
NEVER_FORWARDED = {"transfer-encoding", "upgrade", "http2-settings", "connection", "keep-alive", "expect"}
_STATUS = re.compile(rb"HTTP/1\.[01] (\d{3}) ")


async def _answers(port: int, parts: tuple[bytes, ...]) -> list[tuple[int, bytes]]:
    """Send ``parts`` 100 ms apart; every answer on the connection (status, body) until it closes
    or stays silent for 0.5 s after the last complete answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    buf, answers = b"", []
    try:
        for i, part in enumerate(parts):
            if i:
                await asyncio.sleep(0.1)
            writer.write(part)
            await writer.drain()
    except ConnectionError:
        pass
    try:
        async with asyncio.timeout(8):
            while True:
                try:
                    async with asyncio.timeout(0.5 if answers else 5.0):
                        chunk = await reader.read(65536)
                except TimeoutError:
                    break
                except ConnectionError:
                    chunk = b""
                buf += chunk
                while (end := buf.find(b"\r\n\r\n")) >= 0:
                    head = buf[:end]
                    length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
                    size = int(length.group(1)) if length else 0
                    if len(buf) < end + 4 + size:
                        break
                    status = _STATUS.match(head)
                    assert status is not None, head
                    if status.group(1) != b"100":
                        answers.append((int(status.group(1)), buf[end + 4 : end + 4 + size]))
                    buf = buf[end + 4 + size :]
                if not chunk:
                    break
    finally:
        writer.close()
    assert buf == b"", buf[:300]  # nothing but whole answers
    return answers


async def _get(port: int, target: bytes) -> tuple[int, bytes]:
    answers = await _answers(port, (b"GET /api" + target + b" HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",))
    assert len(answers) == 1, answers
    return answers[0]


@pytest.mark.parametrize("name", list(CASES))
async def test_no_smuggled_byte_reaches_the_upstream(gateway_factory: GatewayFactory, name: str) -> None:
    case = CASES[name]
    up = await WireUpstream().start()
    try:
        gw = await gateway_factory(
            gateway_yaml({"api": f"url: {up.url}\nretry: {{attempts: 1}}\ntimeouts: {{idle: 1s}}"})
        )
        port = gw.gateway.proxy_port
        assert await _get(port, b"/prime") == (200, b'{"method": "GET", "target": "/prime", "body": 0}')

        answers = await _answers(port, case.parts)
        assert tuple(status for status, _ in answers) == tuple(s for s in case.statuses if s), (name, answers)
        for status, body in answers:
            if status != 200:  # the gateway's own answer, never an echo of the request
                assert json.loads(body)["error"]["code"] in ("bad_request", "request_timeout"), body
                assert MARK not in body

        victim = await _get(port, b"/victim")
        assert victim == (200, b'{"method": "GET", "target": "/victim", "body": 0}'), (name, victim)
    finally:
        await up.close()

    assert len(up.connections) == 1, [c.requests for c in up.connections]  # prime, case and victim: one pooled
    conn = up.connections[0]
    assert conn.error is None and conn.leftover == b"", (conn.error, conn.leftover[:200])
    expected = [("GET", "/prime", b"")] + ([case.forwarded] if case.forwarded else []) + [("GET", "/victim", b"")]
    assert [(r.method, r.target, r.body) for r in conn.requests] == expected, name
    assert conn.raw.count(MARK) == sum(r.body.count(MARK) for r in conn.requests), conn.raw  # only inside bodies
    for request in conn.requests:
        names = {n.lower() for n, _ in request.headers}
        assert not names & NEVER_FORWARDED, request.headers
        assert not any("_" in n or not n.isascii() for n in names), request.headers


def test_the_corpus_counts() -> None:
    """The corpus covers each class the issue names (printed with ``-s``)."""
    classes = {
        "Transfer-Encoding obfuscations": sum(n.startswith(("CL.TE", "TE.CL", "TE only")) for n in CASES),
        "forwarded as valid requests": sum(c.forwarded is not None for c in CASES.values()),
        "refused": sum(c.forwarded is None for c in CASES.values()),
    }
    print(f"\nsmuggling corpus: {len(CASES)} cases; {classes}")
    assert len(CASES) >= 150 and classes["Transfer-Encoding obfuscations"] == 3 * len(TE_MUTATIONS)
