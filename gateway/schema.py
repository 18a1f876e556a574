"""JSON Schema of gateway.yaml: derived from ``gateway.config.Config``, shipped as config/gateway.schema.json.

Owns turning the config models into a draft 2020-12 schema for editors and CI, with defaults shown
as they are written in gateway.yaml (``'5s'``, ``'1MiB'``, ``'50%'``) rather than as the numbers
the models hold. The schema checks a file's shape as written, before ``${VAR}`` interpolation;
the cross-key rules (unique prefixes, ``rate_limit.key`` naming a path parameter, an admin token
off loopback) are only checked by ``gateway check``.

``python -m gateway.schema`` prints the schema; ``--write`` rewrites the shipped file;
``--check`` exits 1 when the shipped file is stale.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import CoreSchema, core_schema

from .config import Config

__all__ = ["SCHEMA_PATH", "json_schema", "main", "render"]

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "config" / "gateway.schema.json"
DRAFT = "https://json-schema.org/draft/2020-12/schema"

_WRAPPERS = ("function-before", "function-after", "function-wrap")


def _plain_serializer(schema: CoreSchema) -> Callable[[Any], Any] | None:
    """The plain, no-info serializer of ``schema`` or of the schema its validators wrap, if any."""
    while True:
        ser: Any = schema.get("serialization")
        if ser is not None and ser.get("type") == "function-plain" and not ser.get("info_arg"):
            function: Callable[[Any], Any] = ser["function"]
            return function
        if schema["type"] not in _WRAPPERS:
            return None
        schema = schema["schema"]


class _Generator(GenerateJsonSchema):
    """Writes each default through its field's serializer, as pydantic only does in serialization mode.

    Names the ``$defs`` after the YAML blocks (``Breaker``), not after the Python classes that read
    them (``BreakerSpec``): the shipped schema's names do not follow the code's layer suffixes.
    """

    def normalize_name(self, name: str) -> str:
        return super().normalize_name(name).removesuffix("Spec")

    def default_schema(self, schema: core_schema.WithDefaultSchema) -> JsonSchemaValue:
        json_schema = super().default_schema(schema)
        serialize = _plain_serializer(schema["schema"])
        default = schema.get("default")
        if serialize is not None and default is not None and "default" in json_schema:
            json_schema["default"] = self.encode_default(serialize(default))
        return json_schema


def _close_pattern_maps(node: Any) -> None:
    """Refuse keys that no patternProperties entry matches, as the loader does (``upstreams``).

    Pydantic renders a dict with constrained keys as patternProperties alone, which lets any
    other key through. Changes ``node`` in place.
    """
    if isinstance(node, dict):
        if "patternProperties" in node and "properties" not in node:
            node.setdefault("additionalProperties", False)
        for value in node.values():
            _close_pattern_maps(value)
    elif isinstance(node, list):
        for value in node:
            _close_pattern_maps(value)


def json_schema() -> dict[str, Any]:
    """The JSON Schema of gateway.yaml (a new dict on each call)."""
    schema = Config.model_json_schema(schema_generator=_Generator)
    _close_pattern_maps(schema)
    return {
        "$schema": DRAFT,
        "title": "gateway.yaml",
        **{k: v for k, v in schema.items() if k != "title"},
        "description": "Configuration of inbox-gateway, the resilience reverse proxy (see the contract, section 2).",
    }


def render() -> str:
    """The schema as the shipped file holds it: sorted keys, indent 2, trailing newline."""
    return json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Print the schema, or write or check the shipped file. Returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m gateway.schema", description="JSON Schema of gateway.yaml")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--write", action="store_true", help=f"write {SCHEMA_PATH.name} into config/")
    action.add_argument("--check", action="store_true", help=f"exit 1 when config/{SCHEMA_PATH.name} is stale")
    args = parser.parse_args(argv)
    text = render()
    if args.write:
        SCHEMA_PATH.write_text(text, encoding="utf-8")
        print(f"wrote {SCHEMA_PATH}")
        return 0
    if args.check:
        try:
            current = SCHEMA_PATH.read_text(encoding="utf-8")
        except OSError as exc:
            print(f"{SCHEMA_PATH}: cannot read the file: {exc.strerror or exc}", file=sys.stderr)
            return 1
        if current != text:
            print(f"{SCHEMA_PATH}: stale; run: python -m gateway.schema --write", file=sys.stderr)
            return 1
        return 0
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
