"""What a running service holds: the current compiled config, the store, and the parts of
the flow this process runs — the gateway (inbox appender, waiters), the processor,
the delivery plane — sharing one loop through the governor. The config is swapped
whole on reload; requests read it once at their start, so in-flight requests finish on
the config they began with.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from router.config.compile import check_config
from router.config.issues import ERROR, format_issues
from router.config.model import CompiledConfig
from router.delivery.plane import DeliveryPlane, new_owner
from router.gateway.appender import Appender
from router.gateway.waiters import Waiters
from router.ops.alerting import Alerting
from router.ops.detectors import KINDS
from router.ops.feed import Feed
from router.ops.metrics import Metrics
from router.ops.observe import Observer
from router.pipeline.commit import Result
from router.pipeline.processor import Processor
from router.pipeline.routing import clear_caches
from router.scheduling import Governor
from router.server.http import HttpError
from router.server.overload import IngestGate
from router.server.ratelimit import RateLimiter
from router.sources.replay import ReplayCache
from router.store.base import InboxRow, Store

log = logging.getLogger("router.reload")
ROLES = ("gateway", "processor", "delivery")
HOUSEKEEPING_SECONDS = 600.0


def parse_roles(text: str) -> frozenset[str]:
    roles = frozenset(r.strip() for r in text.split(",") if r.strip())
    unknown = roles - set(ROLES)
    if unknown or not roles:
        raise ValueError(f"unknown role(s) {', '.join(sorted(unknown)) or '(none)'}: "
                         f"choose from {', '.join(ROLES)}")
    return roles


def _snapshot(root: str) -> dict[str, float]:
    out = {}
    for sub in ("configs", "mappings", "destinations.d"):
        for dirpath, _, files in os.walk(os.path.join(root, sub)):
            for name in files:
                if name.endswith((".yaml", ".yml")):
                    path = os.path.join(dirpath, name)
                    try:
                        out[path] = os.stat(path).st_mtime_ns
                    except FileNotFoundError:
                        continue
    return out


class _PipelineCollector:
    """The pipeline's own counters, read when /metrics is scraped."""

    def __init__(self, runtime: Runtime):
        self.runtime = runtime

    def collect(self) -> Any:
        rt = self.runtime
        if rt.appender is not None:
            yield CounterMetricFamily("router_inbox_transactions",
                                      "Inbox append transactions (group commits)",
                                      value=rt.appender.transactions)
            yield CounterMetricFamily("router_inbox_messages",
                                      "Messages appended to the inbox",
                                      value=rt.appender.appended_messages)
        if rt.processor is not None:
            yield CounterMetricFamily("router_processor_batches",
                                      "Processor transactions", value=rt.processor.stats.batches)
            yield GaugeMetricFamily("router_processor_lag_seconds",
                                    "Acknowledgement to decision, for the last batch",
                                    value=rt.processor.stats.last_lag_seconds)
        yield GaugeMetricFamily("router_stream_listeners",
                                "Clients following GET /admin/stream (router tail)",
                                value=rt.feed.subscribers)
        yield GaugeMetricFamily("router_inbox_backlog_messages",
                                "Acknowledged messages not yet processed (estimate)",
                                value=rt.backlog())
        if rt.plane is not None:
            yield CounterMetricFamily("router_delivery_claims",
                                      "Claim transactions of the delivery plane",
                                      value=rt.plane.claims)
            yield CounterMetricFamily("router_delivery_outcome_transactions",
                                      "Outcome group commits", value=rt.plane.writer.transactions)


class Runtime:
    def __init__(self, config: CompiledConfig, store: Store, *,
                 roles: frozenset[str] = frozenset(ROLES)):
        self._config = config
        self.store = store
        self.roles = roles
        s = config.settings
        self.owner = new_owner()
        self.metrics = Metrics()
        # admission: processing slots (load shedding) and bodies read before auth
        self.gate = IngestGate(self.metrics.shed.labels("in_flight"),
                               self.metrics.unauthenticated_refused)
        self.replays = ReplayCache(s.replay_cache_entries)
        # requests holding a processing slot tell background work the gateway is busy
        self.governor = Governor(s.background_share, lambda: self.gate.in_flight)
        self.metrics.registry.register(_PipelineCollector(self))
        self.feed = Feed()
        self.observer = Observer(self.metrics, self.feed, lambda: self._config)
        self.pixel_limiter = RateLimiter(s.pixel_rate_limit_per_minute)
        self.appender = Appender(store, lambda: self._config.settings.dedup_window_seconds,
                                 s.group_commit_max_events) if "gateway" in roles else None
        self.waiters = Waiters(store)
        self.processor = Processor(store, lambda: self._config, self.owner, self.governor,
                                   on_results=self._processed) if "processor" in roles else None
        self.plane = DeliveryPlane(store, lambda: self._config, self.owner, self.governor,
                                   on_outcomes=self.observer.delivered) \
            if "delivery" in roles else None
        # one process of those sharing the store runs the detectors (a lease decides)
        self.alerting = Alerting(store, lambda: self._config, self.owner, self.metrics) \
            if "processor" in roles else None
        self.started_at = time.time()
        self._tasks: list[asyncio.Task[None]] = []
        self._backlog_seen = (0, 0.0)  # (store's inbox depth, when read) for split roles
        self._backlog_left = 0  # inbox rows an earlier run left behind

    # --- callbacks between the stages ---------------------------------------------------

    def _processed(self, row: InboxRow, results: list[Result]) -> None:
        answers = [{"position": i, **r.to_json()} for i, r in enumerate(results)]
        self.waiters.resolve(row.id, answers)
        self.observer.processed(row, results)

    async def refresh_gauges(self) -> None:
        """Before /metrics answers: the store-backed gauges (cached briefly)."""
        await self.metrics.store.refresh(self.store, KINDS,
                                         tuple(sorted(self._config.destinations)))

    async def resume(self, destination: str | None = None, account: str | None = None,
                     trigger: str = "admin") -> int:
        lifted = await self.store.resume(destination, account)
        self.observer.resumed(lifted, destination, account, trigger)
        return lifted

    def backlog(self) -> int:
        """Acknowledged messages not yet processed, as well as this process knows."""
        if self.appender is not None and self.processor is not None:
            return max(0, self.appender.appended_messages + self._backlog_left
                       - self.processor.stats.messages)
        return self._backlog_seen[0]

    def check_backlog(self) -> None:
        """Shed ingest only when the durable backlog is beyond its bound: a burst is
        absorbed by the inbox, a processor that is down for hours is not."""
        limit = self._config.settings.max_backlog_messages
        if limit and self.backlog() >= limit:
            self.metrics.shed.labels("backlog").inc()
            raise HttpError(503, "overloaded", f"{self.backlog()} acknowledged events are "
                            "waiting to be processed; retry shortly",
                            headers={"Retry-After": "5"})

    # --- config ---------------------------------------------------------------------------

    @property
    def config(self) -> CompiledConfig:
        return self._config

    def swap_config(self, config: CompiledConfig) -> None:
        self._config = config

    async def reload(self, reason: str = "reload") -> bool:
        """Compile the config dir again; swap it in whole only if it is valid.

        Compilation runs in a thread so ingest keeps flowing meanwhile. A reload also
        resumes paused connections: new credentials deserve a try."""
        root = self._config.root
        config, issues = await asyncio.to_thread(check_config, root)
        if config is None:
            errors = [i for i in issues if i.severity == ERROR]
            log.error("%s: config in %s is invalid; keeping config %s (%d error(s)):\n%s",
                      reason, root, self._config.config_hash, len(errors),
                      format_issues(errors, "text"))
            return False
        old = self._config
        clear_caches()
        if (config.settings.store_url, config.settings.port, config.settings.host,
                config.settings.partitions) != (old.settings.store_url, old.settings.port,
                                                old.settings.host, old.settings.partitions):
            log.warning("%s: store, host, port and partition changes take effect on restart",
                        reason)
            config = _keep_restart_settings(config, old)
        self._config = config
        if self.plane is not None:
            self.plane.sync()
        resumed = await self.resume(trigger=reason)
        log.info("%s: config %s -> %s%s", reason, old.config_hash, config.config_hash,
                 f" ({resumed} paused connection(s) resumed)" if resumed else "")
        return True

    async def watch(self, interval: float = 1.0) -> None:
        """--watch: reload when a YAML file under the config dir changes."""
        last = _snapshot(self._config.root)
        while True:
            await asyncio.sleep(interval)
            current = _snapshot(self._config.root)
            if current != last:
                last = current
                await self.reload("file change")

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        await self.store.open()
        if self.appender is not None:
            self.appender.start()
        self.waiters.start()
        if self.processor is not None:
            self._tasks.append(asyncio.create_task(self.processor.run(), name="processor"))
            self._tasks.append(asyncio.create_task(self._housekeeping(), name="housekeeping"))
            self._backlog_left, _ = await self.store.inbox_depth()
        if self.plane is not None:
            self.plane.start()
        if self.alerting is not None:
            self.alerting.start()
        # other processes (another role, the CLI's replay and resume) commit to the same
        # store: notice them — often when roles are split, rarely otherwise
        interval = 0.02 if self.roles != frozenset(ROLES) else 0.5
        self._tasks.append(asyncio.create_task(self.store.watch_external(interval),
                                               name="store-watch"))
        if self.processor is None and self.appender is not None:
            self._tasks.append(asyncio.create_task(self._watch_backlog(), name="backlog"))

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(HOUSEKEEPING_SECONDS)
            try:
                removed = await self.store.expire(time.time(),
                                                  self._config.settings.dedup_window_seconds)
                log.debug("housekeeping: %d expired keys and decisions removed", removed)
            except Exception:
                log.exception("housekeeping failed")

    async def _watch_backlog(self) -> None:
        while True:
            depth, _ = await self.store.inbox_depth()
            self._backlog_seen = (depth, time.time())
            await asyncio.sleep(2.0)

    async def stop(self) -> None:
        """In order: acknowledged requests are written, the processor finishes its batch
        and gives its partitions back, deliveries in flight finish and every claim is
        handed back, then the store closes."""
        if self.appender is not None:
            await self.appender.stop()
        if self.processor is not None:
            self.processor.stop()
        for task in self._tasks:
            if task.get_name() != "processor":
                task.cancel()
        processor_task = next((t for t in self._tasks if t.get_name() == "processor"), None)
        if processor_task is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(processor_task, 30)
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.plane is not None:
            await self.plane.stop()
        if self.alerting is not None:
            await self.alerting.stop()
        self.waiters.stop()
        await self.store.release_leases(self.owner)
        await self.store.close()


def _keep_restart_settings(config: CompiledConfig, old: CompiledConfig) -> CompiledConfig:
    from dataclasses import replace

    settings = replace(config.settings, store_url=old.settings.store_url,
                       port=old.settings.port, host=old.settings.host,
                       partitions=old.settings.partitions)
    return replace(config, settings=settings)
