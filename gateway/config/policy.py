"""The policy layer: the finished, frozen policies the request path reads (``*Policy``).

Owns inheritance, key by key (``merge``): built-in defaults (per ``kind``: ``KIND_LIMITS``) → the
file's ``defaults`` → the upstream → the route, into one ``RoutePolicy`` per route and one for an
upstream's unmatched requests, gathered in an ``UpstreamPolicy``; and the egress proxy an
upstream is reached through (``proxy: env`` read from ``HTTPS_PROXY``/``HTTP_PROXY``/``NO_PROXY``
as curl reads them). ``document.Config.policies`` runs ``resolve`` once per loaded file; the live
objects built from these (pools, breakers, limiters) are ``runtime``'s.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from pydantic import BaseModel
from yarl import URL

from ..routing import PathPattern
from .spec import (
    BreakerSpec,
    CacheSpec,
    FaultSpec,
    IdempotencySpec,
    LimitsSpec,
    PoliciesSpec,
    PoolSpec,
    QuotaSpec,
    RateLimitSpec,
    RetrySpec,
    RouteSpec,
    TimeoutsSpec,
    TlsSpec,
    UpstreamSpec,
)

__all__ = [
    "KIND_LIMITS",
    "RoutePolicy",
    "UpstreamPolicy",
    "egress_proxy",
    "env_proxy_url",
    "merge",
    "proxy_environment",
    "proxy_setting",
    "resolve",
]


@dataclass(frozen=True, slots=True)
class RoutePolicy:
    """Everything the request path needs for one route (or an upstream's unmatched requests)."""

    upstream: str
    name: str
    breaker_name: str  # the upstream's name, or 'upstream.route' when the route sets breaker:
    methods: frozenset[str]
    pattern: PathPattern
    timeouts: TimeoutsSpec
    retry: RetrySpec
    breaker: BreakerSpec
    limits: LimitsSpec
    fault: FaultSpec | None
    cache: CacheSpec | None
    rate_limit: tuple[RateLimitSpec, ...]  # every one must pass (contract: one block, or a list)
    invalidates: tuple[PathPattern, ...]
    invalidation: str = "soft"  # soft: mark entries (served only STALE on error); hard: delete them
    idempotency: IdempotencySpec | None = None
    quota: QuotaSpec | None = None


@dataclass(frozen=True, slots=True)
class UpstreamPolicy:
    """One upstream's finished policies: its routes', its unmatched requests', its pool and egress."""

    name: str
    url: URL
    kind: str
    prefix: str
    set_headers: Mapping[str, str] = field(repr=False)  # values are secrets
    forwarded_headers: bool
    routes: tuple[RoutePolicy, ...]
    default: RoutePolicy  # for requests that match no route
    limits: LimitsSpec
    breaker: BreakerSpec
    spec: UpstreamSpec = field(repr=False, compare=False)  # the block as written
    pool: PoolSpec
    tls: TlsSpec | None
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
KIND_LIMITS: dict[str, LimitsSpec] = {"gemini": LimitsSpec(max_request_body=20 * 1024**2)}


def resolve(
    defaults: PoliciesSpec, upstreams: Mapping[str, UpstreamSpec], proxy_env: Mapping[str, str]
) -> tuple[UpstreamPolicy, ...]:
    """Apply inheritance and build the finished policies, upstream by upstream (``Config.policies``)."""
    d = defaults
    result = []
    for name, up in upstreams.items():
        default = RoutePolicy(
            upstream=name,
            name="-",
            breaker_name=name,
            methods=frozenset(),
            pattern=PathPattern.compile("/**"),
            timeouts=merge(merge(TimeoutsSpec(), d.timeouts), up.timeouts),
            retry=merge(merge(RetrySpec(), d.retry), up.retry),
            breaker=merge(merge(BreakerSpec(), d.breaker), up.breaker),
            limits=merge(merge(merge(LimitsSpec(), KIND_LIMITS.get(up.kind)), d.limits), up.limits),
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
                spec=up,
                pool=merge(merge(PoolSpec(), d.pool), up.pool),
                tls=up.tls,
                proxy=egress_proxy(proxy_setting(defaults, up), url, proxy_env),
            )
        )
    return tuple(result)


def proxy_setting(defaults: PoliciesSpec, up: UpstreamSpec) -> str | None:
    """The upstream's ``proxy`` as written, else the file's default (``None``: direct)."""
    return up.proxy if "proxy" in up.model_fields_set else defaults.proxy


def proxy_environment(env: Mapping[str, str]) -> dict[str, str]:
    """The proxy variables ``proxy: env`` reads: ``http_proxy``, ``https_proxy``, ``no_proxy``
    (lower-case names win over upper-case ones, as curl and Python's urllib read them)."""
    found = {}
    for name in ("http_proxy", "https_proxy", "no_proxy"):
        value = env.get(name) or env.get(name.upper())
        if value:
            found[name] = value.strip()
    return found


def env_proxy_url(value: str) -> str:
    """A proxy variable's value as a URL (``proxy:3128`` as curl takes it: http)."""
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
    return URL(env_proxy_url(value))


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


def _route_policy(upstream: RoutePolicy, route: RouteSpec, index: int) -> RoutePolicy:
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
