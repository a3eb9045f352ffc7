"""Per-message envelope checks: what makes a message unsafe to process, judged first.

Each is a per-message rejection with a stable code (the rest of the batch is kept):

- `invalid_event`: not a JSON object; for the tracking protocol (the Segment-compatible
  API, and webhooks of sources that also serve it), a `messageId` that is not a string
  or a number (a list would become a Python repr as the event id), or a `context` that
  is not an object (batch-level context is merged into it);
- `nesting_too_deep`: containers nested more than MAX_DEPTH levels. Real events nest a
  handful of levels; every later stage (the card screen, mapping, the stored JSON, the
  rendered destination payloads, each wrapping the event a few levels deeper) must be
  able to serialize what it was given, and orjson stops at 255;
- `event_too_large`: more than `server.max_event_bytes` serialized.
"""

from __future__ import annotations

from typing import Any

import orjson

from router.pipeline.guard import Rejection

MAX_DEPTH = 64


def depth_exceeds(value: Any, limit: int) -> bool:
    """Are containers nested more than `limit` levels deep (the top one is level 1)?
    Iterative, and stops as soon as it knows."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, level = stack.pop()
        if level > limit:
            return True
        if isinstance(node, dict):
            stack.extend((child, level + 1) for child in node.values()
                         if isinstance(child, dict | list))
        elif isinstance(node, list):
            stack.extend((child, level + 1) for child in node if isinstance(child, dict | list))
    return False


def check_message(message: Any, *, max_event_bytes: int,
                  tracking_protocol: bool = False) -> Rejection | None:
    """The first envelope problem of one message, or None."""
    if not isinstance(message, dict):
        return Rejection("invalid_event", "an event must be a JSON object")
    try:
        serialized = orjson.dumps(message)
    except orjson.JSONEncodeError:  # only nesting beyond 255 levels can fail here
        return _too_deep()
    if len(serialized) > max_event_bytes:
        return Rejection("event_too_large", f"event exceeds {max_event_bytes} bytes")
    # the count of opening brackets bounds the depth: the walk runs only for the few
    # events with more containers than MAX_DEPTH
    if serialized.count(b"{") + serialized.count(b"[") > MAX_DEPTH and \
            depth_exceeds(message, MAX_DEPTH):
        return _too_deep()
    if tracking_protocol:
        message_id = message.get("messageId")
        if message_id is not None and (isinstance(message_id, bool) or
                                       not isinstance(message_id, str | int | float)):
            return Rejection("invalid_event", "messageId must be a string",
                             "messageId")
        context = message.get("context")
        if context is not None and not isinstance(context, dict):
            return Rejection("invalid_event", "context must be an object", "context")
    return None


def _too_deep() -> Rejection:
    return Rejection("nesting_too_deep",
                     f"the event nests objects or arrays more than {MAX_DEPTH} levels deep")


def scalar_id(message: Any) -> str | int | float | None:
    """The id a rejected message is reported under (messageId, event_id or id), when it
    is a plain value: a list or an object is never echoed as an id."""
    if not isinstance(message, dict):
        return None
    for name in ("messageId", "event_id", "id"):
        value = message.get(name)
        if isinstance(value, str | int | float) and not isinstance(value, bool) and \
                value != "":
            return value
    return None
