"""Per-client request limits for endpoints open to the public (the pixel)."""

from __future__ import annotations

import time
from collections import OrderedDict


class RateLimiter:
    """A token bucket per client key, bounded in memory (least recently seen dropped)."""

    def __init__(self, per_minute: int, max_clients: int = 100_000):
        self.rate = per_minute / 60.0
        self.capacity = float(max(per_minute // 6, 10))  # bursts of ~10 s worth
        self.max_clients = max_clients
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def allow(self, key: str, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        tokens, last = self._buckets.pop(key, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - last) * self.rate)
        allowed = tokens >= 1.0
        self._buckets[key] = (tokens - 1.0 if allowed else tokens, now)
        if len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)
        return allowed
