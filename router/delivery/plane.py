"""The delivery plane: one claimer feeding every destination's worker, one writer.

Work arrives as Delivery rows with a due time (written by the processor with the
event, or by a retry, a resume or a replay). The plane is woken by the store's
change notifications — the processor says which destinations it routed to — and by
timers for the next due time it knows of; an idle router does no store round trips.
When woken it claims due rows for every destination with room, in one transaction,
with the events decoded once for all of them, and hands them to the workers in memory.
Outcomes of all destinations are committed together by one writer.

Claims are leases (a due time pushed into the future plus an owner): a crashed
process's claims come due again when the lease ends, and a graceful shutdown gives
them back at once. The most a crash can re-send is what was in flight: per
destination, at most `concurrency` requests whose answers were not yet recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from router.config.model import CompiledConfig
from router.delivery.outcomes import OutcomeWriter
from router.delivery.worker import DestinationWorker, Pauses, plaintext_destinations
from router.scheduling import Governor
from router.store.base import Changes, Outcome, Store

log = logging.getLogger("router.delivery")


def new_owner() -> str:
    return f"{os.uname().nodename}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


class DeliveryPlane:
    def __init__(self, store: Store, get_config: Callable[[], CompiledConfig],
                 owner: str | None = None, governor: Governor | None = None,
                 on_outcomes: Callable[[Sequence[Outcome]], None] | None = None):
        self.store = store
        self.get_config = get_config
        self.owner = owner or new_owner()
        self.governor = governor or Governor()
        self.pauses = Pauses()
        self.writer = OutcomeWriter(store, self.owner,
                                    lambda: plaintext_destinations(self.get_config()),
                                    on_written=self._written)
        self.on_outcomes = on_outcomes
        self.workers: dict[str, DestinationWorker] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self._flags: set[str] = set()  # destinations that may have due work now
        self._next_due: dict[str, float] = {}  # destination -> earliest known due time
        self._reload_pauses = True
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self.claims = 0  # claim transactions, for the metrics and the tests

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        self._unsubscribe = self.store.notifier.subscribe(self._on_changes)
        self.writer.start()
        self.sync()
        self._flags.update(self.workers)  # at start, look at everything once
        self._task = asyncio.create_task(self._run(), name="delivery-claims")

    def sync(self) -> None:
        """Start workers for destinations that appeared (after a reload)."""
        for name in self.get_config().destinations:
            if name not in self.workers:
                worker = DestinationWorker(name, self.get_config, self.writer, self.pauses,
                                           self.store.pause, self.governor)
                self.workers[name] = worker
                self.tasks[name] = asyncio.create_task(worker.run(), name=f"deliver-{name}")
                self._flags.add(name)
        self._wake.set()

    async def stop(self, timeout: float = 15.0) -> None:
        """Stop claiming; let requests in flight finish (up to `timeout`); write their
        outcomes; hand every claim still held back to the store at once."""
        self._stopping = True
        self._wake.set()
        if self._unsubscribe is not None:
            self._unsubscribe()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for worker in self.workers.values():
            await worker.stop()
        if self.tasks:
            await asyncio.wait(self.tasks.values(), timeout=timeout)
        for task in self.tasks.values():
            if not task.done():
                task.cancel()
        await self.writer.stop()
        await self.store.release_leases(self.owner)

    # --- waking ----------------------------------------------------------------------------

    def _on_changes(self, changes: Changes) -> None:
        if changes.external:
            self._flags.update(self.workers)
            self._reload_pauses = True
        if changes.pauses:
            self._reload_pauses = True
        for destination, due_at in changes.due.items():
            self._note_due(destination, due_at)
        self._wake.set()

    def _note_due(self, destination: str, due_at: float) -> None:
        if due_at <= time.time():
            self._flags.add(destination)
        else:
            self._next_due[destination] = min(self._next_due.get(destination, math.inf),
                                               due_at)

    def _written(self, outcomes: Sequence[Outcome]) -> None:
        for outcome in outcomes:
            if outcome.due_at is not None:
                self._note_due(outcome.destination, outcome.due_at)
        if self.on_outcomes is not None:
            self.on_outcomes(outcomes)
        self._wake.set()  # room freed up

    def wake(self, destination: str | None = None) -> None:
        self._flags.update([destination] if destination else self.workers)
        self._wake.set()

    # --- the claim loop --------------------------------------------------------------------

    async def _run(self) -> None:
        renew_at = time.time()
        while not self._stopping:
            config = self.get_config()
            lease = config.settings.lease_seconds
            now = time.time()
            if now >= renew_at:
                await self._renew(now, lease)
                renew_at = now + lease / 3
            self._promote_due(now)
            ready = {name: room for name in self._flags
                     if name in config.destinations and (worker := self.workers.get(name))
                     and (room := worker.room()) > 0}
            if ready or self._reload_pauses:
                try:
                    await self._claim(now, lease, ready)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("claiming due deliveries failed; retrying in 1 s")
                    await asyncio.sleep(1.0)
                continue
            # nothing to claim now (no work, or the workers with work are full): sleep
            # until a change, an outcome freeing room, or the next known due time
            timers = [t for d, t in self._next_due.items() if d in self.workers]
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(),
                                       max(0.0, min([renew_at, *timers]) - now))

    def _promote_due(self, now: float) -> None:
        for destination, due_at in list(self._next_due.items()):
            if due_at <= now:
                self._flags.add(destination)
                del self._next_due[destination]

    async def _claim(self, now: float, lease: float, wanted: dict[str, int]) -> None:
        if self._reload_pauses:
            self._reload_pauses = False
            self.pauses.replace([(p.destination, p.account, p.environment)
                                 for p in await self.store.pauses()])
        if not wanted:
            return
        self._flags.difference_update(wanted)
        claimed, next_due = await self.store.claim_due(wanted, now, self.owner, lease)
        self.claims += 1
        for name in wanted:
            self._next_due.pop(name, None)
            if name in next_due:
                self._note_due(name, next_due[name])
            dues = claimed.get(name, [])
            if dues:
                self.workers[name].enqueue(dues, now)
            if len(dues) >= wanted[name]:
                self._flags.add(name)  # there may be more

    async def _renew(self, now: float, lease: float) -> None:
        """Keep the leases of claims still waiting in memory (paced destinations)."""
        for name, worker in self.workers.items():
            stale = worker.held_since(now - lease / 3)
            if stale:
                await self.store.renew([(seq, name) for seq in stale], self.owner, now + lease)
                worker.renewed(stale, now)

    # --- what operators and tests read ----------------------------------------------------

    def stats(self) -> dict[str, Any]:
        return {"claims": self.claims, "outcome_transactions": self.writer.transactions,
                "outcomes": self.writer.outcomes_written,
                "held": {n: len(w.held) for n, w in self.workers.items()},
                "requests": {n: w.stats.requests for n, w in self.workers.items()}}
