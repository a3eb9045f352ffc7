"""The store interface: what the pipeline and admin API need, nothing backend-specific.

The ingest path writes once per group commit: event rows carry their routing decision
(which destinations must receive them, or why not), so no per-destination row is
written at ingest. Delivery rows are written as outcomes arrive; a queued Delivery is
an event whose route says `queued` and which has no outcome yet. Dedup and identity
decisions are made by a caller-supplied planner over rows fetched in one query, so
the store holds no dedup semantics and a PostgreSQL backend can apply the same plan.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class EventRow:
    account: str
    environment: str
    event_id: str
    event_name: str | None
    source: str
    source_event: str | None
    status: str  # mapped | unmapped
    occurred_at: str | None
    received_at: str
    body: dict[str, Any]
    evidence: dict[str, Any]
    routes: dict[str, Any]
    keys: tuple[str, ...]
    release_at: float | None = None  # merge hold: not deliverable before this (unix s)
    pii: dict[str, Any] | None = None  # plaintext for destinations that declare it


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
    # seq -> (body, evidence, routes or None when routing is unchanged)
    updates: dict[int, tuple[Any, ...]] = field(default_factory=dict)
    identity: IdentityChanges = field(default_factory=IdentityChanges)
    results: list[Any] = field(default_factory=list)  # passed back to the caller untouched


@dataclass(frozen=True)
class BatchInput:
    """What the store fetches before planning: keys (scoped per account/env) and ids."""

    keys: dict[tuple[str, str], set[str]]
    identifiers: dict[str, set[str]]  # account -> identifiers


Planner = Callable[[dict[tuple[str, str, str], StoredEvent], dict[str, IdentityView]], WritePlan]


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


@dataclass(frozen=True)
class Outcome:
    """A Delivery's new state, written by a worker (upsert on event_seq, destination)."""

    event_seq: int
    destination: str
    status: str  # queued | delivered | failed | dropped
    attempts: int
    queued_at: str
    destination_version: str
    last_error: str | None = None
    last_attempt_at: str | None = None
    next_retry_at: str | None = None
    due_at: float | None = None  # unix s; None = not due (delivered, dropped, paused)
    latency_ms: float | None = None
    request: Any = None
    response: Any = None


@dataclass(frozen=True)
class DueDelivery:
    event: StoredEvent
    attempts: int
    queued_at: str


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


class Store(ABC):
    """One interface, several backends (SQLite now; PostgreSQL with the same tests)."""

    @abstractmethod
    async def open(self) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def ingest(self, batch: BatchInput, window_seconds: float, now: float,
                     planner: Planner) -> tuple[WritePlan, list[int]]:
        """Fetch what the batch touches, plan, apply in one transaction.

        Returns the plan and the sequence numbers assigned to its inserts, in order."""

    @abstractmethod
    async def get_events(self, event_id: str, account: str | None = None) -> list[StoredEvent]: ...

    @abstractmethod
    async def list_events(self, *, name: str | None = None, source: str | None = None,
                          since: str | None = None, account: str | None = None,
                          status: str | None = None, limit: int = 100) -> list[StoredEvent]: ...

    @abstractmethod
    async def deliveries_for(self, seqs: Sequence[int]) -> list[DeliveryView]: ...

    @abstractmethod
    async def list_deliveries(self, *, status: str | None = None, destination: str | None = None,
                              since: str | None = None, account: str | None = None,
                              limit: int = 100) -> list[DeliveryView]: ...

    @abstractmethod
    async def identity_of(self, account: str, identifiers: Sequence[str]) -> IdentityView: ...

    @abstractmethod
    async def counts(self) -> dict[str, int]: ...

    # --- delivery ----------------------------------------------------------------------

    @abstractmethod
    async def claim_cursor(self, destination: str, owner: str, lease_seconds: float) -> int | None:
        """The destination's log position if this owner holds (or took) its lease."""

    @abstractmethod
    async def read_after(self, seq: int, limit: int) -> list[StoredEvent]: ...

    @abstractmethod
    async def claim_due(self, destination: str, now: float, limit: int,
                        lease_seconds: float) -> list[DueDelivery]:
        """Deliveries due for (re)sending; claimed by pushing their due time out."""

    @abstractmethod
    async def record(self, outcomes: Sequence[Outcome], *, destination: str,
                     cursor: int | None = None, owner: str | None = None,
                     scrub: dict[int, tuple[str, ...]] | None = None) -> None:
        """Upsert outcomes and move the cursor in one transaction. `scrub`: events whose
        plaintext PII is erased once these destinations' deliveries are final."""

    @abstractmethod
    async def pause(self, destination: str, account: str, environment: str,
                    reason: str) -> None: ...

    @abstractmethod
    async def pauses(self) -> list[Pause]: ...

    @abstractmethod
    async def resume(self, destination: str | None = None, account: str | None = None) -> int:
        """Lift pauses; their waiting deliveries become due now. Returns pauses lifted."""

    # --- alerts ------------------------------------------------------------------------

    @abstractmethod
    async def open_alert(self, kind: str, subject: str, detail: Mapping[str, Any]) -> bool:
        """Open an alert unless one is already open for (kind, subject); True if opened."""

    @abstractmethod
    async def resolve_alert(self, kind: str, subject: str) -> bool:
        """Resolve the open alert for (kind, subject); True if there was one."""

    @abstractmethod
    async def alerts(self, *, open_only: bool = False, kind: str | None = None,
                     limit: int = 100) -> list[Alert]:
        """Newest first."""

    @abstractmethod
    async def requeue(self, *, since: str | None = None, destination: str | None = None,
                      statuses: Sequence[str] = ("failed", "dropped"),
                      event_id: str | None = None, account: str | None = None) -> int:
        """Replay: make matching deliveries due now (same event, same event_id)."""
