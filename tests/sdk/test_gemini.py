"""google-genai through the gateway: every call the backend makes, and every gateway error as the
SDK's own ``APIError`` with code, status and message filled (issue 15)."""

from __future__ import annotations

import asyncio
import time

import pytest
from google.genai import errors as genai_errors
from google.genai import types

from .harness import BAD_TIMEOUT_HEADER, ERRORS, STATUS, TIGHT_BODY, Stack, provoke, recipe

MODEL = "gemini-2.5-flash"
# Google's canonical status for each gateway error (README, "The gateway's own answers, per API").
GOOGLE_STATUS = {
    "breaker_open": "UNAVAILABLE",
    "upstream_unreachable": "UNAVAILABLE",
    "upstream_timeout": "DEADLINE_EXCEEDED",
    "upstream_reset": "UNAVAILABLE",
    "body_too_large": "INVALID_ARGUMENT",
    "rate_limited": "RESOURCE_EXHAUSTED",
    "overloaded": "UNAVAILABLE",
    "fault_injected": "UNAVAILABLE",
    "bad_request": "INVALID_ARGUMENT",
}


def client(stack: Stack, prefix: str = "gemini"):
    ns = recipe(
        "google-genai",
        {'"http://127.0.0.1:8080/gemini/"': f'"{stack.url}/{prefix}/"'},
        {"GEMINI_API_KEY": "test-key"},
    )
    return ns["gemini"]


# ---------------------------------------------------------------- normal calls


def test_generate_sync_reads_the_gateways_headers(stack):
    gemini = client(stack)  # keep the Client: it closes its connections when collected
    answer = gemini.models.generate_content(model=MODEL, contents="hello")
    assert answer.text.startswith(f"Simulated reply from {MODEL}")
    assert answer.usage_metadata.total_token_count > 0
    headers = answer.sdk_http_response.headers
    assert headers["x-gateway-upstream"] == "gemini" and headers["x-request-id"]


async def test_generate_async_and_stream_async(stack):
    gemini = client(stack)
    answer = await gemini.aio.models.generate_content(model=MODEL, contents="hello")
    assert answer.text.startswith("Simulated reply")
    chunks = [c.text async for c in await gemini.aio.models.generate_content_stream(model=MODEL, contents="hi")]
    assert len(chunks) == 5 and all(chunks)


def test_stream_sync_arrives_in_pieces(stack):
    started = time.monotonic()
    arrivals = []
    gemini = client(stack)
    for chunk in gemini.models.generate_content_stream(model=MODEL, contents="hello"):
        arrivals.append((time.monotonic() - started, chunk.text))
    assert len(arrivals) == 5 and all(text for _, text in arrivals)
    assert arrivals[-1][0] - arrivals[0][0] >= 0.3  # the sim spaces events 0.1 s apart: nothing buffered


def test_count_tokens_and_embed(stack):
    gemini = client(stack)
    counted = gemini.models.count_tokens(model=MODEL, contents="x" * 40)
    assert counted.total_tokens == 10
    embedded = gemini.models.embed_content(
        model="text-embedding-004",
        contents=["hello", "world"],
        config=types.EmbedContentConfig(output_dimensionality=8),
    )
    assert [len(e.values) for e in embedded.embeddings] == [8, 8]
    assert embedded.embeddings[0].values != embedded.embeddings[1].values


def test_models_get(stack):
    gemini = client(stack)
    model = gemini.models.get(model=MODEL)
    assert model.name == f"models/{MODEL}" and model.input_token_limit == 1048576


# ---------------------------------------------------------------- gateway errors


def _check(err: genai_errors.APIError, error: str) -> None:
    assert err.code == STATUS[error]
    assert isinstance(err, genai_errors.ServerError if STATUS[error] >= 500 else genai_errors.ClientError)
    assert err.response.headers["x-gateway-error"] == error
    if error == "no_route":  # no upstream: the generic shape; the SDK still has code and message
        assert err.message and err.details["error"]["code"] == "no_route"
        return
    assert err.status == GOOGLE_STATUS[error] and err.message.startswith("gateway, upstream")
    info = err.details["error"]["details"][0]
    assert info["reason"] == error.upper() and info["domain"] == "gateway"
    assert info["metadata"]["request_id"] == err.response.headers["x-request-id"]
    retry_info = [d for d in err.details["error"]["details"] if d["@type"].endswith("RetryInfo")]
    if "Retry-After" in err.response.headers:
        assert retry_info == [
            {"@type": retry_info[0]["@type"], "retryDelay": err.response.headers["Retry-After"] + "s"}
        ]
    else:
        assert retry_info == []


@pytest.mark.parametrize("error", ERRORS)
def test_each_gateway_error_is_an_api_error(stack, errors, error):
    contents = "x" * (TIGHT_BODY + 1) if error == "body_too_large" else "hello"
    config = types.GenerateContentConfig(http_options=types.HttpOptions(headers=BAD_TIMEOUT_HEADER))
    with provoke(stack, error, "gemini") as prefix:
        gemini = client(stack, prefix)
        started = time.monotonic()
        with pytest.raises(genai_errors.APIError) as info:
            gemini.models.generate_content(
                model=MODEL, contents=contents, config=config if error == "bad_request" else None
            )
        took = time.monotonic() - started
    _check(info.value, error)
    assert took < 5.0  # one SDK try: the gateway's answer, no client-side retries (total is 2 s)
    errors.add(
        "google-genai", "generate_content", error, info.value, info.value.code, info.value.status, info.value.message
    )


@pytest.mark.parametrize("error", ["breaker_open", "upstream_timeout", "rate_limited"])
def test_async_streaming_count_and_embed_raise_the_same(stack, errors, error):
    """The bucket of -limited refills at 1/m: every call here is refused, none reaches the sim."""
    with provoke(stack, error, "gemini") as prefix:
        gemini = client(stack, prefix)
        calls = {
            "aio.generate_content": lambda: asyncio.run(gemini.aio.models.generate_content(model=MODEL, contents="x")),
            "generate_content_stream": lambda: list(gemini.models.generate_content_stream(model=MODEL, contents="x")),
            "count_tokens": lambda: gemini.models.count_tokens(model=MODEL, contents="x"),
            "embed_content": lambda: gemini.models.embed_content(model="text-embedding-004", contents="x"),
        }
        for name, call in calls.items():
            with pytest.raises(genai_errors.APIError) as info:
                call()
            _check(info.value, error)
            errors.add("google-genai", name, error, info.value, info.value.code, info.value.status, info.value.message)
