"""Admission to ingest: load shedding, and a bound on bodies read before authentication.

Ingest is CPU-bound: past saturation, accepting more requests only queues them — memory
grows and every client's acknowledgement arrives later (at 500 events/s against a
~150 events/s process the ingest p50 reached 13 s). A bounded number of requests being
processed keeps latency and memory bounded; the excess is answered at once with 503
`overloaded` and `Retry-After`, which the Segment and RudderStack SDKs, Shopify and
browsers' retry logic treat as "try again", so nothing is lost and nothing is stored.

A processing slot is taken only once a request is authenticated and its body is read:
a client that sends its body slowly, or sends none, holds a connection but never a
slot, so it cannot crowd out the clients that are being served. Bodies that must be
read before the sender is known (an HMAC signs the body; a write key may be in it; the
pixel has no secret) are bounded per client address instead: beyond
`server.unauthenticated_bodies_per_client` at once, 429 `too_many_unauthenticated`.
Every body read has a deadline (`server.body_timeout_seconds`, router/server/http.py).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import Counter as PromCounter

from router.server.http import HttpError


class IngestGate:
    """Process-wide admission state; the limits are read at each call so a config
    reload changes them."""

    def __init__(self, shed: PromCounter, refused: PromCounter) -> None:
        self.in_flight = 0
        self._unauthenticated: Counter[str] = Counter()
        self._shed = shed
        self._refused = refused

    @contextmanager
    def slot(self, limit: int) -> Iterator[None]:
        """One of `limit` processing slots, or 503 overloaded at once."""
        if self.in_flight >= limit:
            self._shed.inc()
            raise HttpError(503, "overloaded",
                            f"{limit} ingest requests are already in progress; retry shortly",
                            headers={"Retry-After": "1"})
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1

    @contextmanager
    def unauthenticated(self, client: str | None, limit: int) -> Iterator[None]:
        """Reading a body from a sender not yet authenticated: at most `limit` at once
        per client address, else 429 at once."""
        key = client or "unknown"
        if self._unauthenticated[key] >= limit:
            self._refused.inc()
            raise HttpError(429, "too_many_unauthenticated",
                            f"{limit} requests from this client are already sending a body "
                            "before authenticating; retry shortly",
                            headers={"Retry-After": "1"})
        self._unauthenticated[key] += 1
        try:
            yield
        finally:
            self._unauthenticated[key] -= 1
            if not self._unauthenticated[key]:
                del self._unauthenticated[key]

    def unauthenticated_now(self) -> int:
        return sum(self._unauthenticated.values())
