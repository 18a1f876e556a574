"""gateway.yaml: shipped files load, broken files get one exact line each, inheritance, secrets.

No servers. Ten broken files run through the real program (``python -m gateway check``) as
subprocesses started all at once; the other command-line cases run ``gateway.cli.main`` in this
process: the same code without an interpreter start-up (about half a second) each.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from gateway import __version__, cli
from gateway.config import ConfigError, load_config, parse_config, redacted

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = [ROOT / "gateway.yaml", *sorted((ROOT / "config" / "examples").glob("*.yaml"))]  # scenarios/ are the sim's


def _id(path: Path) -> str:
    return str(path.relative_to(ROOT))


# --------------------------------------------------------------------------- shipped files


def test_examples_exist():
    names = {p.name for p in (ROOT / "config" / "examples").glob("*.yaml")}
    assert {"minimal.yaml", "sim.yaml", "production.yaml"} <= names


@pytest.mark.parametrize("path", SHIPPED, ids=_id)
def test_shipped_file_loads_in_a_clean_environment(path):
    """Every ${VAR} in a shipped file has a default: an empty environment is enough."""
    config = parse_config(path.read_text(encoding="utf-8"), str(path), env={})
    assert config.upstreams
    for up in config.policies:
        assert up.url.scheme in ("http", "https")


def test_shipped_gateway_yaml_is_the_contract_example():
    config = load_config(str(ROOT / "gateway.yaml"))
    assert list(config.upstreams) == ["graph", "lookaside", "gemini", "supabase"]
    gemini = {up.name: up for up in config.policies}["gemini"]
    assert [r.name for r in gemini.routes] == ["generate", "stream"]
    assert gemini.set_headers == {}  # GEMINI_API_KEY unset: nothing injected


def test_sim_example_points_at_local_simulators():
    config = parse_config((ROOT / "config/examples/sim.yaml").read_text(), "sim.yaml", env={})
    assert set(config.upstreams) == {"graph", "lookaside", "gemini", "supabase"}
    for up in config.policies:
        assert up.url.host == "127.0.0.1", up.name
        assert up.url.port is not None and 8081 <= up.url.port <= 8089, up.name


def test_production_example_takes_the_admin_token_from_the_environment():
    text = (ROOT / "config/examples/production.yaml").read_text()
    assert parse_config(text, "p.yaml", env={}).admin.token == ""
    assert parse_config(text, "p.yaml", env={"GATEWAY_ADMIN_TOKEN": "t0k"}).admin.token == "t0k"


# --------------------------------------------------------------------------- broken files


@dataclass(frozen=True)
class Broken:
    name: str
    text: str
    expected: str  # the whole stderr line after "PATH: "
    subprocess: bool = True


UP = "upstreams:\n  a:\n    url: http://127.0.0.1:9\n"

BROKEN = [
    Broken(
        "yaml_syntax",
        "listen: {host: 127.0.0.1, port: 8080\n",
        "line 2, column 1: invalid YAML: expected ',' or '}', but got '<stream end>'",
    ),
    Broken(
        "unknown_top_level_key",
        "listn: {port: 8080}\n",
        "listn: unknown key (expected one of: listen, admin, log, drain, watch, cache_store, defaults, "
        "upstreams, readiness, server)",
    ),
    Broken(
        "unknown_nested_key",
        UP + "    routes:\n      - match: {path: /x, method: [GET]}\n",
        "upstreams.a.routes[0].match.method: unknown key (expected one of: methods, path)",
    ),
    Broken(
        "bad_duration",
        "upstreams:\n  gemini:\n    url: https://g.example\n    timeouts: {per_try: ten}\n",
        "upstreams.gemini.timeouts.per_try: expected a duration like '10s', got 'ten'",
    ),
    Broken(
        "bad_size",
        "cache_store: {max_bytes: 64MB5}\n",
        "cache_store.max_bytes: expected a size like '1MiB' (units B KB MB GB KiB MiB GiB), got '64MB5'",
    ),
    Broken(
        "entry_over_store",
        "cache_store: {max_bytes: 1MiB, max_entry_bytes: 2MiB}\n",
        "cache_store.max_entry_bytes: 2097152 bytes is over max_bytes (1048576 bytes)",
    ),
    Broken(
        "missing_env_var",
        "upstreams:\n  a:\n    url: ${GW_TEST_UNSET_URL}\n",
        "upstreams.a.url: environment variable GW_TEST_UNSET_URL is not set and has no default",
    ),
    Broken(
        "pattern_unclosed_brace",
        UP + '    routes:\n      - match: {path: "/{a"}\n',
        "upstreams.a.routes[0].match.path: unclosed '{' in '/{a'",
    ),
    Broken(
        "pattern_double_star_inside",
        UP + '    routes:\n      - match: {path: "/a/**/b"}\n',
        "upstreams.a.routes[0].match.path: '**' must be the last segment, in '/a/**/b'",
    ),
    Broken(
        "rate_limit_key_not_a_parameter",
        UP + '    routes:\n      - match: {path: "/{v}/{phone_id}/messages"}\n'
        "        rate_limit: {rate: 80/s, key: phone}\n",
        "upstreams.a.routes[0].rate_limit.key: 'phone' is not a parameter of the route's path "
        "'/{v}/{phone_id}/messages' (parameters: v, phone_id)",
    ),
    Broken(
        "admin_off_loopback_without_token",
        "admin: {listen: {host: 0.0.0.0, port: 9901}}\n",
        "admin.token: required when admin.listen.host is not loopback (got host '0.0.0.0'); set GATEWAY_ADMIN_TOKEN",
    ),
    Broken(
        "duplicate_key",
        UP + "    kind: graph\n    kind: gemini\n",
        "line 5, column 5: invalid YAML: duplicate key 'kind' (first written on line 4)",
        subprocess=False,
    ),
    Broken(
        "bad_retry_method",
        "defaults:\n  retry: {methods: [GET, FETCH]}\n",
        "defaults.retry.methods[1]: expected one of GET HEAD POST PUT PATCH DELETE OPTIONS, got 'FETCH'",
        subprocess=False,
    ),
    Broken(
        "bad_outcome_token",
        "defaults:\n  retry: {on: [timeout, 6xx]}\n",
        "defaults.retry.on[1]: expected an outcome: connect-failure, timeout, reset, a status like 503, "
        "a class like 5xx, or code:N; got '6xx'",
        subprocess=False,
    ),
    Broken(
        "url_not_http",
        "upstreams:\n  a:\n    url: ftp://files.example\n",
        "upstreams.a.url: expected an http(s) URL with a host and no query, got 'ftp://files.example'",
        subprocess=False,
    ),
    Broken(
        "same_prefix_twice",
        "upstreams:\n  a: {url: 'http://127.0.0.1:1', prefix: /api}\n  b: {url: 'http://127.0.0.1:2', prefix: /api}\n",
        "upstreams.b.prefix: '/api' is already the prefix of upstream 'a'",
        subprocess=False,
    ),
    Broken(
        "default_prefix_taken",
        "upstreams:\n  a: {url: 'http://127.0.0.1:1', prefix: /b}\n  b: {url: 'http://127.0.0.1:2'}\n",
        "upstreams.b.prefix: '/b' is already the prefix of upstream 'a'",
        subprocess=False,
    ),
    Broken(
        "missing_required_url",
        "upstreams:\n  a:\n    kind: graph\n",
        "upstreams.a.url: required key is missing",
        subprocess=False,
    ),
    Broken(
        "credentials_in_an_upstream_url",
        "upstreams:\n  a:\n    url: http://svc:p4ss-w0rd@127.0.0.1:9\n",
        "upstreams.a.url: credentials in the URL are not accepted (aiohttp would send them as Basic auth and "
        "refuse any request that carries its own Authorization): remove them and send the header with "
        "set_headers, e.g. set_headers: {authorization: 'Basic ${UPSTREAM_BASIC_AUTH}'}",
        subprocess=False,  # the program runs in a temporary directory: the installed gateway, not this tree
    ),
    Broken(
        "bare_token_in_an_upstream_url",
        "upstreams:\n  a:\n    url: https://t0k3n-v4lue@api.example/v1\n",
        "upstreams.a.url: credentials in the URL are not accepted (aiohttp would send them as Basic auth and "
        "refuse any request that carries its own Authorization): remove them and send the header with "
        "set_headers, e.g. set_headers: {authorization: 'Basic ${UPSTREAM_BASIC_AUTH}'}",
        subprocess=False,
    ),
    Broken(
        "redact_query_not_a_list",
        "log: {redact_query: session}\n",
        "log.redact_query: expected a list of query parameter names, got 'session'",
        subprocess=False,
    ),
    Broken(
        "redact_query_bad_name",
        "log: {redact_query: [session, 'a=b']}\n",
        "log.redact_query: expected query parameter names (printable, no '&', '=', '#' or space), got 'a=b'",
        subprocess=False,
    ),
    Broken(
        "headers_with_underscores_unknown",
        "server: {headers_with_underscores: yes}\n",
        "server.headers_with_underscores: input should be 'allow', 'drop' or 'reject', got 'yes'",
        subprocess=False,
    ),
    Broken(
        "max_chunk_line_too_small",
        "server: {max_chunk_line: 10}\n",
        "server.max_chunk_line: input should be greater than or equal to 64, got 10",
        subprocess=False,
    ),
    Broken(
        "admin_server_unknown_key",
        "server: {admin: {max_conections: 10}}\n",
        "server.admin.max_conections: unknown key (expected one of: header_timeout, keepalive_timeout, "
        "max_connections, max_request_line, max_header_size, max_headers, max_chunk_line)",
        subprocess=False,
    ),
    Broken(
        "on_is_not_a_boolean",
        "defaults:\n  retry: {on: [timeout], off: [503]}\n",
        "defaults.retry.off: unknown key (expected one of: attempts, backoff, on, methods, retry_after, "
        "budget, max_replay_body, waits)",
        subprocess=False,
    ),
]


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "GW_TEST_"))}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("configs")
    for case in BROKEN:
        (path / f"{case.name}.yaml").write_text(case.text, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def program(workdir) -> dict[str, subprocess.CompletedProcess[str]]:
    """``python -m gateway check`` on every subprocess case, all started at once, keyed by case name."""
    running = {
        case.name: subprocess.Popen(
            [sys.executable, "-m", "gateway", "check", "--config", str(workdir / f"{case.name}.yaml")],
            cwd=workdir,
            env=_clean_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for case in BROKEN
        if case.subprocess
    }
    done = {}
    for name, proc in running.items():
        out, err = proc.communicate(timeout=60)
        done[name] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    return done


def test_at_least_ten_broken_files_go_through_the_real_program():
    assert sum(case.subprocess for case in BROKEN) >= 10


@pytest.mark.slow  # the module's `program` fixture runs all eleven at once: about 16 s
@pytest.mark.parametrize("case", [c for c in BROKEN if c.subprocess], ids=lambda c: c.name)
def test_broken_file_through_the_program(case, program, workdir):
    result = program[case.name]
    assert result.returncode == 1, result.stderr
    assert result.stderr.splitlines() == [f"{workdir / case.name}.yaml: {case.expected}"]
    assert result.stdout == ""


@pytest.mark.parametrize("case", [c for c in BROKEN if not c.subprocess], ids=lambda c: c.name)
def test_broken_file_through_cli_main(case, workdir, capsys):
    path = workdir / f"{case.name}.yaml"
    assert cli.main(["check", "--config", str(path)]) == 1
    out, err = capsys.readouterr()
    assert err.splitlines() == [f"{path}: {case.expected}"]
    assert out == ""


def test_missing_file_is_one_clear_line(tmp_path, capsys):
    assert cli.main(["check", "--config", str(tmp_path / "absent.yaml")]) == 1
    out, err = capsys.readouterr()
    assert (out, err) == ("", f"{tmp_path / 'absent.yaml'}: cannot read the file: No such file or directory\n")


def test_every_problem_is_reported_at_once():
    text = UP + "    timeouts: {per_try: ten, total: 1}\n    limits: {max_request_body: lots}\n"
    with pytest.raises(ConfigError) as info:
        parse_config(text, "g.yaml", env={})
    assert str(info.value).splitlines() == [
        "g.yaml: upstreams.a.timeouts.per_try: expected a duration like '10s', got 'ten'",
        "g.yaml: upstreams.a.timeouts.total: expected a duration like '10s', got 1",
        "g.yaml: upstreams.a.limits.max_request_body: expected a size like '1MiB' (units B KB MB GB KiB MiB GiB), "
        "got 'lots'",
    ]


def test_unhashable_yaml_key_is_a_config_error():
    with pytest.raises(ConfigError, match="invalid YAML: found unhashable key"):
        parse_config("? [a, b]\n: 1\n", "g.yaml", env={})


def test_top_level_must_be_a_mapping():
    with pytest.raises(ConfigError, match="expected a mapping at the top level, got list"):
        parse_config("- a\n", "g.yaml", env={})


# --------------------------------------------------------------------------- interpolation


def test_var_and_default_interpolation():
    text = (
        "admin: {token: '${TOKEN}'}\n"
        "upstreams:\n"
        "  a:\n"
        "    url: ${A_URL:-http://127.0.0.1:1}\n"
        "    set_headers: {x-key: 'pre-${KEY:-none}-post'}\n"
    )
    config = parse_config(text, "g.yaml", env={"TOKEN": "s3cret"})
    assert config.admin.token == "s3cret"
    assert config.upstreams["a"].url == "http://127.0.0.1:1"
    assert config.upstreams["a"].set_headers == {"x-key": "pre-none-post"}

    config = parse_config(text, "g.yaml", env={"TOKEN": "t", "A_URL": "https://a.example/", "KEY": "k"})
    assert config.upstreams["a"].url == "https://a.example"  # trailing slash removed
    assert config.upstreams["a"].set_headers == {"x-key": "pre-k-post"}


def test_empty_variable_takes_the_default_like_the_shell():
    text = "admin: {token: '${TOKEN:-fallback}'}\n"
    assert parse_config(text, "g.yaml", env={"TOKEN": ""}).admin.token == "fallback"
    # set but empty, with no default: as unset, an error that names the variable
    with pytest.raises(ConfigError, match=r"admin.token: environment variable TOKEN is empty and has no default"):
        parse_config("admin: {token: '${TOKEN}'}\n", "g.yaml", env={"TOKEN": ""})


def test_double_dollar_is_a_literal_dollar():
    text = "admin: {token: 'pa$$word-$${NOT_A_VAR}-$$$${X}'}\n"
    assert parse_config(text, "g.yaml", env={"NOT_A_VAR": "no"}).admin.token == "pa$word-${NOT_A_VAR}-$${X}"


def test_interpolated_values_are_not_interpolated_again():
    config = parse_config("admin: {token: '${A}'}\n", "g.yaml", env={"A": "${B}", "B": "b"})
    assert config.admin.token == "${B}"


def test_interpolation_feeds_typed_keys():
    text = "listen: {port: '${PORT:-8088}'}\ndefaults:\n  timeouts: {total: '${TOTAL:-4s}'}\n"
    config = parse_config(text, "g.yaml", env={"PORT": "9000"})
    assert config.listen.port == 9000
    assert config.defaults.timeouts is not None and config.defaults.timeouts.total == 4.0


def test_missing_variables_are_each_named():
    text = "admin: {token: '${T1}'}\nupstreams:\n  a: {url: '${U1}', set_headers: {k: '${K1:-ok}'}}\n"
    with pytest.raises(ConfigError) as info:
        parse_config(text, "g.yaml", env={})
    assert info.value.problems == [
        "admin.token: environment variable T1 is not set and has no default",
        "upstreams.a.url: environment variable U1 is not set and has no default",
    ]


# --------------------------------------------------------------------------- inheritance

INHERIT = """
defaults:
  timeouts: {per_try: 4s}
  retry: {attempts: 5, on: [timeout, 503], backoff: {max: 3s}}
  breaker: {recovery: 10s}
  limits: {max_concurrent: 7}
upstreams:
  up:
    url: http://127.0.0.1:1
    timeouts: {total: 20s}
    retry: {on: [connect-failure, 502]}
    breaker: {failure_threshold: 9}
    routes:
      - name: tuned
        match: {methods: [post], path: "/x/{id}"}
        timeouts: {idle: 7s}
        retry: {on: [429], backoff: {base: 10ms}}
        breaker: {failure_threshold: 2}
      - match: {path: /y}
"""


def _policies():
    (up,) = parse_config(INHERIT, "g.yaml", env={}).policies
    return up, {r.name: r for r in up.routes}


def test_timeouts_inherit_key_by_key():
    up, routes = _policies()
    t = routes["tuned"].timeouts
    assert (t.connect, t.per_try, t.idle, t.total) == (3.0, 4.0, 7.0, 20.0)  # built-in, defaults, route, upstream
    d = up.default.timeouts
    assert (d.connect, d.per_try, d.idle, d.total) == (3.0, 4.0, 30.0, 20.0)


def test_lists_are_replaced_whole_and_nested_blocks_merge():
    up, routes = _policies()
    assert up.default.retry.on == ("connect-failure", "502")
    assert routes["tuned"].retry.on == ("429",)
    assert routes["1"].retry.on == ("connect-failure", "502")
    assert routes["tuned"].retry.attempts == 5
    assert (routes["tuned"].retry.backoff.base, routes["tuned"].retry.backoff.max) == (0.01, 3.0)
    assert routes["tuned"].retry.methods == ("GET", "HEAD", "OPTIONS", "PUT", "DELETE")


def test_route_breaker_gets_its_own_name_and_inherits_the_rest():
    up, routes = _policies()
    assert routes["tuned"].breaker_name == "up.tuned"
    assert routes["tuned"].breaker.failure_threshold == 2
    assert routes["tuned"].breaker.recovery == 10.0
    assert routes["1"].breaker_name == up.default.breaker_name == "up"
    assert routes["1"].breaker.failure_threshold == up.breaker.failure_threshold == 9


def test_route_names_methods_and_limits():
    up, routes = _policies()
    assert list(routes) == ["tuned", "1"]
    assert up.default.name == "-"
    assert routes["tuned"].methods == frozenset({"POST"})
    assert routes["1"].methods == frozenset()
    assert routes["tuned"].pattern.match("/x/42") == {"id": "42"}
    assert routes["tuned"].limits.max_concurrent == up.limits.max_concurrent == 7
    assert up.prefix == "/up"


def test_resolved_policies_are_frozen():
    _, routes = _policies()
    with pytest.raises(AttributeError):
        routes["tuned"].name = "other"  # type: ignore[misc]
    with pytest.raises(ValueError):
        routes["tuned"].timeouts.idle = 1.0  # type: ignore[misc]


def test_on_key_under_retry_is_the_string_on():
    config = parse_config("defaults:\n  retry:\n    on: [timeout]\nwatch: true\n", "g.yaml", env={})
    assert config.defaults.retry is not None
    assert config.defaults.retry.on == ("timeout",)
    assert config.watch is True
    assert "on" in config.defaults.retry.model_fields_set


# --------------------------------------------------------------------------- secrets

CANARY_TOKEN = "CANARY-TOKEN-5e1f"
CANARY_HEADER = "CANARY-HEADER-a93d"
CANARY_PASSWORD = "CANARY-PASSWORD-77c2"
SECRET_YAML = f"""
admin: {{listen: {{host: 0.0.0.0}}, token: "${{ADMIN_TOKEN}}"}}
cache_store: {{type: redis, url: "redis://user:{CANARY_PASSWORD}@127.0.0.1:6379/0"}}
upstreams:
  gemini:
    url: https://g.example
    set_headers: {{x-goog-api-key: "{CANARY_HEADER}", X-Empty: ""}}
"""


def test_redacted_shows_secrets_as_stars():
    config = parse_config(SECRET_YAML, "g.yaml", env={"ADMIN_TOKEN": CANARY_TOKEN})
    data = redacted(config)
    text = json.dumps(data)
    assert "CANARY" not in text
    assert data["admin"]["token"] == "***"
    assert data["upstreams"]["gemini"]["set_headers"] == {"x-goog-api-key": "***", "X-Empty": ""}
    assert data["cache_store"]["url"] == "redis://user:***@127.0.0.1:6379/0"
    # the values themselves are intact for the request path
    assert config.admin.token == CANARY_TOKEN
    assert config.policies[0].set_headers == {"x-goog-api-key": CANARY_HEADER}


def test_redact_query_defaults_and_the_contract_five_always():
    default = parse_config("", "g.yaml", env={}).log
    assert default.redact_query[:5] == ("key", "token", "access_token", "apikey", "signature")
    assert {"appsecret_proof", "hash", "oh", "oe", "token_hash", "refresh_token", "api_key"} <= default.secret_params
    own = parse_config("log: {redact_query: [Session, hash, session]}", "g.yaml", env={}).log
    assert own.redact_query == ("session", "hash")  # lower-case, once each, as written
    assert own.secret_params == {"session", "hash", "key", "token", "access_token", "apikey", "signature"}
    assert "appsecret_proof" not in own.secret_params  # a written list replaces the defaults past the five
    assert parse_config("log: {redact_query: []}", "g.yaml", env={}).log.secret_params == {
        "key", "token", "access_token", "apikey", "signature"
    }  # fmt: skip


def test_repr_never_shows_secrets():
    config = parse_config(SECRET_YAML, "g.yaml", env={"ADMIN_TOKEN": CANARY_TOKEN})
    assert "CANARY" not in repr(config) + str(config) + repr(config.policies)


def test_check_output_never_shows_secrets(tmp_path, monkeypatch, capsys):
    path = tmp_path / "secret.yaml"
    path.write_text(SECRET_YAML, encoding="utf-8")
    monkeypatch.setenv("ADMIN_TOKEN", CANARY_TOKEN)
    assert cli.main(["check", "--config", str(path)]) == 0
    out, err = capsys.readouterr()
    assert "CANARY" not in out + err
    shown = yaml.safe_load(out)
    assert shown["admin"]["token"] == "***"
    assert shown["upstreams"]["gemini"]["set_headers"]["x-goog-api-key"] == "***"


# --------------------------------------------------------------------------- command line


@pytest.fixture(scope="module")
def checked() -> str:
    """What `gateway check` prints for the shipped gateway.yaml."""
    return _check_output(ROOT / "gateway.yaml")


def _check_output(path: Path) -> str:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = cli.main(["check", "--config", str(path)])
    assert (status, err.getvalue()) == (0, "")
    return out.getvalue()


def test_check_valid_file_prints_the_effective_yaml(checked):
    assert checked.startswith(f"# {ROOT / 'gateway.yaml'}: valid.")
    shown = yaml.safe_load(checked)
    assert list(shown["upstreams"]) == ["graph", "lookaside", "gemini", "supabase"]
    assert shown["upstreams"]["gemini"]["timeouts"]["total"] == "15s"
    send = shown["upstreams"]["graph"]["routes"][0]
    assert send["retry"]["on"][:2] == ["connect-failure", "429"]
    assert [limit["rate"] for limit in send["rate_limit"]] == ["80/s", "9/m"]
    assert send["rate_limit"][1]["key"] == "body:/to"
    assert send["idempotency"] == {"header": "Idempotency-Key", "ttl": "24h", "required": False}


def test_check_output_is_itself_a_valid_config(checked, tmp_path):
    """What `gateway check` prints loads back to the same effective policies."""
    again = tmp_path / "effective.yaml"
    again.write_text(checked, encoding="utf-8")
    original = load_config(str(ROOT / "gateway.yaml")).policies
    reloaded = load_config(str(again)).policies
    assert [(u.name, u.prefix, u.default.timeouts, u.default.retry, u.breaker, u.limits) for u in reloaded] == [
        (u.name, u.prefix, u.default.timeouts, u.default.retry, u.breaker, u.limits) for u in original
    ]
    for before, after in zip(original, reloaded, strict=True):
        assert [(r.name, r.timeouts, r.retry, r.breaker, r.rate_limit, r.cache) for r in after.routes] == [
            (r.name, r.timeouts, r.retry, r.breaker, r.rate_limit, r.cache) for r in before.routes
        ]


def test_version(capsys):
    assert cli.main(["version"]) == 0
    assert capsys.readouterr().out == f"inbox-gateway {__version__}\n"


def test_gateway_config_env_var_is_used_without_config(tmp_path, monkeypatch, capsys):
    (tmp_path / "elsewhere.yaml").write_text("upstreams:\n  only_here: {url: 'http://127.0.0.1:1'}\n")
    (tmp_path / "gateway.yaml").write_text("upstreams:\n  local_file: {url: 'http://127.0.0.1:1'}\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GATEWAY_CONFIG", str(tmp_path / "elsewhere.yaml"))
    assert cli.main(["check"]) == 0
    assert list(yaml.safe_load(capsys.readouterr().out)["upstreams"]) == ["only_here"]

    assert cli.main(["check", "--config", "gateway.yaml"]) == 0  # --config wins over the variable
    assert list(yaml.safe_load(capsys.readouterr().out)["upstreams"]) == ["local_file"]

    monkeypatch.delenv("GATEWAY_CONFIG")
    assert cli.main(["check"]) == 0  # then ./gateway.yaml
    assert list(yaml.safe_load(capsys.readouterr().out)["upstreams"]) == ["local_file"]


def test_usage_error_exits_2(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["frobnicate"])
    assert info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_a_recovery_above_recovery_max_is_the_ceiling_not_an_error():
    text = "upstreams:\n  api:\n    url: http://127.0.0.1:1\n    breaker: {recovery: 30s}\n"
    (policy,) = parse_config(text).policies
    assert (policy.breaker.recovery, policy.breaker.recovery_max, policy.breaker.ceiling) == (30.0, 2.0, 30.0)
    (policy,) = parse_config(text.replace("{recovery: 30s}", "{recovery: 30s, recovery_max: 10s}")).policies
    assert policy.breaker.ceiling == 30.0


def test_gemini_bodies_default_to_20_mib_under_the_files_defaults():
    """Gemini takes requests of up to 20 MB (inline data): a built-in kind default, which a
    ``defaults.limits.max_request_body`` written in the file still overrides (issue 15)."""

    def limits(text: str) -> dict[str, int]:
        return {up.name: up.limits.max_request_body for up in parse_config(text, "t.yaml").policies}

    ups = "upstreams:\n  g: {url: 'http://127.0.0.1:1', kind: gemini}\n  o: {url: 'http://127.0.0.1:2'}\n"
    assert limits(ups) == {"g": 20 * 1024**2, "o": 10 * 1024**2}
    assert limits("defaults: {limits: {max_request_body: 5MiB}}\n" + ups) == {"g": 5 * 1024**2, "o": 5 * 1024**2}
    shipped = {up.name: up.limits.max_request_body for up in load_config(str(ROOT / "gateway.yaml")).policies}
    assert shipped["gemini"] == 20 * 1024**2 and shipped["graph"] == 10 * 1024**2


async def test_a_loaded_config_is_resolved_once_and_everything_reads_those_policies(monkeypatch):
    """parse_config resolves inheritance once; the runtime, `gateway check`'s redacted() and the
    cross checks read Config.policies instead of resolving again (issue 14)."""
    from gateway.config import document
    from gateway.runtime import Runtime

    calls = []
    real = document.resolve
    monkeypatch.setattr(document, "resolve", lambda *a: calls.append(a) or real(*a))
    config = load_config(str(ROOT / "gateway.yaml"))
    assert len(calls) == 1
    runtime = Runtime(config)
    try:
        redacted(config)
        assert len(calls) == 1
        assert all(up.policy is p for up, p in zip(runtime.upstreams.values(), config.policies, strict=True))
    finally:
        await runtime.close()
    copy = config.model_copy(update={"upstreams": {}})  # a changed copy resolves its own policies
    assert copy.policies == () and len(config.policies) > 0
