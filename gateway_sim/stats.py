"""What the simulator received: counters per upstream and route, and every WhatsApp message body.

Owns ``Stats``, reported on ``/_sim/stats``: per upstream and route the requests, answers by
status, resets, stalls, injected faults and those of outage windows (``RouteStats``); per
message body (its canonical JSON's SHA-256) how often it was received and delivered, so a resend
that delivered twice shows as a duplicate; read receipts; PostgREST calls per table and method.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from .routes import OTHER, ROUTES, UPSTREAMS

__all__ = ["BodyCount", "RouteStats", "Stats"]

MAX_REPEATED_LISTED = 50  # /_sim/stats lists at most this many repeated message bodies


@dataclass(slots=True)
class RouteStats:
    requests: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    resets: int = 0
    timeouts: int = 0
    injected: int = 0
    outage: int = 0

    def as_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "resets": self.resets,
            "timeouts": self.timeouts,
            "injected": self.injected,
            "outage": self.outage,
        }


@dataclass(slots=True)
class BodyCount:
    received: int = 0
    delivered: int = 0
    to: str = ""


class Stats:
    """What the sim received, per upstream and route, and every WhatsApp message body."""

    def __init__(self) -> None:
        self.routes: dict[str, dict[str, RouteStats]] = {
            up: {r: RouteStats() for r in (*ROUTES[up], OTHER)} for up in UPSTREAMS
        }
        self.bodies: dict[str, BodyCount] = {}
        self.read_receipts = 0
        self.tables: dict[str, Counter[str]] = {}

    def route(self, upstream: str, route: str) -> RouteStats:
        return self.routes[upstream][route]

    def message_received(self, body: bytes) -> str | None:
        """Count a send's body; return its key, or None for a read receipt (not a message)."""
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            data = None
        if isinstance(data, dict) and data.get("status") == "read":
            self.read_receipts += 1
            return None
        canonical = json.dumps(data, sort_keys=True, separators=(",", ":")).encode() if data is not None else body
        key = hashlib.sha256(canonical).hexdigest()
        count = self.bodies.setdefault(key, BodyCount())
        count.received += 1
        if isinstance(data, dict) and isinstance(data.get("to"), str):
            count.to = data["to"]
        return key

    def message_delivered(self, key: str) -> None:
        self.bodies[key].delivered += 1

    def messages_json(self) -> dict[str, Any]:
        counts = list(self.bodies.values())
        received = sum(c.received for c in counts)
        delivered = sum(c.delivered for c in counts)
        repeated = sorted(
            ((k, c) for k, c in self.bodies.items() if c.received > 1),
            key=lambda kc: (-kc[1].delivered, -kc[1].received, kc[0]),
        )
        return {
            "bodies": len(counts),
            "received": received,
            "delivered": delivered,
            "duplicates_received": received - len(counts),
            "duplicates_delivered": sum(max(0, c.delivered - 1) for c in counts),
            "read_receipts": self.read_receipts,
            "repeated": [
                {"sha256": k, "to": c.to, "received": c.received, "delivered": c.delivered}
                for k, c in repeated[:MAX_REPEATED_LISTED]
            ],
        }

    def as_json(self) -> dict[str, Any]:
        upstreams = {}
        for up, routes in self.routes.items():
            upstreams[up] = {
                "requests": sum(r.requests for r in routes.values()),
                "routes": {name: r.as_json() for name, r in routes.items()},
            }
        return {
            "upstreams": upstreams,
            "messages": self.messages_json(),
            "tables": {t: dict(sorted(c.items())) for t, c in sorted(self.tables.items())},
        }
