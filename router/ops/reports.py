"""The numbers behind the detectors, for any window: `GET /admin/reports/...`.

- channel accuracy per destination, account and environment (what `delivery_rate_drop`
  judges): orders the source of truth reported, delivered, intentionally not sent by
  reason, lost by cause, still pending;
- identifier coverage per destination, account, environment and event name (what
  `match_quality_drop` judges): events, and per identifier the destination takes, how
  many carry it;
- the delivery queue per connection (what `queue_backlog` judges).

Windows default to the detectors' own; `since`/`until` take times or durations.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from router.config.model import CompiledConfig
from router.expr.functions import iso_time
from router.ops.coverage import identifiers_taken, with_variants
from router.ops.detectors import channel_accuracy
from router.ops.search import (
    QueryError,
    check_filters,
    choice,
    choices,
    known_sources,
    parse_when,
)
from router.store.base import Store

ACCURACY_FILTERS = ("since", "until", "account", "environment", "destination", "events",
                    "sources")
COVERAGE_FILTERS = ("since", "until", "account", "environment", "destination", "events",
                    "identifiers")
QUEUE_FILTERS = ("account", "environment", "destination")


def _window(config: CompiledConfig, params: Mapping[str, str], default_seconds: float,
            settle: float, now: float) -> tuple[float, float]:
    until = parse_when("until", params["until"], now) if params.get("until") else now - settle
    since = parse_when("since", params["since"], now) if params.get("since") \
        else until - default_seconds
    if since >= until:
        raise QueryError("invalid_parameter", "since must be before until")
    return since, until


def _scope(config: CompiledConfig, params: Mapping[str, str]) -> dict[str, str]:
    out = {}
    if params.get("account"):
        out["account"] = choice("account", params["account"], config.accounts)
    if params.get("environment"):
        out["environment"] = choice("environment", params["environment"], {
            e for a in config.accounts.values() for e in a.environments})
    if params.get("destination"):
        out["destination"] = choice("destination", params["destination"], config.destinations)
    return out


def _keep(row: Mapping[str, Any], scope: Mapping[str, str]) -> bool:
    return all(row.get(k) == v for k, v in scope.items())


async def accuracy_report(store: Store, config: CompiledConfig, params: Mapping[str, str],
                          now: float | None = None) -> dict[str, Any]:
    now = time.time() if now is None else now
    check_filters(params, ACCURACY_FILTERS)
    settings = config.settings.alerts.delivery_rate_drop
    since, until = _window(config, params, settings.window_seconds, settings.settle_seconds,
                           now)
    events = choices("events", params["events"], config.canonical) if params.get("events") \
        else settings.events
    sources = choices("sources", params["sources"], known_sources(config)) \
        if params.get("sources") else settings.sources
    scope = _scope(config, params)
    rows = [r.to_json() for r in await channel_accuracy(store, config, since, until, events,
                                                         sources)]
    return {"window": {"since": iso_time(since), "until": iso_time(until)},
            "orders": {"events": list(events), "sources": list(sources)},
            "threshold": settings.threshold,
            "rows": [r for r in rows if _keep(r, scope)]}


async def coverage_report(store: Store, config: CompiledConfig, params: Mapping[str, str],
                          now: float | None = None) -> dict[str, Any]:
    now = time.time() if now is None else now
    check_filters(params, COVERAGE_FILTERS)
    settings = config.settings.alerts.match_quality_drop
    since, until = _window(config, params, settings.window_seconds, 0.0, now)
    events = choices("events", params["events"], config.canonical) if params.get("events") \
        else settings.events
    identifiers = with_variants(config, settings.identifiers)
    if params.get("identifiers"):
        wanted = choices("identifiers", params["identifiers"], identifiers)
        identifiers = {k: v for k, v in identifiers.items() if k in wanted}
    scope = _scope(config, params)
    rows = []
    for row in await store.identifier_coverage(iso_time(since) or "", iso_time(until) or "",
                                               identifiers, events):
        out = {"account": row.account, "environment": row.environment,
               "destination": row.destination, "event_name": row.event_name,
               "events": row.events}
        if not _keep(out, scope):
            continue
        taken = identifiers_taken(config, row.destination, identifiers)
        out["identifiers"] = {
            name: {"count": row.present.get(name, 0),
                   "share": round(row.present.get(name, 0) / row.events, 4) if row.events
                   else None} for name in taken}
        rows.append(out)
    return {"window": {"since": iso_time(since), "until": iso_time(until)},
            "events": list(events),
            "identifiers": {k: [list(g) for g in v] for k, v in identifiers.items()},
            "rows": rows}


async def queue_report(store: Store, config: CompiledConfig, params: Mapping[str, str],
                       now: float | None = None) -> dict[str, Any]:
    now = time.time() if now is None else now
    check_filters(params, QUEUE_FILTERS)
    scope = _scope(config, params)
    rows = []
    for row in await store.delivery_queue(now):
        out = {"destination": row.destination, "account": row.account,
               "environment": row.environment, "due": row.due, "scheduled": row.scheduled,
               "paused": row.parked, "in_flight": row.in_flight,
               "oldest_due_seconds": round(now - row.oldest_due_at, 3)
               if row.oldest_due_at is not None else None}
        if _keep(out, scope):
            rows.append(out)
    depth, arrived = await store.inbox_depth()
    return {"at": iso_time(now), "rows": rows,
            "inbox": {"waiting_requests": depth,
                      "oldest_seconds": round(now - arrived, 3) if arrived else None}}
