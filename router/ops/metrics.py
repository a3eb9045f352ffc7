"""The Prometheus metrics of one process (`/metrics`); docs/metrics.md lists them all,
with the PromQL behind each alert.

Counters are counted where the work happens (the gateway's answers, the processor's
decisions, the delivery plane's outcomes), so with roles split over processes each
process reports its own share and Prometheus sums them. Gauges of the shared store
(queue depth, the oldest due delivery, paused connections, open alerts, the inbox) are
read from the store when /metrics is scraped, at most once per `STORE_TTL` seconds.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.core import GaugeMetricFamily

from router.store.base import QueueRow, Store

STORE_TTL = 2.0
LATENCY_BUCKETS = (.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600, 21600,
                   86400)
REQUEST_BUCKETS = (.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30)
BATCH_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 10000)


class Metrics:
    def __init__(self) -> None:
        # no `*_created` series beside every counter: they double the scrape for nothing
        # an alert uses (process-wide setting; the router is the only exporter here)
        disable_created_metrics()
        self.registry = CollectorRegistry()
        r = self.registry
        # --- per source (the gateway and the processor) ---
        self.received = Counter("router_events_received_total",
                                "Messages received by the gateway, by source", ["source"],
                                registry=r)
        self.events = Counter("router_events_total",
                              "The gateway's answers, by source and status (accepted, "
                              "duplicate = exact retry, rejected)", ["source", "status"],
                              registry=r)
        self.rejected = Counter("router_events_rejected_total",
                                "Rejected messages by source, stage (gateway, processor) and "
                                "code", ["source", "stage", "code"], registry=r)
        self.processed = Counter("router_processed_total",
                                 "Events decided by the processor (stage 2), by source, status "
                                 "(accepted, duplicate, unmapped, rejected) and rejection code",
                                 ["source", "status", "code"], registry=r)
        self.requests = Histogram("router_request_seconds", "Ingest request latency",
                                  ["endpoint", "code"], registry=r,
                                  buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 5))
        self.shed = Counter("router_requests_shed_total",
                            "Ingest requests answered 503 overloaded", ["reason"], registry=r)
        self.unauthenticated_refused = Counter(
            "router_requests_unauthenticated_refused_total",
            "Ingest requests answered 429 too_many_unauthenticated "
            "(unauthenticated_bodies_per_client)", registry=r)
        # --- per destination (routing and the delivery plane) ---
        self.delivered = Counter("router_delivered_total",
                                 "Deliveries the platform acknowledged", ["destination"],
                                 registry=r)
        self.failures = Counter("router_delivery_failures_total",
                                "Attempts that did not deliver (to be retried, refused, or "
                                "paused on rejected credentials)", ["destination"], registry=r)
        self.retries = Counter("router_delivery_retries_total", "Retries scheduled",
                               ["destination"], registry=r)
        self.dropped = Counter("router_dropped_total",
                               "Deliveries not sent, by reason: consent, not_listed, send_if "
                               "(intentional); too_old, permanent, event_error, "
                               "retries_exhausted, invalid, disabled (losses)",
                               ["destination", "reason"], registry=r)
        self.latency = Histogram("router_delivery_latency_seconds",
                                 "Arrival at the router to the platform's acknowledgement",
                                 ["destination"], registry=r, buckets=LATENCY_BUCKETS)
        self.request_seconds = Histogram("router_delivery_request_seconds",
                                         "One request's round trip to the platform",
                                         ["destination"], registry=r, buckets=REQUEST_BUCKETS)
        self.batch = Histogram("router_delivery_batch_events", "Events per request sent",
                               ["destination"], registry=r, buckets=BATCH_BUCKETS)
        # --- alerts ---
        self.notifications = Counter("router_alert_notifications_total",
                                     "Alert notifications by channel and result (sent, "
                                     "retry, failed = given up)", ["channel", "result"],
                                     registry=r)
        self.detector_runs = Counter("router_alert_detector_runs_total",
                                     "Detector passes, by result (ok, error)", ["result"],
                                     registry=r)
        self.store = StoreGauges()
        r.register(self.store)
        self.judged = JudgedGauges()
        r.register(self.judged)

    def count_results(self, source: str, results: Any) -> None:
        """The gateway's answers to one request (before any wait for stage 2)."""
        for result in results:
            if result is None:
                continue
            self.received.labels(source).inc()
            status = result["status"]
            self.events.labels(source, status).inc()
            if status == "rejected":
                self.rejected.labels(source, "gateway", result.get("code") or "").inc()


class StoreGauges:
    """Gauges read from the shared store at scrape time (see `refresh`)."""

    def __init__(self) -> None:
        self.read_at = 0.0
        self.queue: list[QueueRow] = []
        self.paused: dict[str, int] = {}
        self.open_alerts: dict[str, int] = {}
        self.inbox: tuple[int, float | None] = (0, None)
        self.now = 0.0
        self.destinations: tuple[str, ...] = ()

    async def refresh(self, store: Store, kinds: tuple[str, ...],
                      destinations: tuple[str, ...] = ()) -> None:
        """`destinations`: reported at 0 when nothing is pending, rather than absent."""
        now = time.time()
        if now - self.read_at < STORE_TTL:
            return
        self.read_at = now
        self.destinations = destinations
        self.queue = await store.delivery_queue(now)
        paused: dict[str, int] = {}
        for pause in await store.pauses():
            paused[pause.destination] = paused.get(pause.destination, 0) + 1
        self.paused = paused
        counts = dict.fromkeys(kinds, 0)
        for alert in await store.alerts(open_only=True, limit=10_000):
            counts[alert.kind] = counts.get(alert.kind, 0) + 1
        self.open_alerts = counts
        self.inbox = await store.inbox_depth()
        self.now = now

    def collect(self) -> Iterator[GaugeMetricFamily]:
        depth = GaugeMetricFamily("router_delivery_queue_depth",
                                  "Pending deliveries by destination and state: due (waiting "
                                  "to be sent), scheduled (a retry or a hold), paused (waiting "
                                  "for a resume), in_flight (claimed)",
                                  labels=["destination", "state"])
        oldest = GaugeMetricFamily("router_delivery_oldest_due_seconds",
                                   "Age of the longest-waiting due delivery (0: none due)",
                                   labels=["destination"])
        by_destination: dict[str, list[int]] = {d: [0, 0, 0, 0] for d in self.destinations}
        ages: dict[str, float] = {}
        for row in self.queue:
            counts = by_destination.setdefault(row.destination, [0, 0, 0, 0])
            for i, value in enumerate((row.due, row.scheduled, row.parked, row.in_flight)):
                counts[i] += value
            if row.oldest_due_at is not None:
                age = max(0.0, self.now - row.oldest_due_at)
                ages[row.destination] = max(ages.get(row.destination, 0.0), age)
        for destination, counts in sorted(by_destination.items()):
            for state, value in zip(("due", "scheduled", "paused", "in_flight"), counts,
                                    strict=True):
                depth.add_metric([destination, state], value)
            oldest.add_metric([destination], round(ages.get(destination, 0.0), 3))
        yield depth
        yield oldest
        paused = GaugeMetricFamily("router_paused_connections",
                                   "Connections paused on rejected credentials",
                                   labels=["destination"])
        for destination, count in sorted({**dict.fromkeys(self.destinations, 0),
                                          **self.paused}.items()):
            paused.add_metric([destination], count)
        yield paused
        alerts = GaugeMetricFamily("router_alerts_open", "Open alerts by kind", labels=["kind"])
        for kind, count in sorted(self.open_alerts.items()):
            alerts.add_metric([kind], count)
        yield alerts
        rows, arrived = self.inbox
        yield GaugeMetricFamily("router_inbox_depth",
                                "Acknowledged inbox rows (requests) waiting for the processor",
                                value=rows)
        yield GaugeMetricFamily("router_inbox_oldest_seconds",
                                "Age of the oldest acknowledged row waiting for the processor",
                                value=round(max(0.0, self.now - arrived), 3) if arrived else 0.0)


class JudgedGauges:
    """The numbers the detectors judged on their last pass (reported by the process that
    runs them): channel accuracy, identifier shares and source traffic, so Prometheus can
    alert on the same figures."""

    FAMILIES = {
        "channel_accuracy": ("router_channel_accuracy",
                             "Delivered + intentionally not sent / orders, per connection, "
                             "over the delivery_rate_drop window",
                             ["destination", "account", "environment"]),
        "channel_orders": ("router_channel_orders",
                           "Orders in the delivery_rate_drop window, per connection",
                           ["destination", "account", "environment"]),
        "identifier_share": ("router_identifier_share",
                             "Share of a destination's events carrying an identifier: in the "
                             "match_quality_drop window (current) and the one before (baseline)",
                             ["destination", "account", "environment", "event_name",
                              "identifier", "window"]),
        "tracking_events": ("router_tracking_events",
                            "Events per source in the tracking_stopped window (current) and "
                            "its average at the same time in earlier periods (baseline)",
                            ["account", "environment", "source", "window"]),
    }

    def __init__(self) -> None:
        self.values: dict[str, dict[tuple[str, ...], float]] = {}

    def collect(self) -> Iterator[GaugeMetricFamily]:
        for key, (name, documentation, labels) in self.FAMILIES.items():
            family = GaugeMetricFamily(name, documentation, labels=labels)
            for label_values, value in sorted(self.values.get(key, {}).items()):
                family.add_metric(list(label_values), value)
            yield family
