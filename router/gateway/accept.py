"""Stage 1: the gateway's acknowledgement of one authenticated request.

Each message is checked alone — its envelope (a JSON object, its size and nesting, the
types of its id and context), the card-number screen (a card number is never stored, not
even in the inbox) — and given the event id the processor will give it; an unexpected
failure on one message rejects that message alone (`isolate`). The good messages of the
request are appended to the inbox in one group-committed write; the answer says, per
message, `accepted`, `duplicate` (an exact retry: the same event id acknowledged within
the dedup window) or a 4xx code. Everything heavier (mapping, schema, identity, dedup,
consent, routing) happens after the answer, in stage 2; `?wait=true` holds the answer
until stage 2 has decided.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from router.config.model import CompiledConfig, SourceMapping
from router.gateway.appender import Appender
from router.gateway.envelope import check_message as check_envelope
from router.gateway.envelope import scalar_id
from router.gateway.isolate import isolate
from router.gateway.waiters import Waiters
from router.pipeline.guard import Rejection, check_pan
from router.pipeline.mapping import event_id_of
from router.store.base import InboxAppend, partition_of

Adjust = Callable[[dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class Verdict:
    """One message after the gateway's checks: its event id and the message to store
    (the request's adjustments applied), or why it is refused."""

    event_id: str | None
    message: Any = None
    rejection: Rejection | None = None


def screen_message(config: CompiledConfig, mapping: SourceMapping, message: Any,
                   meta: Mapping[str, Any], adjust: Adjust | None = None,
                   tracking_protocol: bool = False) -> Verdict:
    """The gateway's checks on one message: the envelope first, then the request's
    adjustments (skew correction, the batch's context), the card screen over what will
    be stored, and the event id."""
    problem = check_envelope(message, max_event_bytes=config.settings.max_event_bytes,
                             tracking_protocol=tracking_protocol)
    if problem is not None:
        return Verdict(None, rejection=problem)
    if adjust is not None:
        message = adjust(message)
    pan = check_pan(message)
    if pan is not None:
        return Verdict(None, rejection=pan)
    return Verdict(event_id_of(mapping, {**message, "_meta": meta}), message)


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
                 wait: bool = False, adjust: Adjust | None = None) -> Answer:
    """Screen, append and answer one request's messages (all of one account)."""
    meta_full = {**meta, "received_at": received_at}
    tracking_protocol = "tracking_api" in mapping.ingest.endpoints
    results: list[dict[str, Any] | None] = [None] * len(messages)
    kept: list[int] = []
    event_ids: list[str] = []
    stored: list[Any] = []
    for index, message in enumerate(messages):
        verdict = isolate(screen_message, config, mapping, message, meta_full, adjust,
                          tracking_protocol,
                          where=f"message {index} of a {mapping.source} request")
        rejection = verdict if isinstance(verdict, Rejection) else verdict.rejection
        if rejection is not None:
            results[index] = {"event_id": scalar_id(message), "status": "rejected",
                              "code": rejection.code, "reason": rejection.message}
            continue
        assert isinstance(verdict, Verdict) and verdict.event_id is not None
        kept.append(index)
        event_ids.append(verdict.event_id)
        stored.append(verdict.message)
    decided = True
    acknowledged = results
    if kept:
        appended = await appender.submit(InboxAppend(
            partition=partition_of(account, config.settings.partitions), account=account,
            environment=environment, source=mapping.source, received_at=received_at,
            meta=dict(meta), event_ids=tuple(event_ids), messages=tuple(stored), wait=wait))
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
