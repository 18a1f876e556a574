"""Configuration: gateway.yaml from text to finished, frozen per-route policies, in three layers.

- ``spec``: the blocks as written, one pydantic model each (``UpstreamSpec``, ``RouteSpec``,
  ``BreakerSpec`` …), unknown keys refused, units parsed by ``fields`` (``Duration``, ``Size`` …);
- ``policy``: inheritance defaults → upstream → route, key by key, into the ``RoutePolicy`` and
  ``UpstreamPolicy`` objects the request path only reads (live objects built from them, pools and
  breakers, are ``runtime``'s ``Upstream`` and ``Route``);
- ``document``: ``Config``, the whole file, which carries its resolved ``policies`` (resolved once,
  at load);
- ``load``: reading (strict YAML, ``${VAR}`` / ``${VAR:-default}`` interpolation), validation with
  one line per problem naming the key path (``upstreams.gemini.timeouts.per_try: expected a
  duration like '10s', got 'ten'``), and ``redacted`` (the effective configuration, secrets as ``***``);
- ``check``: the checks across blocks.

Secrets (``set_headers`` values, ``admin.token``, passwords in URLs, an egress ``proxy``'s
credentials) serialize as ``***``. ``proxy: env`` is read from the environment the file is loaded
with (``HTTPS_PROXY``, ``HTTP_PROXY``, ``NO_PROXY``), as ``${VAR}`` is; ``tls:`` files are loaded
once at validation, so a missing file or a bad PEM is a configuration error.
"""

from ..errors import ConfigError
from .document import Config
from .fields import METHODS, Duration, Method, OutcomeToken, Pattern, Percent, Proxy, Rate, Secret, Size
from .load import DEFAULT_CONFIG_PATH, config_path, escape_dollars, interpolate, load_config, parse_config, redacted
from .policy import KIND_LIMITS, RoutePolicy, UpstreamPolicy, egress_proxy, merge, proxy_environment
from .spec import (
    AdminServerSpec,
    AdminSpec,
    BackoffSpec,
    BreakerSpec,
    BudgetSpec,
    CacheSpec,
    CacheStoreSpec,
    DrainSpec,
    FaultAbortSpec,
    FaultDelaySpec,
    FaultSpec,
    IdempotencySpec,
    LimitsSpec,
    ListenerSpec,
    ListenSpec,
    LogSpec,
    PoliciesSpec,
    PoolSpec,
    QuotaSpec,
    RateLimitSpec,
    ReadinessSpec,
    RetryAfterSpec,
    RetrySpec,
    RouteMatchSpec,
    RouteSpec,
    ServerSpec,
    TimeoutsSpec,
    TlsSpec,
    UpstreamSpec,
)

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "KIND_LIMITS",
    "METHODS",
    "AdminServerSpec",
    "AdminSpec",
    "BackoffSpec",
    "BreakerSpec",
    "BudgetSpec",
    "CacheSpec",
    "CacheStoreSpec",
    "Config",
    "ConfigError",
    "DrainSpec",
    "Duration",
    "FaultAbortSpec",
    "FaultDelaySpec",
    "FaultSpec",
    "IdempotencySpec",
    "LimitsSpec",
    "ListenSpec",
    "ListenerSpec",
    "LogSpec",
    "Method",
    "OutcomeToken",
    "Pattern",
    "Percent",
    "PoliciesSpec",
    "PoolSpec",
    "Proxy",
    "QuotaSpec",
    "Rate",
    "RateLimitSpec",
    "ReadinessSpec",
    "RetryAfterSpec",
    "RetrySpec",
    "RouteMatchSpec",
    "RoutePolicy",
    "RouteSpec",
    "Secret",
    "ServerSpec",
    "Size",
    "TimeoutsSpec",
    "TlsSpec",
    "UpstreamPolicy",
    "UpstreamSpec",
    "config_path",
    "egress_proxy",
    "escape_dollars",
    "interpolate",
    "load_config",
    "merge",
    "parse_config",
    "proxy_environment",
    "redacted",
]
