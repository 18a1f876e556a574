"""Strict YAML for the files people write: gateway.yaml and the simulator's scenarios.

Owns reading YAML the way both files are read — a SafeLoader that refuses a key written twice in
one mapping, reads only ``true``/``false`` as booleans (YAML 1.2: the retry block's ``on:`` stays a
key), and turns a scalar its tag cannot read into a located error — and the one-line problem text
for anything the loader refuses (``line 2, column 1: invalid YAML: duplicate key 'seed' (first
written on line 1)``). It also owns naming a place in a validated document: ``key_path`` writes a
pydantic error location as ``upstreams.a.routes[0].match``, and ``allowed_keys`` lists the keys a
model accepts at a location, for "unknown key" hints. ``gateway.config`` and ``gateway_sim`` both
use it; nothing here knows either file's keys.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import yaml
from pydantic import BaseModel

from .units import shown

__all__ = ["StrictLoader", "YamlError", "allowed_keys", "annotation_at", "clip", "key_path", "load", "load_mapping"]


class YamlError(ValueError):
    """The text is not YAML the strict loader reads; ``problem`` is one line saying where and what."""

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem


def clip(text: str, limit: int = 200) -> str:
    """The first line of ``text``, cut to ``limit`` characters, what cannot be printed escaped."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    line = "".join(c if c.isprintable() else repr(c)[1:-1] for c in line)
    return line if len(line) <= limit else line[: limit - 1] + "…"


class StrictLoader(yaml.SafeLoader):
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
                    None, None, f"duplicate key {shown(key)} (first written on line {line})", key_node.start_mark
                )
            first_line[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except ValueError as exc:  # a scalar its tag cannot read: '!!int x', an integer of 5000 digits, a bad date
            problem = "a number with too many digits" if "integer string conversion" in str(exc) else clip(str(exc))
            raise yaml.constructor.ConstructorError(None, None, problem, node.start_mark) from None


# The class's own copy of SafeLoader's resolvers, without YAML 1.1's booleans, then YAML 1.2's.
StrictLoader.yaml_implicit_resolvers = {
    first: [(tag, regex) for tag, regex in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def load(text: str) -> Any:
    """The document in ``text`` (None when empty). Raises ``YamlError`` with a one-line problem."""
    try:
        return yaml.load(text, Loader=StrictLoader)
    except yaml.YAMLError as exc:
        raise YamlError(_problem(exc, text)) from None
    except RecursionError:
        raise YamlError("invalid YAML: nested too deeply") from None


def load_mapping(text: str) -> dict[Any, Any]:
    """``load``, for a file whose top level is a mapping (an empty file is an empty one)."""
    data = load(text)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise YamlError(f"expected a mapping at the top level, got {type(data).__name__}")
    return data


def _problem(exc: yaml.YAMLError, text: str) -> str:
    """One line: where (line, column) and what, for any error of the YAML loader."""
    mark = getattr(exc, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    if isinstance(exc, yaml.reader.ReaderError) and isinstance(exc.position, int):  # a character YAML refuses
        line = text.count("\n", 0, exc.position) + 1
        where = f"line {line}, column {exc.position - text.rfind(chr(10), 0, exc.position)}: "
    problem = getattr(exc, "problem", None) or str(exc)
    return f"{where}invalid YAML: {clip(problem)}"


def key_path(loc: Sequence[Any]) -> str:
    """A validation error's location as written in the file: ``upstreams.a.routes[0].match``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            text = str(part)
            if len(text) > 60 or not text.isprintable():  # a key as written: kept to one short line
                text = shown(text)
            out += ("." if out else "") + text
    return out or "(top level)"


def annotation_at(annotation: Any, part: Any) -> Any:
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
        found = annotation_at(arg, part)
        if found is not None:
            return found
    return None


def allowed_keys(model: type[BaseModel], loc: Sequence[Any]) -> tuple[str, ...]:
    """The keys allowed where an unknown key ``loc`` was written (``loc`` includes that key)."""
    annotation: Any = model
    for part in loc[:-1]:
        annotation = annotation_at(annotation, part)
    for arg in (annotation, *getattr(annotation, "__args__", ())):  # Optional[Model]
        fields = getattr(arg, "model_fields", None)
        if fields:
            return tuple(fields)
    return ()
