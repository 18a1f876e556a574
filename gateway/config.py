"""Configuration: gateway.yaml from text to finished, frozen per-route policies.

Owns, in order: reading YAML (duplicate keys refused), ``${VAR}`` / ``${VAR:-default}``
interpolation of string values, validation with pydantic v2 models (unknown keys refused, units
parsed by ``gateway.units``), cross-key checks, and inheritance defaults → upstream → route,
key by key, into ``RoutePolicy`` objects the request path only reads. Every problem becomes one
line of a ``ConfigError`` naming the key path: ``upstreams.gemini.timeouts.per_try: expected a
duration like '10s', got 'ten'``.

Secrets (``set_headers`` values, ``admin.token``, passwords in URLs) serialize as ``***``.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    WithJsonSchema,
    field_validator,
)
from pydantic_core import PydanticCustomError
from yarl import URL

from .errors import ConfigError
from .routing import PathPattern, PatternError
from .units import (
    format_duration,
    format_rate,
    format_size,
    parse_duration,
    parse_percent,
    parse_rate,
    parse_size,
)

__all__ = [
    "Config",
    "ConfigError",
    "RoutePolicy",
    "UpstreamPolicy",
    "load_config",
    "parse_config",
    "resolve",
]

DEFAULT_CONFIG_PATH = "gateway.yaml"
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


# --------------------------------------------------------------------------- unit types


def _error(kind: str, message: str) -> PydanticCustomError:
    """A validation error whose message is final text (no context: nothing is templated)."""
    return PydanticCustomError(kind, message)


def _unit(parser: Any, kind: str) -> Any:
    def validate(value: object) -> object:
        try:
            return parser(value)
        except ValueError as exc:
            raise _error(kind, str(exc)) from None

    return BeforeValidator(validate)


Duration = Annotated[
    float,
    _unit(parse_duration, "duration"),
    PlainSerializer(format_duration, return_type=str),
    WithJsonSchema({"type": "string", "pattern": r"^(\d+(\.\d+)?(ms|s|m|h))+$", "examples": ["250ms", "10s"]}),
]
Size = Annotated[
    int,
    _unit(parse_size, "size"),
    PlainSerializer(format_size, return_type=str),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": 0},
                {"type": "string", "pattern": r"^\d+(\.\d+)?\s*(B|KB|MB|GB|KiB|MiB|GiB)?$"},
            ],
            "examples": ["1MiB"],
        }
    ),
]
Rate = Annotated[
    float,
    _unit(parse_rate, "rate"),
    PlainSerializer(format_rate, return_type=str),
    WithJsonSchema({"type": "string", "pattern": r"^\d+(\.\d+)?\s*/\s*(s|m|h)$"}),
]
Percent = Annotated[
    float,
    _unit(parse_percent, "percent"),
    PlainSerializer(lambda v: f"{v * 100:g}%", return_type=str),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "minimum": 0, "maximum": 100},
                {"type": "string", "pattern": r"^\d+(\.\d+)?%$"},
            ]
        }
    ),
]
Secret = Annotated[str, PlainSerializer(lambda v: "***" if v else "", return_type=str)]

_TOKEN = re.compile(r"connect-failure|timeout|reset|[1-5]xx|[1-5]\d\d|code:[A-Za-z0-9_.\-]+")


def _outcome_token(value: object) -> str:
    token = str(value).strip() if isinstance(value, (str, int)) else None
    if token is None or not _TOKEN.fullmatch(token):
        raise _error(
            "outcome",
            "expected an outcome: connect-failure, timeout, reset, a status like 503, "
            f"a class like 5xx, or code:N; got {value!r}",
        )
    return token


def _method(value: object) -> str:
    if not isinstance(value, str) or value.upper() not in METHODS:
        raise _error("method", f"expected one of {' '.join(METHODS)}, got {value!r}")
    return value.upper()


Outcome = Annotated[str, BeforeValidator(_outcome_token), WithJsonSchema({"type": ["string", "integer"]})]
Method = Annotated[str, BeforeValidator(_method), WithJsonSchema({"enum": list(METHODS)})]


def _pattern(value: object) -> str:
    if not isinstance(value, str):
        raise _error("pattern", f"expected a path pattern like '/v1/{{id}}', got {value!r}")
    try:
        PathPattern.compile(value)
    except PatternError as exc:
        raise _error("pattern", str(exc)) from None
    return value


Pattern = Annotated[str, BeforeValidator(_pattern)]


# --------------------------------------------------------------------------- models


class Model(BaseModel):
    """Base of every block: unknown keys are errors, instances are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=False)


class Listen(Model):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)


class Admin(Model):
    listen: Listen = Listen(port=9901)
    token: Secret = Field("", description="bearer token for admin POSTs", repr=False)


class Log(Model):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "text"] = "json"
    access_log: bool = True


class Drain(Model):
    delay: Duration = 5.0
    timeout: Duration = 25.0


class CacheStore(Model):
    type: Literal["memory", "redis"] = "memory"
    max_entries: int = Field(10000, ge=1)
    max_bytes: Size = 64 * 1024**2
    max_entry_bytes: Size = 1024**2
    url: Secret | None = Field(None, repr=False)
    prefix: str = "gw:"
    timeout: Duration = 0.1


class Timeouts(Model):
    connect: Duration = 3.0
    per_try: Duration = 10.0
    idle: Duration = 30.0
    total: Duration = 15.0


class Backoff(Model):
    base: Duration = 0.1
    max: Duration = 2.0


class RetryAfter(Model):
    honor: bool = True
    max: Duration = 10.0


class Budget(Model):
    percent: Percent = 0.2
    min_per_second: float = Field(3.0, ge=0)
    window: Duration = 10.0


class Retry(Model):
    attempts: int = Field(3, ge=1, le=10)
    backoff: Backoff = Backoff()
    on: tuple[Outcome, ...] = ("connect-failure", "timeout", "502", "503", "504", "429")
    methods: tuple[Method, ...] = ("GET", "HEAD", "OPTIONS", "PUT", "DELETE")
    retry_after: RetryAfter = RetryAfter()
    budget: Budget = Budget()
    max_replay_body: Size = 1024**2


class Breaker(Model):
    mode: Literal["consecutive", "rate"] = "consecutive"
    failure_threshold: int = Field(5, ge=1)
    failure_rate: Percent = 0.5
    window: Duration = 30.0
    min_requests: int = Field(10, ge=1)
    recovery: Duration = 30.0
    recovery_max: Duration = 300.0
    half_open_requests: int = Field(1, ge=1)
    failure_on: tuple[Outcome, ...] = ("connect-failure", "timeout", "5xx")
    shared: bool = False


class Limits(Model):
    max_concurrent: int = Field(100, ge=1)
    max_queue: int = Field(100, ge=0)
    queue_timeout: Duration = 1.0
    max_request_body: Size = 10 * 1024**2


class RateLimit(Model):
    rate: Rate
    burst: int | None = Field(None, ge=1)
    key: str | None = None
    max_wait: Duration = 0.0
    scope: Literal["local", "global"] = "local"


class Cache(Model):
    ttl: Duration
    vary: tuple[str, ...] = ()
    statuses: tuple[int, ...] = (200, 203, 204, 300, 301, 404, 410)
    stale_if_error: Duration = 0.0
    stale_while_revalidate: Duration = 0.0

    @field_validator("vary")
    @classmethod
    def _lower(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(v.lower() for v in value)


class FaultAbort(Model):
    percent: Percent
    status: int = Field(503, ge=200, le=599)


class FaultDelay(Model):
    percent: Percent
    duration: Duration


class Fault(Model):
    abort: FaultAbort | None = None
    delay: FaultDelay | None = None


class RouteMatch(Model):
    methods: tuple[Method, ...] = ()
    path: Pattern = "/**"


class Policies(Model):
    """The blocks inherited defaults → upstream → route, key by key."""

    timeouts: Timeouts | None = None
    retry: Retry | None = None
    breaker: Breaker | None = None
    limits: Limits | None = None
    fault: Fault | None = None


class Route(Model):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_\-]+$")] | None = None
    match: RouteMatch = RouteMatch()
    timeouts: Timeouts | None = None
    retry: Retry | None = None
    breaker: Breaker | None = None
    fault: Fault | None = None
    cache: Cache | None = None
    rate_limit: RateLimit | None = None
    invalidates: tuple[Pattern, ...] = ()


class Upstream(Policies):
    url: str
    kind: Literal["graph", "gemini", "supabase", "generic"] = "generic"
    prefix: str | None = None
    set_headers: dict[str, Secret] = Field({}, repr=False)
    forwarded_headers: bool = Field(False, description="add X-Forwarded-For/-Proto/-Host")
    routes: tuple[Route, ...] = ()

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        try:
            url = URL(value)
        except ValueError:
            url = None
        if url is None or url.scheme not in ("http", "https") or not url.host or url.query_string or url.fragment:
            raise _error("url", f"expected an http(s) URL with a host and no query, got {value!r}")
        return value.rstrip("/")

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"(/[A-Za-z0-9_.\-~]+)+", value):
            raise _error("prefix", f"expected a path prefix like '/graph' (no trailing slash), got {value!r}")
        return value


class Readiness(Model):
    require: tuple[str, ...] = ()


class Config(Model):
    """The whole of gateway.yaml, as written (inheritance not yet applied)."""

    listen: Listen = Listen()
    admin: Admin = Admin()
    log: Log = Log()
    drain: Drain = Drain()
    watch: bool = False
    cache_store: CacheStore = CacheStore()
    defaults: Policies = Policies()
    upstreams: dict[Annotated[str, Field(pattern=r"^[a-z0-9_\-]+$")], Upstream] = {}
    readiness: Readiness = Readiness()


# --------------------------------------------------------------------------- resolved policies


@dataclass(frozen=True, slots=True)
class RoutePolicy:
    """Everything the request path needs for one route (or an upstream's unmatched requests)."""

    upstream: str
    name: str
    breaker_name: str  # the upstream's name, or 'upstream.route' when the route sets breaker:
    methods: frozenset[str]
    pattern: PathPattern
    timeouts: Timeouts
    retry: Retry
    breaker: Breaker
    limits: Limits
    fault: Fault | None
    cache: Cache | None
    rate_limit: RateLimit | None
    invalidates: tuple[PathPattern, ...]


@dataclass(frozen=True, slots=True)
class UpstreamPolicy:
    name: str
    url: URL
    kind: str
    prefix: str
    set_headers: Mapping[str, str] = field(repr=False)  # values are secrets
    forwarded_headers: bool
    routes: tuple[RoutePolicy, ...]
    default: RoutePolicy  # for requests that match no route
    limits: Limits
    breaker: Breaker
    raw: Upstream = field(repr=False, compare=False)


M = TypeVar("M", bound=BaseModel)


def merge(base: M, over: M | None) -> M:
    """Return ``base`` with every key ``over`` sets explicitly laid on top, recursively."""
    if over is None:
        return base
    update: dict[str, Any] = {}
    for name in over.model_fields_set:
        mine, theirs = getattr(base, name), getattr(over, name)
        if isinstance(mine, BaseModel) and isinstance(theirs, BaseModel):
            update[name] = merge(mine, theirs)
        else:
            update[name] = theirs
    return base.model_copy(update=update)


def resolve(config: Config) -> tuple[UpstreamPolicy, ...]:
    """Apply inheritance and build the finished policies, upstream by upstream."""
    d = config.defaults
    result = []
    for name, up in config.upstreams.items():
        default = RoutePolicy(
            upstream=name,
            name="-",
            breaker_name=name,
            methods=frozenset(),
            pattern=PathPattern.compile("/**"),
            timeouts=merge(merge(Timeouts(), d.timeouts), up.timeouts),
            retry=merge(merge(Retry(), d.retry), up.retry),
            breaker=merge(merge(Breaker(), d.breaker), up.breaker),
            limits=merge(merge(Limits(), d.limits), up.limits),
            fault=up.fault if up.fault is not None else d.fault,
            cache=None,
            rate_limit=None,
            invalidates=(),
        )
        result.append(
            UpstreamPolicy(
                name=name,
                url=URL(up.url),
                kind=up.kind,
                prefix=up.prefix or f"/{name}",
                set_headers={k.lower(): v for k, v in up.set_headers.items() if v},
                forwarded_headers=up.forwarded_headers,
                routes=tuple(_route_policy(default, r, i) for i, r in enumerate(up.routes)),
                default=default,
                limits=default.limits,
                breaker=default.breaker,
                raw=up,
            )
        )
    return tuple(result)


def _route_policy(upstream: RoutePolicy, route: Route, index: int) -> RoutePolicy:
    """The upstream's policy for unmatched requests with ``route``'s own keys laid on top."""
    name = route.name or str(index)
    return replace(
        upstream,
        name=name,
        breaker_name=f"{upstream.upstream}.{name}" if route.breaker is not None else upstream.upstream,
        methods=frozenset(route.match.methods),
        pattern=PathPattern.compile(route.match.path),
        timeouts=merge(upstream.timeouts, route.timeouts),
        retry=merge(upstream.retry, route.retry),
        breaker=merge(upstream.breaker, route.breaker),
        fault=route.fault if route.fault is not None else upstream.fault,
        cache=route.cache,
        rate_limit=route.rate_limit,
        invalidates=tuple(PathPattern.compile(p) for p in route.invalidates),
    )


# --------------------------------------------------------------------------- loading


class _UniqueKeyLoader(yaml.SafeLoader):
    """A SafeLoader that refuses a key written twice in one mapping, with YAML 1.2 booleans.

    YAML 1.1 reads ``on``, ``off``, ``yes`` and ``no`` as booleans, which would turn the retry
    block's ``on:`` key into ``True``; only ``true`` and ``false`` are booleans here.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                line = first_line.get(key)
            except TypeError:  # an unhashable key: the base class reports it
                continue
            if line is not None:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first written on line {line})", key_node.start_mark
                )
            first_line[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


# The class's own copy of SafeLoader's resolvers, without YAML 1.1's booleans, then YAML 1.2's.
_UniqueKeyLoader.yaml_implicit_resolvers = {
    first: [(tag, regex) for tag, regex in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_UniqueKeyLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def interpolate(node: Any, env: Mapping[str, str], problems: list[str], loc: tuple[Any, ...] = ()) -> Any:
    """Replace ``${VAR}`` and ``${VAR:-default}`` in every string value; ``$$`` is a literal ``$``."""
    if isinstance(node, dict):
        return {k: interpolate(v, env, problems, (*loc, k)) for k, v in node.items()}
    if isinstance(node, list):
        return [interpolate(v, env, problems, (*loc, i)) for i, v in enumerate(node)]
    if not isinstance(node, str) or "$" not in node:
        return node

    def substitute(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name, default = m.group(1), m.group(2)
        value = env.get(name)
        if value:
            return value
        if default is None:  # unset or empty, as the shell's ${VAR:-…} sees it
            state = "is empty" if value == "" else "is not set"
            problems.append(f"{_path(loc)}: environment variable {name} {state} and has no default")
            return ""
        return default

    return _VAR.sub(substitute, node)


def _describe(error: Any) -> str:
    kind, msg, value = error["type"], error["msg"], error.get("input")
    loc = _path(error["loc"])
    if kind == "extra_forbidden":
        return f"{loc}: unknown key"
    if loc.endswith(".[key]"):
        return f"{loc[:-6]}: names use a-z, 0-9, '_' and '-', got {value!r}"
    if kind == "missing":
        return f"{loc}: required key is missing"
    if kind in {"duration", "size", "rate", "percent", "outcome", "method", "pattern", "url", "prefix"}:
        return f"{loc}: {msg}"
    return f"{loc}: {msg[0].lower() + msg[1:]}, got {value!r}"


def _unknown_key_hint(error: Any) -> str:
    """For an unknown key, list the keys allowed at that place."""
    annotation: Any = Config
    for part in error["loc"][:-1]:
        annotation = _step(annotation, part)
    for arg in (annotation, *getattr(annotation, "__args__", ())):  # Optional[Model]
        fields = getattr(arg, "model_fields", None)
        if fields:
            break
    return f" (expected one of: {', '.join(fields)})" if fields else ""


def _step(annotation: Any, part: Any) -> Any:
    """The annotation reached from ``annotation`` by one location part (field, index or key)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        field_info = annotation.model_fields.get(part) if isinstance(part, str) else None
        return field_info.annotation if field_info is not None else None
    args = [a for a in getattr(annotation, "__args__", ()) if a is not type(None) and a is not Ellipsis]
    if getattr(annotation, "__origin__", None) is dict:
        return args[-1]
    if getattr(annotation, "__origin__", None) is tuple:
        return args[0]
    for arg in args:  # Optional[...] / Union: the model inside
        found = _step(arg, part)
        if found is not None:
            return found
    return None


def _cross_checks(config: Config) -> list[str]:
    problems = []
    if config.admin.listen.host not in ("127.0.0.1", "localhost", "::1") and not config.admin.token:
        try:
            loopback = ipaddress.ip_address(config.admin.listen.host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            problems.append(
                "admin.token: required when admin.listen.host is not loopback "
                f"(got host {config.admin.listen.host!r}); set GATEWAY_ADMIN_TOKEN"
            )
    redis = config.cache_store.type == "redis"
    if redis and not config.cache_store.url:
        problems.append("cache_store.url: required when cache_store.type is redis")
    if config.cache_store.max_entry_bytes > config.cache_store.max_bytes:
        problems.append(
            f"cache_store.max_entry_bytes: {config.cache_store.max_entry_bytes} bytes is over "
            f"max_bytes ({config.cache_store.max_bytes} bytes)"
        )
    prefixes: dict[str, str] = {}
    for name, up in config.upstreams.items():
        prefix = up.prefix or f"/{name}"
        if prefix in prefixes:
            problems.append(
                f"upstreams.{name}.prefix: {prefix!r} is already the prefix of upstream {prefixes[prefix]!r}"
            )
        prefixes[prefix] = name
        scopes: list[tuple[str, Policies | Route]] = [(f"upstreams.{name}", up)]
        seen_routes: set[str] = set()
        for i, route in enumerate(up.routes):
            here = f"upstreams.{name}.routes[{i}]"
            scopes.append((here, route))
            route_name = route.name or str(i)
            if route_name in seen_routes:
                problems.append(f"{here}.name: route name {route_name!r} is used twice in upstream {name!r}")
            seen_routes.add(route_name)
            params = PathPattern.compile(route.match.path).params
            rl = route.rate_limit
            if rl is not None:
                if rl.key is not None and rl.key not in params:
                    problems.append(
                        f"{here}.rate_limit.key: {rl.key!r} is not a parameter of the route's path "
                        f"{route.match.path!r} (parameters: {', '.join(params) or 'none'})"
                    )
                if rl.scope == "global" and not redis:
                    problems.append(f"{here}.rate_limit.scope: 'global' needs cache_store.type redis")
            for j, inv in enumerate(route.invalidates):
                missing = [p for p in PathPattern.compile(inv).params if p not in params]
                if missing:
                    problems.append(
                        f"{here}.invalidates[{j}]: parameter {{{missing[0]}}} is not captured by the route's path "
                        f"{route.match.path!r}"
                    )
        for where, scope in [("defaults", config.defaults), *scopes]:
            if scope.breaker is not None and scope.breaker.shared and not redis:
                problems.append(f"{where}.breaker.shared: true needs cache_store.type redis")
    for i, name in enumerate(config.readiness.require):
        if name not in config.upstreams:
            problems.append(f"readiness.require[{i}]: no upstream named {name!r}")
    if not problems:
        for resolved in resolve(config):
            for policy in (*resolved.routes, resolved.default):
                where = f"upstreams.{resolved.name}"
                if policy is not resolved.default:
                    where += f" route {policy.name!r}"
                if policy.retry.backoff.base > policy.retry.backoff.max:
                    problems.append(f"{where}: retry.backoff.base is larger than retry.backoff.max")
                if policy.breaker.recovery > policy.breaker.recovery_max:
                    problems.append(f"{where}: breaker.recovery is larger than breaker.recovery_max")
    return problems


def parse_config(text: str, source: str = "<string>", env: Mapping[str, str] | None = None) -> Config:
    """Parse and validate gateway.yaml text. Raises ConfigError listing every problem."""
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(source, [f"{where}invalid YAML: {problem}"]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(source, [f"expected a mapping at the top level, got {type(data).__name__}"])
    problems: list[str] = []
    data = interpolate(data, os.environ if env is None else env, problems)
    if problems:
        raise ConfigError(source, problems)
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            line = _describe(error)
            if error["type"] == "extra_forbidden":
                line += _unknown_key_hint(error)
            lines.append(line)
        raise ConfigError(source, lines) from None
    problems = _cross_checks(config)
    if problems:
        raise ConfigError(source, problems)
    return config


def config_path(explicit: str | None = None) -> str:
    """The file to load: --config, then $GATEWAY_CONFIG, then ./gateway.yaml."""
    return explicit or os.environ.get("GATEWAY_CONFIG") or DEFAULT_CONFIG_PATH


def load_config(path: str) -> Config:
    """Read and validate the file at ``path``. Raises ConfigError (unreadable file included)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(path, [f"cannot read the file: {exc.strerror or exc}"]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(path, [f"the file is not UTF-8 text: {exc.reason}"]) from None
    return parse_config(text, path)


def redacted(config: Config) -> dict[str, Any]:
    """The configuration as JSON-able data with every secret shown as ``***``.

    Inheritance applied: each upstream shows its effective policies, and each route its own.
    """
    data = config.model_dump(mode="json", exclude_none=True)
    for up in resolve(config):
        entry = data["upstreams"][up.name]
        for block in ("timeouts", "retry", "breaker", "limits"):
            entry[block] = getattr(up.default, block).model_dump(mode="json", exclude_none=True)
        for route, out in zip(up.routes, entry.get("routes", []), strict=True):
            out.setdefault("name", route.name)
            for block in ("timeouts", "retry", "breaker"):
                out[block] = getattr(route, block).model_dump(mode="json", exclude_none=True)
    if config.cache_store.url:
        data["cache_store"]["url"] = _redact_url(config.cache_store.url)
    return data


def _redact_url(url: str) -> str:
    try:
        parsed = URL(url)
    except ValueError:
        return "***"
    return str(parsed.with_password("***")) if parsed.password else url
