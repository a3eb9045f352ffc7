"""Routing: which enabled destinations must receive an event, or why not.

Only destinations that list the canonical event get a Delivery ("canonical events not
listed are not sent"). A listed destination whose consent purposes are not granted
gets a `dropped` Delivery with the reason — recorded, never silently missing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from router.config.model import CompiledConfig, Destination, DestinationConnection, Environment
from router.pipeline.consent import decide
from router.pipeline.event import MAPPED, Event

QUEUED = "queued"
DROPPED = "dropped"


def skip_reason(dest: Destination, event: Event) -> str | None:
    """Why a destination takes no Delivery for this event at all (None: it takes one)."""
    if event.status != MAPPED or not event.event_name:
        return "unmapped"
    if event.event_name == "profile_update" and not dest.profiles:
        return "profiles_not_accepted"
    if not dest.platform_event(event.event_name):
        return "not_listed"
    return None


def platform_name(dest: Destination, conn: DestinationConnection, event: Event,
                  body: dict[str, Any] | None = None) -> str | None:
    """The platform's name for the event; a templated name that renders empty (an event
    the advertiser has not configured) means the event is not sent."""
    canonical = event.event_name or ""
    name = dest.platform_event(canonical)
    if not name or "{{" not in name:
        return name
    template = dest.name_templates.get(canonical) or dest.name_templates.get("*")
    if "event" not in name:
        # depends on the connection's settings only (e.g. a per-account conversion rule):
        # the same for every event of this name on this connection
        key = (id(template), id(conn.settings), canonical)
        if key not in _NAME_CACHE:
            # holding the template and settings keeps both ids from being reused
            _NAME_CACHE[key] = (template.render({"settings": conn.settings}, keep_empty=True),
                                (template, conn.settings))
        rendered = _NAME_CACHE[key][0]
    else:
        rendered = template.render({"event": body or event.to_dict(),
                                    "settings": conn.settings}, keep_empty=True)
    return str(rendered) if rendered not in (None, "", False) else None


_NAME_CACHE: dict[tuple[int, int, str], tuple[Any, Any]] = {}


def clear_caches() -> None:
    """After a reload: the old config's templates and settings are gone."""
    _NAME_CACHE.clear()


def condition_reason(dest: Destination, conn: DestinationConnection, event: Event,
                     platform_event: str, body: dict[str, Any]) -> str | None:
    """Why `send_if` keeps this event from the destination, or None."""
    if dest.send_if is None:
        return None
    value = dest.send_if.render({"event": body, "settings": conn.settings,
                                 "platform_event": platform_event}, keep_empty=True)
    if value in (None, "", False, [], {}):
        return f"not sent: send_if ({dest.definition.get('send_if')}) is false for this event"
    return None


@dataclass(frozen=True)
class DeliveryDecision:
    """Whether one destination takes one event, and if not, why (`cause`: not_listed,
    consent, send_if — the categories operators count drops by)."""

    send: bool
    platform_event: str | None = None
    reason: str | None = None
    cause: str | None = None


def decide_delivery(dest: Destination, conn: DestinationConnection, event: Event,
                    body: dict[str, Any]) -> DeliveryDecision:
    """The one decision routing stores and `router explain` previews: listed, templated
    name, consent (first: a merge can never change it, so its drop is final at once),
    then send_if."""
    skip = skip_reason(dest, event)
    if skip:
        return DeliveryDecision(False, reason=skip, cause="not_listed")
    name = platform_name(dest, conn, event, body)
    if not name:
        return DeliveryDecision(False, reason="not_listed", cause="not_listed")
    decision = decide(event.consent, dest.consent_requires, dest.tcf_vendor_id,
                      gpc_restricted=dest.gpc_restricts and conn.gpc == "restrict")
    if not decision.allowed:
        return DeliveryDecision(False, name, decision.reason, "consent")
    condition = condition_reason(dest, conn, event, name, body)
    if condition:
        return DeliveryDecision(False, name, condition, "send_if")
    return DeliveryDecision(True, name)


def route(config: CompiledConfig, env: Environment, event: Event) -> dict[str, dict[str, Any]]:
    """destination -> {status: queued|dropped, reason?, cause?, version} for each Delivery
    owed (destinations that do not list the event, or are configured off for it, take
    none)."""
    routes: dict[str, dict[str, Any]] = {}
    body: dict[str, Any] | None = None
    for name, conn in env.destinations.items():
        dest = config.destinations.get(name)
        if dest is None or not conn.enabled or skip_reason(dest, event) is not None:
            continue
        if body is None:
            body = event.to_dict()
        decision = decide_delivery(dest, conn, event, body)
        if decision.cause == "not_listed":
            continue
        version = dest.version_tag
        routes[name] = {"status": QUEUED, "version": version} if decision.send else \
            {"status": DROPPED, "reason": decision.reason, "cause": decision.cause,
             "version": version}
    return routes


def needs_plaintext(config: CompiledConfig, routes: dict[str, dict[str, Any]]) -> bool:
    return any(config.destinations[name].plaintext_pii for name, r in routes.items()
               if r["status"] == QUEUED and name in config.destinations)
