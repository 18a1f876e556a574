"""Request framing on the wire: a client connection's bytes followed alongside aiohttp's parser.

aiohttp's C parser (llhttp) reads a chunk-size line of any length (leading zeros, chunk
extensions) without keeping it, and hands the handler only the chunk data: 200 MiB of framing
reached no limit. ``WireFraming`` follows the same bytes the parser is fed, for one connection:
each request head up to its blank line (the framing headers read from it), then the body by its
``Content-Length`` or chunk by chunk. It owns two bounds:

- a chunk-size line (size and extensions; the last chunk's ``0`` line included) longer than
  ``server.max_chunk_line`` raises ``ChunkLineTooLong`` (Go's net/http stops at 4 KiB, h11 at its
  16 KiB incomplete-event limit, nginx at the size's digits); the server fails that body with it
  and the client gets 400 ``bad_request``;
- ``overhead``: the framing bytes of the body being received (chunk-size lines with extensions,
  the CRLF after each chunk, the trailer section), which the proxy counts with the data against
  ``limits.max_request_body``.

No I/O and no aiohttp internals: it reads what ``data_received`` is given. It never decides what
is valid HTTP: bytes it cannot read as framing (a chunk size that is not hex, a Content-Length
that is not a number) are the parser's to refuse, and it stops following the connection then.
Trailer lines are bounded by the parser's own header limits (431).
"""

from __future__ import annotations

import re
from typing import Final

from aiohttp import web

from .errors import ChunkLineTooLong

__all__ = ["MALFORMED", "ChunkLineTooLong", "WireFraming", "message", "overhead"]

MALFORMED: Final = "the request body's framing is malformed (chunk size or length)"

_HEAD, _LENGTH, _CHUNK_LINE, _CHUNK_DATA, _CHUNK_CRLF, _TRAILER, _STOPPED = range(7)
_HEX = re.compile(rb"[0-9A-Fa-f]+")
_DIGITS = re.compile(rb"[0-9]+")


class WireFraming:
    """Where one connection's request bytes belong: head, body data, or body framing.

    ``feed`` every byte the connection receives, in order, before the parser reads it. Raises
    ChunkLineTooLong (in the body of the last head counted in ``heads``); after that, or once the
    bytes stop making sense as HTTP/1.1 framing, it follows nothing more.
    """

    __slots__ = ("_buf", "_line", "_remaining", "_state", "heads", "max_chunk_line", "max_head", "overhead")

    def __init__(self, max_chunk_line: int, max_head: int) -> None:
        self.max_chunk_line = max_chunk_line
        self.max_head = max_head  # a longer head is the parser's to refuse (414/431)
        self.overhead = 0  # framing bytes of the current (or last) body
        self.heads = 0  # request heads read to their end: the body being followed is the last one's
        self._state = _HEAD
        self._buf = bytearray()  # the head, or the chunk-size line, read so far
        self._line = 0  # length of the trailer line read so far
        self._remaining = 0  # body or chunk bytes still to come

    @property
    def following(self) -> bool:
        """False once the connection's bytes stopped making sense as framing."""
        return self._state != _STOPPED

    def feed(self, data: bytes) -> None:
        pos, end = 0, len(data)
        while pos < end:
            state = self._state
            if state == _HEAD:
                pos = self._head(data, pos)
            elif state in (_LENGTH, _CHUNK_DATA, _CHUNK_CRLF):
                step = min(self._remaining, end - pos)
                self._remaining -= step
                pos += step
                if state == _CHUNK_CRLF:
                    self.overhead += step
                if not self._remaining:
                    self._state = {_LENGTH: _HEAD, _CHUNK_DATA: _CHUNK_CRLF, _CHUNK_CRLF: _CHUNK_LINE}[state]
                    self._remaining = 2 if state == _CHUNK_DATA else 0
            elif state == _CHUNK_LINE:
                pos = self._chunk_line(data, pos)
            elif state == _TRAILER:
                pos = self._trailer(data, pos)
            else:
                return

    # ------------------------------------------------------------------ states

    def _head(self, data: bytes, pos: int) -> int:
        if not self._buf:  # empty lines before a request line are skipped, as the parser does
            while pos < len(data) and data[pos] in b"\r\n":
                pos += 1
            if pos == len(data):
                return pos
            # The usual case, a whole head in one read: found without copying it into the buffer.
            blank = data.find(b"\r\n\r\n", pos)
            if blank >= 0:
                self.heads += 1
                self._begin_body(data[pos:blank])
                return blank + 4
        searched = max(0, len(self._buf) - 3)
        self._buf += data[pos:]
        blank = self._buf.find(b"\r\n\r\n", searched)
        if blank < 0:
            if len(self._buf) > self.max_head:
                self._stop()
            return len(data)
        head = bytes(self._buf[:blank])
        consumed = len(data) - (len(self._buf) - blank - 4)
        self._buf.clear()
        self.heads += 1
        self._begin_body(head)
        return consumed

    def _begin_body(self, head: bytes) -> None:
        # The framing header lines, found in the lowered head (C speed: this runs per request): a
        # line is a name only where CRLF precedes it (the request line never is), and the name
        # must end at its colon. The last Content-Length counts, as the parser would see it.
        lowered = head.lower()
        chunked = b"\r\ntransfer-encoding:" in lowered
        length = None
        at = lowered.rfind(b"\r\ncontent-length:")
        if at >= 0:
            start = at + len(b"\r\ncontent-length:")
            end = head.find(b"\r\n", start)
            length = head[start : end if end >= 0 else len(head)].strip(b" \t")
        self.overhead = 0
        if chunked:
            self._state = _CHUNK_LINE
        elif length is not None:
            if not _DIGITS.fullmatch(length):
                self._stop()
                return
            self._remaining = int(length)
            self._state = _LENGTH if self._remaining else _HEAD

    def _chunk_line(self, data: bytes, pos: int) -> int:
        newline = data.find(b"\n", pos)
        if newline < 0:
            self._buf += data[pos:]
            self.overhead += len(data) - pos
            if len(self._buf) > self.max_chunk_line + 1:  # + its CR
                self._stop()
                raise ChunkLineTooLong(self.max_chunk_line)
            return len(data)
        self._buf += data[pos:newline]
        self.overhead += newline + 1 - pos
        line = bytes(self._buf[:-1] if self._buf.endswith(b"\r") else self._buf)
        self._buf.clear()
        if len(line) > self.max_chunk_line:
            self._stop()
            raise ChunkLineTooLong(self.max_chunk_line)
        size = _HEX.match(line)
        if size is None:
            self._stop()
        elif int(size.group(), 16) == 0:
            self._state, self._line = _TRAILER, 0
        else:
            self._state, self._remaining = _CHUNK_DATA, int(size.group(), 16)
        return newline + 1

    def _trailer(self, data: bytes, pos: int) -> int:
        newline = data.find(b"\n", pos)
        if newline < 0:
            self._line += len(data) - pos
            self.overhead += len(data) - pos
            return len(data)
        self.overhead += newline + 1 - pos
        length, self._line = self._line + newline - pos, 0
        if length <= 1:  # the blank line ("\r\n") that ends the trailer section and the body
            self._state = _HEAD
        return newline + 1

    def _stop(self) -> None:
        self._state = _STOPPED
        self._buf.clear()


def overhead(request: web.BaseRequest) -> int:
    """The framing bytes of ``request``'s body received so far (0 where no WireFraming follows it)."""
    framing = getattr(request.protocol, "framing", None)
    return framing.overhead if isinstance(framing, WireFraming) else 0


def message(exc: BaseException) -> str:
    """What to tell a client whose body read failed with ``exc`` (a parser or framing error)."""
    return exc.message if isinstance(exc, ChunkLineTooLong) else MALFORMED
