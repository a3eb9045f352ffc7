"""What a running service holds: the current compiled config, the store, the group
committer and the metrics. The config is swapped whole on reload; requests read it
once at their start, so in-flight requests finish on the config they began with."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily

from router.config.compile import check_config
from router.config.issues import ERROR, format_issues
from router.config.model import CompiledConfig
from router.delivery.worker import Workers
from router.pipeline.ingest import GroupCommitter
from router.pipeline.routing import clear_caches
from router.server.overload import IngestGate
from router.server.ratelimit import RateLimiter
from router.sources.replay import ReplayCache
from router.store.base import Store


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


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.events = Counter("router_events_total", "Events received, by source and outcome",
                              ["source", "status"], registry=self.registry)
        self.requests = Histogram("router_request_seconds", "Ingest request latency",
                                  ["endpoint", "code"], registry=self.registry,
                                  buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 5))
        self.shed = Counter("router_requests_shed_total",
                            "Ingest requests answered 503 overloaded (max_inflight_requests)",
                            registry=self.registry)
        self.unauthenticated_refused = Counter(
            "router_requests_unauthenticated_refused_total",
            "Ingest requests answered 429 too_many_unauthenticated "
            "(unauthenticated_bodies_per_client)", registry=self.registry)

    def count_results(self, source: str, results: Sequence[dict[str, Any] | None]) -> None:
        for result in results:
            if result is not None:
                self.events.labels(source, result["status"]).inc()


class _CommitterCollector:
    """Exposes how many events each group-commit transaction carried."""

    def __init__(self, committer: GroupCommitter):
        self.committer = committer

    def collect(self) -> Any:
        yield CounterMetricFamily("router_group_commit_transactions",
                                  "Store transactions written by the group committer",
                                  value=self.committer.transactions)
        yield CounterMetricFamily("router_group_commit_events",
                                  "Events written by the group committer",
                                  value=self.committer.committed_events)


log = logging.getLogger("router.reload")


class Runtime:
    def __init__(self, config: CompiledConfig, store: Store, *, workers: bool = True):
        self._config = config
        self.store = store
        s = config.settings
        self.committer = GroupCommitter(store, lambda: self._config, s.group_commit_max_events,
                                        s.group_commit_max_wait_ms, on_commit=self._committed)
        self.metrics = Metrics()
        self.metrics.registry.register(_CommitterCollector(self.committer))
        self.pixel_limiter = RateLimiter(s.pixel_rate_limit_per_minute)
        self.workers = Workers(store, lambda: self._config) if workers else None
        self.started_at = time.time()
        # admission: processing slots (load shedding) and bodies read before auth
        self.gate = IngestGate(self.metrics.shed, self.metrics.unauthenticated_refused)
        self.replays = ReplayCache(s.replay_cache_entries)

    def _committed(self) -> None:
        if self.workers is not None:
            self.workers.notify()

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
        if (config.settings.store_url, config.settings.port, config.settings.host) != (
                old.settings.store_url, old.settings.port, old.settings.host):
            log.warning("%s: store, host and port changes take effect on restart", reason)
        self._config = config
        if self.workers is not None:
            self.workers.sync()
        resumed = await self.store.resume()
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

    async def start(self) -> None:
        await self.store.open()
        self.committer.start()
        if self.workers is not None:
            self.workers.start()

    async def stop(self) -> None:
        await self.committer.stop()  # everything acknowledged is written first
        if self.workers is not None:
            await self.workers.stop()
        await self.store.close()
