"""Reads through the shared reader connection see every commit that finished before them.

Delivery workers poll the event log on the same reader connection as the admin API.
If two reads interleave on that connection, SQLite keeps one read transaction open
across both, so an unbroken chain of overlapping polls could pin a stale snapshot and
hide events that were acknowledged long before (the admin API answered 404 for them).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from router.config.model import CompiledConfig
from router.pipeline.ingest import commit
from router.store.sqlite import SQLiteStore
from tests.test_group_commit import item


def test_acknowledged_events_are_visible_while_pollers_overlap(
        shipped_config: CompiledConfig, tmp_path: Path) -> None:
    async def run() -> list[str]:
        store = SQLiteStore(f"sqlite:///{tmp_path / 'r.db'}")
        await store.open()
        stop = asyncio.Event()

        async def poller() -> None:  # what each destination worker does between batches
            while not stop.is_set():
                await store.read_after(0, 500)

        pollers = [asyncio.create_task(poller()) for _ in range(13)]
        await asyncio.sleep(0.05)
        missing = []
        for n in range(40):
            event_id = f"vis-{n}"
            results = await commit(store, shipped_config, [item(shipped_config, event_id)])
            assert results[0].status == "accepted"
            if not await store.get_events(event_id):
                missing.append(event_id)
        stop.set()
        await asyncio.gather(*pollers)
        await store.close()
        return missing

    assert asyncio.run(run()) == []


def test_one_open_alert_per_condition_and_resolution_is_kept(tmp_path: Path) -> None:
    async def run() -> tuple[list[bool], list[bool], int, int]:
        store = SQLiteStore(f"sqlite:///{tmp_path / 'a.db'}")
        await store.open()
        opened = [await store.open_alert("queue_backlog", "meta", {"lag": n}) for n in (1, 2)]
        resolved = [await store.resolve_alert("queue_backlog", "meta") for _ in range(2)]
        reopened = await store.open_alert("queue_backlog", "meta", {"lag": 3})
        assert reopened
        open_now = await store.alerts(open_only=True)
        everything = await store.alerts()
        await store.close()
        assert open_now[0].detail == {"lag": 3}
        return opened, resolved, len(open_now), len(everything)

    opened, resolved, open_count, total = asyncio.run(run())
    assert opened == [True, False]  # the second report of an open condition adds nothing
    assert resolved == [True, False]
    assert (open_count, total) == (1, 2)
