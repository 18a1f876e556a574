"""The simulated Gemini API's ``countTokens`` and embedding endpoints (``gateway sim``).

Owns ``POST /{ver}/models/{model}:countTokens`` (``{"totalTokens", "promptTokensDetails"}``),
``:embedContent`` (``{"embedding": {"values"}}``) and ``:batchEmbedContents`` (what google-genai's
``embed_content`` calls: ``{"embeddings": [{"values"}]}``). Tokens are counted as one per four
characters of text (at least one per part), the same estimate the sim's generation reports in
``usageMetadata``. Embeddings are unit vectors derived from the text, so equal texts embed equally;
768 values unless ``outputDimensionality`` asks for 1 to 3072. Bad requests raise ``ApiFault``
with 400 INVALID_ARGUMENT, as Google words them.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from typing import Any

from aiohttp import web

from .sim_common import ApiFault, json_response

__all__ = ["DIMENSIONS", "count_tokens", "embed", "estimate_tokens"]

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
