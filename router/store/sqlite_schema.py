"""The SQLite schema and its versioned migrations.

A store file records its schema version in `store_meta`; opening it applies every
later migration in order, each in its own transaction, so a file written by an older
router is upgraded in place and a newer file is refused with a clear message.
"""

from __future__ import annotations

import sqlite3

V1 = """
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

# Version 2: the two-stage pipeline. The gateway's inbox and exact-retry keys; one
# Delivery row per routed destination written with the event (the log is no longer the
# queue: due deliveries are claimed with a lease, encoded as a due time in the future
# and an owner); every attempt kept; request excerpts stored once per request.
V2 = """
CREATE TABLE inbox (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  partition INTEGER NOT NULL,
  account TEXT NOT NULL,
  environment TEXT NOT NULL,
  source TEXT NOT NULL,
  received_at TEXT NOT NULL,
  arrived REAL NOT NULL,
  count INTEGER NOT NULL,
  meta BLOB NOT NULL,
  event_ids BLOB NOT NULL,
  messages BLOB NOT NULL,
  wait INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX inbox_partition ON inbox (partition, id);
CREATE TABLE ack_keys (
  account TEXT NOT NULL,
  environment TEXT NOT NULL,
  event_id TEXT NOT NULL,
  created_at REAL NOT NULL,
  PRIMARY KEY (account, environment, event_id)
) WITHOUT ROWID;
CREATE INDEX ack_keys_created ON ack_keys (created_at);
CREATE TABLE decisions (
  inbox_id INTEGER PRIMARY KEY,
  results BLOB NOT NULL,
  created_at REAL NOT NULL
);
CREATE TABLE leases (
  kind TEXT NOT NULL,
  key TEXT NOT NULL,
  owner TEXT NOT NULL,
  lease_until REAL NOT NULL,
  PRIMARY KEY (kind, key)
) WITHOUT ROWID;
CREATE TABLE requests (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  destination TEXT NOT NULL,
  at TEXT NOT NULL,
  request BLOB,
  response BLOB
);
CREATE TABLE attempts (
  event_seq INTEGER NOT NULL,
  destination TEXT NOT NULL,
  n INTEGER NOT NULL,
  at TEXT NOT NULL,
  status TEXT NOT NULL,
  error TEXT,
  latency_ms REAL,
  request_id INTEGER,
  PRIMARY KEY (event_seq, destination, n)
) WITHOUT ROWID;
CREATE TABLE deliveries_v2 (
  event_seq INTEGER NOT NULL,
  destination TEXT NOT NULL,
  account TEXT NOT NULL,
  environment TEXT NOT NULL,
  status TEXT NOT NULL,
  reason TEXT,
  attempts INTEGER NOT NULL DEFAULT 0,
  round_start INTEGER NOT NULL DEFAULT 0,
  queued_at TEXT NOT NULL,
  last_attempt_at TEXT,
  next_retry_at TEXT,
  due_at REAL,
  owner TEXT,
  latency_ms REAL,
  destination_version TEXT,
  request_id INTEGER,
  drop_reason TEXT,
  PRIMARY KEY (event_seq, destination)
) WITHOUT ROWID;
INSERT INTO requests (id, destination, at, request, response)
  SELECT NULL, destination, COALESCE(last_attempt_at, queued_at), request, response
  FROM deliveries WHERE request IS NOT NULL OR response IS NOT NULL;
INSERT INTO deliveries_v2 (event_seq, destination, account, environment, status, reason,
    attempts, queued_at, last_attempt_at, next_retry_at, due_at, latency_ms,
    destination_version, request_id)
  SELECT d.event_seq, d.destination, e.account, e.environment, d.status, d.last_error,
         d.attempts, d.queued_at, d.last_attempt_at, d.next_retry_at, d.due_at, d.latency_ms,
         d.destination_version,
         (SELECT max(r.id) FROM requests r WHERE r.destination = d.destination
            AND r.at = COALESCE(d.last_attempt_at, d.queued_at))
  FROM deliveries d JOIN events e ON e.seq = d.event_seq;
-- routed deliveries the old workers had not reached yet: queued and due now; those
-- behind a cursor without an outcome were decided not to send (dropped at routing)
INSERT OR IGNORE INTO deliveries_v2 (event_seq, destination, account, environment, status,
    reason, queued_at, due_at, destination_version)
  SELECT e.seq, r.key, e.account, e.environment,
         CASE WHEN json_extract(r.value, '$.status') = 'queued'
                   AND e.seq > COALESCE((SELECT c.seq FROM cursors c
                                         WHERE c.destination = r.key), 0)
              THEN 'queued' ELSE 'dropped' END,
         CASE WHEN json_extract(r.value, '$.status') = 'queued'
              THEN CASE WHEN e.seq > COALESCE((SELECT c.seq FROM cursors c
                                               WHERE c.destination = r.key), 0)
                        THEN NULL ELSE 'not sent before the upgrade' END
              ELSE json_extract(r.value, '$.reason') END,
         e.received_at,
         CASE WHEN json_extract(r.value, '$.status') = 'queued'
                   AND e.seq > COALESCE((SELECT c.seq FROM cursors c
                                         WHERE c.destination = r.key), 0)
              THEN COALESCE(e.release_at, 0) ELSE NULL END,
         json_extract(r.value, '$.version')
  FROM events e, json_each(e.routes) r;
INSERT INTO attempts (event_seq, destination, n, at, status, error, latency_ms, request_id)
  SELECT event_seq, destination, attempts, last_attempt_at, status, reason, NULL, request_id
  FROM deliveries_v2 WHERE attempts > 0 AND last_attempt_at IS NOT NULL;
DROP TABLE deliveries;
DROP TABLE cursors;
ALTER TABLE deliveries_v2 RENAME TO deliveries;
CREATE INDEX deliveries_due ON deliveries (destination, due_at) WHERE due_at IS NOT NULL;
CREATE INDEX deliveries_owner ON deliveries (owner) WHERE owner IS NOT NULL;
CREATE INDEX deliveries_status ON deliveries (status, event_seq);
CREATE INDEX deliveries_destination ON deliveries (destination, status, event_seq);
CREATE INDEX deliveries_connection ON deliveries (account, environment, destination)
  WHERE due_at IS NULL AND status = 'queued';
ALTER TABLE events DROP COLUMN routes;
ALTER TABLE events ADD COLUMN raw BLOB;
CREATE INDEX events_status ON events (status, seq);
"""

# Version 3: operations. Why each dropped Delivery was not sent; what an event can be
# found by (order id, hashed email or phone, identity identifiers, a duplicate's id) and
# which identifiers it carries (reports, detectors); each connection's recent health;
# alert history with the channels' notification results. Events stored before the
# upgrade have no index: searches by those values and the reports cover newer events.
V3 = """
ALTER TABLE deliveries ADD COLUMN cause TEXT;
ALTER TABLE events ADD COLUMN signals TEXT;
CREATE INDEX events_event_id_any ON events (event_id);
CREATE TABLE event_terms (
  term TEXT NOT NULL,
  seq INTEGER NOT NULL,
  PRIMARY KEY (term, seq)
) WITHOUT ROWID;
CREATE TABLE connection_health (
  destination TEXT NOT NULL,
  account TEXT NOT NULL,
  environment TEXT NOT NULL,
  last_attempt_at TEXT,
  last_success_at TEXT,
  streak_started_at TEXT,
  failures INTEGER NOT NULL DEFAULT 0,
  last_error TEXT,
  last_status TEXT,
  PRIMARY KEY (destination, account, environment)
) WITHOUT ROWID;
ALTER TABLE alerts ADD COLUMN updated_at TEXT;
CREATE TABLE alert_log (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  alert_id INTEGER NOT NULL,
  kind TEXT NOT NULL,
  subject TEXT NOT NULL,
  at TEXT NOT NULL,
  action TEXT NOT NULL,
  detail BLOB,
  notified_at TEXT,
  notified BLOB
);
CREATE INDEX alert_log_alert ON alert_log (alert_id, id);
CREATE INDEX alert_log_pending ON alert_log (id) WHERE notified_at IS NULL;
-- alerts of an older router: their opening is history, not news to send now
INSERT INTO alert_log (alert_id, kind, subject, at, action, detail, notified_at)
  SELECT id, kind, subject, opened_at, 'opened', detail, opened_at FROM alerts;
INSERT INTO alert_log (alert_id, kind, subject, at, action, detail, notified_at)
  SELECT id, kind, subject, resolved_at, 'resolved', detail, resolved_at FROM alerts
  WHERE resolved_at IS NOT NULL;
"""

MIGRATIONS: tuple[tuple[int, str], ...] = ((1, V1), (2, V2), (3, V3))
LATEST = MIGRATIONS[-1][0]


class SchemaError(RuntimeError):
    """The store file cannot be used by this version of the router."""


def current_version(conn: sqlite3.Connection) -> int:
    has_meta = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND "
                            "name = 'store_meta'").fetchone()
    if not has_meta:
        return 0
    row = conn.execute("SELECT value FROM store_meta WHERE key = 'schema_version'").fetchone()
    return int(row[0]) if row else 0


def migrate(conn: sqlite3.Connection) -> list[int]:
    """Apply every migration newer than the file's version, each in one transaction;
    returns the versions applied."""
    version = current_version(conn)
    if version > LATEST:
        raise SchemaError(f"the store was written by a newer router (schema {version}; this "
                          f"version knows up to {LATEST}): upgrade the router")
    applied = []
    for number, script in MIGRATIONS:
        if number <= version:
            continue
        conn.execute("BEGIN IMMEDIATE")
        try:
            # not executescript: it would COMMIT this transaction before its first statement
            for statement in statements(script):
                conn.execute(statement)
            conn.execute("INSERT OR REPLACE INTO store_meta VALUES ('schema_version', ?)",
                         (str(number),))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        applied.append(number)
    return applied


def statements(script: str) -> list[str]:
    """Split a script into statements (sqlite3.complete_statement knows the grammar)."""
    out, current = [], ""
    for line in script.splitlines(keepends=True):
        if line.lstrip().startswith("--") and not current.strip():
            continue
        current += line
        if sqlite3.complete_statement(current):
            out.append(current.strip())
            current = ""
    if current.strip():
        out.append(current.strip())
    return out
