"""The gateway's own answers in each upstream's error format (contract §3, issue 15).

Table-driven: every format × every gateway code, the rendered body checked against the contract's
shape (a JSON Schema per format) and against the rules that hold across formats (status, headers,
Retry-After only where a wait is known). Then the Meta-code rule on the shipped configs, the choice
of format by kind and path, and the same answers end to end through a real gateway.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import aiohttp
import jsonschema
import pytest
from aiohttp import web
from yarl import URL

from gateway import answers
from gateway.answers import GEMINI, GENERIC, GOTRUE, GRAPH, POSTGREST, STORAGE, answer_format, render
from gateway.config import load_config
from gateway.errors import (
    BadRequest,
    BodyTooLarge,
    BreakerOpen,
    Draining,
    FaultInjected,
    GatewayError,
    NoRoute,
    Overloaded,
    RateLimited,
    RequestTimeout,
    UpstreamReset,
    UpstreamTimeout,
    UpstreamUnreachable,
)

from .support import free_port, gateway_yaml

ROOT = Path(__file__).resolve().parent.parent

# Every code the gateway answers with, as raised on the request path (upstream and attempts known
# where they would be). The contract's idempotency and quota codes are rendered from their code.
ERRORS: list[GatewayError] = [
    NoRoute("no upstream prefix matches the path '/x'"),
    BadRequest("dot segments are refused", upstream="up"),
    BodyTooLarge("the request body is 30 bytes, over the limit of 10", upstream="up"),
    RequestTimeout("the client sent no body data for 1s", upstream="up"),
    RateLimited("rate limit of 1/m reached", upstream="up", retry_after=59.2),
    Overloaded("the queue is full", upstream="up"),
    BreakerOpen("circuit breaker up is open", upstream="up", retry_after=1.5),
    BreakerOpen("circuit breaker up is held open by an operator", upstream="up"),
    UpstreamUnreachable("could not connect to upstream 'up'", upstream="up", attempts=3),
    UpstreamReset("upstream 'up' dropped the connection", upstream="up", attempts=1),
    UpstreamTimeout("upstream 'up': no answer within per_try (7s)", upstream="up", attempts=2),
    FaultInjected("fault.abort fired", upstream="up", status=503),
    FaultInjected("fault.abort fired", upstream="up", status=429),
    FaultInjected("fault.abort fired", upstream="up", status=400),
    Draining("the gateway is shutting down"),
    GatewayError("key in flight", upstream="up", retry_after=1, status=409, code="idempotency_conflict"),
    GatewayError("key reused", upstream="up", status=422, code="idempotency_mismatch"),
    GatewayError("rpm used up", upstream="up", retry_after=20, status=429, code="quota_exhausted"),
    GatewayError("internal error in the gateway", upstream="up"),
]
CONTRACT_CODES = {
    "no_route",
    "bad_request",
    "body_too_large",
    "rate_limited",
    "overloaded",
    "breaker_open",
    "upstream_unreachable",
    "upstream_reset",
    "upstream_timeout",
    "fault_injected",
    "draining",
    "idempotency_conflict",
    "idempotency_mismatch",
    "quota_exhausted",
}
GOOGLE_CANONICAL = {
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
}

_TEXT = {"type": "string", "minLength": 1}
SCHEMAS = {
    GENERIC: {
        "type": "object",
        "required": ["error"],
        "additionalProperties": False,
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "additionalProperties": False,
                "properties": {
                    "code": _TEXT,
                    "message": _TEXT,
                    "upstream": _TEXT,
                    "attempts": {"type": "integer", "minimum": 0},
                    "retry_after_s": {"type": "integer", "minimum": 0},
                },
            }
        },
    },
    GEMINI: {
        "type": "object",
        "required": ["error"],
        "additionalProperties": False,
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message", "status", "details"],
                "additionalProperties": False,
                "properties": {
                    "code": {"type": "integer"},
                    "message": _TEXT,
                    "status": {"enum": sorted(GOOGLE_CANONICAL)},
                    "details": {
                        "type": "array",
                        "minItems": 1,
                        "prefixItems": [
                            {
                                "type": "object",
                                "required": ["@type", "reason", "domain", "metadata"],
                                "properties": {
                                    "@type": {"const": "type.googleapis.com/google.rpc.ErrorInfo"},
                                    "reason": {"type": "string", "pattern": "^[A-Z_]+$"},
                                    "domain": {"const": "gateway"},
                                    "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
                                },
                            },
                            {
                                "type": "object",
                                "required": ["@type", "retryDelay"],
                                "properties": {
                                    "@type": {"const": "type.googleapis.com/google.rpc.RetryInfo"},
                                    "retryDelay": {"type": "string", "pattern": r"^\d+s$"},
                                },
                            },
                        ],
                        "maxItems": 2,
                    },
                },
            }
        },
    },
    GRAPH: {
        "type": "object",
        "required": ["error"],
        "additionalProperties": False,
        "properties": {
            "error": {
                "type": "object",
                "required": ["message", "type", "code", "error_subcode", "is_transient", "fbtrace_id", "error_data"],
                "additionalProperties": False,
                "properties": {
                    "message": _TEXT,
                    "type": {"const": "GatewayException"},
                    "code": {"type": "integer"},
                    "error_subcode": {"type": "integer"},
                    "is_transient": {"type": "boolean"},
                    "fbtrace_id": _TEXT,
                    "error_data": {
                        "type": "object",
                        "required": ["details"],
                        "additionalProperties": False,
                        "properties": {"details": _TEXT},
                    },
                },
            }
        },
    },
    POSTGREST: {
        "type": "object",
        "required": ["code", "message", "details", "hint"],
        "additionalProperties": False,
        "properties": {"code": _TEXT, "message": _TEXT, "details": _TEXT, "hint": _TEXT},
    },
    GOTRUE: {
        "type": "object",
        "required": ["code", "error_code", "msg"],
        "additionalProperties": False,
        "properties": {"code": {"type": "integer"}, "error_code": _TEXT, "msg": _TEXT},
    },
    STORAGE: {
        "type": "object",
        "required": ["statusCode", "error", "message"],
        "additionalProperties": False,
        "properties": {
            "statusCode": {"type": "string", "pattern": r"^\d{3}$"},
            "error": _TEXT,
            "code": _TEXT,
            "message": _TEXT,
        },
    },
}
RID = "req-7f3a"


def _id(error: GatewayError) -> str:
    return f"{error.code}-{error.status}-{'wait' if error.retry_after is not None else 'nowait'}"


def test_every_contract_code_is_in_the_table():
    assert {e.code for e in ERRORS} >= CONTRACT_CODES
    assert set(answers.MAPPINGS) >= CONTRACT_CODES


@pytest.mark.parametrize("fmt", answers.FORMATS)
@pytest.mark.parametrize("error", ERRORS, ids=_id)
def test_rendered_body_has_the_contract_shape(fmt, error):
    rendered = render(error, fmt, RID)
    data = json.loads(rendered.body)
    shape = GENERIC if error.code == "no_route" else fmt  # no upstream was chosen: nothing to imitate
    jsonschema.validate(data, SCHEMAS[shape], cls=jsonschema.Draft202012Validator)
    wait = None if error.retry_after is None else max(0, -int(-error.retry_after // 1))
    assert rendered.status == error.status
    assert rendered.headers["x-gateway-error"] == error.code
    assert rendered.headers["Content-Type"] == "application/json"
    assert rendered.headers.get("Retry-After") == (None if wait is None else str(wait))

    if shape == GENERIC:
        body = data["error"]
        assert (body["code"], body["message"], body.get("upstream")) == (error.code, error.message, error.upstream)
        assert body.get("retry_after_s") == wait
        return
    # The API shapes: the message names the gateway and the upstream; the code is findable.
    if shape == GEMINI:
        body = data["error"]
        info = body["details"][0]
        assert body["code"] == error.status and info["reason"] == error.code.upper()
        where = {"upstream": "up", "attempts": str(error.attempts or 0)} if error.upstream else {}
        assert info["metadata"] == {**where, "request_id": RID}
        delays = [d["retryDelay"] for d in body["details"][1:]]
        assert delays == ([] if wait is None else [f"{wait}s"])
        assert body["status"] == answers.mapping(error.code, error.status).google
        message = body["message"]
    elif shape == GRAPH:
        body = data["error"]
        row = answers.mapping(error.code, error.status)
        assert (body["code"], body["is_transient"]) == (row.meta_code, row.meta_transient)
        assert body["fbtrace_id"] == RID and body["error_data"]["details"] == error.code
        message = body["message"]
    elif shape == POSTGREST:
        assert data["code"] == error.code
        assert f"x-request-id: {RID}" in data["details"] and f"HTTP {error.status}" in data["details"]
        message = data["message"]
    elif shape == GOTRUE:
        assert (data["code"], data["error_code"]) == (error.status, error.code)
        message = data["msg"]
    else:
        assert (data["statusCode"], data["error"], data["code"]) == (str(error.status), error.code, error.code)
        message = data["message"]
    assert message.startswith("gateway") and error.message in message and message.endswith(f"[{error.code}]")
    assert ("upstream up" in message) == (error.upstream is not None)


def test_status_names_and_meta_codes_per_gateway_code():
    """The documented mapping (README, "The gateway's own answers"), checked row by row."""
    expected = {
        # code: (status, Google status, Meta code, is_transient)
        "bad_request": (400, "INVALID_ARGUMENT", 100, False),
        "body_too_large": (413, "INVALID_ARGUMENT", 100, False),
        "rate_limited": (429, "RESOURCE_EXHAUSTED", 130429, True),
        "overloaded": (503, "UNAVAILABLE", 131016, True),
        "breaker_open": (503, "UNAVAILABLE", 131016, True),
        "upstream_unreachable": (502, "UNAVAILABLE", 131016, True),
        "upstream_reset": (502, "UNAVAILABLE", 1, False),
        "upstream_timeout": (504, "DEADLINE_EXCEEDED", 1, False),
        "draining": (503, "UNAVAILABLE", 131016, True),
    }
    for error in ERRORS:
        if error.code in expected:
            row = answers.mapping(error.code, error.status)
            assert (error.status, row.google, row.meta_code, row.meta_transient) == expected[error.code], error.code
    fault = answers.mapping("fault_injected", 503), answers.mapping("fault_injected", 429)
    assert [(r.google, r.meta_code) for r in fault] == [("UNAVAILABLE", 131016), ("RESOURCE_EXHAUSTED", 130429)]
    subcodes = [row.subcode for row in answers.MAPPINGS.values()]
    assert len(set(subcodes)) == len(subcodes)  # one subcode per gateway code


def _graph_retry_codes(config_path: Path) -> dict[str, set[int]]:
    """Per graph route (and the upstream's own policy): the Meta codes its retry rule resends on."""
    found: dict[str, set[int]] = {}
    for up in load_config(str(config_path)).policies:
        if up.kind != "graph":
            continue
        for policy in (up.default, *up.routes):
            codes = {int(m.group(1)) for t in policy.retry.on if (m := re.fullmatch(r"code:(\d+)", t))}
            found[f"{up.name}.{policy.name}"] = codes
    return found


@pytest.mark.parametrize("config", ["gateway.yaml", "config/examples/production.yaml", "config/examples/sim.yaml"])
def test_a_lost_answer_never_carries_a_code_the_retry_rule_resends_on(config):
    codes = _graph_retry_codes(ROOT / config)
    assert codes["graph.send_message"] >= {2, 131000}  # the rule has not gone away
    for error in (UpstreamReset("dropped", upstream="graph"), UpstreamTimeout("no answer", upstream="graph")):
        body = json.loads(render(error, GRAPH, RID).body)["error"]
        assert body["is_transient"] is False
        for route, resent_on in codes.items():
            assert body["code"] not in resent_on, (error.code, route)


@pytest.mark.parametrize(
    ("kind", "path", "fmt"),
    [
        ("gemini", "/v1beta/models/gemini-2.5-flash:generateContent", GEMINI),
        ("graph", "/v21.0/123/messages", GRAPH),
        ("supabase", "/rest/v1/conversations", POSTGREST),
        ("supabase", "/rest/v1", POSTGREST),
        ("supabase", "/auth/v1/token", GOTRUE),
        ("supabase", "/storage/v1/object/list/media", STORAGE),
        ("supabase", "/functions/v1/hello", GENERIC),
        ("supabase", "/rest/v10/x", GENERIC),
        ("generic", "/anything", GENERIC),
        (None, "/anything", GENERIC),
    ],
)
def test_the_format_follows_kind_and_path(kind, path, fmt):
    assert answer_format(kind, path) == fmt


def test_raw_answer_is_a_whole_http_answer():
    raw = answers.raw_answer(Overloaded("at the connection limit", retry_after=1))
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "HTTP/1.1 503 Service Unavailable"
    headers = dict(line.split(": ", 1) for line in lines[1:])
    assert headers["x-gateway-error"] == "overloaded" and headers["Retry-After"] == "1"
    assert headers["Connection"] == "close" and int(headers["Content-Length"]) == len(body)
    assert json.loads(body)["error"]["code"] == "overloaded"


# ---------------------------------------------------------------- end to end, through a real gateway


async def test_each_kind_answers_in_its_format_through_the_gateway(gateway_factory):
    closed = f"http://127.0.0.1:{free_port()}"
    upstreams = {
        name: f"url: {closed}\nkind: {kind}\nretry: {{attempts: 1}}"
        for name, kind in (("graph", "graph"), ("gemini", "gemini"), ("supabase", "supabase"), ("plain", "generic"))
    }
    gw = await gateway_factory(gateway_yaml(upstreams))
    cases = [
        ("/graph/v21.0/1/messages", lambda d: d["error"]["code"] == 131016 and d["error"]["fbtrace_id"] == "rid-1"),
        ("/gemini/v1beta/models/m:generateContent", lambda d: d["error"]["status"] == "UNAVAILABLE"),
        ("/supabase/rest/v1/t", lambda d: d["code"] == "upstream_unreachable" and "rid-1" in d["details"]),
        ("/supabase/auth/v1/user", lambda d: d["error_code"] == "upstream_unreachable" and d["code"] == 502),
        ("/supabase/storage/v1/object/b/k", lambda d: d["statusCode"] == "502"),
        ("/supabase/functions/v1/f", lambda d: d["error"]["code"] == "upstream_unreachable"),
        ("/plain/x", lambda d: d["error"]["code"] == "upstream_unreachable"),
    ]
    for path, check in cases:
        async with gw.session.post(gw.url + path, json={}, headers={"x-request-id": "rid-1"}) as resp:
            data = await resp.json()
            assert resp.status == 502 and resp.headers["x-gateway-error"] == "upstream_unreachable", path
            assert resp.headers["x-request-id"] == "rid-1" and resp.content_type == "application/json"
            assert check(data), (path, data)


async def test_refusals_before_routing_use_the_paths_upstream_format(gateway_factory):
    gw = await gateway_factory(gateway_yaml({"graph": "url: http://127.0.0.1:9\nkind: graph"}))
    async with gw.session.get(URL(gw.url + "/graph/v21.0/%2e%2e/x", encoded=True)) as resp:  # a dot segment
        data = await resp.json()
        assert (
            resp.status == 400
            and data["error"]["code"] == 100
            and data["error"]["error_data"]["details"] == ("bad_request")
        )
    async with gw.session.get(gw.url + "/nowhere/x") as resp:  # no upstream: the generic shape
        assert resp.status == 404 and (await resp.json())["error"]["code"] == "no_route"


async def test_a_forced_open_breaker_sends_no_retry_after(gateway_factory):
    gw = await gateway_factory(gateway_yaml({"gemini": "url: http://127.0.0.1:9\nkind: gemini"}))
    gw.gateway.state.runtime.breakers()["gemini"].force_open()
    async with gw.session.post(gw.url + "/gemini/v1beta/models/m:generateContent", json={}) as resp:
        data = await resp.json()
        assert resp.status == 503 and "Retry-After" not in resp.headers
        assert [d["@type"].rsplit(".", 1)[1] for d in data["error"]["details"]] == ["ErrorInfo"]  # no RetryInfo


# ---------------------------------------------------------------- the smaller points


async def test_a_rate_limit_names_its_rate_as_written(gateway_factory, upstream_factory):
    up = await upstream_factory()
    route = '[{name: all, match: {path: "/**"}, rate_limit: {rate: 1/m, burst: 1}}]'
    gw = await gateway_factory(gateway_yaml({"api": f"url: {up.url}\nroutes: {route}"}))
    async with gw.session.get(gw.url + "/api/x") as resp:
        assert resp.status == 200
    async with gw.session.get(gw.url + "/api/x") as resp:
        message = (await resp.json())["error"]["message"]
        assert resp.status == 429 and "rate limit of 1/m reached" in message, message


async def test_a_stream_that_stalls_is_logged_as_a_timeout(gateway_factory, upstream_factory, caplog):
    async def stall(request, up):
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"data: {}\r\n\r\n")
        await asyncio.sleep(2)  # longer than idle
        return response

    async def drop(request, up):
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"data: {}\r\n\r\n")
        request.transport.close()
        return response

    logged = {}
    for name, script in (("stall", stall), ("drop", drop)):
        up = await upstream_factory(script)
        gw = await gateway_factory(gateway_yaml({name: f"url: {up.url}\ntimeouts: {{idle: 300ms, total: 5s}}"}))
        with caplog.at_level("INFO", logger="gateway.access"):
            async with gw.session.get(gw.url + f"/{name}/events") as resp:
                assert resp.status == 200
                with pytest.raises(aiohttp.ClientPayloadError):
                    await resp.read()  # the client sees a truncated body, never a complete one
        records = [r for r in caplog.records if r.name == "gateway.access"]
        logged[name] = records[-1].fields["error"]
    assert logged == {"stall": "upstream_timeout", "drop": "upstream_reset"}
