"""The embedded SQLite store (WAL, synchronous=FULL, group commit).

Writes go through one dedicated thread with its own connection: a whole group commit
(fetch, plan, apply) is one hop off the event loop rather than one per statement,
and a single writer makes dedup decisions exact. Reads use aiosqlite on a second
connection, which WAL lets run beside the writer.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import aiosqlite
import orjson

from router.store.base import (
    PAUSE_ALERT,
    Alert,
    BatchInput,
    DeliveryView,
    DueDelivery,
    EventRow,
    IdentityView,
    Outcome,
    Pause,
    Planner,
    Store,
    StoredEvent,
    WritePlan,
    pause_subject,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  account TEXT NOT NULL,
  environment TEXT NOT NULL,
  event_id TEXT NOT NULL,
  event_name TEXT,
  source TEXT NOT NULL,
  source_event TEXT,
  status TEXT NOT NULL,
  occurred_at TEXT,
  received_at TEXT NOT NULL,
  release_at REAL,
  body BLOB NOT NULL,
  evidence BLOB NOT NULL,
  routes BLOB NOT NULL,
  pii BLOB
);
CREATE INDEX IF NOT EXISTS events_event_id ON events (account, environment, event_id);
CREATE INDEX IF NOT EXISTS events_received ON events (received_at);
CREATE INDEX IF NOT EXISTS events_name ON events (event_name, received_at);
CREATE TABLE IF NOT EXISTS dedup_keys (
  account TEXT NOT NULL,
  environment TEXT NOT NULL,
  key TEXT NOT NULL,
  seq INTEGER NOT NULL,
  created_at REAL NOT NULL,
  PRIMARY KEY (account, environment, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS identity_links (
  account TEXT NOT NULL,
  identifier TEXT NOT NULL,
  root TEXT NOT NULL,
  PRIMARY KEY (account, identifier)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS identity_root ON identity_links (account, root);
CREATE TABLE IF NOT EXISTS identity_profiles (
  account TEXT NOT NULL,
  root TEXT NOT NULL,
  attributes BLOB NOT NULL,
  PRIMARY KEY (account, root)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS deliveries (
  event_seq INTEGER NOT NULL,
  destination TEXT NOT NULL,
  status TEXT NOT NULL,
  attempts INTEGER NOT NULL DEFAULT 0,
  last_error TEXT,
  queued_at TEXT NOT NULL,
  last_attempt_at TEXT,
  next_retry_at TEXT,
  latency_ms REAL,
  due_at REAL,
  destination_version TEXT,
  request BLOB,
  response BLOB,
  PRIMARY KEY (event_seq, destination)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (destination, due_at);
CREATE TABLE IF NOT EXISTS cursors (
  destination TEXT PRIMARY KEY,
  seq INTEGER NOT NULL DEFAULT 0,
  owner TEXT,
  lease_until REAL NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS pauses (
  destination TEXT NOT NULL,
  account TEXT NOT NULL,
  environment TEXT NOT NULL,
  reason TEXT NOT NULL,
  since TEXT NOT NULL,
  PRIMARY KEY (destination, account, environment)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS alerts (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  kind TEXT NOT NULL,
  subject TEXT NOT NULL,
  opened_at TEXT NOT NULL,
  resolved_at TEXT,
  detail BLOB
);
CREATE UNIQUE INDEX IF NOT EXISTS alerts_open ON alerts (kind, subject)
  WHERE resolved_at IS NULL;
CREATE TABLE IF NOT EXISTS store_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

SCHEMA_VERSION = "1"
_dumps = orjson.dumps


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


class SQLiteStore(Store):
    def __init__(self, url: str):
        self.path = path_from_url(url)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-writer")
        self._writer: sqlite3.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._lock = threading.Lock()

    # --- lifecycle ------------------------------------------------------------------

    def _open_writer(self) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA busy_timeout=5000")
        conn.executescript(SCHEMA)
        conn.execute("INSERT OR IGNORE INTO store_meta VALUES ('schema_version', ?)",
                     (SCHEMA_VERSION,))
        self._writer = conn

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._open_writer)
        self._reader = await aiosqlite.connect(self.path)
        await self._reader.execute_fetchall("PRAGMA busy_timeout=5000")

    async def close(self) -> None:
        if self._reader is not None:
            await self._reader.close()
            self._reader = None
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._close_writer)
        self._executor.shutdown(wait=True)

    def _close_writer(self) -> None:
        if self._writer is not None:
            self._writer.execute("PRAGMA wal_checkpoint(PASSIVE)")
            self._writer.close()
            self._writer = None

    # --- ingest (writer thread) -------------------------------------------------------

    async def ingest(self, batch: BatchInput, window_seconds: float, now: float,
                     planner: Planner) -> tuple[WritePlan, list[int]]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._ingest_sync, batch,
                                          window_seconds, now, planner)

    def _ingest_sync(self, batch: BatchInput, window_seconds: float, now: float,
                     planner: Planner) -> tuple[WritePlan, list[int]]:
        conn = self._writer
        assert conn is not None, "store is not open"
        conn.execute("BEGIN IMMEDIATE")
        try:
            existing = self._fetch_existing(conn, batch, now - window_seconds)
            identities = {account: self._identity_sync(conn, account, ids)
                          for account, ids in batch.identifiers.items() if ids}
            plan = planner(existing, identities)
            seqs = self._apply(conn, plan, now)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return plan, seqs

    def _fetch_existing(self, conn: sqlite3.Connection, batch: BatchInput,
                        since: float) -> dict[tuple[str, str, str], StoredEvent]:
        found: dict[tuple[str, str, str], StoredEvent] = {}
        by_seq: dict[int, StoredEvent] = {}
        for (account, environment), keys in batch.keys.items():
            for row in _select_in(conn, "SELECT k.key, e.* FROM dedup_keys k JOIN events e ON "
                                  "e.seq = k.seq WHERE k.account = ? AND k.environment = ? AND "
                                  "k.created_at >= ? AND k.key IN ({})",
                                  (account, environment, since), keys):
                seq = row[1]
                stored = by_seq.get(seq) or _stored_from_row(row[1:])
                by_seq[seq] = stored
                found[(account, environment, row[0])] = stored
        return found

    def _apply(self, conn: sqlite3.Connection, plan: WritePlan, now: float) -> list[int]:
        seqs: list[int] = []
        for row in plan.inserts:
            cur = conn.execute(
                "INSERT INTO events (account, environment, event_id, event_name, source, "
                "source_event, status, occurred_at, received_at, release_at, body, evidence, "
                "routes, pii) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (row.account, row.environment, row.event_id, row.event_name, row.source,
                 row.source_event, row.status, row.occurred_at, row.received_at, row.release_at,
                 _dumps(row.body), _dumps(row.evidence), _dumps(row.routes),
                 _dumps(row.pii) if row.pii else None))
            seq = int(cur.lastrowid or 0)
            seqs.append(seq)
            conn.executemany(
                "INSERT OR REPLACE INTO dedup_keys VALUES (?,?,?,?,?)",
                [(row.account, row.environment, key, seq, now) for key in row.keys])
        if plan.updates:
            conn.executemany("UPDATE events SET body = ?, evidence = ? WHERE seq = ?",
                             [(_dumps(u[0]), _dumps(u[1]), seq)
                              for seq, u in plan.updates.items()])
            rerouted = [(_dumps(u[2]), seq) for seq, u in plan.updates.items()
                        if len(u) > 2 and u[2] is not None]
            if rerouted:
                conn.executemany("UPDATE events SET routes = ? WHERE seq = ?", rerouted)
        ident = plan.identity
        for account_root, new_root in ident.repoint.items():
            account, old_root = account_root.split("\x1f", 1)
            conn.execute("UPDATE identity_links SET root = ? WHERE account = ? AND root = ?",
                         (new_root, account, old_root))
        if ident.links:
            conn.executemany("INSERT OR REPLACE INTO identity_links VALUES (?,?,?)",
                             [(*k.split("\x1f", 1), root) for k, root in ident.links.items()])
        if ident.profiles:
            conn.executemany("INSERT OR REPLACE INTO identity_profiles VALUES (?,?,?)",
                             [(*k.split("\x1f", 1), _dumps(attrs))
                              for k, attrs in ident.profiles.items()])
        for key in ident.drop_profiles:
            conn.execute("DELETE FROM identity_profiles WHERE account = ? AND root = ?",
                         tuple(key.split("\x1f", 1)))
        return seqs

    def _identity_sync(self, conn: sqlite3.Connection, account: str,
                       identifiers: Sequence[str]) -> IdentityView:
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

    # --- reads (aiosqlite) -------------------------------------------------------------

    @property
    def reader(self) -> aiosqlite.Connection:
        assert self._reader is not None, "store is not open"
        return self._reader

    async def _read(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        """Run one query to completion in a single hop to the reader thread.

        Callers share one connection; a statement left open while another coroutine
        starts its own would let SQLite chain them into one read transaction, and a
        steady stream of worker polls could then pin a stale snapshot forever.
        """
        return list(await self.reader.execute_fetchall(sql, args))

    async def get_events(self, event_id: str, account: str | None = None) -> list[StoredEvent]:
        sql = "SELECT * FROM events WHERE event_id = ?"
        args: list[Any] = [event_id]
        if account:
            sql += " AND account = ?"
            args.append(account)
        rows = await self._read(sql + " ORDER BY seq", args)
        return [_stored_from_row(r) for r in rows]

    async def list_events(self, *, name: str | None = None, source: str | None = None,
                          since: str | None = None, account: str | None = None,
                          status: str | None = None, limit: int = 100) -> list[StoredEvent]:
        where, args = [], []
        for column, value in (("event_name", name), ("source", source), ("account", account),
                              ("status", status)):
            if value:
                where.append(f"{column} = ?")
                args.append(value)
        if since:
            where.append("received_at >= ?")
            args.append(since)
        sql = "SELECT * FROM events" + (" WHERE " + " AND ".join(where) if where else "")
        rows = await self._read(sql + " ORDER BY seq DESC LIMIT ?", [*args, limit])
        return [_stored_from_row(r) for r in rows]

    _DELIVERY_SELECT = """
        SELECT e.seq, e.event_id, e.event_name, e.account, e.environment, r.key,
               COALESCE(d.status, json_extract(r.value, '$.status')),
               json_extract(r.value, '$.reason'), COALESCE(d.attempts, 0), d.last_error,
               COALESCE(d.queued_at, e.received_at), d.last_attempt_at, d.next_retry_at,
               d.latency_ms, COALESCE(d.destination_version, json_extract(r.value, '$.version')),
               d.request, d.response
        FROM events e, json_each(e.routes) r
        LEFT JOIN deliveries d ON d.event_seq = e.seq AND d.destination = r.key
    """

    async def deliveries_for(self, seqs: Sequence[int]) -> list[DeliveryView]:
        if not seqs:
            return []
        marks = ",".join("?" * len(seqs))
        sql = self._DELIVERY_SELECT + f" WHERE e.seq IN ({marks}) ORDER BY e.seq, r.key"
        rows = await self._read(sql, list(seqs))
        return [_delivery(r) for r in rows]

    async def list_deliveries(self, *, status: str | None = None, destination: str | None = None,
                              since: str | None = None, account: str | None = None,
                              limit: int = 100) -> list[DeliveryView]:
        where, args = [], []
        if status:
            where.append("COALESCE(d.status, json_extract(r.value, '$.status')) = ?")
            args.append(status)
        if destination:
            where.append("r.key = ?")
            args.append(destination)
        if since:
            where.append("e.received_at >= ?")
            args.append(since)
        if account:
            where.append("e.account = ?")
            args.append(account)
        sql = self._DELIVERY_SELECT + (" WHERE " + " AND ".join(where) if where else "")
        rows = await self._read(sql + " ORDER BY e.seq DESC, r.key LIMIT ?", [*args, limit])
        return [_delivery(r) for r in rows]

    async def identity_of(self, account: str, identifiers: Sequence[str]) -> IdentityView:
        loop = asyncio.get_running_loop()
        conn = self._writer
        assert conn is not None
        return await loop.run_in_executor(self._executor, self._identity_sync, conn, account,
                                          list(identifiers))

    # --- delivery (writer thread) ----------------------------------------------------

    async def _write(self, fn: Any, *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._in_transaction, fn, args)

    def _in_transaction(self, fn: Any, args: tuple[Any, ...]) -> Any:
        conn = self._writer
        assert conn is not None, "store is not open"
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = fn(conn, *args)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return result

    async def claim_cursor(self, destination: str, owner: str, lease_seconds: float) -> int | None:
        def claim(conn: sqlite3.Connection) -> int | None:
            now = time.time()
            conn.execute("INSERT OR IGNORE INTO cursors (destination, seq) VALUES (?, 0)",
                         (destination,))
            cur = conn.execute(
                "UPDATE cursors SET owner = ?, lease_until = ? WHERE destination = ? "
                "AND (owner = ? OR owner IS NULL OR lease_until < ?) RETURNING seq",
                (owner, now + lease_seconds, destination, owner, now))
            row = cur.fetchone()
            return int(row[0]) if row else None
        return await self._write(claim)

    async def read_after(self, seq: int, limit: int) -> list[StoredEvent]:
        rows = await self._read("SELECT * FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
                                (seq, limit))
        return [_stored_from_row(r) for r in rows]

    async def claim_due(self, destination: str, now: float, limit: int,
                        lease_seconds: float) -> list[DueDelivery]:
        def claim(conn: sqlite3.Connection) -> list[DueDelivery]:
            rows = conn.execute(
                "SELECT d.attempts, d.queued_at, e.* FROM deliveries d JOIN events e "
                "ON e.seq = d.event_seq WHERE d.destination = ? AND d.due_at IS NOT NULL "
                "AND d.due_at <= ? AND d.status IN ('queued', 'failed') "
                "ORDER BY d.due_at LIMIT ?", (destination, now, limit)).fetchall()
            if rows:
                conn.executemany(
                    "UPDATE deliveries SET due_at = ? WHERE event_seq = ? AND destination = ?",
                    [(now + lease_seconds, r[2], destination) for r in rows])
            return [DueDelivery(_stored_from_row(r[2:]), int(r[0]), r[1]) for r in rows]
        return await self._write(claim)

    async def record(self, outcomes: Sequence[Outcome], *, destination: str,
                     cursor: int | None = None, owner: str | None = None,
                     scrub: dict[int, tuple[str, ...]] | None = None) -> None:
        def write(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "INSERT OR REPLACE INTO deliveries (event_seq, destination, status, attempts, "
                "last_error, queued_at, last_attempt_at, next_retry_at, latency_ms, due_at, "
                "destination_version, request, response) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                [(o.event_seq, o.destination, o.status, o.attempts, o.last_error, o.queued_at,
                  o.last_attempt_at, o.next_retry_at, o.latency_ms, o.due_at,
                  o.destination_version, _dumps(o.request) if o.request is not None else None,
                  _dumps(o.response) if o.response is not None else None) for o in outcomes])
            waiting = [o.event_seq for o in outcomes if o.status == "queued" and o.due_at is None]
            if waiting:
                # written as "paused", but the pause may have been lifted meanwhile: then
                # they are due now, never stranded without a pause to lift
                marks = ",".join("?" * len(waiting))
                conn.execute(
                    f"UPDATE deliveries SET due_at = ? WHERE destination = ? AND status = "
                    f"'queued' AND due_at IS NULL AND event_seq IN ({marks}) AND NOT EXISTS ("
                    f"SELECT 1 FROM pauses p JOIN events e ON e.seq = deliveries.event_seq "
                    f"WHERE p.destination = deliveries.destination AND p.account = e.account "
                    f"AND p.environment = e.environment)",
                    (time.time(), destination, *waiting))
            if cursor is not None:
                conn.execute("UPDATE cursors SET seq = MAX(seq, ?) WHERE destination = ? "
                             "AND (owner = ? OR ? IS NULL)", (cursor, destination, owner, owner))
            for seq, dests in (scrub or {}).items():
                marks = ",".join("?" * len(dests))
                pending = conn.execute(
                    f"SELECT count(*) FROM deliveries WHERE event_seq = ? AND destination IN "
                    f"({marks}) AND status IN ('delivered', 'dropped')", (seq, *dests)).fetchone()
                if pending and pending[0] == len(dests):
                    conn.execute("UPDATE events SET pii = NULL WHERE seq = ?", (seq,))
        await self._write(write)

    async def pause(self, destination: str, account: str, environment: str, reason: str) -> None:
        def write(conn: sqlite3.Connection) -> None:
            since = _utc_now()
            cur = conn.execute("INSERT OR IGNORE INTO pauses VALUES (?,?,?,?,?)",
                               (destination, account, environment, reason, since))
            if cur.rowcount:
                _open_alert(conn, PAUSE_ALERT, pause_subject(destination, account, environment),
                            {"destination": destination, "account": account,
                             "environment": environment, "reason": reason,
                             "action": "fix the credentials, then `router resume` or reload"},
                            since)
        await self._write(write)

    async def pauses(self) -> list[Pause]:
        rows = await self._read("SELECT * FROM pauses ORDER BY since")
        return [Pause(*r) for r in rows]

    async def resume(self, destination: str | None = None, account: str | None = None) -> int:
        def write(conn: sqlite3.Connection) -> int:
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
                    "UPDATE deliveries SET due_at = ? WHERE destination = ? AND status = 'queued'"
                    " AND due_at IS NULL AND event_seq IN (SELECT seq FROM events WHERE "
                    "account = ? AND environment = ?)", (now, dest, acc, env))
            conn.execute(f"DELETE FROM pauses WHERE {where}", args)
            resolved_at = _utc_now()
            for dest, acc, env in lifted:
                _resolve_alert(conn, PAUSE_ALERT, pause_subject(dest, acc, env), resolved_at)
            return len(lifted)
        return int(await self._write(write))

    async def open_alert(self, kind: str, subject: str, detail: Mapping[str, Any]) -> bool:
        return bool(await self._write(_open_alert, kind, subject, detail, _utc_now()))

    async def resolve_alert(self, kind: str, subject: str) -> bool:
        return bool(await self._write(_resolve_alert, kind, subject, _utc_now()))

    async def alerts(self, *, open_only: bool = False, kind: str | None = None,
                     limit: int = 100) -> list[Alert]:
        where, args = [], []
        if open_only:
            where.append("resolved_at IS NULL")
        if kind:
            where.append("kind = ?")
            args.append(kind)
        sql = "SELECT * FROM alerts" + (" WHERE " + " AND ".join(where) if where else "")
        rows = await self._read(sql + " ORDER BY id DESC LIMIT ?", [*args, limit])
        return [Alert(r[0], r[1], r[2], r[3], r[4], _loads(r[5]) or {}) for r in rows]

    async def requeue(self, *, since: str | None = None, destination: str | None = None,
                      statuses: Sequence[str] = ("failed", "dropped"),
                      event_id: str | None = None, account: str | None = None) -> int:
        def write(conn: sqlite3.Connection) -> int:
            where = [f"d.status IN ({','.join('?' * len(statuses))})"]
            args: list[Any] = list(statuses)
            for clause, value in (("d.destination = ?", destination), ("e.event_id = ?", event_id),
                                  ("e.account = ?", account), ("e.received_at >= ?", since)):
                if value:
                    where.append(clause)
                    args.append(value)
            cur = conn.execute(
                "UPDATE deliveries SET status = 'queued', due_at = ?, attempts = 0, "
                "next_retry_at = NULL WHERE (event_seq, destination) IN (SELECT d.event_seq, "
                "d.destination FROM deliveries d JOIN events e ON e.seq = d.event_seq WHERE "
                + " AND ".join(where) + ")", [time.time(), *args])
            return int(cur.rowcount)
        return int(await self._write(write))

    async def counts(self) -> dict[str, int]:
        out = {}
        for table in ("events", "deliveries", "identity_links", "dedup_keys"):
            rows = await self._read(f"SELECT count(*) FROM {table}")
            out[table] = int(rows[0][0]) if rows else 0
        return out


def _utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _open_alert(conn: sqlite3.Connection, kind: str, subject: str,
                detail: Mapping[str, Any], opened_at: str) -> int:
    cur = conn.execute("INSERT OR IGNORE INTO alerts (kind, subject, opened_at, detail) "
                       "VALUES (?,?,?,?)", (kind, subject, opened_at, _dumps(dict(detail))))
    return int(cur.rowcount)


def _resolve_alert(conn: sqlite3.Connection, kind: str, subject: str, resolved_at: str) -> int:
    cur = conn.execute("UPDATE alerts SET resolved_at = ? WHERE kind = ? AND subject = ? "
                       "AND resolved_at IS NULL", (resolved_at, kind, subject))
    return int(cur.rowcount)


def _select_in(conn: sqlite3.Connection, sql: str, fixed: tuple[Any, ...],
               values: Iterable[Any], chunk: int = 500) -> Iterator[Any]:
    """Rows of `sql` whose "IN ({})" takes `values`, queried in chunks SQLite accepts."""
    ordered = sorted(set(values))
    for start in range(0, len(ordered), chunk):
        part = ordered[start:start + chunk]
        yield from conn.execute(sql.format(",".join("?" * len(part))), (*fixed, *part))


_EVENT_COLUMNS = ("seq", "account", "environment", "event_id", "event_name", "source",
                  "source_event", "status", "occurred_at", "received_at", "release_at", "body",
                  "evidence", "routes", "pii")


def _stored_from_row(row: Sequence[Any]) -> StoredEvent:
    r = dict(zip(_EVENT_COLUMNS, row, strict=True))
    evidence = _loads(r["evidence"]) or {}
    return StoredEvent(r["seq"], EventRow(
        account=r["account"], environment=r["environment"], event_id=r["event_id"],
        event_name=r["event_name"], source=r["source"], source_event=r["source_event"],
        status=r["status"], occurred_at=r["occurred_at"], received_at=r["received_at"],
        body=_loads(r["body"]), evidence=evidence, routes=_loads(r["routes"]) or {},
        keys=tuple(evidence.get("keys", ())), release_at=r["release_at"],
        pii=_loads(r["pii"])))


def _delivery(r: Sequence[Any]) -> DeliveryView:
    return DeliveryView(
        event_seq=r[0], event_id=r[1], event_name=r[2], account=r[3], environment=r[4],
        destination=r[5], status=r[6], reason=r[7], attempts=r[8], last_error=r[9],
        queued_at=r[10], last_attempt_at=r[11], next_retry_at=r[12], latency_ms=r[13],
        destination_version=r[14], request=_loads(r[15]), response=_loads(r[16]))
