"""The SQLite store's one writer: a thread with its own connection and a priority queue.

SQLite admits one writer at a time. Every write of this process goes through one
thread, so a transaction never waits on SQLite's lock-retry sleeps behind another of
ours; and the gateway's appends — what a sender is waiting for — go ahead of
background writes (the processor's decisions, delivery claims and outcomes) that queued
before them. Each job is one transaction. Jobs marked not durable (claims: losing one in
a power cut only means claiming again) skip the fsync.
"""

from __future__ import annotations

import asyncio
import itertools
import queue
import sqlite3
import threading
from collections.abc import Callable
from typing import Any

URGENT = 0  # the gateway's appends: a sender waits for them
NORMAL = 1  # everything else


class Writer:
    def __init__(self, open_connection: Callable[[], sqlite3.Connection]):
        self._open = open_connection
        self._jobs: queue.PriorityQueue[tuple[int, int, Any]] = queue.PriorityQueue()
        self._order = itertools.count()
        self._thread: threading.Thread | None = None
        self.conn: sqlite3.Connection | None = None
        self.transactions = 0

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()
        self._thread = threading.Thread(target=self._run, args=(loop, ready),
                                        name="sqlite-writer", daemon=True)
        self._thread.start()
        await ready

    def _run(self, loop: asyncio.AbstractEventLoop, ready: asyncio.Future[None]) -> None:
        try:
            self.conn = self._open()
        except BaseException as exc:  # report the failure to open, then stop
            loop.call_soon_threadsafe(_settle, ready, None, exc)
            return
        loop.call_soon_threadsafe(_settle, ready, None, None)
        durable = True
        while True:
            _, _, job = self._jobs.get()
            if job is None:
                break
            fn, args, future, job_loop, transaction, want_durable = job
            try:
                if transaction:
                    if want_durable != durable:
                        self.conn.execute(f"PRAGMA synchronous={'FULL' if want_durable else 'NORMAL'}")
                        durable = want_durable
                    self.conn.execute("BEGIN IMMEDIATE")
                    try:
                        result = fn(self.conn, *args)
                        self.conn.execute("COMMIT")
                    except BaseException:
                        self.conn.execute("ROLLBACK")
                        raise
                    self.transactions += 1
                else:
                    result = fn(self.conn, *args)
                job_loop.call_soon_threadsafe(_settle, future, result, None)
            except BaseException as exc:  # the caller gets the error; the thread goes on
                job_loop.call_soon_threadsafe(_settle, future, None, exc)
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    async def call(self, fn: Callable[..., Any], *args: Any, priority: int = NORMAL,
                   transaction: bool = True, durable: bool = True) -> Any:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._jobs.put((priority, next(self._order),
                        (fn, args, future, loop, transaction, durable)))
        return await future

    async def stop(self) -> None:
        if self._thread is None:
            return
        self._jobs.put((99, next(self._order), None))
        await asyncio.to_thread(self._thread.join)
        self._thread = None


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
