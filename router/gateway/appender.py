"""Group commit for the gateway's inbox appends.

Requests hand their screened messages to one appender; it writes whatever queued while
the previous transaction was being written in one transaction (one fsync for many
requests), and answers each request only after its messages are durable. Under load
the group grows by itself, so no timer is needed; a lone request is written at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from router.store.base import Appended, InboxAppend, Store

log = logging.getLogger("router.gateway")


class Appender:
    def __init__(self, store: Store, window_seconds: Callable[[], float],
                 max_messages: int = 5000):
        self.store = store
        self.window_seconds = window_seconds
        self.max_messages = max_messages
        self._queue: asyncio.Queue[tuple[InboxAppend, asyncio.Future[Appended]]] = \
            asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self.transactions = 0
        self.appended_messages = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="inbox-append")

    async def stop(self) -> None:
        """Write everything already submitted, then stop."""
        if self._task is None:
            return
        await self._queue.join()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    async def submit(self, request: InboxAppend) -> Appended:
        if self._task is None:
            raise RuntimeError("the inbox appender is not running")
        future: asyncio.Future[Appended] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((request, future))
        return await future

    async def _run(self) -> None:
        while True:
            first = await self._queue.get()
            pending = [first]
            count = len(first[0].messages)
            while count < self.max_messages and not self._queue.empty():
                nxt = self._queue.get_nowait()
                pending.append(nxt)
                count += len(nxt[0].messages)
            await self._write(pending)
            for _ in pending:
                self._queue.task_done()

    async def _write(self, pending: list[tuple[InboxAppend, asyncio.Future[Appended]]]) -> None:
        try:
            results = await self.store.append([r for r, _ in pending], self.window_seconds(),
                                              time.time())
        except Exception as exc:  # rolled back: nobody is acknowledged
            log.exception("inbox append of %d requests failed", len(pending))
            for _, future in pending:
                if not future.done():
                    future.set_exception(exc)
            return
        self.transactions += 1
        self.appended_messages += sum(len(r.messages) for r, _ in pending)
        for (_, future), result in zip(pending, results, strict=True):
            if not future.done():
                future.set_result(result)
