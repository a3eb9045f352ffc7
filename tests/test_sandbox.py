"""The sandbox imitates every shipped destination and tells overlapping paths apart."""

from __future__ import annotations

import re
from typing import Any

import orjson

from router.config.model import CompiledConfig
from router.delivery.classify import OK, Answer, classify
from router.delivery.sandbox import Sandbox

# A partial success that does not say which rows failed: the request is split instead
# (test_a_partial_success_is_split_until_the_failed_row_is_alone).
SPLIT_TO_FIND = {"tiktok"}


def sample_path(pattern: str) -> str:
    return re.sub(r"\{(\w+)(?::[^{}]+)?\}", lambda m: f"{m.group(1)}-1", pattern)


def test_every_destination_has_a_sandbox(shipped_config: CompiledConfig) -> None:
    sandbox = Sandbox(shipped_config)
    assert {i.destination for i in sandbox.imitations} == set(shipped_config.destinations)


def test_each_route_resolves_to_its_own_destination(shipped_config: CompiledConfig) -> None:
    sandbox = Sandbox(shipped_config)
    for name, dest in shipped_config.destinations.items():
        for route in dest.sandbox["routes"]:
            path = sample_path(route["path"])
            found = sandbox.match(route.get("method", "POST"), path)
            assert found is not None and found.destination == name, (name, path, found)


def _reply_as_answer(reply: dict[str, Any], context: dict[str, Any]) -> Answer:
    body = reply["body"].render(context, keep_empty=True) if reply.get("body") else None
    return Answer(reply.get("status", 200), {"Content-Type": "application/json"},
                  orjson.dumps(body) if body is not None else b"")


def test_per_event_errors_name_the_right_events(shipped_config: CompiledConfig) -> None:
    """Each destination that answers per event inside a 2xx: its own response rules read
    the platform-shaped reply back to exactly the failed positions, and a clean reply
    fails nothing. This is what lets a batch deliver all but its bad events."""
    checked = []
    for imitation in Sandbox(shipped_config).imitations:
        if imitation.event_error is None or imitation.destination in SPLIT_TO_FIND:
            continue
        dest = shipped_config.destinations[imitation.destination]
        count, bad = 4, [1, 3]
        errors = [{"index": i, "message": f"event {i} is wrong"} for i in bad]
        # Awin's imitation echoes the orders it was sent and names the failed ones by
        # reference: the payloads let event_key rules find them again
        payloads = [{"orderReference": f"o-{i}"} for i in range(count)]
        body = {"orders": payloads}
        verdict = classify(dest, _reply_as_answer(imitation.event_error,
                                                  {"count": count, "body": body,
                                                   "errors": errors}), count, payloads)
        assert verdict.kind == OK, (imitation.destination, verdict)
        assert sorted(verdict.event_errors) == bad, (imitation.destination, verdict)
        assert all(f"event {i}" in verdict.event_errors[i] for i in bad), verdict
        clean = classify(dest, _reply_as_answer(imitation.success, {"count": count,
                                                                    "body": body}), count)
        assert clean.kind == OK and clean.event_errors == {}, (imitation.destination, clean)
        checked.append(imitation.destination)
    assert {"pinterest", "linkedin", "awin"} <= set(checked), checked


def test_a_partial_success_is_split_until_the_failed_row_is_alone(
        shipped_config: CompiledConfig) -> None:
    """TikTok's 20001 names no rows in a form we can read: a multi-event 20001 fails the
    request permanently (the worker splits it; TikTok deduplicates the re-sent rows by
    event_id), and a lone event answered 20001 is that failed row."""
    from router.delivery.classify import PERMANENT

    [imitation] = [i for i in Sandbox(shipped_config).imitations if i.destination == "tiktok"]
    dest = shipped_config.destinations["tiktok"]
    errors = [{"index": 0, "message": "event 0 is wrong"}]
    reply = _reply_as_answer(imitation.event_error, {"count": 4, "body": {}, "errors": errors})
    assert classify(dest, reply, 4).kind == PERMANENT
    alone = classify(dest, reply, 1)
    assert alone.kind == OK and alone.event_errors == {0: "event 0 is wrong"}
    clean = classify(dest, _reply_as_answer(imitation.success, {"count": 4, "body": {}}), 4)
    assert clean.kind == OK and clean.event_errors == {}
