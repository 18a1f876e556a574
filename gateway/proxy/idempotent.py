"""The idempotency stage: a write with an ``Idempotency-Key`` on a route with ``idempotency:``.

Owns what the proxy does with a claim of ``gateway.idempotency``: replay what the key kept (an
answer, or the gateway's refusal), or forward the write and keep what its outcome proves. The
answer is read (up to the store's limit) before anything goes to the client, so a client that
left still has it kept; a larger answer streams and is kept as "sent, outcome unknown". A
refusal of the gateway releases the key; a cancellation or a bug leaves it "unknown" once a try
was made.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from aiohttp import web

from .. import outcomes
from ..cache import Shared
from ..errors import GatewayError
from ..hygiene import response_headers
from .invalidate import after_write
from .relay import answer_from, read_upto, relay

if TYPE_CHECKING:
    from ..cache import ResponseCache
    from ..idempotency import Claim
    from ..metrics import Metrics
    from .exchange import Call
    from .forward import Forward

__all__ = ["Idempotent"]

_READS = frozenset({"GET", "HEAD"})


class Idempotent:
    """Claims a write's Idempotency-Key and serves the claim."""

    def __init__(self, metrics: Metrics, forward: Forward, cache: ResponseCache) -> None:
        self.metrics = metrics
        self.forward = forward
        self.cache = cache

    async def claim(self, call: Call, raw_target: str) -> Claim | None:
        """The claim of a write on a route with ``idempotency:``; None when the stage does not apply
        (a read, no such route, no key sent). Raises IdempotencyConflict/Mismatch, BadRequest."""
        keeper = call.route.idempotency
        if keeper is None or call.method in _READS or call.request is None:
            return None
        m, labels = self.metrics, (self.metrics.idempotency, call.upstream.name, call.route.policy.name)
        return await keeper.claim(
            call.method,
            raw_target,
            call.client_headers,
            call.body.held,
            call.deadline - time.monotonic(),
            lambda result: m.child(*labels, result).inc(),
        )

    async def serve(self, request: web.BaseRequest, call: Call, claim: Claim) -> web.StreamResponse:
        """Replay what the key kept, or forward the write and keep what its outcome proves."""
        if claim.replay is not None:
            call.ex.replayed = True
            if isinstance(claim.replay, GatewayError):
                raise claim.replay
            return answer_from(call, claim.replay, 0, source="cache")
        try:
            async with self.forward.to_upstream(call) as attempt:
                answer, timeouts = attempt.response, call.route.policy.timeouts
                if answer is None:
                    failure = outcomes.failure(attempt.outcome, call.upstream.name, call.ex.attempts, timeouts.per_try)
                    await claim.failed(failure, sent=attempt.outcome.sent)
                    raise failure
                body, whole = await read_upto(answer, attempt.peeked, claim.keeper.limit, timeouts.idle, call)
                if call.meter is not None:
                    call.meter.feed(body)
                headers = response_headers(answer.headers)
                await claim.answered(attempt.outcome, answer.status, answer.reason or "", headers, body, whole)
                await after_write(self.cache, call, answer.status)
                if not whole:
                    attempt.peeked = body
                    return await relay(request, call, attempt)
                answer.release()
                kept = Shared(answer.status, answer.reason or "", headers, body, (), "", 0)
                return answer_from(call, kept, call.ex.attempts)
        except GatewayError as err:
            await claim.refused(err)  # a refusal of the gateway releases the key; a cut answer keeps it
            raise
        finally:
            await claim.abandon(call.ex.attempts)  # a bug or a cancellation: unknown once a try was made
