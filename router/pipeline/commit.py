"""The stateful back of stage 2: identity graph, dedup, holds, routing, the durable write.

The processor hands one batch of prepared messages to `commit`; in one store
transaction the planner links identities, decides new vs duplicate (merging a
duplicate's identifiers into the first arrival), decides each new event's hold and
its routing over the enriched, merged event, and the store writes the Events, their
Delivery rows, the identity changes and the end of the inbox rows the batch came from.
Unmapped and rejected messages are stored too (status, code, reason, the source
message with personal data masked), so nothing a sender was told "accepted" vanishes.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from router.config.model import CompiledConfig
from router.expr.functions import parse_time
from router.pipeline.dedup import NewEvent, Stored, dedup_keys, plan_batch
from router.pipeline.event import MAPPED, Event, event_from_body
from router.pipeline.guard import Rejection
from router.pipeline.holds import complete, hold_for
from router.pipeline.identity_graph import IdentityGraph, enrich, identifiers
from router.pipeline.index import event_index
from router.pipeline.routing import QUEUED, needs_plaintext, route
from router.redact import redact
from router.store.base import (
    BatchInput,
    EventRow,
    IdentityChanges,
    IdentityView,
    LeaseCheck,
    Store,
    StoredEvent,
    WritePlan,
)

SEP = "\x1f"
REJECTED = "rejected"


@dataclass(frozen=True)
class Item:
    """One message of a batch, prepared: an event to store, or a rejection to keep."""

    event: Event
    idempotency_key: str | None = None
    rejection: Rejection | None = None  # stored as a rejected event, never routed
    raw: Any = None  # the source message, kept (masked) for unmapped and rejected events
    ref: tuple[int, int] | None = None  # (inbox id, position) for waiting senders


@dataclass(frozen=True)
class Result:
    event_id: str
    status: str  # accepted | duplicate | unmapped | rejected
    reason: str | None = None
    code: str | None = None
    seq: int | None = None  # the stored event (for a duplicate: the one it merged into)
    duplicate_of: str | None = None  # the event id of the first arrival
    first_index: int | None = None  # a duplicate of an event earlier in the same batch
    # for observers (logs, metrics, the live stream): the canonical name, and for a new
    # event its routing (destination -> {status, reason?, cause?})
    event_name: str | None = None
    source_event: str | None = None
    routes: Mapping[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"event_id": self.event_id, "status": self.status}
        for key in ("code", "reason", "duplicate_of"):
            value = getattr(self, key)
            if value:
                out[key] = value
        return out


def _due(config: CompiledConfig, name: str, received: float, release: float | None) -> float | None:
    """When a queued delivery becomes due: after the hold and the destination's delay."""
    dest = config.destinations.get(name)
    delay = dest.delay_seconds if dest is not None else 0.0
    due = max(release or 0.0, received + delay if delay else 0.0)
    return due or None


def decide_routes(config: CompiledConfig, event: Event, received: float,
                  release: float | None) -> dict[str, Any]:
    """Routing of the final (enriched, merged) event, with each delivery's due time."""
    _, env = config.account_env(event.account, event.environment)
    routes = route(config, env, event)
    for name, decision in routes.items():
        if decision["status"] == QUEUED:
            due = _due(config, name, received, release)
            if due:
                decision["due_at"] = due
                decision["reason"] = (HELD if release and due <= release else
                                      "delayed: the destination waits before sending")
        elif release and decision.get("cause") == "send_if":
            # while held, a merge may still change this (the partner brings identifiers;
            # consent it cannot change): it waits with the others, and is dropped for
            # this reason only if the hold ends without a partner
            decision.update(status=QUEUED, due_at=release, drop_reason=decision["reason"],
                            reason=f"{HELD}; without it: {decision['reason']}")
    return routes


HELD = "held: waiting for the other half of this event to merge"


def _rejected_row(item: Item) -> EventRow:
    event = item.event
    assert item.rejection is not None
    return EventRow(
        account=event.account, environment=event.environment, event_id=event.event_id,
        event_name=event.event_name, source=event.source, source_event=event.source_event,
        status=REJECTED, occurred_at=event.occurred_at, received_at=event.received_at,
        body=event.to_dict(), routes={}, keys=(),
        evidence={"rejection": {"code": item.rejection.code, "reason": item.rejection.message,
                                "path": item.rejection.path}},
        raw=redact(item.raw) if item.raw is not None else None)


async def _no_pause() -> None:
    return None


def build_planner(config: CompiledConfig, items: Sequence[Item], now: float,
                  received: Sequence[float],
                  tick: Callable[[], Awaitable[None]] = _no_pause
                  ) -> Callable[..., Awaitable[WritePlan]]:
    def scoped(event: Event, key: str) -> str:
        return f"{event.account}{SEP}{event.environment}{SEP}{key}"

    live = [i for i, item in enumerate(items) if item.rejection is None]

    async def planner(existing: dict[tuple[str, str, str], StoredEvent],
                      identities: dict[str, IdentityView]) -> WritePlan:
        changes = IdentityChanges()
        graphs = {account: IdentityGraph(account, view, changes)
                  for account, view in identities.items()}
        enriched: dict[int, Event] = {}
        identity_evidence: dict[int, dict[str, Any]] = {}
        for index in live:
            event = items[index].event
            graphs.setdefault(event.account, IdentityGraph(event.account, IdentityView(),
                                                           changes))
            enriched[index], identity_evidence[index] = enrich(config, graphs, event)
            await tick()
        for graph in graphs.values():
            graph.finalize()
        stored: dict[str, Stored] = {}
        by_seq: dict[int, Stored] = {}
        for (account, environment, key), row in existing.items():
            working = by_seq.setdefault(row.seq, Stored(row.seq, dict(row.row.body),
                                                        dict(row.row.evidence),
                                                        row.row.release_at))
            stored[f"{account}{SEP}{environment}{SEP}{key}"] = working
        batch = [NewEvent(enriched[i], tuple(scoped(enriched[i], k)
                                             for k in _keys(config, enriched[i], items[i])),
                          _wins(config, enriched[i]))
                 for i in live]
        plan = plan_batch(batch, stored)
        write = WritePlan(identity=changes)
        results: list[Result | None] = [None] * len(items)
        first_ids: dict[int, str] = {}
        routed: dict[int, dict[str, Any]] = {}
        for insert in plan.inserts:
            index = live[insert.index]
            event = insert.event
            first_ids[insert.index] = event.event_id
            evidence = dict(insert.evidence)
            evidence["keys"] = [k.split(SEP, 2)[2] for k in insert.keys]
            if identity_evidence[index]:
                evidence["identity"] = identity_evidence[index]
            release = None
            routes: dict[str, Any] = {}
            if event.status == MAPPED:
                _, env = config.account_env(event.account, event.environment)
                body = event.to_dict()
                hold = hold_for(config, env, body, now)
                if hold is not None and complete(config, body):
                    hold = None  # an in-batch partner already made it whole
                if hold is not None:
                    release = hold.until
                    definition = config.canonical.get(event.event_name or "")
                    evidence["hold"] = hold.evidence(definition.hold_seconds if definition
                                                     else 0)
                routes = decide_routes(config, event, received[index], release)
                await tick()
            raw = items[index].raw if event.status != MAPPED else None
            body = event.to_dict()
            terms, signals = event_index(config, body, evidence)
            routed[insert.index] = routes
            write.inserts.append(EventRow(
                account=event.account, environment=event.environment, event_id=event.event_id,
                event_name=event.event_name, source=event.source, source_event=event.source_event,
                status=event.status, occurred_at=event.occurred_at, received_at=event.received_at,
                body=body, evidence=evidence, routes=routes,
                keys=tuple(k.split(SEP, 2)[2] for k in insert.keys),
                release_at=release,
                pii=event.pii if event.pii and needs_plaintext(config, routes) else None,
                raw=redact(raw) if raw is not None else None, terms=terms, signals=signals))
        for seq, working in plan.updates.items():
            routes_update = None
            release = working.release_at
            if release and release > now:
                # a held event gained its partner: decided again over the merged event,
                # released at once when it is now whole, else when the hold ends
                merged = event_from_body(working.event)
                if complete(config, working.event):
                    release = now
                    hold = dict(working.evidence.get("hold") or {})
                    later = (working.evidence.get("duplicates") or [{}])[-1]
                    hold["released"] = {"by": later.get("event_id"), "reason": "merged"}
                    working.evidence["hold"] = hold
                received_at = _epoch(merged.received_at) or now
                routes_update = decide_routes(config, merged, received_at, release)
            write.updates[seq] = (working.event, working.evidence, routes_update, release)
            write.index[seq] = event_index(config, working.event, working.evidence)
        position = 0
        for index in range(len(items)):
            item = items[index]
            if item.rejection is not None:
                write.inserts.append(_rejected_row(item))
                write.forget_ack_keys.append((item.event.account, item.event.environment,
                                              item.event.event_id))
                results[index] = Result(item.event.event_id, REJECTED, item.rejection.message,
                                        item.rejection.code, event_name=item.event.event_name,
                                        source_event=item.event.source_event)
                continue
            outcome = plan.outcomes[position]
            name = item.event.event_name
            if outcome.status == "accepted":
                status = "accepted" if item.event.status == MAPPED else "unmapped"
                results[index] = Result(item.event.event_id, status, event_name=name,
                                        source_event=item.event.source_event,
                                        routes=routed.get(position))
            elif outcome.duplicate_of_index is not None:
                results[index] = Result(item.event.event_id, "duplicate", outcome.reason,
                                        duplicate_of=first_ids.get(outcome.duplicate_of_index),
                                        first_index=live[outcome.duplicate_of_index],
                                        event_name=name)
            else:
                seq = outcome.duplicate_of_seq
                first = by_seq[seq].event.get("event_id") if seq in by_seq else None
                results[index] = Result(item.event.event_id, "duplicate", outcome.reason,
                                        seq=seq, duplicate_of=first, event_name=name)
            position += 1
        write.results = results
        return write

    return planner


def _wins(config: CompiledConfig, event: Event) -> tuple[tuple[str, str], ...]:
    """A browser half's fields that replace a server half's when they merge."""
    mapping = config.mappings.get(event.source)
    if mapping is None or mapping.ingest.half != "browser":
        return ()
    return tuple((p[0], p[1]) for p in config.merge.browser_wins if len(p) == 2)


def _epoch(iso: str | None) -> float | None:
    parsed = parse_time(iso) if iso else None
    return parsed.timestamp() if parsed is not None else None


def _keys(config: CompiledConfig, event: Event, item: Item) -> list[str]:
    definition = config.canonical.get(event.event_name or "") if event.status == MAPPED else None
    return dedup_keys(event, definition, item.idempotency_key)


async def commit(store: Store, config: CompiledConfig, items: Sequence[Item],
                 now: float | None = None, done_inbox: Sequence[int] = (),
                 waiting: frozenset[int] = frozenset(), lease: LeaseCheck | None = None,
                 tick: Callable[[], Awaitable[None]] = _no_pause) -> list[Result]:
    """Store one batch in one transaction; results in item order.

    `done_inbox` are the inbox rows this batch completes; the decisions of those in
    `waiting` are kept for their senders (?wait=true). `tick` is awaited between events
    while planning, so a long batch shares the loop; `lease` must still be held when
    the batch is written (LeaseLost otherwise: nothing is written)."""
    now = time.time() if now is None else now
    keys: dict[tuple[str, str], set[str]] = defaultdict(set)
    idents: dict[str, set[str]] = defaultdict(set)
    received: list[float] = []
    for item in items:
        event = item.event
        received.append(_epoch(event.received_at) or now)
        if item.rejection is not None:
            continue
        keys[(event.account, event.environment)].update(_keys(config, event, item))
        idents[event.account].update(identifiers(config, event))
    planner = build_planner(config, items, now, received, tick)

    async def plan_with_inbox(existing: Any, identities: Any) -> WritePlan:
        plan = await planner(existing, identities)
        plan.done_inbox = tuple(done_inbox)
        decisions: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for item, result in zip(items, plan.results, strict=True):
            if item.ref is not None and item.ref[0] in waiting:
                decisions[item.ref[0]].append({"position": item.ref[1], **result.to_json()})
        plan.decisions = dict(decisions)
        return plan

    plan, seqs = await store.ingest(BatchInput(dict(keys), dict(idents)),
                                    config.settings.dedup_window_seconds, now, plan_with_inbox,
                                    lease)
    results: list[Result] = list(plan.results)
    inserted = iter(seqs)
    # inserts are written accepted/unmapped first, then rejected: match them back in order
    accepted = [i for i, r in enumerate(results) if r.status in ("accepted", "unmapped")]
    rejected = [i for i, r in enumerate(results) if r.status == REJECTED]
    for index in [*accepted, *rejected]:
        results[index] = replace(results[index], seq=next(inserted, None))
    for index, r in enumerate(results):
        if r.first_index is not None:
            results[index] = replace(r, seq=results[r.first_index].seq)
    return results
