"""One place that turns what the stages decide into logs, metrics and the live stream.

The runtime calls it with the gateway's answers to each request, the processor's results
for each inbox row, and each flush of delivery outcomes (the callbacks the stages
already have); nothing here writes to the store or waits, so observing never slows the
pipeline. Log lines (logger `router.events` and `router.delivery`) carry their fields
as structure (see `router.ops.logs`):

- WARNING: a rejected event, a failed attempt with its retry time, a dropped delivery
  that was meant to go (too old, refused, retries used up, unbuildable);
- INFO: an unmapped event, a resume;
- DEBUG: deliveries, routing decisions not to send (consent, send_if), exact retries.
"""

from __future__ import annotations

import logging
import time
from collections import Counter as Tally
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from router.config.model import CompiledConfig
from router.ops.feed import Feed
from router.ops.logs import fields
from router.ops.metrics import Metrics
from router.redact import mask_email
from router.store.base import INTENTIONAL_CAUSES, InboxRow, Outcome

events_log = logging.getLogger("router.events")
delivery_log = logging.getLogger("router.delivery")


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1000):03d}Z"


def _clean(text: str | None) -> str | None:
    """A platform's error message as logged and streamed: verbatim, emails masked."""
    return mask_email(text) if text and "@" in text else text


def outcome_status(outcome: Outcome) -> str:
    """The status an operator reads: a queued outcome without a due time is parked behind
    a pause; one with a due time was handed back undecided."""
    if outcome.status == "queued":
        return "paused" if outcome.due_at is None else "queued"
    return outcome.status


class Observer:
    def __init__(self, metrics: Metrics, feed: Feed, get_config: Callable[[], CompiledConfig]):
        self.metrics = metrics
        self.feed = feed
        self.get_config = get_config
        self._enabled: dict[tuple[int, str, str], tuple[str, ...]] = {}
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}

    def _child(self, metric: Any, *labels: str) -> Any:
        """A labelled metric, kept: `labels()` costs a lock and a lookup per call."""
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    # --- stage 1 -------------------------------------------------------------------------

    def acknowledged(self, source: str, account: str, environment: str,
                     results: Sequence[Mapping[str, Any] | None]) -> None:
        """The gateway's own answers to one request (before stage 2 decided anything)."""
        self.metrics.count_results(source, results)
        for result in results:
            if result is None or result["status"] == "accepted":
                continue
            if result["status"] == "rejected":
                events_log.warning(
                    "event rejected at the gateway: %s", result.get("reason"),
                    extra=fields(event="event.rejected", stage="gateway", account=account,
                                 environment=environment, source=source,
                                 event_id=result.get("event_id"), code=result.get("code"),
                                 reason=result.get("reason")))
            else:
                events_log.debug("exact retry acknowledged again", extra=fields(
                    event="event.retry", account=account, environment=environment,
                    source=source, event_id=result.get("event_id")))
            if self.feed.active:
                self.feed.publish({
                    "type": "event", "at": _iso(time.time()), "stage": "gateway",
                    "account": account, "environment": environment, "source": source,
                    "event_id": result.get("event_id"), "status": result["status"],
                    **{k: result[k] for k in ("code", "reason") if result.get(k)}})

    # --- stage 2 -------------------------------------------------------------------------

    def processed(self, row: InboxRow, results: Sequence[Any]) -> None:
        """The processor's results for one inbox row (router.pipeline.commit.Result)."""
        metrics = self.metrics
        drops: Tally[tuple[str, str]] = Tally()
        live = self.feed.active
        at = _iso(time.time()) if live else ""
        scope = {"account": row.account, "environment": row.environment, "source": row.source}
        debug = delivery_log.isEnabledFor(logging.DEBUG)
        for result in results:
            self._child(metrics.processed, row.source, result.status, result.code or "").inc()
            if result.status == "rejected":
                self._child(metrics.rejected, row.source, "processor", result.code or "").inc()
                events_log.warning("event rejected: %s", result.reason, extra=fields(
                    event="event.rejected", stage="processor", **scope,
                    event_id=result.event_id, event_name=result.event_name, code=result.code,
                    reason=result.reason))
            elif result.status == "unmapped":
                events_log.info("event unmapped: no rule for %r in the %s mapping",
                                result.source_event, row.source, extra=fields(
                                    event="event.unmapped", **scope, event_id=result.event_id,
                                    source_event=result.source_event))
            routes = result.routes or {}
            if result.status == "accepted" and result.event_name:
                for name, route in routes.items():
                    if route.get("status") == "dropped":
                        cause = route.get("cause") or "not_listed"
                        drops[(name, cause)] += 1
                        if debug:
                            delivery_log.debug("not sent: %s", route.get("reason"), extra=fields(
                                event="delivery.not_sent", destination=name, **scope,
                                event_id=result.event_id, event_name=result.event_name,
                                cause=cause, reason=route.get("reason")))
                for name in self._enabled_for(row.account, row.environment):
                    if name not in routes:
                        drops[(name, "not_listed")] += 1
            if live:
                item: dict[str, Any] = {
                    "type": "event", "at": at, "stage": "processor", **scope,
                    "event_id": result.event_id, "event_name": result.event_name,
                    "status": result.status}
                for key in ("code", "reason", "duplicate_of", "seq"):
                    value = getattr(result, key)
                    if value:
                        item[key] = value
                if routes:
                    item["to"] = sorted(n for n, r in routes.items()
                                        if r.get("status") == "queued")
                self.feed.publish(item)
                for name, route in sorted(routes.items()):
                    if route.get("status") == "dropped":
                        self.feed.publish({
                            "type": "delivery", "at": at, **scope, "event_id": result.event_id,
                            "event_name": result.event_name, "destination": name,
                            "status": "dropped", "attempt": 0,
                            "cause": route.get("cause"), "error": route.get("reason"),
                            **({"seq": result.seq} if result.seq else {})})
        for (name, cause), count in drops.items():
            self._child(metrics.dropped, name, cause).inc(count)

    def _enabled_for(self, account: str, environment: str) -> tuple[str, ...]:
        config = self.get_config()
        key = (id(config), account, environment)
        names = self._enabled.get(key)
        if names is None:
            acc = config.accounts.get(account)
            env = acc.environments.get(environment) if acc else None
            names = tuple(n for n, c in (env.destinations.items() if env else ())
                          if c.enabled and n in config.destinations)
            if len(self._enabled) > 10_000:
                self._enabled.clear()
            self._enabled[key] = names
        return names

    # --- delivery --------------------------------------------------------------------------

    def delivered(self, outcomes: Sequence[Outcome]) -> None:
        """One flush of delivery outcomes, all destinations together."""
        metrics = self.metrics
        requests: dict[tuple[str, int], list[Outcome]] = {}
        live = self.feed.active
        at = _iso(time.time())
        for o in outcomes:
            status = outcome_status(o)
            if o.attempted and o.request_ref is not None:
                requests.setdefault((o.destination, o.request_ref), []).append(o)
            if o.status == "delivered":
                self._child(metrics.delivered, o.destination).inc()
                if o.latency_ms is not None:
                    self._child(metrics.latency, o.destination).observe(o.latency_ms / 1000)
            elif o.attempted and o.cause != "event_error":
                self._child(metrics.failures, o.destination).inc()
            if o.status == "failed" and o.due_at is not None:
                self._child(metrics.retries, o.destination).inc()
            if o.status == "dropped":
                self._child(metrics.dropped, o.destination, o.cause or "permanent").inc()
            self._log(o, status)
            if live:
                self.feed.publish(self._item(o, status, at))
        for (destination, _), group in requests.items():
            self._child(metrics.batch, destination).observe(len(group))
            ms = group[0].attempt_ms
            if ms is not None:
                self._child(metrics.request_seconds, destination).observe(ms / 1000)

    @staticmethod
    def _scope(o: Outcome) -> dict[str, Any]:
        if o.event is None:
            return {"seq": o.event_seq}
        row = o.event.row
        return {"account": row.account, "environment": row.environment, "source": row.source,
                "event_id": row.event_id, "event_name": row.event_name, "seq": o.event_seq}

    def _log(self, o: Outcome, status: str) -> None:
        if status == "failed":
            level = logging.WARNING
        elif status == "dropped":
            level = logging.DEBUG if o.cause in INTENTIONAL_CAUSES else logging.WARNING
        else:
            level = logging.DEBUG
        if not delivery_log.isEnabledFor(level):
            return  # the common case (a delivery at INFO): no fields built
        error = _clean(o.error)
        common = {"destination": o.destination, **self._scope(o), "status": status,
                  "attempt": o.attempt or None}
        if status == "failed":
            delivery_log.warning(
                "delivery failed, retry at %s: %s", o.next_retry_at, error,
                extra=fields(event="delivery.retry", **common, error=error,
                             next_retry_at=o.next_retry_at))
        elif status == "dropped":
            delivery_log.log(level, "delivery dropped (%s): %s", o.cause, error,
                             extra=fields(event="delivery.dropped", **common, cause=o.cause,
                                          error=error))
        elif status == "delivered":
            delivery_log.debug("delivered", extra=fields(
                event="delivery.delivered", **common, latency_ms=o.latency_ms))
        else:
            delivery_log.debug("delivery %s: %s", status, error, extra=fields(
                event=f"delivery.{status}", **common, error=error))

    def _item(self, o: Outcome, status: str, at: str) -> dict[str, Any]:
        item: dict[str, Any] = {"type": "delivery", "at": at, **self._scope(o),
                                "destination": o.destination, "status": status,
                                "attempt": o.attempt}
        for key, value in (("error", _clean(o.error)), ("cause", o.cause),
                           ("next_retry_at", o.next_retry_at), ("latency_ms", o.latency_ms)):
            if value is not None:
                item[key] = value
        return item

    # --- operator actions ---------------------------------------------------------------------

    def resumed(self, count: int, destination: str | None, account: str | None,
                trigger: str) -> None:
        if count:
            delivery_log.info("resumed %d paused connection(s) (%s)", count, trigger,
                              extra=fields(event="connection.resumed", destination=destination,
                                           account=account, connections=count,
                                           trigger=trigger))
