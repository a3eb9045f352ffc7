"""The alerts section of router.yaml: a channel that is on must be able to send, and
detectors name what exists; setting one environment variable turns a channel on."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from router.config.compile import check_config

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    for sub in ("configs", "mappings", "destinations.d"):
        shutil.copytree(REPO / sub, tmp_path / sub)
    return tmp_path


def issues_of(root: Path) -> list[tuple[str, str]]:
    _, issues = check_config(str(root))
    return [(i.code, i.message) for i in issues if i.severity == "error"]


def test_the_shipped_channels_are_off_until_their_variables_are_set(
        config_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ROUTER_ALERT_SLACK_WEBHOOK_URL", "ROUTER_ALERT_WEBHOOK_URL",
                 "ROUTER_ALERT_SMTP_URL"):
        monkeypatch.delenv(name, raising=False)
    config, _ = check_config(str(config_dir))
    assert config is not None
    assert [c.name for c in config.settings.alerts.channels if c.enabled] == ["log"]
    monkeypatch.setenv("ROUTER_ALERT_SLACK_WEBHOOK_URL", "https://hooks.slack.test/T/B/X")
    monkeypatch.setenv("ROUTER_ALERT_SMTP_URL", "smtp://u:p@smtp.example.test:587")
    monkeypatch.setenv("ROUTER_ALERT_EMAIL_TO", "a@example.test, b@example.test")
    monkeypatch.setenv("ROUTER_ALERT_EMAIL_FROM", "router@example.test")
    config, _ = check_config(str(config_dir))
    assert config is not None
    on = {c.name: c for c in config.settings.alerts.channels if c.enabled}
    assert sorted(on) == ["email", "log", "slack"]
    assert on["email"].to == ("a@example.test", "b@example.test")


def test_a_channel_that_is_on_but_cannot_send_is_a_config_error(
        config_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROUTER_ALERT_WEBHOOK_URL", "https://pager.example.test/hook")
    monkeypatch.delenv("ROUTER_ALERT_WEBHOOK_SECRET", raising=False)
    monkeypatch.setenv("ROUTER_ALERT_SMTP_URL", "smtp://u:p@smtp.example.test:587")
    monkeypatch.delenv("ROUTER_ALERT_EMAIL_TO", raising=False)
    monkeypatch.delenv("ROUTER_ALERT_EMAIL_FROM", raising=False)
    monkeypatch.setenv("ROUTER_ALERT_SLACK_WEBHOOK_URL", "hooks.slack.test/no-scheme")
    found = issues_of(config_dir)
    assert ("invalid-channel", "alert channel 'webhook' posts to a webhook but has no "
            "signing secret") in found
    assert ("invalid-channel", "alert channel 'email' sends mail but has no recipients") in found
    assert ("invalid-channel", "alert channel 'email' sends mail but has no From address") in found
    assert ("invalid-channel", "alert channel 'slack': url must be http:// or https://host...") \
        in found


def test_detectors_name_canonical_events_and_keep_to_their_ranges(config_dir: Path) -> None:
    path = config_dir / "configs" / "router.yaml"
    shipped = yaml.safe_load(path.read_text())
    data = yaml.safe_load(path.read_text())
    data["alerts"]["detectors"]["delivery_rate_drop"]["events"] = ["purchased"]
    path.write_text(yaml.safe_dump(data))
    assert ("unknown-event", "unknown canonical event 'purchased'") in issues_of(config_dir)
    data = shipped
    data["alerts"]["detectors"]["platform_down"]["min_failures"] = 0
    data["alerts"]["detectors"]["match_quality_drop"]["identifiers"]["bad"] = ["body.fbc"]
    path.write_text(yaml.safe_dump(data))
    messages = " ".join(m for _, m in issues_of(config_dir))
    assert "min_failures: 0 is less than the minimum of 1" in messages
    assert "identifiers.bad.0: 'body.fbc' is not valid" in messages
