"""The simulator's servers: one aiohttp listener per simulated host, the request path, the control paths.

Owns ``Sim``: its listeners (Graph, Gemini, Supabase, lookaside; ``mode: refused`` windows close
and reopen a host's listener), the scenario clock and the per-route ``RoutePlan``s, and the path
of every request — route it (``routes``), count it (``stats``), apply the plan's ``Verdict``
(latency, an API error in the route's shape, a reset before, after or in the middle of the body, a
stall), refuse a request without the API's credential as the API does, then answer through the
API's module (``graph``, ``media``, ``gemini``, ``postgrest``, ``auth``, ``storage``) within the
API limits (``limits``). Every listener also answers the control paths ``GET /_sim/stats``,
``POST /_sim/reset[?restart=1]``, ``GET|PUT /_sim/scenario``. ``start_sim`` runs it in this event
loop (tests, benchmarks).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from . import gemini, graph, media, routes
from .auth import Accounts, gotrue_error
from .common import ApiError, ApiFault, bearer, json_response
from .errors import api_error, family
from .gemini import SseAnswer, google_error
from .graph import graph_error
from .limits import SimLimits
from .media import GraphMedia
from .plan import RoutePlan
from .postgrest import Tables, kong_no_apikey, postgrest_error
from .routes import OTHER, ROUTES, UPSTREAMS
from .scenario import Outage, Scenario, ScenarioError, load_scenario, parse_scenario
from .stats import RouteStats, Stats
from .storage import Storage, storage_error

__all__ = ["DEFAULT_PORTS", "LOOKASIDE_URL", "Sim", "SimCall", "start_sim"]

DEFAULT_PORTS: dict[str, int] = {"graph": 8081, "gemini": 8082, "supabase": 8083, "lookaside": 8084}
LOOKASIDE_URL = "https://lookaside.fbsbx.com"  # Graph's media host, which the backend swaps for the gateway
HOLD_MAX = 300.0  # a "timeout" answer holds the connection this long at most, then drops it
SHUTDOWN_GRACE = 0.5  # on close, in-flight handlers (latency sleeps, holds) get this long
REFUSAL_TICK = 0.05  # how often the listeners are opened or closed for ``mode: refused`` windows


_FORWARDED_HOST = re.compile(r"[A-Za-z0-9.\-]+(:\d{1,5})?|\[[0-9A-Fa-f:.]+\](:\d{1,5})?")


def _drop(request: web.BaseRequest) -> web.StreamResponse:
    """Close the connection without an answer (the returned object is never written)."""
    if request.transport is not None:
        request.transport.close()
    return web.Response()


@dataclass(slots=True)
class SimCall:
    """One request as the API handlers see it."""

    upstream: str
    route: str
    params: dict[str, str]
    request: web.BaseRequest
    body: bytes


class Sim:
    """The simulated upstreams: one listener per API host, one scenario, one set of counters."""

    def __init__(
        self,
        scenario: Scenario,
        host: str = "127.0.0.1",
        ports: Mapping[str, int] | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        lookaside_url: str | None = None,
    ) -> None:
        self.host = host
        self.ports: dict[str, int] = {**DEFAULT_PORTS, **(ports or {})}
        self.clock = clock
        self._lookaside_url = lookaside_url
        self._runners: list[web.ServerRunner] = []
        self._sites: dict[str, web.TCPSite] = {}
        self._refusing: set[str] = set()  # upstreams whose listener is closed (``mode: refused``)
        self._watcher: asyncio.Task[None] | None = None
        self.scenario = scenario
        self.seed = 0
        self.stats = Stats()
        self._t0 = self._reset_at = clock()
        self._wall0 = time.time()
        self.plans: dict[tuple[str, str], RoutePlan] = {}
        self.tables = Tables(scenario.upstreams.supabase.rows)
        self.media = GraphMedia(scenario.upstreams.lookaside.media_size, scenario.upstreams.lookaside.mime_type)
        self.accounts = Accounts()
        self.storage = Storage()
        self.load(scenario)  # sets all of the above for real; start() restarts the clock once listening

    # ---- lifecycle

    async def start(self) -> Sim:
        """Open every listener (port 0 picks a free port; ``ports`` then holds the real ones)."""
        try:
            for name in UPSTREAMS:
                server = web.Server(self._handler(name), access_log=None, handler_cancellation=True)
                runner = web.ServerRunner(server, shutdown_timeout=SHUTDOWN_GRACE)
                await runner.setup()
                self._runners.append(runner)
                site = web.TCPSite(runner, self.host, self.ports[name])
                await site.start()
                self._sites[name] = site
                self.ports[name] = int(runner.addresses[0][1])
        except BaseException:
            await self.close()
            raise
        self.restart()
        self._watcher = asyncio.create_task(self._watch_refusals())
        return self

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)
            self._watcher = None
        runners, self._runners = self._runners, []
        for runner in runners:
            await runner.cleanup()

    # ---- refused connections: a ``mode: refused`` window closes the host's listener

    def refuses(self, upstream: str) -> bool:
        """True while a ``refused`` window of ``upstream`` (its own outages, else the defaults') is active."""
        outages = self.scenario.upstream(upstream).outages
        windows = outages if outages is not None else self.scenario.defaults.outages or ()
        t = self.elapsed()
        return any(o.mode == "refused" and o.active(t) for o in windows)

    async def apply_refusals(self) -> None:
        """Close the listener of each upstream that refuses now (dropping its open connections), reopen the rest."""
        for runner, name in zip(self._runners, UPSTREAMS, strict=False):
            if self.refuses(name) and name not in self._refusing:
                self._refusing.add(name)
                await self._sites.pop(name).stop()
                for handler in runner.server.connections if runner.server is not None else ():
                    if handler.transport is not None:
                        handler.transport.abort()
            elif not self.refuses(name) and name in self._refusing:
                site = web.TCPSite(runner, self.host, self.ports[name], reuse_address=True)
                await site.start()
                self._sites[name] = site
                self._refusing.discard(name)

    async def _watch_refusals(self) -> None:
        while True:
            with contextlib.suppress(OSError):  # the port cannot be bound again yet: try on the next tick
                await self.apply_refusals()
            await asyncio.sleep(REFUSAL_TICK)

    def url(self, upstream: str) -> str:
        host = self.host if self.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.ports[upstream]}"

    @property
    def lookaside_url(self) -> str:
        """The base of media URLs when the request does not name its gateway (see ``_lookaside_base``)."""
        return (self._lookaside_url or LOOKASIDE_URL).rstrip("/")

    def _lookaside_base(self, request: web.BaseRequest) -> str:
        """``--lookaside-url``; else the gateway that forwarded the request (its ``X-Forwarded-Host``,
        with ``forwarded_headers: true``) and its ``/lookaside`` prefix; else Graph's own host,
        which the backend swaps for the gateway's, as in production."""
        if self._lookaside_url:
            return self.lookaside_url
        host = request.headers.get("X-Forwarded-Host", "").split(",")[0].strip()
        if host and _FORWARDED_HOST.fullmatch(host):
            proto = request.headers.get("X-Forwarded-Proto", "http").split(",")[0].strip()
            return f"{proto if proto in ('http', 'https') else 'http'}://{host}/lookaside"
        return LOOKASIDE_URL

    # ---- scenario and counters

    def load(self, scenario: Scenario) -> None:
        """Use ``scenario`` from now on, restarting its clock, its random streams and the tables."""
        self.scenario = scenario
        self.seed = scenario.seed if scenario.seed is not None else random.SystemRandom().randrange(2**31)
        self.restart()

    def restart(self) -> None:
        """Zero the counters, restart the scenario clock and random streams, reseed the tables."""
        self._t0 = self._reset_at = self.clock()
        self._wall0 = time.time()
        self.stats = Stats()
        self.tables = Tables(self.scenario.upstreams.supabase.rows)
        look = self.scenario.upstreams.lookaside
        self.media = GraphMedia(look.media_size, look.mime_type)
        self.accounts = Accounts()
        self.storage = Storage()
        self.limits = SimLimits(self.scenario.upstreams.graph.limits, self.scenario.upstreams.gemini.limits, self.clock)
        self.plans = {
            (up, route): RoutePlan(up, route, self.scenario.effective(up, route), self.seed)
            for up in UPSTREAMS
            for route in ROUTES[up]
        }

    def reset_counters(self) -> None:
        self.stats = Stats()
        self._reset_at = self.clock()

    def elapsed(self) -> float:
        """Seconds on the scenario clock (outage windows are measured on it)."""
        return self.clock() - self._t0

    def outage_windows(self) -> list[dict[str, Any]]:
        """Every outage window the scenario writes (``upstream: "*"`` for ``defaults``), for timelines."""
        found: list[tuple[str, str | None, Outage]] = [("*", None, o) for o in self.scenario.defaults.outages or ()]
        for up in UPSTREAMS:
            found += [(up, None, o) for o in self.scenario.upstream(up).outages or ()]
            for route in ROUTES[up]:
                block = self.scenario.route(up, route)
                found += [(up, route, o) for o in (block.outages if block is not None else None) or ()]
        return [
            {
                "upstream": up,
                "route": route,
                "start_s": o.start,
                "duration_s": o.duration,
                "every_s": o.every,
                "mode": o.mode,
                "rate": o.rate,
            }
            for up, route, o in found
        ]

    def stats_json(self) -> dict[str, Any]:
        now = self.clock()
        return {
            "scenario": self.scenario.name,
            "seed": self.seed,
            "started_at": round(self._wall0, 3),
            "elapsed_s": round(now - self._t0, 3),
            "since_reset_s": round(now - self._reset_at, 3),
            "ports": dict(self.ports),
            **self.stats.as_json(),
            "limits": self.limits.as_json(),
            "outages": self.outage_windows(),
        }

    # ---- request path

    def _handler(self, upstream: str) -> Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]:
        async def handle(request: web.BaseRequest) -> web.StreamResponse:
            if request.path.startswith("/_sim/") or request.path == "/_sim":
                return await self._control(request)
            return await self._serve(upstream, request)

        return handle

    async def _serve(self, upstream: str, request: web.BaseRequest) -> web.StreamResponse:
        route, params = routes.route(upstream, request.method, request.path)
        stats = self.stats.route(upstream, route)
        stats.requests += 1
        if upstream in self._refusing or self.refuses(upstream):  # a connection that outlived the listener
            stats.injected, stats.outage, stats.resets = stats.injected + 1, stats.outage + 1, stats.resets + 1
            return _drop(request)
        if route == OTHER:
            await request.read()
            return self._count(stats, self._not_found(upstream, request))
        verdict = self.plans[(upstream, route)].decide(self.elapsed())
        if verdict.action != "ok":
            stats.injected += 1
            stats.outage += int(verdict.outage)
        if verdict.action == "timeout":
            stats.timeouts += 1
            await asyncio.sleep(HOLD_MAX)  # cancelled when the client gives up (handler_cancellation)
            return _drop(request)
        if verdict.action == "reset" and verdict.when == "before_body":
            stats.resets += 1
            return _drop(request)
        call = SimCall(upstream, route, params, request, await request.read())
        message = self.stats.message_received(call.body) if route == "send_message" else None
        refusal = self._refuse(call) or self.limits.check(upstream, route, params, call.body)
        if refusal is None and verdict.error is not None:
            refusal = api_error(family(upstream, route), verdict.error)
        if refusal is not None:
            await asyncio.sleep(verdict.latency)
            return self._count(stats, refusal)
        answer = self._answer(call)
        self.limits.answered(upstream, route, params, answer)
        if message is not None and isinstance(answer, web.Response) and answer.status < 300:
            self.stats.message_delivered(message)  # taken before the answer is sent, as Meta would
        await asyncio.sleep(verdict.latency)
        if verdict.action == "reset" and verdict.when == "after_body":
            stats.resets += 1
            return _drop(request)
        cut = verdict.action == "reset"  # mid_body: start the answer, then drop the connection
        if isinstance(answer, SseAnswer):
            return await self._stream(stats, request, answer, cut)
        if cut:
            stats.resets += 1
            stats.statuses[answer.status] += 1
            return await self._truncate(request, answer)
        return self._count(stats, answer)

    @staticmethod
    def _count(stats: RouteStats, response: web.Response) -> web.Response:
        stats.statuses[response.status] += 1
        return response

    @staticmethod
    async def _truncate(request: web.BaseRequest, answer: web.Response) -> web.StreamResponse:
        body = answer.body if isinstance(answer.body, bytes) else b""
        response = web.StreamResponse(status=answer.status, headers=answer.headers)
        response.content_length = len(body)
        await response.prepare(request)
        await response.write(body[: len(body) // 2])
        return _drop(request)

    async def _stream(
        self, stats: RouteStats, request: web.BaseRequest, answer: SseAnswer, cut: bool
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            status=200, headers={"Content-Type": "text/event-stream", "Content-Disposition": "attachment"}
        )
        stats.statuses[200] += 1
        await response.prepare(request)
        events = answer.events[: math.ceil(len(answer.events) / 2)] if cut else answer.events
        for i, event in enumerate(events):
            if i:
                await asyncio.sleep(answer.interval)
            await response.write(event)
        if cut:
            stats.resets += 1
            return _drop(request)
        await response.write_eof()
        return response

    def _refuse(self, call: SimCall) -> web.Response | None:
        """The API's own answer to a request without its credential (never drawn by the scenario)."""
        request = call.request
        if call.upstream in ("graph", "lookaside"):
            if bearer(request) is None and not request.query.get("access_token"):
                return graph_error(ApiError(None, 104))
        elif call.upstream == "gemini":
            if not request.headers.get("x-goog-api-key") and not request.query.get("key"):
                return google_error(ApiError(None, "PERMISSION_DENIED"))
        elif call.route == "auth_user":
            token = bearer(request)
            if token is None:
                return gotrue_error(ApiError(None, "no_authorization"))
            if token == request.headers.get("apikey"):
                return gotrue_error(ApiError(None, "bad_jwt", None, "invalid claim: missing sub claim"))
        elif not request.headers.get("apikey") and not request.query.get("apikey"):
            return kong_no_apikey()
        return None

    def _not_found(self, upstream: str, request: web.BaseRequest) -> web.Response:
        if upstream == "graph":
            return graph_error(ApiError(400, 100, None, f"Unknown path components: {request.path}"))
        if upstream == "gemini":
            return google_error(ApiError(404, "NOT_FOUND", None, f"Method not found: {request.path}"))
        if upstream == "supabase" and request.path.startswith("/storage/v1/"):
            return storage_error(404, "InvalidRequest", f"Route {request.method}:{request.path} not found")
        if upstream == "supabase":
            return postgrest_error(ApiError(404, "PGRST125", None, "Invalid path specified in request URL"))
        return web.Response(status=404, text="Not Found")

    def _answer(self, call: SimCall) -> web.Response | SseAnswer:
        """The API's answer to a request the scenario lets through."""
        request, params, body = call.request, call.params, call.body
        store, headers, method = self.storage, request.headers, request.method
        gemini_stream = self.scenario.upstreams.gemini.stream
        handlers: dict[str, Callable[[], web.Response | SseAnswer]] = {
            "send_message": lambda: graph.send_message(body),
            "media_url": lambda: media.media_url(
                self.media, params["media_id"], self._lookaside_base(request), int(self._wall0 + self.elapsed())
            ),
            "media_upload": lambda: self.media.upload(headers.get("Content-Type", ""), body),
            "media_delete": lambda: self.media.delete(params["media_id"]),
            "business_profile": lambda: graph.business_profile(method, params["phone_id"]),
            "media": lambda: media.download(self.media, request.query.get("mid")),
            "generate": lambda: gemini.generate(params["model"], body, stream=False, sse=False, events=0, interval=0.0),
            "stream": lambda: gemini.generate(
                params["model"],
                body,
                stream=True,
                sse=request.query.get("alt") == "sse",
                events=gemini_stream.events,
                interval=gemini_stream.interval,
            ),
            "models": lambda: gemini.models(params.get("model")),
            "count_tokens": lambda: gemini.count_tokens(body),
            "embed": lambda: gemini.embed(params["model"], body, params["verb"] == "batchEmbedContents"),
            "rest_read": lambda: self._rest(call),
            "rest_write": lambda: self._rest(call),
            "rpc": lambda: self.tables.rpc(request, params["fn"], body),
            "auth_user": lambda: self.accounts.user(bearer(request)),
            "auth_token": lambda: self.accounts.token(request.query.get("grant_type"), body),
            "auth_logout": lambda: self.accounts.logout(bearer(request), request.query.get("scope", "global")),
            "storage_upload": lambda: store.upload(method, params["bucket"], params["key"], headers, body),
            "storage_download": lambda: store.download(method, params["bucket"], params["key"]),
            "storage_list": lambda: store.list(params["bucket"], body),
            "storage_delete": lambda: store.delete(params["bucket"], body),
            "storage_bucket": lambda: store.buckets(method, params.get("bucket"), body),
        }
        try:
            return handlers[call.route]()
        except ApiFault as fault:
            return api_error(fault.family, ApiError(fault.status, fault.code, fault.subcode, fault.message))

    def _rest(self, call: SimCall) -> web.Response:
        """PostgREST's tables, counted per table and method for ``/_sim/stats``."""
        table = call.params["table"]
        self.stats.tables.setdefault(table, Counter())[call.request.method] += 1
        return self.tables.rest(call.request, table, call.body)

    # ---- control

    async def _control(self, request: web.BaseRequest) -> web.StreamResponse:
        path, method = request.path, request.method
        if path == "/_sim/stats" and method == "GET":
            return json_response(200, self.stats_json())
        if path == "/_sim/reset" and method == "POST":
            await request.read()
            restart = request.query.get("restart", "") in ("1", "true", "yes")
            self.restart() if restart else self.reset_counters()
            await self.apply_refusals()  # the restarted clock may end a refused window: reopen at once
            return json_response(200, {"reset": True, "restarted": restart})
        if path == "/_sim/scenario" and method == "GET":
            return json_response(200, {"seed": self.seed, **self.scenario.model_dump(mode="json")})
        if path == "/_sim/scenario" and method == "PUT":
            text = (await request.read()).decode("utf-8", "replace")
            try:
                scenario = parse_scenario(text, "<request body>")
            except ScenarioError as exc:
                return json_response(400, {"error": "invalid scenario", "problems": exc.problems})
            self.load(scenario)
            await self.apply_refusals()
            return json_response(200, {"loaded": scenario.name, "seed": self.seed})
        return json_response(404, {"error": "unknown control path", "paths": _CONTROL_PATHS})


_CONTROL_PATHS = [
    "GET /_sim/stats",
    "POST /_sim/reset[?restart=1]",
    "GET /_sim/scenario",
    "PUT /_sim/scenario",
]


async def start_sim(
    scenario: Scenario | str | Path | None = None,
    host: str = "127.0.0.1",
    ports: Mapping[str, int] | None = None,
    *,
    clock: Callable[[], float] = time.monotonic,
    lookaside_url: str | None = None,
    seed: int | None = None,
) -> Sim:
    """Start the simulator in this event loop; ``await sim.close()`` stops it.

    ``scenario`` is a Scenario, a path to a scenario file, or None (the empty scenario: instant
    answers, no faults). ``ports`` maps upstream names to ports (default 8081-8084; 0 picks a free
    one). ``clock`` drives outage windows (tests inject one). ``seed`` overrides the scenario's.
    """
    if scenario is None:
        scenario = Scenario()
    elif not isinstance(scenario, Scenario):
        scenario = load_scenario(scenario)
    if seed is not None:
        scenario = scenario.model_copy(update={"seed": seed})
    unknown = set(ports or {}) - set(UPSTREAMS)
    if unknown:
        raise ValueError(f"unknown upstream(s) in ports: {', '.join(sorted(unknown))}")
    sim = Sim(scenario, host, ports, clock=clock, lookaside_url=lookaside_url)
    return await sim.start()
