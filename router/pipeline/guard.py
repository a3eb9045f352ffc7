"""Reject what must never be stored: events that break their canonical schema, and
anything carrying a payment card number (found by router/pipeline/cards.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from router.config.model import CanonicalEventDef
from router.pipeline.cards import find_card_number, is_card_number, luhn_valid
from router.pipeline.event import Event

__all__ = ["Rejection", "check_pan", "check_schema", "find_card_number", "is_card_number",
           "luhn_valid"]


@dataclass(frozen=True)
class Rejection:
    code: str  # stable: invalid_event | pii_card_number
    message: str
    path: str = ""


def check_pan(message: Any, serialized: bytes | None = None) -> Rejection | None:
    """A rejection when the decoded message holds a payment card number anywhere
    (router/pipeline/cards.py says where and in which forms); None otherwise.

    Pure and cheap on the common case, so it can run on the acknowledgement path of
    every message; `serialized` passes the message's orjson bytes when the caller has
    them."""
    path = find_card_number(message, serialized)
    if path is None:
        return None
    # the value itself is never echoed: it must not reach logs or responses
    return Rejection("pii_card_number", f"a payment card number was found in {path}; "
                     "card numbers are never accepted", path)


def check_schema(event: Event, definition: CanonicalEventDef | None) -> Rejection | None:
    if definition is None:
        return None
    # the compiled validator answers the common case (valid) in about a microsecond; the
    # positioned message comes from python-jsonschema only when something is wrong
    if definition.fast_validator is not None and definition.fast_validator.is_valid(
            event.custom_data):
        return None
    errors = sorted(definition.validator.iter_errors(event.custom_data),
                    key=lambda e: list(map(str, e.absolute_path)))
    if not errors:
        return None
    first = errors[0]
    where = "custom_data" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}"
                                    for p in first.absolute_path)
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return Rejection("invalid_event",
                     f"{event.event_name}: {where}: {first.message}{more}", where)
