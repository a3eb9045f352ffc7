"""The stateless front of the pipeline: map -> guard -> identity for one message.

Shared by `router explain`, `router test` and the ingest service so that what a
tracking engineer sees locally is exactly what production does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from router.config.model import Account, CompiledConfig, SourceMapping
from router.pipeline.consent import normalize_consent
from router.pipeline.event import MAPPED, Event
from router.pipeline.guard import Rejection, check_pan, check_schema
from router.pipeline.identity import normalize_identity
from router.pipeline.mapping import map_message
from router.pipeline.routing import route


@dataclass(frozen=True)
class Prepared:
    event: Event | None
    rejection: Rejection | None = None
    routes: dict[str, Any] | None = None
    idempotency_key: str | None = None

    @property
    def status(self) -> str:
        if self.rejection is not None:
            return "rejected"
        assert self.event is not None
        return "accepted" if self.event.status == MAPPED else "unmapped"


def prepare(config: CompiledConfig, mapping: SourceMapping, account: Account, environment: str,
            message: Any, received_at: str, *, screened: bool = False,
            routed: bool = True) -> Prepared:
    """`screened`: the gateway already screened the message for card numbers;
    `routed=False`: stage 2 routes later, over the enriched and merged event."""
    if not isinstance(message, dict):
        return Prepared(None, Rejection("invalid_event", "an event must be a JSON object"))
    if not screened:
        pan = check_pan(message)
        if pan is not None:
            return Prepared(None, pan)
    event = map_message(mapping, message, account=account.name, environment=environment,
                        received_at=received_at)
    if event.status == MAPPED:
        rejection = check_schema(event, config.canonical.get(event.event_name or ""))
        if rejection is not None:
            return Prepared(event, rejection)
    event = normalize_identity(event, account.default_country, config.identifier_variants)
    env = account.environments[environment]
    # the visitor's country, else the environment's configured region, else the
    # account's home country: the best available guess at which law applies
    region = (event.user_data.get("country") or "").upper() or env.consent_region or \
        account.default_country
    consent = normalize_consent(event.consent, config.consent,
                                gpc=bool(event.context.get("gpc")), region=region)
    if "gpc" in consent["signals"] and not event.context.get("gpc"):
        # a GPC flag inside the source's consent object: templates read one place
        # (event.context.gpc) to set restricted-processing flags
        event = event.evolve(context={**event.context, "gpc": True})
    event = event.evolve(consent=consent)
    idempotency = mapping.ingest.idempotency.search(message) if mapping.ingest.idempotency else None
    return Prepared(event, None, route(config, env, event) if routed else None,
                    str(idempotency) if idempotency not in (None, "") else None)
