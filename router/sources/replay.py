"""An optional replay cache for signatures that carry no timestamp.

An HMAC over the body alone (Segment's `X-Signature`, Shopify's HMAC) stays valid for
ever: whoever captured one signed request can send it again. Within the dedup window a
replay is a duplicate and changes nothing; after it, the replayed events would be stored
and delivered again. With `server.replay_window_seconds` set, every accepted request
authenticated by such a signature is remembered (a digest of the signature, never the
body) for that window, and the same signature again stores nothing and is answered 200
with every message a `duplicate` (a sender retrying a request whose answer it lost must
not count it as failed). Schemes that sign a timestamp do not need it (their tolerance
bounds a replay, and the dedup window covers the tolerance).

In-process and bounded: at most `server.replay_cache_entries` signatures are kept, the
oldest forgotten first when more arrive within the window. With one `router serve`
process (SQLite) that is every request; with several processes behind a load balancer
each remembers only what it served, so a replay sent to another process passes.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict


class ReplayCache:
    def __init__(self, max_entries: int = 100_000) -> None:
        self.max_entries = max_entries
        self._seen: OrderedDict[bytes, float] = OrderedDict()  # key -> expiry

    @staticmethod
    def key(source: str, signature: bytes) -> bytes:
        return hashlib.sha256(source.encode() + b"\0" + signature).digest()

    def seen(self, key: bytes, now: float | None = None) -> bool:
        """Was this signature accepted within its window?"""
        now = time.monotonic() if now is None else now
        self._expire(now)
        expiry = self._seen.get(key)
        return expiry is not None and expiry > now

    def remember(self, key: bytes, window: float, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self._seen.pop(key, None)
        self._seen[key] = now + window
        while len(self._seen) > self.max_entries:
            self._seen.popitem(last=False)

    def _expire(self, now: float) -> None:
        # entries are in insertion order and every window is the same: expired ones
        # are at the front
        while self._seen:
            key, expiry = next(iter(self._seen.items()))
            if expiry > now:
                break
            del self._seen[key]

    def __len__(self) -> int:
        return len(self._seen)
