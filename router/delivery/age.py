"""The oldest event a platform accepts (`max_event_age` in its destination file).

Platforms refuse stale events, some by failing the whole request (Meta rejects a batch
holding one event older than 7 days). Checking each event when it is about to be sent
— first attempt, retry or replay alike — drops just that event, with the reason, before
it is batched with others.
"""

from __future__ import annotations

from typing import Any

from router.config.model import Destination
from router.expr.functions import parse_time


def too_old(dest: Destination, occurred_at: Any, now: float) -> str | None:
    """Why the event may not be sent any more, or None."""
    limit = dest.max_event_age_seconds
    if limit is None:
        return None
    occurred = parse_time(occurred_at)
    if occurred is None:
        return None
    age = now - occurred.timestamp()
    if age <= limit:
        return None
    return (f"not sent: too old for {dest.name}: occurred {_span(age)} ago, the platform accepts "
            f"events up to {_span(limit)} old (max_event_age)")


def _span(seconds: float) -> str:
    """7d, 72h, 7.5d: whole units when they divide evenly, else one decimal."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            count = seconds / size
            return f"{count:.0f}{unit}" if count == int(count) else f"{count:.1f}{unit}"
    return f"{seconds:.0f}s"
