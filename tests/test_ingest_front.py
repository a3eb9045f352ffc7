"""The front of ingest as plain functions: the per-message guard, envelope checks, strict
timestamps, the replay cache, and the outbound host policy (with its validation)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import yaml

from router.config.compile import check_config, outbound_entry_problem
from router.config.model import OutboundSettings
from router.delivery.outbound import refusal
from router.gateway.envelope import MAX_DEPTH, check_message, depth_exceeds, scalar_id
from router.gateway.isolate import isolate
from router.pipeline.guard import Rejection
from router.sources.auth import parse_timestamp
from router.sources.replay import ReplayCache
from tests.service.conftest import make_config_dir


def test_isolate_turns_an_unexpected_exception_into_that_messages_rejection(
        caplog: pytest.LogCaptureFixture) -> None:
    def work(message: dict[str, Any]) -> str:
        return message["id"].upper()  # a bug: not every id is a string

    with caplog.at_level(logging.ERROR, logger="router.ingest"):
        outcomes = [isolate(work, m, where=f"message {i}")
                    for i, m in enumerate([{"id": "a"}, {"id": 5}, {"id": "c"}])]
    assert outcomes[0] == "A" and outcomes[2] == "C"
    assert isinstance(outcomes[1], Rejection) and outcomes[1].code == "internal_error"
    assert "message 1" in caplog.text and "AttributeError" in caplog.text
    assert "Traceback" in caplog.text  # logged with its stack trace, for the operator


def _nest(levels: int) -> Any:
    value: Any = "x"
    for _ in range(levels - 1):
        value = [value]
    return {"a": value}


@pytest.mark.parametrize("levels, too_deep", [(MAX_DEPTH, False), (MAX_DEPTH + 1, True),
                                              (300, True)])
def test_nesting_is_judged_exactly(levels: int, too_deep: bool) -> None:
    message = _nest(levels)
    assert depth_exceeds(message, MAX_DEPTH) is too_deep
    problem = check_message(message, max_event_bytes=10**6)
    assert (problem is not None and problem.code == "nesting_too_deep") is too_deep


def test_many_containers_that_are_not_deep_pass_without_fuss() -> None:
    products = [{"id": i, "tags": ["a"], "dims": {"w": 1}} for i in range(200)]
    assert check_message({"properties": {"products": products}}, max_event_bytes=10**6) is None


@pytest.mark.parametrize("message, code", [
    ([1], "invalid_event"), ("x", "invalid_event"),
    ({"messageId": [1]}, "invalid_event"), ({"messageId": {"a": 1}}, "invalid_event"),
    ({"messageId": True}, "invalid_event"), ({"context": "x"}, "invalid_event"),
    ({"p": "x" * 300}, "event_too_large"),
])
def test_envelope_problems_have_stable_codes(message: Any, code: str) -> None:
    problem = check_message(message, max_event_bytes=256, tracking_protocol=True)
    assert problem is not None and problem.code == code


def test_protocol_checks_only_for_the_tracking_protocol() -> None:
    assert check_message({"context": "x", "messageId": [1]}, max_event_bytes=10**6) is None
    assert check_message({"messageId": 12, "context": {}}, max_event_bytes=10**6,
                         tracking_protocol=True) is None


def test_rejected_messages_are_reported_under_plain_ids_only() -> None:
    assert scalar_id({"messageId": [1], "event_id": "e-1"}) == "e-1"
    assert scalar_id({"messageId": {"a": 1}}) is None and scalar_id([1]) is None


@pytest.mark.parametrize("text, expected", [
    ("1763647387", 1763647387.0), (" 1763647387.25 ", 1763647387.25),
    ("2026-11-20T14:03:07Z", 1795183387.0), ("2026-11-20T15:03:07.5+01:00", 1795183387.5),
    ("nan", None), ("inf", None), ("-inf", None), ("1e9", None), ("1_000", None),
    ("+1763647387", None), ("-5", None), ("0x10", None), ("2026-11-20T14:03:07", None),
    ("2026-13-01T00:00:00Z", None), ("\uff11\uff17\uff16\uff13", None), ("", None),
])
def test_timestamps_are_unix_seconds_or_rfc3339_only(text: str, expected: float | None) -> None:
    assert parse_timestamp(text) == expected


def test_replay_cache_forgets_after_its_window_and_stays_bounded() -> None:
    cache = ReplayCache(max_entries=3)
    keys = [ReplayCache.key("segment", bytes([i])) for i in range(5)]
    cache.remember(keys[0], 10, now=0)
    assert cache.seen(keys[0], now=9) and not cache.seen(keys[0], now=10.5)
    for i, key in enumerate(keys[1:]):
        cache.remember(key, 100, now=20 + i)
    assert len(cache) == 3 and not cache.seen(keys[1], now=30)  # the oldest went first
    assert all(cache.seen(k, now=30) for k in keys[2:])
    assert ReplayCache.key("segment", b"s") != ReplayCache.key("shopify", b"s")


def test_outbound_policy_decisions() -> None:
    policy = OutboundSettings(deny_private=True, allow=("127.0.0.1", "*.partner.example"),
                              deny=("10.0.0.0/8", "evil.example"))
    assert refusal(policy, "127.0.0.1") is None  # allowed: the sandbox
    assert refusal(policy, "localhost", "::1") is not None  # private, not allowed
    assert refusal(policy, "metadata", "169.254.169.254") is not None
    assert refusal(policy, "x", "::ffff:192.168.0.1") is not None  # IPv4-mapped
    assert refusal(policy, "x", "100.64.0.1") is not None  # carrier-grade NAT
    assert refusal(policy, "api.partner.example", "192.168.1.1") is None
    assert refusal(policy, "api.partner.example", "10.1.1.1") is not None  # deny wins
    assert refusal(policy, "evil.example", "93.184.216.34") is not None
    assert refusal(policy, "example.com", "93.184.216.34") is None
    off = OutboundSettings()
    assert not off.active and refusal(off, "127.0.0.1") is None


@pytest.mark.parametrize("entry, ok", [
    ("10.0.0.0/8", True), ("::1", True), ("fd00::/8", True), ("127.0.0.1", True),
    ("api.example.com", True), ("*.example.com", True), ("10.0.0.0/33", False),
    ("999.1.1.1", False), ("http://x", False), ("", False), ("a b", False),
])
def test_outbound_entries_are_validated(entry: str, ok: bool) -> None:
    assert (outbound_entry_problem(entry) is None) is ok


def test_router_validate_names_a_bad_outbound_entry(tmp_path: Path) -> None:
    config_dir = make_config_dir(tmp_path / "config", sections={
        "delivery": {"outbound": {"deny_private": True, "allow": ["10.0.0.0/33"]}}})
    config, issues = check_config(str(config_dir))
    assert config is None
    [issue] = [i for i in issues if i.code == "outbound-entry"]
    assert "router.yaml" in issue.file and "10.0.0.0/33" in issue.message
    data = yaml.safe_load((config_dir / "configs" / "router.yaml").read_text())
    data["delivery"]["outbound"]["allow"] = ["127.0.0.1"]
    (config_dir / "configs" / "router.yaml").write_text(yaml.safe_dump(data))
    config, _ = check_config(str(config_dir))
    assert config is not None and config.settings.outbound.allow == ("127.0.0.1",)
