"""The request path of the proxy port, one stage per module.

    handler      drain → hygiene → route → body → idempotency | cache → forward → relay → invalidate
    route        upstream and route under the request's policy snapshot; deadline; answer format
    body         the client's body: held for replay or streamed once; the client's failures
    idempotent   Idempotency-Key: replay what a key kept, or forward and keep what the outcome proves
    cached       GET/HEAD with ``cache:``: HIT, STALE, MISS, collapsing (``cache.Flights``), storing
    forward      fault → rate limits → quota → breaker → bulkhead → tries
    tries        the retry loop and one try; exceptions become outcomes (``outcomes.classify``)
    relay        the answer streamed to the client, or the failure raised (``outcomes.failure``)
    invalidate   a 2xx write soft-purges its upstream's cached entries
    exchange     what a request carries down the stages (``Exchange``, ``Call``)

Nothing is buffered whole except an error body of at most 64 KiB read to find its API code, an
answer being cached (at most ``max_entry_bytes``) and one kept under an Idempotency-Key.
"""

from .handler import Proxy

__all__ = ["Proxy"]
