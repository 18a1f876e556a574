"""config/gateway.schema.json: up to date with the models, and agreeing with the shipped files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from gateway import schema
from gateway.yamlfile import StrictLoader

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = [ROOT / "gateway.yaml", *sorted((ROOT / "config" / "examples").glob("*.yaml"))]  # scenarios/ are the sim's


def _raw(path: Path) -> object:
    """The file as written (no interpolation), read as the gateway reads YAML: `on:` is a string key."""
    return yaml.load(path.read_text(encoding="utf-8"), Loader=StrictLoader)


def test_committed_schema_is_current():
    committed = (ROOT / "config" / "gateway.schema.json").read_text(encoding="utf-8")
    assert json.loads(committed) == schema.json_schema(), "stale: run python -m gateway.schema --write"
    assert committed == schema.render()


def test_render_is_sorted_indented_and_ends_with_a_newline():
    text = schema.render()
    assert text.endswith("}\n") and not text.endswith("\n\n")
    assert text == json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n"


def test_schema_header():
    data = schema.json_schema()
    assert data["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert data["title"] == "gateway.yaml"
    assert data["additionalProperties"] is False


def test_defaults_are_written_as_in_gateway_yaml():
    defs = schema.json_schema()["$defs"]
    assert defs["Timeouts"]["properties"]["per_try"]["default"] == "10s"
    assert defs["Backoff"]["properties"]["base"]["default"] == "100ms"
    assert defs["CacheStore"]["properties"]["max_bytes"]["default"] == "64MiB"
    assert defs["Breaker"]["properties"]["failure_rate"]["default"] == "50%"
    assert defs["Retry"]["properties"]["budget"]["default"]["window"] == "10s"


def test_main_prints_and_checks(capsys):
    assert schema.main([]) == 0
    assert capsys.readouterr().out == schema.render()
    assert schema.main(["--check"]) == 0


def test_main_check_fails_on_a_stale_file(tmp_path, monkeypatch, capsys):
    stale = tmp_path / "gateway.schema.json"
    stale.write_text("{}\n", encoding="utf-8")
    monkeypatch.setattr(schema, "SCHEMA_PATH", stale)
    assert schema.main(["--check"]) == 1
    assert "stale" in capsys.readouterr().err
    assert schema.main(["--write"]) == 0
    assert stale.read_text(encoding="utf-8") == schema.render()
    assert schema.main(["--check"]) == 0


@pytest.fixture(scope="module")
def validator():
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.Draft202012Validator.check_schema(schema.json_schema())
    return jsonschema.Draft202012Validator(schema.json_schema())


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(ROOT)))
def test_shipped_file_validates_against_the_schema(validator, path):
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(_raw(path))]
    assert errors == []


@pytest.mark.parametrize(
    ("document", "where"),
    [
        ({"listn": {}}, ""),
        ({"upstreams": {"a": {"kind": "graph"}}}, "upstreams.a"),
        ({"upstreams": {"Bad Name": {"url": "http://x"}}}, "upstreams"),
        ({"defaults": {"timeouts": {"per_try": "ten"}}}, "defaults.timeouts.per_try"),
        ({"defaults": {"timeouts": {"per_try": 10}}}, "defaults.timeouts.per_try"),
        ({"defaults": {"retry": {"methods": ["FETCH"]}}}, "defaults.retry.methods.0"),
        ({"cache_store": {"max_bytes": "lots"}}, "cache_store.max_bytes"),
        ({"log": {"level": "loud"}}, "log.level"),
    ],
)
def test_schema_rejects_what_the_loader_rejects(validator, document, where):
    def paths(errors):  # with the errors inside anyOf (optional blocks)
        for e in errors:
            yield ".".join(map(str, e.absolute_path))
            yield from paths(e.context or ())

    assert where in set(paths(validator.iter_errors(document)))
