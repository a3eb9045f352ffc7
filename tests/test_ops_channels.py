"""Alert channels against real local servers: an HTTP capture server for Slack and the
webhook, a real SMTP server (aiosmtpd) with STARTTLS and AUTH for email; and the
notifier retrying a failing channel with backoff without holding up the others."""

from __future__ import annotations

import asyncio
import email
import email.policy
import hashlib
import hmac
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from router.config.model import AlertSettings, ChannelSpec
from router.ops.channels import ChannelError, Notice, send
from router.ops.notify import Notifier
from router.store.base import Alert, AlertLogEntry
from router.store.sqlite import SQLiteStore

DETAIL = {"summary": "meta failed 12 attempt(s) in a row for acme/production",
          "destination": "meta", "account": "acme", "environment": "production",
          "last_error": "HTTP 400: (#100) Invalid parameter <fbc> & co",
          "numbers": {"consecutive_failures": 12, "min_failures": 10},
          "window": {"since": "2026-11-20T11:45:00.000Z", "until": "2026-11-20T12:00:00.000Z"},
          "examples": ["ord-1001", "ord-1002"], "action": "check the pixel id"}
ALERT = Alert(7, "platform_down", "meta/acme/production", "2026-11-20T11:58:00.000Z", None,
              DETAIL)
OPENED = AlertLogEntry(70, 7, "platform_down", "meta/acme/production",
                       "2026-11-20T11:58:00.000Z", "opened", DETAIL)
CONSOLE = "https://router.example.test"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Capture:
    """A loopback HTTP server recording what it is sent; answers `statuses` in turn (then
    200), or never answers when `hang`."""

    statuses: list[int] = field(default_factory=list)
    hang: bool = False
    requests: list[dict[str, Any]] = field(default_factory=list)
    runner: web.AppRunner | None = None
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append({"path": request.path, "headers": dict(request.headers),
                              "body": body, "at": time.monotonic()})
        if self.hang:
            await asyncio.sleep(3600)
        status = self.statuses.pop(0) if self.statuses else 200
        return web.json_response({"ok": status == 200}, status=status)

    async def __aenter__(self) -> Capture:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self.runner.setup()
        port = free_port()
        await web.TCPSite(self.runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}/hook"
        return self

    async def __aexit__(self, *_: Any) -> None:
        assert self.runner is not None
        await self.runner.cleanup()


async def send_one(spec: ChannelSpec, notice: Notice) -> None:
    async with aiohttp.ClientSession() as session:
        await send(spec, notice, session)


def test_slack_gets_block_kit_with_the_platform_error_numbers_and_links() -> None:
    async def go() -> dict[str, Any]:
        async with Capture() as capture:
            await send_one(ChannelSpec("slack", "slack", capture.url),
                           Notice(ALERT, OPENED, CONSOLE))
        return orjson.loads(capture.requests[0]["body"])

    payload = asyncio.run(go())
    blocks = payload["blocks"]
    assert blocks[0] == {"type": "header", "text": {
        "type": "plain_text", "text": "Platform down: meta/acme/production", "emoji": True}}
    assert "12 attempt(s) in a row" in blocks[1]["text"]["text"]
    facts = [f["text"] for f in blocks[2]["fields"]]
    assert "*Where*\ndestination meta, account acme, environment production" in facts
    assert "*Since*\n2026-11-20T11:58:00.000Z" in facts
    assert "*consecutive_failures*\n12" in facts
    error = next(b for b in blocks if "Platform error" in b.get("text", {}).get("text", ""))
    # verbatim, with only Slack's own escaping of & < >
    assert "HTTP 400: (#100) Invalid parameter &lt;fbc&gt; &amp; co" in error["text"]["text"]
    links = blocks[-1]["elements"][0]["text"]
    assert f"<{CONSOLE}/console/alerts/7|Open in the console>" in links
    assert f"<{CONSOLE}/console/events/ord-1001|ord-1001>" in links
    assert payload["text"].startswith("[ALERT] Platform down: meta/acme/production")


def test_webhook_document_is_signed_like_the_outbound_webhook_destination() -> None:
    resolved = replace(OPENED, id=71, action="resolved", at="2026-11-20T12:10:00.000Z",
                       detail={**DETAIL, "summary": "meta accepts requests again"})

    async def go() -> dict[str, Any]:
        async with Capture() as capture:
            await send_one(ChannelSpec("hook", "webhook", capture.url, secret="s3cret-hook"),
                           Notice(replace(ALERT, resolved_at=resolved.at), resolved))
        return capture.requests[0]

    request = asyncio.run(go())
    headers, body = request["headers"], request["body"]
    expected = hmac.new(b"s3cret-hook", headers["X-Router-Timestamp"].encode() + b"." + body,
                        hashlib.sha256).hexdigest()
    assert headers["X-Router-Signature"] == f"sha256={expected}"
    document = orjson.loads(body)
    assert document["type"] == "alert.resolved"
    assert document["alert"]["resolved_at"] == "2026-11-20T12:10:00.000Z"
    assert document["alert"]["detail"]["summary"] == "meta accepts requests again"
    assert document["alert"]["kind"] == "platform_down"


# --- email ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (the test SMTP server's STARTTLS)."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                    str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True,
                   capture_output=True)
    return cert, key


class Mailbox:
    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append({"from": envelope.mail_from, "to": envelope.rcpt_tos,
                              "content": envelope.content, "tls": session.ssl is not None,
                              "login": session.auth_data.login if session.authenticated
                              and isinstance(session.auth_data, LoginPassword) else None})
        return "250 OK"


def check_login(server: Any, session: Any, envelope: Any, mechanism: str,
                auth_data: Any) -> AuthResult:
    ok = isinstance(auth_data, LoginPassword) and \
        (auth_data.login, auth_data.password) == (b"alerts", b"p@ss word")
    return AuthResult(success=ok, handled=False, auth_data=auth_data)


@pytest.fixture
def smtp_server(tls_files: tuple[Path, Path]) -> Iterator[tuple[Mailbox, int]]:
    import ssl

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(tls_files[0]), str(tls_files[1]))
    mailbox, port = Mailbox(), free_port()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port, tls_context=context,
                            require_starttls=True, authenticator=check_login,
                            auth_require_tls=True)
    controller.start()
    yield mailbox, port
    controller.stop()


def test_email_goes_over_starttls_with_auth_in_text_and_html(
        smtp_server: tuple[Mailbox, int], tls_files: tuple[Path, Path]) -> None:
    mailbox, port = smtp_server
    spec = ChannelSpec("email", "email", f"smtp://alerts:p%40ss%20word@127.0.0.1:{port}",
                       to=("ops@example.test", "oncall@example.test"),
                       sender="router@example.test", tls_ca_file=str(tls_files[0]))
    asyncio.run(send_one(spec, Notice(ALERT, OPENED, CONSOLE)))
    [received] = mailbox.messages
    assert received["tls"] and received["login"] == b"alerts"
    assert received["from"] == "router@example.test"
    assert received["to"] == ["ops@example.test", "oncall@example.test"]
    message = email.message_from_bytes(received["content"], policy=email.policy.default)
    assert message["Subject"] == "[router] Platform down: meta/acme/production"
    text = message.get_body(("plain",)).get_content()
    html = message.get_body(("html",)).get_content()
    assert "HTTP 400: (#100) Invalid parameter <fbc> & co" in text  # verbatim
    assert "consecutive_failures: 12" in text and f"{CONSOLE}/console/alerts/7" in text
    assert "Invalid parameter &lt;fbc&gt; &amp; co" in html
    assert f'href="{CONSOLE}/console/events/ord-1001"' in html


def test_email_credentials_are_never_sent_without_starttls() -> None:
    mailbox, port = Mailbox(), free_port()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port,
                            authenticator=check_login, auth_require_tls=False)
    controller.start()
    try:
        spec = ChannelSpec("email", "email", f"smtp://alerts:secret@127.0.0.1:{port}",
                           to=("ops@example.test",), sender="router@example.test")
        with pytest.raises(ChannelError, match="does not offer STARTTLS"):
            asyncio.run(send_one(spec, Notice(ALERT, OPENED)))
    finally:
        controller.stop()
    assert mailbox.messages == []


def test_a_refused_login_is_a_channel_error(smtp_server: tuple[Mailbox, int],
                                            tls_files: tuple[Path, Path]) -> None:
    mailbox, port = smtp_server
    spec = ChannelSpec("email", "email", f"smtp://alerts:wrong@127.0.0.1:{port}",
                       to=("ops@example.test",), sender="router@example.test",
                       tls_ca_file=str(tls_files[0]))
    with pytest.raises(ChannelError, match="SMTPAuthenticationError"):
        asyncio.run(send_one(spec, Notice(ALERT, OPENED)))
    assert mailbox.messages == []


# --- the notifier -----------------------------------------------------------------------

def test_a_failing_channel_is_retried_with_backoff_and_never_holds_up_the_others(
        tmp_path: Path) -> None:
    async def go() -> dict[str, Any]:
        store = SQLiteStore(f"sqlite:///{tmp_path / 'notify.db'}")
        await store.open()
        async with Capture(statuses=[500, 503]) as flaky, Capture(hang=True) as hung, \
                Capture() as good, Capture(statuses=[500] * 10) as broken:
            settings = AlertSettings(
                interval_seconds=0.05, channel_retry_base_seconds=0.1, channel_max_attempts=3,
                channels=(ChannelSpec("flaky", "webhook", flaky.url, secret="k1"),
                          ChannelSpec("hung", "slack", hung.url, timeout_seconds=0.3),
                          ChannelSpec("good", "slack", good.url),
                          ChannelSpec("broken", "webhook", broken.url, secret="k2"),
                          ChannelSpec("off", "slack", "")))
            notifier = Notifier(store, lambda: settings)
            notifier.enabled = True
            started = time.monotonic()
            assert await store.open_alert("platform_down", "meta/acme/production", DETAIL)
            task = asyncio.create_task(notifier.run())
            deadline = time.monotonic() + 20
            while await store.alert_log(pending=True) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            [entry] = await store.alert_log(limit=10)
            out = {"entry": entry, "started": started,
                   "flaky": [r["at"] for r in flaky.requests],
                   "good": [r["at"] for r in good.requests], "hung": len(hung.requests),
                   "broken": len(broken.requests)}
        await store.close()
        return out

    out = asyncio.run(go())
    result = out["entry"].notified
    assert result["flaky"] == "sent" and result["good"] == "sent"
    assert result["hung"].startswith("failed:") and out["hung"] == 3
    assert result["broken"] == 'failed: HTTP 500: {"ok": false}' and out["broken"] == 3
    assert result["hung"] == "failed: no answer within 0.3 s"
    assert "off" not in result  # a channel without a URL is off
    flaky = out["flaky"]
    assert len(flaky) == 3  # 500, 503, then sent
    assert flaky[2] - flaky[1] > flaky[1] - flaky[0] >= 0.09  # backoff grows
    # the good channel was not held up by the hung one (0.3 s timeout) nor the retries
    assert out["good"][0] - out["started"] < 0.25
