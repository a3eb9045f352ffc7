"""Group commit of delivery outcomes, across every destination of the process.

Workers hand over the outcomes of each answered request (with the request's excerpt,
stored once however many events it carried); the writer commits whatever queued while
the previous transaction was being written — after a short linger, so the answers of every
destination for the same events share one transaction — then tells each worker which of
its jobs are done. A failed write is retried: the outcomes stay in memory and
the claims stay leased meanwhile, so nothing is lost or sent twice by this process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from router.store.base import Outcome, RequestExcerpt, Store

if TYPE_CHECKING:
    from router.delivery.worker import DestinationWorker

log = logging.getLogger("router.delivery")
LINGER_SECONDS = 0.015  # gather outcomes this long before a transaction...
LINGER_UNTIL = 200  # ...unless this many are waiting already


@dataclass
class _Submission:
    outcomes: list[Outcome]
    excerpt: RequestExcerpt | None
    worker: DestinationWorker | None


class OutcomeWriter:
    def __init__(self, store: Store, owner: str, plaintext: Callable[[], frozenset[str]],
                 on_written: Callable[[Sequence[Outcome]], None] | None = None,
                 linger: float = LINGER_SECONDS):
        self.store = store
        self.linger = linger
        self.owner = owner
        self.plaintext = plaintext
        self.on_written = on_written
        self._pending: list[_Submission] = []
        self._ready = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self.transactions = 0
        self.outcomes_written = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="delivery-outcomes")

    async def submit(self, outcomes: Sequence[Outcome], excerpt: RequestExcerpt | None,
                     worker: DestinationWorker | None) -> None:
        if not outcomes:
            return
        self._pending.append(_Submission(list(outcomes), excerpt, worker))
        self._idle.clear()
        self._ready.set()

    async def flush(self) -> None:
        """Wait until everything submitted so far is written."""
        while self._pending or not self._idle.is_set():
            self._ready.set()
            await self._idle.wait()
            if self._pending:
                self._idle.clear()

    async def stop(self) -> None:
        if self._task is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.flush(), 30)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    async def _run(self) -> None:
        while True:
            await self._ready.wait()
            self._ready.clear()
            if not self._pending:
                self._idle.set()
                continue
            if self.linger and sum(len(p.outcomes) for p in self._pending) < LINGER_UNTIL:
                # the other destinations' answers for the same events arrive within a few
                # ms: one transaction for all of them instead of one each. The platforms
                # have their events already; only the record waits.
                await asyncio.sleep(self.linger)
            batch, self._pending = self._pending, []
            outcomes: list[Outcome] = []
            requests: list[RequestExcerpt] = []
            for submission in batch:
                ref = None
                if submission.excerpt is not None:
                    ref = len(requests)
                    requests.append(submission.excerpt)
                for outcome in submission.outcomes:
                    if outcome.request_ref is not None:
                        outcome = replace(outcome, request_ref=ref)
                    outcomes.append(outcome)
            try:
                await self.store.record(outcomes, requests, self.owner, time.time(),
                                        self.plaintext())
            except Exception:
                log.exception("writing %d delivery outcomes failed; retrying in 1 s",
                              len(outcomes))
                self._pending = batch + self._pending
                await asyncio.sleep(1.0)
                self._ready.set()
                continue
            self.transactions += 1
            self.outcomes_written += len(outcomes)
            for submission in batch:
                if submission.worker is not None:
                    submission.worker.finished([o.event_seq for o in submission.outcomes])
            if self.on_written is not None:
                self.on_written(outcomes)
            if self._pending:
                self._ready.set()
            else:
                self._idle.set()
