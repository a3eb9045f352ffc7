"""The alerting loop of a process: detectors every `alerts.interval_seconds`, and the
notifier sending what they (and pauses) opened and resolved.

Several processes may share a store; one of them at a time runs the detectors and
sends notifications, the holder of the `alerting` lease (renewed each pass, handed
back on a graceful shutdown, taken over by another process when it runs out).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from router.config.model import CompiledConfig
from router.expr.functions import iso_time
from router.ops.detectors import Detectors
from router.ops.metrics import Metrics
from router.ops.notify import Notifier
from router.store.base import Changes, Store

log = logging.getLogger("router.alerts")
LEASE_KIND = "alerting"
LEASE_KEY = "detectors"


class Alerting:
    def __init__(self, store: Store, get_config: Callable[[], CompiledConfig], owner: str,
                 metrics: Metrics | None = None):
        self.store = store
        self.get_config = get_config
        self.owner = owner
        self.metrics = metrics
        self.detectors = Detectors(store)
        self.notifier = Notifier(store, lambda: get_config().settings.alerts, metrics)
        self.leader = False
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self._unsubscribe: Callable[[], None] | None = None

    def start(self) -> None:
        self._unsubscribe = self.store.notifier.subscribe(self._on_changes)
        self._tasks = [asyncio.create_task(self._run(), name="alert-detectors"),
                       asyncio.create_task(self.notifier.run(), name="alert-notifier")]

    async def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def _on_changes(self, changes: Changes) -> None:
        if changes.pauses:  # a pause opened (or a resume resolved) a platform_down alert
            self.notifier.wake()

    async def _run(self) -> None:
        while True:
            interval = self.get_config().settings.alerts.interval_seconds
            try:
                await self.pass_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("alerting pass failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), interval)
            self._wake.clear()

    async def pass_once(self, now: float | None = None) -> list[Any]:
        config = self.get_config()
        interval = config.settings.alerts.interval_seconds
        held = await self.store.claim_leases(LEASE_KIND, [LEASE_KEY], self.owner,
                                             max(10.0, 3 * interval))
        was = self.leader
        self.leader = self.notifier.enabled = bool(held)
        if self.leader != was:
            log.info("alerting %s in this process", "runs" if self.leader else "runs elsewhere")
        if not self.leader:
            if self.metrics is not None:
                self.metrics.judged.values = {}  # the leader reports them
            return []
        started = time.perf_counter()
        transitions = await self.detectors.run_once(config, now)
        if self.metrics is not None:
            self.metrics.judged.values = self.detectors.values
            self.metrics.detector_runs.labels(
                "error" if self.detectors.failures else "ok").inc()
        for t in transitions:
            # openings and resolutions reach the log through the `log` channel; an update
            # (the platform's error changed...) is only history, so it is logged here
            log.log(logging.INFO if t.action == "updated" else logging.DEBUG, "alert %s: %s %s",
                    t.action, t.kind, t.subject,
                    extra={"fields": {"event": f"alert.{t.action}", "kind": t.kind,
                                      "subject": t.subject}})
        if transitions:
            self.notifier.wake()
        log.debug("detectors ran in %.1f ms", (time.perf_counter() - started) * 1000)
        return transitions

    def status(self) -> dict[str, Any]:
        last = self.detectors.last_run
        return {"leader": self.leader, "last_run": iso_time(last) if last else None,
                "failing_detectors": dict(self.detectors.failures)}
