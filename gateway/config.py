"""Configuration: gateway.yaml from text to finished, frozen per-route policies.

Owns, in order: reading YAML (duplicate keys refused), ``${VAR}`` / ``${VAR:-default}``
interpolation of string values, validation with pydantic v2 models (unknown keys refused, units
parsed by ``gateway.units``), cross-key checks, and inheritance defaults → upstream → route,
key by key, into ``RoutePolicy`` objects the request path only reads. Every problem becomes one
line of a ``ConfigError`` naming the key path: ``upstreams.gemini.timeouts.per_try: expected a
duration like '10s', got 'ten'``.

Secrets (``set_headers`` values, ``admin.token``, passwords in URLs, an egress ``proxy``'s
credentials) serialize as ``***``. ``proxy: env`` is read from the environment the file is loaded
with (``HTTPS_PROXY``, ``HTTP_PROXY``, ``NO_PROXY``), as ``${VAR}`` is; ``tls:`` files are loaded
once at validation, so a missing file or a bad PEM is a configuration error.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    PlainSerializer,
    PrivateAttr,
    Tag,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError
from yarl import URL

from . import yamlfile
from .errors import ConfigError
from .logs import CONTRACT_REDACT_QUERY, DEFAULT_REDACT_QUERY
from .pool import TlsFileError, tls_context
from .routing import PathPattern, PatternError
from .units import (
    format_duration,
    format_percent,
    format_rate,
    format_size,
    parse_duration,
    parse_percent,
    parse_rate,
    parse_size,
    shown,
)
from .yamlfile import allowed_keys, key_path

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
    PlainSerializer(format_percent, return_type=str),
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

_TOKEN = re.compile(r"connect-failure|timeout|reset|[1-5]xx|[1-5]\d\d|code:[A-Za-z0-9_.\-]+", re.ASCII)


def _outcome_token(value: object) -> str:
    token = str(value).strip() if isinstance(value, (str, int)) else None
    if token is None or not _TOKEN.fullmatch(token):
        raise _error(
            "outcome",
            "expected an outcome: connect-failure, timeout, reset, a status like 503, "
            f"a class like 5xx, or code:N; got {shown(value)}",
        )
    return token


def _method(value: object) -> str:
    if not isinstance(value, str) or value.upper() not in METHODS:
        raise _error("method", f"expected one of {' '.join(METHODS)}, got {shown(value)}")
    return value.upper()


Outcome = Annotated[str, BeforeValidator(_outcome_token), WithJsonSchema({"type": ["string", "integer"]})]
Method = Annotated[str, BeforeValidator(_method), WithJsonSchema({"enum": list(METHODS)})]


def _pattern(value: object) -> str:
    if not isinstance(value, str):
        raise _error("pattern", f"expected a path pattern like '/v1/{{id}}', got {shown(value)}")
    try:
        PathPattern.compile(value)
    except PatternError as exc:
        raise _error("pattern", str(exc)) from None
    return value


Pattern = Annotated[str, BeforeValidator(_pattern)]

_PROXY_WORDS = ("env", "direct")


def _proxy(value: object) -> str:
    """``env``, ``direct`` or ``http://[user:password@]host:port`` (never quoted back: it may hold a password)."""
    if isinstance(value, str) and value in _PROXY_WORDS:
        return value
    if not isinstance(value, str) or not _proxy_url_ok(value):
        raise _error(
            "proxy",
            "expected 'env', 'direct' or an http:// proxy URL like 'http://proxy.internal:3128' "
            "(no path, no query; https:// proxies are not supported)",
        )
    return value


def _proxy_url_ok(text: str) -> bool:
    try:
        url = URL(text)
    except ValueError:
        return False
    bare = url.path in ("", "/") and not url.query_string and not url.fragment
    return bool(url.scheme == "http" and url.host and bare)


Proxy = Annotated[
    str,
    BeforeValidator(_proxy),
    PlainSerializer(lambda v: _redact_url(v) if v not in _PROXY_WORDS else v, return_type=str),
    WithJsonSchema(
        {
            "type": "string",
            "description": "egress HTTP proxy: 'env' (HTTPS_PROXY, HTTP_PROXY, NO_PROXY), 'direct', or an http:// URL",
            "examples": ["env", "direct", "http://proxy.internal:3128"],
        }
    ),
]


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


def _query_names(value: object) -> object:
    if not isinstance(value, (list, tuple)):
        raise _error("query_name", f"expected a list of query parameter names, got {shown(value)}")
    names = []
    for name in value:
        if not isinstance(name, str) or not _QUERY_NAME.fullmatch(name):
            raise _error(
                "query_name",
                f"expected query parameter names (printable, no '&', '=', '#' or space), got {shown(name)}",
            )
        names.append(name.lower())
    return tuple(dict.fromkeys(names))


_QUERY_NAME = re.compile(r"[\x21-\x22\x24-\x25\x27-\x3c\x3e-\x7e]+")


class Log(Model):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "text"] = "json"
    access_log: bool = True
    redact_query: Annotated[tuple[str, ...], BeforeValidator(_query_names)] = Field(
        DEFAULT_REDACT_QUERY,
        description="query parameters whose values the logs show as ***; the contract's five "
        "(key, token, access_token, apikey, signature) are always added",
    )

    @cached_property
    def secret_params(self) -> frozenset[str]:
        """The names ``redact_query`` hides: the configured ones and the contract's five, lower-case."""
        return frozenset(self.redact_query) | CONTRACT_REDACT_QUERY


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

    @field_validator("url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        try:
            url = URL(value) if value else None
        except ValueError:
            url = URL()
        if url is not None and not ((url.scheme in ("redis", "rediss") and url.host) or url.scheme == "unix"):
            # the URL may hold a password: it is not quoted
            raise _error("url", "expected a redis URL like 'redis://127.0.0.1:6379/0' (redis, rediss or unix)")
        return value


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
    waits: dict[Outcome, Duration] = Field(
        {},
        description="the wait before retrying an outcome whose answer names none (no Retry-After), "
        "instead of backoff: Meta's pair rate limit, code:131056, wants about 6s",
    )


class Breaker(Model):
    mode: Literal["consecutive", "rate"] = "consecutive"
    failure_threshold: int = Field(5, ge=1)
    failure_rate: Percent = 0.5
    window: Duration = 30.0
    min_requests: int = Field(10, ge=1)
    recovery: Duration = 0.5  # chosen on bench/breaker_modes.py and the scenario suite (README)
    recovery_max: Duration = 2.0
    half_open_requests: int = Field(1, ge=1)
    failure_on: tuple[Outcome, ...] = ("connect-failure", "timeout", "5xx")
    shared: bool = False

    @property
    def ceiling(self) -> float:
        """The longest open period before jitter: ``recovery_max``, or ``recovery`` when that is larger
        (a ``recovery`` above ``recovery_max``, written or inherited, means no doubling: not an error,
        so that a v1 file's ``recovery: 30s`` and ``gateway check``'s effective config both load)."""
        return max(self.recovery, self.recovery_max)


class Limits(Model):
    max_concurrent: int = Field(100, ge=1)
    max_queue: int = Field(100, ge=0)
    queue_timeout: Duration = 1.0
    max_request_body: Size = 10 * 1024**2


_JSON_POINTER = re.compile(r"(/([^~/]|~[01])*)+")


def _limit_key(value: object) -> object:
    """``name`` (a path parameter), ``header:NAME`` or ``body:/json/pointer`` (RFC 6901)."""
    if not isinstance(value, str):
        return value
    kind, colon, rest = value.partition(":")
    if colon and kind == "header":
        if not _HEADER_NAME.fullmatch(rest):
            raise _error("key", f"expected header:NAME with a header name after 'header:', got {shown(value)}")
    elif colon and kind == "body":
        if not _JSON_POINTER.fullmatch(rest):
            raise _error("key", f"expected body:/json/pointer (like 'body:/to'), got {shown(value)}")
    elif colon or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
        raise _error("key", f"expected a path parameter name, header:NAME or body:/json/pointer, got {shown(value)}")
    return value


class RateLimit(Model):
    rate: Rate
    burst: int | None = Field(None, ge=1)
    key: Annotated[str, BeforeValidator(_limit_key)] | None = Field(
        None, description="a path parameter name, header:NAME (its value's digest) or body:/json/pointer"
    )
    max_wait: Duration = 0.0
    scope: Literal["local", "global"] = "local"
    missing: Literal["share", "skip"] = Field(
        "share",
        description="a request whose key has no value (no such header, no such body field): share one bucket "
        "keyed '-' (the contract's rule), or skip this limit (read receipts carry no 'to')",
    )


def _one_or_list(value: object) -> str:
    return "list" if isinstance(value, (list, tuple)) else "one"


# ``rate_limit``: one block, or a list of blocks that must all pass. The tags name the branch in
# validation errors; ``_path`` drops them, so a mistake reads ``rate_limit.rate`` or ``rate_limit[1].rate``.
_RATE_LIMIT_TAGS = frozenset({"one", "list"})
RateLimits = Annotated[
    Annotated[RateLimit, Tag("one")] | Annotated[tuple[RateLimit, ...], Tag("list")],
    Discriminator(_one_or_list),
]


class Idempotency(Model):
    """Contract §2 ``idempotency`` (route, writes only): the IETF draft's Idempotency-Key."""

    header: str = "Idempotency-Key"
    ttl: Duration = 24 * 3600.0
    required: bool = False

    @field_validator("header")
    @classmethod
    def _header_name(cls, value: str) -> str:
        if not _HEADER_NAME.fullmatch(value):
            raise _error("header", f"{shown(value)} is not a header name (letters, digits and !#$%&'*+-.^_`|~)")
        return value

    @field_validator("ttl")
    @classmethod
    def _positive(cls, value: float) -> float:
        if value < 1:
            raise _error("duration", "ttl must be at least 1s")
        return value


class Quota(Model):
    """Contract §2 ``quota`` (route, ``kind: gemini``): Google's per-model limits, kept before Google does."""

    key: str | None = Field(None, description="a path parameter: one quota per value (the model)")
    rpm: int | None = Field(None, ge=1, description="requests per minute")
    tpm: int | None = Field(None, ge=1, description="tokens per minute (usageMetadata.totalTokenCount)")
    rpd: int | None = Field(None, ge=1, description="requests per day; the day ends at midnight America/Los_Angeles")
    max_wait: Duration = 0.0

    @model_validator(mode="after")
    def _some_limit(self) -> Quota:
        if self.rpm is None and self.tpm is None and self.rpd is None:
            raise _error("quota", "set at least one of rpm, tpm, rpd")
        return self


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


class Pool(Model):
    """An upstream's connection pool. Not in the contract: names as nginx and Envoy users know them,
    defaults chosen from the upstreams' documented idle limits (README, "Upstream connections")."""

    idle_timeout: Duration = Field(
        50.0,
        ge=0.1,
        description="a pooled connection unused this long is closed and never written on again; "
        "keep it below the upstream's own idle limit",
    )
    keep_warm: int = Field(
        1,
        ge=0,
        le=100,
        description="connections kept open while traffic is quiet, each replaced by a new one before idle_timeout",
    )
    preconnect: int = Field(
        1, ge=0, le=100, description="connections opened when the pool is made: at start, and when a reload makes it"
    )


class Tls(Model):
    """TLS to an https upstream beyond the defaults (the system's CAs, no client certificate)."""

    ca_file: str | None = Field(
        None, description="PEM file of the CAs trusted for this upstream, instead of the system's"
    )
    cert_file: str | None = Field(None, description="client certificate (PEM), for an upstream that asks for one")
    key_file: str | None = Field(
        None, description="the client certificate's private key (PEM, not encrypted), when it is not in cert_file"
    )


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
    pool: Pool | None = None
    proxy: Proxy | None = Field(None, repr=False)


class Route(Model):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_\-]+$")] | None = None
    match: RouteMatch = RouteMatch()
    timeouts: Timeouts | None = None
    retry: Retry | None = None
    breaker: Breaker | None = None
    fault: Fault | None = None
    cache: Cache | None = None
    rate_limit: RateLimits | None = None
    idempotency: Idempotency | None = None
    quota: Quota | None = None
    invalidates: tuple[Pattern, ...] = ()
    invalidation: Literal["soft", "hard"] = "soft"

    @property
    def rate_limits(self) -> tuple[RateLimit, ...]:
        """``rate_limit`` as a tuple: empty, one block, or the list."""
        if self.rate_limit is None:
            return ()
        return self.rate_limit if isinstance(self.rate_limit, tuple) else (self.rate_limit,)


class Upstream(Policies):
    url: str
    kind: Literal["graph", "gemini", "supabase", "generic"] = "generic"
    prefix: str | None = None
    set_headers: dict[str, Secret] = Field({}, repr=False)
    forwarded_headers: bool = Field(False, description="add X-Forwarded-For/-Proto/-Host")
    tls: Tls | None = None
    routes: tuple[Route, ...] = ()

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        try:
            url = URL(value)
        except ValueError:
            url = None
        if url is None or url.scheme not in ("http", "https") or not url.host or url.query_string or url.fragment:
            raise _error("url", f"expected an http(s) URL with a host and no query, got {shown(value)}")
        if url.user is not None or url.password is not None:  # the URL holds a secret: it is not quoted
            raise _error(
                "url",
                "credentials in the URL are not accepted (aiohttp would send them as Basic auth and refuse "
                "any request that carries its own Authorization): remove them and send the header with "
                "set_headers, e.g. set_headers: {authorization: 'Basic ${UPSTREAM_BASIC_AUTH}'}",
            )
        return value.rstrip("/")

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str | None) -> str | None:
        if value is not None and (
            not re.fullmatch(r"(/[A-Za-z0-9_.\-~]+)+", value) or {".", ".."} & set(value.split("/"))
        ):  # a '.' or '..' segment: no request could reach it (dot segments are refused)
            expected = "expected a path prefix like '/graph' (no trailing slash, no dot segment)"
            raise _error("prefix", f"{expected}, got {shown(value)}")
        return value

    @field_validator("set_headers")
    @classmethod
    def _headers(cls, value: dict[str, str]) -> dict[str, str]:
        for name, text in value.items():
            if not _HEADER_NAME.fullmatch(name):
                raise _error("header", f"{shown(name)} is not a header name (letters, digits and !#$%&'*+-.^_`|~)")
            if _HEADER_VALUE_BAD.search(text):  # the value is a secret: never quoted
                raise _error("header", f"the value of {name!r} holds a control character or is not text")
        return value


_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_HEADER_VALUE_BAD = re.compile(r"[\x00-\x08\x0a-\x1f\x7f\ud800-\udfff]")


class Readiness(Model):
    require: tuple[str, ...] = ()


class Listener(Model):
    """A listener's client connections: the proxy port's defaults. ``AdminServer`` has its own."""

    header_timeout: Duration = Field(
        10.0, gt=0, description="the request line and headers must arrive within this, else 408 and close"
    )
    keepalive_timeout: Duration = Field(75.0, gt=0, description="an idle client connection is closed after this")
    max_connections: int = Field(
        1000, ge=1, description="open client connections; lowered at start to what RLIMIT_NOFILE allows"
    )
    max_request_line: Size = Field(16 * 1024, ge=256, description="longest request line; longer: 414")
    max_header_size: Size = Field(8 * 1024, ge=256, description="longest header (name and value); longer: 431")
    max_headers: int = Field(128, ge=8, description="most header lines in a request; more: 431")
    max_chunk_line: Size = Field(
        4 * 1024, ge=64, description="longest chunk-size line of a chunked body, extensions included; longer: 400"
    )


class AdminServer(Listener):
    """The admin port's client connections: probes, Prometheus and operators need little."""

    header_timeout: Duration = Field(5.0, gt=0, description="as server.header_timeout, for the admin port")
    keepalive_timeout: Duration = Field(30.0, gt=0, description="as server.keepalive_timeout, for the admin port")
    max_connections: int = Field(64, ge=1, description="open admin connections at once")
    max_request_line: Size = Field(8 * 1024, ge=256, description="longest request line; longer: 414")
    max_header_size: Size = Field(8 * 1024, ge=256, description="longest header (name and value); longer: 431")
    max_headers: int = Field(64, ge=8, description="most header lines in a request; more: 431")
    max_chunk_line: Size = Field(1024, ge=64, description="longest chunk-size line; longer: 400")


class Server(Listener):
    """The proxy port's client connections. Not in the contract's first version: defaults follow
    nginx and Envoy (``client_header_timeout``, ``keepalive_timeout``, ``worker_connections``,
    ``headers_with_underscores_action``); ``admin`` holds the admin port's own, smaller, limits."""

    headers_with_underscores: Literal["allow", "drop", "reject"] = Field(
        "allow",
        description="request headers whose name holds '_': allow (forwarded), drop, or reject (400); "
        "a look-alike of Content-Length, Transfer-Encoding, Host or Connection is never forwarded",
    )
    admin: AdminServer = AdminServer()


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
    server: Server = Server()
    # The proxy variables of the environment the file was loaded with (``proxy: env``), as ${VAR}.
    _proxy_env: dict[str, str] = PrivateAttr(default_factory=dict)


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
    rate_limit: tuple[RateLimit, ...]  # every one must pass (contract: one block, or a list)
    invalidates: tuple[PathPattern, ...]
    invalidation: str = "soft"  # soft: mark entries (served only STALE on error); hard: delete them
    idempotency: Idempotency | None = None
    quota: Quota | None = None


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
    pool: Pool
    tls: Tls | None
    proxy: URL | None = field(repr=False)  # the egress proxy in use (``env`` resolved); may hold a password


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


# Built-in defaults per ``kind``, under the file's ``defaults`` (which still win when they set the key):
# Gemini takes requests of up to 20 MB with inline data (images, audio, PDFs as base64).
KIND_LIMITS: dict[str, Limits] = {"gemini": Limits(max_request_body=20 * 1024**2)}


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
            limits=merge(merge(merge(Limits(), KIND_LIMITS.get(up.kind)), d.limits), up.limits),
            fault=up.fault if up.fault is not None else d.fault,
            cache=None,
            rate_limit=(),
            invalidates=(),
        )
        url = URL(up.url)
        result.append(
            UpstreamPolicy(
                name=name,
                url=url,
                kind=up.kind,
                prefix=up.prefix or f"/{name}",
                set_headers={k.lower(): v for k, v in up.set_headers.items() if v},
                forwarded_headers=up.forwarded_headers,
                routes=tuple(_route_policy(default, r, i) for i, r in enumerate(up.routes)),
                default=default,
                limits=default.limits,
                breaker=default.breaker,
                raw=up,
                pool=merge(merge(Pool(), d.pool), up.pool),
                tls=up.tls,
                proxy=egress_proxy(_proxy_setting(config, up), url, config._proxy_env),
            )
        )
    return tuple(result)


def _proxy_setting(config: Config, up: Upstream) -> str | None:
    """The upstream's ``proxy`` as written, else the file's default (``None``: direct)."""
    return up.proxy if "proxy" in up.model_fields_set else config.defaults.proxy


def proxy_environment(env: Mapping[str, str]) -> dict[str, str]:
    """The proxy variables ``proxy: env`` reads: ``http_proxy``, ``https_proxy``, ``no_proxy``
    (lower-case names win over upper-case ones, as curl and Python's urllib read them)."""
    found = {}
    for name in ("http_proxy", "https_proxy", "no_proxy"):
        value = env.get(name) or env.get(name.upper())
        if value:
            found[name] = value.strip()
    return found


def _env_proxy_url(value: str) -> str:
    return value if "://" in value else f"http://{value}"  # 'proxy:3128', as curl takes it


def egress_proxy(setting: str | None, url: URL, env: Mapping[str, str]) -> URL | None:
    """The proxy an upstream at ``url`` is reached through, or None for a direct connection.

    ``env``: the scheme's ``*_proxy`` variable of ``env`` (``proxy_environment``), unless
    ``no_proxy`` names the host (``*``, a host, or a domain suffix like ``.internal``)."""
    if setting is None or setting == "direct":
        return None
    if setting != "env":
        return URL(setting)
    value = env.get(f"{url.scheme}_proxy")
    if not value:
        return None
    if _bypassed(url.host or "", env.get("no_proxy", "")):
        return None
    return URL(_env_proxy_url(value))


def _bypassed(host: str, no_proxy: str) -> bool:
    """Whether ``no_proxy`` (comma-separated ``*``, hosts and domain suffixes, a port ignored) names ``host``."""
    host = host.lower().rstrip(".")
    for entry in no_proxy.split(","):
        name = entry.strip().lower()
        if name == "*":
            return True
        name = name.rsplit(":", 1)[0] if name.count(":") == 1 else name  # 'host:port'; an IPv6 address stays whole
        name = name.strip("[]").lstrip(".").rstrip(".")
        if name and (host == name or host.endswith("." + name)):
            return True
    return False


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
        rate_limit=route.rate_limits,
        invalidates=tuple(PathPattern.compile(p) for p in route.invalidates),
        invalidation=route.invalidation,
        idempotency=route.idempotency,
        quota=route.quota,
    )


# --------------------------------------------------------------------------- loading


_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _path(loc: tuple[Any, ...]) -> str:
    return key_path(_untagged(loc))


def _untagged(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """``loc`` without the branch tags of ``rate_limit``'s one-or-list union."""
    return tuple(p for i, p in enumerate(loc) if not (p in _RATE_LIMIT_TAGS and i and loc[i - 1] == "rate_limit"))


def interpolate(
    node: Any,
    env: Mapping[str, str],
    problems: list[str],
    loc: tuple[Any, ...] = (),
    done: dict[int, Any] | None = None,
) -> Any:
    """Replace ``${VAR}`` and ``${VAR:-default}`` in every string value; ``$$`` is a literal ``$``.

    A mapping or list that YAML aliases (``*name``) make appear many times is done once and
    shared, as YAML shares it: nested aliases cannot make the work grow exponentially, and a
    structure that holds itself does not recurse forever.
    """
    done = {} if done is None else done
    if isinstance(node, (dict, list)) and id(node) in done:
        return done[id(node)]
    if isinstance(node, dict):
        out: dict[Any, Any] = done.setdefault(id(node), {})
        for k, v in node.items():
            out[k] = interpolate(v, env, problems, (*loc, k), done)
        return out
    if isinstance(node, list):
        items: list[Any] = done.setdefault(id(node), [])
        for i, v in enumerate(node):
            items.append(interpolate(v, env, problems, (*loc, i), done))
        return items
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


def escape_dollars(node: Any) -> Any:
    """Undo ``interpolate`` for text meant to be read again: a string that would be interpolated
    (it holds ``$$`` or ``${…}``) gets every ``$`` doubled, so it reads back as the same value."""
    if isinstance(node, dict):
        return {k: escape_dollars(v) for k, v in node.items()}
    if isinstance(node, list):
        return [escape_dollars(v) for v in node]
    if isinstance(node, str) and _VAR.search(node):
        return node.replace("$", "$$")
    return node


# Error kinds of the validators here, whose message is already the final text.
_FINAL_TEXT = frozenset(
    {"duration", "size", "rate", "percent", "outcome", "method", "pattern", "url", "prefix", "header", "proxy"}
    | {"query_name", "key", "quota"}
)


def _describe(error: Any) -> str:
    kind, msg, value = error["type"], error["msg"], error.get("input")
    loc = _path(error["loc"])
    if kind == "extra_forbidden":
        return f"{loc}: unknown key"
    if loc.endswith(".[key]"):
        return f"{loc[:-6]}: names use a-z, 0-9, '_' and '-', got {shown(value)}"
    if kind == "missing":
        return f"{loc}: required key is missing"
    if kind == "model_type" and loc.endswith("rate_limit"):
        return f"{loc}: expected a block like {{rate: 10/s}} or a list of them, got {shown(value)}"
    if kind in _FINAL_TEXT:
        return f"{loc}: {msg}"
    return f"{loc}: {msg[0].lower() + msg[1:]}, got {shown(value)}"


def _unknown_key_hint(error: Any) -> str:
    """For an unknown key, list the keys allowed at that place."""
    fields = allowed_keys(Config, _untagged(error["loc"]))
    return f" (expected one of: {', '.join(fields)})" if fields else ""


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
                f"(got host {shown(config.admin.listen.host)}); set GATEWAY_ADMIN_TOKEN"
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
        problems.extend(_egress_checks(config, name, up))
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
            listed = isinstance(route.rate_limit, tuple)
            for j, rl in enumerate(route.rate_limits):
                where = f"{here}.rate_limit[{j}]" if listed else f"{here}.rate_limit"
                if rl.key is not None and ":" not in rl.key and rl.key not in params:
                    problems.append(
                        f"{where}.key: {shown(rl.key)} is not a parameter of the route's path "
                        f"{route.match.path!r} (parameters: {', '.join(params) or 'none'})"
                    )
                if rl.scope == "global" and not redis:
                    problems.append(f"{where}.scope: 'global' needs cache_store.type redis")
            problems += _route_extras(here, route, up.kind, params)
            for j, inv in enumerate(route.invalidates):
                missing = [p for p in PathPattern.compile(inv).params if p not in params]
                if missing:
                    problems.append(
                        f"{here}.invalidates[{j}]: parameter {{{missing[0]}}} is not captured by the route's path "
                        f"{route.match.path!r}"
                    )
        for where, scope in scopes:
            if scope.breaker is not None and scope.breaker.shared and not redis:
                problems.append(f"{where}.breaker.shared: true needs cache_store.type redis")
    if config.defaults.breaker is not None and config.defaults.breaker.shared and not redis:
        problems.append("defaults.breaker.shared: true needs cache_store.type redis")
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
    return problems


_READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def _route_extras(here: str, route: Route, kind: str, params: tuple[str, ...]) -> list[str]:
    """Where ``idempotency`` and ``quota`` may be written."""
    problems = []
    reads = sorted(_READ_METHODS & set(route.match.methods))
    if route.idempotency is not None and reads:
        problems.append(
            f"{here}.idempotency: applies to writes only; the route also matches {', '.join(reads)} "
            "(write the idempotency block on a route that matches POST, PUT, PATCH or DELETE)"
        )
    quota = route.quota
    if quota is not None:
        if kind != "gemini":
            problems.append(f"{here}.quota: needs kind: gemini (tokens are read from Gemini's usageMetadata)")
        if quota.key is not None and quota.key not in params:
            problems.append(
                f"{here}.quota.key: {shown(quota.key)} is not a parameter of the route's path "
                f"{route.match.path!r} (parameters: {', '.join(params) or 'none'})"
            )
    return problems


def _egress_checks(config: Config, name: str, up: Upstream) -> list[str]:
    """``tls`` (https only, files that load) and ``proxy: env`` (a usable proxy URL in the environment)."""
    problems = []
    url = URL(up.url)
    where = f"upstreams.{name}"
    if up.tls is not None:
        if url.scheme != "https":
            problems.append(f"{where}.tls: applies to https:// upstreams only (the url is http://)")
        elif up.tls.key_file and not up.tls.cert_file:
            problems.append(f"{where}.tls.key_file: needs cert_file (the certificate it belongs to)")
        else:
            try:
                tls_context(up.tls)
            except TlsFileError as exc:
                problems.append(f"{where}.tls.{exc.key}: {exc}")
    setting = _proxy_setting(config, up)
    value = config._proxy_env.get(f"{url.scheme}_proxy")
    if setting == "env" and value and not _proxy_url_ok(_env_proxy_url(value)):
        variable = f"{url.scheme.upper()}_PROXY"  # its value may hold a password: not quoted
        at = where if "proxy" in up.model_fields_set else "defaults"
        problems.append(f"{at}.proxy: 'env' reads {variable}, which is not an http:// proxy URL with a host")
    return problems


def parse_config(text: str, source: str = "<string>", env: Mapping[str, str] | None = None) -> Config:
    """Parse and validate gateway.yaml text. Raises ConfigError listing every problem."""
    try:
        data = yamlfile.load(text)
    except yamlfile.YamlError as exc:
        raise ConfigError(source, [exc.problem]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(source, [f"expected a mapping at the top level, got {type(data).__name__}"])
    problems: list[str] = []
    environment = os.environ if env is None else env
    data = interpolate(data, environment, problems)
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
    config._proxy_env = proxy_environment(environment)
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
        entry["pool"] = up.pool.model_dump(mode="json")
        for route, out in zip(up.routes, entry.get("routes", []), strict=True):
            out.setdefault("name", route.name)
            for block in ("timeouts", "retry", "breaker"):
                if block == "breaker" and route.breaker_name == up.name:
                    continue  # the upstream's breaker, shared: a breaker block would give the route one of its own
                out[block] = getattr(route, block).model_dump(mode="json", exclude_none=True)
    if config.cache_store.url:
        data["cache_store"]["url"] = _redact_url(config.cache_store.url)
    return data


def _redact_url(url: str) -> str:
    try:
        parsed = URL(url)
    except ValueError:
        return "***"
    if not parsed.scheme:  # not read as a URL: its userinfo, if any, cannot be told apart
        return "***"
    if parsed.password:
        return str(parsed.with_password("***"))
    return str(parsed.with_user("***")) if parsed.user else url  # a bare token as the user
