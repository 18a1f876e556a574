"""Path patterns and the two-level router: upstream by prefix, then the first matching route."""

from __future__ import annotations

import pytest

from gateway.routing import PathPattern, PatternError, Router

GENERATE = "/{version}/models/{model}:generateContent"


def match(pattern: str, path: str) -> dict[str, str] | None:
    return PathPattern.compile(pattern).match(path)


# --------------------------------------------------------------------------- patterns


def test_parameter_captures_one_segment():
    assert match("/{version}/{phone_id}/messages", "/v21.0/1234567/messages") == {
        "version": "v21.0",
        "phone_id": "1234567",
    }
    assert match("/{version}/{phone_id}/messages", "/v21.0/12/34/messages") is None
    assert match("/{version}/{phone_id}/messages", "/v21.0//messages") is None
    assert PathPattern.compile("/{version}/{phone_id}/messages").params == ("version", "phone_id")


def test_literal_path_matches_exactly():
    assert match("/auth/v1/user", "/auth/v1/user") == {}
    assert match("/auth/v1/user", "/auth/v1/users") is None
    assert match("/auth/v1/user", "/auth/v1/user/") is None
    assert match("/rest/v1/bot_profiles", "/rest/v1/bot.profiles") is None  # '.' is literal


def test_star_matches_within_one_segment():
    assert match("/files/*.png", "/files/cat.png") == {}
    assert match("/files/*.png", "/files/.png") == {}
    assert match("/files/*.png", "/files/a/cat.png") is None
    assert match("/files/*.png", "/files/cat.jpg") is None
    assert match("/v1/*", "/v1/anything") == {}
    assert match("/v1/*", "/v1/a/b") is None


def test_double_star_matches_any_rest_and_the_bare_parent():
    assert match("/storage/**", "/storage/v1/object/a/b.png") == {}
    assert match("/storage/**", "/storage") == {}
    assert match("/storage/**", "/storage/") == {}
    assert match("/storage/**", "/storagex/a") is None
    assert match("/**", "/") == {}
    assert match("/**", "/anything/at/all") == {}
    assert match("/{version}/**", "/v1/models/x") == {"version": "v1"}


def test_literal_colon_in_a_segment():
    for version in ("v1", "v1beta"):
        assert match(GENERATE, f"/{version}/models/gemini-2.0-flash:generateContent") == {
            "version": version,
            "model": "gemini-2.0-flash",
        }
    assert match(GENERATE, "/v1beta/models/gemini-2.0-flash:streamGenerateContent") is None
    assert match(GENERATE, "/v1beta/models/gemini-2.0-flash") is None
    assert match(GENERATE, "/v1beta/models/:generateContent") is None


def test_matching_is_on_the_raw_path():
    assert match("/rest/v1/{table}", "/rest/v1/a%2Fb") == {"table": "a%2Fb"}
    assert match("/a%20b", "/a%20b") == {}


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("/{a", "unclosed '{' in '/{a'"),
        ("/a/**/b", "'**' must be the last segment, in '/a/**/b'"),
        ("/a**", "'**' must be a whole segment, in '/a**'"),
        ("a/b", "expected a path pattern starting with '/', got 'a/b'"),
        ("", "expected a path pattern starting with '/', got ''"),
        ("/{1a}", "bad parameter name '1a' in '/{1a}'"),
        ("/{}", "bad parameter name '' in '/{}'"),
        ("/{a}/{a}", "parameter {a} appears twice in '/{a}/{a}'"),
        ("/a}", "unmatched '}' in '/a}'"),
        ("/a b", "character not allowed in a path segment, in '/a b'"),
        ("/a?x=1", "character not allowed in a path segment, in '/a?x=1'"),
    ],
)
def test_bad_patterns_raise(source, message):
    with pytest.raises(PatternError) as info:
        PathPattern.compile(source)
    assert str(info.value) == message
    assert isinstance(info.value, ValueError)


def test_fill_makes_parameters_literal():
    pattern = PathPattern.compile("/rest/v1/{table}/{id}")
    filled = pattern.fill({"table": "bot_profiles"})
    assert filled.params == ("id",)
    assert filled.match("/rest/v1/bot_profiles/7") == {"id": "7"}
    assert filled.match("/rest/v1/other/7") is None
    assert pattern.fill({}).match("/rest/v1/other/7") == {"table": "other", "id": "7"}


@pytest.mark.parametrize("value", ["a.b", "a*b", "{x}", "a|b", "(x)", "a+b"])
def test_fill_values_match_literally(value):
    filled = PathPattern.compile("/rest/v1/{table}").fill({"table": value})
    assert filled.match(f"/rest/v1/{value}") == {}
    assert filled.match("/rest/v1/aXb") is None


# --------------------------------------------------------------------------- router


def _router(*upstreams):
    """upstreams: (prefix, name, [(methods, pattern, route name), ...])"""
    return Router(
        (prefix, name, [(frozenset(methods), PathPattern.compile(p), route) for methods, p, route in routes])
        for prefix, name, routes in upstreams
    )


def test_prefix_matches_on_a_segment_boundary():
    router = _router(("/graph", "graph", []))
    assert router.match("GET", "/graphx/v1") is None
    assert router.match("GET", "/graphx") is None
    m = router.match("GET", "/graph/v21.0/123")
    assert m is not None and (m.upstream, m.route, m.path) == ("graph", None, "/v21.0/123")
    m = router.match("GET", "/graph")
    assert m is not None and (m.upstream, m.path) == ("graph", "/")


def test_unknown_prefix_is_none():
    assert _router(("/graph", "graph", [])).match("GET", "/gemini/v1") is None
    assert _router(("/graph", "graph", [])).match("GET", "/") is None


def test_longest_prefix_wins_whatever_the_order():
    for order in (1, -1):
        router = _router(*[("/api", "api", []), ("/api/graph", "api-graph", [])][::order])
        m = router.match("GET", "/api/graph/v1")
        assert m is not None and (m.upstream, m.path) == ("api-graph", "/v1")
        m = router.match("GET", "/api/graphs/v1")
        assert m is not None and (m.upstream, m.path) == ("api", "/graphs/v1")


def test_first_matching_route_wins():
    router = _router(
        (
            "/supabase",
            "supabase",
            [
                ((), "/rest/v1/bot_profiles", "profiles"),
                ((), "/rest/v1/{table}", "table"),
                ((), "/**", "anything"),
            ],
        )
    )
    m = router.match("GET", "/supabase/rest/v1/bot_profiles")
    assert m is not None and (m.route, m.params) == ("profiles", {})
    m = router.match("GET", "/supabase/rest/v1/messages")
    assert m is not None and (m.route, m.params) == ("table", {"table": "messages"})
    m = router.match("GET", "/supabase/auth/v1/user")
    assert m is not None and m.route == "anything"


def test_method_filter():
    router = _router(
        (
            "/gemini",
            "gemini",
            [(("POST",), GENERATE, "generate"), (("GET", "HEAD"), "/{version}/models/{model}", "model")],
        )
    )
    m = router.match("POST", "/gemini/v1beta/models/gemini-2.0-flash:generateContent")
    assert m is not None and (m.route, m.params["model"]) == ("generate", "gemini-2.0-flash")
    m = router.match("GET", "/gemini/v1beta/models/gemini-2.0-flash:generateContent")
    assert m is not None and (m.upstream, m.route) == ("gemini", "model")
    m = router.match("DELETE", "/gemini/v1beta/models/x")
    assert m is not None and (m.upstream, m.route, m.params) == ("gemini", None, {})


def test_unmatched_path_uses_the_upstream_with_no_route():
    router = _router(("/graph", "graph", [(("POST",), "/{version}/{phone_id}/messages", "send")]))
    m = router.match("GET", "/graph/v21.0/me")
    assert m is not None
    assert (m.upstream, m.route, m.params, m.path) == ("graph", None, {}, "/v21.0/me")


def test_trailing_slash_in_a_prefix_is_ignored():
    m = _router(("/graph/", "graph", [])).match("GET", "/graph/x")
    assert m is not None and (m.upstream, m.path) == ("graph", "/x")


def test_remembered_matches_are_the_matches() -> None:
    """A router remembers the matches of the paths it was asked for: asked again, in any order,
    with any method, it answers what it answered the first time; long paths are matched afresh."""
    router = Router(
        [
            ("/api", "api", [(frozenset({"GET"}), PathPattern.compile("/items/{id}"), "get-item")]),
            ("/api/graph", "graph", [(frozenset({"POST"}), PathPattern.compile("/{v}/messages"), "send")]),
        ]
    )
    long_id = "x" * 400
    asks = [
        ("GET", "/api/items/7"),
        ("HEAD", "/api/items/7"),
        ("POST", "/api/items/7"),
        ("POST", "/api/graph/v21.0/messages"),
        ("GET", "/api/graph/v21.0/messages"),
        ("GET", "/other"),
        ("GET", f"/api/items/{long_id}"),
    ]
    first = [router.match(method, path) for method, path in asks]
    assert [(m.upstream, m.route, m.params) if m else None for m in first] == [
        ("api", "get-item", {"id": "7"}),
        ("api", "get-item", {"id": "7"}),
        ("api", None, {}),
        ("graph", "send", {"v": "v21.0"}),
        ("graph", None, {}),
        None,
        ("api", "get-item", {"id": long_id}),
    ]
    for method, path in reversed(asks):
        assert router.match(method, path) == first[asks.index((method, path))]
