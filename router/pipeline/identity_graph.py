"""The identity graph: union-find over one account's identifiers, one batch at a time.

The store fetches the roots of the identifiers a batch carries (and those roots'
profiles); this graph links what each event carries, merges clusters an event joins,
and enriches the event with what its person's profile knows. The changes go back to
the store in the batch's transaction. One processor owns an account's partition at a
time, so no other process changes these links meanwhile.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from router.config.model import CompiledConfig
from router.pipeline.event import Event
from router.store.base import IdentityChanges, IdentityView

SEP = "\x1f"


@dataclass
class IdentityGraph:
    """Union-find over one account's identifiers, seeded from the store for a batch."""

    account: str
    view: IdentityView
    changes: IdentityChanges
    parent: dict[str, str] = field(default_factory=dict)

    def find(self, ident: str) -> str | None:
        root = self.parent.get(ident) or self.view.roots.get(ident)
        while root is not None and root in self.parent and self.parent[root] != root:
            root = self.parent[root]
        return root

    def finalize(self) -> None:
        """Point every written link and re-point at its final root."""
        prefix = f"{self.account}{SEP}"
        for key in list(self.changes.links):
            if key.startswith(prefix):
                self.changes.links[key] = self.find(key[len(prefix):]) or self.changes.links[key]
        for key in list(self.changes.repoint):
            if key.startswith(prefix):
                self.changes.repoint[key] = self.find(key[len(prefix):]) or self.changes.repoint[key]

    def profile(self, root: str) -> dict[str, Any]:
        key = f"{self.account}{SEP}{root}"
        if key in self.changes.profiles:
            return self.changes.profiles[key]
        return dict(self.view.profiles.get(root, {}))

    def link(self, idents: list[str], attrs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        roots = sorted({r for r in (self.find(i) for i in idents) if r is not None})
        root = roots[0] if roots else idents[0]
        profile: dict[str, Any] = {}
        for other in reversed(roots):  # the oldest (smallest) root's values win ties
            profile.update(self.profile(other))
        for other in roots[1:]:
            self.parent[other] = root
            self.changes.repoint[f"{self.account}{SEP}{other}"] = root
            self.changes.profiles.pop(f"{self.account}{SEP}{other}", None)
            self.changes.drop_profiles.add(f"{self.account}{SEP}{other}")
        self.parent.setdefault(root, root)
        for ident in idents:
            key = f"{self.account}{SEP}{ident}"
            if ident not in self.view.roots and key not in self.changes.links:
                if ident != root:
                    self.parent[ident] = root
                self.changes.links[key] = root
        changed = bool(roots[1:]) or not roots
        for key, value in attrs.items():
            if profile.get(key) != value:
                profile[key] = value
                changed = True
        if changed:
            self.changes.profiles[f"{self.account}{SEP}{root}"] = profile
            self.changes.drop_profiles.discard(f"{self.account}{SEP}{root}")
        return root, profile


def identifiers(config: CompiledConfig, event: Event) -> list[str]:
    return [f"{k}:{event.user_data[k]}" for k in config.identity_link
            if event.user_data.get(k) not in (None, "")]


def enrich(config: CompiledConfig, graphs: dict[str, IdentityGraph],
           event: Event) -> tuple[Event, dict[str, Any]]:
    """Link the event's identifiers and fill what its person's profile knows."""
    idents = identifiers(config, event)
    if not idents:
        return event, {}
    graph = graphs[event.account]
    attrs = {k: event.user_data[k] for k in config.identity_enrich
             if event.user_data.get(k) not in (None, "")}
    root, profile = graph.link(idents, attrs)
    added = {k: v for k, v in profile.items()
             if k in config.identity_enrich and event.user_data.get(k) in (None, "")}
    evidence: dict[str, Any] = {"person": root}
    if added:
        evidence["enriched"] = sorted(added)
        event = event.evolve(user_data={**event.user_data, **added})
    return event, evidence
