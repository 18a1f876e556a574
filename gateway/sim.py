"""The upstream simulator: ``gateway sim`` (issue 7, part 1).

Owns simulated WhatsApp Graph, Meta's media host (lookaside), Gemini and Supabase (PostgREST and
Auth) servers in one process, one aiohttp listener per simulated host, each answering in its real
API's shapes (``../shared/upstream-apis.md``):

- Graph: ``POST /{ver}/{phone_id}/messages``, ``GET|DELETE /{ver}/{media_id}``, media upload
  ``POST /{ver}/{phone_id}/media`` and ``/{ver}/{phone_id}/whatsapp_business_profile``
  (``sim_graph``); errors ``{"error": {"message", "type", "code", "error_subcode", "error_data",
  "fbtrace_id"}}``. Media URLs name ``https://lookaside.fbsbx.com`` as Graph's do (the backend swaps
  that host for the gateway's ``/lookaside``), or the gateway that forwarded the request when it
  says so in ``X-Forwarded-Host``, or ``--lookaside-url``.
- lookaside: ``GET /whatsapp_business/attachments/?mid=…``, the media bytes Graph's media URL names.
- Gemini: ``:generateContent``, ``:streamGenerateContent`` (``?alt=sse``: events spaced in time),
  ``:countTokens``, ``:embedContent``, ``:batchEmbedContents`` (``sim_gemini``),
  ``GET /{ver}/models[/{model}]``; errors in google.rpc's ``{"error": {"code", "message", "status",
  "details"}}``, with QuotaFailure and RetryInfo on 429.
- Supabase: PostgREST ``/rest/v1/{table}`` (GET/HEAD/POST/PATCH/PUT/DELETE on in-memory rows,
  filters incl. ``like``/``ilike``, ``Range``/``Content-Range``, ``Prefer``, ``Vary``) and
  ``/rest/v1/rpc/{fn}`` (``echo``, ``count_rows``), errors ``{"code", "details", "hint", "message"}``;
  Auth ``GET /auth/v1/user``, ``POST /auth/v1/token`` (password and refresh_token grants),
  ``POST /auth/v1/logout`` (``sim_auth``), errors in GoTrue's ``{"code", "error_code", "msg"}``;
  Storage ``/storage/v1/object/…`` and ``/storage/v1/bucket`` (``sim_storage``), errors
  ``{"statusCode", "code", "error", "message"}``.

It also owns the scenario file (YAML validated by pydantic models that refuse unknown keys:
latency distributions, error rates and mixes, resets, outage windows over time (API errors, plain
proxy answers, resets, stalls, refused connections), brownout windows, per upstream and per route;
see ``Scenario``), its seeded per-route random draws, and the counters reported on
``/_sim/stats`` (requests per upstream and route, answers by status, injected faults, WhatsApp
message bodies received and delivered, so duplicate sends are visible). Every listener also
answers the control paths ``/_sim/stats``, ``/_sim/reset``, ``/_sim/scenario``.

``start_sim`` runs it in-process (tests, benchmarks); ``run_sim`` is the ``gateway sim`` command.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import hashlib
import json
import math
import random
import re
import secrets
import signal
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from aiohttp import web
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from . import sim_gemini
from .config import Duration, Percent, Size, _path, _step, _UniqueKeyLoader
from .sim_auth import Accounts, user_json
from .sim_common import ApiFault
from .sim_graph import GraphMedia, business_profile
from .sim_storage import STORAGE_CODES, Storage, storage_error
from .simlimits import GeminiLimits, GraphLimits, SimLimits
from .units import format_duration

__all__ = [
    "DEFAULT_PORTS",
    "ROUTES",
    "UPSTREAMS",
    "Scenario",
    "ScenarioError",
    "Sim",
    "load_scenario",
    "parse_scenario",
    "run_sim",
    "start_sim",
]

UPSTREAMS = ("graph", "gemini", "supabase", "lookaside")
DEFAULT_PORTS: dict[str, int] = {"graph": 8081, "gemini": 8082, "supabase": 8083, "lookaside": 8084}
# The routes a scenario may name under ``upstreams.<name>.routes``; anything else is route "other"
# (an API-shaped 404, never faulted).
ROUTES: dict[str, tuple[str, ...]] = {
    "graph": ("send_message", "media_url", "media_upload", "media_delete", "business_profile"),
    "gemini": ("generate", "stream", "models", "count_tokens", "embed"),
    "supabase": (
        "rest_read",
        "rest_write",
        "rpc",
        "auth_user",
        "auth_token",
        "auth_logout",
        "storage_upload",
        "storage_download",
        "storage_list",
        "storage_delete",
        "storage_bucket",
    ),
    "lookaside": ("media",),
}
LOOKASIDE_URL = "https://lookaside.fbsbx.com"  # Graph's media host, which the backend swaps for the gateway
OTHER = "other"
HOLD_MAX = 300.0  # a "timeout" answer holds the connection this long at most, then drops it
SHUTDOWN_GRACE = 0.5  # on close, in-flight handlers (latency sleeps, holds) get this long
REFUSAL_TICK = 0.05  # how often the listeners are opened or closed for ``mode: refused`` windows
MAX_REPEATED_LISTED = 50  # /_sim/stats lists at most this many repeated message bodies
EPOCH = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


# --------------------------------------------------------------------------- scenario models


def _custom(kind: str, message: str) -> PydanticCustomError:
    """A validation error whose message is final text; ``sim_`` kinds are shown as they are."""
    return PydanticCustomError(f"sim_{kind}", message)


def _outage_mode(value: object) -> str:
    if value in ("reset", "timeout", "refused"):
        return str(value)
    if not isinstance(value, bool) and isinstance(value, (int, str)) and str(value).isdigit():
        status = int(value)
        if 400 <= status <= 599:
            return str(status)
    raise _custom("mode", f"expected reset, timeout, refused or an HTTP status from 400 to 599, got {value!r}")


def _api_code(value: object) -> int | str:
    if isinstance(value, bool) or not isinstance(value, (int, str)) or value == "":
        raise _custom("code", f"expected an API error code like 131000, PGRST002 or UNAVAILABLE, got {value!r}")
    return int(value) if isinstance(value, str) and value.isdigit() else value


OutageMode = Annotated[str, BeforeValidator(_outage_mode)]
ApiCode = Annotated[int | str, BeforeValidator(_api_code)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Latency(_Model):
    """``{fixed: 50ms}``, or lognormal with median ``p50`` and 95th percentile ``p95``, clipped to [min, max]."""

    fixed: Duration | None = None
    p50: Duration | None = None
    p95: Duration | None = None
    min: Duration = 0.0
    max: Duration | None = None

    @model_validator(mode="after")
    def _check(self) -> Latency:
        if self.fixed is not None:
            if self.p50 is not None or self.p95 is not None or self.max is not None or self.min:
                raise _custom("latency", "fixed cannot be combined with p50, p95, min or max")
            return self
        if self.p50 is None:
            raise _custom("latency", "set fixed, or p50 (with optional p95, min, max)")
        if self.p95 is not None and self.p95 < self.p50:
            raise _custom("latency", f"p95 ({format_duration(self.p95)}) is below p50 ({format_duration(self.p50)})")
        if self.max is not None and self.max < self.p50:
            raise _custom("latency", f"max ({format_duration(self.max)}) is below p50 ({format_duration(self.p50)})")
        if self.min > self.p50:
            raise _custom("latency", f"min ({format_duration(self.min)}) is above p50 ({format_duration(self.p50)})")
        return self


class ErrorKind(_Model):
    """One entry of ``errors.mix``: an API error the sim answers, drawn with ``weight``."""

    weight: float = Field(1.0, gt=0)
    status: int | None = Field(None, ge=400, le=599)
    code: ApiCode | None = None
    subcode: int | None = None
    message: str | None = None
    retry_after: Duration | None = None
    retry_delay: Duration | None = None

    @model_validator(mode="after")
    def _check(self) -> ErrorKind:
        if self.status is None and self.code is None:
            raise _custom("error", "set status, code, or both")
        return self


class Errors(_Model):
    """Answer an API error to ``rate`` of the requests; ``mix`` says which (default: the API's usual 5xx)."""

    rate: Percent
    mix: tuple[ErrorKind, ...] = ()


class Resets(_Model):
    """Close the connection without a complete answer for ``rate`` of the requests."""

    rate: Percent
    when: Literal["before_body", "after_body", "mid_body"] = "after_body"


def _check_window(kind: str, duration: float, every: float | None) -> None:
    """A window over the scenario clock (outages, brownouts): raise when it cannot happen as written."""
    if duration <= 0:
        raise _custom(kind, "duration must be longer than 0s")
    if every is not None and every < duration:
        raise _custom(kind, f"every ({format_duration(every)}) is shorter than duration ({format_duration(duration)})")


def _in_window(t: float, start: float, duration: float, every: float | None) -> bool:
    """Whether scenario time ``t`` falls in the window from ``start`` for ``duration``, again ``every``."""
    if t < start:
        return False
    into = t - start
    if every is not None:
        into %= every
    return into < duration


class Outage(_Model):
    """From ``start`` (after sim start) for ``duration``, answer ``mode`` to ``rate`` of the requests.

    ``mode``: an HTTP status (in the API's error shape, or ``plain: true`` for the platform's proxy
    answering a short HTML body with no API code), ``reset`` (the connection closes: ``when`` says
    before the body, the default, or after it, as an answer lost once the API acted, or mid-body),
    ``timeout`` (the connection stalls), or ``refused`` (the host's listener closes: new connections
    are refused and open ones dropped; upstream or defaults level only, ``rate`` must be 100 %).
    """

    start: Duration
    duration: Duration
    mode: OutageMode = "503"
    rate: Percent = 1.0
    every: Duration | None = None
    code: ApiCode | None = None
    retry_after: Duration | None = None
    retry_delay: Duration | None = None
    when: Literal["before_body", "after_body", "mid_body"] | None = None
    plain: bool = False

    @model_validator(mode="after")
    def _check(self) -> Outage:
        _check_window("outage", self.duration, self.every)
        status_only = self.code is not None or self.retry_after or self.retry_delay or self.plain
        if self.mode in ("reset", "timeout", "refused") and status_only:
            raise _custom("outage", f"code, retry_after, retry_delay and plain need a status mode, not {self.mode}")
        if self.when is not None and self.mode != "reset":
            raise _custom("outage", f"when applies to mode reset, not {self.mode}")
        if self.plain and (self.code is not None or self.retry_delay is not None):
            raise _custom("outage", "a plain answer carries no API code and no RetryInfo: drop code and retry_delay")
        if self.mode == "refused" and self.rate < 1.0:
            raise _custom("outage", "a refused host refuses every connection: rate must be 100%")
        return self

    def active(self, t: float) -> bool:
        return _in_window(t, self.start, self.duration, self.every)


class Brownout(_Model):
    """From ``start`` for ``duration`` (again ``every``), every latency drawn is multiplied by ``factor``."""

    start: Duration
    duration: Duration
    factor: float = Field(gt=1, le=1000)
    every: Duration | None = None

    @model_validator(mode="after")
    def _check(self) -> Brownout:
        _check_window("brownout", self.duration, self.every)
        return self

    def active(self, t: float) -> bool:
        return _in_window(t, self.start, self.duration, self.every)


class Behaviour(_Model):
    """The blocks a scenario sets in ``defaults``, an upstream or a route; the nearest block wins whole."""

    latency: Latency | None = None
    errors: Errors | None = None
    resets: Resets | None = None
    outages: tuple[Outage, ...] | None = None
    brownouts: tuple[Brownout, ...] | None = None


class GraphRoutes(_Model):
    send_message: Behaviour | None = None
    media_url: Behaviour | None = None
    media_upload: Behaviour | None = None
    media_delete: Behaviour | None = None
    business_profile: Behaviour | None = None


class GraphSim(Behaviour):
    routes: GraphRoutes = Field(default_factory=GraphRoutes)
    limits: GraphLimits | None = None  # Meta's pair rate (131056) and number throughput (130429)


class LookasideRoutes(_Model):
    media: Behaviour | None = None


class LookasideSim(Behaviour):
    routes: LookasideRoutes = Field(default_factory=LookasideRoutes)
    media_size: Size = 64 * 1024
    mime_type: str = "image/jpeg"


class Stream(_Model):
    """Server-sent events of ``:streamGenerateContent?alt=sse``: how many, and the gap between them."""

    events: int = Field(5, ge=1, le=1000)
    interval: Duration = 0.1


class GeminiRoutes(_Model):
    generate: Behaviour | None = None
    stream: Behaviour | None = None
    models: Behaviour | None = None
    count_tokens: Behaviour | None = None
    embed: Behaviour | None = None


class GeminiSim(Behaviour):
    routes: GeminiRoutes = Field(default_factory=GeminiRoutes)
    stream: Stream = Field(default_factory=Stream)
    limits: GeminiLimits | None = None  # Google's per-model rpm, tpm, rpd (429 with QuotaFailure)


class SupabaseRoutes(_Model):
    rest_read: Behaviour | None = None
    rest_write: Behaviour | None = None
    rpc: Behaviour | None = None
    auth_user: Behaviour | None = None
    auth_token: Behaviour | None = None
    auth_logout: Behaviour | None = None
    storage_upload: Behaviour | None = None
    storage_download: Behaviour | None = None
    storage_list: Behaviour | None = None
    storage_delete: Behaviour | None = None
    storage_bucket: Behaviour | None = None


class SupabaseSim(Behaviour):
    routes: SupabaseRoutes = Field(default_factory=SupabaseRoutes)
    rows: int = Field(50, ge=0, le=100_000)


class Upstreams(_Model):
    graph: GraphSim = Field(default_factory=GraphSim)
    gemini: GeminiSim = Field(default_factory=GeminiSim)
    supabase: SupabaseSim = Field(default_factory=SupabaseSim)
    lookaside: LookasideSim = Field(default_factory=LookasideSim)


class Scenario(_Model):
    """A scenario file. Everything is optional: the empty scenario answers at once, without faults."""

    name: str = ""
    description: str = ""
    seed: int | None = None
    defaults: Behaviour = Field(default_factory=Behaviour)
    upstreams: Upstreams = Field(default_factory=Upstreams)

    def upstream(self, name: str) -> Behaviour:
        """The upstream's own block (a GraphSim, GeminiSim, … : a Behaviour with ``routes``)."""
        sim: Behaviour = getattr(self.upstreams, name)
        return sim

    def route(self, upstream: str, route: str) -> Behaviour | None:
        """The route's block under ``upstreams.<upstream>.routes``, if written."""
        routes: Any = getattr(self.upstreams, upstream).routes
        found: Behaviour | None = getattr(routes, route, None)
        return found

    def effective(self, upstream: str, route: str) -> Behaviour:
        """defaults → upstream → route, block by block (a block written nearer replaces the whole block)."""
        merged: dict[str, Any] = {}
        for level in (self.defaults, self.upstream(upstream), self.route(upstream, route)):
            if level is None:
                continue
            for key in Behaviour.model_fields:
                value = getattr(level, key)
                if value is not None:
                    merged[key] = value
        return Behaviour(**merged)


class ScenarioError(Exception):
    """A scenario file cannot be used; ``problems`` holds one line per problem, each naming its key."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__("\n".join(f"{source}: {p}" for p in problems))


def _describe(error: Any) -> str:
    kind, msg, value = error["type"], error["msg"], error.get("input")
    loc = _path(error["loc"])
    if kind == "extra_forbidden":
        annotation: Any = Scenario
        for part in error["loc"][:-1]:
            annotation = _step(annotation, part)
        fields: dict[str, Any] = {}
        for arg in (annotation, *getattr(annotation, "__args__", ())):
            fields = getattr(arg, "model_fields", None) or {}
            if fields:
                break
        hint = f" (expected one of: {', '.join(fields)})" if fields else ""
        return f"{loc}: unknown key{hint}"
    if kind == "missing":
        return f"{loc}: required key is missing"
    if kind.startswith("sim_") or kind in {"duration", "size", "percent"}:
        return f"{loc}: {msg}"
    return f"{loc}: {msg[0].lower() + msg[1:]}, got {value!r}"


def parse_scenario(text: str, source: str = "<scenario>") -> Scenario:
    """Parse and validate scenario YAML. Raises ScenarioError listing every problem."""
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        raise ScenarioError(source, [f"{where}invalid YAML: {getattr(exc, 'problem', None) or exc}"]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ScenarioError(source, [f"expected a mapping at the top level, got {type(data).__name__}"])
    try:
        scenario = Scenario.model_validate(data)
    except ValidationError as exc:
        raise ScenarioError(source, [_describe(e) for e in exc.errors()]) from None
    problems = _check_codes(scenario)
    if problems:
        raise ScenarioError(source, problems)
    if not scenario.name and source not in ("<scenario>", "<string>"):
        scenario = scenario.model_copy(update={"name": Path(source).stem})
    return scenario


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate the scenario file at ``path``. Raises ScenarioError (unreadable file included)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioError(str(path), [f"cannot read the file: {exc}"]) from None
    return parse_scenario(text, str(path))


def _blocks(scenario: Scenario) -> Iterator[tuple[str, str | None, Behaviour]]:
    """Every behaviour block with its key path and the upstream it belongs to (None for defaults)."""
    yield "defaults", None, scenario.defaults
    for name in UPSTREAMS:
        yield f"upstreams.{name}", name, scenario.upstream(name)
        for route in ROUTES[name]:
            block = scenario.route(name, route)
            if block is not None:
                yield f"upstreams.{name}.routes.{route}", name, block


def _check_codes(scenario: Scenario) -> list[str]:
    """API codes must belong to the upstream's API; a code the sim does not know needs a status."""
    problems: list[str] = []
    for where, upstream, block in _blocks(scenario):
        entries: list[tuple[str, int | None, int | str | None, float | None]] = []
        if block.errors is not None:
            for i, kind in enumerate(block.errors.mix):
                entries.append((f"{where}.errors.mix[{i}]", kind.status, kind.code, kind.retry_delay))
        for i, outage in enumerate(block.outages or ()):
            status = int(outage.mode) if outage.mode.isdigit() else None
            entries.append((f"{where}.outages[{i}]", status, outage.code, outage.retry_delay))
            if outage.mode == "refused" and ".routes." in where:
                problems.append(f"{where}.outages[{i}].mode: refused closes the host: set it under the upstream")
        for here, status, code, retry_delay in entries:
            if retry_delay is not None and upstream != "gemini":
                problems.append(f"{here}.retry_delay: only Gemini's 429 answers carry RetryInfo; set it under gemini")
            if code is None:
                continue
            if upstream is None:
                problems.append(f"{here}.code: API codes differ per API; set them under upstreams.<name>")
                continue
            problem = _code_problem(upstream, status, code)
            if problem:
                problems.append(f"{here}.code: {problem}")
    return problems


def _code_problem(upstream: str, status: int | None, code: int | str) -> str | None:
    if upstream in ("graph", "lookaside"):
        if not isinstance(code, int):
            return f"Meta's error codes are numbers like 131000, got {code!r}"
        if code not in GRAPH_CODES and status is None:
            return f"{code} is not in the sim's table of Meta codes: set its status too"
        return None
    if upstream == "gemini":
        if code not in GOOGLE_STATUSES:
            return f"expected one of {', '.join(GOOGLE_STATUSES)}, got {code!r}"
        if status is not None and GOOGLE_STATUSES[str(code)][0] != status:
            return f"{code} goes with status {GOOGLE_STATUSES[str(code)][0]}, not {status}"
        return None
    known = str(code) in POSTGREST_CODES or str(code) in GOTRUE_CODES or str(code) in STORAGE_CODES
    if not known and status is None:
        return f"{code!r} is not in the sim's table of PostgREST / GoTrue / Storage codes: set its status too"
    return None


# --------------------------------------------------------------------------- the APIs' error tables

# Meta: code → (HTTP status, message). Statuses marked unverified in upstream-apis.md are Meta's table's.
GRAPH_CODES: dict[int, tuple[int, str]] = {
    1: (400, "An unknown error occurred"),
    2: (503, "Service temporarily unavailable"),
    4: (400, "(#4) Application request limit reached"),
    10: (403, "(#10) Application does not have permission for this action"),
    100: (400, "(#100) Invalid parameter"),
    104: (400, "An access token is required to request this resource."),
    190: (401, "Invalid OAuth access token - Cannot parse access token"),
    368: (400, "(#368) Temporarily blocked for policies violations"),
    80007: (400, "(#80007) Rate limit issues"),
    130429: (429, "(#130429) Rate limit hit"),
    131000: (500, "(#131000) Something went wrong"),
    131016: (503, "(#131016) Service unavailable"),
    131026: (400, "(#131026) Message undeliverable"),
    131047: (400, "(#131047) Re-engagement message"),
    131048: (400, "(#131048) Spam rate limit hit"),
    131049: (400, "(#131049) This message was not delivered to maintain healthy ecosystem engagement."),
    131056: (400, "(#131056) (Business Account, Consumer Account) pair rate limit hit"),
    131057: (503, "(#131057) Account in maintenance mode"),
    133004: (503, "(#133004) Server temporarily unavailable"),
}
_GRAPH_BY_STATUS = {400: 100, 401: 190, 403: 10, 429: 130429, 500: 131000, 503: 2}

# google.rpc: status name → (HTTP status, message).
GOOGLE_STATUSES: dict[str, tuple[int, str]] = {
    "INVALID_ARGUMENT": (400, "Request contains an invalid argument."),
    "FAILED_PRECONDITION": (400, "User location is not supported for the API use."),
    "UNAUTHENTICATED": (401, "Request had invalid authentication credentials."),
    "PERMISSION_DENIED": (
        403,
        "Method doesn't allow unregistered callers (callers without established identity). "
        "Please use API Key or other form of API consumer identity to call this API.",
    ),
    "NOT_FOUND": (404, "Requested entity was not found."),
    "RESOURCE_EXHAUSTED": (
        429,
        "You exceeded your current quota, please check your plan and billing details. For more information "
        "on this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits.",
    ),
    "CANCELLED": (499, "The operation was cancelled."),
    "INTERNAL": (
        500,
        "An internal error has occurred. Please retry or report in "
        "https://developers.generativeai.google/guide/troubleshooting",
    ),
    "UNAVAILABLE": (503, "The model is overloaded. Please try again later."),
    "DEADLINE_EXCEEDED": (504, "Deadline expired before operation could complete."),
}
_GOOGLE_BY_STATUS = {status: name for name, (status, _) in reversed(GOOGLE_STATUSES.items())}

# PostgREST: code → (HTTP status, message). 503 PGRST000-002 carry Retry-After (reconnecting).
POSTGREST_CODES: dict[str, tuple[int, str]] = {
    "PGRST000": (503, "Database connection error. Retrying the connection."),
    "PGRST001": (503, "Database client error. Retrying the connection."),
    "PGRST002": (503, "Could not query the database for the schema cache. Retrying."),
    "PGRST003": (504, "Timed out acquiring connection from connection pool."),
    "PGRST100": (400, "Bad request"),
    "PGRST102": (400, "Empty or invalid json"),
    "PGRST103": (416, "Requested range not satisfiable"),
    "PGRST116": (406, "Cannot coerce the result to a single JSON object"),
    "PGRST202": (404, "Could not find the function in the schema cache"),
    "PGRST301": (401, "JWT could not be decoded"),
    "PGRST303": (401, "JWT expired"),
    "08006": (503, "connection failure"),
    "53300": (503, "sorry, too many clients already"),
    "23503": (409, "insert or update violates foreign key constraint"),
    "23505": (409, "duplicate key value violates unique constraint"),
    "40001": (500, "could not serialize access due to concurrent update"),
    "40P01": (500, "deadlock detected"),
    "42501": (403, "permission denied for table"),
    "42703": (400, "column does not exist"),
    "57014": (500, "canceling statement due to statement timeout"),
    "XX000": (500, "internal error"),
}
_POSTGREST_BY_STATUS = {
    400: "PGRST100",
    401: "PGRST301",
    403: "42501",
    406: "PGRST116",
    409: "23505",
    416: "PGRST103",
    500: "57014",
    503: "PGRST002",
    504: "PGRST003",
}
_POSTGREST_RETRY_AFTER = {"PGRST000", "PGRST001", "PGRST002"}
# Supabase's platform in front of PostgREST: proxy errors with a plain body, not PostgREST's JSON.
_PLATFORM_STATUSES = {520, 522, 524, 540, 544}

# GoTrue (Supabase Auth): error_code → (HTTP status, msg).
GOTRUE_CODES: dict[str, tuple[int, str]] = {
    "validation_failed": (400, "Unable to validate request"),
    "no_authorization": (401, "This endpoint requires a valid Bearer token"),
    "bad_jwt": (403, "invalid JWT: unable to parse or verify signature, token is malformed"),
    "user_not_found": (403, "User from sub claim in JWT does not exist"),
    "session_not_found": (403, "Session from session_id claim in JWT does not exist"),
    "bad_json": (400, "Could not parse request body as JSON"),
    "invalid_credentials": (400, "Invalid login credentials"),
    "refresh_token_not_found": (400, "Invalid Refresh Token: Refresh Token Not Found"),
    "refresh_token_already_used": (400, "Invalid Refresh Token: Already Used"),
    "over_request_rate_limit": (429, "Request rate limit reached"),
    "unexpected_failure": (500, "Unexpected failure, please check server logs for more information"),
    "request_timeout": (504, "Processing this request timed out, please retry after a moment."),
}
_GOTRUE_BY_STATUS = {
    400: "validation_failed",
    401: "no_authorization",
    403: "bad_jwt",
    429: "over_request_rate_limit",
    504: "request_timeout",
}

# With errors.rate set and no mix: each API's usual transient error.
_DEFAULT_ERROR_STATUS = {"graph": 500, "lookaside": 500, "gemini": 503, "rest": 503, "auth": 500, "storage": 500}


@dataclass(frozen=True, slots=True)
class ApiError:
    """An error to answer, before it is put in an API's shape."""

    status: int | None
    code: int | str | None = None
    subcode: int | None = None
    message: str | None = None
    retry_after: float | None = None
    retry_delay: float | None = None
    plain: bool = False  # the platform's proxy answers: an HTML body, no API code


def _family(upstream: str, route: str) -> str:
    """Which error shape a route answers in: graph, gemini, rest (PostgREST), auth (GoTrue) or storage."""
    if upstream == "supabase":
        return "auth" if route.startswith("auth_") else "storage" if route.startswith("storage_") else "rest"
    return "graph" if upstream == "lookaside" else upstream


def _json_response(status: int, data: object, headers: Mapping[str, str] | None = None) -> web.Response:
    """A compact JSON answer; ``headers`` may replace the Content-Type (PostgREST writes ``utf-8``)."""
    body = json.dumps(data, separators=(",", ":")).encode()
    out = {"Content-Type": "application/json; charset=UTF-8", **(headers or {})}
    return web.Response(status=status, body=body, headers=out)


def _retry_after_header(seconds: float | None) -> dict[str, str]:
    return {} if seconds is None else {"Retry-After": str(max(0, math.ceil(seconds)))}


def _google_duration(seconds: float) -> str:
    return f"{seconds:.0f}s" if seconds == int(seconds) else f"{seconds:.3f}".rstrip("0") + "s"


def graph_error(error: ApiError) -> web.Response:
    """Meta's error body; the code decides the status unless the scenario set one."""
    code = error.code if isinstance(error.code, int) else _GRAPH_BY_STATUS.get(error.status or 500, 0)
    if not code:
        code = 131000 if (error.status or 500) >= 500 else 100
    status = error.status or GRAPH_CODES.get(code, (500, ""))[0]
    message = error.message or GRAPH_CODES.get(code, (status, f"(#{code}) Error"))[1]
    body: dict[str, Any] = {"message": message, "type": "OAuthException", "code": code}
    if code >= 80000:
        body["error_data"] = {"messaging_product": "whatsapp", "details": message.split(") ", 1)[-1]}
    if error.subcode is not None:
        body["error_subcode"] = error.subcode
    trace = secrets.token_urlsafe(15)
    body["fbtrace_id"] = trace
    headers = {"x-fb-trace-id": trace, **_retry_after_header(error.retry_after)}
    if status == 401:
        headers["WWW-Authenticate"] = 'OAuth "Facebook Platform" "invalid_token" "Invalid OAuth access token"'
    return _json_response(status, {"error": body}, headers)


def google_error(error: ApiError, model: str = "gemini-2.5-flash") -> web.Response:
    """google.rpc's error body; a 429 carries QuotaFailure, Help and RetryInfo details."""
    name = str(error.code) if error.code in GOOGLE_STATUSES else _GOOGLE_BY_STATUS.get(error.status or 500, "UNKNOWN")
    status = error.status or GOOGLE_STATUSES[name][0]
    message = error.message or GOOGLE_STATUSES.get(name, (status, "Unknown error."))[1]
    body: dict[str, Any] = {"code": status, "message": message, "status": name}
    if name == "RESOURCE_EXHAUSTED":
        delay = 53.0 if error.retry_delay is None else error.retry_delay
        per = "PerDay" if delay >= 3600 else "PerMinute"
        body["details"] = [
            {
                "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                "violations": [
                    {
                        "quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                        "quotaId": f"GenerateRequests{per}PerProjectPerModel-FreeTier",
                        "quotaDimensions": {"location": "global", "model": model},
                        "quotaValue": "10",
                    }
                ],
            },
            {
                "@type": "type.googleapis.com/google.rpc.Help",
                "links": [
                    {
                        "description": "Learn more about Gemini API quotas",
                        "url": "https://ai.google.dev/gemini-api/docs/rate-limits",
                    }
                ],
            },
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": _google_duration(delay)},
        ]
    elif name == "INVALID_ARGUMENT" and error.message:
        body["details"] = [
            {"@type": "type.googleapis.com/google.rpc.BadRequest", "fieldViolations": [{"description": message}]}
        ]
    return _json_response(status, {"error": body}, _retry_after_header(error.retry_after))


_POSTGREST_HEADERS = {"Content-Type": "application/json; charset=utf-8", "Vary": "Accept, Prefer, Range"}


def postgrest_error(
    error: ApiError, details: str | None = None, hint: str | None = None, headers: Mapping[str, str] | None = None
) -> web.Response:
    """PostgREST's error body (or the platform's plain answer for 520/522/524/540/544)."""
    code = str(error.code) if str(error.code) in POSTGREST_CODES else None
    if code is None and error.code is not None and str(error.code) not in GOTRUE_CODES:
        code = str(error.code)  # a code the sim does not know, with its status (checked when loaded)
    if code is None:
        status = error.status or 503
        if status in _PLATFORM_STATUSES:
            text = f"error code: {status}"
            return web.Response(status=status, text=text, headers=_retry_after_header(error.retry_after))
        code = _POSTGREST_BY_STATUS.get(status, "XX000" if status >= 500 else "PGRST100")
    status = error.status or POSTGREST_CODES.get(code, (500, ""))[0]
    message = error.message or POSTGREST_CODES.get(code, (status, "error"))[1]
    retry_after = error.retry_after
    if retry_after is None and code in _POSTGREST_RETRY_AFTER:
        retry_after = 1.0
    out = {**_POSTGREST_HEADERS, "Proxy-Status": f"PostgREST; error={code}", **_retry_after_header(retry_after)}
    body = {"code": code, "details": details, "hint": hint, "message": message}
    return _json_response(status, body, {**out, **(headers or {})})


def gotrue_error(error: ApiError) -> web.Response:
    """GoTrue's error body ``{"code": status, "error_code", "msg"}``."""
    name = str(error.code) if str(error.code) in GOTRUE_CODES else None
    if name is None:
        status = error.status or 500
        name = _GOTRUE_BY_STATUS.get(status, "unexpected_failure" if status >= 500 else "validation_failed")
    status = error.status or GOTRUE_CODES[name][0]
    message = error.message or GOTRUE_CODES[name][1]
    body = {"code": status, "error_code": name, "msg": message}
    return _json_response(status, body, _retry_after_header(error.retry_after))


def kong_no_apikey() -> web.Response:
    """Supabase's API gateway refusing a request without ``apikey``."""
    return _json_response(
        401, {"message": "No API key found in request", "hint": "No `apikey` request header or url param was found."}
    )


def plain_error(error: ApiError) -> web.Response:
    """A load balancer's or platform proxy's answer: a short HTML page, no API error code."""
    status = error.status or 503
    reason = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Error"
    text = f"<html><head><title>{status} {reason}</title></head><body><h1>{status} {reason}</h1></body></html>\n"
    headers = {"Content-Type": "text/html; charset=utf-8", **_retry_after_header(error.retry_after)}
    return web.Response(status=status, body=text.encode(), headers=headers)


def api_error(family: str, error: ApiError) -> web.Response:
    """Render ``error`` in the shape of ``family`` (graph, gemini, rest, auth, storage), or plain."""
    if error.plain:
        return plain_error(error)
    if family == "graph":
        return graph_error(error)
    if family == "gemini":
        return google_error(error)
    if family == "auth":
        return gotrue_error(error)
    if family == "storage":
        code = str(error.code) if error.code is not None else None
        return storage_error(error.status, code, error.message, error.retry_after)
    return postgrest_error(error)


# --------------------------------------------------------------------------- per-route plans


@dataclass(slots=True)
class Decision:
    """What the scenario decided for one request."""

    latency: float
    action: Literal["ok", "error", "reset", "timeout"] = "ok"
    error: ApiError | None = None
    when: str = "after_body"
    outage: bool = False


class RoutePlan:
    """One route's effective behaviour and its own seeded random stream.

    Each request draws the same numbers in the same order whatever is decided (a latency, then
    four uniforms), so a given seed and request order give the same decisions on every run, and
    traffic on one route never shifts another route's draws.
    """

    def __init__(self, upstream: str, route: str, behaviour: Behaviour, seed: int) -> None:
        self.upstream = upstream
        self.route = route
        self.behaviour = behaviour
        self.rng = random.Random(f"{seed}:{upstream}:{route}")
        family = _family(upstream, route)
        latency = behaviour.latency
        self._fixed = 0.0 if latency is None or latency.fixed is None else latency.fixed
        self._lognormal: tuple[float, float, float, float] | None = None
        if latency is not None and latency.p50 is not None:
            p50 = max(latency.p50, 1e-6)
            p95 = latency.p95 if latency.p95 is not None else p50
            sigma = math.log(max(p95, p50) / p50) / 1.6448536269514722
            high = latency.max if latency.max is not None else math.inf
            self._lognormal = (math.log(p50), sigma, latency.min, high)
        errors = behaviour.errors
        self._error_rate = 0.0 if errors is None else errors.rate
        kinds = errors.mix if errors is not None and errors.mix else (ErrorKind(status=_DEFAULT_ERROR_STATUS[family]),)
        total = sum(k.weight for k in kinds)
        acc = 0.0
        self._mix: list[tuple[float, ApiError]] = []
        for k in kinds:
            acc += k.weight / total
            self._mix.append((acc, ApiError(k.status, k.code, k.subcode, k.message, k.retry_after, k.retry_delay)))
        self._reset = behaviour.resets
        self._outages = tuple(o for o in behaviour.outages or () if o.mode != "refused")  # the listener's job
        self._brownouts = behaviour.brownouts or ()

    def sample_latency(self) -> float:
        if self._lognormal is None:
            return self._fixed
        mu, sigma, low, high = self._lognormal
        value = self.rng.lognormvariate(mu, sigma) if sigma > 0 else math.exp(mu)
        return min(max(value, low), high)

    def decide(self, t: float) -> Decision:
        """The decision for a request arriving ``t`` seconds after the scenario clock started."""
        decision = Decision(self.sample_latency())
        u_outage, u_reset, u_error, u_mix = (self.rng.random() for _ in range(4))
        decision.latency *= max((b.factor for b in self._brownouts if b.active(t)), default=1.0)
        for outage in self._outages:
            if not outage.active(t):
                continue
            if u_outage >= outage.rate:  # missed: the rest of the draw, rescaled, decides the next window
                u_outage = (u_outage - outage.rate) / (1.0 - outage.rate)
                continue
            decision.outage = True
            if outage.mode == "reset":
                decision.action, decision.when = "reset", outage.when or "before_body"
            elif outage.mode == "timeout":
                decision.action = "timeout"
            else:
                decision.action = "error"
                decision.error = ApiError(
                    int(outage.mode), outage.code, None, None, outage.retry_after, outage.retry_delay, outage.plain
                )
            return decision
        if self._reset is not None and u_reset < self._reset.rate:
            decision.action, decision.when = "reset", self._reset.when
        elif u_error < self._error_rate:
            decision.action = "error"
            decision.error = next((e for edge, e in self._mix if u_mix < edge), self._mix[-1][1])
        return decision


# --------------------------------------------------------------------------- counters


@dataclass(slots=True)
class RouteStats:
    requests: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    resets: int = 0
    timeouts: int = 0
    injected: int = 0
    outage: int = 0

    def as_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "resets": self.resets,
            "timeouts": self.timeouts,
            "injected": self.injected,
            "outage": self.outage,
        }


@dataclass(slots=True)
class BodyCount:
    received: int = 0
    delivered: int = 0
    to: str = ""


class Stats:
    """What the sim received, per upstream and route, and every WhatsApp message body."""

    def __init__(self) -> None:
        self.routes: dict[str, dict[str, RouteStats]] = {
            up: {r: RouteStats() for r in (*ROUTES[up], OTHER)} for up in UPSTREAMS
        }
        self.bodies: dict[str, BodyCount] = {}
        self.read_receipts = 0
        self.tables: dict[str, Counter[str]] = {}

    def route(self, upstream: str, route: str) -> RouteStats:
        return self.routes[upstream][route]

    def message_received(self, body: bytes) -> str | None:
        """Count a send's body; return its key, or None for a read receipt (not a message)."""
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            data = None
        if isinstance(data, dict) and data.get("status") == "read":
            self.read_receipts += 1
            return None
        canonical = json.dumps(data, sort_keys=True, separators=(",", ":")).encode() if data is not None else body
        key = hashlib.sha256(canonical).hexdigest()
        count = self.bodies.setdefault(key, BodyCount())
        count.received += 1
        if isinstance(data, dict) and isinstance(data.get("to"), str):
            count.to = data["to"]
        return key

    def message_delivered(self, key: str) -> None:
        self.bodies[key].delivered += 1

    def messages_json(self) -> dict[str, Any]:
        counts = list(self.bodies.values())
        received = sum(c.received for c in counts)
        delivered = sum(c.delivered for c in counts)
        repeated = sorted(
            ((k, c) for k, c in self.bodies.items() if c.received > 1),
            key=lambda kc: (-kc[1].delivered, -kc[1].received, kc[0]),
        )
        return {
            "bodies": len(counts),
            "received": received,
            "delivered": delivered,
            "duplicates_received": received - len(counts),
            "duplicates_delivered": sum(max(0, c.delivered - 1) for c in counts),
            "read_receipts": self.read_receipts,
            "repeated": [
                {"sha256": k, "to": c.to, "received": c.received, "delivered": c.delivered}
                for k, c in repeated[:MAX_REPEATED_LISTED]
            ],
        }

    def as_json(self) -> dict[str, Any]:
        upstreams = {}
        for up, routes in self.routes.items():
            upstreams[up] = {
                "requests": sum(r.requests for r in routes.values()),
                "routes": {name: r.as_json() for name, r in routes.items()},
            }
        return {
            "upstreams": upstreams,
            "messages": self.messages_json(),
            "tables": {t: dict(sorted(c.items())) for t, c in sorted(self.tables.items())},
        }


# --------------------------------------------------------------------------- PostgREST in memory

_RESERVED_PARAMS = {"select", "order", "limit", "offset", "on_conflict", "columns", "apikey"}
_RANGE = re.compile(r"^(\d+)-(\d*)$")


class RestError(Exception):
    """A PostgREST error answer raised from inside the table logic."""

    def __init__(
        self,
        code: str,
        message: str | None = None,
        details: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(code)
        self.code, self.message, self.details, self.headers = code, message, details, headers

    def response(self) -> web.Response:
        return postgrest_error(ApiError(None, self.code, None, self.message), self.details, None, self.headers)


def _like_regex(pattern: str) -> str:
    """SQL LIKE as a regex: ``%`` and ``*`` any run, ``_`` one character, the rest literal."""
    return "".join(".*" if ch in "%*" else "." if ch == "_" else re.escape(ch) for ch in pattern)


def _cell_text(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _compare(value: object, arg: str) -> int:
    left = _cell_text(value)
    try:
        a, b = float(left), float(arg)
    except ValueError:
        return (left > arg) - (left < arg)
    return (a > b) - (a < b)


def _sort_key(column: str) -> Callable[[dict[str, Any]], tuple[bool, bool, float, str]]:
    """Order by ``column``: numbers numerically, then text, nulls last."""

    def key(row: dict[str, Any]) -> tuple[bool, bool, float, str]:
        value = row.get(column)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return False, False, float(value), ""
        return value is None, True, 0.0, _cell_text(value)

    return key


class Tables:
    """Tables created on first use with ``rows`` rows each; writes persist until the sim restarts."""

    def __init__(self, rows: int) -> None:
        self.rows = rows
        self._tables: dict[str, list[dict[str, Any]]] = {}

    def get(self, table: str) -> list[dict[str, Any]]:
        if table not in self._tables:
            self._tables[table] = [self._seed_row(table, i) for i in range(1, self.rows + 1)]
        return self._tables[table]

    @staticmethod
    def _seed_row(table: str, i: int) -> dict[str, Any]:
        stamp = (EPOCH + dt.timedelta(minutes=i)).isoformat()
        return {
            "id": i,
            "account_id": i % 3 + 1,
            "name": f"{table} {i}",
            "status": "open" if i % 2 else "closed",
            "created_at": stamp,
            "updated_at": stamp,
        }

    def select(self, table: str, query: Mapping[str, str], params: list[tuple[str, str]]) -> list[dict[str, Any]]:
        """Rows matching the query's filters, in the query's order."""
        rows = [r for r in self.get(table) if self._matches(table, r, params)]
        order = query.get("order")
        if order:
            for term in reversed(order.split(",")):
                column, *mods = term.split(".")
                self._check_column(table, column)
                rows.sort(key=_sort_key(column), reverse="desc" in mods)
        return rows

    def _check_column(self, table: str, column: str) -> None:
        rows = self.get(table)
        if rows and column not in rows[0]:
            raise RestError("42703", f"column {table}.{column} does not exist")

    def _matches(self, table: str, row: dict[str, Any], params: list[tuple[str, str]]) -> bool:
        for column, expression in params:
            if column in _RESERVED_PARAMS:
                continue
            self._check_column(table, column)
            negate = expression.startswith("not.")
            op, _, arg = expression.removeprefix("not.").partition(".")
            value = row.get(column)
            if op == "eq":
                ok = _cell_text(value) == arg
            elif op == "neq":
                ok = _cell_text(value) != arg
            elif op in ("gt", "gte", "lt", "lte"):
                c = _compare(value, arg)
                ok = {"gt": c > 0, "gte": c >= 0, "lt": c < 0, "lte": c <= 0}[op]
            elif op == "in" and arg.startswith("(") and arg.endswith(")"):
                ok = _cell_text(value) in [v.strip().strip('"') for v in arg[1:-1].split(",")]
            elif op == "is" and arg in ("null", "true", "false"):
                ok = _cell_text(value) == arg
            elif op in ("like", "ilike"):  # PostgREST takes * for SQL's % (a URL-safe wildcard)
                flags = re.IGNORECASE if op == "ilike" else 0
                ok = re.fullmatch(_like_regex(arg), _cell_text(value), flags | re.DOTALL) is not None
            else:
                raise RestError("PGRST100", f'"failed to parse filter ({expression})" (line 1, column 1)')
            if ok == negate:
                return False
        return True

    def project(self, table: str, rows: list[dict[str, Any]], select: str | None) -> list[dict[str, Any]]:
        if not select or select.strip() == "*" or "(" in select:
            return rows
        columns = [c.strip().split("::")[0] for c in select.split(",") if c.strip()]
        names: list[tuple[str, str]] = []
        for column in columns:
            alias, _, real = column.rpartition(":")
            self._check_column(table, real)
            names.append((alias or real, real))
        return [{alias: r.get(real) for alias, real in names} for r in rows]


# --------------------------------------------------------------------------- the simulator


def _bearer(request: web.BaseRequest) -> str | None:
    auth = request.headers.get("Authorization", "")
    scheme, _, token = auth.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


_FORWARDED_HOST = re.compile(r"[A-Za-z0-9.\-]+(:\d{1,5})?|\[[0-9A-Fa-f:.]+\](:\d{1,5})?")


def _drop(request: web.BaseRequest) -> web.StreamResponse:
    """Close the connection without an answer (the returned object is never written)."""
    if request.transport is not None:
        request.transport.close()
    return web.Response()


@dataclass(slots=True)
class SseAnswer:
    """A ``text/event-stream`` answer: events written one by one, ``interval`` apart."""

    events: list[bytes]
    interval: float


Answer = web.Response | SseAnswer


@dataclass(slots=True)
class Call:
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
        route, params = _ROUTERS[upstream](request.method, request.path)
        stats = self.stats.route(upstream, route)
        stats.requests += 1
        if upstream in self._refusing or self.refuses(upstream):  # a connection that outlived the listener
            stats.injected, stats.outage, stats.resets = stats.injected + 1, stats.outage + 1, stats.resets + 1
            return _drop(request)
        if route == OTHER:
            await request.read()
            return self._count(stats, self._not_found(upstream, request))
        decision = self.plans[(upstream, route)].decide(self.elapsed())
        if decision.action != "ok":
            stats.injected += 1
            stats.outage += int(decision.outage)
        if decision.action == "timeout":
            stats.timeouts += 1
            await asyncio.sleep(HOLD_MAX)  # cancelled when the client gives up (handler_cancellation)
            return _drop(request)
        if decision.action == "reset" and decision.when == "before_body":
            stats.resets += 1
            return _drop(request)
        call = Call(upstream, route, params, request, await request.read())
        message = self.stats.message_received(call.body) if route == "send_message" else None
        refusal = self._refuse(call) or self.limits.check(upstream, route, params, call.body)
        if refusal is None and decision.error is not None:
            refusal = api_error(_family(upstream, route), decision.error)
        if refusal is not None:
            await asyncio.sleep(decision.latency)
            return self._count(stats, refusal)
        answer = self._answer(call)
        self.limits.answered(upstream, route, params, answer)
        if message is not None and isinstance(answer, web.Response) and answer.status < 300:
            self.stats.message_delivered(message)  # taken before the answer is sent, as Meta would
        await asyncio.sleep(decision.latency)
        if decision.action == "reset" and decision.when == "after_body":
            stats.resets += 1
            return _drop(request)
        cut = decision.action == "reset"  # mid_body: start the answer, then drop the connection
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

    def _refuse(self, call: Call) -> web.Response | None:
        """The API's own answer to a request without its credential (never drawn by the scenario)."""
        request = call.request
        if call.upstream in ("graph", "lookaside"):
            if _bearer(request) is None and not request.query.get("access_token"):
                return graph_error(ApiError(None, 104))
        elif call.upstream == "gemini":
            if not request.headers.get("x-goog-api-key") and not request.query.get("key"):
                return google_error(ApiError(None, "PERMISSION_DENIED"))
        elif call.route == "auth_user":
            token = _bearer(request)
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

    def _answer(self, call: Call) -> Answer:
        store, headers, method = self.storage, call.request.headers, call.request.method
        handlers: dict[str, Callable[[Call], Answer]] = {
            "send_message": self._send_message,
            "media_url": self._media_url,
            "media_upload": lambda c: self.media.upload(headers.get("Content-Type", ""), c.body),
            "media_delete": lambda c: self.media.delete(c.params["media_id"]),
            "business_profile": lambda c: business_profile(method, c.params["phone_id"]),
            "media": self._media,
            "generate": self._generate,
            "stream": self._generate,
            "models": self._models,
            "count_tokens": lambda c: sim_gemini.count_tokens(c.body),
            "embed": lambda c: sim_gemini.embed(c.params["model"], c.body, c.params["verb"] == "batchEmbedContents"),
            "rest_read": self._rest,
            "rest_write": self._rest,
            "rpc": self._rpc,
            "auth_user": self._auth_user,
            "auth_token": lambda c: self.accounts.token(c.request.query.get("grant_type"), c.body),
            "auth_logout": lambda c: self.accounts.logout(_bearer(c.request), c.request.query.get("scope", "global")),
            "storage_upload": lambda c: store.upload(method, c.params["bucket"], c.params["key"], headers, c.body),
            "storage_download": lambda c: store.download(method, c.params["bucket"], c.params["key"]),
            "storage_list": lambda c: store.list(c.params["bucket"], c.body),
            "storage_delete": lambda c: store.delete(c.params["bucket"], c.body),
            "storage_bucket": lambda c: store.buckets(method, c.params.get("bucket"), c.body),
        }
        try:
            return handlers[call.route](call)
        except ApiFault as fault:
            return api_error(fault.family, ApiError(fault.status, fault.code, fault.subcode, fault.message))

    # ---- Graph and lookaside

    def _send_message(self, call: Call) -> web.Response:
        try:
            data = json.loads(call.body)
        except (ValueError, UnicodeDecodeError):
            data = None
        if not isinstance(data, dict):
            return graph_error(ApiError(400, 100, None, "(#100) Invalid parameter"))
        if data.get("messaging_product") != "whatsapp":
            return graph_error(ApiError(400, 100, None, "(#100) The parameter messaging_product is required."))
        if data.get("status") == "read":
            return _json_response(200, {"success": True})
        to = data.get("to")
        if not isinstance(to, str) or not to:
            return graph_error(ApiError(400, 100, None, "(#100) The parameter to is required."))
        wamid = "wamid." + base64.b64encode(b"\x15\x02\x00\x11\x18\x12" + secrets.token_bytes(24)).decode()
        wa_id = "".join(ch for ch in to if ch.isdigit())
        return _json_response(
            200,
            {"messaging_product": "whatsapp", "contacts": [{"input": to, "wa_id": wa_id}], "messages": [{"id": wamid}]},
        )

    def _media_url(self, call: Call) -> web.Response:
        media_id = call.params["media_id"]
        media = self.media.get(media_id)
        data = media.data
        url = (
            f"{self._lookaside_base(call.request)}/whatsapp_business/attachments/?mid={media_id}"
            f"&ext={int(self._wall0 + self.elapsed())}&hash={hashlib.sha256(media_id.encode()).hexdigest()[:20]}"
        )
        return _json_response(
            200,
            {
                "messaging_product": "whatsapp",
                "url": url,
                "mime_type": media.mime_type,
                "sha256": hashlib.sha256(data).hexdigest(),
                "file_size": len(data),
                "id": media_id,
            },
        )

    def _media(self, call: Call) -> web.Response:
        mid = call.request.query.get("mid")
        if not mid:
            return web.Response(status=404, text="Not Found")
        try:
            media = self.media.get(mid)
        except ApiFault:  # deleted: the URL no longer works
            return web.Response(status=404, text="Not Found")
        return web.Response(body=media.data, headers={"Content-Type": media.mime_type})

    # ---- Gemini

    def _generate(self, call: Call) -> Answer:
        model = call.params["model"]
        try:
            data = json.loads(call.body)
        except (ValueError, UnicodeDecodeError):
            data = None
        if not isinstance(data, dict) or not isinstance(data.get("contents"), list | dict):
            return google_error(ApiError(400, "INVALID_ARGUMENT", None, "* GenerateContentRequest.contents: required"))
        prompt_tokens = max(1, len(call.body) // 4)
        response_id = secrets.token_urlsafe(16)
        words = [f"Simulated reply from {model}", "to your message:", "thanks for waiting,", "here is", "the answer."]
        if call.route == "generate":
            text = " ".join(words)
            return _json_response(200, self._candidate(model, response_id, text, prompt_tokens, last=True))
        count = self.scenario.upstreams.gemini.stream.events
        chunks = [f"{words[i % len(words)]} " for i in range(count)]
        payloads = [  # usageMetadata is a running total, as Gemini's stream chunks carry
            self._candidate(model, response_id, chunk, prompt_tokens, i == count - 1, "".join(chunks[: i + 1]))
            for i, chunk in enumerate(chunks)
        ]
        if call.request.query.get("alt") != "sse":
            return _json_response(200, payloads)
        events = [b"data: " + json.dumps(p, separators=(",", ":")).encode() + b"\r\n\r\n" for p in payloads]
        return SseAnswer(events, self.scenario.upstreams.gemini.stream.interval)

    @staticmethod
    def _candidate(
        model: str, response_id: str, text: str, prompt_tokens: int, last: bool, so_far: str | None = None
    ) -> dict[str, Any]:
        candidate: dict[str, Any] = {"content": {"parts": [{"text": text}], "role": "model"}, "index": 0}
        if last:
            candidate["finishReason"] = "STOP"
        out_tokens = max(1, len(so_far if so_far is not None else text) // 4)
        return {
            "candidates": [candidate],
            "usageMetadata": {
                "promptTokenCount": prompt_tokens,
                "candidatesTokenCount": out_tokens,
                "totalTokenCount": prompt_tokens + out_tokens,
            },
            "modelVersion": model,
            "responseId": response_id,
        }

    def _models(self, call: Call) -> web.Response:
        def describe(name: str) -> dict[str, Any]:
            return {
                "name": f"models/{name}",
                "version": "001",
                "displayName": name,
                "inputTokenLimit": 1048576,
                "outputTokenLimit": 65536,
                "supportedGenerationMethods": ["generateContent", "countTokens"],
            }

        model = call.params.get("model")
        if model:
            return _json_response(200, describe(model))
        return _json_response(200, {"models": [describe(m) for m in ("gemini-2.5-flash", "gemini-2.5-pro")]})

    # ---- Supabase

    def _rest(self, call: Call) -> web.Response:
        try:
            return self._rest_answer(call)
        except RestError as exc:
            return exc.response()

    def _rest_answer(self, call: Call) -> web.Response:
        request, table = call.request, call.params["table"]
        self.stats.tables.setdefault(table, Counter())[request.method] += 1
        query = request.query
        params = [(k, v) for k, v in query.items() if k not in _RESERVED_PARAMS]
        prefer = {p.strip() for p in ",".join(request.headers.getall("Prefer", [])).split(",") if p.strip()}
        single = "application/vnd.pgrst.object+json" in request.headers.get("Accept", "")
        headers = dict(_POSTGREST_HEADERS)
        if request.method in ("GET", "HEAD"):
            return self._rest_read(table, query, params, prefer, single, headers, request.headers.get("Range", ""))
        rows = self.tables.get(table)
        if request.method == "POST" or request.method == "PUT":
            try:
                data = json.loads(call.body) if call.body else None
            except (ValueError, UnicodeDecodeError):
                data = None
            items: list[Any] = data if isinstance(data, list) else [data]
            if not items or not all(isinstance(i, dict) for i in items):
                raise RestError("PGRST102")
            merge = request.method == "PUT" or "resolution=merge-duplicates" in prefer
            changed = self._upsert(table, rows, items, merge)
            status = 201 if request.method == "POST" else 200
        else:
            matched = [r for r in rows if self.tables._matches(table, r, params)]
            if request.method == "PATCH":
                try:
                    patch = json.loads(call.body)
                except (ValueError, UnicodeDecodeError):
                    patch = None
                if not isinstance(patch, dict):
                    raise RestError("PGRST102")
                for row in matched:
                    row.update(patch)
            else:  # DELETE
                ids = {id(r) for r in matched}
                rows[:] = [r for r in rows if id(r) not in ids]
            changed, status = matched, 200
        headers["Content-Range"] = f"0-{len(changed) - 1}/*" if changed and request.method == "PATCH" else "*/*"
        if "return=representation" not in prefer:
            return web.Response(status=201 if request.method == "POST" else 204, headers=headers)
        projected = self.tables.project(table, changed, query.get("select"))
        if single:
            if len(projected) != 1:
                raise RestError("PGRST116", None, f"The result contains {len(projected)} rows")
            return _json_response(status, projected[0], headers)
        return _json_response(status, projected, headers)

    def _upsert(
        self, table: str, rows: list[dict[str, Any]], items: list[dict[str, Any]], merge: bool
    ) -> list[dict[str, Any]]:
        by_id = {_cell_text(r.get("id")): r for r in rows}
        next_id = max((r["id"] for r in rows if isinstance(r.get("id"), int)), default=0) + 1
        changed = []
        for item in items:
            if "id" not in item:
                item = {"id": next_id, **item}
                next_id += 1
            existing = by_id.get(_cell_text(item["id"]))
            if existing is not None:
                if not merge:
                    raise RestError(
                        "23505",
                        f'duplicate key value violates unique constraint "{table}_pkey"',
                        f"Key (id)=({item['id']}) already exists.",
                    )
                existing.update(item)
                changed.append(existing)
            else:
                row = dict(item)
                rows.append(row)
                by_id[_cell_text(row["id"])] = row
                changed.append(row)
        return changed

    def _rest_read(
        self,
        table: str,
        query: Mapping[str, str],
        params: list[tuple[str, str]],
        prefer: set[str],
        single: bool,
        headers: dict[str, str],
        range_header: str,
    ) -> web.Response:
        """PostgREST's paging: ``Range: a-b`` or ``offset``/``limit``, its Content-Range and status rules."""
        rows = self.tables.select(table, query, params)
        lower, upper = 0, None
        match = _RANGE.match(range_header.strip())
        if match:
            lower = int(match.group(1))
            upper = int(match.group(2)) if match.group(2) else None
        if query.get("offset", "").isdigit():
            lower = int(query["offset"])
        if query.get("limit", "").isdigit():
            limit = int(query["limit"])
            upper = lower + limit - 1 if upper is None else min(upper, lower + limit - 1)
        page = rows[lower : (upper + 1 if upper is not None else None)] if upper is None or upper >= lower else []
        total = len(rows) if any(p.startswith("count=") for p in prefer) else None
        last = lower + len(page) - 1
        shown = f"{lower}-{last}" if total != 0 and lower <= last else "*"
        headers["Content-Range"] = f"{shown}/{total if total is not None else '*'}"
        if total is not None and lower > total:
            details = f"An offset of {lower} was requested, but there are only {total} rows."
            raise RestError("PGRST103", None, details, {"Content-Range": f"*/{total}"})
        status = 206 if total is not None and len(page) < total else 200
        projected = self.tables.project(table, page, query.get("select"))
        if single:
            if len(projected) != 1:
                raise RestError("PGRST116", None, f"The result contains {len(projected)} rows")
            return _json_response(200, projected[0], headers)
        return _json_response(status, projected, headers)

    def _rpc(self, call: Call) -> web.Response:
        """``/rest/v1/rpc/{fn}``: ``echo`` answers its arguments, ``count_rows`` a table's row count."""
        request, fn = call.request, call.params["fn"]
        args: Any = dict(request.query) if request.method in ("GET", "HEAD") else None
        if args is None:
            try:
                args = json.loads(call.body) if call.body else {}
            except (ValueError, UnicodeDecodeError):
                args = None
        try:
            if not isinstance(args, dict):
                raise RestError("PGRST102")
            if fn == "echo":
                return _json_response(200, args, _POSTGREST_HEADERS)
            if fn == "count_rows" and isinstance(args.get("table"), str) and args["table"]:
                return _json_response(200, len(self.tables.get(args["table"])), _POSTGREST_HEADERS)
            named = ", ".join(sorted(args))
            raise RestError(
                "PGRST202", f"Could not find the function public.{fn}({named}) in the schema cache", "Searched for "
                f"the function public.{fn} with parameters {named or '(none)'}; the sim has echo and count_rows(table)"
            )
        except RestError as exc:
            return exc.response()

    def _auth_user(self, call: Call) -> web.Response:
        """The user of a sim-issued access token; any other token gets a user derived from it."""
        token = _bearer(call.request) or ""
        signed = self.accounts.user_for(token)
        if signed is not None:
            return _json_response(200, signed)
        uid = uuid.UUID(bytes=hashlib.sha256(token.encode()).digest()[:16], version=4)
        stamp = EPOCH.isoformat().replace("+00:00", "Z")
        return _json_response(200, user_json(str(uid), f"user-{uid.hex[:8]}@example.test", stamp))

    # ---- control

    async def _control(self, request: web.BaseRequest) -> web.StreamResponse:
        path, method = request.path, request.method
        if path == "/_sim/stats" and method == "GET":
            return _json_response(200, self.stats_json())
        if path == "/_sim/reset" and method == "POST":
            await request.read()
            restart = request.query.get("restart", "") in ("1", "true", "yes")
            self.restart() if restart else self.reset_counters()
            await self.apply_refusals()  # the restarted clock may end a refused window: reopen at once
            return _json_response(200, {"reset": True, "restarted": restart})
        if path == "/_sim/scenario" and method == "GET":
            return _json_response(200, {"seed": self.seed, **self.scenario.model_dump(mode="json")})
        if path == "/_sim/scenario" and method == "PUT":
            text = (await request.read()).decode("utf-8", "replace")
            try:
                scenario = parse_scenario(text, "<request body>")
            except ScenarioError as exc:
                return _json_response(400, {"error": "invalid scenario", "problems": exc.problems})
            self.load(scenario)
            await self.apply_refusals()
            return _json_response(200, {"loaded": scenario.name, "seed": self.seed})
        return _json_response(404, {"error": "unknown control path", "paths": _CONTROL_PATHS})


_CONTROL_PATHS = [
    "GET /_sim/stats",
    "POST /_sim/reset[?restart=1]",
    "GET /_sim/scenario",
    "PUT /_sim/scenario",
]


# --------------------------------------------------------------------------- routing


def _segments(path: str) -> list[str]:
    return path.strip("/").split("/") if path.strip("/") else []


def _route_graph(method: str, path: str) -> tuple[str, dict[str, str]]:
    parts = _segments(path)
    if len(parts) == 3:
        params = {"version": parts[0], "phone_id": parts[1]}
        if method == "POST" and parts[2] == "messages":
            return "send_message", params
        if method == "POST" and parts[2] == "media":
            return "media_upload", params
        if method in ("GET", "POST") and parts[2] == "whatsapp_business_profile":
            return "business_profile", params
    if len(parts) == 2 and method in ("GET", "DELETE"):
        return "media_url" if method == "GET" else "media_delete", {"version": parts[0], "media_id": parts[1]}
    return OTHER, {}


def _route_lookaside(method: str, path: str) -> tuple[str, dict[str, str]]:
    if method in ("GET", "HEAD") and _segments(path) == ["whatsapp_business", "attachments"]:
        return "media", {}
    return OTHER, {}


def _route_gemini(method: str, path: str) -> tuple[str, dict[str, str]]:
    parts = _segments(path)
    if len(parts) == 3 and parts[1] == "models" and ":" in parts[2]:
        model, _, verb = parts[2].rpartition(":")
        params = {"version": parts[0], "model": model}
        if method == "POST" and verb == "generateContent":
            return "generate", params
        if method == "POST" and verb == "streamGenerateContent":
            return "stream", params
        if method == "POST" and verb == "countTokens":
            return "count_tokens", params
        if method == "POST" and verb in ("embedContent", "batchEmbedContents"):
            return "embed", {**params, "verb": verb}
        return OTHER, {}
    if method == "GET" and len(parts) in (2, 3) and parts[1] == "models":
        return "models", {"version": parts[0], **({"model": parts[2]} if len(parts) == 3 else {})}
    return OTHER, {}


def _route_supabase(method: str, path: str) -> tuple[str, dict[str, str]]:
    parts = _segments(path)
    if len(parts) == 4 and parts[:3] == ["rest", "v1", "rpc"] and method in ("GET", "HEAD", "POST"):
        return "rpc", {"fn": parts[3]}
    if len(parts) == 3 and parts[:2] == ["rest", "v1"]:
        if method in ("GET", "HEAD"):
            return "rest_read", {"table": parts[2]}
        if method in ("POST", "PATCH", "PUT", "DELETE"):
            return "rest_write", {"table": parts[2]}
    if parts[:2] == ["auth", "v1"] and len(parts) == 3:
        route = {("GET", "user"): "auth_user", ("POST", "token"): "auth_token", ("POST", "logout"): "auth_logout"}
        found = route.get((method, parts[2]))
        return (found, {}) if found else (OTHER, {})
    if parts[:2] == ["storage", "v1"]:
        return _route_storage(method, parts[2:])
    return OTHER, {}


def _route_storage(method: str, parts: list[str]) -> tuple[str, dict[str, str]]:
    """Storage's paths, after ``/storage/v1``: bucket, object list, object (by bucket and key)."""
    if parts[:1] == ["bucket"] and len(parts) <= 2 and method in ("GET", "POST"):
        return "storage_bucket", ({"bucket": parts[1]} if len(parts) == 2 else {})
    if parts[:2] == ["object", "list"] and len(parts) == 3 and method == "POST":
        return "storage_list", {"bucket": parts[2]}
    if parts[:1] != ["object"]:
        return OTHER, {}
    if len(parts) == 2 and method == "DELETE":
        return "storage_delete", {"bucket": parts[1]}
    rest = parts[1:]
    if rest[:1] in (["authenticated"], ["public"]) and method in ("GET", "HEAD"):
        rest = rest[1:]
    if len(rest) < 2:
        return OTHER, {}
    params = {"bucket": rest[0], "key": "/".join(rest[1:])}
    if method in ("GET", "HEAD"):
        return "storage_download", params
    if method in ("POST", "PUT"):
        return "storage_upload", params
    return OTHER, {}


_ROUTERS: dict[str, Callable[[str, str], tuple[str, dict[str, str]]]] = {
    "graph": _route_graph,
    "lookaside": _route_lookaside,
    "gemini": _route_gemini,
    "supabase": _route_supabase,
}


# --------------------------------------------------------------------------- entry points


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


def run_sim(
    scenario_path: str | Scenario | None,
    host: str,
    ports: Mapping[str, int],
    seed: int | None = None,
    lookaside_url: str | None = None,
) -> int:
    """``gateway sim``: serve until SIGINT or SIGTERM. Exit 0, or 1 for a bad scenario or an unbindable port."""
    from .logs import configure, event

    try:
        if isinstance(scenario_path, Scenario):
            scenario = scenario_path
        else:
            scenario = load_scenario(scenario_path) if scenario_path else Scenario(name="empty")
    except ScenarioError as exc:
        print(exc, file=sys.stderr)
        return 1
    configure("info", "json", access=False)

    async def main() -> int:
        try:
            sim = await start_sim(scenario, host, ports, seed=seed, lookaside_url=lookaside_url)
        except OSError as exc:
            print(f"gateway sim: cannot bind a listen address: {exc}", file=sys.stderr)
            return 1
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        fields: dict[str, Any] = {name: sim.url(name) for name in UPSTREAMS}
        fields.update(scenario=sim.scenario.name, seed=sim.seed, stats=f"{sim.url('graph')}/_sim/stats")
        event("sim started", **fields)
        await stop.wait()
        event("sim stopping")
        await sim.close()
        return 0

    return asyncio.run(main())
