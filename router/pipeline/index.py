"""What a stored event can be found by, and which identifiers it carries.

Operators look events up by values the event body holds only inside JSON — an order id,
a hashed email or phone, an identifier the identity graph links to a person, or the id
of a duplicate that merged into it — so the processor writes those values as search
terms beside the event. The reports and detectors count how many events carry each
identifier, and which sources reported an event, from its `signals`: one token per
identifier present (user_data keys, `context.ip`, `context.user_agent`) and one per
source (`src:shopify`), its own and its duplicates'. Only hashes and non-personal ids
are indexed; plaintext never is.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from router.config.model import CompiledConfig
from router.store.base import signals_text

MAX_TERM = 256
ALWAYS_INDEXED = ("email_sha256", "phone_sha256")
CONTEXT_SIGNALS = ("ip", "user_agent")


def _present(value: Any) -> bool:
    return value not in (None, "", [], {})


def event_index(config: CompiledConfig, body: Mapping[str, Any],
                evidence: Mapping[str, Any]) -> tuple[tuple[str, ...], str]:
    """(search terms, signals) of one event as stored (after merges)."""
    user_data = body.get("user_data") or {}
    terms: set[str] = set()
    order_id = (body.get("custom_data") or {}).get("order_id")
    if isinstance(order_id, str | int) and not isinstance(order_id, bool) and \
            _present(order_id):
        terms.add(f"order_id:{order_id}")
    for key in (*config.identity_link, *ALWAYS_INDEXED):
        value = user_data.get(key)
        if isinstance(value, str | int) and not isinstance(value, bool) and _present(value):
            terms.add(f"{key}:{value}")
    tokens = [key for key, value in user_data.items() if _present(value)]
    context = body.get("context") or {}
    tokens += [f"context.{key}" for key in CONTEXT_SIGNALS if _present(context.get(key))]
    if body.get("source"):
        tokens.append(f"src:{body['source']}")
    own = body.get("event_id")
    for duplicate in evidence.get("duplicates") or ():
        other = duplicate.get("event_id")
        if other and other != own:
            terms.add(f"event_id:{other}")
        if duplicate.get("source"):
            tokens.append(f"src:{duplicate['source']}")
    return (tuple(sorted(t for t in terms if len(t) <= MAX_TERM)),
            signals_text(t for t in tokens if " " not in t))
