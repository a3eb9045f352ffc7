"""The stateful back of the pipeline: identity graph, dedup and the durable write.

Requests hand their prepared events to one group committer; it batches whatever has
queued while the previous transaction was being written, so many concurrent requests
share one transaction, and each request is acknowledged only after its events are
durably stored together with their routing decisions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from router.config.model import CompiledConfig
from router.pipeline.dedup import NewEvent, Stored, dedup_keys, plan_batch
from router.pipeline.event import MAPPED, Event, event_from_body
from router.pipeline.routing import QUEUED, needs_plaintext, route
from router.store.base import (
    BatchInput,
    EventRow,
    IdentityChanges,
    IdentityView,
    Store,
    StoredEvent,
    WritePlan,
)

log = logging.getLogger("router.ingest")
SEP = "\x1f"


@dataclass(frozen=True)
class Item:
    """One prepared, valid event waiting to be stored."""

    event: Event
    routes: dict[str, Any]
    idempotency_key: str | None = None


@dataclass(frozen=True)
class Result:
    event_id: str
    status: str  # accepted | duplicate | unmapped
    reason: str | None = None
    seq: int | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"event_id": self.event_id, "status": self.status}
        if self.reason:
            out["reason"] = self.reason
        return out


# --- identity graph -----------------------------------------------------------------

@dataclass
class _Graph:
    """Union-find over one account's identifiers, seeded from the store for a batch."""

    account: str
    view: IdentityView
    changes: IdentityChanges
    parent: dict[str, str] = field(default_factory=dict)

    def find(self, ident: str) -> str | None:
        root = self.parent.get(ident) or self.view.roots.get(ident)
        while root is not None and root in self.parent and self.parent[root] != root:
            root = self.parent[root]
        return root

    def finalize(self) -> None:
        """Point every written link and re-point at its final root."""
        prefix = f"{self.account}{SEP}"
        for key in list(self.changes.links):
            if key.startswith(prefix):
                self.changes.links[key] = self.find(key[len(prefix):]) or self.changes.links[key]
        for key in list(self.changes.repoint):
            if key.startswith(prefix):
                self.changes.repoint[key] = self.find(key[len(prefix):]) or self.changes.repoint[key]

    def profile(self, root: str) -> dict[str, Any]:
        key = f"{self.account}{SEP}{root}"
        if key in self.changes.profiles:
            return self.changes.profiles[key]
        return dict(self.view.profiles.get(root, {}))

    def link(self, idents: list[str], attrs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        roots = sorted({r for r in (self.find(i) for i in idents) if r is not None})
        root = roots[0] if roots else idents[0]
        profile: dict[str, Any] = {}
        for other in reversed(roots):  # the oldest (smallest) root's values win ties
            profile.update(self.profile(other))
        for other in roots[1:]:
            self.parent[other] = root
            self.changes.repoint[f"{self.account}{SEP}{other}"] = root
            self.changes.profiles.pop(f"{self.account}{SEP}{other}", None)
            self.changes.drop_profiles.add(f"{self.account}{SEP}{other}")
        self.parent.setdefault(root, root)
        for ident in idents:
            key = f"{self.account}{SEP}{ident}"
            if ident not in self.view.roots and key not in self.changes.links:
                if ident != root:
                    self.parent[ident] = root
                self.changes.links[key] = root
        changed = bool(roots[1:]) or not roots
        for key, value in attrs.items():
            if profile.get(key) != value:
                profile[key] = value
                changed = True
        if changed:
            self.changes.profiles[f"{self.account}{SEP}{root}"] = profile
            self.changes.drop_profiles.discard(f"{self.account}{SEP}{root}")
        return root, profile


def identifiers(config: CompiledConfig, event: Event) -> list[str]:
    return [f"{k}:{event.user_data[k]}" for k in config.identity_link
            if event.user_data.get(k) not in (None, "")]


def enrich(config: CompiledConfig, graphs: dict[str, _Graph], event: Event) -> tuple[Event, dict[str, Any]]:
    """Link the event's identifiers and fill what its person's profile knows."""
    idents = identifiers(config, event)
    if not idents:
        return event, {}
    graph = graphs[event.account]
    attrs = {k: event.user_data[k] for k in config.identity_enrich
             if event.user_data.get(k) not in (None, "")}
    root, profile = graph.link(idents, attrs)
    added = {k: v for k, v in profile.items()
             if k in config.identity_enrich and event.user_data.get(k) in (None, "")}
    evidence: dict[str, Any] = {"person": root}
    if added:
        evidence["enriched"] = sorted(added)
        event = event.evolve(user_data={**event.user_data, **added})
    return event, evidence


# --- the planner ----------------------------------------------------------------------

def build_planner(config: CompiledConfig, items: list[Item], now: float) -> Callable[..., WritePlan]:
    def scoped(event: Event, key: str) -> str:
        return f"{event.account}{SEP}{event.environment}{SEP}{key}"

    def planner(existing: dict[tuple[str, str, str], StoredEvent],
                identities: dict[str, IdentityView]) -> WritePlan:
        changes = IdentityChanges()
        graphs = {account: _Graph(account, view, changes) for account, view in identities.items()}
        for item in items:
            graphs.setdefault(item.event.account, _Graph(item.event.account, IdentityView(), changes))
        enriched: list[Event] = []
        identity_evidence: list[dict[str, Any]] = []
        for item in items:
            event, evidence = enrich(config, graphs, item.event)
            enriched.append(event)
            identity_evidence.append(evidence)
        for graph in graphs.values():
            graph.finalize()
        stored: dict[str, Stored] = {}
        by_seq: dict[int, Stored] = {}
        for (account, environment, key), row in existing.items():
            working = by_seq.setdefault(row.seq, Stored(row.seq, dict(row.row.body),
                                                        dict(row.row.evidence),
                                                        row.row.release_at))
            stored[f"{account}{SEP}{environment}{SEP}{key}"] = working
        batch = [NewEvent(event, tuple(scoped(event, k) for k in _keys(config, event, item)))
                 for event, item in zip(enriched, items, strict=True)]
        plan = plan_batch(batch, stored)
        write = WritePlan(identity=changes, results=list(plan.outcomes))
        for insert in plan.inserts:
            item = items[insert.index]
            event = insert.event
            evidence = dict(insert.evidence)
            evidence["keys"] = [k.split(SEP, 2)[2] for k in insert.keys]
            if identity_evidence[insert.index]:
                evidence["identity"] = identity_evidence[insert.index]
            definition = config.canonical.get(event.event_name or "")
            hold = definition.hold_seconds if definition else 0
            queued = any(r["status"] == QUEUED for r in item.routes.values())
            write.inserts.append(EventRow(
                account=event.account, environment=event.environment, event_id=event.event_id,
                event_name=event.event_name, source=event.source, source_event=event.source_event,
                status=event.status, occurred_at=event.occurred_at, received_at=event.received_at,
                body=event.to_dict(), evidence=evidence, routes=item.routes,
                keys=tuple(k.split(SEP, 2)[2] for k in insert.keys),
                release_at=now + hold if hold and queued else None,
                pii=event.pii if event.pii and needs_plaintext(config, item.routes) else None))
        for seq, working in plan.updates.items():
            routes = None
            if working.release_at and working.release_at > now:
                # a held event is delivered as merged: decide its routing again, so a
                # destination that needed the other half's identifiers now gets it
                merged = event_from_body(working.event)
                _, env = config.account_env(merged.account, merged.environment)
                routes = route(config, env, merged)
            write.updates[seq] = (working.event, working.evidence, routes)
        return write

    return planner


def _keys(config: CompiledConfig, event: Event, item: Item) -> list[str]:
    definition = config.canonical.get(event.event_name or "") if event.status == MAPPED else None
    return dedup_keys(event, definition, item.idempotency_key)


async def commit(store: Store, config: CompiledConfig, items: list[Item],
                 now: float | None = None) -> list[Result]:
    """Store one batch of events in one transaction; results in item order."""
    if not items:
        return []
    now = time.time() if now is None else now
    keys: dict[tuple[str, str], set[str]] = defaultdict(set)
    idents: dict[str, set[str]] = defaultdict(set)
    for item in items:
        event = item.event
        keys[(event.account, event.environment)].update(_keys(config, event, item))
        idents[event.account].update(identifiers(config, event))
    plan, seqs = await store.ingest(BatchInput(dict(keys), dict(idents)),
                                    config.settings.dedup_window_seconds, now,
                                    build_planner(config, items, now))
    seq_by_index: dict[int, int] = {}
    inserted = [i for i, outcome in enumerate(plan.results) if outcome.status == "accepted"]
    for index, seq in zip(inserted, seqs, strict=True):
        seq_by_index[index] = seq
    results = []
    for index, (item, outcome) in enumerate(zip(items, plan.results, strict=True)):
        if outcome.status == "accepted":
            status = "accepted" if item.event.status == MAPPED else "unmapped"
            results.append(Result(item.event.event_id, status, None, seq_by_index.get(index)))
        else:
            seq = outcome.duplicate_of_seq
            if seq is None and outcome.duplicate_of_index is not None:
                seq = seq_by_index.get(outcome.duplicate_of_index)
            results.append(Result(item.event.event_id, "duplicate", outcome.reason, seq))
    return results


class GroupCommitter:
    """Batches concurrent submissions into one store transaction.

    While one transaction is being written, new submissions queue; the next
    transaction takes all of them (up to max_items). No timer is needed for batching
    under load, and a lone request is written at once."""

    def __init__(self, store: Store, get_config: Callable[[], CompiledConfig],
                 max_items: int = 2000, max_wait_ms: float = 0.0,
                 on_commit: Callable[[], None] | None = None):
        self.store = store
        self.on_commit = on_commit
        self.get_config = get_config
        self.max_items = max_items
        self.max_wait = max_wait_ms / 1000
        self._queue: asyncio.Queue[tuple[list[Item], asyncio.Future[list[Result]]]] = \
            asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self.transactions = 0
        self.committed_events = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="group-commit")

    async def stop(self) -> None:
        """Write everything already submitted, then stop."""
        if self._task is None:
            return
        await self._queue.join()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    async def submit(self, items: list[Item]) -> list[Result]:
        if not items:
            return []
        if self._task is None:
            raise RuntimeError("group committer is not running")
        future: asyncio.Future[list[Result]] = asyncio.get_running_loop().create_future()
        await self._queue.put((items, future))
        return await future

    async def _run(self) -> None:
        while True:
            first = await self._queue.get()
            pending = [first]
            count = len(first[0])
            if self.max_wait and self._queue.empty():
                await asyncio.sleep(self.max_wait)
            while count < self.max_items and not self._queue.empty():
                nxt = self._queue.get_nowait()
                pending.append(nxt)
                count += len(nxt[0])
            await self._write(pending)
            for _ in pending:
                self._queue.task_done()

    async def _write(self, pending: list[tuple[list[Item], asyncio.Future[list[Result]]]]) -> None:
        items = [item for batch, _ in pending for item in batch]
        try:
            results = await commit(self.store, self.get_config(), items)
        except Exception as exc:  # the transaction rolled back: nobody is acknowledged
            log.exception("group commit of %d events failed", len(items))
            for _, future in pending:
                if not future.done():
                    future.set_exception(exc)
            return
        self.transactions += 1
        self.committed_events += len(items)
        if self.on_commit is not None:
            self.on_commit()
        offset = 0
        for batch, future in pending:
            if not future.done():
                future.set_result(results[offset:offset + len(batch)])
            offset += len(batch)
