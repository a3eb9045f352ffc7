"""The store interface: what the gateway, the processor, the delivery plane and the
admin API need, nothing backend-specific.

Three queues live in the store, one per stage of the flow:

- the **inbox**: raw messages the gateway acknowledged, one row per request, appended
  with group commit; a row leaves once the processor has stored what it decided;
- the **events** with their **deliveries**: the processor writes each Event together
  with one Delivery row per destination it was routed to (queued, or dropped with the
  reason), in one transaction per batch;
- due deliveries: a Delivery row with a due time is work for the delivery plane, which
  claims rows with an expiring lease, so a crashed process's share is taken over when
  its leases run out and a graceful shutdown hands it over at once.

Dedup and identity decisions are made by a caller-supplied planner over rows fetched
in the same transaction, so the store holds no dedup semantics and every backend
applies the same plan. After each commit the store tells in-process listeners what
changed (`Changes`), so consumers are woken rather than polling; a backend shared by
several processes also reports other processes' commits (`watch_external`).
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("router.store")

# --- the inbox (stage 1 -> stage 2) ------------------------------------------------------

def partition_of(account: str, partitions: int) -> int:
    """A stable partition for an account: the same on every process and machine, so
    one processor at a time owns each account's identity graph and dedup keys."""
    return zlib.crc32(account.encode()) % partitions



@dataclass(frozen=True)
class InboxAppend:
    """One request's acknowledged messages, all of one (account, environment, source)."""

    partition: int
    account: str
    environment: str
    source: str
    received_at: str
    meta: Mapping[str, Any]
    event_ids: tuple[str, ...]
    messages: tuple[Any, ...]  # envelope-checked and screened: never a card number
    wait: bool = False  # the sender waits for stage 2's decision (?wait=true)


@dataclass(frozen=True)
class Appended:
    inbox_id: int
    duplicates: tuple[bool, ...]  # per message: an exact retry within the dedup window


@dataclass(frozen=True)
class InboxRow:
    id: int
    partition: int
    account: str
    environment: str
    source: str
    received_at: str
    meta: dict[str, Any]
    event_ids: list[str]
    messages: list[Any]
    wait: bool


# --- events ----------------------------------------------------------------------------

@dataclass(frozen=True)
class EventRow:
    account: str
    environment: str
    event_id: str
    event_name: str | None
    source: str
    source_event: str | None
    status: str  # mapped | unmapped | rejected
    occurred_at: str | None
    received_at: str
    body: dict[str, Any]
    evidence: dict[str, Any]
    routes: dict[str, Any]  # destination -> {status, reason?, version, due_at?}
    keys: tuple[str, ...]
    release_at: float | None = None  # merge hold: not deliverable before this (unix s)
    pii: dict[str, Any] | None = None  # plaintext for destinations that declare it
    raw: Any = None  # the source message, for unmapped and rejected events
    # search and report index (see `EventQuery`, `identifier_coverage`): values it can be
    # found by ("order_id:548291", "email_sha256:<hex>", a duplicate's "event_id:...") and
    # the signals it carries (" email_sha256 fbc context.ip src:shopify ")
    terms: tuple[str, ...] = ()
    signals: str | None = None


@dataclass(frozen=True)
class StoredEvent:
    seq: int
    row: EventRow


@dataclass
class IdentityView:
    """Roots of the identifiers a batch carries, and the profiles of those roots."""

    roots: dict[str, str] = field(default_factory=dict)  # identifier -> root
    profiles: dict[str, dict[str, Any]] = field(default_factory=dict)  # root -> attributes


@dataclass
class IdentityChanges:
    links: dict[str, str] = field(default_factory=dict)  # identifier -> root (upsert)
    repoint: dict[str, str] = field(default_factory=dict)  # old root -> new root
    profiles: dict[str, dict[str, Any]] = field(default_factory=dict)  # root -> attributes
    drop_profiles: set[str] = field(default_factory=set)

    def __bool__(self) -> bool:
        return bool(self.links or self.repoint or self.profiles or self.drop_profiles)


@dataclass
class WritePlan:
    inserts: list[EventRow] = field(default_factory=list)
    # seq -> (body, evidence, routes, release_at): a duplicate merged into a stored
    # event; routes (None: unchanged) replace the deliveries of an event still held
    updates: dict[int, tuple[Any, Any, dict[str, Any] | None, float | None]] = field(
        default_factory=dict)
    identity: IdentityChanges = field(default_factory=IdentityChanges)
    results: list[Any] = field(default_factory=list)  # passed back to the caller untouched
    # the inbox rows this plan completes, and the decisions to keep for waiting senders
    done_inbox: tuple[int, ...] = ()
    decisions: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    # exact-retry keys of messages that were rejected: a corrected resend is not a retry
    forget_ack_keys: list[tuple[str, str, str]] = field(default_factory=list)
    # seq -> (terms to add, signals): a stored event's index after a duplicate merged in
    index: dict[int, tuple[tuple[str, ...], str | None]] = field(default_factory=dict)


@dataclass(frozen=True)
class BatchInput:
    """What the store fetches before planning: keys (scoped per account/env) and ids."""

    keys: dict[tuple[str, str], set[str]]
    identifiers: dict[str, set[str]]  # account -> identifiers


Planner = Callable[[dict[tuple[str, str, str], StoredEvent], dict[str, IdentityView]],
                   Awaitable[WritePlan]]


@dataclass(frozen=True)
class LeaseCheck:
    """Leases a write needs to still hold when it commits (the processor's partitions:
    it read, then planned, and only the partitions' owner may write what it planned)."""

    kind: str
    keys: tuple[str, ...]
    owner: str


class LeaseLost(RuntimeError):
    """A lease ran out between reading and writing: another process owns the work now."""


# --- deliveries ------------------------------------------------------------------------

@dataclass(frozen=True)
class DeliveryView:
    event_seq: int
    event_id: str
    event_name: str | None
    account: str
    environment: str
    destination: str
    status: str
    reason: str | None
    attempts: int
    last_error: str | None
    queued_at: str
    last_attempt_at: str | None
    next_retry_at: str | None
    latency_ms: float | None
    destination_version: str | None
    request: Any = None
    response: Any = None
    cause: str | None = None  # why it was not sent (dropped): see `DROP_CAUSES`


@dataclass(frozen=True)
class AttemptView:
    n: int
    at: str
    status: str  # delivered | failed | dropped | paused
    error: str | None
    latency_ms: float | None  # this request's round trip
    request: Any = None
    response: Any = None


@dataclass(frozen=True)
class DueDelivery:
    event: StoredEvent
    destination: str
    attempts: int  # all attempts so far (history)
    round_attempts: int  # attempts since it was (re)queued: what the retry policy counts
    queued_at: str
    drop_reason: str | None = None  # decided while held: not to be sent, for this reason


DROP_CAUSES = ("consent", "send_if", "not_listed", "too_old", "permanent", "event_error",
               "retries_exhausted", "invalid", "disabled")
"""Why a Delivery was dropped. The first three are intentional (routing decided not to
send: consent denied, the destination's send_if, the event not listed for it); the others
are losses: too old for the platform, refused by it (the whole request, or this event
inside an accepted request), retries used up, a payload that cannot be built, a
destination switched off meanwhile."""

INTENTIONAL_CAUSES = ("consent", "send_if", "not_listed")


@dataclass(frozen=True)
class Outcome:
    """A Delivery's new state after an attempt (or a decision not to attempt).

    `event` and `attempt` are for the observers of outcomes (logs, metrics, the live
    stream); the store needs neither."""

    event_seq: int
    destination: str
    status: str  # queued | failed | delivered | dropped
    attempted: bool  # an attempt to record in the history (a request was sent)
    error: str | None = None
    due_at: float | None = None  # unix s; None = not due (final, or waiting for a resume)
    next_retry_at: str | None = None
    latency_ms: float | None = None  # arrival -> acknowledgement, when delivered
    request_ref: int | None = None  # index into the flush's requests
    attempt_ms: float | None = None  # the request's own round trip
    cause: str | None = None  # for a drop: one of DROP_CAUSES
    attempt: int = 0  # the attempt's number in the delivery's history (0: not attempted)
    event: StoredEvent | None = None


@dataclass(frozen=True)
class RequestExcerpt:
    """What was sent and answered, stored once per request, not once per event in it."""

    destination: str
    at: str
    request: Any
    response: Any


@dataclass(frozen=True)
class Pause:
    destination: str
    account: str
    environment: str
    reason: str
    since: str


PAUSE_ALERT = "platform_down"
"""Opened when a connection is paused for rejected credentials, resolved when resumed."""


def pause_subject(destination: str, account: str, environment: str) -> str:
    return f"{destination}/{account}/{environment}"


@dataclass(frozen=True)
class Alert:
    """A condition worth a person's attention; at most one open per (kind, subject)."""

    id: int
    kind: str
    subject: str
    opened_at: str
    resolved_at: str | None
    detail: Mapping[str, Any]
    updated_at: str | None = None


@dataclass(frozen=True)
class AlertLogEntry:
    """One step in an alert's history: opened, updated or resolved, with the evidence of
    that moment; opened and resolved entries are sent to the alert channels, and
    `notified` records each channel's result once they are done."""

    id: int
    alert_id: int
    kind: str
    subject: str
    at: str
    action: str  # opened | updated | resolved
    detail: Mapping[str, Any]
    notified_at: str | None = None
    notified: Mapping[str, Any] | None = None


# --- what operators search and what the detectors read -----------------------------------

def signals_text(tokens: Iterable[str]) -> str:
    """The `signals` column: space-separated tokens with a space at each end, so that a
    backend finds a token with a portable `LIKE '% token %'`."""
    return " " + " ".join(sorted(set(tokens))) + " "


Identifier = Sequence[Sequence[str]]
"""An identifier as signal tokens: alternatives, each a group of tokens that must all be
present (`[["fbc"], ["fbclid"]]`: either; `[["context.ip", "context.user_agent"]]`: both)."""


@dataclass(frozen=True)
class EventQuery:
    """Filters of an event search; every given filter must match. Newest first, keyset
    paginated: pass the last seq of a page as `before_seq` for the next one."""

    event_id: str | None = None  # the event's own id, or the id of a duplicate merged into it
    any_terms: tuple[tuple[str, ...], ...] = ()  # each group: at least one term matches
    account: str | None = None
    environment: str | None = None
    source: str | None = None
    status: str | None = None  # mapped | unmapped | rejected
    name: str | None = None  # canonical event name
    since: str | None = None  # received_at >= (ISO 8601 UTC)
    until: str | None = None  # received_at <
    destination: str | None = None  # has a Delivery to it ...
    delivery_status: tuple[str, ...] = ()  # ... in one of these statuses
    undelivered: bool = False  # ... neither delivered nor skipped on purpose (a loss/pending)
    lacking: Identifier | None = None  # carries none of the alternatives
    before_seq: int | None = None
    limit: int = 100


@dataclass(frozen=True)
class QueueRow:
    """Pending deliveries of one connection (destination, account, environment)."""

    destination: str
    account: str
    environment: str
    due: int  # due now, not claimed
    scheduled: int  # waiting for a retry time or a hold
    parked: int  # waiting for a resume (paused connection)
    in_flight: int  # claimed by a delivery process
    oldest_due_at: float | None  # unix s of the longest-waiting due one


@dataclass(frozen=True)
class ConnectionHealth:
    """Attempts of one connection, as the outcome writer last recorded them: failures
    since the last success (a success is an accepted request, even one that refused an
    event inside it)."""

    destination: str
    account: str
    environment: str
    last_attempt_at: str | None
    last_success_at: str | None
    streak_started_at: str | None  # first failure after the last success
    failures: int
    last_error: str | None
    last_status: str | None


@dataclass(frozen=True)
class DeliveryCount:
    account: str
    environment: str
    destination: str
    status: str
    cause: str | None
    count: int


@dataclass(frozen=True)
class OrderOutcomes:
    """Orders (events of the order names from the sources of truth) in a window, and how
    their deliveries stand."""

    orders: Mapping[tuple[str, str], int]  # (account, environment) -> orders
    deliveries: tuple[DeliveryCount, ...]


@dataclass(frozen=True)
class CoverageRow:
    """How many of a destination's events of one name carry each identifier."""

    account: str
    environment: str
    destination: str
    event_name: str
    events: int
    present: Mapping[str, int]  # identifier -> events carrying it


# --- change notifications --------------------------------------------------------------

@dataclass(frozen=True)
class Changes:
    """What a commit changed, for the consumers that wait on it.

    `external` is set when another process committed and the backend cannot say what:
    consumers then look at everything they own."""

    inbox: frozenset[int] = frozenset()  # partitions with new inbox rows
    # destination -> the earliest due time among its rows this commit wrote
    due: Mapping[str, float] = field(default_factory=dict)
    decided: frozenset[int] = frozenset()  # inbox ids whose decision is stored
    pauses: bool = False
    external: bool = False


Listener = Callable[[Changes], None]


class Notifier:
    """In-process fan-out of `Changes` to listeners; a listener must not block."""

    def __init__(self) -> None:
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def publish(self, changes: Changes) -> None:
        for listener in list(self._listeners):
            try:
                listener(changes)
            except Exception:  # a consumer's bug must not fail the writer's commit
                log.exception("change listener failed")


# --- the interface ---------------------------------------------------------------------

class Store(ABC):
    """One interface, several backends (SQLite now; PostgreSQL with the same tests)."""

    def __init__(self) -> None:
        self.notifier = Notifier()

    @abstractmethod
    async def open(self) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...

    async def watch_external(self, interval: float) -> None:
        """Publish `Changes(external=True)` when another process commits; runs until
        cancelled. Only needed when another process shares the store."""
        await asyncio.Event().wait()

    # --- stage 1: the inbox ---------------------------------------------------------------

    @abstractmethod
    async def append(self, requests: Sequence[InboxAppend], window_seconds: float,
                     now: float) -> list[Appended]:
        """Append requests' messages durably in one transaction; flag exact retries (an
        event id already acknowledged for the same account and environment within the
        window, or earlier in this same group)."""

    @abstractmethod
    async def read_inbox(self, partitions: Sequence[int], limit: int,
                         after: int = 0) -> list[InboxRow]:
        """The oldest inbox rows of these partitions (id order), at most `limit`
        messages in all (a single larger row is still returned)."""

    @abstractmethod
    async def inbox_depth(self) -> tuple[int, float | None]:
        """(rows waiting, unix time of the oldest one's arrival or None)."""

    @abstractmethod
    async def decisions(self, inbox_ids: Sequence[int]) -> dict[int, list[dict[str, Any]]]:
        """Stage 2's per-message answers kept for senders waiting on these rows."""

    # --- stage 2: events ------------------------------------------------------------------

    @abstractmethod
    async def ingest(self, batch: BatchInput, window_seconds: float, now: float,
                     planner: Planner, lease: LeaseCheck | None = None
                     ) -> tuple[WritePlan, list[int]]:
        """Fetch what the batch touches (stored events sharing a dedup key, the identity
        roots and profiles of its identifiers), await the planner on it, and apply the
        plan in one transaction (events, their deliveries, identity, the inbox rows it
        completes) — refused with LeaseLost if `lease` is no longer held by then.

        Reading and writing need not share a transaction: only the owner of an
        account's partition writes its dedup keys and identity, and the lease check
        at commit time proves it still is the owner.

        Returns the plan and the sequence numbers assigned to its inserts, in order."""

    @abstractmethod
    async def get_events(self, event_id: str, account: str | None = None) -> list[StoredEvent]: ...

    @abstractmethod
    async def events_by_seq(self, seqs: Sequence[int]) -> dict[int, StoredEvent]: ...

    @abstractmethod
    async def list_events(self, *, name: str | None = None, source: str | None = None,
                          since: str | None = None, account: str | None = None,
                          status: str | None = None, limit: int = 100) -> list[StoredEvent]: ...

    @abstractmethod
    async def deliveries_for(self, seqs: Sequence[int]) -> list[DeliveryView]: ...

    @abstractmethod
    async def attempts_for(self, seqs: Sequence[int]) -> dict[tuple[int, str], list[AttemptView]]:
        """Every attempt of these events' deliveries, oldest first, by (seq, destination)."""

    @abstractmethod
    async def list_deliveries(self, *, status: str | None = None, destination: str | None = None,
                              since: str | None = None, account: str | None = None,
                              limit: int = 100) -> list[DeliveryView]: ...

    @abstractmethod
    async def identity_of(self, account: str, identifiers: Sequence[str]) -> IdentityView: ...

    @abstractmethod
    async def counts(self) -> dict[str, int]: ...

    # --- leases ---------------------------------------------------------------------------

    @abstractmethod
    async def claim_leases(self, kind: str, keys: Sequence[str], owner: str,
                           lease_seconds: float) -> list[str]:
        """Take or renew the leases of `keys` this owner can hold (free, expired or its
        own); returns the keys it holds now."""

    @abstractmethod
    async def release_leases(self, owner: str) -> None:
        """Graceful shutdown: give back every lease and every claimed delivery at once."""

    # --- the delivery plane ---------------------------------------------------------------

    @abstractmethod
    async def claim_due(self, wanted: Mapping[str, int], now: float, owner: str,
                        lease_seconds: float
                        ) -> tuple[dict[str, list[DueDelivery]], dict[str, float]]:
        """Claim up to wanted[destination] due deliveries of each destination, in one
        transaction (a paused connection's are parked by the worker: due no more until
        a resume, and visibly waiting).

        Returns the claims (events decoded once, shared between destinations) and, per
        destination, when its next unclaimed delivery comes due (absent: none)."""

    @abstractmethod
    async def renew(self, keys: Sequence[tuple[int, str]], owner: str, until: float) -> None:
        """Extend the lease of claimed deliveries still waiting in this owner's memory."""

    @abstractmethod
    async def record(self, outcomes: Sequence[Outcome], requests: Sequence[RequestExcerpt],
                     owner: str, now: float, plaintext: frozenset[str] = frozenset()) -> None:
        """Write outcomes of every destination together: the Delivery rows, their
        attempts, each request's excerpt once; release the rows' leases; erase an event's
        plaintext once every delivery of a `plaintext` destination is final; keep each
        connection's health (`connection_health`) up to date with the attempts."""

    @abstractmethod
    async def release(self, keys: Sequence[tuple[int, str]], owner: str, now: float) -> None:
        """Hand claimed deliveries back unsent: due now, for whoever claims next."""

    @abstractmethod
    async def pause(self, destination: str, account: str, environment: str,
                    reason: str) -> None: ...

    @abstractmethod
    async def pauses(self) -> list[Pause]: ...

    @abstractmethod
    async def resume(self, destination: str | None = None, account: str | None = None) -> int:
        """Lift pauses; their waiting deliveries become due now, and the connections'
        failure counts (`connection_health`) start over. Returns pauses lifted."""

    @abstractmethod
    async def requeue(self, *, since: str | None = None, destination: str | None = None,
                      statuses: Sequence[str] = ("failed", "dropped"),
                      event_id: str | None = None, account: str | None = None) -> int:
        """Replay: make matching deliveries due now (same event, same event_id); their
        attempt history is kept and the retry policy starts a new round."""

    # --- alerts ---------------------------------------------------------------------------

    @abstractmethod
    async def open_alert(self, kind: str, subject: str, detail: Mapping[str, Any]) -> bool:
        """Open an alert unless one is already open for (kind, subject); True if opened."""

    @abstractmethod
    async def resolve_alert(self, kind: str, subject: str,
                            detail: Mapping[str, Any] | None = None) -> bool:
        """Resolve the open alert for (kind, subject), with the evidence of the recovery
        (None: keep the last); True if there was one."""

    @abstractmethod
    async def alerts(self, *, open_only: bool = False, kind: str | None = None,
                     limit: int = 100, subject: str | None = None) -> list[Alert]:
        """Newest first."""

    @abstractmethod
    async def alert(self, alert_id: int) -> Alert | None: ...

    @abstractmethod
    async def update_alert(self, kind: str, subject: str, detail: Mapping[str, Any],
                           log: bool = False) -> bool:
        """Replace the open alert's evidence; with `log`, add an `updated` entry to its
        history. False if no alert is open for (kind, subject)."""

    @abstractmethod
    async def alert_log(self, *, alert_id: int | None = None, pending: bool = False,
                        limit: int = 100) -> list[AlertLogEntry]:
        """History entries, oldest first: one alert's, or (`pending`) the opened and
        resolved entries not yet sent to the channels."""

    @abstractmethod
    async def mark_notified(self, entry_id: int, result: Mapping[str, Any]) -> None:
        """The channels are done with this entry (each one's result)."""

    # --- search and the numbers behind the detectors ----------------------------------------

    @abstractmethod
    async def search_events(self, query: EventQuery) -> list[StoredEvent]: ...

    @abstractmethod
    async def person_identifiers(self, account: str, person: str,
                                 limit: int = 1000) -> list[str]:
        """The identifiers the identity graph links to this person (root), the root too."""

    @abstractmethod
    async def delivery_queue(self, now: float) -> list[QueueRow]:
        """Pending deliveries per connection (queued or failed, not final)."""

    @abstractmethod
    async def connection_health(self) -> list[ConnectionHealth]: ...

    @abstractmethod
    async def event_counts(self, since: str, until: str) -> dict[tuple[str, str, str], int]:
        """Stored events (any status) per (account, environment, source) received in
        [since, until)."""

    @abstractmethod
    async def order_outcomes(self, since: str, until: str, event_names: Sequence[str],
                             sources: Sequence[str] = ()) -> OrderOutcomes:
        """Mapped events of these names received in [since, until) that one of `sources`
        reported (its own source or a duplicate's; none given: any source), and their
        deliveries by (destination, status, cause)."""

    @abstractmethod
    async def identifier_coverage(self, since: str, until: str,
                                  identifiers: Mapping[str, Identifier],
                                  event_names: Sequence[str] = ()) -> list[CoverageRow]:
        """Per (account, environment, destination, event name): the mapped events received
        in [since, until) routed to the destination (not dropped on purpose), and how many
        carry each identifier."""

    # --- housekeeping ---------------------------------------------------------------------

    @abstractmethod
    async def expire(self, now: float, window_seconds: float) -> int:
        """Drop exact-retry keys and kept decisions older than their window."""
