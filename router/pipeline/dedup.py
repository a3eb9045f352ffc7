"""Deduplication as a pure plan over one group-committed batch.

The store fetches, in one query, every stored event that shares a key with the batch;
this module decides, for each new event in arrival order, whether it is new or a
duplicate (of a stored event, or of one earlier in the same batch), and what a
duplicate merges into the first arrival. Because one writer applies a whole plan in
one transaction, concurrent duplicates still yield exactly one Event.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from router.config.model import CanonicalEventDef
from router.pipeline.event import Event

# context fields one half of a pixel+server pair typically lacks
MERGEABLE_CONTEXT = ("ip", "user_agent", "page_url", "referrer", "page_title", "gpc")


def dedup_keys(event: Event, definition: CanonicalEventDef | None,
               idempotency_key: str | None = None) -> list[str]:
    """Keys identifying the business action: event_id always, then the canonical
    event's business keys (order_id + event name), then the source's delivery key."""
    keys = [f"id:{event.event_id}"]
    if definition is not None and definition.dedup_keys:
        values = [event.custom_data.get(k) for k in definition.dedup_keys]
        if all(v not in (None, "") for v in values):
            parts = ",".join(f"{k}={v}" for k, v in zip(definition.dedup_keys, values, strict=True))
            keys.append(f"{event.event_name}:{parts}")
    if idempotency_key:
        keys.append(f"src:{event.source}:{idempotency_key}")
    return keys


@dataclass
class Stored:
    """A stored event as the planner sees it (a mutable working copy)."""

    seq: int
    event: dict[str, Any]
    evidence: dict[str, Any]
    release_at: float | None = None  # still held: routing is decided again after a merge


@dataclass(frozen=True)
class NewEvent:
    event: Event
    keys: tuple[str, ...]
    # (section, key) whose value this event brings even when the first arrival has one:
    # a browser half's action source and page win over a server half's
    wins: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Insert:
    index: int  # position in the batch
    event: Event  # with whatever later in-batch duplicates merged into it
    keys: tuple[str, ...]
    evidence: dict[str, Any]


@dataclass(frozen=True)
class Outcome:
    status: str  # accepted | duplicate
    reason: str | None = None
    duplicate_of_seq: int | None = None  # a stored event
    duplicate_of_index: int | None = None  # an event inserted by this same batch


@dataclass
class Plan:
    inserts: list[Insert] = field(default_factory=list)
    updates: dict[int, Stored] = field(default_factory=dict)  # seq -> merged stored event
    outcomes: list[Outcome] = field(default_factory=list)  # one per batch item, in order


def merge_into(first: dict[str, Any], later: Event,
               wins: tuple[tuple[str, str], ...] = ()) -> list[str]:
    """Fill identifiers and context the first arrival lacks, and replace the fields the
    later event `wins`; returns what was merged."""
    merged: list[str] = []
    for section, key in wins:
        value = getattr(later, section).get(key)
        target = first.setdefault(section, {})
        if value not in (None, "", [], {}) and target.get(key) != value:
            target[key] = value
            merged.append(f"{section}.{key}")
    for section, keys in (("user_data", None), ("context", MERGEABLE_CONTEXT),
                          ("custom_data", None)):
        target = first.setdefault(section, {})
        source = getattr(later, section)
        for key in keys or source.keys():
            value = source.get(key)
            if value not in (None, "", [], {}) and key not in target:
                target[key] = value
                merged.append(f"{section}.{key}")
    return merged


def _unscoped(key: str) -> str:
    """Keys are scoped per account/environment by the caller ("acct\x1fenv\x1fkey")."""
    return key.rsplit("\x1f", 1)[-1]


def _evidence_entry(later: Event, matched: list[str], merged: list[str]) -> dict[str, Any]:
    return {"event_id": later.event_id, "source": later.source, "source_event": later.source_event,
            "received_at": later.received_at, "matched": [_unscoped(k) for k in matched],
            "merged": merged}


def _reason(matched: Iterable[str], first_source: str | None) -> str:
    keys = ", ".join(_unscoped(k) for k in matched)
    return f"duplicate of an event first received from {first_source or 'unknown'} (matched {keys})"


def plan_batch(batch: list[NewEvent], existing: dict[str, Stored]) -> Plan:
    """Decide new vs duplicate for each event, in order; `existing` maps key -> stored."""
    plan = Plan()
    first_by_key: dict[str, int] = {}  # key -> batch index of the new event holding it
    bodies: dict[int, dict[str, Any]] = {}
    evidence: dict[int, dict[str, Any]] = {}
    for index, item in enumerate(batch):
        matched_new = [k for k in item.keys if k in first_by_key]
        if matched_new:
            first = first_by_key[matched_new[0]]
            merged = merge_into(bodies[first], item.event, item.wins)
            evidence[first].setdefault("duplicates", []).append(
                _evidence_entry(item.event, matched_new, merged))
            plan.outcomes.append(Outcome("duplicate", _reason(matched_new, bodies[first]["source"]),
                                         duplicate_of_index=first))
            continue
        matched_old = [k for k in item.keys if k in existing]
        if matched_old:
            stored = plan.updates.get(existing[matched_old[0]].seq, existing[matched_old[0]])
            merged = merge_into(stored.event, item.event, item.wins)
            stored.evidence.setdefault("duplicates", []).append(
                _evidence_entry(item.event, matched_old, merged))
            plan.updates[stored.seq] = stored
            plan.outcomes.append(Outcome("duplicate", _reason(matched_old, stored.event.get("source")),
                                         duplicate_of_seq=stored.seq))
            continue
        bodies[index] = item.event.to_dict()
        evidence[index] = {"keys": list(item.keys), "first_source": item.event.source}
        for key in item.keys:
            first_by_key.setdefault(key, index)
        plan.outcomes.append(Outcome("accepted"))
    for index, item in enumerate(batch):
        if index in bodies:
            body = bodies[index]
            event = item.event.evolve(user_data=body["user_data"], context=body["context"],
                                      custom_data=body["custom_data"])
            plan.inserts.append(Insert(index, event, item.keys, evidence[index]))
    return plan
