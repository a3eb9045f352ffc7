"""Group commit and dedup against a real SQLite file, without HTTP."""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
import time
from pathlib import Path

import pytest

from router.config.model import CompiledConfig
from router.pipeline import ingest as ingest_module
from router.pipeline.ingest import GroupCommitter, Item, commit
from router.pipeline.prepare import prepare
from router.store.sqlite import SQLiteStore

RECEIVED = "2026-11-20T12:00:00.000Z"


def item(config: CompiledConfig, message_id: str, order_id: str | None = None,
         email: str | None = None) -> Item:
    mapping = config.mappings["segment"]
    account = config.accounts["demo"]
    message = {"type": "track", "messageId": message_id, "anonymousId": f"a-{message_id}",
               "event": "Order Completed" if order_id else "Signed Up",
               "properties": {"order_id": order_id, "total": 10, "currency": "USD"}
               if order_id else {}, "context": {"traits": {"email": email}} if email else {}}
    prepared = prepare(config, mapping, account, "production", message, RECEIVED)
    assert prepared.event is not None and prepared.rejection is None
    return Item(prepared.event, prepared.routes or {}, prepared.idempotency_key)


def test_concurrent_submissions_share_transactions(shipped_config: CompiledConfig,
                                                   tmp_path: Path) -> None:
    async def run() -> tuple[GroupCommitter, list[str]]:
        store = SQLiteStore(f"sqlite:///{tmp_path / 'gc.db'}")
        await store.open()
        committer = GroupCommitter(store, lambda: shipped_config)
        committer.start()
        batches = [[item(shipped_config, f"m{i}")] for i in range(60)]
        results = await asyncio.gather(*(committer.submit(b) for b in batches))
        await committer.stop()
        await store.close()
        return committer, [r[0].status for r in results]

    committer, statuses = asyncio.run(run())
    assert statuses == ["accepted"] * 60
    assert committer.committed_events == 60
    assert committer.transactions < 60 / 4  # many requests per transaction
    with sqlite3.connect(tmp_path / "gc.db") as conn:
        assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == 60
        # the ingest path wrote no per-destination rows
        assert conn.execute("SELECT count(*) FROM deliveries").fetchone()[0] == 0


def test_duplicates_inside_one_transaction(shipped_config: CompiledConfig, tmp_path: Path) -> None:
    async def run() -> list[str]:
        store = SQLiteStore(f"sqlite:///{tmp_path / 'd.db'}")
        await store.open()
        items = [item(shipped_config, "a", order_id="o-1"), item(shipped_config, "b", "o-1"),
                 item(shipped_config, "a", "o-1"), item(shipped_config, "c", "o-2")]
        results = await commit(store, shipped_config, items)
        await store.close()
        return [r.status for r in results]

    assert asyncio.run(run()) == ["accepted", "duplicate", "duplicate", "accepted"]


def test_dedup_window(shipped_config: CompiledConfig, tmp_path: Path,
                      monkeypatch: pytest.MonkeyPatch) -> None:
    window = shipped_config.settings.dedup_window_seconds

    async def run() -> list[str]:
        store = SQLiteStore(f"sqlite:///{tmp_path / 'w.db'}")
        await store.open()
        clock = [1_800_000_000.0]
        monkeypatch.setattr(ingest_module.time, "time", lambda: clock[0])
        statuses = []
        for message_id, advance in (("x1", 0), ("x2", window - 60), ("x3", 120)):
            clock[0] += advance
            [result] = await commit(store, shipped_config,
                                    [item(shipped_config, message_id, "o-window")])
            statuses.append(result.status)
        await store.close()
        return statuses

    # inside the window the order dedups; once its key is older than the window, a new
    # purchase with the same order id is a new purchase
    assert asyncio.run(run()) == ["accepted", "duplicate", "accepted"]


def test_identity_clusters_merge_and_persist(shipped_config: CompiledConfig,
                                             tmp_path: Path) -> None:
    async def run() -> tuple[dict[str, str], dict[str, object]]:
        store = SQLiteStore(f"sqlite:///{tmp_path / 'i.db'}")
        await store.open()
        # two anonymous people, then one event that proves they are the same person
        await commit(store, shipped_config, [item(shipped_config, "p1", email="one@x.test")])
        await commit(store, shipped_config, [item(shipped_config, "p2")])
        linked = item(shipped_config, "p3", email="one@x.test")
        linked = Item(linked.event.evolve(user_data={**linked.event.user_data,
                                                     "anonymous_id": "a-p2"}), linked.routes)
        await commit(store, shipped_config, [linked])
        view = await store.identity_of("demo", ["anonymous_id:a-p1", "anonymous_id:a-p2",
                                                "anonymous_id:a-p3"])
        profile = next(iter(view.profiles.values()))
        await store.close()
        return view.roots, profile

    roots, profile = asyncio.run(run())
    assert len(set(roots.values())) == 1  # one person
    assert "email_sha256" in profile


def test_pacer_spaces_requests_at_the_declared_rate() -> None:
    """Counts slots, not wall time: the pacer hands out slots `interval` apart."""
    from router.delivery.worker import Pacer

    pacer = Pacer(per_second=50)

    async def run() -> list[float]:
        slots = []
        for _ in range(5):
            await pacer.wait()
            slots.append(pacer.next_at)
        return slots

    slots = asyncio.run(run())
    gaps = [round(b - a, 6) for a, b in itertools.pairwise(slots)]
    assert gaps == [0.02] * 4


def test_paused_rows_written_after_a_resume_are_due(shipped_config: CompiledConfig,
                                                    tmp_path: Path) -> None:
    """A worker that still believed in a lifted pause must not strand deliveries."""
    from router.store.base import Outcome

    async def run() -> tuple[int, list[int]]:
        store = SQLiteStore(f"sqlite:///{tmp_path / 'p.db'}")
        await store.open()
        [first, second] = await commit(store, shipped_config, [item(shipped_config, "p-1"),
                                                               item(shipped_config, "p-2")])
        await store.pause("webhook", "demo", "production", "HTTP 401")
        paused = Outcome(first.seq, "webhook", "queued", 0, "2026-11-20T12:00:00.000Z",
                         "webhook@2", last_error="paused: HTTP 401")
        await store.record([paused], destination="webhook")
        await store.resume("webhook")
        stale = Outcome(second.seq, "webhook", "queued", 0, "2026-11-20T12:00:00.000Z",
                        "webhook@2", last_error="paused: HTTP 401")
        await store.record([stale], destination="webhook")  # written after the resume
        due = await store.claim_due("webhook", time.time() + 1, 10, 30)
        await store.close()
        return len(due), sorted(d.event.seq for d in due)

    count, _ = asyncio.run(run())
    assert count == 2  # the resumed one and the one written late: neither is stranded


def test_an_event_id_reused_after_the_window_is_a_new_event(
        shipped_config: CompiledConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    window = shipped_config.settings.dedup_window_seconds

    async def run() -> list[str]:
        store = SQLiteStore(f"sqlite:///{tmp_path / 'reuse.db'}")
        await store.open()
        first = await commit(store, shipped_config, [item(shipped_config, "same-id")],
                             now=1_800_000_000.0)
        # the same id a day later, together with an unrelated event in one transaction
        later = await commit(store, shipped_config, [item(shipped_config, "same-id"),
                                                     item(shipped_config, "other-id")],
                             now=1_800_000_000.0 + window + 60)
        events = await store.get_events("same-id")
        await store.close()
        return [first[0].status, *[r.status for r in later], str(len(events))]

    assert asyncio.run(run()) == ["accepted", "accepted", "accepted", "2"]
