"""The bare aiohttp forwarder: the floor for any aiohttp reverse proxy, the gateway's baseline.

The minimal *honest* reverse proxy: one ``ClientSession`` with a keep-alive pool (configured like the
gateway's: no connection limit, no decompression, no cookie jar), the request's method, raw path, query,
headers and body forwarded, hop-by-hop headers dropped both ways, the answer streamed back chunk by chunk.
Nothing else: no routing, no timeouts beyond aiohttp's defaults, no retries, no logging, no metrics.
It runs on the same event loop as the gateway (uvloop when importable) and on the same low-level
``web.Server`` (no router), so the difference to the gateway is the gateway's own work.

    python bench/bare_forwarder.py --upstream http://127.0.0.1:8081 --port 8082

Prints one JSON line ``{"msg": "bare forwarder started", "proxy": "HOST:PORT", "pid": N}`` once bound.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from collections.abc import Callable

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)


def _clean(headers: CIMultiDictProxy[str], drop: frozenset[str]) -> CIMultiDict[str]:
    """A copy of ``headers`` without hop-by-hop headers, those named by ``Connection``, and ``drop``."""
    named = {t.strip().lower() for v in headers.getall("Connection", []) for t in v.split(",")}
    out: CIMultiDict[str] = CIMultiDict()
    for key, value in headers.items():
        low = key.lower()
        if low in HOP_BY_HOP or low in named or low in drop:
            continue
        out.add(key, value)
    return out


class Forwarder:
    """Forward every request to one upstream base URL."""

    def __init__(self, upstream: str) -> None:
        self.base = upstream.rstrip("/")
        self.host = URL(upstream).raw_authority
        self.session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=15)
        self.session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            trust_env=False,
        )

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        assert self.session is not None
        headers = _clean(request.headers, frozenset({"host"}))  # Content-Length, when sent, is kept
        headers["Host"] = self.host
        url = URL(self.base + request.raw_path, encoded=True)
        body = request.content if request.body_exists else None
        async with self.session.request(
            request.method, url, headers=headers, data=body, allow_redirects=False
        ) as upstream:
            out = web.StreamResponse(
                status=upstream.status,
                reason=upstream.reason,
                headers=_clean(upstream.headers, frozenset()),
            )
            await out.prepare(request)
            async for chunk in upstream.content.iter_any():
                await out.write(chunk)
            await out.write_eof()
            return out


async def serve(upstream: str, host: str, port: int) -> None:
    forwarder = Forwarder(upstream)
    await forwarder.start()
    server = web.Server(forwarder.handle, access_log=None, keepalive_timeout=75)
    runner = web.ServerRunner(server, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True, backlog=1024)
    await site.start()
    bound = runner.addresses[0]
    print(json.dumps({"msg": "bare forwarder started", "proxy": f"{bound[0]}:{bound[1]}", "pid": os.getpid()}))
    sys.stdout.flush()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        await forwarder.close()


def _loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    if name == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if name == "uvloop":
            raise
        return None
    return uvloop.new_event_loop


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--upstream", required=True, help="base URL, e.g. http://127.0.0.1:8081")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: any free port (printed on start)")
    parser.add_argument(
        "--loop",
        choices=("auto", "uvloop", "asyncio"),
        default="auto",
        help="auto: uvloop when importable, as the gateway",
    )
    args = parser.parse_args(argv)
    with asyncio.Runner(loop_factory=_loop_factory(args.loop)) as runner:
        runner.run(serve(args.upstream, args.host, args.port))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
