"""How relayed answers are written: headers with the body at hand, and no timer for a write that cannot wait.

aiohttp's ``StreamResponse`` sends its headers the moment it is prepared, then each body chunk in
a write of its own; ``web.Response`` buffers them and sends headers and body together. A socket
write is the gateway's largest single cost on a small answer (on loopback a write also runs the
receiver's TCP path; py-spy puts 40–57 % of the gateway's samples in ``StreamWriter._write`` under
load, issue 17), so a relayed answer that has fully or partly arrived with its headers (the usual
case for a small JSON answer) goes out in one write, headers and the bytes at hand together.

``Answer`` is a ``StreamResponse`` whose headers wait for the first body write (aiohttp 3.12+
``_send_headers_immediately``); ``unless_ready`` sends them at once when no body byte is at hand,
so a slow or streaming answer (server-sent events) still gets its headers to the client as soon as
the upstream's arrive, as before.

``write`` sends a chunk under the route's ``idle`` timeout only when the write may have to wait
for the client (aiohttp drains once more than 64 KiB are buffered for the socket); a smaller write
returns without waiting, so it needs no ``asyncio.timeout`` (a ``Timeout`` and a timer handle,
about 4.6 µs, per chunk: one per small answer, one per event of a stream).
"""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp import web

from .aiohttp_compat import CoalescingResponse

__all__ = ["Answer", "unless_ready", "write"]

_DRAIN_ABOVE = 0x10000  # aiohttp's StreamWriter.write: it awaits drain() once buffer_size passes this


Answer = CoalescingResponse  # a streamed answer whose headers go out with its first body bytes (``unless_ready``)


def unless_ready(request: web.BaseRequest, answer: aiohttp.ClientResponse, peeked: bytes) -> None:
    """After ``Answer.prepare``: send the headers now unless body bytes are at hand to go with them
    (``peeked``, or bytes already received and buffered, or the end of an empty body)."""
    content = answer.content
    if peeked or content.total_bytes > 0 or content.is_eof():
        return  # the next write (or write_eof) carries the headers
    writer = request.writer
    if writer is not None:
        writer.send_headers()


async def write(request: web.BaseRequest, response: web.StreamResponse, chunk: bytes, idle: float) -> None:
    """``response.write(chunk)``, under ``asyncio.timeout(idle)`` only when it may wait for the client."""
    writer = request.writer
    if writer is not None and writer.buffer_size + len(chunk) <= _DRAIN_ABOVE:
        await response.write(chunk)  # returns without waiting: nothing to time
        return
    async with asyncio.timeout(idle):
        await response.write(chunk)
