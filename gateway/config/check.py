"""The checks across blocks of gateway.yaml, made once every block is valid on its own.

Owns what no single model can see: a non-loopback admin port needs a token; Redis where
``scope: global`` or ``breaker.shared`` ask for it; cache entry bounds; unique prefixes and route
names; rate limit, quota and invalidation keys that name parameters of the route's path;
``idempotency`` on writes only and ``quota`` on ``kind: gemini`` only; ``tls`` on https upstreams,
with files that load; ``proxy: env`` with a usable proxy URL in the environment; readiness
naming real upstreams; and, on the resolved policies, a backoff base no larger than its max.
"""

from __future__ import annotations

import ipaddress

from yarl import URL

from ..errors import TlsFileError
from ..routing import PathPattern
from ..tls import tls_context
from ..units import shown
from .document import Config
from .fields import proxy_url_ok
from .policy import env_proxy_url, proxy_setting
from .spec import PoliciesSpec, RouteSpec, UpstreamSpec

__all__ = ["cross_checks"]


def cross_checks(config: Config) -> list[str]:
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
        scopes: list[tuple[str, PoliciesSpec | RouteSpec]] = [(f"upstreams.{name}", up)]
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
        for resolved in config.policies:
            for policy in (*resolved.routes, resolved.default):
                where = f"upstreams.{resolved.name}"
                if policy is not resolved.default:
                    where += f" route {policy.name!r}"
                if policy.retry.backoff.base > policy.retry.backoff.max:
                    problems.append(f"{where}: retry.backoff.base is larger than retry.backoff.max")
    return problems


_READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def _route_extras(here: str, route: RouteSpec, kind: str, params: tuple[str, ...]) -> list[str]:
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


def _egress_checks(config: Config, name: str, up: UpstreamSpec) -> list[str]:
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
    setting = proxy_setting(config.defaults, up)
    value = config.proxy_env.get(f"{url.scheme}_proxy")
    if setting == "env" and value and not proxy_url_ok(env_proxy_url(value)):
        variable = f"{url.scheme.upper()}_PROXY"  # its value may hold a password: not quoted
        at = where if "proxy" in up.model_fields_set else "defaults"
        problems.append(f"{at}.proxy: 'env' reads {variable}, which is not an http:// proxy URL with a host")
    return problems
