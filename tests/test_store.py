"""The SQLite store's three queues against a real file: the inbox, events with their
deliveries, and claims of due deliveries; plus migrations and shared-reader reads."""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
import time
from pathlib import Path
from typing import Any

from router.config.model import CompiledConfig
from router.gateway.appender import Appender
from router.pipeline.commit import Item, commit
from router.pipeline.prepare import prepare
from router.store.base import Changes, EventQuery, InboxAppend, Outcome, RequestExcerpt
from router.store.sqlite import SQLiteStore
from router.store.sqlite_schema import V1, migrate, statements
from tests.items import RECEIVED, item

OWNER = "test-owner"


def with_store(path: Path, body: Any) -> Any:
    async def run() -> Any:
        store = SQLiteStore(f"sqlite:///{path}")
        await store.open()
        try:
            return await body(store)
        finally:
            await store.close()
    return asyncio.run(run())


def request(event_ids: list[str], account: str = "demo", wait: bool = False) -> InboxAppend:
    return InboxAppend(partition=0, account=account, environment="production",
                       source="segment", received_at="2026-11-20T12:00:00.000Z",
                       meta={"ip": "203.0.113.1"}, event_ids=tuple(event_ids),
                       messages=tuple({"messageId": e, "type": "track", "event": "Signed Up"}
                                      for e in event_ids), wait=wait)


# --- the inbox ---------------------------------------------------------------------------

def test_concurrent_requests_share_inbox_transactions(tmp_path: Path) -> None:
    async def body(store: SQLiteStore) -> tuple[Appender, list[tuple[bool, ...]]]:
        appender = Appender(store, lambda: 86400)
        appender.start()
        answers = await asyncio.gather(*(appender.submit(request([f"m{i}"])) for i in range(60)))
        await appender.stop()
        return appender, [a.duplicates for a in answers]

    appender, flags = with_store(tmp_path / "gc.db", body)
    assert flags == [(False,)] * 60
    assert appender.appended_messages == 60
    assert appender.transactions < 60 / 4  # many requests per fsync'd transaction
    with sqlite3.connect(tmp_path / "gc.db") as conn:
        assert conn.execute("SELECT count(*) FROM inbox").fetchone()[0] == 60
        # the acknowledgement wrote no event and no delivery: stage 2 does
        assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == 0


def test_exact_retries_are_flagged_within_the_window_only(tmp_path: Path) -> None:
    async def body(store: SQLiteStore) -> list[tuple[bool, ...]]:
        now = 1_800_000_000.0
        out = []
        for ids, at in ((["r1", "r2", "r1"], now), (["r2", "r3"], now + 10),
                        (["r1"], now + 86_400 + 1)):
            [answer] = await store.append([request(ids)], 86_400, at)
            out.append(answer.duplicates)
        other = await store.append([request(["r1"], account="acme")], 86_400, now + 20)
        out.append(other[0].duplicates)
        return out

    assert with_store(tmp_path / "retry.db", body) == [
        (False, False, True),  # a second copy in the same request is a retry too
        (True, False),
        (False,),  # past the window the same id is new again
        (False,),  # keys are per account
    ]


def test_processed_rows_leave_the_inbox_and_waiting_senders_get_decisions(
        shipped_config: CompiledConfig, tmp_path: Path) -> None:
    async def body(store: SQLiteStore) -> tuple[int, dict[int, Any], list[int]]:
        [quiet, waiting] = await store.append([request(["q1"]), request(["w1"], wait=True)],
                                              86_400, time.time())
        rows = await store.read_inbox([0], 100)
        assert [r.id for r in rows] == [quiet.inbox_id, waiting.inbox_id]
        seen: list[Changes] = []
        store.notifier.subscribe(seen.append)
        items = [item(shipped_config, "q1"), item(shipped_config, "w1")]
        items = [items[0], type(items[1])(items[1].event, ref=(waiting.inbox_id, 0))]
        await commit(store, shipped_config, items, done_inbox=[r.id for r in rows],
                     waiting=frozenset([waiting.inbox_id]))
        depth, _ = await store.inbox_depth()
        decided = [i for c in seen for i in c.decided]
        return depth, await store.decisions([quiet.inbox_id, waiting.inbox_id]), decided

    depth, decisions, decided = with_store(tmp_path / "done.db", body)
    assert depth == 0  # plaintext does not linger in the inbox
    [(inbox_id, answers)] = decisions.items()
    assert answers == [{"position": 0, "event_id": "w1", "status": "accepted"}]
    assert decided == [inbox_id]


def test_read_inbox_bounds_a_batch_by_messages(tmp_path: Path) -> None:
    async def body(store: SQLiteStore) -> list[list[int]]:
        await store.append([request([f"a{i}" for i in range(3)]),
                            request([f"b{i}" for i in range(3)]),
                            request([f"c{i}" for i in range(3)])], 86_400, time.time())
        return [[len(r.messages) for r in await store.read_inbox([0], n)] for n in (1, 5, 6)]

    # at least one row, else whole rows up to the limit
    assert with_store(tmp_path / "bound.db", body) == [[3], [3], [3, 3]]


# --- claims and outcomes -------------------------------------------------------------------

def _stored_purchase(store: SQLiteStore, config: CompiledConfig, n: int) -> Any:
    return commit(store, config, [item(config, f"c{n}", f"o-c{n}")])


def test_claims_are_leases_handed_back_on_release(shipped_config: CompiledConfig,
                                                  tmp_path: Path) -> None:
    async def body(store: SQLiteStore) -> dict[str, Any]:
        [stored] = await _stored_purchase(store, shipped_config, 1)
        now = time.time()
        claimed, _ = await store.claim_due({"webhook": 10, "meta": 10}, now, OWNER, 30)
        again, next_due = await store.claim_due({"webhook": 10}, now, "another", 30)
        await store.release_leases(OWNER)
        after, _ = await store.claim_due({"webhook": 10}, time.time(), "another", 30)
        return {"first": {d: [x.event.seq for x in v] for d, v in claimed.items()},
                "again": again, "next": next_due, "after": [x.event.seq for x in
                                                            after.get("webhook", [])],
                "seq": stored.seq,
                "shared": claimed["webhook"][0].event is claimed["meta"][0].event}

    out = with_store(tmp_path / "claim.db", body)
    assert out["first"] == {"webhook": [out["seq"]], "meta": [out["seq"]]}
    assert out["shared"]  # the event was decoded once for both destinations
    assert out["again"] == {}  # leased: nobody else gets it meanwhile
    assert out["next"]["webhook"] > time.time() + 20  # due again only when the lease ends
    assert out["after"] == [out["seq"]]  # a graceful release makes it due at once


def test_a_parked_delivery_waits_for_the_resume(shipped_config: CompiledConfig,
                                                tmp_path: Path) -> None:
    async def body(store: SQLiteStore) -> tuple[Any, Any, Any]:
        [r] = await _stored_purchase(store, shipped_config, 2)
        now = time.time()
        await store.claim_due({"webhook": 10}, now, OWNER, 30)
        await store.pause("webhook", "demo", "production", "HTTP 401")
        await store.record([Outcome(r.seq, "webhook", "queued", True, "paused: HTTP 401",
                                    request_ref=None)], [], OWNER, now)
        parked = await store.claim_due({"webhook": 10}, now + 60, OWNER, 30)
        await store.resume("webhook")
        resumed, _ = await store.claim_due({"webhook": 10}, time.time() + 1, OWNER, 30)
        return parked, resumed["webhook"][0], r.seq

    (parked, next_due), due, seq = with_store(tmp_path / "paused.db", body)
    assert parked == {} and "webhook" not in next_due  # no busy loop on a parked row
    assert due.event.seq == seq and (due.attempts, due.round_attempts) == (1, 0)


def test_outcomes_keep_every_attempt_and_one_excerpt_per_request(
        shipped_config: CompiledConfig, tmp_path: Path) -> None:
    async def body(store: SQLiteStore) -> dict[str, Any]:
        a = (await _stored_purchase(store, shipped_config, 3))[0].seq
        b = (await _stored_purchase(store, shipped_config, 4))[0].seq
        now = time.time()
        await store.claim_due({"webhook": 10}, now, OWNER, 30)
        excerpt = RequestExcerpt("webhook", "2026-11-20T12:00:01.000Z",
                                 {"method": "POST", "body": "[...]"}, {"status": 500})
        await store.record([Outcome(a, "webhook", "failed", True, "HTTP 500", due_at=now,
                                    request_ref=0),
                            Outcome(b, "webhook", "failed", True, "HTTP 500", due_at=now,
                                    request_ref=0)], [excerpt], OWNER, now)
        await store.claim_due({"webhook": 10}, now + 1, OWNER, 30)
        ok = RequestExcerpt("webhook", "2026-11-20T12:00:02.000Z", {"method": "POST"},
                            {"status": 200})
        await store.record([Outcome(a, "webhook", "delivered", True, request_ref=0,
                                    latency_ms=12.5),
                            Outcome(b, "webhook", "dropped", True, "HTTP 400", request_ref=0)],
                           [ok], OWNER, now + 1)
        replayed = await store.requeue(destination="webhook", statuses=("dropped",))
        [due] = (await store.claim_due({"webhook": 10}, now + 2, OWNER, 30))[0]["webhook"]
        history = (await store.attempts_for([b]))[(b, "webhook")]
        return {"history": [(h.n, h.status, h.response) for h in history],
                "replayed": replayed, "round": (due.attempts, due.round_attempts),
                "views": {d.event_seq: d for d in await store.deliveries_for([a, b])
                          if d.destination == "webhook"}, "a": a, "b": b}

    out = with_store(tmp_path / "attempts.db", body)
    assert out["history"] == [(1, "failed", {"status": 500}), (2, "dropped", {"status": 200})]
    assert out["replayed"] == 1
    assert out["round"] == (2, 0)  # a replay keeps the history and starts a new round
    delivered = out["views"][out["a"]]
    assert (delivered.status, delivered.attempts, delivered.latency_ms) == ("delivered", 2, 12.5)
    with sqlite3.connect(tmp_path / "attempts.db") as conn:
        assert conn.execute("SELECT count(*) FROM requests").fetchone()[0] == 2  # not 4


def test_paused_rows_written_after_a_resume_are_due(shipped_config: CompiledConfig,
                                                    tmp_path: Path) -> None:
    """A worker that still believed in a lifted pause must not strand deliveries."""
    async def body(store: SQLiteStore) -> list[int]:
        first = (await _stored_purchase(store, shipped_config, 5))[0].seq
        second = (await _stored_purchase(store, shipped_config, 6))[0].seq
        now = time.time()
        await store.claim_due({"webhook": 10}, now, OWNER, 30)
        await store.pause("webhook", "demo", "production", "HTTP 401")
        await store.record([Outcome(first, "webhook", "queued", False, "paused: HTTP 401")],
                           [], OWNER, now)
        await store.resume("webhook")
        await store.record([Outcome(second, "webhook", "queued", False, "paused: HTTP 401")],
                           [], OWNER, now)  # written after the resume
        claimed, _ = await store.claim_due({"webhook": 10}, time.time() + 1, OWNER, 30)
        return sorted(d.event.seq for d in claimed.get("webhook", []))

    assert len(with_store(tmp_path / "resume.db", body)) == 2  # neither is stranded


def test_plaintext_is_erased_when_its_last_delivery_is_final(
        shipped_config: CompiledConfig, tmp_path: Path) -> None:
    plaintext = frozenset(n for n, d in shipped_config.destinations.items() if d.plaintext_pii)
    assert plaintext, "the shipped config has a destination that needs plaintext"

    async def body(store: SQLiteStore) -> tuple[bool, bool]:
        [r] = await commit(store, shipped_config, [item(shipped_config, "pii-1", "o-pii",
                                                        email="pii@example.com")])
        before = (await store.events_by_seq([r.seq]))[r.seq].row.pii is not None
        now = time.time()
        claimed, _ = await store.claim_due(dict.fromkeys(plaintext, 10), now, OWNER, 30)
        await store.record([Outcome(r.seq, name, "delivered", True) for name in claimed],
                           [], OWNER, now, plaintext)
        after = (await store.events_by_seq([r.seq]))[r.seq].row.pii is not None
        return before, after

    assert with_store(tmp_path / "pii.db", body) == (True, False)


# --- schema --------------------------------------------------------------------------------

def test_a_version_1_store_is_migrated_in_place(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    conn = sqlite3.connect(path, isolation_level=None)
    for statement in statements(V1):
        conn.execute(statement)
    conn.execute("INSERT INTO store_meta VALUES ('schema_version', '1')")
    routes = ('{"meta": {"status": "queued", "version": "meta@3"}, '
              '"ga4": {"status": "dropped", "reason": "consent", "version": "ga4@2"}}')
    for seq in (1, 2, 3):
        conn.execute("INSERT INTO events (seq, account, environment, event_id, event_name, source, "
                     "status, received_at, body, evidence, routes) VALUES "
                     "(?, 'demo', 'production', ?, 'purchase', 'segment', 'mapped', "
                     "'2026-11-20T12:00:00.000Z', '{}', '{}', ?)", (seq, f"e{seq}", routes))
    conn.execute("INSERT INTO cursors VALUES ('meta', 2, NULL, 0)")
    conn.execute("INSERT INTO deliveries (event_seq, destination, status, attempts, queued_at, "
                 "last_attempt_at, request, response) VALUES (1, 'meta', 'delivered', 1, "
                 "'2026-11-20T12:00:00.000Z', '2026-11-20T12:00:01.000Z', '{\"a\": 1}', "
                 "'{\"status\": 200}')")
    conn.close()

    async def body(store: SQLiteStore) -> dict[tuple[int, str], tuple[str, Any]]:
        views = await store.deliveries_for([1, 2, 3])
        return {(d.event_seq, d.destination): (d.status, d.response) for d in views}

    views = with_store(path, body)
    assert views[(1, "meta")] == ("delivered", {"status": 200})  # outcome and excerpt kept
    assert views[(2, "meta")][0] == "dropped"  # behind the cursor without an outcome
    assert views[(3, "meta")][0] == "queued"  # not reached yet: still to send
    assert views[(3, "ga4")][0] == "dropped"
    again = sqlite3.connect(path, isolation_level=None)
    assert migrate(again) == []  # idempotent
    again.close()


# --- reads -------------------------------------------------------------------------------

def test_acknowledged_events_are_visible_while_readers_overlap(
        shipped_config: CompiledConfig, tmp_path: Path) -> None:
    """Reads share one connection; interleaved statements must not pin an old snapshot."""
    async def body(store: SQLiteStore) -> list[str]:
        stop = asyncio.Event()

        async def reader() -> None:
            while not stop.is_set():
                await store.list_events(limit=500)

        readers = [asyncio.create_task(reader()) for _ in range(13)]
        await asyncio.sleep(0.05)
        missing = []
        for n in range(40):
            event_id = f"vis-{n}"
            results = await commit(store, shipped_config, [item(shipped_config, event_id)])
            assert results[0].status == "accepted"
            if not await store.get_events(event_id):
                missing.append(event_id)
        stop.set()
        await asyncio.gather(*readers)
        return missing

    assert with_store(tmp_path / "r.db", body) == []


def test_one_open_alert_per_condition_and_resolution_is_kept(tmp_path: Path) -> None:
    async def body(store: SQLiteStore) -> tuple[list[bool], list[bool], int, int]:
        opened = [await store.open_alert("queue_backlog", "meta", {"lag": n}) for n in (1, 2)]
        resolved = [await store.resolve_alert("queue_backlog", "meta") for _ in range(2)]
        assert await store.open_alert("queue_backlog", "meta", {"lag": 3})
        open_now = await store.alerts(open_only=True)
        everything = await store.alerts()
        assert open_now[0].detail == {"lag": 3}
        return opened, resolved, len(open_now), len(everything)

    opened, resolved, open_count, total = with_store(tmp_path / "a.db", body)
    assert opened == [True, False]  # the second report of an open condition adds nothing
    assert resolved == [True, False]
    assert (open_count, total) == (1, 2)


def test_a_replay_never_sends_what_consent_refused(shipped_config: CompiledConfig,
                                                   tmp_path: Path) -> None:
    from router.pipeline.commit import Item
    from router.pipeline.prepare import prepare

    message = {"type": "track", "event": "Order Completed", "messageId": "no-ads",
               "anonymousId": "a-no-ads", "properties": {"order_id": "o-no-ads", "total": 5,
                                                         "currency": "USD"},
               "context": {"fbp": "fb.1.1.1", "consent": {"categoryPreferences": {
                   "Advertising": False, "Analytics": True, "Marketing": False}}}}
    prepared = prepare(shipped_config, shipped_config.mappings["segment"],
                       shipped_config.accounts["demo"], "production", message,
                       "2026-11-20T12:00:00.000Z", routed=False)
    assert prepared.event is not None

    async def body(store: SQLiteStore) -> tuple[set[str], int]:
        [r] = await commit(store, shipped_config, [Item(prepared.event)])
        refused = {d.destination for d in await store.deliveries_for([r.seq])
                   if d.status == "dropped" and "consent" in (d.reason or "")}
        return refused, await store.requeue(statuses=("dropped",))

    refused, requeued = with_store(tmp_path / "consent.db", body)
    assert "meta" in refused  # an advertising destination was refused by consent
    assert requeued == 0  # and no replay brings it back


# --- search, connection health, the numbers behind the detectors, alert history ----------

def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _denied(config: CompiledConfig, message_id: str) -> Item:
    """A purchase whose sender refused advertising: ad destinations drop it (consent)."""
    message = {"type": "track", "messageId": message_id, "anonymousId": f"a-{message_id}",
               "event": "Order Completed", "context": {
                   "fbp": f"fb.1.1700000000000.{message_id}",
                   "consent": {"categoryPreferences": {"Advertising": False}}},
               "properties": {"order_id": f"o-{message_id}", "total": 5, "currency": "USD"}}
    prepared = prepare(config, config.mappings["segment"], config.accounts["demo"],
                       "production", message, RECEIVED, routed=False)
    assert prepared.event is not None
    return Item(prepared.event, prepared.idempotency_key, raw=message)


def test_search_by_order_id_email_duplicate_id_and_keyset_pages(
        shipped_config: CompiledConfig, tmp_path: Path) -> None:
    config = shipped_config

    async def body(store: SQLiteStore) -> dict[str, Any]:
        [first] = await commit(store, config, [item(config, "s1", "o-1", email="Ann@Example.com")])
        await commit(store, config, [item(config, "s2", "o-2")])
        [dup] = await commit(store, config, [item(config, "s3", "o-1")])  # same order: merged
        signups = await commit(store, config, [item(config, f"p{i}") for i in range(5)])
        await commit(store, config, [item(config, "nofbp", fbp=False)])
        email = f"email_sha256:{_sha('ann@example.com')}"

        async def ids(**query: Any) -> list[str]:
            return [e.row.event_id for e in await store.search_events(EventQuery(**query))]

        page1 = await store.search_events(EventQuery(name="sign_up", limit=3))
        page2 = await store.search_events(EventQuery(name="sign_up", limit=3,
                                                     before_seq=page1[-1].seq))
        first_event = (await store.events_by_seq([first.seq]))[first.seq]
        person = first_event.row.evidence["identity"]["person"]
        return {
            "dup_seq": dup.seq, "first_seq": first.seq,
            "by_order": await ids(any_terms=(("order_id:o-1",),)),
            "by_email": await ids(any_terms=((email,),)),
            "by_both": await ids(any_terms=(("order_id:o-1",), (email,))),
            "by_either": await ids(any_terms=(("order_id:o-2", email),)),
            "neither": await ids(any_terms=(("order_id:o-2",), (email,))),
            "by_dup_id": await ids(event_id="s3"),
            "by_own_id": await ids(event_id="s2"),
            "other_account": await ids(event_id="s2", account="acme"),
            "pages": ([e.row.event_id for e in page1], [e.row.event_id for e in page2]),
            "signups": [r.event_id for r in signups],
            "lacking_fbp": await ids(lacking=(("fbp",),)),
            "queued_webhook": await ids(destination="webhook", delivery_status=("queued",),
                                        any_terms=(("order_id:o-2",),)),
            "delivered_webhook": await ids(destination="webhook",
                                           delivery_status=("delivered",)),
            "person": await store.person_identifiers("demo", person),
            "email": email,
        }

    out = with_store(tmp_path / "search.db", body)
    assert out["dup_seq"] == out["first_seq"]
    assert out["by_order"] == ["s1"] and out["by_email"] == ["s1"]
    assert out["by_both"] == ["s1"]  # every group must match ...
    assert sorted(out["by_either"]) == ["s1", "s2"]  # ... any term within a group
    assert out["neither"] == []
    assert out["by_dup_id"] == ["s1"]  # a duplicate's id finds the event it merged into
    assert out["by_own_id"] == ["s2"] and out["other_account"] == []
    newest_first = ["nofbp", *reversed(out["signups"])]
    assert out["pages"] == (newest_first[:3], newest_first[3:6])
    assert out["lacking_fbp"] == ["nofbp"]
    assert out["queued_webhook"] == ["s2"] and out["delivered_webhook"] == []
    assert "anonymous_id:a-s1" in out["person"] and out["email"] in out["person"]


def test_connection_health_counts_failures_since_the_last_success(
        shipped_config: CompiledConfig, tmp_path: Path) -> None:
    async def body(store: SQLiteStore) -> list[tuple[Any, ...]]:
        seqs = [(await _stored_purchase(store, shipped_config, 10 + n))[0].seq for n in range(5)]
        now = time.time()
        states = []

        async def health() -> tuple[Any, ...]:
            [h] = [h for h in await store.connection_health() if h.destination == "webhook"]
            return (h.failures, h.last_error, h.last_success_at is not None,
                    h.streak_started_at is not None, h.last_status)

        await store.record([Outcome(seqs[0], "webhook", "failed", True, "HTTP 503", due_at=now),
                            Outcome(seqs[1], "webhook", "failed", True, "HTTP 502", due_at=now)],
                           [], OWNER, now)
        states.append(await health())
        await store.record([Outcome(seqs[2], "webhook", "failed", True, "timeout", due_at=now)],
                           [], OWNER, now)
        states.append(await health())
        # a success in the same flush: only the failures after it count
        await store.record([Outcome(seqs[0], "webhook", "delivered", True),
                            Outcome(seqs[3], "webhook", "failed", True, "HTTP 500", due_at=now)],
                           [], OWNER, now)
        states.append(await health())
        # a platform that accepts the request but refuses one event in it is up
        await store.record([Outcome(seqs[4], "webhook", "dropped", True, "bad value",
                                    cause="event_error")], [], OWNER, now)
        states.append(await health())
        await store.record([Outcome(seqs[1], "webhook", "queued", True, "paused: HTTP 401")],
                           [], OWNER, now)
        await store.pause("webhook", "demo", "production", "HTTP 401")
        states.append(await health())
        await store.resume("webhook")  # fixed credentials: the count starts over
        states.append(await health())
        return states

    states = with_store(tmp_path / "health.db", body)
    assert states[0] == (2, "HTTP 502", False, True, "failed")
    assert states[1] == (3, "timeout", False, True, "failed")
    assert states[2] == (1, "HTTP 500", True, True, "failed")
    assert states[3][:1] == (0,) and states[3][3] is False and states[3][4] == "dropped"
    assert states[4][0] == 1 and states[4][4] == "paused"
    assert states[5][0] == 0 and states[5][3] is False


def test_delivery_queue_counts_due_scheduled_parked_and_in_flight(
        shipped_config: CompiledConfig, tmp_path: Path) -> None:
    async def body(store: SQLiteStore) -> tuple[Any, Any]:
        seqs = [(await _stored_purchase(store, shipped_config, 20 + n))[0].seq for n in range(4)]
        now = time.time()
        before = {r.destination: r for r in await store.delivery_queue(now)}
        await store.claim_due({"webhook": 1}, now, OWNER, 30)  # one in flight
        await store.record([Outcome(seqs[1], "webhook", "failed", True, "HTTP 500",
                                    due_at=now + 600)], [], OWNER, now)  # a retry later
        await store.pause("webhook", "demo", "production", "HTTP 401")
        await store.record([Outcome(seqs[2], "webhook", "queued", False, "paused")], [],
                           OWNER, now)  # parked until a resume
        after = {r.destination: r for r in await store.delivery_queue(now)}
        return before["webhook"], after["webhook"]

    before, after = with_store(tmp_path / "queue.db", body)
    assert (before.due, before.scheduled, before.parked, before.in_flight) == (4, 0, 0, 0)
    assert before.oldest_due_at is not None and before.oldest_due_at <= time.time()
    assert (after.due, after.scheduled, after.parked, after.in_flight) == (1, 1, 1, 1)


def test_counts_orders_and_identifier_coverage_over_a_window(
        shipped_config: CompiledConfig, tmp_path: Path) -> None:
    config = shipped_config
    early, inside = "2026-11-20T10:00:00.000Z", "2026-11-20T12:00:00.000Z"

    async def body(store: SQLiteStore) -> dict[str, Any]:
        rows = await commit(store, config, [
            item(config, "w1", "o-w1", email="a@example.com", received_at=inside),
            item(config, "w2", "o-w2", received_at=inside),
            item(config, "w3", "o-w3", email="c@example.com", received_at=inside, fbp=False),
            item(config, "w4", received_at=inside),  # a sign-up, not an order
            item(config, "old", "o-old", received_at=early)])
        await commit(store, config, [_denied(config, "w5")])  # received at RECEIVED (inside)
        seq = {r.event_id: r.seq for r in rows}
        now = time.time()
        await store.record([Outcome(seq["w1"], "webhook", "delivered", True),
                            Outcome(seq["w2"], "webhook", "dropped", True, "HTTP 400",
                                    cause="permanent")], [], OWNER, now)
        window = ("2026-11-20T11:00:00.000Z", "2026-11-20T13:00:00.000Z")
        identifiers = {"email": (("email_sha256",),), "fbp": (("fbp",),),
                       "ip_ua": (("context.ip", "context.user_agent"),)}
        coverage = await store.identifier_coverage(*window, identifiers, ["purchase"])
        return {"counts": await store.event_counts(*window),
                "orders": await store.order_outcomes(*window, ["purchase"]),
                "from_elsewhere": await store.order_outcomes(*window, ["purchase"], ["shopify"]),
                "coverage": {(r.destination, r.event_name): r for r in coverage},
                "views": {d.destination: d for d in await store.deliveries_for([seq["w2"]])}}

    out = with_store(tmp_path / "reports.db", body)
    assert out["counts"] == {("demo", "production", "segment"): 5}
    orders = out["orders"]
    assert orders.orders == {("demo", "production"): 4}
    webhook = {(d.status, d.cause): d.count for d in orders.deliveries
               if d.destination == "webhook"}
    assert webhook == {("delivered", None): 1, ("dropped", "permanent"): 1, ("queued", None): 2}
    meta = {(d.status, d.cause): d.count for d in orders.deliveries if d.destination == "meta"}
    assert meta[("dropped", "consent")] == 1  # routing's reason is kept as the cause
    assert out["from_elsewhere"].orders == {}  # no order reported by that source
    webhook_cov = out["coverage"][("webhook", "purchase")]
    assert webhook_cov.events == 4
    assert webhook_cov.present == {"email": 2, "fbp": 3, "ip_ua": 0}
    # an ad destination's events it was not meant to get (consent) are not its events
    assert out["coverage"][("meta", "purchase")].events == 3
    assert out["views"]["webhook"].cause == "permanent"


def test_alert_history_and_pending_notifications(tmp_path: Path) -> None:
    async def body(store: SQLiteStore) -> dict[str, Any]:
        assert await store.open_alert("queue_backlog", "meta/demo/production", {"due": 5})
        [alert] = await store.alerts(open_only=True, subject="meta/demo/production")
        pending_open = await store.alert_log(pending=True)
        await store.update_alert("queue_backlog", "meta/demo/production", {"due": 6})
        await store.update_alert("queue_backlog", "meta/demo/production", {"due": 9}, log=True)
        refreshed = await store.alert(alert.id)
        await store.mark_notified(pending_open[0].id, {"slack": "sent"})
        assert await store.resolve_alert("queue_backlog", "meta/demo/production", {"due": 0})
        assert not await store.update_alert("queue_backlog", "meta/demo/production", {"due": 1})
        return {"pending_open": [(e.action, e.detail) for e in pending_open],
                "refreshed": refreshed, "history": await store.alert_log(alert_id=alert.id),
                "pending": [(e.action, e.detail) for e in await store.alert_log(pending=True)],
                "resolved": await store.alert(alert.id)}

    out = with_store(tmp_path / "history.db", body)
    assert out["pending_open"] == [("opened", {"due": 5})]
    assert out["refreshed"].detail == {"due": 9} and out["refreshed"].updated_at
    history = out["history"]
    assert [(h.action, h.detail) for h in history] == [
        ("opened", {"due": 5}), ("updated", {"due": 9}), ("resolved", {"due": 0})]
    assert history[0].notified == {"slack": "sent"}
    assert out["pending"] == [("resolved", {"due": 0})]  # updates are history, not news
    assert out["resolved"].resolved_at and out["resolved"].detail == {"due": 0}
