"""Operations on a real `router serve`: each alert detector opening and resolving on
injected faults, every channel delivering its notifications to a real local server,
structured logs and metrics.

One server for the module, with detector windows of seconds, its alert channels pointed
at a local HTTP capture server (Slack, webhook) and a local SMTP server (STARTTLS, AUTH),
and one account per test so that their alerts never share a subject.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import signal
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests
import yaml
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from tests.service.conftest import (
    ADMIN_TOKEN,
    Service,
    free_port,
    make_config_dir,
    start_service,
)

CONSENT = {"consent": {"categoryPreferences": {"Advertising": True, "Analytics": True}}}
ACCOUNTS = ("pd", "qb", "ts", "dr", "mq")
HOOK_SECRET = "ops-hook-secret-1"


class CaptureHandler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.captured.append({"path": self.path, "headers": dict(self.headers),  # type: ignore[attr-defined]
                                     "body": body})
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: Any) -> None:
        pass


class Mailbox:
    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append({"to": envelope.rcpt_tos, "content": envelope.content,
                              "tls": session.ssl is not None,
                              "authenticated": session.authenticated})
        return "250 OK"


def check_login(server: Any, session: Any, envelope: Any, mechanism: str,
                auth_data: Any) -> AuthResult:
    ok = isinstance(auth_data, LoginPassword) and auth_data.password == b"mail-pass"
    return AuthResult(success=ok, handled=False, auth_data=auth_data)


class Ops:
    def __init__(self, service: Service, config_dir: Path, capture: ThreadingHTTPServer,
                 mailbox: Mailbox):
        self.service = service
        self.config_dir = config_dir
        self.capture = capture
        self.mailbox = mailbox

    def send(self, account: str, *messages: dict[str, Any]) -> None:
        body = {"batch": [{"type": "track", "context": CONSENT, **m} for m in messages]}
        response = requests.post(self.service.url + "/v1/batch", data=json.dumps(body),
                                 auth=(f"ops-{account}-key", ""), timeout=10,
                                 headers={"Content-Type": "application/json"})
        assert response.status_code == 200, response.text

    def alert(self, kind: str, subject: str, *, resolved: bool = False,
              timeout: float = 25) -> dict[str, Any]:
        def find() -> dict[str, Any] | None:
            alerts = self.service.admin("/admin/alerts", kind=kind, subject=subject).json()
            for alert in alerts["alerts"]:
                if bool(alert["resolved_at"]) == resolved:
                    return alert
            return None
        return self.service.wait_for(find, timeout, f"{kind} {subject} "
                                     f"{'resolved' if resolved else 'open'}")

    def hooks(self, path: str, subject: str, action: str) -> list[dict[str, Any]]:
        out = []
        for request in list(self.capture.captured):  # type: ignore[attr-defined]
            if request["path"] != path:
                continue
            text = request["body"].decode()
            if subject in text and (f"alert.{action}" in text or path == "/slack"):
                out.append(request)
        return out

    def mails(self, subject: str) -> list[str]:
        return [m["content"].decode() for m in self.mailbox.messages
                if subject in m["content"].decode()]

    def fault(self, **spec: Any) -> None:
        self.service.fault("adsink", **spec)

    def clear_faults(self) -> None:
        requests.delete(self.service.sink + "/_sandbox/faults", timeout=10)


def _accounts(folder: Path, sink: str) -> None:
    for name in ACCOUNTS:
        (folder / f"ops-{name}.yaml").write_text(yaml.safe_dump({
            "version": 1, "account": f"ops-{name}", "default_country": "GB",
            "environments": {"production": {
                "sources": {"segment": {"write_key": f"${{OPS_{name.upper()}_KEY:-ops-{name}-key}}"}},
                "destinations": {
                    "adsink": {"settings": {"account_id": f"ops-{name}", "token": "${OPS_TOKEN}",
                                            "base_url": sink}},
                    "webhook": {"settings": {"url": f"{sink}/webhook/ops-{name}",
                                             "secret": "${OPS_TOKEN}"}}}}}}))


@pytest.fixture(scope="module")
def ops(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ops]:
    root = tmp_path_factory.mktemp("ops")
    cert, key = root / "cert.pem", root / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                    str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(str(cert), str(key))
    mailbox, smtp_port = Mailbox(), free_port()
    smtp = Controller(mailbox, hostname="127.0.0.1", port=smtp_port, tls_context=tls,
                      require_starttls=True, authenticator=check_login, auth_require_tls=True)
    smtp.start()
    capture = ThreadingHTTPServer(("127.0.0.1", 0), CaptureHandler)
    capture.captured = []  # type: ignore[attr-defined]
    threading.Thread(target=capture.serve_forever, daemon=True).start()
    hook = f"http://127.0.0.1:{capture.server_address[1]}"

    config_dir = make_config_dir(root / "config")
    sink_port = free_port()
    sink = f"http://127.0.0.1:{sink_port}"
    _accounts(config_dir / "configs" / "accounts", sink)
    router_yaml = config_dir / "configs" / "router.yaml"
    data = yaml.safe_load(router_yaml.read_text())
    data["alerts"].update({
        "interval_seconds": 0.25, "console_url": "http://console.test",
        "channel_retry_base_seconds": 0.2,
        "channels": [
            {"name": "slack", "type": "slack", "url": "${OPS_SLACK_URL}"},
            {"name": "webhook", "type": "webhook", "url": "${OPS_HOOK_URL}",
             "secret": "${OPS_HOOK_SECRET}"},
            {"name": "email", "type": "email", "url": "${OPS_SMTP_URL}",
             "to": "ops@example.test, oncall@example.test", "from": "router@example.test",
             "tls_ca_file": str(cert)},
            {"name": "log", "type": "log"}],
        "detectors": {
            "platform_down": {"window_seconds": 60, "min_failures": 3},
            "queue_backlog": {"max_age_seconds": 60, "growth_seconds": 1.5, "min_depth": 4,
                              "inbox_max_age_seconds": 60},
            "tracking_stopped": {"window_seconds": 1.5, "period_seconds": 1.5, "periods": 1,
                                 "min_baseline_events": 3, "ratio": 0.1},
            "delivery_rate_drop": {"window_seconds": 60, "settle_seconds": 0,
                                   "threshold": 0.9, "min_orders": 3, "events": ["purchase"],
                                   "sources": ["segment"]},
            "match_quality_drop": {**data["alerts"]["detectors"]["match_quality_drop"],
                                   "window_seconds": 1.5, "baseline_seconds": 60,
                                   "min_events": 3, "events": ["purchase"]}}})
    router_yaml.write_text(yaml.safe_dump(data))
    env = {"OPS_SLACK_URL": f"{hook}/slack", "OPS_HOOK_URL": f"{hook}/hook",
           "OPS_HOOK_SECRET": HOOK_SECRET, "OPS_TOKEN": "ops-sink-token",
           "OPS_SMTP_URL": f"smtp://alerts:mail-pass@127.0.0.1:{smtp_port}"}
    service = start_service(config_dir, root / "ops.db", root / "ops.log",
                            ("--log-format", "json", "--log-level", "DEBUG"),
                            extra_env=env, sink_port=sink_port)
    yield Ops(service, config_dir, capture, mailbox)
    service.process.terminate()
    try:
        service.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        service.process.kill()
    capture.shutdown()
    smtp.stop()


def order(tag: str, n: int, **context: Any) -> dict[str, Any]:
    return {"event": "Order Completed", "messageId": f"{tag}-{n}",
            "anonymousId": f"anon-{tag}-{n}",
            "properties": {"order_id": f"{tag}-{n}", "total": 20, "currency": "USD"},
            "context": {**CONSENT, "fbp": f"fb.1.1700000000000.{tag}{n}", **context}}


# --- platform_down, and every channel ---------------------------------------------------

def test_platform_down_opens_on_injected_failures_notifies_every_channel_and_resolves(
        ops: Ops) -> None:
    tag = f"pd-{uuid.uuid4().hex[:8]}"
    subject = "adsink/ops-pd/production"
    ops.fault(status=500, times=-1, match=tag)
    ops.send("pd", *[{"event": "Signed Up", "messageId": f"{tag}-{n}"} for n in range(4)])
    alert = ops.alert("platform_down", subject)
    detail = alert["detail"]
    assert "sandbox: injected 500" in detail["last_error"]  # the platform's own words
    assert detail["numbers"]["consecutive_failures"] >= 3
    assert set(detail["examples"]) <= {f"{tag}-{n}" for n in range(4)} and detail["examples"]
    service = ops.service
    slack = service.wait_for(lambda: ops.hooks("/slack", subject, "opened"), 15, "Slack")
    blocks = orjson.loads(slack[0]["body"])["blocks"]
    assert blocks[0]["text"]["text"] == f"Platform down: {subject}"
    assert any("sandbox: injected 500" in b.get("text", {}).get("text", "") for b in blocks)
    [hook] = service.wait_for(lambda: ops.hooks("/hook", subject, "opened"), 15, "webhook")
    signature = hmac.new(HOOK_SECRET.encode(), hook["headers"]["X-Router-Timestamp"].encode()
                         + b"." + hook["body"], hashlib.sha256).hexdigest()
    assert hook["headers"]["X-Router-Signature"] == f"sha256={signature}"
    mail = service.wait_for(lambda: ops.mails(subject), 15, "an email")[0]
    assert "Subject: [router] Platform down: adsink/ops-pd/production" in mail
    assert "sandbox: injected 500" in mail and "text/html" in mail
    assert all(m["tls"] and m["authenticated"] for m in ops.mailbox.messages)

    ops.clear_faults()
    ops.send("pd", {"event": "Signed Up", "messageId": f"{tag}-ok"})
    resolved = ops.alert("platform_down", subject, resolved=True)
    assert resolved["id"] == alert["id"] and resolved["detail"]["numbers"] == {
        "consecutive_failures": 0}
    service.wait_for(lambda: ops.hooks("/hook", subject, "resolved"), 15, "resolved webhook")
    service.wait_for(lambda: [b for b in ops.hooks("/slack", subject, "")
                              if b"Resolved: Platform down" in b["body"]], 15, "resolved Slack")
    service.wait_for(lambda: [m for m in ops.mails(subject) if "(resolved)" in m], 15,
                     "resolved email")
    history = service.admin(f"/admin/alerts/{alert['id']}").json()["history"]
    assert (history[0]["action"], history[-1]["action"]) == ("opened", "resolved")
    sent = service.wait_for(lambda: service.admin(f"/admin/alerts/{alert['id']}").json()[
        "history"][0]["notified"], 15, "notification results")
    assert sent == {"slack": "sent", "webhook": "sent", "email": "sent", "log": "sent"}


# --- queue_backlog ------------------------------------------------------------------------

def test_queue_backlog_opens_while_a_hanging_platform_falls_behind(ops: Ops) -> None:
    tag = f"qb-{uuid.uuid4().hex[:8]}"
    subject = "adsink/ops-qb/production"
    ops.fault(hang=True, times=-1, match=tag)
    try:
        for n in range(10):  # traffic keeps arriving; the platform answers nothing
            ops.send("qb", {"event": "Signed Up", "messageId": f"{tag}-{n}"})
            time.sleep(0.25)
        alert = ops.alert("queue_backlog", subject)
    finally:
        ops.clear_faults()
    numbers = alert["detail"]["numbers"]
    assert numbers["pending"] >= 4 and numbers["pending_before"] < numbers["pending"]
    assert "pending deliveries rose" in alert["detail"]["summary"]
    ops.alert("queue_backlog", subject, resolved=True, timeout=40)


# --- tracking_stopped ---------------------------------------------------------------------

def test_tracking_stopped_opens_when_a_source_goes_silent_and_resolves_when_it_returns(
        ops: Ops) -> None:
    tag = f"ts-{uuid.uuid4().hex[:8]}"
    subject = "ops-ts/production/segment"
    for n in range(17):  # a steady source: ~5 events a second for 3.2 s
        if n:
            time.sleep(0.2)
        ops.send("ts", {"event": "Signed Up", "messageId": f"{tag}-{n}"})
    silent_since = time.time()  # the last event was acknowledged
    alert = ops.alert("tracking_stopped", subject, timeout=15)
    assert time.time() - silent_since >= 1.4  # not before a whole window of silence
    numbers = alert["detail"]["numbers"]
    assert numbers["events"] == 0 and numbers["baseline"] >= 3
    assert alert["detail"]["examples"] == [f"{tag}-16"]  # the last event before the silence
    ops.send("ts", {"event": "Signed Up", "messageId": f"{tag}-back"})
    ops.alert("tracking_stopped", subject, resolved=True)


# --- delivery_rate_drop ------------------------------------------------------------------

def test_channel_accuracy_drop_opens_on_refused_orders_and_a_replay_resolves_it(
        ops: Ops) -> None:
    tag = f"dr-{uuid.uuid4().hex[:8]}"
    subject = "adsink/ops-dr/production"
    ops.fault(status=400, times=-1, match=tag)
    ops.send("dr", *[order(tag, n) for n in range(4)])
    alert = ops.alert("delivery_rate_drop", subject)
    ops.clear_faults()
    numbers = alert["detail"]["numbers"]
    assert numbers["orders"] == 4 and numbers["accuracy"] < 0.9
    assert numbers["lost_permanent"] + numbers["pending"] == 4 - numbers["delivered"]
    assert "sandbox: injected 400" in (alert["detail"]["last_error"] or "")
    report = ops.service.admin("/admin/reports/channel-accuracy", account="ops-dr",
                               destination="adsink").json()
    [row] = report["rows"]
    assert row["orders"] == 4 and row["lost"].get("permanent", 0) >= 1
    webhook = ops.service.admin("/admin/reports/channel-accuracy", account="ops-dr",
                                destination="webhook").json()["rows"][0]
    assert webhook["accuracy"] == 1.0  # the other destination got every order
    replayed = requests.post(ops.service.url + "/admin/replay", json={
        "account": "ops-dr", "destination": "adsink", "status": ["dropped"]}, timeout=10,
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).json()
    assert replayed["requeued"] >= 1
    ops.alert("delivery_rate_drop", subject, resolved=True)


# --- match_quality_drop -----------------------------------------------------------------

def _reload(ops: Ops, change: Any) -> None:
    mapping = ops.config_dir / "mappings" / "segment.yaml"
    before = ops.service.admin("/healthz").json()["config_hash"]
    mapping.write_text(change(mapping.read_text()))
    ops.service.process.send_signal(signal.SIGHUP)
    ops.service.wait_for(lambda: ops.service.admin("/healthz").json()["config_hash"] != before,
                         15, "the reload")


FBC_RULE = "    fbc: context.fbc || properties.fbc || context.traits.fbc\n"


def test_match_quality_drop_catches_fbc_lost_after_a_mapping_change(ops: Ops) -> None:
    tag = f"mq-{uuid.uuid4().hex[:8]}"
    subject = "webhook/ops-mq/production/purchase/fbc"
    ops.send("mq", *[order(tag, n, fbc=f"fb.1.1700000000000.click{n}") for n in range(4)])
    time.sleep(1.6)  # those become the baseline
    _reload(ops, lambda text: text.replace(FBC_RULE, ""))  # the "checkout migration"
    try:
        ops.send("mq", *[order(tag, n, fbc=f"fb.1.1700000000000.click{n}")
                         for n in range(10, 14)])
        alert = ops.alert("match_quality_drop", subject)
    finally:
        _reload(ops, lambda text: text.replace("    fbp: context.fbp", FBC_RULE +
                                               "    fbp: context.fbp"))
    numbers = alert["detail"]["numbers"]
    assert (numbers["share"], numbers["baseline_share"]) == (0.0, 1.0)
    assert set(alert["detail"]["examples"]) <= {f"{tag}-{n}" for n in range(10, 14)}
    coverage = ops.service.admin("/admin/reports/identifier-coverage", account="ops-mq",
                                 destination="webhook", since="30s").json()
    [row] = coverage["rows"]
    assert row["identifiers"]["fbc"]["count"] == 4 and row["events"] == 8
    time.sleep(1.6)  # the orders without fbc leave the window
    ops.send("mq", *[order(tag, n, fbc=f"fb.1.1700000000000.click{n}") for n in range(20, 24)])
    ops.alert("match_quality_drop", subject, resolved=True)


# --- logs and metrics -------------------------------------------------------------------

def test_every_failure_retry_and_drop_is_one_structured_log_line(ops: Ops) -> None:
    tag = f"log-{uuid.uuid4().hex[:8]}"
    ops.fault(status=503, times=1, match=tag)
    ops.send("pd", {"event": "Signed Up", "messageId": tag})
    service = ops.service

    def lines() -> list[dict[str, Any]]:
        out = []
        for line in service.log.read_text().splitlines():
            if tag in line:
                out.append(json.loads(line))
        return out

    found = service.wait_for(lambda: [r for r in lines() if r.get("event") ==
                                      "delivery.delivered" and r["destination"] == "adsink"],
                             20, "the delivery after the retry")
    records = lines()
    [retry] = [r for r in records if r.get("event") == "delivery.retry"]
    assert (retry["destination"], retry["account"], retry["event_id"], retry["status"],
            retry["attempt"]) == ("adsink", "ops-pd", tag, "failed", 1)
    assert "sandbox: injected 503" in retry["error"] and retry["next_retry_at"]
    assert found[0]["attempt"] == 2 and found[0]["level"] == "DEBUG"
    everything = service.log.read_text()
    assert '"logger":"aiosqlite"' not in everything  # DEBUG is ours, not the libraries'
    metrics = requests.get(service.url + "/metrics", timeout=10).text
    assert 'router_delivery_retries_total{destination="adsink"}' in metrics
    assert 'router_events_received_total{source="segment"}' in metrics
    assert 'router_delivery_queue_depth{destination="adsink",state="due"}' in metrics
    assert 'router_alerts_open{kind="platform_down"}' in metrics
    # the figures the detectors judged, for Prometheus to alert on the same numbers
    assert 'router_channel_accuracy{account="ops-dr",destination="adsink",' \
        'environment="production"} 1.0' in metrics
    assert 'router_identifier_share{account="ops-mq",destination="webhook",' \
        'environment="production",event_name="purchase",identifier="fbc",window=' in metrics
    assert 'router_tracking_events{account="ops-ts",environment="production",' \
        'source="segment",window="baseline"}' in metrics
