"""Loading gateway.yaml: text → interpolated data → a validated ``Config``, every problem on one line.

Owns reading the file (``load_config``; ``config_path``: --config, then $GATEWAY_CONFIG, then
./gateway.yaml), strict YAML (``gateway.yamlfile``), ``${VAR}`` / ``${VAR:-default}`` interpolation
of string values (``$$`` a literal ``$``; ``escape_dollars`` undoes it for text read again), the
wording of validation errors (``upstreams.gemini.timeouts.per_try: expected a duration like
'10s', got 'ten'``, unknown keys with the keys allowed there), then ``check``'s cross-key checks;
and ``redacted``: the configuration with its effective policies and every secret as ``***``
(``gateway check``, ``/admin/config``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .. import yamlfile
from ..errors import ConfigError
from ..units import shown
from ..yamlfile import allowed_keys, key_path
from .check import cross_checks
from .document import Config
from .fields import redact_url
from .policy import proxy_environment
from .spec import RATE_LIMIT_TAGS

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "config_path",
    "escape_dollars",
    "interpolate",
    "load_config",
    "parse_config",
    "redacted",
]

DEFAULT_CONFIG_PATH = "gateway.yaml"


_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _path(loc: tuple[Any, ...]) -> str:
    return key_path(_untagged(loc))


def _untagged(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """``loc`` without the branch tags of ``rate_limit``'s one-or-list union."""
    return tuple(p for i, p in enumerate(loc) if not (p in RATE_LIMIT_TAGS and i and loc[i - 1] == "rate_limit"))


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


def parse_config(text: str, source: str = "<string>", env: Mapping[str, str] | None = None) -> Config:
    """Parse and validate gateway.yaml text. Raises ConfigError listing every problem."""
    try:
        data = yamlfile.load_mapping(text)
    except yamlfile.YamlError as exc:
        raise ConfigError(source, [exc.problem]) from None
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
    problems = cross_checks(config)
    if problems:
        raise ConfigError(source, problems)
    config.policies  # noqa: B018 -- resolved here, once, whether or not the checks needed them
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
    for up in config.policies:
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
        data["cache_store"]["url"] = redact_url(config.cache_store.url)
    return data
