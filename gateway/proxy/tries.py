"""The tries stage: send, ask the retry policy, wait, send again; one breaker sample per try.

Owns the retry loop (``Tries.run``) and one try (``Tries.once``): the per-try timeout under the
request's deadline, the answer screened before anything is relayed (a 1xx or a control character
in a header value is ``MalformedAnswer``, a reset), an error body peeked (up to 64 KiB) for its
API code and ``Retry-After``, aiohttp's own resend on a stale pooled connection counted as a try.
A try's exception becomes an ``Outcome`` through ``outcomes.classify`` only; a failure of the
client's own body (``RequestBody.failure``) is raised as such and is no breaker sample.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import aiohttp
from yarl import URL

from .. import outcomes, resends
from ..errors import BodyTooLarge, BreakerOpen, MalformedAnswer
from ..logs import event
from ..outcomes import Outcome

if TYPE_CHECKING:
    from ..breaker import Permit
    from ..metrics import Metrics
    from .exchange import Call

__all__ = ["Attempt", "Tries"]

# Control characters an upstream's header value must not carry to the client (tab is allowed).
_BAD_HEADER_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


@dataclass(slots=True)
class Attempt:
    """One try's result: an answer (with the error body read so far) or a failure."""

    outcome: Outcome
    response: aiohttp.ClientResponse | None = None
    peeked: bytes = b""
    retry_after: float | None = None
    resent: int = 0  # times aiohttp resent it by itself on a pooled connection found closed

    def discard(self) -> None:
        """Release the answer's connection before the next try."""
        if self.response is not None:
            self.response.release()


class Tries:
    """The retry loop of one call, reporting tries and retries to ``metrics``."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    async def run(self, call: Call, permit: Permit) -> Attempt:
        """Try, ask the retry policy, wait, try again; return the last try.

        ``permit`` is the breaker's for the first try; each retry asks the breaker again and the
        loop stops, returning the last answer, when the breaker refuses."""
        m = self.metrics
        upstream, route, body, ex = call.upstream, call.route, call.body, call.ex
        url = upstream.url_for(call.path, call.query)
        route.retry.budget.record_request()
        labels = (upstream.name, route.policy.name)
        while True:
            ex.attempts += 1
            attempt = await self.once(call, url)
            if attempt.resent:  # aiohttp's own resend on a stale pooled connection: a real try, counted
                ex.attempts += attempt.resent
                m.tries.labels(*labels, outcomes.RESET).inc(attempt.resent)
                m.retries.labels(*labels, "stale-connection").inc(attempt.resent)
            m.tries.labels(*labels, attempt.outcome.label).inc()
            if body.failure is not None:  # the client's fault, not the upstream's: no sample
                permit.release()
                attempt.discard()
                raise body.failure
            if attempt.outcome.sent:
                permit.record(attempt.outcome)
            else:
                permit.release()
            decision = route.retry.decide(
                call.method,
                attempt.outcome,
                ex.attempts,
                attempt.retry_after,
                call.deadline - time.monotonic(),
                body.replayable,
            )
            if decision.skipped:
                m.retries_skipped.labels(upstream.name, decision.skipped).inc()
            if not decision.retry:
                return attempt
            try:
                permit = route.breaker.acquire()
            except BreakerOpen:
                m.retries_skipped.labels(upstream.name, "breaker").inc()
                return attempt
            attempt.discard()
            m.retries.labels(*labels, attempt.outcome.code or attempt.outcome.label).inc()
            try:
                await asyncio.sleep(decision.delay)
            except BaseException:
                permit.release()
                raise

    async def once(self, call: Call, url: URL) -> Attempt:
        """Send one try and wait for its headers (and an error body's code, when its kind has one)."""
        upstream, route = call.upstream, call.route
        remaining = call.deadline - time.monotonic()
        if remaining <= 0:  # nothing sent: not a sample of the upstream's health
            return Attempt(Outcome(outcomes.TIMEOUT, sent=False, cut_by_total=True))
        per_try = route.policy.timeouts.per_try
        kind = upstream.policy.kind
        response = None
        sends = resends.counting()
        try:
            async with asyncio.timeout(min(per_try, remaining)):
                response = await upstream.session.request(
                    call.method,
                    url,
                    headers=call.headers,
                    data=call.body.payload(),
                    allow_redirects=False,
                    timeout=route.client_timeout,
                )
                _screen_answer(response, upstream.name)
                peeked = b""
                if outcomes.needs_body(kind, response.status):
                    peeked = await _peek(response)
        except (aiohttp.ClientError, TimeoutError, OSError, BodyTooLarge) as exc:
            if response is not None:
                response.close()
            outcome = outcomes.classify(exc, cut_by_total=per_try > remaining)
            if outcome.local:  # not the upstream's doing: no breaker sample (see outcomes.failure)
                event("no file descriptor left to connect upstream", logging.WARNING, upstream=upstream.name)
            return Attempt(outcome, resent=sends.resent)
        code = outcomes.api_error_code(kind, peeked) if peeked else None
        retry_after = None
        if response.status in (429, 503) or "retry-after" in response.headers:
            retry_after = outcomes.retry_after_seconds(
                kind, response.status, response.headers.get("retry-after"), peeked
            )
        return Attempt(outcomes.answered(response.status, code), response, peeked, retry_after, resent=sends.resent)


async def _peek(response: aiohttp.ClientResponse) -> bytes:
    """Read up to ERROR_PEEK_BYTES of an error body (the rest still streams to the client)."""
    buf = bytearray()
    while len(buf) < outcomes.ERROR_PEEK_BYTES:
        chunk = await response.content.read(outcomes.ERROR_PEEK_BYTES - len(buf))
        if not chunk:
            break
        buf += chunk
    return bytes(buf)


def _screen_answer(response: aiohttp.ClientResponse, upstream: str) -> None:
    """Raise MalformedAnswer for an answer that must not reach the client.

    A 1xx here is a 101 (aiohttp reads the other 1xx itself): the gateway never forwards
    ``Upgrade``, so a switch of protocols is an upstream's error, and relaying it would leave
    the client on a raw byte stream. A control character in a header value would be refused by
    the writer to the client mid-answer; checked here, it is a clean 502."""
    why = None
    if response.status < 200:
        why = f"status {response.status}"
    elif _BAD_HEADER_VALUE.search("\t".join(response.headers.values())):  # tab: allowed, a neutral joint
        why = "a control character in a header value"
    if why is not None:
        event("upstream answer refused", logging.WARNING, upstream=upstream, reason=why)
        raise MalformedAnswer(why)
