"""gateway-sim: simulated WhatsApp Graph, lookaside, Gemini and Supabase upstreams for the gateway.

A separate distribution from the gateway's runtime (``pip install ".[sim]"`` installs it beside
the gateway; the runtime wheel and Docker image do not carry it), run as ``gateway sim`` or
``python -m gateway_sim``. Each simulated host answers in its real API's shapes
(``../shared/upstream-apis.md``), with faults drawn from a scenario file. The modules:

- ``scenario``: the scenario file (models, parsing, checks);  ``suite``: generated fault schedules
- ``routes``: which route a request is;  ``plan``: what the scenario decides per request
- ``server``: the listeners and the request path;  ``stats``: the counters of ``/_sim/stats``
- ``graph``: Graph messages, business profile, Meta's errors;  ``media``: Graph media and lookaside
- ``gemini``: generation, streams, models, tokens, embeddings, google.rpc errors
- ``postgrest``: Supabase's tables and RPCs;  ``auth``: GoTrue;  ``storage``: Supabase Storage
- ``errors``: which shape an error takes;  ``common``: what the API modules share
- ``limits``: Meta's and Google's rate limits, enforced on the sim's clock
- ``cli``: the ``gateway sim`` command
"""

from .plan import RoutePlan, Verdict
from .routes import ROUTES, UPSTREAMS
from .scenario import Scenario, ScenarioError, load_scenario, parse_scenario
from .server import DEFAULT_PORTS, Sim, start_sim

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_PORTS",
    "ROUTES",
    "UPSTREAMS",
    "RoutePlan",
    "Scenario",
    "ScenarioError",
    "Sim",
    "Verdict",
    "__version__",
    "load_scenario",
    "parse_scenario",
    "start_sim",
]
