"""`?wait=true`: hold a request's answer until stage 2 has decided its messages.

In one process the processor hands its results over directly; when the processor
runs in another process, its decisions are kept in the store for a few minutes and
read back when that process's commits are noticed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from router.store.base import Changes, Store


class Waiters:
    def __init__(self, store: Store):
        self.store = store
        self._futures: dict[int, asyncio.Future[list[dict[str, Any]]]] = {}
        self._unsubscribe: Callable[[], None] | None = None

    def start(self) -> None:
        self._unsubscribe = self.store.notifier.subscribe(self._on_changes)

    def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
        for future in self._futures.values():
            future.cancel()

    def resolve(self, inbox_id: int, results: list[dict[str, Any]]) -> None:
        future = self._futures.get(inbox_id)
        if future is not None and not future.done():
            future.set_result(results)

    def _on_changes(self, changes: Changes) -> None:
        if changes.external and self._futures:
            asyncio.get_running_loop().create_task(self._fetch(list(self._futures)))

    async def _fetch(self, ids: list[int]) -> None:
        found = await self.store.decisions(ids)
        for inbox_id, results in found.items():
            self.resolve(inbox_id, sorted(results, key=lambda r: r.get("position", 0)))

    async def wait(self, inbox_id: int, timeout: float) -> list[dict[str, Any]] | None:
        """Stage 2's answers for this row's messages, or None if not decided in time."""
        future: asyncio.Future[list[dict[str, Any]]] = asyncio.get_running_loop().create_future()
        self._futures[inbox_id] = future
        try:
            # decided before we started waiting (another process was fast)?
            await self._fetch([inbox_id])
            with contextlib.suppress(TimeoutError):
                return await asyncio.wait_for(asyncio.shield(future), timeout)
            return None
        finally:
            self._futures.pop(inbox_id, None)
