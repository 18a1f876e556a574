"""The simulator's copy of the real APIs' limits, so the fault replay can show what pacing saves.

Owns the scenario blocks ``upstreams.graph.limits`` and ``upstreams.gemini.limits`` (off unless
written) and their enforcement, as ``../shared/upstream-apis.md`` describes the real APIs:

- Graph ``pair``: messages from one business number to one user (``phone_id``, body ``to``), a
  token bucket of ``rate`` (Meta: one every 6 s, ``10/m``) and ``burst`` (reported as up to 45,
  unverified); over it, Meta's error 131056 (HTTP 400) and the message is not taken.
- Graph ``throughput``: messages per business number (Meta: 80/s by default); over it, 130429.
- Gemini, per model: ``rpm``, ``tpm`` (the tokens its answers report) and ``rpd`` (the day ending
  at midnight America/Los_Angeles), with per-model overrides under ``models``; over one, Google's
  429 RESOURCE_EXHAUSTED with a QuotaFailure naming the window and a RetryInfo.

Read receipts (``"status": "read"``) are not messages and pass. The windows reuse the gateway's own
token bucket and quota arithmetic (``ratelimit.TokenBucket``, ``quota.Usage``): the sim enforces
what the gateway keeps, on the sim's clock. ``SimLimits.check`` refuses a request before it is
taken; ``answered`` charges the tokens an answer reports; ``as_json`` counts refusals for
``/_sim/stats``.
"""

from __future__ import annotations

import json
import secrets
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from gateway.config import Rate
from gateway.quota import TokenMeter, Usage, day_of
from gateway.ratelimit import TokenBucket

__all__ = ["Bucket", "GeminiLimits", "GraphLimits", "ModelLimits", "SimLimits"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Bucket(_Model):
    rate: Rate
    burst: int = Field(1, ge=1)


class GraphLimits(_Model):
    """``pair``: per (number, recipient), 131056; ``throughput``: per number, 130429."""

    pair: Bucket | None = None
    throughput: Bucket | None = None


class ModelLimits(_Model):
    rpm: int | None = Field(None, ge=1)
    tpm: int | None = Field(None, ge=1)
    rpd: int | None = Field(None, ge=1)


class GeminiLimits(ModelLimits):
    """Every model's limits, with ``models`` overriding them per model name."""

    models: dict[str, ModelLimits] = {}


_WINDOW_IDS = {
    "rpm": ("generate_content_free_tier_requests", "GenerateRequestsPerMinutePerProjectPerModel-FreeTier"),
    "tpm": ("generate_content_free_tier_input_token_count", "GenerateContentInputTokensPerModelPerMinute-FreeTier"),
    "rpd": ("generate_content_free_tier_requests", "GenerateRequestsPerDayPerProjectPerModel-FreeTier"),
}


class SimLimits:
    """The limits of one scenario, with their state; made again when the scenario (re)starts."""

    def __init__(
        self,
        graph: GraphLimits | None,
        gemini: GeminiLimits | None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.graph = graph
        self.gemini = gemini
        self.clock = clock
        self.wall = wall
        self._pairs: dict[tuple[str, str], TokenBucket] = {}
        self._numbers: dict[str, TokenBucket] = {}
        self._models: dict[str, Usage] = {}
        self.refused: Counter[str] = Counter()

    def check(self, upstream: str, route: str, params: dict[str, str], body: bytes) -> web.Response | None:
        """The API's refusal when this request is over a limit (nothing is taken then), else None."""
        if upstream == "graph" and route == "send_message" and self.graph is not None:
            return self._graph(params.get("phone_id", ""), body)
        if upstream == "gemini" and route in ("generate", "stream") and self.gemini is not None:
            return self._gemini(params.get("model", ""))
        return None

    def answered(self, upstream: str, route: str, params: dict[str, str], answer: Any) -> None:
        """Charge a Gemini answer's tokens (``usageMetadata.totalTokenCount``, the last one of a stream)."""
        if upstream != "gemini" or route not in ("generate", "stream") or self.gemini is None:
            return
        meter = TokenMeter()
        body = getattr(answer, "body", None)
        for chunk in [body] if isinstance(body, bytes) else getattr(answer, "events", []):
            meter.feed(chunk)
        meter.close()
        if meter.tokens:
            self._usage(params.get("model", "")).add(self.wall(), tokens=meter.tokens)

    # ---- Graph

    def _graph(self, number: str, body: bytes) -> web.Response | None:
        assert self.graph is not None
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return None  # the API's own 400 comes later
        if not isinstance(data, dict) or data.get("status") == "read" or not isinstance(data.get("to"), str):
            return None
        to = "".join(ch for ch in data["to"] if ch.isdigit())  # Meta's wa_id: digits only
        pair = number_bucket = None
        if self.graph.throughput is not None:
            number_bucket = self._bucket(self._numbers, number, self.graph.throughput)
            if number_bucket.reserve(0) is None:
                self.refused["130429"] += 1
                return _meta(130429, 429, "(#130429) Rate limit hit", "Cloud API message throughput has been reached.")
        if self.graph.pair is not None:
            pair = self._bucket(self._pairs, (number, to), self.graph.pair)
            if pair.reserve(0) is None:
                if number_bucket is not None:
                    number_bucket.refund()
                self.refused["131056"] += 1
                return _meta(
                    131056,
                    400,
                    "(#131056) (Business Account, Consumer Account) pair rate limit hit",
                    "Too many messages sent from the sender phone number to the same recipient phone number in a "
                    "short period of time.",
                )
        return None

    def _bucket(self, table: dict[Any, TokenBucket], key: Any, spec: Bucket) -> TokenBucket:
        found = table.get(key)
        if found is None:
            found = table[key] = TokenBucket(spec.rate, spec.burst, self.clock)
        return found

    # ---- Gemini

    def _usage(self, model: str) -> Usage:
        found = self._models.get(model)
        if found is None:
            found = self._models[model] = Usage()
        return found

    def _limits(self, model: str) -> dict[str, int]:
        assert self.gemini is not None
        own = self.gemini.models.get(model)
        out = {}
        for window in ("rpm", "tpm", "rpd"):
            value = getattr(own, window, None) if own is not None else None
            value = value if value is not None else getattr(self.gemini, window)
            if value is not None:
                out[window] = value
        return out

    def _gemini(self, model: str) -> web.Response | None:
        now = self.wall()
        usage = self._usage(model)
        limits = self._limits(model)
        wait, window = usage.wait(limits, now)
        if wait <= 0:
            usage.add(now, requests=1)
            return None
        self.refused[f"gemini_{window}"] += 1
        if window == "rpd":
            wait = day_of(now)[1]
        return _google_429(model, window, limits[window], wait)

    def as_json(self) -> dict[str, Any]:
        return {"refused": dict(sorted(self.refused.items()))}


def _meta(code: int, status: int, message: str, details: str) -> web.Response:
    trace = secrets.token_urlsafe(15)
    body = {
        "error": {
            "message": message,
            "type": "OAuthException",
            "code": code,
            "error_data": {"messaging_product": "whatsapp", "details": details},
            "fbtrace_id": trace,
        }
    }
    return web.json_response(body, status=status, headers={"x-fb-trace-id": trace})


def _google_429(model: str, window: str, limit: int, wait: float) -> web.Response:
    metric, quota_id = _WINDOW_IDS[window]
    delay = max(1, round(wait))
    body = {
        "error": {
            "code": 429,
            "message": "You exceeded your current quota, please check your plan and billing details. For more "
            "information on this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits.",
            "status": "RESOURCE_EXHAUSTED",
            "details": [
                {
                    "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                    "violations": [
                        {
                            "quotaMetric": f"generativelanguage.googleapis.com/{metric}",
                            "quotaId": quota_id,
                            "quotaDimensions": {"location": "global", "model": model},
                            "quotaValue": str(limit),
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
                {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{delay}s"},
            ],
        }
    }
    return web.json_response(body, status=429)
