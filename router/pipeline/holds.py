"""Merge holds: the browser and server halves of one business action delivered once.

A purchase usually arrives twice: the pixel's half (cookies, click ids, IP, user
agent) and the store's webhook (email, phone, address). Sent separately, each
platform gets half the identifiers or the order twice. An event whose canonical type
declares a `hold` therefore waits for its other half — up to the hold, or until the
partner arrives, whichever comes first — when:

- its source declares which half it brings (`ingest.half` in the mapping),
- its account and environment have an enabled source of the other half (no partner
  can come otherwise, so nothing waits in vain), and
- it carries none of the identifiers the other half brings (`merge:` in
  canonical.yaml): a server event that already has the browser's cookies is whole.

When the partner arrives, dedup merges it in and the event is released at once with
the union of identifiers; a lone half is delivered alone when the hold ends.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from router.config.model import CompiledConfig, Environment

OTHER = {"browser": "server", "server": "browser"}


@dataclass(frozen=True)
class Hold:
    until: float  # unix s
    waiting_for: str  # browser | server

    def evidence(self, window: float) -> dict[str, Any]:
        return {"window_seconds": window, "waiting_for": self.waiting_for,
                "until": self.until}


def _has(body: Mapping[str, Any], path: tuple[str, ...]) -> bool:
    node: Any = body
    for key in path:
        if not isinstance(node, Mapping):
            return False
        node = node.get(key)
    return node not in (None, "", [], {})


def carries(config: CompiledConfig, body: Mapping[str, Any], half: str) -> bool:
    """Whether an event (as a dict) already carries any identifier of this half."""
    paths = config.merge.browser if half == "browser" else config.merge.server
    return any(_has(body, p) for p in paths)


def _halves_available(config: CompiledConfig, env: Environment) -> set[str]:
    out = set()
    for name, conn in env.sources.items():
        mapping = config.mappings.get(conn.mapping or name)
        if conn.enabled and mapping is not None and mapping.ingest.half:
            out.add(mapping.ingest.half)
    return out


def hold_for(config: CompiledConfig, env: Environment, body: Mapping[str, Any],
             now: float) -> Hold | None:
    """The hold a new event waits under, or None when it goes at once."""
    definition = config.canonical.get(body.get("event_name") or "")
    if definition is None or not definition.hold_seconds or body.get("status") != "mapped":
        return None
    mapping = config.mappings.get(body.get("source") or "")
    half = mapping.ingest.half if mapping is not None else None
    if half is None:
        return None
    other = OTHER[half]
    if other not in _halves_available(config, env) or carries(config, body, other):
        return None
    return Hold(now + definition.hold_seconds, other)


def complete(config: CompiledConfig, body: Mapping[str, Any]) -> bool:
    """After a merge: both halves' identifiers are present, nothing left to wait for."""
    return carries(config, body, "browser") and carries(config, body, "server")
