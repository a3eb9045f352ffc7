"""Build prepared items the way the processor does, for tests below the HTTP layer."""

from __future__ import annotations

from router.config.model import CompiledConfig
from router.pipeline.commit import Item
from router.pipeline.prepare import prepare

RECEIVED = "2026-11-20T12:00:00.000Z"


def item(config: CompiledConfig, message_id: str, order_id: str | None = None,
         email: str | None = None, received_at: str = RECEIVED, fbp: bool = True) -> Item:
    """A Segment event; `fbp` gives it the browser half's cookie, so a purchase is whole
    and goes at once instead of waiting for a pixel half (merge holds)."""
    mapping = config.mappings["segment"]
    account = config.accounts["demo"]
    context: dict[str, object] = {"fbp": f"fb.1.1700000000000.{message_id}"} if fbp else {}
    if email:
        context["traits"] = {"email": email}
    message = {"type": "track", "messageId": message_id, "anonymousId": f"a-{message_id}",
               "event": "Order Completed" if order_id else "Signed Up",
               "properties": {"order_id": order_id, "total": 10, "currency": "USD"}
               if order_id else {}, "context": context}
    prepared = prepare(config, mapping, account, "production", message, received_at,
                       routed=False)
    assert prepared.event is not None and prepared.rejection is None
    return Item(prepared.event, prepared.idempotency_key, raw=message)
