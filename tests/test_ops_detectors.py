"""Each detector opening and resolving its alert over a real SQLite store, with the time
given to it (the service tests show the same on a running `router serve`)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from router.config.model import (
    CompiledConfig,
    DeliveryRateSettings,
    MatchQualitySettings,
    PlatformDownSettings,
    QueueBacklogSettings,
    TrackingStoppedSettings,
)
from router.expr.functions import iso_time, parse_time
from router.ops.detectors import Detectors, Transition
from router.pipeline.commit import commit
from router.store.base import Outcome
from router.store.sqlite import SQLiteStore
from tests.items import item

OWNER = "detector-test"
AT = parse_time("2026-11-20T12:00:00.000Z").timestamp()  # when tests.items events arrive


def configured(config: CompiledConfig, **detectors: Any) -> CompiledConfig:
    """The shipped config with only the given detectors on, set as given."""
    alerts = config.settings.alerts
    off = {name: replace(getattr(alerts, name), enabled=False) for name in (
        "platform_down", "queue_backlog", "tracking_stopped", "delivery_rate_drop",
        "match_quality_drop")}
    alerts = replace(alerts, **{**off, **detectors})
    return replace(config, settings=replace(config.settings, alerts=alerts))


def run(path: Path, body: Any) -> Any:
    async def go() -> Any:
        store = SQLiteStore(f"sqlite:///{path}")
        await store.open()
        try:
            return await body(store)
        finally:
            await store.close()
    return asyncio.run(go())


def changes(transitions: list[Transition], kind: str) -> list[tuple[str, str]]:
    return sorted((t.subject, t.action) for t in transitions if t.kind == kind)


def test_platform_down_opens_on_consecutive_failures_and_resolves_on_a_success(
        shipped_config: CompiledConfig, tmp_path: Path) -> None:
    config = configured(shipped_config, platform_down=PlatformDownSettings(
        window_seconds=60, min_failures=3))

    async def body(store: SQLiteStore) -> dict[str, Any]:
        rows = await commit(store, config, [item(config, f"pd{i}", f"o-pd{i}")
                                            for i in range(4)])
        seqs = [r.seq for r in rows]
        detectors = Detectors(store)
        now = time.time()
        failure = [Outcome(s, "webhook", "failed", True, "HTTP 503: upstream down",
                           due_at=now + 60) for s in seqs[:2]]
        await store.record(failure, [], OWNER, now)
        below = await detectors.run_once(config, now)
        await store.record([Outcome(seqs[2], "webhook", "failed", True,
                                    "HTTP 503: maintenance", due_at=now + 60)], [], OWNER, now)
        opened = await detectors.run_once(config, now)
        [alert] = await store.alerts(open_only=True, kind="platform_down")
        stale = await detectors.run_once(config, now + 120)  # nothing new: left as it is
        await store.record([Outcome(seqs[3], "webhook", "delivered", True)], [], OWNER, now + 1)
        resolved = await detectors.run_once(config, now + 2)
        return {"below": below, "opened": opened, "alert": alert, "stale": stale,
                "resolved": resolved, "after": await store.alert(alert.id),
                "pending": [(e.action, e.subject) for e in await store.alert_log(pending=True)]}

    out = run(tmp_path / "pd.db", body)
    assert out["below"] == []
    assert changes(out["opened"], "platform_down") == [("webhook/demo/production", "opened")]
    detail = out["alert"].detail
    assert detail["last_error"] == "HTTP 503: maintenance"  # the platform's words, verbatim
    assert detail["numbers"]["consecutive_failures"] == 3
    assert sorted(detail["examples"]) == ["pd0", "pd1", "pd2"]
    assert out["stale"] == []
    assert changes(out["resolved"], "platform_down") == [("webhook/demo/production", "resolved")]
    assert out["after"].resolved_at and out["after"].detail["numbers"] == {
        "consecutive_failures": 0}
    assert out["pending"] == [("opened", "webhook/demo/production"),
                              ("resolved", "webhook/demo/production")]


def test_a_paused_connection_stays_open_until_the_resume(
        shipped_config: CompiledConfig, tmp_path: Path) -> None:
    config = configured(shipped_config, platform_down=PlatformDownSettings(min_failures=1))

    async def body(store: SQLiteStore) -> tuple[Any, ...]:
        [row] = await commit(store, config, [item(config, "pz", "o-pz")])
        now = time.time()
        await store.pause("webhook", "demo", "production", "HTTP 401: token expired")
        await store.record([Outcome(row.seq, "webhook", "queued", True, "paused: HTTP 401")],
                           [], OWNER, now)
        detectors = Detectors(store)
        first = await detectors.run_once(config, now)
        [alert] = await store.alerts(open_only=True, kind="platform_down")
        await store.resume("webhook")
        after = await detectors.run_once(config, now + 1)
        return first, alert, after, await store.alerts(open_only=True)

    first, alert, after, still_open = run(tmp_path / "pause.db", body)
    assert changes(first, "platform_down") == []  # the pause had opened it already
    detail = alert.detail
    assert detail["last_error"] == "HTTP 401: token expired" and detail["paused"]
    assert detail["examples"] == ["pz"] and detail["numbers"] == {"waiting_deliveries": 1}
    assert after == [] and still_open == []  # the resume resolved it; nothing reopened it


def test_queue_backlog_opens_for_old_due_deliveries_and_rising_depth(
        shipped_config: CompiledConfig, tmp_path: Path) -> None:
    config = configured(shipped_config, queue_backlog=QueueBacklogSettings(
        max_age_seconds=300, growth_seconds=10, min_depth=3, inbox_max_age_seconds=300))

    async def body(store: SQLiteStore) -> dict[str, Any]:
        detectors = Detectors(store)
        now = time.time()
        arrived = iso_time(now) or ""
        [first] = await commit(store, config, [item(config, "qb0", "o-qb0", received_at=arrived)])
        calm = await detectors.run_once(config, now)
        await commit(store, config, [item(config, f"qb{i}", f"o-qb{i}", received_at=arrived)
                                     for i in (1, 2, 3)])
        rising = await detectors.run_once(config, now + 11)  # 1 -> 4 pending over 11 s
        old = await detectors.run_once(config, now + 400)  # and now they are old too
        [alert] = await store.alerts(open_only=True, subject="webhook/demo/production")
        claimed, _ = await store.claim_due({"webhook": 10}, now + 400, OWNER, 30)
        await store.record([Outcome(d.event.seq, "webhook", "delivered", True)
                            for d in claimed["webhook"]], [], OWNER, now + 400)
        caught_up = await detectors.run_once(config, now + 401)
        return {"calm": calm, "rising": rising, "old": old, "alert": alert,
                "caught_up": caught_up, "seq": first.seq}

    out = run(tmp_path / "qb.db", body)
    assert changes(out["calm"], "queue_backlog") == []
    rising = dict(changes(out["rising"], "queue_backlog"))
    assert rising["webhook/demo/production"] == "opened"
    assert "inbox" not in rising
    updated = dict(changes(out["old"], "queue_backlog"))
    assert updated["webhook/demo/production"] == "updated"  # the reason changed: logged
    numbers = out["alert"].detail["numbers"]
    assert numbers["due"] == 4 and numbers["oldest_due_seconds"] >= 390
    assert "qb0" in out["alert"].detail["examples"]
    assert ("webhook/demo/production", "resolved") in changes(out["caught_up"], "queue_backlog")


def test_tracking_stopped_compares_a_source_with_its_own_past(
        shipped_config: CompiledConfig, tmp_path: Path) -> None:
    config = configured(shipped_config, tracking_stopped=TrackingStoppedSettings(
        window_seconds=60, period_seconds=600, periods=2, min_baseline_events=2, ratio=0.1))
    now = AT + 3600

    def at(seconds_ago: float) -> str:
        return iso_time(now - seconds_ago) or ""

    async def body(store: SQLiteStore) -> dict[str, Any]:
        past = [item(config, f"ts-b{i}", received_at=at(1210 + 10 * i)) for i in (2, 1, 0)] + \
            [item(config, f"ts-a{i}", received_at=at(610 + 10 * i)) for i in (2, 1, 0)]
        await commit(store, config, past)  # in the order they arrived
        detectors = Detectors(store)
        silent = await detectors.run_once(config, now)
        [alert] = await store.alerts(open_only=True, subject="demo/production/segment")
        await commit(store, config, [item(config, "ts-now", received_at=at(5))])
        back = await detectors.run_once(config, now)
        return {"silent": silent, "alert": alert, "back": back}

    out = run(tmp_path / "ts.db", body)
    opened = dict(changes(out["silent"], "tracking_stopped"))
    assert opened["demo/production/segment"] == "opened"
    assert opened["demo/production"] == "opened"  # the account as a whole went quiet too
    assert "demo/production/shopify" not in opened  # no baseline: nothing to judge
    detail = out["alert"].detail
    assert detail["numbers"]["events"] == 0 and detail["numbers"]["baseline"] == 3
    assert detail["last_event_at"] == at(610) and detail["examples"] == ["ts-a0"]
    assert ("demo/production/segment", "resolved") in changes(out["back"], "tracking_stopped")


def test_delivery_rate_drop_is_channel_accuracy_with_intentional_drops_apart(
        shipped_config: CompiledConfig, tmp_path: Path) -> None:
    config = configured(shipped_config, delivery_rate_drop=DeliveryRateSettings(
        window_seconds=3600, settle_seconds=0, threshold=0.9, min_orders=3,
        events=("purchase",), sources=()))
    now = AT + 60

    async def body(store: SQLiteStore) -> dict[str, Any]:
        rows = await commit(store, config, [item(config, f"dr{i}", f"o-dr{i}")
                                            for i in range(4)])
        seqs = [r.seq for r in rows]
        await store.record([Outcome(seqs[0], "webhook", "delivered", True),
                            Outcome(seqs[1], "webhook", "dropped", True,
                                    "HTTP 400: invalid pixel", cause="permanent"),
                            Outcome(seqs[2], "webhook", "failed", True, "HTTP 500",
                                    due_at=now + 60)], [], OWNER, now)
        detectors = Detectors(store)
        low = await detectors.run_once(config, now)
        [alert] = await store.alerts(open_only=True, subject="webhook/demo/production")
        await store.record([Outcome(s, "webhook", "delivered", True) for s in seqs[1:]],
                           [], OWNER, now)
        fixed = await detectors.run_once(config, now)
        return {"low": low, "alert": alert, "fixed": fixed}

    out = run(tmp_path / "dr.db", body)
    assert ("webhook/demo/production", "opened") in changes(out["low"], "delivery_rate_drop")
    detail = out["alert"].detail
    numbers = detail["numbers"]
    assert numbers["accuracy"] == 0.25 and numbers["orders"] == 4
    assert (numbers["delivered"], numbers["lost_permanent"], numbers["pending"]) == (1, 1, 2)
    assert sorted(detail["examples"]) == ["dr1", "dr2", "dr3"]
    assert "webhook" in detail["summary"]
    assert ("webhook/demo/production", "resolved") in changes(out["fixed"], "delivery_rate_drop")


def test_match_quality_drop_when_an_identifier_disappears(
        shipped_config: CompiledConfig, tmp_path: Path) -> None:
    config = configured(shipped_config, match_quality_drop=MatchQualitySettings(
        window_seconds=600, baseline_seconds=3600, min_events=3, min_baseline_share=0.2,
        ratio=0.5, events=("purchase",), identifiers={"fbp": (("fbp",),)}))
    now = AT + 3600

    def at(seconds_ago: float) -> str:
        return iso_time(now - seconds_ago) or ""

    async def body(store: SQLiteStore) -> dict[str, Any]:
        await commit(store, config, [item(config, f"mq-b{i}", f"o-mq-b{i}",
                                          received_at=at(1200 + i)) for i in range(4)])
        await commit(store, config, [item(config, f"mq-c{i}", f"o-mq-c{i}", fbp=False,
                                          received_at=at(100 + i)) for i in range(3)])
        detectors = Detectors(store)
        lost = await detectors.run_once(config, now)
        [alert] = await store.alerts(open_only=True,
                                     subject="webhook/demo/production/purchase/fbp")
        await commit(store, config, [item(config, f"mq-d{i}", f"o-mq-d{i}",
                                          received_at=at(50 + i)) for i in range(3)])
        back = await detectors.run_once(config, now)
        return {"lost": lost, "alert": alert, "back": back}

    out = run(tmp_path / "mq.db", body)
    opened = dict(changes(out["lost"], "match_quality_drop"))
    assert opened["webhook/demo/production/purchase/fbp"] == "opened"
    assert opened["meta/demo/production/purchase/fbp"] == "opened"
    # a destination whose templates never read fbp is not judged on it
    assert not any(s.startswith("ga4/") for s in opened)
    numbers = out["alert"].detail["numbers"]
    assert (numbers["share"], numbers["baseline_share"], numbers["events"]) == (0.0, 1.0, 3)
    assert sorted(out["alert"].detail["examples"]) == ["mq-c0", "mq-c1", "mq-c2"]
    assert ("webhook/demo/production/purchase/fbp", "resolved") in \
        changes(out["back"], "match_quality_drop")


def test_an_alert_whose_subject_left_the_configuration_is_resolved(
        shipped_config: CompiledConfig, tmp_path: Path) -> None:
    config = configured(shipped_config, queue_backlog=QueueBacklogSettings())

    async def body(store: SQLiteStore) -> tuple[list[Transition], Any]:
        await store.open_alert("queue_backlog", "retired/demo/production", {"due": 3})
        transitions = await Detectors(store).run_once(config, time.time())
        return transitions, (await store.alerts(subject="retired/demo/production"))[0]

    transitions, alert = run(tmp_path / "gone.db", body)
    assert changes(transitions, "queue_backlog") == [("retired/demo/production", "resolved")]
    assert "left the configuration" in alert.detail["summary"]
