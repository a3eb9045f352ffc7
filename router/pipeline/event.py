"""The canonical Event: one business action, whatever source it came from."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

MAPPED = "mapped"
UNMAPPED = "unmapped"


@dataclass(frozen=True)
class Event:
    """A canonical event as the pipeline passes it from stage to stage.

    `pii` holds normalized plaintext identifiers for the length of the pipeline only:
    it is never persisted on the Event (DESIGN §4); destinations that need plaintext
    get it through their pending Delivery.
    """

    event_name: str | None
    event_id: str
    occurred_at: str | None
    received_at: str
    source: str
    source_event: str | None
    account: str
    environment: str
    status: str = MAPPED
    message_id: str | None = None
    user_data: dict[str, Any] = field(default_factory=dict)
    custom_data: dict[str, Any] = field(default_factory=dict)
    context: dict[str, Any] = field(default_factory=dict)
    consent: dict[str, Any] = field(default_factory=dict)
    mapping_version: str = ""
    pii: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def to_dict(self, include_pii: bool = False) -> dict[str, Any]:
        """A plain dict (shallow: the nested dicts are shared, not copied — the pipeline
        builds new ones rather than mutating, and copying dominated the ingest profile)."""
        out = {name: getattr(self, name) for name in _FIELDS}
        if include_pii:
            out["pii"] = self.pii
        return out

    def evolve(self, **changes: Any) -> Event:
        """`dataclasses.replace` without re-running __init__ field by field (several
        evolves per event on the ingest path): a copy of the instance dict, updated."""
        if not changes.keys() <= _ALL_FIELDS:
            return replace(self, **changes)  # raises its TypeError for unknown fields
        new = object.__new__(Event)
        state = new.__dict__
        state.update(self.__dict__)
        state.update(changes)
        return new


_FIELDS = tuple(f.name for f in fields(Event) if f.name != "pii")
_ALL_FIELDS = frozenset(f.name for f in fields(Event))


def event_from_body(body: dict[str, Any]) -> Event:
    """An Event again from its stored body (no plaintext: it was never stored there)."""
    values = {name: body.get(name) for name in _FIELDS}
    for name in ("user_data", "custom_data", "context", "consent"):
        values[name] = values.get(name) or {}
    values["status"] = values.get("status") or MAPPED
    values["mapping_version"] = values.get("mapping_version") or ""
    return Event(**values)
