"""Source message -> canonical Event, driven entirely by a compiled mapping file.

Unmapped messages are not errors: they become Events marked `unmapped` (with the
source name they carried) so operators can see what is arriving and add a mapping.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from router.config.model import FieldRule, SourceMapping
from router.expr.functions import compact, iso_time, to_str
from router.expr.jmes import SEARCH_ERRORS
from router.pipeline.event import MAPPED, UNMAPPED, Event


def _assign(out: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node = out
    for key in path[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            child = node[key] = {}
        node = child
    node[path[-1]] = value


def extract(rules: tuple[FieldRule, ...], message: Any) -> dict[str, Any]:
    """Evaluate every field rule against the message; empty values are omitted."""
    out: dict[str, Any] = {}
    for rule in rules:
        if rule.expr is None:
            continue
        try:
            value = rule.expr.unchecked(message)
        except SEARCH_ERRORS:
            continue
        if value is None:
            continue
        if isinstance(value, dict):
            # a whole-object rule hands us the message's own dict: copy it, so that
            # field rules assigned into it later never write into the input
            value = dict(value)
        path = rule.path
        if len(path) == 2:  # most fields (user_data.email, ...): no loop
            node = out.get(path[0])
            if not isinstance(node, dict):
                node = out[path[0]] = {}
            node[path[1]] = value
        else:
            _assign(out, path, value)
    return compact(out)


def derived_event_id(source: str, message: Any) -> str:
    """A deterministic id for messages that carry none, so a resent message dedups."""
    if isinstance(message, dict):  # request metadata (arrival time, IP) is not the event
        message = {k: v for k, v in message.items() if k != "_meta"}
    digest = hashlib.sha256(source.encode() + b"\0" + orjson.dumps(
        message, option=orjson.OPT_SORT_KEYS, default=str)).hexdigest()
    return f"derived-{digest[:32]}"


def _not_after(occurred_at: str | None, received_at: str) -> str:
    """Event time, clamped: a sender's clock can be ahead, an event cannot be."""
    if not occurred_at or occurred_at > received_at:  # same-format UTC strings sort by time
        return received_at
    return occurred_at


def lookup_name(mapping: SourceMapping, message: Any) -> str | None:
    name = mapping.key.search(message)
    return to_str(name) if name is not None else None


def _event_id_rule(rules: tuple[FieldRule, ...]) -> FieldRule | None:
    return next((r for r in rules if r.path == ("event_id",)), None)


def event_id_of(mapping: SourceMapping, message: dict[str, Any]) -> str:
    """The event id `map_message` gives this message, computed alone: the gateway
    answers with it and checks exact retries by it before anything else is mapped."""
    name = lookup_name(mapping, message)
    rule = mapping.rules.get(name) if name is not None else None
    fields = rule.fields if rule else mapping.default_fields
    id_rule = _EVENT_ID_RULES.get(id(fields))
    if id_rule is None:
        id_rule = _EVENT_ID_RULES[id(fields)] = (_event_id_rule(fields), fields)
    value = None
    if id_rule[0] is not None and id_rule[0].expr is not None:
        try:
            value = id_rule[0].expr.unchecked(message)
        except SEARCH_ERRORS:
            value = None
    return to_str(value) or derived_event_id(mapping.source, message)


# fields tuple id -> (its event_id rule, the tuple itself: holding it keeps the id unique)
_EVENT_ID_RULES: dict[int, tuple[FieldRule | None, tuple[FieldRule, ...]]] = {}


def map_message(mapping: SourceMapping, message: dict[str, Any], *, account: str,
                environment: str, received_at: str) -> Event:
    name = lookup_name(mapping, message)
    rule = mapping.rules.get(name) if name is not None else None
    fields = extract(rule.fields if rule else mapping.default_fields, message)
    event_id = to_str(fields.get("event_id")) or derived_event_id(mapping.source, message)
    consent = fields.get("consent")
    return Event(
        event_name=rule.canonical if rule else None,
        event_id=event_id,
        occurred_at=_not_after(iso_time(fields.get("occurred_at")), received_at),
        received_at=received_at,
        source=mapping.source,
        source_event=name,
        account=account,
        environment=environment,
        status=MAPPED if rule else UNMAPPED,
        message_id=to_str(fields.get("message_id")),
        user_data=fields.get("user_data") or {},
        custom_data=fields.get("custom_data") or {},
        context=fields.get("context") or {},
        consent=consent if isinstance(consent, dict) else ({"raw": consent} if consent else {}),
        mapping_version=mapping.version_tag,
    )


def split_messages(mapping: SourceMapping, document: Any) -> list[Any]:
    """One request body -> its messages (a batch envelope, a JSON array, or one message)."""
    if isinstance(document, list):
        return document
    if mapping.ingest.batch_path is not None and isinstance(document, dict):
        batch = mapping.ingest.batch_path.search(document)
        if isinstance(batch, list):
            return batch
    return [document]
