"""The alert detectors: periodic questions over the store, one alert per condition.

Each detector looks at every subject the configuration gives it (connections =
destination/account/environment, sources, identifiers) and says, per subject, FIRING
(open the alert, or refresh its evidence), OK (resolve it) or UNKNOWN (too little data
to judge: leave it as it is). `reconcile` applies that to the store: at most one open
alert per (kind, subject), its evidence refreshed each pass, an `updated` entry in its
history when what matters changed (the platform's error, the state), and resolved with
the evidence of the recovery. An alert whose subject left the configuration is resolved.

Evidence (`detail`) has one shape for every kind, which the channels and the console
render: `summary` (one line), the scope (`destination`, `account`, `environment`,
`source`, `event_name`, `identifier`), `window` {since, until, seconds}, `numbers` {name:
value}, `examples` (a few event ids), `last_error` (the platform's, verbatim) and
`action` (what to do).

- platform_down: consecutive failed attempts on a connection (no success between) at or
  above `min_failures`, the latest within the window; a paused connection is opened by
  the pause itself and resolved by the resume.
- queue_backlog: a due delivery waiting longer than `max_age_seconds`, or the pending
  depth of a connection rising for `growth_seconds` up to at least `min_depth`; the
  inbox (acknowledged messages the processor has not reached) older than
  `inbox_max_age_seconds`.
- tracking_stopped: a source (or an account with several) whose events in the last
  window fell to `ratio` or less of the same window `period_seconds` ago, averaged over
  `periods` (a week: that hour of the week).
- delivery_rate_drop: channel accuracy as Elevar's report defines it, per destination:
  (delivered + intentionally not sent) / orders the source of truth reported, over a
  window that ends `settle_seconds` ago; consent, send_if and not-listed counted apart.
- match_quality_drop: the share of a destination's events (of a name) carrying an
  identifier it takes, in the window, against the window before.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from router.config.model import CompiledConfig
from router.expr.functions import iso_time, parse_time
from router.ops.coverage import identifiers_taken, with_variants
from router.store.base import (
    INTENTIONAL_CAUSES,
    PAUSE_ALERT,
    ConnectionHealth,
    CoverageRow,
    EventQuery,
    Pause,
    Store,
    pause_subject,
)

log = logging.getLogger("router.alerts")

FIRING, OK, UNKNOWN = "firing", "ok", "unknown"
EXAMPLES = 5
KINDS = ("platform_down", "queue_backlog", "tracking_stopped", "delivery_rate_drop",
         "match_quality_drop")


@dataclass(frozen=True)
class Finding:
    subject: str
    state: str  # firing | ok | unknown
    detail: dict[str, Any] = field(default_factory=dict)
    signature: tuple[Any, ...] = ()  # a change is logged as an update in the history


@dataclass
class Context:
    store: Store
    config: CompiledConfig
    now: float
    pauses: dict[tuple[str, str, str], Pause]
    # the numbers the detectors judged, exported as gauges (router.ops.metrics)
    values: dict[str, dict[tuple[str, ...], float]] = field(default_factory=dict)

    def value(self, name: str, labels: tuple[str, ...], value: float) -> None:
        self.values.setdefault(name, {})[labels] = value


def _epoch(iso: str | None) -> float | None:
    parsed = parse_time(iso) if iso else None
    return parsed.timestamp() if parsed is not None else None


def _window(since: float, until: float) -> dict[str, Any]:
    return {"since": iso_time(since), "until": iso_time(until),
            "seconds": round(until - since, 3)}


def connections(config: CompiledConfig) -> list[tuple[str, str, str]]:
    """Every enabled (destination, account, environment) of the configuration."""
    out = []
    for account, acc in sorted(config.accounts.items()):
        for environment, env in sorted(acc.environments.items()):
            for name, conn in sorted(env.destinations.items()):
                if conn.enabled and name in config.destinations:
                    out.append((name, account, environment))
    return out


def connection_subject(destination: str, account: str, environment: str) -> str:
    return pause_subject(destination, account, environment)


async def _examples(store: Store, **query: Any) -> list[str]:
    events = await store.search_events(EventQuery(limit=EXAMPLES, **query))
    return [e.row.event_id for e in events]


# --- platform_down ----------------------------------------------------------------------

class PlatformDown:
    kind = "platform_down"

    def enabled(self, config: CompiledConfig) -> bool:
        return config.settings.alerts.platform_down.enabled

    def configured(self, subject: str, config: CompiledConfig) -> bool:
        return tuple(subject.split("/")) in set(connections(config))

    async def evaluate(self, ctx: Context) -> list[Finding]:
        settings = ctx.config.settings.alerts.platform_down
        health = {(h.destination, h.account, h.environment): h
                  for h in await ctx.store.connection_health()}
        out = []
        queue = None
        for key in connections(ctx.config):
            subject = connection_subject(*key)
            pause = ctx.pauses.get(key)
            if pause is not None:  # the pause opened it, a resume resolves it; add examples
                if queue is None:
                    queue = {(r.destination, r.account, r.environment): r
                             for r in await ctx.store.delivery_queue(ctx.now)}
                out.append(await self._paused(ctx, key, pause, queue.get(key)))
                continue
            h = health.get(key)
            detail = self._detail(key, h, settings.window_seconds, settings.min_failures, ctx.now)
            last = _epoch(h.last_attempt_at) if h else None
            if h is None or h.failures == 0 or h.failures < settings.min_failures:
                out.append(Finding(subject, OK, detail))
            elif last is not None and last >= ctx.now - settings.window_seconds:
                scope = {"destination": key[0], "account": key[1], "environment": key[2]}
                detail["examples"] = await _examples(ctx.store, delivery_status=("failed",),
                                                     **scope) or \
                    await _examples(ctx.store, undelivered=True, **scope)
                out.append(Finding(subject, FIRING, detail, (h.last_error,)))
            else:
                out.append(Finding(subject, UNKNOWN))  # stale failures: nothing new to judge
        return out

    @staticmethod
    async def _paused(ctx: Context, key: tuple[str, str, str], pause: Pause,
                      row: Any) -> Finding:
        destination, account, environment = key
        waiting = row.parked + row.due if row is not None else 0
        return Finding(connection_subject(*key), FIRING, {
            "summary": f"{destination} refused the credentials of {account}/{environment}: "
                       f"delivery is paused since {pause.since}, {waiting} waiting",
            "destination": destination, "account": account, "environment": environment,
            "reason": pause.reason, "last_error": pause.reason, "paused": True,
            "since": pause.since, "numbers": {"waiting_deliveries": waiting},
            "examples": await _examples(ctx.store, destination=destination, account=account,
                                        environment=environment, delivery_status=("queued",)),
            "action": "fix the credentials, then `router resume` or reload"},
            (pause.reason,))

    @staticmethod
    def _detail(key: tuple[str, str, str], h: ConnectionHealth | None, window: float,
                min_failures: int, now: float) -> dict[str, Any]:
        destination, account, environment = key
        scope = {"destination": destination, "account": account, "environment": environment}
        if h is None or h.failures == 0:
            return {**scope, "summary": f"{destination} accepts requests for {account}/"
                    f"{environment} again", "numbers": {"consecutive_failures": 0},
                    "last_success_at": h.last_success_at if h else None}
        return {
            **scope,
            "summary": f"{destination} failed {h.failures} attempt(s) in a row for {account}/"
                       f"{environment} since {h.streak_started_at}"
                       + (f" (last success {h.last_success_at})" if h.last_success_at else ""),
            "window": _window(now - window, now), "last_error": h.last_error,
            "numbers": {"consecutive_failures": h.failures, "min_failures": min_failures},
            "streak_started_at": h.streak_started_at, "last_success_at": h.last_success_at,
            "last_attempt_at": h.last_attempt_at, "last_status": h.last_status,
            "action": f"check {destination}'s status and the error above; failed deliveries "
                      f"are retried with backoff (router tail --destination {destination} "
                      f"--status failed); after a fix, `router replay --destination "
                      f"{destination} --since 24h` re-sends what was dropped"}


# --- queue_backlog ----------------------------------------------------------------------

class QueueBacklog:
    kind = "queue_backlog"
    INBOX = "inbox"

    def __init__(self) -> None:
        self.samples: dict[str, deque[tuple[float, int]]] = {}

    def enabled(self, config: CompiledConfig) -> bool:
        return config.settings.alerts.queue_backlog.enabled

    def configured(self, subject: str, config: CompiledConfig) -> bool:
        return subject == self.INBOX or tuple(subject.split("/")) in set(connections(config))

    def _growing(self, subject: str, depth: int, now: float, growth: float,
                 minimum: int) -> tuple[bool, int | None]:
        samples = self.samples.setdefault(subject, deque())
        samples.append((now, depth))
        while len(samples) > 2 and samples[1][0] <= now - growth:
            samples.popleft()  # keep one sample at least `growth` old
        start_at, start = samples[0]
        if now - start_at < growth * 0.999:
            return False, None
        rising = depth > start and min(d for _, d in samples) >= start
        return rising and depth >= minimum, start

    async def evaluate(self, ctx: Context) -> list[Finding]:
        settings = ctx.config.settings.alerts.queue_backlog
        rows = {(r.destination, r.account, r.environment): r
                for r in await ctx.store.delivery_queue(ctx.now)}
        out = []
        for key in connections(ctx.config):
            subject = connection_subject(*key)
            row = rows.get(key)
            due = row.due if row else 0
            depth = (row.due + row.scheduled + row.in_flight) if row else 0
            age = ctx.now - row.oldest_due_at if row and row.oldest_due_at is not None else 0.0
            growing, then = self._growing(subject, depth, ctx.now, settings.growth_seconds,
                                          settings.min_depth)
            destination, account, environment = key
            numbers = {"due": due, "pending": depth, "oldest_due_seconds": round(age, 1),
                       "max_age_seconds": settings.max_age_seconds}
            if row is not None:
                numbers.update(scheduled=row.scheduled, in_flight=row.in_flight,
                               paused=row.parked)
            if then is not None:
                numbers["pending_before"] = then
            detail: dict[str, Any] = {
                "destination": destination, "account": account, "environment": environment,
                "numbers": numbers}
            if age > settings.max_age_seconds or growing:
                reason = (f"the oldest due delivery has waited {age:.0f} s"
                          if age > settings.max_age_seconds else
                          f"pending deliveries rose from {then} to {depth} over "
                          f"{settings.growth_seconds:.0f} s")
                detail.update(
                    summary=f"{destination} is behind for {account}/{environment}: {reason}",
                    window=_window(ctx.now - settings.growth_seconds, ctx.now),
                    examples=await _examples(ctx.store, destination=destination,
                                             account=account, environment=environment,
                                             delivery_status=("queued", "failed")),
                    action=f"check router_delivery_queue_depth and "
                           f"router_delivery_request_seconds for {destination}: a slow or "
                           f"hanging platform holds only its own queue; its rate limit and "
                           f"concurrency are in destinations.d/{destination}.yaml")
                out.append(Finding(subject, FIRING, detail,
                                   ("age" if age > settings.max_age_seconds else "growth",)))
            else:
                detail["summary"] = f"{destination} keeps up for {account}/{environment}"
                out.append(Finding(subject, OK, detail))
        rows_waiting, arrived = await ctx.store.inbox_depth()
        age = ctx.now - arrived if arrived else 0.0
        numbers = {"waiting_requests": rows_waiting, "oldest_seconds": round(age, 1),
                   "max_age_seconds": settings.inbox_max_age_seconds}
        if age > settings.inbox_max_age_seconds:
            out.append(Finding(self.INBOX, FIRING, {
                "summary": f"acknowledged events have waited {age:.0f} s for the processor",
                "numbers": numbers, "action": "check that a process with the processor role is "
                "running and its log for errors; router_processor_lag_seconds shows the lag"},
                ("inbox",)))
        else:
            out.append(Finding(self.INBOX, OK, {"summary": "the processor keeps up",
                                                "numbers": numbers}))
        return out


# --- tracking_stopped -------------------------------------------------------------------

class TrackingStopped:
    kind = "tracking_stopped"

    def enabled(self, config: CompiledConfig) -> bool:
        return config.settings.alerts.tracking_stopped.enabled

    @staticmethod
    def subjects(config: CompiledConfig) -> dict[str, tuple[str, str, str | None]]:
        out: dict[str, tuple[str, str, str | None]] = {}
        for account, acc in sorted(config.accounts.items()):
            for environment, env in sorted(acc.environments.items()):
                sources = [s for s, c in sorted(env.sources.items()) if c.enabled]
                for source in sources:
                    out[f"{account}/{environment}/{source}"] = (account, environment, source)
                if len(sources) > 1:
                    out[f"{account}/{environment}"] = (account, environment, None)
        return out

    def configured(self, subject: str, config: CompiledConfig) -> bool:
        return subject in self.subjects(config)

    async def evaluate(self, ctx: Context) -> list[Finding]:
        s = ctx.config.settings.alerts.tracking_stopped
        now = ctx.now

        async def counts(until: float) -> dict[tuple[str, str, str], int]:
            return await ctx.store.event_counts(iso_time(until - s.window_seconds) or "",
                                                iso_time(until) or "")

        current = await counts(now)
        history = [await counts(now - k * s.period_seconds) for k in range(1, s.periods + 1)]

        def total(table: Mapping[tuple[str, str, str], int], scope: tuple[str, str, str | None]
                  ) -> int:
            account, environment, source = scope
            return sum(n for (a, e, src), n in table.items()
                       if a == account and e == environment and (source is None or src == source))

        out = []
        for subject, scope in self.subjects(ctx.config).items():
            now_count = total(current, scope)
            before = [total(h, scope) for h in history]
            baseline = sum(before) / len(before) if before else 0.0
            account, environment, source = scope
            if source:
                ctx.value("tracking_events", (account, environment, source, "current"),
                          now_count)
                ctx.value("tracking_events", (account, environment, source, "baseline"),
                          baseline)
            what = f"{source} for {account}/{environment}" if source else \
                f"{account}/{environment} (all sources)"
            detail: dict[str, Any] = {
                "account": account, "environment": environment,
                **({"source": source} if source else {}),
                "window": _window(now - s.window_seconds, now),
                "numbers": {"events": now_count, "baseline": round(baseline, 2),
                            "ratio": s.ratio, "periods": s.periods,
                            "period_seconds": s.period_seconds},
                "baseline_counts": before}
            if baseline >= s.min_baseline_events and now_count <= s.ratio * baseline:
                last = await ctx.store.search_events(EventQuery(
                    account=account, environment=environment, source=source, limit=1))
                if last:
                    detail["last_event_at"] = last[0].row.received_at
                    detail["examples"] = [last[0].row.event_id]
                detail["summary"] = (f"{what}: {now_count} event(s) in the last "
                                     f"{s.window_seconds:.0f} s against {baseline:.1f} at this "
                                     f"time in earlier periods")
                detail["action"] = (f"check the sender: its webhook subscription or write key, "
                                    f"the site's tag (`router tail --account {account}"
                                    + (f" --source {source}" if source else "") +
                                    "` shows what arrives)")
                out.append(Finding(subject, FIRING, detail, ("silent" if not now_count
                                                             else "low",)))
            elif now_count > 0:
                detail["summary"] = f"{what} receives events again ({now_count} in the window)"
                out.append(Finding(subject, OK, detail))
            else:
                out.append(Finding(subject, UNKNOWN))
        return out


# --- delivery_rate_drop (channel accuracy) --------------------------------------------

@dataclass(frozen=True)
class Accuracy:
    account: str
    environment: str
    destination: str
    orders: int
    delivered: int
    intentional: dict[str, int]  # consent, send_if, not_listed
    lost: dict[str, int]  # cause -> count
    pending: int

    @property
    def accuracy(self) -> float | None:
        if not self.orders:
            return None
        return (self.delivered + sum(self.intentional.values())) / self.orders

    def to_json(self) -> dict[str, Any]:
        value = self.accuracy
        return {"account": self.account, "environment": self.environment,
                "destination": self.destination, "orders": self.orders,
                "delivered": self.delivered, "intentionally_not_sent": dict(self.intentional),
                "lost": dict(self.lost), "pending": self.pending,
                "accuracy": round(value, 4) if value is not None else None}


def takes_orders(config: CompiledConfig, destination: str, events: Sequence[str]) -> bool:
    dest = config.destinations.get(destination)
    return dest is not None and any(dest.platform_event(name) for name in events)


async def channel_accuracy(store: Store, config: CompiledConfig, since: float, until: float,
                           events: Sequence[str], sources: Sequence[str]) -> list[Accuracy]:
    """Per configured connection whose destination takes an order event."""
    outcome = await store.order_outcomes(iso_time(since) or "", iso_time(until) or "", events,
                                         sources)
    counts: dict[tuple[str, str, str], list[Any]] = {}
    for row in outcome.deliveries:
        counts.setdefault((row.account, row.environment, row.destination), []).append(row)
    out = []
    for destination, account, environment in connections(config):
        if not takes_orders(config, destination, events):
            continue
        orders = outcome.orders.get((account, environment), 0)
        rows = counts.get((account, environment, destination), [])
        delivered = sum(r.count for r in rows if r.status == "delivered")
        pending = sum(r.count for r in rows if r.status in ("queued", "failed"))
        intentional = dict.fromkeys(INTENTIONAL_CAUSES, 0)
        lost: dict[str, int] = {}
        for r in rows:
            if r.status != "dropped":
                continue
            if r.cause in INTENTIONAL_CAUSES:
                intentional[r.cause] += r.count
            else:
                lost[r.cause or "unknown"] = lost.get(r.cause or "unknown", 0) + r.count
        # an order without a Delivery row: the destination does not list it for this
        # connection (routing writes no row then)
        intentional["not_listed"] += max(0, orders - sum(r.count for r in rows))
        out.append(Accuracy(account, environment, destination, orders, delivered,
                            intentional, lost, pending))
    return out


class DeliveryRateDrop:
    kind = "delivery_rate_drop"

    def enabled(self, config: CompiledConfig) -> bool:
        return config.settings.alerts.delivery_rate_drop.enabled

    def configured(self, subject: str, config: CompiledConfig) -> bool:
        events = config.settings.alerts.delivery_rate_drop.events
        key = tuple(subject.split("/"))
        return key in set(connections(config)) and takes_orders(config, key[0], events)

    async def evaluate(self, ctx: Context) -> list[Finding]:
        s = ctx.config.settings.alerts.delivery_rate_drop
        until = ctx.now - s.settle_seconds
        since = until - s.window_seconds
        out = []
        for row in await channel_accuracy(ctx.store, ctx.config, since, until, s.events,
                                          s.sources):
            subject = connection_subject(row.destination, row.account, row.environment)
            value = row.accuracy
            if value is not None:
                ctx.value("channel_accuracy", (row.destination, row.account, row.environment),
                          value)
                ctx.value("channel_orders", (row.destination, row.account, row.environment),
                          row.orders)
            detail: dict[str, Any] = {
                "destination": row.destination, "account": row.account,
                "environment": row.environment, "window": _window(since, until),
                "numbers": {"accuracy": round(value, 4) if value is not None else None,
                            "threshold": s.threshold, "orders": row.orders,
                            "delivered": row.delivered,
                            **{f"not_sent_{k}": v for k, v in row.intentional.items()},
                            **{f"lost_{k}": v for k, v in row.lost.items()},
                            "pending": row.pending},
                "orders": {"events": list(s.events), "sources": list(s.sources)}}
            if row.orders < s.min_orders or value is None:
                out.append(Finding(subject, UNKNOWN))
                continue
            if value < s.threshold:
                examples = await _examples(ctx.store, name=s.events[0], account=row.account,
                                           environment=row.environment,
                                           destination=row.destination, undelivered=True,
                                           since=iso_time(since), until=iso_time(until))
                last_error = None
                if examples:
                    found = await ctx.store.search_events(EventQuery(
                        event_id=examples[0], account=row.account, limit=1))
                    views = await ctx.store.deliveries_for([e.seq for e in found])
                    last_error = next((v.last_error or v.reason for v in views
                                       if v.destination == row.destination), None)
                detail.update(
                    summary=f"{row.destination} got {value:.1%} of {row.account}/"
                            f"{row.environment}'s orders (threshold {s.threshold:.0%}): "
                            f"{row.delivered} delivered, "
                            f"{sum(row.intentional.values())} not sent on purpose, "
                            f"{sum(row.lost.values())} lost, {row.pending} pending of "
                            f"{row.orders}",
                    examples=examples, last_error=last_error,
                    action="open the example orders: each delivery's history holds the "
                           "platform's answers; `router replay` re-sends after a fix")
                out.append(Finding(subject, FIRING, detail, (last_error,)))
            else:
                detail["summary"] = (f"{row.destination} got {value:.1%} of {row.account}/"
                                     f"{row.environment}'s orders")
                out.append(Finding(subject, OK, detail))
        return out


# --- match_quality_drop ---------------------------------------------------------------

class MatchQualityDrop:
    kind = "match_quality_drop"

    def enabled(self, config: CompiledConfig) -> bool:
        return config.settings.alerts.match_quality_drop.enabled

    def configured(self, subject: str, config: CompiledConfig) -> bool:
        parts = subject.split("/")
        if len(parts) != 5:
            return False
        destination, account, environment, _, identifier = parts
        identifiers = with_variants(config, config.settings.alerts.match_quality_drop.identifiers)
        return (destination, account, environment) in set(connections(config)) and \
            identifier in identifiers_taken(config, destination, identifiers)

    async def evaluate(self, ctx: Context) -> list[Finding]:
        s = ctx.config.settings.alerts.match_quality_drop
        identifiers = with_variants(ctx.config, s.identifiers)
        now = ctx.now
        start = now - s.window_seconds
        current = await ctx.store.identifier_coverage(iso_time(start) or "", iso_time(now) or "",
                                                      identifiers, s.events)
        baseline = await ctx.store.identifier_coverage(
            iso_time(start - s.baseline_seconds) or "", iso_time(start) or "", identifiers,
            s.events)
        base_rows = {(r.account, r.environment, r.destination, r.event_name): r
                     for r in baseline}
        out = []
        configured = set(connections(ctx.config))
        for row in current:
            if (row.destination, row.account, row.environment) not in configured:
                continue
            before = base_rows.get((row.account, row.environment, row.destination,
                                    row.event_name))
            for name in identifiers_taken(ctx.config, row.destination, identifiers):
                out.append(await self._judge(ctx, s, row, before, name, start, identifiers))
        return out

    async def _judge(self, ctx: Context, s: Any, row: CoverageRow, before: CoverageRow | None,
                     name: str, start: float, identifiers: Mapping[str, Any]) -> Finding:
        subject = f"{row.destination}/{row.account}/{row.environment}/{row.event_name}/{name}"
        if before is None or before.events < s.min_events or row.events < s.min_events:
            return Finding(subject, UNKNOWN)
        share = row.present.get(name, 0) / row.events
        base = before.present.get(name, 0) / before.events
        labels = (row.destination, row.account, row.environment, row.event_name, name)
        ctx.value("identifier_share", (*labels, "current"), share)
        ctx.value("identifier_share", (*labels, "baseline"), base)
        detail: dict[str, Any] = {
            "destination": row.destination, "account": row.account,
            "environment": row.environment, "event_name": row.event_name, "identifier": name,
            "window": _window(start, ctx.now),
            "baseline_window": _window(start - s.baseline_seconds, start),
            "numbers": {"share": round(share, 4), "baseline_share": round(base, 4),
                        "events": row.events, "with_identifier": row.present.get(name, 0),
                        "baseline_events": before.events, "ratio": s.ratio}}
        if base >= s.min_baseline_share and share < s.ratio * base:
            detail.update(
                summary=f"{share:.0%} of {row.event_name} events to {row.destination} for "
                        f"{row.account}/{row.environment} carry {name}, against {base:.0%} "
                        f"before",
                examples=await _examples(ctx.store, name=row.event_name, account=row.account,
                                         environment=row.environment,
                                         destination=row.destination,
                                         lacking=identifiers[name], since=iso_time(start)),
                action=f"compare a recent {row.event_name} with an older one (GET "
                       f"/admin/events/<id>, `router explain`): a mapping, tag or checkout "
                       f"change may have stopped sending {name}")
            return Finding(subject, FIRING, detail, ("low",))
        if share >= s.ratio * base:
            detail["summary"] = (f"{share:.0%} of {row.event_name} events to {row.destination} "
                                 f"carry {name} (baseline {base:.0%})")
            return Finding(subject, OK, detail)
        return Finding(subject, UNKNOWN)


# --- applying findings ----------------------------------------------------------------

def all_detectors() -> list[Any]:
    return [PlatformDown(), QueueBacklog(), TrackingStopped(), DeliveryRateDrop(),
            MatchQualityDrop()]


@dataclass(frozen=True)
class Transition:
    kind: str
    subject: str
    action: str  # opened | updated | resolved


async def reconcile(store: Store, kind: str, findings: Iterable[Finding],
                    configured: Callable[[str], bool],
                    signatures: dict[tuple[str, str], tuple[Any, ...]]) -> list[Transition]:
    open_alerts = {a.subject: a for a in await store.alerts(open_only=True, kind=kind,
                                                            limit=100_000)}
    seen: set[str] = set()
    out: list[Transition] = []
    for finding in findings:
        seen.add(finding.subject)
        key = (kind, finding.subject)
        alert = open_alerts.get(finding.subject)
        if finding.state == FIRING:
            if alert is None:
                if await store.open_alert(kind, finding.subject, finding.detail):
                    signatures[key] = finding.signature
                    out.append(Transition(kind, finding.subject, "opened"))
                continue
            changed = key in signatures and signatures[key] != finding.signature
            signatures[key] = finding.signature
            if await store.update_alert(kind, finding.subject, finding.detail, log=changed) \
                    and changed:
                out.append(Transition(kind, finding.subject, "updated"))
        elif finding.state == OK and alert is not None and \
                await store.resolve_alert(kind, finding.subject, finding.detail):
            signatures.pop(key, None)
            out.append(Transition(kind, finding.subject, "resolved"))
    for subject, alert in open_alerts.items():
        if subject in seen or configured(subject):
            continue
        if kind == PAUSE_ALERT and alert.detail.get("paused"):
            continue  # a pause of a connection no longer configured: `router resume` lifts it
        if await store.resolve_alert(kind, subject, {
                **alert.detail, "summary": f"no longer monitored: {subject} left the "
                                           f"configuration"}):
            signatures.pop((kind, subject), None)
            out.append(Transition(kind, subject, "resolved"))
    return out


class Detectors:
    """Runs every enabled detector once per pass and applies what it found."""

    def __init__(self, store: Store):
        self.store = store
        self.detectors = all_detectors()
        self.signatures: dict[tuple[str, str], tuple[Any, ...]] = {}
        self.failures: dict[str, str] = {}  # detector -> last error (for /admin/alerts/status)
        self.last_run: float | None = None
        self.values: dict[str, dict[tuple[str, ...], float]] = {}

    async def run_once(self, config: CompiledConfig, now: float | None = None
                       ) -> list[Transition]:
        now = time.time() if now is None else now
        pauses = {(p.destination, p.account, p.environment): p for p in await self.store.pauses()}
        ctx = Context(self.store, config, now, pauses)
        out: list[Transition] = []
        for detector in self.detectors:
            if not detector.enabled(config):
                continue
            try:
                findings = await detector.evaluate(ctx)
                out += await reconcile(self.store, detector.kind, findings,
                                       lambda s, d=detector: d.configured(s, config),
                                       self.signatures)
                self.failures.pop(detector.kind, None)
            except Exception as exc:  # one detector's failure must not stop the others
                log.exception("detector %s failed", detector.kind)
                self.failures[detector.kind] = f"{type(exc).__name__}: {exc}"
        self.last_run = now
        self.values = ctx.values
        return out
