"""Stage 2: the processor, after the acknowledgement.

It owns account partitions through leases (one owner per partition at a time, so
identity and dedup need no cross-process locking), reads their inbox rows in batches,
prepares each message (map, canonical schema, identity normalization, consent), and
commits the batch in one transaction: events, their deliveries, identity, and the
deletion of the inbox rows (plaintext does not linger there). It is woken by the
gateway's commits, not by a timer; an idle processor does no store round trips
beyond renewing its leases.

One message that makes preparation raise is stored as rejected (`internal_error`),
logged with its stack trace; the rest of the batch goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from router.config.model import CompiledConfig
from router.expr.functions import parse_time
from router.pipeline.commit import Item, Result, commit
from router.pipeline.event import UNMAPPED, Event
from router.pipeline.guard import Rejection
from router.pipeline.prepare import prepare
from router.scheduling import Governor, Slicer
from router.store.base import Changes, InboxRow, LeaseCheck, LeaseLost, Store

log = logging.getLogger("router.processor")
PARTITION_LEASE = "partition"
BUSY_BATCH = 50  # messages per batch while ingest requests are waiting


@dataclass
class ProcessorStats:
    batches: int = 0
    messages: int = 0
    last_lag_seconds: float = 0.0  # acknowledgement -> decision, for the last batch


def _placeholder(row: InboxRow, event_id: str, message: Any, name: str | None) -> Event:
    """An Event to carry a rejection when the message never became one."""
    return Event(event_name=None, event_id=event_id, occurred_at=None,
                 received_at=row.received_at, source=row.source, source_event=name,
                 account=row.account, environment=row.environment, status=UNMAPPED)


def prepare_row(config: CompiledConfig, row: InboxRow) -> list[Item]:
    """Every message of one inbox row as an Item, in order; never raises."""
    items: list[Item] = []
    account = config.accounts.get(row.account)
    env = account.environments.get(row.environment) if account else None
    try:
        mapping = config.mapping_for(env, row.source) if env is not None else None
    except KeyError:
        mapping = None
    meta = {**row.meta, "received_at": row.received_at}
    for position, (event_id, message) in enumerate(zip(row.event_ids, row.messages,
                                                       strict=True)):
        ref = (row.id, position)
        if account is None or mapping is None:
            # the account or source left the config after the acknowledgement
            items.append(Item(_placeholder(row, event_id, message, None), None, Rejection(
                "unknown_account", f"{row.account}/{row.environment} no longer receives "
                f"{row.source} events (config changed after this was acknowledged)"),
                message, ref))
            continue
        full = {**message, "_meta": meta} if isinstance(message, dict) else message
        try:
            prepared = prepare(config, mapping, account, row.environment, full,
                               row.received_at, screened=True, routed=False)
        except Exception:
            log.exception("preparing %s/%s %s event %s failed", row.account, row.environment,
                          row.source, event_id)
            items.append(Item(_placeholder(row, event_id, message, None), None, Rejection(
                "internal_error", "the router failed on this event; it is kept for a replay "
                "after a fix (see the logs)"), message, ref))
            continue
        event = prepared.event
        if event is None:
            items.append(Item(_placeholder(row, event_id, message, None), None,
                              prepared.rejection, message, ref))
            continue
        if event.event_id != event_id:
            # the gateway answered with this id (a reload between the two stages may
            # compute another): the acknowledged one stays the event's id
            event = event.evolve(event_id=event_id)
        items.append(Item(event, prepared.idempotency_key, prepared.rejection, message, ref))
    return items


class Processor:
    """Reads owned partitions' inbox rows in batches and commits their decisions."""

    def __init__(self, store: Store, get_config: Callable[[], CompiledConfig], owner: str,
                 governor: Governor | None = None,
                 on_results: Callable[[InboxRow, list[Result]], None] | None = None):
        self.store = store
        self.get_config = get_config
        self.owner = owner
        self.governor = governor or Governor()
        self.on_results = on_results
        self.stats = ProcessorStats()
        self.owned: list[int] = []
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._unsubscribe: Callable[[], None] | None = None
        self._leases_until = 0.0

    def _on_changes(self, changes: Changes) -> None:
        if changes.external or not changes.inbox.isdisjoint(self.owned):
            self._wake.set()

    async def run(self) -> None:
        self._unsubscribe = self.store.notifier.subscribe(self._on_changes)
        try:
            while not self._stopping.is_set():
                try:
                    worked = await self.step()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("processor step failed; retrying in 1 s")
                    await asyncio.sleep(1.0)
                    continue
                if not worked:
                    timeout = max(0.05, self._leases_until - time.time() -
                                  self.get_config().settings.lease_seconds / 2)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), timeout)
                    self._wake.clear()
        finally:
            if self._unsubscribe is not None:
                self._unsubscribe()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    async def _leases(self, config: CompiledConfig) -> list[int]:
        settings = config.settings
        now = time.time()
        if self.owned and now < self._leases_until - settings.lease_seconds / 2:
            return self.owned
        keys = [str(p) for p in range(settings.partitions)]
        held = await self.store.claim_leases(PARTITION_LEASE, keys, self.owner,
                                             settings.lease_seconds)
        self.owned = sorted(int(k) for k in held)
        self._leases_until = now + settings.lease_seconds
        return self.owned

    async def step(self) -> bool:
        """Process one batch; False when there was nothing to do."""
        config = self.get_config()
        owned = await self._leases(config)
        if not owned:
            return False
        # while the gateway is busy, small batches: the single writer is held briefly, so
        # acknowledgements never wait long behind a decision transaction
        limit = config.settings.processor_batch_events
        rows = await self.store.read_inbox(owned, min(limit, BUSY_BATCH) if self.governor.busy
                                           else limit)
        if not rows:
            return False
        await self.process(config, rows)
        return True

    async def process(self, config: CompiledConfig, rows: Sequence[InboxRow]) -> list[Result]:
        slicer = Slicer(self.governor)
        items: list[Item] = []
        spans: list[tuple[InboxRow, int, int]] = []
        for row in rows:
            start = len(items)
            items.extend(prepare_row(config, row))
            spans.append((row, start, len(items)))
            await slicer.tick()
        partitions = tuple(sorted({str(r.partition) for r in rows}))
        try:
            results = await commit(self.store, config, items, done_inbox=[r.id for r in rows],
                                   waiting=frozenset(r.id for r in rows if r.wait),
                                   lease=LeaseCheck(PARTITION_LEASE, partitions, self.owner),
                                   tick=slicer.tick)
        except LeaseLost:
            # another processor owns these partitions now: its batch, not ours
            log.warning("partition lease lost before writing a batch of %d; left to its "
                        "new owner", len(items))
            self.owned = []
            self._leases_until = 0.0
            return []
        self.stats.batches += 1
        self.stats.messages += len(items)
        oldest = min((r.received_at for r in rows), default=None)
        if oldest:
            parsed = parse_time(oldest)
            if parsed is not None:
                self.stats.last_lag_seconds = max(0.0, time.time() - parsed.timestamp())
        if self.on_results is not None:
            for row, start, end in spans:
                self.on_results(row, results[start:end])
        return results
