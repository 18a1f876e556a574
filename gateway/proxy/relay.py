"""The relay stage: the last try's answer to the client, or its failure as the gateway's error.

Owns streaming an upstream answer to the client chunk by chunk as it arrives (server-sent events
included), with the gateway's headers; reading an answer whole when it is to be kept or shared
(``read_upto``, at most a given size); and answering from an answer already read (``answer_from``).
An upstream that fails mid-stream truncates the client's answer (the connection is aborted, the
access log says ``upstream_timeout`` or ``upstream_reset``); a client that leaves mid-stream is
logged ``client_disconnected``. Failures are named by ``outcomes.classify`` and ``outcomes.failure``.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from .. import coalesce, outcomes
from ..hygiene import response_headers
from .exchange import stamp

if TYPE_CHECKING:
    from ..cache import Shared
    from .exchange import Call
    from .tries import Attempt

__all__ = ["answer_from", "read_upto", "relay"]


async def relay(request: web.BaseRequest, call: Call, attempt: Attempt) -> web.StreamResponse:
    """Send the last try's answer to the client as it streams in; raise its failure as an error."""
    answer = attempt.response
    ex = call.ex
    if answer is None:
        raise outcomes.failure(attempt.outcome, call.upstream.name, ex.attempts, call.route.policy.timeouts.per_try)
    ex.source = "upstream"
    ex.status = answer.status
    response = coalesce.Answer(status=answer.status, reason=answer.reason)
    stamp(response_headers(answer.headers, into=response.headers), ex, ex.attempts)
    idle = call.route.policy.timeouts.idle
    try:
        await response.prepare(request)
        coalesce.unless_ready(request, answer, attempt.peeked)
        ex.headers_sent_at = time.monotonic()
        if attempt.peeked:
            await response.write(attempt.peeked)
        if call.meter is not None:
            call.meter.feed(attempt.peeked)
        while True:
            try:
                chunk = await answer.content.readany()
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:  # the client sees a truncated body
                ex.error = outcomes.failure(outcomes.classify(exc), call.upstream.name, ex.attempts).code
                _abort(request)
                return response
            if not chunk:
                break
            if call.meter is not None:
                call.meter.feed(chunk)
            await coalesce.write(request, response, chunk, idle)
        await response.write_eof()
    except (ConnectionError, aiohttp.ClientConnectionResetError, TimeoutError):
        ex.error = "client_disconnected"
        _abort(request)
    finally:
        answer.release()
    return response


async def read_upto(
    answer: aiohttp.ClientResponse, prefix: bytes, limit: int, idle: float, call: Call
) -> tuple[bytes, bool]:
    """Read the answer's body after ``prefix`` until its end or past ``limit`` bytes.

    Returns (bytes read, whether that is the whole body). Nothing has gone to the client yet, so
    a failure here is the upstream's: UpstreamTimeout (idle) or UpstreamReset, answer closed."""
    buf = bytearray(prefix)
    try:
        while len(buf) <= limit:
            async with asyncio.timeout(idle):
                chunk = await answer.content.read(limit + 1 - len(buf))
            if not chunk:
                return bytes(buf), True
            buf += chunk
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        answer.close()
        raise outcomes.failure(outcomes.classify(exc), call.upstream.name, call.ex.attempts, idle=idle) from None
    return bytes(buf), False


def answer_from(call: Call, shared: Shared, attempts: int, source: str = "upstream") -> web.Response:
    """An answer read whole (fetched, collapsed or kept under an Idempotency-Key), to the client."""
    ex = call.ex
    ex.source, ex.status = source, shared.status
    headers = stamp(CIMultiDict(shared.headers), ex, attempts)
    headers.popall("content-length", None)
    return web.Response(status=shared.status, reason=shared.reason or None, headers=headers, body=shared.body)


def _abort(request: web.BaseRequest) -> None:
    """Close the client connection so a truncated body is visible as such (no final chunk)."""
    transport = request.transport
    if transport is not None:
        transport.abort()
