"""Sharing one event loop between acknowledging requests and background work.

The gateway's answer is the product's promise (a sender is told "stored" fast); the
processor and the delivery plane work after it. While requests pile up, background
coroutines give up most of the loop — they report the time they spent and sleep in
proportion — so a burst is acknowledged at the gateway's speed and the durable inbox
absorbs it; when ingest is quiet, background work runs flat out.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


class Governor:
    """Background work's share of the loop while ingest requests are waiting."""

    PRESSURE = 4  # ingest requests in flight at which the gateway counts as busy
    SLICE_SECONDS = 0.005  # background work between two checks

    def __init__(self, share: float = 0.25, in_flight: Callable[[], int] = lambda: 0):
        self.share = share
        self.in_flight = in_flight  # ingest requests being handled now
        self.throttled_seconds = 0.0

    @property
    def busy(self) -> bool:
        return self.in_flight() >= self.PRESSURE

    async def pace(self, spent: float) -> None:
        """After `spent` seconds of background CPU: yield, and while the gateway is
        busy, sleep so background work keeps to its share."""
        if self.busy and spent > 0:
            pause = spent * (1.0 - self.share) / self.share
            self.throttled_seconds += pause
            await asyncio.sleep(pause)
        else:
            await asyncio.sleep(0)


class Slicer:
    """Measures a run of background steps and paces it every `SLICE_SECONDS`."""

    def __init__(self, governor: Governor):
        self.governor = governor
        self.started = time.perf_counter()

    async def tick(self) -> None:
        spent = time.perf_counter() - self.started
        if spent >= Governor.SLICE_SECONDS:
            await self.governor.pace(spent)
            self.started = time.perf_counter()
