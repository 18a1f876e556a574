"""The body stage: the client's request body, held for replay or streamed once.

Owns ``RequestBody``: read into memory when it is small enough to replay
(``retry.max_replay_body``), else streamed to the upstream once; ``limits.max_request_body``
enforced with the chunk framing counted (``gateway.framing``); ``100 Continue`` sent when the
client waits for it; the client's side failing is translated here, once: a stall past ``idle``
(RequestTimeout), a body over the limit (BodyTooLarge), broken framing (MalformedBody), a client
that left (ClientGone). While streaming to the upstream, that failure is kept in ``failure``: the
tries stage raises it instead of blaming the upstream.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web
from aiohttp.http import HttpVersion11
from aiohttp.http_exceptions import HttpProcessingError

from .. import framing
from ..aiohttp_compat import write_continue
from ..errors import BodyTooLarge, ClientGone, GatewayError, MalformedBody, RequestTimeout

__all__ = ["RequestBody"]


class RequestBody:
    """The client's body: bytes when small enough to replay, else a one-shot stream."""

    def __init__(
        self, request: web.BaseRequest | None, data: bytes | None, prefix: bytes, limit: int, idle: float
    ) -> None:
        self._request = request
        self.data = data
        self._prefix = prefix
        self._limit = limit
        self._idle = idle
        self.started = False
        self.failure: GatewayError | ClientGone | None = None  # the client's side failed mid-stream

    @classmethod
    async def read(cls, request: web.BaseRequest, limit: int, replay_limit: int, idle: float) -> RequestBody:
        """Read what can be replayed; raise BodyTooLarge when Content-Length is over ``limit``."""
        length = request.content_length
        if length is not None and length > limit:
            raise BodyTooLarge(f"the request body is {length} bytes, over the limit of {limit}")
        if not request.body_exists:
            return cls(request, None, b"", limit, idle)
        if request.version == HttpVersion11 and request.headers.get("expect", "").lower() == "100-continue":
            await write_continue(request)  # the client waits for this before sending the body (curl: 1 s)
        if length is not None and length > replay_limit:
            return cls(request, None, b"", limit, idle)  # streamed, Content-Length kept
        want = (length if length is not None else replay_limit + 1) or 0
        buf = bytearray()
        while len(buf) < want:
            chunk = await cls._next(request, idle, want - len(buf))
            if not chunk:
                break
            buf += chunk
            if length is None and len(buf) + framing.overhead(request) > limit:  # chunk framing counts
                raise BodyTooLarge(f"the request body is over the limit of {limit} bytes")
        if length is None and len(buf) > replay_limit:
            return cls(request, None, bytes(buf), limit, idle)  # chunked and large: stream the rest
        return cls(request, bytes(buf), b"", limit, idle)

    @staticmethod
    def _failed(exc: BaseException, idle: float) -> GatewayError | ClientGone | None:
        """The one translation of a failed read of the client's body."""
        if isinstance(exc, TimeoutError):
            return RequestTimeout(f"the client sent no body data for {idle:g}s")
        if isinstance(exc, (HttpProcessingError, aiohttp.web.RequestPayloadError)):
            return MalformedBody(framing.message(exc))
        if isinstance(exc, ConnectionError):
            return ClientGone("the client closed the connection before the end of its body")
        return None

    @classmethod
    async def _next(cls, request: web.BaseRequest, idle: float, n: int) -> bytes:
        try:
            async with asyncio.timeout(idle):
                return await request.content.read(min(n, 1 << 16))
        except (TimeoutError, HttpProcessingError, aiohttp.web.RequestPayloadError, ConnectionError) as exc:
            failed = cls._failed(exc, idle)
            assert failed is not None
            raise failed from None

    @property
    def held(self) -> bytes | None:
        """The whole body when it is in memory (``b""`` for none); None when it streams."""
        if self.data is not None:
            return self.data
        return None if self._request is not None and self._request.body_exists else b""

    @property
    def replayable(self) -> bool:
        """Whether another try can send the same body: bytes, or a stream not yet started."""
        return self.data is not None or not self.started

    @classmethod
    def empty(cls) -> RequestBody:
        """No body (a background refresh's GET)."""
        return cls(None, None, b"", 0, 0.0)

    def payload(self) -> bytes | AsyncIterator[bytes] | None:
        """What the client library sends: the bytes, or the stream (once)."""
        if self.data is not None or self._request is None or not self._request.body_exists:
            return self.data
        return self._stream()

    async def _stream(self) -> AsyncIterator[bytes]:
        assert self._request is not None
        self.started = True
        sent = len(self._prefix)
        if self._prefix:
            yield self._prefix
        while True:
            try:
                async with asyncio.timeout(self._idle):
                    chunk = await self._request.content.readany()
            except TimeoutError:
                self.failure = self._failed(TimeoutError(), self._idle)
                raise  # aiohttp ends the upstream request; the tries stage raises ``failure``
            except (HttpProcessingError, aiohttp.web.RequestPayloadError, ConnectionError) as exc:
                failed = self._failed(exc, self._idle)
                assert failed is not None
                self.failure = failed
                raise failed from None
            if not chunk:
                return
            sent += len(chunk)
            if sent + framing.overhead(self._request) > self._limit:  # chunk framing counts
                # The upstream gets a truncated body, never a complete one.
                self.failure = BodyTooLarge(f"the request body is over the limit of {self._limit} bytes")
                raise self.failure
            yield chunk
