"""The embedded SQLite store (WAL, synchronous=FULL, group commit).

Writes go through one dedicated thread with its own connection: a whole group commit
(fetch, plan, apply) is one hop off the event loop rather than one per statement, and
a single writer makes dedup decisions exact. Reads use aiosqlite on a second
connection, which WAL lets run beside the writer. Other processes may share the file
(roles split over processes on one machine): SQLite's write lock orders their
transactions, and `watch_external` notices their commits through `PRAGMA data_version`,
which reads shared memory, not the disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import aiosqlite
import orjson

from router.store.base import (
    INTENTIONAL_CAUSES,
    PAUSE_ALERT,
    Alert,
    AlertLogEntry,
    Appended,
    AttemptView,
    BatchInput,
    Changes,
    ConnectionHealth,
    CoverageRow,
    DeliveryCount,
    DeliveryView,
    DueDelivery,
    EventQuery,
    EventRow,
    Identifier,
    IdentityView,
    InboxAppend,
    InboxRow,
    LeaseCheck,
    LeaseLost,
    OrderOutcomes,
    Outcome,
    Pause,
    Planner,
    QueueRow,
    RequestExcerpt,
    Store,
    StoredEvent,
    WritePlan,
    pause_subject,
)
from router.store.sql import marks, presence
from router.store.sqlite_schema import migrate
from router.store.sqlite_writer import URGENT, Writer

_dumps = orjson.dumps
DECISION_TTL_SECONDS = 600.0
SEP = "\x1f"


def _loads(blob: Any) -> Any:
    return orjson.loads(blob) if blob is not None else None


def path_from_url(url: str) -> str:
    """sqlite:///relative.db, sqlite:////abs/path.db, sqlite:///:memory:."""
    if not url.startswith("sqlite://"):
        raise ValueError(f"not a sqlite URL: {url!r}")
    path = url[len("sqlite://"):]
    if path.startswith("/"):
        path = path[1:]
    return path or ":memory:"


def _utc(ts: float | None = None) -> str:
    t = time.time() if ts is None else ts
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"


class SQLiteStore(Store):
    def __init__(self, url: str):
        super().__init__()
        self.path = path_from_url(url)
        self._writer = Writer(self._open_writer)
        self._reader: aiosqlite.Connection | None = None

    # --- lifecycle ------------------------------------------------------------------

    def _open_writer(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA busy_timeout=10000")
        migrate(conn)
        return conn

    async def open(self) -> None:
        await self._writer.start()
        self._reader = await aiosqlite.connect(self.path)
        await self._reader.execute_fetchall("PRAGMA busy_timeout=10000")

    async def close(self) -> None:
        if self._reader is not None:
            await self._reader.close()
            self._reader = None
        with contextlib.suppress(sqlite3.OperationalError):  # busy: another process
            await self._writer.call(lambda conn: conn.execute("PRAGMA wal_checkpoint(PASSIVE)"),
                                    transaction=False)
        await self._writer.stop()

    async def watch_external(self, interval: float) -> None:
        """Notice other processes' commits: `data_version` changes only for them."""
        conn = await aiosqlite.connect(self.path)
        try:
            last = (await conn.execute_fetchall("PRAGMA data_version"))[0][0]
            while True:
                await asyncio.sleep(interval)
                now = (await conn.execute_fetchall("PRAGMA data_version"))[0][0]
                if now != last:
                    last = now
                    self.notifier.publish(Changes(external=True))
        finally:
            await conn.close()

    # --- the writer thread ----------------------------------------------------------

    async def _write(self, fn: Any, *args: Any) -> Any:
        """`fn(conn, *args)` in one write transaction on the writer thread."""
        return await self._writer.call(fn, *args)

    # --- stage 1: the inbox ----------------------------------------------------------

    async def append(self, requests: Sequence[InboxAppend], window_seconds: float,
                     now: float) -> list[Appended]:
        out: list[Appended] = await self._writer.call(self._append, requests,
                                                       now - window_seconds, now,
                                                       priority=URGENT)
        self.notifier.publish(Changes(inbox=frozenset(r.partition for r in requests)))
        return out

    @staticmethod
    def _append(conn: sqlite3.Connection, requests: Sequence[InboxAppend], cutoff: float,
                now: float) -> list[Appended]:
        by_scope: dict[tuple[str, str], set[str]] = defaultdict(set)
        for request in requests:
            by_scope[(request.account, request.environment)].update(request.event_ids)
        known: set[tuple[str, str, str]] = set()
        for (account, environment), ids in by_scope.items():
            for (event_id,) in _select_in(
                    conn, "SELECT event_id FROM ack_keys WHERE account = ? AND environment = ? "
                    "AND created_at >= ? AND event_id IN ({})", (account, environment, cutoff),
                    ids):
                known.add((account, environment, event_id))
        out: list[Appended] = []
        rows: list[tuple[Any, ...]] = []
        fresh: list[tuple[str, str, str, float]] = []
        for request in requests:
            flags = []
            for event_id in request.event_ids:
                key = (request.account, request.environment, event_id)
                duplicate = key in known
                if not duplicate:
                    known.add(key)  # a second copy later in this group is a retry too
                    fresh.append((*key, now))
                flags.append(duplicate)
            rows.append((request.partition, request.account, request.environment,
                         request.source, request.received_at, now, len(request.messages),
                         _dumps(dict(request.meta)), _dumps(request.event_ids),
                         _dumps(request.messages), int(request.wait)))
            out.append(Appended(0, tuple(flags)))
        conn.executemany(
            "INSERT INTO inbox (partition, account, environment, source, received_at, "
            "arrived, count, meta, event_ids, messages, wait) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            rows)
        # one writer, one transaction, AUTOINCREMENT: the group's ids are consecutive
        last = int(conn.execute("SELECT last_insert_rowid()").fetchone()[0])
        out = [Appended(last - len(out) + 1 + i, a.duplicates) for i, a in enumerate(out)]
        if fresh:
            conn.executemany("INSERT OR REPLACE INTO ack_keys VALUES (?,?,?,?)", fresh)
        return out

    async def read_inbox(self, partitions: Sequence[int], limit: int,
                         after: int = 0) -> list[InboxRow]:
        if not partitions:
            return []
        marks = ",".join("?" * len(partitions))
        rows = await self._read(
            f"SELECT id, partition, account, environment, source, received_at, meta, "
            f"event_ids, messages, wait, count FROM inbox WHERE partition IN ({marks}) "
            f"AND id > ? ORDER BY id LIMIT ?", [*partitions, after, max(1, limit)])
        out: list[InboxRow] = []
        total = 0
        for r in rows:
            if out and total + r[10] > limit:
                break
            total += r[10]
            out.append(InboxRow(r[0], r[1], r[2], r[3], r[4], r[5], _loads(r[6]), _loads(r[7]),
                                _loads(r[8]), bool(r[9])))
        return out

    async def inbox_depth(self) -> tuple[int, float | None]:
        rows = await self._read("SELECT count(*), min(arrived) FROM inbox")
        return int(rows[0][0]), rows[0][1]

    async def decisions(self, inbox_ids: Sequence[int]) -> dict[int, list[dict[str, Any]]]:
        if not inbox_ids:
            return {}
        marks = ",".join("?" * len(inbox_ids))
        rows = await self._read(f"SELECT inbox_id, results FROM decisions WHERE inbox_id IN "
                                f"({marks})", list(inbox_ids))
        return {int(r[0]): _loads(r[1]) for r in rows}

    # --- stage 2: events ---------------------------------------------------------------

    async def ingest(self, batch: BatchInput, window_seconds: float, now: float,
                     planner: Planner, lease: LeaseCheck | None = None
                     ) -> tuple[WritePlan, list[int]]:
        # read, plan (in the caller's loop, paced), then one short write transaction:
        # the single writer is never held while events are routed
        existing, identities = await self._writer.call(
            self._fetch, batch, now - window_seconds, transaction=False)
        plan = await planner(existing, identities)
        seqs, due = await self._write(self._apply_checked, plan, now, lease)
        self.notifier.publish(Changes(due=due, decided=frozenset(plan.decisions)))
        return plan, seqs

    def _fetch(self, conn: sqlite3.Connection, batch: BatchInput, since: float
               ) -> tuple[dict[tuple[str, str, str], StoredEvent], dict[str, IdentityView]]:
        return (self._fetch_existing(conn, batch, since),
                {account: _identity(conn, account, ids)
                 for account, ids in batch.identifiers.items() if ids})

    def _apply_checked(self, conn: sqlite3.Connection, plan: WritePlan, now: float,
                       lease: LeaseCheck | None) -> tuple[list[int], dict[str, float]]:
        if lease is not None and lease.keys:
            marks = ",".join("?" * len(lease.keys))
            held = conn.execute(f"SELECT count(*) FROM leases WHERE kind = ? AND owner = ? "
                                f"AND lease_until >= ? AND key IN ({marks})",
                                (lease.kind, lease.owner, now, *lease.keys)).fetchone()[0]
            if held != len(set(lease.keys)):
                raise LeaseLost(f"{lease.kind} lease of {lease.owner} ran out")
        return self._apply(conn, plan, now)

    def _fetch_existing(self, conn: sqlite3.Connection, batch: BatchInput,
                        since: float) -> dict[tuple[str, str, str], StoredEvent]:
        found: dict[tuple[str, str, str], StoredEvent] = {}
        by_seq: dict[int, StoredEvent] = {}
        for (account, environment), keys in batch.keys.items():
            for row in _select_in(conn, "SELECT k.key, " + _EVENT_SELECT + " FROM dedup_keys k "
                                  "JOIN events e ON e.seq = k.seq WHERE k.account = ? AND "
                                  "k.environment = ? AND k.created_at >= ? AND k.key IN ({})",
                                  (account, environment, since), keys):
                seq = row[1]
                stored = by_seq.get(seq) or _stored_from_row(row[1:])
                by_seq[seq] = stored
                found[(account, environment, row[0])] = stored
        return found

    def _apply(self, conn: sqlite3.Connection, plan: WritePlan,
               now: float) -> tuple[list[int], dict[str, float]]:
        seqs: list[int] = []
        due: dict[str, float] = {}
        deliveries: list[tuple[Any, ...]] = []
        terms: list[tuple[str, int]] = []
        for row in plan.inserts:
            cur = conn.execute(
                "INSERT INTO events (account, environment, event_id, event_name, source, "
                "source_event, status, occurred_at, received_at, release_at, body, evidence, "
                "pii, raw, signals) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (row.account, row.environment, row.event_id, row.event_name, row.source,
                 row.source_event, row.status, row.occurred_at, row.received_at, row.release_at,
                 _dumps(row.body), _dumps(row.evidence), _dumps(row.pii) if row.pii else None,
                 _dumps(row.raw) if row.raw is not None else None, row.signals))
            seq = int(cur.lastrowid or 0)
            seqs.append(seq)
            terms += [(term, seq) for term in row.terms]
            if row.keys:
                conn.executemany(
                    "INSERT OR REPLACE INTO dedup_keys VALUES (?,?,?,?,?)",
                    [(row.account, row.environment, key, seq, now) for key in row.keys])
            deliveries += _delivery_rows(seq, row.account, row.environment, row.received_at,
                                         row.routes, now, due)
        for seq, (body, evidence, routes, release_at) in plan.updates.items():
            if routes is None:
                conn.execute("UPDATE events SET body = ?, evidence = ? WHERE seq = ?",
                             (_dumps(body), _dumps(evidence), seq))
                continue
            # a held event decided again after a merge: its rows were neither attempted
            # nor claimed (a hold keeps them so), and are replaced by the new decision
            head = conn.execute("UPDATE events SET body = ?, evidence = ?, release_at = ? "
                                "WHERE seq = ? RETURNING account, environment, received_at",
                                (_dumps(body), _dumps(evidence), release_at, seq)).fetchone()
            conn.execute("DELETE FROM deliveries WHERE event_seq = ? AND attempts = 0 AND "
                         "owner IS NULL", (seq,))
            deliveries += _delivery_rows(seq, head[0], head[1], head[2], routes, now, due)
        if deliveries:
            conn.executemany(
                "INSERT OR IGNORE INTO deliveries (event_seq, destination, account, environment, "
                "status, reason, queued_at, due_at, destination_version, drop_reason, cause) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?)", deliveries)
        for seq, (added, signals) in plan.index.items():
            if signals is not None:
                conn.execute("UPDATE events SET signals = ? WHERE seq = ?", (signals, seq))
            terms += [(term, seq) for term in added]
        if terms:
            conn.executemany("INSERT OR IGNORE INTO event_terms VALUES (?,?)", terms)
        self._apply_identity(conn, plan)
        if plan.done_inbox:
            conn.executemany("DELETE FROM inbox WHERE id = ?", [(i,) for i in plan.done_inbox])
        if plan.decisions:
            conn.executemany("INSERT OR REPLACE INTO decisions VALUES (?,?,?)",
                             [(i, _dumps(r), now) for i, r in plan.decisions.items()])
        if plan.forget_ack_keys:
            conn.executemany("DELETE FROM ack_keys WHERE account = ? AND environment = ? AND "
                             "event_id = ?", plan.forget_ack_keys)
        return seqs, due

    @staticmethod
    def _apply_identity(conn: sqlite3.Connection, plan: WritePlan) -> None:
        ident = plan.identity
        for account_root, new_root in ident.repoint.items():
            account, old_root = account_root.split(SEP, 1)
            conn.execute("UPDATE identity_links SET root = ? WHERE account = ? AND root = ?",
                         (new_root, account, old_root))
        if ident.links:
            conn.executemany("INSERT OR REPLACE INTO identity_links VALUES (?,?,?)",
                             [(*k.split(SEP, 1), root) for k, root in ident.links.items()])
        if ident.profiles:
            conn.executemany("INSERT OR REPLACE INTO identity_profiles VALUES (?,?,?)",
                             [(*k.split(SEP, 1), _dumps(attrs))
                              for k, attrs in ident.profiles.items()])
        for key in ident.drop_profiles:
            conn.execute("DELETE FROM identity_profiles WHERE account = ? AND root = ?",
                         tuple(key.split(SEP, 1)))

    # --- reads (aiosqlite) -------------------------------------------------------------

    @property
    def reader(self) -> aiosqlite.Connection:
        assert self._reader is not None, "store is not open"
        return self._reader

    async def _read(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        """Run one query to completion in a single hop to the reader thread.

        Callers share one connection; a statement left open while another coroutine
        starts its own would let SQLite chain them into one read transaction, and a
        steady stream of reads could then pin a stale snapshot forever.
        """
        return list(await self.reader.execute_fetchall(sql, args))

    async def get_events(self, event_id: str, account: str | None = None) -> list[StoredEvent]:
        sql = f"SELECT {_EVENT_SELECT} FROM events e WHERE e.event_id = ?"
        args: list[Any] = [event_id]
        if account:
            sql += " AND e.account = ?"
            args.append(account)
        rows = await self._read(sql + " ORDER BY e.seq", args)
        return [_stored_from_row(r) for r in rows]

    async def events_by_seq(self, seqs: Sequence[int]) -> dict[int, StoredEvent]:
        out: dict[int, StoredEvent] = {}
        ordered = sorted(set(seqs))
        for start in range(0, len(ordered), 500):
            part = ordered[start:start + 500]
            marks = ",".join("?" * len(part))
            for r in await self._read(f"SELECT {_EVENT_SELECT} FROM events e WHERE e.seq IN "
                                      f"({marks})", part):
                stored = _stored_from_row(r)
                out[stored.seq] = stored
        return out

    async def list_events(self, *, name: str | None = None, source: str | None = None,
                          since: str | None = None, account: str | None = None,
                          status: str | None = None, limit: int = 100) -> list[StoredEvent]:
        where, args = [], []
        for column, value in (("e.event_name", name), ("e.source", source),
                              ("e.account", account), ("e.status", status)):
            if value:
                where.append(f"{column} = ?")
                args.append(value)
        if since:
            where.append("e.received_at >= ?")
            args.append(since)
        sql = f"SELECT {_EVENT_SELECT} FROM events e" + \
            (" WHERE " + " AND ".join(where) if where else "")
        rows = await self._read(sql + " ORDER BY e.seq DESC LIMIT ?", [*args, limit])
        return [_stored_from_row(r) for r in rows]

    _DELIVERY_SELECT = """
        SELECT d.event_seq, e.event_id, e.event_name, d.account, d.environment, d.destination,
               d.status, d.reason, d.attempts, d.queued_at, d.last_attempt_at, d.next_retry_at,
               d.latency_ms, d.destination_version, r.request, r.response, d.cause
        FROM deliveries d JOIN events e ON e.seq = d.event_seq
        LEFT JOIN requests r ON r.id = d.request_id
    """

    async def deliveries_for(self, seqs: Sequence[int]) -> list[DeliveryView]:
        if not seqs:
            return []
        marks = ",".join("?" * len(seqs))
        sql = self._DELIVERY_SELECT + f" WHERE d.event_seq IN ({marks}) " \
            "ORDER BY d.event_seq, d.destination"
        return [_delivery(r) for r in await self._read(sql, list(seqs))]

    async def attempts_for(self, seqs: Sequence[int]) -> dict[tuple[int, str], list[AttemptView]]:
        out: dict[tuple[int, str], list[AttemptView]] = defaultdict(list)
        if not seqs:
            return out
        marks = ",".join("?" * len(seqs))
        rows = await self._read(
            "SELECT a.event_seq, a.destination, a.n, a.at, a.status, a.error, a.latency_ms, "
            "r.request, r.response FROM attempts a LEFT JOIN requests r ON r.id = a.request_id "
            f"WHERE a.event_seq IN ({marks}) ORDER BY a.event_seq, a.destination, a.n",
            list(seqs))
        for r in rows:
            out[(r[0], r[1])].append(AttemptView(r[2], r[3], r[4], r[5], r[6], _loads(r[7]),
                                                 _loads(r[8])))
        return out

    async def list_deliveries(self, *, status: str | None = None, destination: str | None = None,
                              since: str | None = None, account: str | None = None,
                              limit: int = 100) -> list[DeliveryView]:
        where, args = [], []
        for clause, value in (("d.status = ?", status), ("d.destination = ?", destination),
                              ("e.received_at >= ?", since), ("d.account = ?", account)):
            if value:
                where.append(clause)
                args.append(value)
        sql = self._DELIVERY_SELECT + (" WHERE " + " AND ".join(where) if where else "")
        rows = await self._read(sql + " ORDER BY d.event_seq DESC, d.destination LIMIT ?",
                                [*args, limit])
        return [_delivery(r) for r in rows]

    async def identity_of(self, account: str, identifiers: Sequence[str]) -> IdentityView:
        view: IdentityView = await self._writer.call(_identity, account, list(identifiers),
                                                     transaction=False)
        return view

    async def counts(self) -> dict[str, int]:
        out = {}
        for table in ("events", "deliveries", "identity_links", "dedup_keys", "inbox",
                      "attempts"):
            rows = await self._read(f"SELECT count(*) FROM {table}")
            out[table] = int(rows[0][0]) if rows else 0
        return out

    # --- leases ------------------------------------------------------------------------

    async def claim_leases(self, kind: str, keys: Sequence[str], owner: str,
                           lease_seconds: float) -> list[str]:
        def claim(conn: sqlite3.Connection) -> list[str]:
            now = time.time()
            held = []
            for key in keys:
                row = conn.execute(
                    "INSERT INTO leases VALUES (?,?,?,?) ON CONFLICT (kind, key) DO UPDATE SET "
                    "owner = excluded.owner, lease_until = excluded.lease_until WHERE "
                    "leases.owner = excluded.owner OR leases.lease_until < ? RETURNING key",
                    (kind, key, owner, now + lease_seconds, now)).fetchone()
                if row:
                    held.append(key)
            return held
        return list(await self._write(claim))

    async def release_leases(self, owner: str) -> None:
        def write(conn: sqlite3.Connection) -> set[str]:
            conn.execute("DELETE FROM leases WHERE owner = ?", (owner,))
            rows = conn.execute("UPDATE deliveries SET owner = NULL, due_at = ? WHERE owner = ? "
                                "RETURNING destination", (time.time(), owner)).fetchall()
            return {r[0] for r in rows}
        due = await self._write(write)
        if due:
            self.notifier.publish(Changes(due=dict.fromkeys(due, time.time())))

    # --- the delivery plane ----------------------------------------------------------

    async def claim_due(self, wanted: Mapping[str, int], now: float, owner: str,
                        lease_seconds: float
                        ) -> tuple[dict[str, list[DueDelivery]], dict[str, float]]:
        # not fsync'd: a claim lost in a power cut is only claimed again
        claimed, next_due, missing = await self._writer.call(
            self._claim, wanted, now, owner, lease_seconds, durable=False)
        events = await self.events_by_seq(missing) if missing else {}
        out: dict[str, list[DueDelivery]] = {}
        for destination, rows in claimed.items():
            out[destination] = [DueDelivery(events[r[0]], destination, r[1], r[1] - r[2], r[3],
                                            r[4]) for r in rows if r[0] in events]
        return out, next_due

    @staticmethod
    def _claim(conn: sqlite3.Connection, wanted: Mapping[str, int], now: float, owner: str,
               lease_seconds: float
               ) -> tuple[dict[str, list[tuple[Any, ...]]], dict[str, float], set[int]]:
        claimed: dict[str, list[tuple[Any, ...]]] = {}
        next_due: dict[str, float] = {}
        seqs: set[int] = set()
        for destination, limit in wanted.items():
            if limit > 0:
                rows = conn.execute(
                    "UPDATE deliveries SET owner = ?, due_at = ? WHERE (event_seq, destination) "
                    "IN (SELECT event_seq, destination FROM deliveries WHERE destination = ? AND "
                    "due_at <= ? ORDER BY due_at LIMIT ?) "
                    "RETURNING event_seq, attempts, round_start, queued_at, drop_reason",
                    (owner, now + lease_seconds, destination, now, limit)).fetchall()
                if rows:
                    rows.sort()
                    claimed[destination] = rows
                    seqs.update(r[0] for r in rows)
            row = conn.execute(
                "SELECT min(due_at) FROM deliveries WHERE destination = ? AND due_at IS NOT NULL "
                "AND (owner IS NULL OR owner != ?)", (destination, owner)).fetchone()
            if row and row[0] is not None:
                next_due[destination] = float(row[0])
        return claimed, next_due, seqs

    async def renew(self, keys: Sequence[tuple[int, str]], owner: str, until: float) -> None:
        """Keep claimed deliveries that are still waiting in memory leased."""
        if keys:
            await self._write(lambda conn: conn.executemany(
                "UPDATE deliveries SET due_at = ? WHERE event_seq = ? AND destination = ? AND "
                "owner = ?", [(until, seq, dest, owner) for seq, dest in keys]))

    async def record(self, outcomes: Sequence[Outcome], requests: Sequence[RequestExcerpt],
                     owner: str, now: float, plaintext: frozenset[str] = frozenset()) -> None:
        due = await self._write(self._record, outcomes, requests, owner, now, plaintext)
        if due:
            self.notifier.publish(Changes(due=dict.fromkeys(due, now)))

    @staticmethod
    def _record(conn: sqlite3.Connection, outcomes: Sequence[Outcome],
                requests: Sequence[RequestExcerpt], owner: str, now: float,
                plaintext: frozenset[str]) -> set[str]:
        request_ids = [int(conn.execute(
            "INSERT INTO requests (destination, at, request, response) VALUES (?,?,?,?)",
            (r.destination, r.at, _dumps(r.request) if r.request is not None else None,
             _dumps(r.response) if r.response is not None else None)).lastrowid or 0)
            for r in requests]
        at = _utc(now)
        attempts: list[tuple[Any, ...]] = []
        parked: list[tuple[int, str]] = []
        finals: set[int] = set()
        health: dict[tuple[str, str, str], list[tuple[bool, str, str | None]]] = {}
        for o in outcomes:
            request_id = request_ids[o.request_ref] if o.request_ref is not None else None
            row = conn.execute(
                "UPDATE deliveries SET status = ?, reason = ?, attempts = attempts + ?, "
                "last_attempt_at = CASE WHEN ? THEN ? ELSE last_attempt_at END, "
                "next_retry_at = ?, due_at = ?, owner = NULL, drop_reason = NULL, "
                "latency_ms = COALESCE(?, latency_ms), "
                "request_id = COALESCE(?, request_id), cause = ? "
                "WHERE event_seq = ? AND destination = ? AND (owner = ? OR owner IS NULL) "
                "RETURNING attempts, account, environment",
                (o.status, o.error, int(o.attempted), int(o.attempted), at, o.next_retry_at,
                 o.due_at, o.latency_ms, request_id,
                 o.cause if o.status == "dropped" else None, o.event_seq, o.destination,
                 owner)).fetchone()
            if row is None:  # our lease ran out and another process took the row
                continue
            if o.attempted:
                status = "paused" if o.status == "queued" and o.due_at is None else o.status
                attempts.append((o.event_seq, o.destination, row[0], at, status, o.error,
                                 o.attempt_ms, request_id))
                health.setdefault((o.destination, row[1], row[2]), []).append(
                    (_accepted(o), status, o.error))
            if o.status == "queued" and o.due_at is None:
                parked.append((o.event_seq, o.destination))
            if o.status in ("delivered", "dropped") and o.destination in plaintext:
                finals.add(o.event_seq)
        if attempts:
            conn.executemany("INSERT OR REPLACE INTO attempts VALUES (?,?,?,?,?,?,?,?)", attempts)
        if health:
            conn.executemany(_HEALTH_UPSERT, [_health_row(key, steps, at)
                                              for key, steps in health.items()])
        due: set[str] = set()
        for seq, destination in parked:
            # parked as "paused", but the pause may have been lifted meanwhile: then it is
            # due now, never stranded without a pause to lift
            row = conn.execute(
                "UPDATE deliveries SET due_at = ?, round_start = attempts WHERE event_seq = ? "
                "AND destination = ? AND due_at IS NULL AND NOT EXISTS (SELECT 1 FROM pauses p "
                "WHERE p.destination = "
                "deliveries.destination AND p.account = deliveries.account AND "
                "p.environment = deliveries.environment) RETURNING destination",
                (now, seq, destination)).fetchone()
            if row:
                due.add(row[0])
        if plaintext and finals:
            marks = ",".join("?" * len(plaintext))
            conn.executemany(
                f"UPDATE events SET pii = NULL WHERE seq = ? AND pii IS NOT NULL AND NOT EXISTS ("
                f"SELECT 1 FROM deliveries d WHERE d.event_seq = events.seq AND d.status IN "
                f"('queued', 'failed') AND d.destination IN ({marks}))",
                [(seq, *sorted(plaintext)) for seq in finals])
        due.update(o.destination for o in outcomes if o.due_at is not None and o.due_at <= now)
        return due

    async def release(self, keys: Sequence[tuple[int, str]], owner: str, now: float) -> None:
        if not keys:
            return
        await self._write(lambda conn: conn.executemany(
            "UPDATE deliveries SET owner = NULL, due_at = ? WHERE event_seq = ? AND "
            "destination = ? AND owner = ?", [(now, seq, dest, owner) for seq, dest in keys]))
        self.notifier.publish(Changes(due=dict.fromkeys((d for _, d in keys), now)))

    async def pause(self, destination: str, account: str, environment: str, reason: str) -> None:
        def write(conn: sqlite3.Connection) -> None:
            since = _utc()
            cur = conn.execute("INSERT OR IGNORE INTO pauses VALUES (?,?,?,?,?)",
                               (destination, account, environment, reason, since))
            if cur.rowcount:
                _open_alert(conn, PAUSE_ALERT, pause_subject(destination, account, environment),
                            {"summary": f"{destination} refused the credentials of "
                                        f"{account}/{environment}: delivery is paused",
                             "destination": destination, "account": account,
                             "environment": environment, "reason": reason,
                             "last_error": reason, "paused": True,
                             "action": "fix the credentials, then `router resume` or reload"},
                            since)
        await self._write(write)
        self.notifier.publish(Changes(pauses=True))

    async def pauses(self) -> list[Pause]:
        rows = await self._read("SELECT * FROM pauses ORDER BY since")
        return [Pause(*r) for r in rows]

    async def resume(self, destination: str | None = None, account: str | None = None) -> int:
        def write(conn: sqlite3.Connection) -> list[tuple[str, str, str]]:
            where, args = "1=1", []
            if destination:
                where += " AND destination = ?"
                args.append(destination)
            if account:
                where += " AND account = ?"
                args.append(account)
            lifted = conn.execute(f"SELECT destination, account, environment FROM pauses "
                                  f"WHERE {where}", args).fetchall()
            now = time.time()
            for dest, acc, env in lifted:
                conn.execute(
                    "UPDATE deliveries SET due_at = ?, round_start = attempts WHERE account = ? "
                    "AND environment = ? AND destination = ? AND due_at IS NULL AND "
                    "status = 'queued'", (now, acc, env, dest))
            conn.execute(f"DELETE FROM pauses WHERE {where}", args)
            # a resume says the credentials are fixed: failures counted while paused do
            # not make the connection look down again
            conn.executemany("UPDATE connection_health SET failures = 0, streak_started_at = "
                             "NULL WHERE destination = ? AND account = ? AND environment = ?",
                             lifted)
            resolved_at = _utc()
            for dest, acc, env in lifted:
                _resolve_alert(conn, PAUSE_ALERT, pause_subject(dest, acc, env), resolved_at,
                               {"summary": f"{dest} resumed for {acc}/{env}: waiting deliveries "
                                           f"are sent again", "destination": dest,
                                "account": acc, "environment": env, "paused": False})
            return [tuple(r) for r in lifted]
        lifted = await self._write(write)
        self.notifier.publish(Changes(due=dict.fromkeys((d for d, _, _ in lifted), time.time()),
                                      pauses=True))
        return len(lifted)

    async def requeue(self, *, since: str | None = None, destination: str | None = None,
                      statuses: Sequence[str] = ("failed", "dropped"),
                      event_id: str | None = None, account: str | None = None) -> int:
        def write(conn: sqlite3.Connection) -> list[str]:
            # never a routing decision (consent, send_if): only what delivery decided
            where = [f"d.status IN ({','.join('?' * len(statuses))})",
                     f"(d.cause IS NULL OR d.cause NOT IN ({marks(INTENTIONAL_CAUSES)}))"]
            args: list[Any] = [*statuses, *INTENTIONAL_CAUSES]
            for clause, value in (("d.destination = ?", destination), ("e.event_id = ?", event_id),
                                  ("d.account = ?", account), ("e.received_at >= ?", since)):
                if value:
                    where.append(clause)
                    args.append(value)
            rows = conn.execute(
                "UPDATE deliveries SET status = 'queued', due_at = ?, round_start = attempts, "
                "next_retry_at = NULL, owner = NULL, reason = NULL WHERE (event_seq, destination) "
                "IN (SELECT d.event_seq, d.destination FROM deliveries d JOIN events e ON "
                "e.seq = d.event_seq WHERE " + " AND ".join(where) + ") RETURNING destination",
                [time.time(), *args]).fetchall()
            return [r[0] for r in rows]
        requeued = await self._write(write)
        if requeued:
            self.notifier.publish(Changes(due=dict.fromkeys(requeued, time.time())))
        return len(requeued)

    # --- alerts ------------------------------------------------------------------------

    async def open_alert(self, kind: str, subject: str, detail: Mapping[str, Any]) -> bool:
        return bool(await self._write(_open_alert, kind, subject, detail, _utc()))

    async def resolve_alert(self, kind: str, subject: str,
                            detail: Mapping[str, Any] | None = None) -> bool:
        return bool(await self._write(_resolve_alert, kind, subject, _utc(), detail))

    async def update_alert(self, kind: str, subject: str, detail: Mapping[str, Any],
                           log: bool = False) -> bool:
        def write(conn: sqlite3.Connection) -> bool:
            at = _utc()
            row = conn.execute("UPDATE alerts SET detail = ?, updated_at = ? WHERE kind = ? AND "
                               "subject = ? AND resolved_at IS NULL RETURNING id",
                               (_dumps(dict(detail)), at, kind, subject)).fetchone()
            if row is None:
                return False
            if log:
                _log_alert(conn, row[0], kind, subject, at, "updated", detail, notified=True)
            return True
        return bool(await self._write(write))

    async def alerts(self, *, open_only: bool = False, kind: str | None = None,
                     limit: int = 100, subject: str | None = None) -> list[Alert]:
        where, args = [], []
        if open_only:
            where.append("resolved_at IS NULL")
        for column, value in (("kind", kind), ("subject", subject)):
            if value:
                where.append(f"{column} = ?")
                args.append(value)
        sql = f"SELECT {_ALERT_COLUMNS} FROM alerts" + (
            " WHERE " + " AND ".join(where) if where else "")
        rows = await self._read(sql + " ORDER BY id DESC LIMIT ?", [*args, limit])
        return [_alert(r) for r in rows]

    async def alert(self, alert_id: int) -> Alert | None:
        rows = await self._read(f"SELECT {_ALERT_COLUMNS} FROM alerts WHERE id = ?", [alert_id])
        return _alert(rows[0]) if rows else None

    async def alert_log(self, *, alert_id: int | None = None, pending: bool = False,
                        limit: int = 100) -> list[AlertLogEntry]:
        where, args = [], []
        if alert_id is not None:
            where.append("alert_id = ?")
            args.append(alert_id)
        if pending:
            where.append("notified_at IS NULL AND action IN ('opened', 'resolved')")
        sql = "SELECT id, alert_id, kind, subject, at, action, detail, notified_at, notified " \
              "FROM alert_log" + (" WHERE " + " AND ".join(where) if where else "")
        rows = await self._read(sql + " ORDER BY id LIMIT ?", [*args, limit])
        return [AlertLogEntry(r[0], r[1], r[2], r[3], r[4], r[5], _loads(r[6]) or {}, r[7],
                              _loads(r[8])) for r in rows]

    async def mark_notified(self, entry_id: int, result: Mapping[str, Any]) -> None:
        await self._write(lambda conn: conn.execute(
            "UPDATE alert_log SET notified_at = ?, notified = ? WHERE id = ?",
            (_utc(), _dumps(dict(result)), entry_id)))

    # --- search and the numbers behind the detectors ------------------------------------

    async def search_events(self, query: EventQuery) -> list[StoredEvent]:
        where: list[str] = []
        args: list[Any] = []
        if query.event_id is not None:
            where.append("(e.event_id = ? OR e.seq IN (SELECT t.seq FROM event_terms t "
                         "WHERE t.term = ?))")
            args += [query.event_id, f"event_id:{query.event_id}"]
        for group in query.any_terms:
            where.append(f"e.seq IN (SELECT t.seq FROM event_terms t WHERE t.term IN "
                         f"({marks(group) or 'NULL'}))")
            args += list(group)
        for column, value in (("e.account", query.account),
                              ("e.environment", query.environment), ("e.source", query.source),
                              ("e.status", query.status), ("e.event_name", query.name)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        if query.since is not None:
            where.append("e.received_at >= ?")
            args.append(query.since)
        if query.until is not None:
            where.append("e.received_at < ?")
            args.append(query.until)
        if query.destination is not None or query.delivery_status or query.undelivered:
            sub = ["d.event_seq = e.seq"]
            if query.destination is not None:
                sub.append("d.destination = ?")
                args.append(query.destination)
            if query.delivery_status:
                sub.append(f"d.status IN ({marks(query.delivery_status)})")
                args += list(query.delivery_status)
            if query.undelivered:
                sub.append(f"(d.status IN ('queued', 'failed') OR (d.status = 'dropped' AND "
                           f"(d.cause IS NULL OR d.cause NOT IN ({marks(INTENTIONAL_CAUSES)}))))")
                args += list(INTENTIONAL_CAUSES)
            where.append("EXISTS (SELECT 1 FROM deliveries d WHERE " + " AND ".join(sub) + ")")
        if query.lacking is not None:
            sql, more = presence(query.lacking, "COALESCE(e.signals, '')")
            where.append(f"NOT {sql}")
            args += more
        if query.before_seq is not None:
            where.append("e.seq < ?")
            args.append(query.before_seq)
        sql = f"SELECT {_EVENT_SELECT} FROM events e" + \
            (" WHERE " + " AND ".join(where) if where else "")
        rows = await self._read(sql + " ORDER BY e.seq DESC LIMIT ?",
                                [*args, max(1, query.limit)])
        return [_stored_from_row(r) for r in rows]

    async def person_identifiers(self, account: str, person: str,
                                 limit: int = 1000) -> list[str]:
        rows = await self._read("SELECT identifier FROM identity_links WHERE account = ? AND "
                                "root = ? ORDER BY identifier LIMIT ?", [account, person, limit])
        return sorted({person, *(r[0] for r in rows)})

    async def delivery_queue(self, now: float) -> list[QueueRow]:
        rows = await self._read(
            "SELECT destination, account, environment, "
            "sum(CASE WHEN owner IS NULL AND due_at IS NOT NULL AND due_at <= ? THEN 1 ELSE 0 "
            "END), sum(CASE WHEN owner IS NULL AND due_at > ? THEN 1 ELSE 0 END), "
            "sum(CASE WHEN due_at IS NULL THEN 1 ELSE 0 END), "
            "sum(CASE WHEN owner IS NOT NULL THEN 1 ELSE 0 END), "
            "min(CASE WHEN owner IS NULL AND due_at <= ? THEN due_at END) "
            "FROM deliveries WHERE status IN ('queued', 'failed') "
            "GROUP BY destination, account, environment ORDER BY 1, 2, 3", [now, now, now])
        return [QueueRow(r[0], r[1], r[2], int(r[3]), int(r[4]), int(r[5]), int(r[6]), r[7])
                for r in rows]

    async def connection_health(self) -> list[ConnectionHealth]:
        rows = await self._read(
            "SELECT destination, account, environment, last_attempt_at, last_success_at, "
            "streak_started_at, failures, last_error, last_status FROM connection_health "
            "ORDER BY 1, 2, 3")
        return [ConnectionHealth(*r) for r in rows]

    async def event_counts(self, since: str, until: str) -> dict[tuple[str, str, str], int]:
        rows = await self._read(
            "SELECT account, environment, source, count(*) FROM events WHERE received_at >= ? "
            "AND received_at < ? GROUP BY account, environment, source", [since, until])
        return {(r[0], r[1], r[2]): int(r[3]) for r in rows}

    async def order_outcomes(self, since: str, until: str, event_names: Sequence[str],
                             sources: Sequence[str] = ()) -> OrderOutcomes:
        if not event_names:
            return OrderOutcomes({}, ())
        where = (f"e.status = 'mapped' AND e.event_name IN ({marks(event_names)}) AND "
                 "e.received_at >= ? AND e.received_at < ?")
        args: list[Any] = [*event_names, since, until]
        if sources:
            sql, more = presence([[f"src:{s}"] for s in sources])
            where += f" AND {sql}"
            args += more
        orders = await self._read(f"SELECT e.account, e.environment, count(*) FROM events e "
                                  f"WHERE {where} GROUP BY e.account, e.environment", args)
        rows = await self._read(
            f"SELECT d.account, d.environment, d.destination, d.status, d.cause, count(*) "
            f"FROM events e JOIN deliveries d ON d.event_seq = e.seq WHERE {where} "
            f"GROUP BY d.account, d.environment, d.destination, d.status, d.cause", args)
        return OrderOutcomes({(r[0], r[1]): int(r[2]) for r in orders},
                             tuple(DeliveryCount(r[0], r[1], r[2], r[3], r[4], int(r[5]))
                                   for r in rows))

    async def identifier_coverage(self, since: str, until: str,
                                  identifiers: Mapping[str, Identifier],
                                  event_names: Sequence[str] = ()) -> list[CoverageRow]:
        names = list(identifiers)
        sums, args = [], []
        for name in names:
            sql, more = presence(identifiers[name])
            sums.append(f"sum(CASE WHEN {sql} THEN 1 ELSE 0 END)")
            args += more
        where = ("e.status = 'mapped' AND e.received_at >= ? AND e.received_at < ? AND "
                 f"(d.cause IS NULL OR d.cause NOT IN ({marks(INTENTIONAL_CAUSES)}))")
        args += [since, until, *INTENTIONAL_CAUSES]
        if event_names:
            where += f" AND e.event_name IN ({marks(event_names)})"
            args += list(event_names)
        rows = await self._read(
            "SELECT d.account, d.environment, d.destination, e.event_name, count(*)" +
            "".join(f", {s}" for s in sums) +
            f" FROM events e JOIN deliveries d ON d.event_seq = e.seq WHERE {where} "
            "GROUP BY d.account, d.environment, d.destination, e.event_name ORDER BY 1, 2, 3, 4",
            args)
        return [CoverageRow(r[0], r[1], r[2], r[3], int(r[4]),
                            {n: int(r[5 + i] or 0) for i, n in enumerate(names)}) for r in rows]

    # --- housekeeping ------------------------------------------------------------------

    async def expire(self, now: float, window_seconds: float) -> int:
        def write(conn: sqlite3.Connection) -> int:
            keys = conn.execute("DELETE FROM ack_keys WHERE created_at < ?",
                                (now - window_seconds,)).rowcount
            kept = conn.execute("DELETE FROM decisions WHERE created_at < ?",
                                (now - DECISION_TTL_SECONDS,)).rowcount
            return int(keys) + int(kept)
        return int(await self._write(write))


# --- helpers -----------------------------------------------------------------------------

def _delivery_rows(seq: int, account: str, environment: str, received_at: str,
                   routes: Mapping[str, Any], now: float,
                   due: dict[str, float]) -> list[tuple[Any, ...]]:
    out = []
    for destination, route in routes.items():
        queued = route.get("status") == "queued"
        due_at = float(route.get("due_at") or now) if queued else None
        if due_at is not None:
            due[destination] = min(due.get(destination, due_at), due_at)
        out.append((seq, destination, account, environment, route.get("status"),
                    route.get("reason"), received_at, due_at, route.get("version"),
                    route.get("drop_reason"), None if queued else route.get("cause")))
    return out


def _identity(conn: sqlite3.Connection, account: str, identifiers: Iterable[str]) -> IdentityView:
    view = IdentityView()
    for ident, root in _select_in(conn, "SELECT identifier, root FROM identity_links "
                                  "WHERE account = ? AND identifier IN ({})", (account,),
                                  identifiers):
        view.roots[ident] = root
    for root, attrs in _select_in(conn, "SELECT root, attributes FROM identity_profiles "
                                  "WHERE account = ? AND root IN ({})", (account,),
                                  view.roots.values()):
        view.profiles[root] = _loads(attrs)
    return view


def _open_alert(conn: sqlite3.Connection, kind: str, subject: str,
                detail: Mapping[str, Any], opened_at: str) -> int:
    row = conn.execute("INSERT OR IGNORE INTO alerts (kind, subject, opened_at, updated_at, "
                       "detail) VALUES (?,?,?,?,?) RETURNING id",
                       (kind, subject, opened_at, opened_at, _dumps(dict(detail)))).fetchone()
    if row is None:
        return 0
    _log_alert(conn, row[0], kind, subject, opened_at, "opened", detail)
    return 1


def _resolve_alert(conn: sqlite3.Connection, kind: str, subject: str, resolved_at: str,
                   detail: Mapping[str, Any] | None = None) -> int:
    row = conn.execute("UPDATE alerts SET resolved_at = ?, updated_at = ?, "
                       "detail = COALESCE(?, detail) WHERE kind = ? AND subject = ? AND "
                       "resolved_at IS NULL RETURNING id, detail",
                       (resolved_at, resolved_at,
                        _dumps(dict(detail)) if detail is not None else None, kind,
                        subject)).fetchone()
    if row is None:
        return 0
    _log_alert(conn, row[0], kind, subject, resolved_at, "resolved", _loads(row[1]) or {})
    return 1


def _log_alert(conn: sqlite3.Connection, alert_id: int, kind: str, subject: str, at: str,
               action: str, detail: Mapping[str, Any], notified: bool = False) -> None:
    conn.execute("INSERT INTO alert_log (alert_id, kind, subject, at, action, detail, "
                 "notified_at) VALUES (?,?,?,?,?,?,?)",
                 (alert_id, kind, subject, at, action, _dumps(dict(detail)),
                  at if notified else None))


_ALERT_COLUMNS = "id, kind, subject, opened_at, resolved_at, detail, updated_at"


def _alert(r: Sequence[Any]) -> Alert:
    return Alert(r[0], r[1], r[2], r[3], r[4], _loads(r[5]) or {}, r[6])


def _accepted(outcome: Outcome) -> bool:
    """The platform accepted the request (it may still have refused this event in it)."""
    return outcome.status == "delivered" or outcome.cause == "event_error"


# failures since the last success, per connection, kept by the outcome writer: a flush
# with a success restarts the count from the failures after it
_HEALTH_UPSERT = """
INSERT INTO connection_health (destination, account, environment, last_attempt_at,
    last_success_at, streak_started_at, failures, last_error, last_status)
VALUES (?,?,?,?,?,?,?,?,?)
ON CONFLICT (destination, account, environment) DO UPDATE SET
  last_attempt_at = excluded.last_attempt_at,
  last_success_at = COALESCE(excluded.last_success_at, connection_health.last_success_at),
  failures = CASE WHEN excluded.last_success_at IS NOT NULL THEN excluded.failures
                  ELSE connection_health.failures + excluded.failures END,
  streak_started_at = CASE
    WHEN excluded.failures = 0 AND excluded.last_success_at IS NOT NULL THEN NULL
    WHEN excluded.last_success_at IS NOT NULL OR connection_health.failures = 0
      THEN excluded.streak_started_at
    ELSE connection_health.streak_started_at END,
  last_error = COALESCE(excluded.last_error, connection_health.last_error),
  last_status = excluded.last_status
"""


def _health_row(key: tuple[str, str, str], steps: Sequence[tuple[bool, str, str | None]],
                at: str) -> tuple[Any, ...]:
    last_ok = max((i for i, step in enumerate(steps) if step[0]), default=None)
    after = steps[last_ok + 1:] if last_ok is not None else steps
    failures = len(after)
    last_error = next((s[2] for s in reversed(steps) if not s[0] and s[2]), None)
    return (*key, at, at if last_ok is not None else None, at if failures else None, failures,
            last_error, steps[-1][1])


def _select_in(conn: sqlite3.Connection, sql: str, fixed: tuple[Any, ...],
               values: Iterable[Any], chunk: int = 500) -> Iterator[Any]:
    """Rows of `sql` whose "IN ({})" takes `values`, queried in chunks SQLite accepts."""
    ordered = sorted(set(values))
    for start in range(0, len(ordered), chunk):
        part = ordered[start:start + chunk]
        yield from conn.execute(sql.format(",".join("?" * len(part))), (*fixed, *part))


_EVENT_COLUMNS = ("seq", "account", "environment", "event_id", "event_name", "source",
                  "source_event", "status", "occurred_at", "received_at", "release_at", "body",
                  "evidence", "pii", "raw")
_EVENT_SELECT = ", ".join(f"e.{c}" for c in _EVENT_COLUMNS)


def _stored_from_row(row: Sequence[Any]) -> StoredEvent:
    r = dict(zip(_EVENT_COLUMNS, row, strict=True))
    evidence = _loads(r["evidence"]) or {}
    return StoredEvent(r["seq"], EventRow(
        account=r["account"], environment=r["environment"], event_id=r["event_id"],
        event_name=r["event_name"], source=r["source"], source_event=r["source_event"],
        status=r["status"], occurred_at=r["occurred_at"], received_at=r["received_at"],
        body=_loads(r["body"]), evidence=evidence, routes={},
        keys=tuple(evidence.get("keys", ())), release_at=r["release_at"],
        pii=_loads(r["pii"]), raw=_loads(r["raw"])))


def _delivery(r: Sequence[Any]) -> DeliveryView:
    status, reason = r[6], r[7]
    return DeliveryView(
        event_seq=r[0], event_id=r[1], event_name=r[2], account=r[3], environment=r[4],
        destination=r[5], status=status,
        reason=reason if status == "dropped" else None,
        attempts=r[8], last_error=reason if status != "dropped" or r[8] else None,
        queued_at=r[9], last_attempt_at=r[10], next_retry_at=r[11], latency_ms=r[12],
        destination_version=r[13], request=_loads(r[14]), response=_loads(r[15]),
        cause=r[16] if status == "dropped" else None)
