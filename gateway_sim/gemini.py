"""The simulated Gemini API (``gateway sim``): generation, streams, models, tokens, embeddings, errors.

Owns ``POST /{ver}/models/{model}:generateContent`` and ``:streamGenerateContent`` (a JSON array, or
with ``?alt=sse`` server-sent events written ``interval`` apart: ``SseAnswer``), with the
``usageMetadata`` a real answer carries; ``GET /{ver}/models[/{model}]``; google.rpc's error shape
(``GOOGLE_STATUSES``, ``google_error``: ``{"error": {"code", "message", "status", "details"}}``,
with QuotaFailure, Help and RetryInfo on 429); and ``:countTokens`` (``{"totalTokens",
"promptTokensDetails"}``), ``:embedContent`` (``{"embedding": {"values"}}``) and
``:batchEmbedContents`` (what google-genai's ``embed_content`` calls: ``{"embeddings":
[{"values"}]}``). Tokens are counted as one per four characters of text (at least one per part), the
same estimate the sim's generation reports in ``usageMetadata``. Embeddings are unit vectors derived
from the text, so equal texts embed equally; 768 values unless ``outputDimensionality`` asks for 1
to 3072. Bad requests raise ``ApiFault`` with 400 INVALID_ARGUMENT, as Google words them.
"""

from __future__ import annotations

import hashlib
import json
import math
import secrets
import struct
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from .common import ApiError, ApiFault, json_response, retry_after_header

__all__ = [
    "DIMENSIONS",
    "GOOGLE_STATUSES",
    "SseAnswer",
    "count_tokens",
    "embed",
    "estimate_tokens",
    "generate",
    "google_error",
    "models",
]

DIMENSIONS = 768
MAX_DIMENSIONS = 3072
MAX_BATCH = 100  # Google's limit on requests per batchEmbedContents


def estimate_tokens(text: str) -> int:
    return max(1, math.ceil(len(text) / 4))


def _invalid(message: str) -> ApiFault:
    return ApiFault("gemini", 400, "INVALID_ARGUMENT", message)


def _json_object(body: bytes, what: str) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        data = None
    if not isinstance(data, dict):
        raise _invalid(f"Invalid JSON payload received. {what} must be a JSON object.")
    return data


def _texts(content: object, where: str) -> list[str]:
    """The text of each part of one Content (``{"role", "parts": [{"text"} | {"inlineData"} …]}``)."""
    if not isinstance(content, dict) or not isinstance(content.get("parts"), list) or not content["parts"]:
        raise _invalid(f"* {where}.parts: contents.parts must not be empty.")
    texts = []
    for part in content["parts"]:
        if not isinstance(part, dict):
            raise _invalid(f"* {where}.parts: each part must be an object")
        if isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif isinstance(part.get("inlineData"), dict):
            texts.append(str(part["inlineData"].get("data", "")))
        else:
            texts.append(json.dumps(part, sort_keys=True))
    return texts


def count_tokens(body: bytes) -> web.Response:
    """``:countTokens`` with ``contents`` (or a whole ``generateContentRequest``)."""
    data = _json_object(body, "CountTokensRequest")
    request = data.get("generateContentRequest")
    contents = (request if isinstance(request, dict) else data).get("contents")
    if isinstance(contents, dict):
        contents = [contents]
    if not isinstance(contents, list) or not contents:
        raise _invalid("* CountTokensRequest.contents: contents is not specified")
    total = sum(estimate_tokens(t) for i, c in enumerate(contents) for t in _texts(c, f"contents[{i}]"))
    details = [{"modality": "TEXT", "tokenCount": total}]
    return json_response(200, {"totalTokens": total, "promptTokensDetails": details})


def _vector(text: str, dimensions: int) -> list[float]:
    values: list[float] = []
    counter = 0
    while len(values) < dimensions:
        block = hashlib.sha256(f"{counter}:{text}".encode()).digest()
        values.extend(v / 2**31 - 1.0 for v in struct.unpack(">8I", block))
        counter += 1
    values = values[:dimensions]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [round(v / norm, 6) for v in values]


def _dimensions(request: dict[str, Any], where: str) -> int:
    asked = request.get("outputDimensionality")
    if asked is None:
        return DIMENSIONS
    if isinstance(asked, bool) or not isinstance(asked, int) or not 1 <= asked <= MAX_DIMENSIONS:
        raise _invalid(f"* {where}.output_dimensionality: must be between 1 and {MAX_DIMENSIONS}, got {asked!r}")
    return asked


def embed(model: str, body: bytes, batch: bool) -> web.Response:
    """``:embedContent`` (one content) or ``:batchEmbedContents`` (``requests``, each naming the model)."""
    data = _json_object(body, "EmbedContentRequest")
    if not batch:
        text = " ".join(_texts(data.get("content"), "content"))
        return json_response(200, {"embedding": {"values": _vector(text, _dimensions(data, "request"))}})
    requests = data.get("requests")
    if not isinstance(requests, list) or not requests:
        raise _invalid("* BatchEmbedContentsRequest.requests: requests must not be empty")
    if len(requests) > MAX_BATCH:
        raise _invalid(f"* BatchEmbedContentsRequest.requests: at most {MAX_BATCH} requests are allowed per batch")
    embeddings = []
    for i, request in enumerate(requests):
        where = f"requests[{i}]"
        if not isinstance(request, dict):
            raise _invalid(f"* BatchEmbedContentsRequest.{where}: must be an object")
        if request.get("model") != f"models/{model}":
            raise _invalid(
                f"* BatchEmbedContentsRequest.{where}.model: the model must be models/{model}, "
                f"the model named in the URL, got {request.get('model')!r}"
            )
        text = " ".join(_texts(request.get("content"), f"{where}.content"))
        embeddings.append({"values": _vector(text, _dimensions(request, where))})
    return json_response(200, {"embeddings": embeddings})


# --------------------------------------------------------------------------- generation


@dataclass(slots=True)
class SseAnswer:
    """A ``text/event-stream`` answer: events written one by one, ``interval`` apart."""

    events: list[bytes]
    interval: float


def generate(
    model: str, body: bytes, *, stream: bool, sse: bool, events: int, interval: float
) -> web.Response | SseAnswer:
    """``:generateContent``, or ``:streamGenerateContent`` (``stream``) in ``events`` chunks: a JSON
    array, or server-sent events ``interval`` apart with ``?alt=sse`` (``sse``)."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        data = None
    if not isinstance(data, dict) or not isinstance(data.get("contents"), list | dict):
        return google_error(ApiError(400, "INVALID_ARGUMENT", None, "* GenerateContentRequest.contents: required"))
    prompt_tokens = max(1, len(body) // 4)
    response_id = secrets.token_urlsafe(16)
    words = [f"Simulated reply from {model}", "to your message:", "thanks for waiting,", "here is", "the answer."]
    if not stream:
        text = " ".join(words)
        return json_response(200, _candidate(model, response_id, text, prompt_tokens, last=True))
    chunks = [f"{words[i % len(words)]} " for i in range(events)]
    payloads = [  # usageMetadata is a running total, as Gemini's stream chunks carry
        _candidate(model, response_id, chunk, prompt_tokens, i == events - 1, "".join(chunks[: i + 1]))
        for i, chunk in enumerate(chunks)
    ]
    if not sse:
        return json_response(200, payloads)
    lines = [b"data: " + json.dumps(p, separators=(",", ":")).encode() + b"\r\n\r\n" for p in payloads]
    return SseAnswer(lines, interval)


def _candidate(
    model: str, response_id: str, text: str, prompt_tokens: int, last: bool, so_far: str | None = None
) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"parts": [{"text": text}], "role": "model"}, "index": 0}
    if last:
        candidate["finishReason"] = "STOP"
    out_tokens = max(1, len(so_far if so_far is not None else text) // 4)
    return {
        "candidates": [candidate],
        "usageMetadata": {
            "promptTokenCount": prompt_tokens,
            "candidatesTokenCount": out_tokens,
            "totalTokenCount": prompt_tokens + out_tokens,
        },
        "modelVersion": model,
        "responseId": response_id,
    }


def models(model: str | None) -> web.Response:
    """``GET /{ver}/models/{model}`` (one model), or ``GET /{ver}/models`` (the list)."""

    def describe(name: str) -> dict[str, Any]:
        return {
            "name": f"models/{name}",
            "version": "001",
            "displayName": name,
            "inputTokenLimit": 1048576,
            "outputTokenLimit": 65536,
            "supportedGenerationMethods": ["generateContent", "countTokens"],
        }

    if model:
        return json_response(200, describe(model))
    return json_response(200, {"models": [describe(m) for m in ("gemini-2.5-flash", "gemini-2.5-pro")]})


# --------------------------------------------------------------------------- errors

# google.rpc: status name → (HTTP status, message).
GOOGLE_STATUSES: dict[str, tuple[int, str]] = {
    "INVALID_ARGUMENT": (400, "Request contains an invalid argument."),
    "FAILED_PRECONDITION": (400, "User location is not supported for the API use."),
    "UNAUTHENTICATED": (401, "Request had invalid authentication credentials."),
    "PERMISSION_DENIED": (
        403,
        "Method doesn't allow unregistered callers (callers without established identity). "
        "Please use API Key or other form of API consumer identity to call this API.",
    ),
    "NOT_FOUND": (404, "Requested entity was not found."),
    "RESOURCE_EXHAUSTED": (
        429,
        "You exceeded your current quota, please check your plan and billing details. For more information "
        "on this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits.",
    ),
    "CANCELLED": (499, "The operation was cancelled."),
    "INTERNAL": (
        500,
        "An internal error has occurred. Please retry or report in "
        "https://developers.generativeai.google/guide/troubleshooting",
    ),
    "UNAVAILABLE": (503, "The model is overloaded. Please try again later."),
    "DEADLINE_EXCEEDED": (504, "Deadline expired before operation could complete."),
}
_GOOGLE_BY_STATUS = {status: name for name, (status, _) in reversed(GOOGLE_STATUSES.items())}


def _google_duration(seconds: float) -> str:
    return f"{seconds:.0f}s" if seconds == int(seconds) else f"{seconds:.3f}".rstrip("0") + "s"


def google_error(error: ApiError, model: str = "gemini-2.5-flash") -> web.Response:
    """google.rpc's error body; a 429 carries QuotaFailure, Help and RetryInfo details."""
    name = str(error.code) if error.code in GOOGLE_STATUSES else _GOOGLE_BY_STATUS.get(error.status or 500, "UNKNOWN")
    status = error.status or GOOGLE_STATUSES[name][0]
    message = error.message or GOOGLE_STATUSES.get(name, (status, "Unknown error."))[1]
    body: dict[str, Any] = {"code": status, "message": message, "status": name}
    if name == "RESOURCE_EXHAUSTED":
        delay = 53.0 if error.retry_delay is None else error.retry_delay
        per = "PerDay" if delay >= 3600 else "PerMinute"
        body["details"] = [
            {
                "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                "violations": [
                    {
                        "quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                        "quotaId": f"GenerateRequests{per}PerProjectPerModel-FreeTier",
                        "quotaDimensions": {"location": "global", "model": model},
                        "quotaValue": "10",
                    }
                ],
            },
            {
                "@type": "type.googleapis.com/google.rpc.Help",
                "links": [
                    {
                        "description": "Learn more about Gemini API quotas",
                        "url": "https://ai.google.dev/gemini-api/docs/rate-limits",
                    }
                ],
            },
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": _google_duration(delay)},
        ]
    elif name == "INVALID_ARGUMENT" and error.message:
        body["details"] = [
            {"@type": "type.googleapis.com/google.rpc.BadRequest", "fieldViolations": [{"description": message}]}
        ]
    return json_response(status, {"error": body}, retry_after_header(error.retry_after))
