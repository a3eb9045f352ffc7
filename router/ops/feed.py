"""The live stream: what happens in this process, as it happens, for `router tail` and
`GET /admin/stream`.

Items are plain JSON objects, one per decision:

- `{"type": "event", ...}` each message as the gateway refuses it or flags an exact
  retry, and as the processor decides it (accepted, duplicate, unmapped, rejected),
  with the destinations it was queued for (`to`);
- `{"type": "delivery", ...}` each delivery outcome (delivered, failed with its retry
  time, dropped with its cause, paused) and each routing decision not to send.

Nothing is built while nobody listens. Each item has an id (`<boot>-<n>`); the last few
thousand are kept while a listener is connected or was within the last minute, so a
client that reconnects with `Last-Event-ID` misses nothing. A listener that cannot keep
up loses items rather than slowing the pipeline, and is told how many.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

FILTERS = ("type", "event", "destination", "status", "account", "environment", "source")
TYPES = ("event", "delivery")
EVENT_STATUSES = ("accepted", "duplicate", "unmapped", "rejected")
DELIVERY_STATUSES = ("delivered", "failed", "dropped", "paused", "queued")
STATUSES = EVENT_STATUSES + DELIVERY_STATUSES
KEEP = 5000
LINGER_SECONDS = 60.0
QUEUE_SIZE = 2000
CLOSED: dict[str, Any] = {"type": "closed"}  # a listener's last item: the server is stopping


@dataclass(frozen=True)
class FeedFilter:
    """Every given field must match; `event` is the canonical event name, `destination`
    matches a delivery to it or an event queued for it."""

    type: str | None = None
    event: str | None = None
    destination: str | None = None
    status: str | None = None
    account: str | None = None
    environment: str | None = None
    source: str | None = None

    def match(self, item: Mapping[str, Any]) -> bool:
        if self.type is not None and item.get("type") != self.type:
            return False
        if self.event is not None and item.get("event_name") != self.event:
            return False
        if self.destination is not None and item.get("destination") != self.destination \
                and self.destination not in item.get("to", ()):
            return False
        for key in ("status", "account", "environment", "source"):
            wanted = getattr(self, key)
            if wanted is not None and item.get(key) != wanted:
                return False
        return True


class Subscription:
    def __init__(self, feed: Feed, wanted: FeedFilter):
        self.feed = feed
        self.filter = wanted
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(QUEUE_SIZE)
        self.lost = 0

    def offer(self, item: dict[str, Any]) -> None:
        if not self.filter.match(item):
            return
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            self.lost += 1

    async def next(self, timeout: float) -> dict[str, Any] | None:
        """The next item; None after `timeout` without one; CLOSED when the feed ends."""
        try:
            return await asyncio.wait_for(self.queue.get(), timeout)
        except TimeoutError:
            return None

    def end(self) -> None:
        while True:
            try:
                self.queue.put_nowait(CLOSED)
                return
            except asyncio.QueueFull:
                self.queue.get_nowait()

    def close(self) -> None:
        self.feed.unsubscribe(self)


class Feed:
    def __init__(self) -> None:
        self.boot = secrets.token_hex(4)
        self._n = 0
        self._kept: deque[dict[str, Any]] = deque(maxlen=KEEP)
        self._subscribers: set[Subscription] = set()
        self._quiet_since = 0.0  # when the last listener left
        self.published = 0

    @property
    def active(self) -> bool:
        """Someone listens, or did a moment ago (and may reconnect)."""
        return bool(self._subscribers) or (
            self._quiet_since > 0 and time.monotonic() - self._quiet_since < LINGER_SECONDS)

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def publish(self, item: dict[str, Any]) -> None:
        self._n += 1
        item["id"] = f"{self.boot}-{self._n}"
        self.published += 1
        self._kept.append(item)
        for subscription in self._subscribers:
            subscription.offer(item)

    def subscribe(self, wanted: FeedFilter, last_id: str | None = None) -> Subscription:
        """A new listener; with the id of the last item it saw, the kept items after it
        come first."""
        subscription = Subscription(self, wanted)
        if last_id:
            boot, _, n = last_id.partition("-")
            if boot == self.boot and n.isdigit():
                after = int(n)
                for item in self._kept:
                    if int(item["id"].rpartition("-")[2]) > after:
                        subscription.offer(item)
        self._subscribers.add(subscription)
        return subscription

    def close(self) -> None:
        """The server is stopping: every listener's stream ends (clients reconnect)."""
        for subscription in list(self._subscribers):
            subscription.end()

    def unsubscribe(self, subscription: Subscription) -> None:
        self._subscribers.discard(subscription)
        if not self._subscribers:
            self._quiet_since = time.monotonic()
