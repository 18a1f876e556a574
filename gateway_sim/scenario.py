"""The simulator's scenario file: what each simulated upstream does, validated before it runs.

Owns the scenario models (pydantic, unknown keys refused, units as in gateway.yaml): per
``defaults``, upstream and route, a ``latency`` distribution (fixed, or lognormal from ``p50`` and
``p95`` clipped to [min, max]), ``errors`` (a rate and a weighted mix of API errors), ``resets``,
``outages`` over the scenario clock (an API error, a plain proxy answer, resets, stalls or
refused connections, once or ``every``) and ``brownouts`` (latencies multiplied); the nearest
block wins whole (``Scenario.effective``). Also the per-upstream extras (Graph and Gemini
``limits``, lookaside's media size, Gemini's ``stream``, Supabase's ``rows``), reading the file
(``parse_scenario``, ``load_scenario``: strict YAML from ``gateway.yamlfile``) and the checks a
model cannot make alone: an API code must belong to its upstream's API (``errors.code_problem``),
``refused`` only where a whole host can refuse. Every problem is one line of ``ScenarioError``
naming its key.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from gateway import yamlfile
from gateway.config import Duration, Percent, Size
from gateway.units import format_duration
from gateway.yamlfile import allowed_keys, key_path

from .errors import code_problem
from .limits import GeminiLimits, GraphLimits
from .routes import ROUTES, UPSTREAMS

__all__ = [
    "Behaviour",
    "Brownout",
    "ErrorKind",
    "Latency",
    "Outage",
    "Scenario",
    "ScenarioError",
    "load_scenario",
    "parse_scenario",
]


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
    loc = key_path(error["loc"])
    if kind == "extra_forbidden":
        fields = allowed_keys(Scenario, error["loc"])
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
        data = yamlfile.load_mapping(text)
    except yamlfile.YamlError as exc:
        raise ScenarioError(source, [exc.problem]) from None
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
            problem = code_problem(upstream, status, code)
            if problem:
                problems.append(f"{here}.code: {problem}")
    return problems
