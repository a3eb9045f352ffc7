"""Stage 2's transaction against a real SQLite file, without HTTP: dedup, identity,
holds, routing written as Delivery rows, rejected and unmapped events kept."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from router.config.model import CompiledConfig
from router.pipeline.commit import Item, commit
from router.pipeline.guard import Rejection
from router.store.sqlite import SQLiteStore
from tests.items import item


def run_store(path: Path, body: object) -> object:
    async def run() -> object:
        store = SQLiteStore(f"sqlite:///{path}")
        await store.open()
        try:
            return await body(store)  # type: ignore[operator]
        finally:
            await store.close()
    return asyncio.run(run())


def test_events_and_their_deliveries_are_written_in_one_transaction(
        shipped_config: CompiledConfig, tmp_path: Path) -> None:
    async def body(store: SQLiteStore) -> list[str]:
        results = await commit(store, shipped_config, [item(shipped_config, "t1", "o-t1",
                                                            email="t1@example.com")])
        return [r.status for r in results]

    assert run_store(tmp_path / "t.db", body) == ["accepted"]
    with sqlite3.connect(tmp_path / "t.db") as conn:
        rows = dict(conn.execute("SELECT destination, status FROM deliveries").fetchall())
        due = conn.execute("SELECT count(*) FROM deliveries WHERE due_at IS NOT NULL "
                           "AND status = 'queued'").fetchone()[0]
    demo = shipped_config.accounts["demo"].environments["production"]
    listed = {n for n in demo.destinations if shipped_config.destinations[n].platform_event(
        "purchase")}
    # one row per destination that lists purchases, queued (and due) or dropped with reason
    assert set(rows) == listed
    assert due == sum(1 for s in rows.values() if s == "queued") > 0


def test_duplicates_inside_one_transaction(shipped_config: CompiledConfig, tmp_path: Path) -> None:
    async def body(store: SQLiteStore) -> list[tuple[str, str | None]]:
        items = [item(shipped_config, "a", order_id="o-1"), item(shipped_config, "b", "o-1"),
                 item(shipped_config, "a", "o-1"), item(shipped_config, "c", "o-2")]
        results = await commit(store, shipped_config, items)
        assert results[1].seq == results[0].seq  # the duplicate names what it merged into
        return [(r.status, r.duplicate_of) for r in results]

    assert run_store(tmp_path / "d.db", body) == [
        ("accepted", None), ("duplicate", "a"), ("duplicate", "a"), ("accepted", None)]


def test_dedup_window(shipped_config: CompiledConfig, tmp_path: Path) -> None:
    window = shipped_config.settings.dedup_window_seconds

    async def body(store: SQLiteStore) -> list[str]:
        now = 1_800_000_000.0
        statuses = []
        for message_id, advance in (("x1", 0), ("x2", window - 60), ("x3", 120)):
            now += advance
            [result] = await commit(store, shipped_config,
                                    [item(shipped_config, message_id, "o-window")], now=now)
            statuses.append(result.status)
        return statuses

    # inside the window the order dedups; once its key is older than the window, a new
    # purchase with the same order id is a new purchase
    assert run_store(tmp_path / "w.db", body) == ["accepted", "duplicate", "accepted"]


def test_identity_clusters_merge_and_persist(shipped_config: CompiledConfig,
                                             tmp_path: Path) -> None:
    async def body(store: SQLiteStore) -> tuple[dict[str, str], dict[str, object]]:
        # two anonymous people, then one event that proves they are the same person
        await commit(store, shipped_config, [item(shipped_config, "p1", email="one@x.test")])
        await commit(store, shipped_config, [item(shipped_config, "p2")])
        linked = item(shipped_config, "p3", email="one@x.test")
        linked = Item(linked.event.evolve(user_data={**linked.event.user_data,
                                                     "anonymous_id": "a-p2"}))
        await commit(store, shipped_config, [linked])
        view = await store.identity_of("demo", ["anonymous_id:a-p1", "anonymous_id:a-p2",
                                                "anonymous_id:a-p3"])
        return view.roots, next(iter(view.profiles.values()))

    roots, profile = run_store(tmp_path / "i.db", body)  # type: ignore[misc]
    assert len(set(roots.values())) == 1  # one person
    assert "email_sha256" in profile


def test_routing_sees_what_enrichment_added(shipped_config: CompiledConfig,
                                            tmp_path: Path) -> None:
    """Routing runs after identity: a purchase without an email, from a person whose
    email an earlier event taught, reaches the destinations that need an email."""
    needs_email = [n for n, d in shipped_config.destinations.items()
                   if "user_data.email_sha256 or" in str(d.definition.get("send_if"))]
    assert needs_email, "the shipped config has a destination whose send_if needs an email"

    async def body(store: SQLiteStore) -> dict[str, str]:
        await commit(store, shipped_config, [item(shipped_config, "e1", email="en@x.test")])
        anon = item(shipped_config, "e2", "o-enriched")
        anon = Item(anon.event.evolve(user_data={**anon.event.user_data,
                                                 "anonymous_id": "a-e1"}))
        [result] = await commit(store, shipped_config, [anon])
        return {d.destination: d.status for d in await store.deliveries_for([result.seq])}

    statuses = run_store(tmp_path / "enriched.db", body)
    for name in needs_email:
        assert statuses.get(name) == "queued", (name, statuses)  # type: ignore[union-attr]


def test_rejected_and_unmapped_events_are_kept_without_plaintext(
        shipped_config: CompiledConfig, tmp_path: Path) -> None:
    good = item(shipped_config, "kept-1", "o-kept")
    rejected = Item(good.event.evolve(event_id="kept-2"), None,
                    Rejection("invalid_event", "purchase: custom_data: 'currency' is required"),
                    {"messageId": "kept-2", "context": {"traits": {"email": "jane@shop.test",
                                                                   "firstName": "Jane"}}})

    async def body(store: SQLiteStore) -> list[str]:
        results = await commit(store, shipped_config, [good, rejected])
        listed = await store.list_events(status="rejected")
        assert [e.row.event_id for e in listed] == ["kept-2"]
        row = listed[0].row
        assert row.evidence["rejection"]["code"] == "invalid_event"
        assert row.raw["context"]["traits"] == {"email": "j***@s***.test", "firstName": "J***"}
        assert await store.deliveries_for([listed[0].seq]) == []  # never routed
        return [r.status for r in results]

    assert run_store(tmp_path / "rej.db", body) == ["accepted", "rejected"]
    raw = (tmp_path / "rej.db").read_bytes()
    assert b"jane@shop.test" not in raw


def test_an_event_id_reused_after_the_window_is_a_new_event(
        shipped_config: CompiledConfig, tmp_path: Path) -> None:
    window = shipped_config.settings.dedup_window_seconds

    async def body(store: SQLiteStore) -> list[str]:
        first = await commit(store, shipped_config, [item(shipped_config, "same-id")],
                             now=1_800_000_000.0)
        # the same id a day later, together with an unrelated event in one transaction
        later = await commit(store, shipped_config, [item(shipped_config, "same-id"),
                                                     item(shipped_config, "other-id")],
                             now=1_800_000_000.0 + window + 60)
        events = await store.get_events("same-id")
        return [first[0].status, *[r.status for r in later], str(len(events))]

    assert run_store(tmp_path / "reuse.db", body) == ["accepted", "accepted", "accepted", "2"]


@pytest.mark.parametrize("partner_first", [False, True])
def test_a_held_half_is_released_when_its_partner_merges(
        shipped_config: CompiledConfig, tmp_path: Path, partner_first: bool) -> None:
    """A Shopify order (server half) waits for the pixel's half; the merge releases it
    at once with both halves' identifiers, and routing is decided again."""
    from router.pipeline.prepare import prepare

    account = shipped_config.accounts["demo"]
    shopify = shipped_config.mappings["shopify"]
    pixel = shipped_config.mappings["pixel"]
    order = {"id": 820982911946154500, "email": "half@example.com", "total_price": "25.00",
             "currency": "USD", "created_at": "2026-11-20T11:59:00Z",
             "_meta": {"topic": "orders/create", "shop_domain": "demo.myshopify.com"}}
    hit = {"event": "purchase", "event_id": "px-820982911946154500",
           "data": {"order_id": "820982911946154500", "value": 25, "currency": "USD"},
           "page": {"url": "https://shop.example/thanks"},
           "_meta": {"fbp": "fb.1.1700000000000.111", "ip": "203.0.113.9",
                     "user_agent": "Mozilla/5.0"}}

    def prepared(mapping: object, message: dict[str, object]) -> Item:
        p = prepare(shipped_config, mapping, account, "production", message,  # type: ignore[arg-type]
                    "2026-11-20T12:00:00.000Z", routed=False)
        assert p.event is not None and p.rejection is None, p.rejection
        return Item(p.event, p.idempotency_key)

    server, browser = prepared(shopify, order), prepared(pixel, hit)
    first, second = (browser, server) if partner_first else (server, browser)

    async def body(store: SQLiteStore) -> tuple[object, ...]:
        now = 1_800_000_000.0
        [a] = await commit(store, shipped_config, [first], now=now)
        held = (await store.events_by_seq([a.seq]))[a.seq]
        [b] = await commit(store, shipped_config, [second], now=now + 3)
        merged = (await store.events_by_seq([a.seq]))[a.seq]
        return held.row, b, merged.row

    held, second_result, merged = run_store(tmp_path / "hold.db", body)  # type: ignore[misc]
    assert held.release_at == pytest.approx(1_800_000_000.0 + 30)
    assert held.evidence["hold"]["waiting_for"] == ("server" if partner_first else "browser")
    assert second_result.status == "duplicate"
    assert merged.release_at == pytest.approx(1_800_000_000.0 + 3)  # released by the merge
    assert merged.evidence["hold"]["released"]["reason"] == "merged"
    assert merged.body["user_data"]["fbp"] == "fb.1.1700000000000.111"
    assert merged.body["user_data"]["email_sha256"]
    with sqlite3.connect(tmp_path / "hold.db") as conn:
        due = {r[0] for r in conn.execute("SELECT due_at FROM deliveries WHERE status = "
                                          "'queued'")}
    assert due and max(due) <= 1_800_000_000.0 + 3 + 1  # nobody waits for the window


def test_a_server_event_that_carries_browser_identifiers_is_not_held(
        shipped_config: CompiledConfig, tmp_path: Path) -> None:
    from router.pipeline.prepare import prepare

    order = {"id": 5, "email": "whole@example.com", "total_price": "5.00", "currency": "USD",
             "note_attributes": [{"name": "_fbp", "value": "fb.1.1.2"}],
             "_meta": {"topic": "orders/create", "shop_domain": "demo.myshopify.com"}}
    p = prepare(shipped_config, shipped_config.mappings["shopify"],
                shipped_config.accounts["demo"], "production", order,
                "2026-11-20T12:00:00.000Z", routed=False)
    assert p.event is not None
    if not p.event.user_data.get("fbp"):
        pytest.fail("the Shopify mapping should read _fbp from note_attributes")

    async def body(store: SQLiteStore) -> object:
        [r] = await commit(store, shipped_config, [Item(p.event)], now=1_800_000_000.0)
        return (await store.events_by_seq([r.seq]))[r.seq].row

    row = run_store(tmp_path / "whole.db", body)
    assert row.release_at is None and "hold" not in row.evidence  # type: ignore[attr-defined]
