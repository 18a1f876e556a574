"""The spec layer: gateway.yaml's blocks as written, one pydantic model per block (``*Spec``).

Owns every block's keys, defaults and single-block checks (unknown keys refused, instances frozen):
``ListenSpec``, ``AdminSpec``, ``LogSpec``, ``DrainSpec``, ``CacheStoreSpec``, ``ServerSpec``
(with ``AdminServerSpec``), ``ReadinessSpec``, and the per-upstream and per-route blocks
``UpstreamSpec``, ``RouteSpec``, ``TimeoutsSpec``, ``RetrySpec``, ``BreakerSpec``, ``LimitsSpec``,
``RateLimitSpec``, ``IdempotencySpec``, ``QuotaSpec``, ``CacheSpec``, ``FaultSpec``, ``PoolSpec``,
``TlsSpec``. Inheritance (defaults → upstream → route) is ``policy``'s; checks across blocks are
``check``'s; the whole file is ``document.Config``.
"""

from __future__ import annotations

import re
from functools import cached_property
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Discriminator, Field, Tag, field_validator, model_validator
from yarl import URL

from ..logs import CONTRACT_REDACT_QUERY, DEFAULT_REDACT_QUERY
from ..units import shown
from .fields import Duration, Method, OutcomeToken, Pattern, Percent, Proxy, Rate, Secret, Size, error

__all__ = [
    "RATE_LIMIT_TAGS",
    "AdminServerSpec",
    "AdminSpec",
    "BackoffSpec",
    "BreakerSpec",
    "BudgetSpec",
    "CacheSpec",
    "CacheStoreSpec",
    "DrainSpec",
    "FaultAbortSpec",
    "FaultDelaySpec",
    "FaultSpec",
    "IdempotencySpec",
    "LimitsSpec",
    "ListenSpec",
    "ListenerSpec",
    "LogSpec",
    "PoliciesSpec",
    "PoolSpec",
    "QuotaSpec",
    "RateLimitSpec",
    "RateLimitSpecs",
    "ReadinessSpec",
    "RetryAfterSpec",
    "RetrySpec",
    "RouteMatchSpec",
    "RouteSpec",
    "ServerSpec",
    "Spec",
    "TimeoutsSpec",
    "TlsSpec",
    "UpstreamSpec",
]


class Spec(BaseModel):
    """Base of every block: unknown keys are errors, instances are frozen."""

    # JSON Schema titles name the YAML block ("Breaker"), not the layer ("BreakerSpec"): see gateway.schema.
    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        validate_default=False,
        model_title_generator=lambda cls: cls.__name__.removesuffix("Spec"),
    )


class ListenSpec(Spec):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)


class AdminSpec(Spec):
    listen: ListenSpec = ListenSpec(port=9901)
    token: Secret = Field("", description="bearer token for admin POSTs", repr=False)


def _query_names(value: object) -> object:
    if not isinstance(value, (list, tuple)):
        raise error("query_name", f"expected a list of query parameter names, got {shown(value)}")
    names = []
    for name in value:
        if not isinstance(name, str) or not _QUERY_NAME.fullmatch(name):
            raise error(
                "query_name",
                f"expected query parameter names (printable, no '&', '=', '#' or space), got {shown(name)}",
            )
        names.append(name.lower())
    return tuple(dict.fromkeys(names))


_QUERY_NAME = re.compile(r"[\x21-\x22\x24-\x25\x27-\x3c\x3e-\x7e]+")


class LogSpec(Spec):
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


class DrainSpec(Spec):
    delay: Duration = 5.0
    timeout: Duration = 25.0


class CacheStoreSpec(Spec):
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
            raise error("url", "expected a redis URL like 'redis://127.0.0.1:6379/0' (redis, rediss or unix)")
        return value


class TimeoutsSpec(Spec):
    connect: Duration = 3.0
    per_try: Duration = 10.0
    idle: Duration = 30.0
    total: Duration = 15.0


class BackoffSpec(Spec):
    base: Duration = 0.1
    max: Duration = 2.0


class RetryAfterSpec(Spec):
    honor: bool = True
    max: Duration = 10.0


class BudgetSpec(Spec):
    percent: Percent = 0.2
    min_per_second: float = Field(3.0, ge=0)
    window: Duration = 10.0


class RetrySpec(Spec):
    attempts: int = Field(3, ge=1, le=10)
    backoff: BackoffSpec = BackoffSpec()
    on: tuple[OutcomeToken, ...] = ("connect-failure", "timeout", "502", "503", "504", "429")
    methods: tuple[Method, ...] = ("GET", "HEAD", "OPTIONS", "PUT", "DELETE")
    retry_after: RetryAfterSpec = RetryAfterSpec()
    budget: BudgetSpec = BudgetSpec()
    max_replay_body: Size = 1024**2
    waits: dict[OutcomeToken, Duration] = Field(
        {},
        description="the wait before retrying an outcome whose answer names none (no Retry-After), "
        "instead of backoff: Meta's pair rate limit, code:131056, wants about 6s",
    )


class BreakerSpec(Spec):
    mode: Literal["consecutive", "rate"] = "consecutive"
    failure_threshold: int = Field(5, ge=1)
    failure_rate: Percent = 0.5
    window: Duration = 30.0
    min_requests: int = Field(10, ge=1)
    recovery: Duration = 0.5  # chosen on bench/breaker_modes.py and the scenario suite (README)
    recovery_max: Duration = 2.0
    half_open_requests: int = Field(1, ge=1)
    failure_on: tuple[OutcomeToken, ...] = ("connect-failure", "timeout", "5xx")
    shared: bool = False
    # A refused request with no STALE answer waits up to this long (never past its deadline) for the
    # next probe window, then asks again. 0s: refused at once, in under 1 ms (contract §2). README.
    wait: Duration = 0.0

    @property
    def ceiling(self) -> float:
        """The longest open period before jitter: ``recovery_max``, or ``recovery`` when that is larger
        (a ``recovery`` above ``recovery_max``, written or inherited, means no doubling: not an error,
        so that a v1 file's ``recovery: 30s`` and ``gateway check``'s effective config both load)."""
        return max(self.recovery, self.recovery_max)


class LimitsSpec(Spec):
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
            raise error("key", f"expected header:NAME with a header name after 'header:', got {shown(value)}")
    elif colon and kind == "body":
        if not _JSON_POINTER.fullmatch(rest):
            raise error("key", f"expected body:/json/pointer (like 'body:/to'), got {shown(value)}")
    elif colon or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
        raise error("key", f"expected a path parameter name, header:NAME or body:/json/pointer, got {shown(value)}")
    return value


class RateLimitSpec(Spec):
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
# validation errors; ``load`` drops them from a key path, so a mistake reads ``rate_limit.rate`` or
# ``rate_limit[1].rate``.
RATE_LIMIT_TAGS = frozenset({"one", "list"})
RateLimitSpecs = Annotated[
    Annotated[RateLimitSpec, Tag("one")] | Annotated[tuple[RateLimitSpec, ...], Tag("list")],
    Discriminator(_one_or_list),
]


class IdempotencySpec(Spec):
    """Contract §2 ``idempotency`` (route, writes only): the IETF draft's Idempotency-Key."""

    header: str = "Idempotency-Key"
    ttl: Duration = 24 * 3600.0
    required: bool = False

    @field_validator("header")
    @classmethod
    def _header_name(cls, value: str) -> str:
        if not _HEADER_NAME.fullmatch(value):
            raise error("header", f"{shown(value)} is not a header name (letters, digits and !#$%&'*+-.^_`|~)")
        return value

    @field_validator("ttl")
    @classmethod
    def _positive(cls, value: float) -> float:
        if value < 1:
            raise error("duration", "ttl must be at least 1s")
        return value


class QuotaSpec(Spec):
    """Contract §2 ``quota`` (route, ``kind: gemini``): Google's per-model limits, kept before Google does."""

    key: str | None = Field(None, description="a path parameter: one quota per value (the model)")
    rpm: int | None = Field(None, ge=1, description="requests per minute")
    tpm: int | None = Field(None, ge=1, description="tokens per minute (usageMetadata.totalTokenCount)")
    rpd: int | None = Field(None, ge=1, description="requests per day; the day ends at midnight America/Los_Angeles")
    max_wait: Duration = 0.0

    @model_validator(mode="after")
    def _some_limit(self) -> QuotaSpec:
        if self.rpm is None and self.tpm is None and self.rpd is None:
            raise error("quota", "set at least one of rpm, tpm, rpd")
        return self


class CacheSpec(Spec):
    ttl: Duration
    vary: tuple[str, ...] = ()
    statuses: tuple[int, ...] = (200, 203, 204, 300, 301, 404, 410)
    stale_if_error: Duration = 0.0
    stale_while_revalidate: Duration = 0.0

    @field_validator("vary")
    @classmethod
    def _lower(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(v.lower() for v in value)


class FaultAbortSpec(Spec):
    percent: Percent
    status: int = Field(503, ge=200, le=599)


class FaultDelaySpec(Spec):
    percent: Percent
    duration: Duration


class FaultSpec(Spec):
    abort: FaultAbortSpec | None = None
    delay: FaultDelaySpec | None = None


class PoolSpec(Spec):
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


class TlsSpec(Spec):
    """TLS to an https upstream beyond the defaults (the system's CAs, no client certificate)."""

    ca_file: str | None = Field(
        None, description="PEM file of the CAs trusted for this upstream, instead of the system's"
    )
    cert_file: str | None = Field(None, description="client certificate (PEM), for an upstream that asks for one")
    key_file: str | None = Field(
        None, description="the client certificate's private key (PEM, not encrypted), when it is not in cert_file"
    )


class RouteMatchSpec(Spec):
    methods: tuple[Method, ...] = ()
    path: Pattern = "/**"


class PoliciesSpec(Spec):
    """The blocks inherited defaults → upstream → route, key by key."""

    timeouts: TimeoutsSpec | None = None
    retry: RetrySpec | None = None
    breaker: BreakerSpec | None = None
    limits: LimitsSpec | None = None
    fault: FaultSpec | None = None
    pool: PoolSpec | None = None
    proxy: Proxy | None = Field(None, repr=False)


class RouteSpec(Spec):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_\-]+$")] | None = None
    match: RouteMatchSpec = RouteMatchSpec()
    timeouts: TimeoutsSpec | None = None
    retry: RetrySpec | None = None
    breaker: BreakerSpec | None = None
    fault: FaultSpec | None = None
    cache: CacheSpec | None = None
    rate_limit: RateLimitSpecs | None = None
    idempotency: IdempotencySpec | None = None
    quota: QuotaSpec | None = None
    invalidates: tuple[Pattern, ...] = ()
    invalidation: Literal["soft", "hard"] = "soft"

    @property
    def rate_limits(self) -> tuple[RateLimitSpec, ...]:
        """``rate_limit`` as a tuple: empty, one block, or the list."""
        if self.rate_limit is None:
            return ()
        return self.rate_limit if isinstance(self.rate_limit, tuple) else (self.rate_limit,)


class UpstreamSpec(PoliciesSpec):
    url: str
    kind: Literal["graph", "gemini", "supabase", "generic"] = "generic"
    prefix: str | None = None
    set_headers: dict[str, Secret] = Field({}, repr=False)
    forwarded_headers: bool = Field(False, description="add X-Forwarded-For/-Proto/-Host")
    tls: TlsSpec | None = None
    routes: tuple[RouteSpec, ...] = ()

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        try:
            url = URL(value)
        except ValueError:
            url = None
        if url is None or url.scheme not in ("http", "https") or not url.host or url.query_string or url.fragment:
            raise error("url", f"expected an http(s) URL with a host and no query, got {shown(value)}")
        if url.user is not None or url.password is not None:  # the URL holds a secret: it is not quoted
            raise error(
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
            raise error("prefix", f"{expected}, got {shown(value)}")
        return value

    @field_validator("set_headers")
    @classmethod
    def _headers(cls, value: dict[str, str]) -> dict[str, str]:
        for name, text in value.items():
            if not _HEADER_NAME.fullmatch(name):
                raise error("header", f"{shown(name)} is not a header name (letters, digits and !#$%&'*+-.^_`|~)")
            if _HEADER_VALUE_BAD.search(text):  # the value is a secret: never quoted
                raise error("header", f"the value of {name!r} holds a control character or is not text")
        return value


_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_HEADER_VALUE_BAD = re.compile(r"[\x00-\x08\x0a-\x1f\x7f\ud800-\udfff]")


class ReadinessSpec(Spec):
    require: tuple[str, ...] = ()


class ListenerSpec(Spec):
    """A listener's client connections: the proxy port's defaults. ``AdminServerSpec`` has its own."""

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


class AdminServerSpec(ListenerSpec):
    """The admin port's client connections: probes, Prometheus and operators need little."""

    header_timeout: Duration = Field(5.0, gt=0, description="as server.header_timeout, for the admin port")
    keepalive_timeout: Duration = Field(30.0, gt=0, description="as server.keepalive_timeout, for the admin port")
    max_connections: int = Field(64, ge=1, description="open admin connections at once")
    max_request_line: Size = Field(8 * 1024, ge=256, description="longest request line; longer: 414")
    max_header_size: Size = Field(8 * 1024, ge=256, description="longest header (name and value); longer: 431")
    max_headers: int = Field(64, ge=8, description="most header lines in a request; more: 431")
    max_chunk_line: Size = Field(1024, ge=64, description="longest chunk-size line; longer: 400")


class ServerSpec(ListenerSpec):
    """The proxy port's client connections. Not in the contract's first version: defaults follow
    nginx and Envoy (``client_header_timeout``, ``keepalive_timeout``, ``worker_connections``,
    ``headers_with_underscores_action``); ``admin`` holds the admin port's own, smaller, limits."""

    headers_with_underscores: Literal["allow", "drop", "reject"] = Field(
        "allow",
        description="request headers whose name holds '_': allow (forwarded), drop, or reject (400); "
        "a look-alike of Content-Length, Transfer-Encoding, Host or Connection is never forwarded",
    )
    admin: AdminServerSpec = AdminServerSpec()
