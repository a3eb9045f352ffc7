"""When to try a failed delivery again: exponential backoff, bounded by the retry window.

A platform's `Retry-After` is honoured, but never beyond the window the policy would
spend retrying anyway (the sum of its backoff delays): a hostile or broken answer of
`Retry-After: 999999999` must not park a delivery until 2058, out of reach of every
operator who is watching the queue.
"""

from __future__ import annotations

import os
import random

from router.config.model import CompiledConfig, Destination


class RetryPolicy:
    """Exponential backoff with jitter; 5 attempts over about a day by default."""

    def __init__(self, config: CompiledConfig, dest: Destination):
        env_base = os.environ.get("ROUTER_RETRY_BASE_SECONDS")
        self.base = float(env_base) if env_base else (
            dest.retry_base_seconds or config.settings.retry_base_seconds)
        self.factor = dest.retry_factor
        self.max_attempts = dest.max_attempts or config.settings.max_attempts

    @property
    def window(self) -> float:
        """Seconds between the first attempt and the last retry the policy schedules
        (without jitter): the longest any delivery is meant to wait in total."""
        return retry_window(self.base, self.factor, self.max_attempts)

    def delay(self, attempts: int, retry_after: float | None = None) -> float:
        backoff = self.base * self.factor ** max(0, attempts - 1) * random.uniform(0.8, 1.2)
        return max(backoff, capped_retry_after(retry_after, self.window))


def retry_window(base: float, factor: float, max_attempts: int) -> float:
    """base + base*factor + ... for the max_attempts - 1 waits between attempts (at
    least one base delay, so a single-attempt policy still honours a short Retry-After)."""
    waits = max(1, max_attempts - 1)
    return sum(base * factor ** i for i in range(waits))


def capped_retry_after(retry_after: float | None, window: float) -> float:
    """A platform's Retry-After in seconds, at most `window`; 0 when absent or invalid."""
    if retry_after is None or retry_after != retry_after or retry_after <= 0:  # nan, <= 0
        return 0.0
    return min(float(retry_after), window)
