"""Sending alert openings and resolutions to every channel, without ever holding up
the pipeline or the detectors.

The store's alert history is the queue: an `opened` or `resolved` entry waits there
until the channels are done with it, so a notification survives a restart (sent at
least once). Each (entry, channel) is tried on its own task with the channel's timeout;
a failing channel is retried with exponential backoff (base x4, at most 10 minutes)
while the others go on; after `channel_max_attempts` it is given up and logged. When
every channel has succeeded or given up, the entry is marked with each one's result.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp

from router.config.model import AlertSettings, ChannelSpec
from router.ops.channels import ChannelError, Notice, send
from router.ops.logs import fields
from router.ops.metrics import Metrics
from router.store.base import AlertLogEntry, Store

log = logging.getLogger("router.alerts")
MAX_DELAY = 600.0


@dataclass
class _Attempts:
    entry: AlertLogEntry
    channels: dict[str, ChannelSpec]
    tries: dict[str, int] = field(default_factory=dict)
    next_at: dict[str, float] = field(default_factory=dict)
    results: dict[str, str] = field(default_factory=dict)  # channel -> "sent" | "failed: ..."
    running: set[str] = field(default_factory=set)

    def done(self) -> bool:
        return all(name in self.results for name in self.channels)


def backoff(settings: AlertSettings, tries: int) -> float:
    return min(MAX_DELAY, settings.channel_retry_base_seconds * 4 ** max(0, tries - 1))


class Notifier:
    def __init__(self, store: Store, get_settings: Callable[[], AlertSettings],
                 metrics: Metrics | None = None):
        self.store = store
        self.get_settings = get_settings
        self.metrics = metrics
        self._work: dict[int, _Attempts] = {}
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None
        self.enabled = False  # only the process holding the alerting lease sends

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        self._session = aiohttp.ClientSession()
        try:
            while True:
                delay = await self.step()
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay)
        finally:
            for task in list(self._tasks):
                task.cancel()
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._session.close()

    async def step(self) -> float:
        """Start what is due; returns how long to sleep before the next retry."""
        settings = self.get_settings()
        if not self.enabled:
            return settings.interval_seconds
        channels = {c.name: c for c in settings.channels if c.enabled}
        try:
            pending = await self.store.alert_log(pending=True, limit=100)
        except Exception:
            log.exception("reading pending alert notifications failed")
            return 5.0
        for entry in pending:
            if entry.id not in self._work:
                self._work[entry.id] = _Attempts(entry, dict(channels))
        now = time.monotonic()
        wait = settings.interval_seconds
        for work in list(self._work.values()):
            if work.done():
                await self._finish(work)
                continue
            for name, spec in work.channels.items():
                if name in work.results or name in work.running:
                    continue
                due = work.next_at.get(name, 0.0)
                if due <= now:
                    work.running.add(name)
                    task = asyncio.create_task(self._attempt(work, name, spec))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
                else:
                    wait = min(wait, due - now)
        return max(0.05, wait)

    async def _attempt(self, work: _Attempts, name: str, spec: ChannelSpec) -> None:
        settings = self.get_settings()
        work.tries[name] = work.tries.get(name, 0) + 1
        try:
            alert = await self.store.alert(work.entry.alert_id)
            if alert is None:
                work.results[name] = "failed: the alert no longer exists"
                return
            assert self._session is not None
            await send(spec, Notice(alert, work.entry, settings.console_url), self._session)
            work.results[name] = "sent"
            self._count(name, "sent")
        except (ChannelError, Exception) as exc:
            message = str(exc) if isinstance(exc, ChannelError) else \
                f"{type(exc).__name__}: {exc}"
            if work.tries[name] >= settings.channel_max_attempts:
                work.results[name] = f"failed: {message}"
                self._count(name, "failed")
                log.error("alert channel %s gave up on %s %s after %d attempts: %s", name,
                          work.entry.kind, work.entry.action, work.tries[name], message,
                          extra=fields(event="alert.notify_failed", channel=name,
                                       alert_id=work.entry.alert_id, error=message))
            else:
                delay = backoff(settings, work.tries[name])
                work.next_at[name] = time.monotonic() + delay
                self._count(name, "retry")
                log.warning("alert channel %s failed (attempt %d), retry in %.1f s: %s", name,
                            work.tries[name], delay, message,
                            extra=fields(event="alert.notify_retry", channel=name,
                                         alert_id=work.entry.alert_id, error=message))
        finally:
            work.running.discard(name)
            self._wake.set()

    async def _finish(self, work: _Attempts) -> None:
        try:
            await self.store.mark_notified(work.entry.id, work.results)
        except Exception:
            log.exception("recording notification results failed; retrying")
            return
        self._work.pop(work.entry.id, None)

    def _count(self, channel: str, result: str) -> None:
        if self.metrics is not None:
            self.metrics.notifications.labels(channel, result).inc()
