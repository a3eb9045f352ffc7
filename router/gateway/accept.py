"""Stage 1: the gateway's acknowledgement of one authenticated request.

Each message is checked alone — its envelope (a JSON object, its size), the card-number
screen (a card number is never stored, not even in the inbox) — and given the event id
the processor will give it. The good messages of the request are appended to the inbox
in one group-committed write; the answer says, per message, `accepted`, `duplicate`
(an exact retry: the same event id acknowledged within the dedup window) or a 4xx code.
Everything heavier (mapping, schema, identity, dedup, consent, routing) happens after
the answer, in stage 2; `?wait=true` holds the answer until stage 2 has decided.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from router.config.model import CompiledConfig, SourceMapping
from router.gateway.appender import Appender
from router.gateway.waiters import Waiters
from router.pipeline.guard import Rejection, check_pan
from router.pipeline.mapping import event_id_of
from router.store.base import InboxAppend, partition_of

log = logging.getLogger("router.gateway")


@dataclass(frozen=True)
class Verdict:
    """One message after the gateway's checks: its event id, or why it is refused."""

    event_id: str | None
    rejection: Rejection | None = None


def message_id_hint(message: Any) -> str | None:
    """An id to name a refused message by in the answer (never a card number: a
    message carrying one is refused before anything reads it)."""
    if isinstance(message, dict):
        for key in ("messageId", "event_id", "id"):
            value = message.get(key)
            if isinstance(value, str | int) and not isinstance(value, bool):
                return str(value)
    return None


def check_message(config: CompiledConfig, mapping: SourceMapping, message: Any,
                  meta: Mapping[str, Any]) -> Verdict:
    """The gateway's checks on one message; never raises for client input."""
    if not isinstance(message, dict):
        return Verdict(None, Rejection("invalid_event", "an event must be a JSON object"))
    limit = config.settings.max_event_bytes
    try:
        size = len(orjson.dumps(message))
    except (orjson.JSONEncodeError, TypeError):
        return Verdict(None, Rejection("invalid_event", "the event cannot be stored as JSON "
                                       "(nested too deeply)"))
    if size > limit:
        return Verdict(None, Rejection("event_too_large", f"event exceeds {limit} bytes"))
    pan = check_pan(message)
    if pan is not None:
        return Verdict(None, pan)
    return Verdict(event_id_of(mapping, {**message, "_meta": meta}))


def guarded_check(config: CompiledConfig, mapping: SourceMapping, message: Any,
                  meta: Mapping[str, Any]) -> Verdict:
    """`check_message`, with an unexpected exception refusing only this message."""
    try:
        return check_message(config, mapping, message, meta)
    except Exception:
        log.exception("checking a %s message failed", mapping.source)
        return Verdict(None, Rejection("internal_error", "the router failed on this event "
                                       "(see the logs); the other events are not affected"))


@dataclass(frozen=True)
class Answer:
    status: int
    body: dict[str, Any]
    results: list[dict[str, Any]]
    # the gateway's own answers (accepted, duplicate = exact retry, rejected), before a
    # ?wait=true replaced them with stage 2's decisions: what the gateway is counted by
    acknowledged: list[dict[str, Any] | None] | None = None


async def accept(config: CompiledConfig, appender: Appender, waiters: Waiters,
                 mapping: SourceMapping, account: str, environment: str,
                 messages: Sequence[Any], meta: Mapping[str, Any], received_at: str,
                 wait: bool = False) -> Answer:
    """Screen, append and answer one request's messages (all of one account)."""
    meta_full = {**meta, "received_at": received_at}
    results: list[dict[str, Any] | None] = [None] * len(messages)
    kept: list[int] = []
    event_ids: list[str] = []
    for index, message in enumerate(messages):
        verdict = guarded_check(config, mapping, message, meta_full)
        if verdict.rejection is not None:
            results[index] = {"event_id": message_id_hint(message), "status": "rejected",
                              "code": verdict.rejection.code,
                              "reason": verdict.rejection.message}
            continue
        assert verdict.event_id is not None
        kept.append(index)
        event_ids.append(verdict.event_id)
    decided = True
    acknowledged = results
    if kept:
        appended = await appender.submit(InboxAppend(
            partition=partition_of(account, config.settings.partitions), account=account,
            environment=environment, source=mapping.source, received_at=received_at,
            meta=dict(meta), event_ids=tuple(event_ids),
            messages=tuple(messages[i] for i in kept), wait=wait))
        for index, event_id, duplicate in zip(kept, event_ids, appended.duplicates,
                                              strict=True):
            results[index] = {"event_id": event_id,
                              "status": "duplicate" if duplicate else "accepted"}
        if wait:
            acknowledged = list(results)
            decisions = await waiters.wait(appended.inbox_id,
                                           config.settings.wait_timeout_seconds)
            if decisions is None:
                decided = False
            else:
                for decision in decisions:
                    position = decision.pop("position", None)
                    if isinstance(position, int) and 0 <= position < len(kept):
                        results[kept[position]] = decision
    final = [r for r in results if r is not None]
    body: dict[str, Any] = {"results": final}
    if wait and not decided:
        body["decided"] = False  # stage 2 is behind; the events are stored all the same
    rejected = [r for r in final if r["status"] == "rejected"]
    if final and len(rejected) == len(final):
        first = rejected[0]
        return Answer(422, {"error": {"code": first["code"], "message": first["reason"]},
                            **body}, final, acknowledged)
    return Answer(200, body, final, acknowledged)
