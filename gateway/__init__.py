"""inbox-gateway: a resilience sidecar between the inbox backend and its APIs.

The backend points its WhatsApp Graph, Gemini and Supabase base URLs at the gateway; the gateway
forwards each call under the policies of gateway.yaml and answers health, breaker state and
metrics on its admin port. The modules, in the order a request meets them:

- ``config``: gateway.yaml → validated models → finished per-route policies
- ``hygiene``: refusals and header filters;  ``routing``: prefixes and path patterns
- ``listener``: the ports' hardened client connections;  ``aiohttp_compat``: every aiohttp private name
- ``proxy``: the request path, a package with one module per stage (``proxy/handler.py`` lists them)
- ``retry``: when to try again;  ``outcomes``: what a try came to, and the error it becomes
- ``idempotency``: Idempotency-Key claims, replays and what an outcome keeps (memory or Redis)
- ``cache``: HTTP cache rules, keys, collapsing;  ``cachestore``: where entries live (memory)
- ``breaker``, ``limits``, ``ratelimit``, ``fault``, ``window``: the resilience policies
- ``quota``: Gemini's per-model rpm, tpm and rpd, kept before Google enforces them
- ``runtime``: per-config state (pools, budgets);  ``pool``: upstream connections, egress proxy;  ``tls``
- ``server``: the process's lifecycle (listeners, drain, reload);  ``state``: what requests and admin read
- ``answers``: the gateway's own answers, in each upstream's error format (``errors``: their types)
- ``admin``, ``metrics``, ``stats``, ``logs``: what operators see;  ``cli``: the command line
- ``statuspage``, ``history``: the admin port's status page and its 15 minutes of history
- ``yamlfile``: the strict YAML reader gateway.yaml and the simulator's scenarios share

The simulator behind ``gateway sim`` is the separate package ``gateway_sim`` (the ``sim`` extra).
"""

from .config import Config, ConfigError, load_config, parse_config
from .errors import GatewayError

__version__ = "0.1.0"

__all__ = ["Config", "ConfigError", "GatewayError", "__version__", "load_config", "parse_config"]
