"""Alert channels: what a notification says, and sending it to Slack, email, a webhook
or the log.

Every notification carries the same facts, laid out for its medium: what happened (the
alert's kind and one-line summary), where (destination, account, environment, source),
since when, the platform's last error verbatim, the numbers and the window they were
measured over, a few example event ids, and links into the console.

- Slack: an incoming webhook, Block Kit blocks with a plain-text fallback.
- Email: SMTP with STARTTLS (`smtp://`, required before credentials are sent) or TLS
  (`smtps://`), AUTH when the URL has a user; a plain-text and an HTML part. Sent with
  the standard library's smtplib in a worker thread: one message per alert is not worth
  an async SMTP dependency, and the thread keeps the event loop free.
- Webhook: a JSON document signed like our outbound webhook destination:
  `X-Router-Timestamp` and `X-Router-Signature: sha256=<hex HMAC-SHA256 of
  "{timestamp}.{body}">`.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import html
import logging
import smtplib
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import aiohttp
import orjson

from router.config.model import ChannelSpec
from router.ops.logs import fields
from router.store.base import Alert, AlertLogEntry

log = logging.getLogger("router.alerts")

TITLES = {"platform_down": "Platform down", "queue_backlog": "Delivery backlog",
          "tracking_stopped": "Tracking stopped", "delivery_rate_drop": "Channel accuracy dropped",
          "match_quality_drop": "Match quality dropped"}
SCOPE_KEYS = ("destination", "account", "environment", "source", "event_name", "identifier")
MAX_EXAMPLES = 5


class ChannelError(Exception):
    """A channel could not deliver a notification (retried with backoff)."""


@dataclass(frozen=True)
class Notice:
    """One notification: an alert's opening or resolution, with its evidence then."""

    alert: Alert
    entry: AlertLogEntry
    console_url: str = ""

    @property
    def action(self) -> str:
        return self.entry.action

    @property
    def detail(self) -> Mapping[str, Any]:
        return self.entry.detail or self.alert.detail

    @property
    def title(self) -> str:
        return TITLES.get(self.alert.kind, self.alert.kind.replace("_", " ").capitalize())

    @property
    def headline(self) -> str:
        prefix = "RESOLVED" if self.action == "resolved" else "ALERT"
        return f"[{prefix}] {self.title}: {self.alert.subject}"

    @property
    def where(self) -> str:
        scope = [f"{k} {self.detail[k]}" for k in SCOPE_KEYS if self.detail.get(k)]
        return ", ".join(scope) or self.alert.subject

    @property
    def examples(self) -> list[str]:
        return [str(e) for e in (self.detail.get("examples") or [])][:MAX_EXAMPLES]

    @property
    def numbers(self) -> dict[str, Any]:
        return dict(self.detail.get("numbers") or {})

    @property
    def window(self) -> str | None:
        window = self.detail.get("window")
        if isinstance(window, Mapping) and window.get("since"):
            return f"{window['since']} .. {window.get('until') or 'now'}"
        return None

    def alert_link(self) -> str | None:
        return f"{self.console_url}/console/alerts/{self.alert.id}" if self.console_url else None

    def event_link(self, event_id: str) -> str | None:
        return f"{self.console_url}/console/events/{event_id}" if self.console_url else None

    def document(self) -> dict[str, Any]:
        """The webhook body (also what the log channel writes)."""
        return {"type": f"alert.{self.action}", "alert": {
            "id": self.alert.id, "kind": self.alert.kind, "title": self.title,
            "subject": self.alert.subject, "opened_at": self.alert.opened_at,
            "resolved_at": self.alert.resolved_at if self.action == "resolved" else None,
            "at": self.entry.at, "detail": dict(self.detail),
            "links": {k: v for k, v in (("alert", self.alert_link()),) if v}}}


# --- rendering --------------------------------------------------------------------------

def render_text(notice: Notice) -> str:
    d = notice.detail
    lines = [notice.headline, "", str(d.get("summary") or notice.title), "",
             f"Where: {notice.where}", f"Since: {notice.alert.opened_at}"]
    if notice.action == "resolved":
        lines.append(f"Resolved: {notice.entry.at}")
    if notice.window:
        lines.append(f"Window: {notice.window}")
    if d.get("last_error"):
        lines += ["", "Platform error (verbatim):", f"  {d['last_error']}"]
    if notice.numbers:
        lines += ["", "Numbers:"] + [f"  {k}: {v}" for k, v in notice.numbers.items()]
    if notice.examples:
        lines += ["", "Example events:"] + [
            f"  {e}" + (f"  {notice.event_link(e)}" if notice.console_url else "")
            for e in notice.examples]
    if d.get("action"):
        lines += ["", f"What to do: {d['action']}"]
    if notice.alert_link():
        lines += ["", f"Console: {notice.alert_link()}"]
    return "\n".join(lines) + "\n"


def render_html(notice: Notice) -> str:
    d = notice.detail
    e = html.escape
    colour = "#2e7d32" if notice.action == "resolved" else "#c62828"
    parts = [f'<h2 style="color:{colour}">{e(notice.headline)}</h2>',
             f"<p>{e(str(d.get('summary') or notice.title))}</p>", "<table>"]
    rows = [("Where", notice.where), ("Since", notice.alert.opened_at)]
    if notice.action == "resolved":
        rows.append(("Resolved", notice.entry.at))
    if notice.window:
        rows.append(("Window", notice.window))
    rows += [(k, str(v)) for k, v in notice.numbers.items()]
    parts += [f"<tr><th align=\"left\">{e(k)}</th><td>{e(str(v))}</td></tr>" for k, v in rows]
    parts.append("</table>")
    if d.get("last_error"):
        parts.append(f"<p><b>Platform error (verbatim)</b></p><pre>{e(str(d['last_error']))}</pre>")
    if notice.examples:
        items = []
        for example in notice.examples:
            link = notice.event_link(example)
            items.append(f'<li><a href="{e(link)}">{e(example)}</a></li>' if link
                         else f"<li><code>{e(example)}</code></li>")
        parts.append("<p><b>Example events</b></p><ul>" + "".join(items) + "</ul>")
    if d.get("action"):
        parts.append(f"<p><b>What to do:</b> {e(str(d['action']))}</p>")
    if notice.alert_link():
        parts.append(f'<p><a href="{e(notice.alert_link() or "")}">Open in the console</a></p>')
    return "<html><body>" + "".join(parts) + "</body></html>"


def _mrkdwn(text: Any) -> str:
    """Slack's escaping: &, < and > only."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_payload(notice: Notice) -> dict[str, Any]:
    """Block Kit: header, summary, the facts as fields, the platform's error, links."""
    d = notice.detail
    emoji = ":white_check_mark:" if notice.action == "resolved" else ":rotating_light:"
    header = f"{'Resolved: ' if notice.action == 'resolved' else ''}{notice.title}: " \
             f"{notice.alert.subject}"
    facts = [f"*Where*\n{_mrkdwn(notice.where)}", f"*Since*\n{_mrkdwn(notice.alert.opened_at)}"]
    if notice.action == "resolved":
        facts.append(f"*Resolved*\n{_mrkdwn(notice.entry.at)}")
    if notice.window:
        facts.append(f"*Window*\n{_mrkdwn(notice.window)}")
    facts += [f"*{_mrkdwn(k)}*\n{_mrkdwn(v)}" for k, v in notice.numbers.items()]
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": header[:150], "emoji": True}},
        {"type": "section", "text": {"type": "mrkdwn", "text": f"{emoji} " + _mrkdwn(
            d.get("summary") or notice.title)[:2900]}},
        {"type": "section", "fields": [{"type": "mrkdwn", "text": f[:2000]}
                                       for f in facts[:10]]}]
    if d.get("last_error"):
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": (
            "*Platform error (verbatim)*\n```" + _mrkdwn(d["last_error"])[:2800] + "```")}})
    if d.get("action"):
        blocks.append({"type": "section", "text": {
            "type": "mrkdwn", "text": f"*What to do*\n{_mrkdwn(d['action'])[:2900]}"}})
    links = []
    if notice.alert_link():
        links.append(f"<{notice.alert_link()}|Open in the console>")
    for example in notice.examples:
        link = notice.event_link(example)
        links.append(f"<{link}|{_mrkdwn(example)}>" if link else f"`{_mrkdwn(example)}`")
    if links:
        blocks.append({"type": "context", "elements": [
            {"type": "mrkdwn", "text": ("Examples: " if notice.examples else "") +
             " · ".join(links)[:2900]}]})
    return {"text": f"{notice.headline} — {d.get('summary') or ''}"[:3000], "blocks": blocks}


def webhook_signature(secret: str, timestamp: str, body: bytes) -> str:
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return f"sha256={digest.hexdigest()}"


# --- sending ----------------------------------------------------------------------------

async def send(spec: ChannelSpec, notice: Notice, session: aiohttp.ClientSession) -> None:
    """Deliver one notification through one channel; raises ChannelError."""
    if spec.type == "log":
        level = logging.INFO if notice.action == "resolved" else logging.WARNING
        log.log(level, "%s", notice.headline, extra=fields(
            event=f"alert.{notice.action}", alert_id=notice.alert.id, kind=notice.alert.kind,
            subject=notice.alert.subject, summary=notice.detail.get("summary"),
            last_error=notice.detail.get("last_error")))
        return
    if spec.type == "email":
        try:
            await asyncio.wait_for(asyncio.to_thread(send_mail, spec, notice),
                                   spec.timeout_seconds * 3)
        except TimeoutError:
            raise ChannelError(f"SMTP server did not answer within "
                               f"{spec.timeout_seconds * 3:g} s") from None
        return
    if spec.type == "slack":
        body = orjson.dumps(slack_payload(notice))
        headers = {"Content-Type": "application/json"}
    elif spec.type == "webhook":
        body = orjson.dumps(notice.document())
        timestamp = str(int(time.time()))
        headers = {"Content-Type": "application/json", "User-Agent": "router-alerts/1",
                   "X-Router-Timestamp": timestamp,
                   "X-Router-Signature": webhook_signature(spec.secret, timestamp, body)}
    else:
        raise ChannelError(f"unknown channel type {spec.type!r}")
    try:
        async with session.post(spec.url, data=body, headers=headers,
                                timeout=aiohttp.ClientTimeout(total=spec.timeout_seconds),
                                allow_redirects=False) as response:
            text = (await response.read())[:300].decode("utf-8", "replace")
            if not 200 <= response.status < 300:
                raise ChannelError(f"HTTP {response.status}: {text}")
    except TimeoutError:
        raise ChannelError(f"no answer within {spec.timeout_seconds:g} s") from None
    except aiohttp.ClientError as exc:
        raise ChannelError(f"{type(exc).__name__}: {exc}") from None


def smtp_target(url: str) -> dict[str, Any]:
    """smtp://user:pass@host:port[?starttls=never] or smtps://... -> connection settings."""
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    implicit = parts.scheme == "smtps"
    return {"host": parts.hostname or "", "port": parts.port or (465 if implicit else 587),
            "user": unquote(parts.username) if parts.username else None,
            "password": unquote(parts.password) if parts.password else None,
            "implicit_tls": implicit,
            "starttls": (query.get("starttls") or ["auto"])[0]}


def build_mail(spec: ChannelSpec, notice: Notice) -> EmailMessage:
    message = EmailMessage()
    message["Subject"] = f"[router] {notice.headline.split('] ', 1)[-1]}" + \
        (" (resolved)" if notice.action == "resolved" else "")
    message["From"] = spec.sender
    message["To"] = ", ".join(spec.to)
    message["Date"] = formatdate(localtime=False)
    message["Message-ID"] = make_msgid(domain="router.alerts")
    message.set_content(render_text(notice))
    message.add_alternative(render_html(notice), subtype="html")
    return message


def send_mail(spec: ChannelSpec, notice: Notice) -> None:
    """Blocking: run in a thread. STARTTLS when the server offers it, and always before
    credentials are sent (a server that does not offer it then gets nothing)."""
    target = smtp_target(spec.url)
    context = ssl.create_default_context(cafile=spec.tls_ca_file)
    message = build_mail(spec, notice)
    try:
        if target["implicit_tls"]:
            client: smtplib.SMTP = smtplib.SMTP_SSL(target["host"], target["port"],
                                                    timeout=spec.timeout_seconds, context=context)
        else:
            client = smtplib.SMTP(target["host"], target["port"], timeout=spec.timeout_seconds)
        with client:
            client.ehlo()
            if not target["implicit_tls"] and target["starttls"] != "never":
                if client.has_extn("starttls"):
                    client.starttls(context=context)
                    client.ehlo()
                elif target["user"] or target["starttls"] == "require":
                    raise ChannelError(f"{target['host']} does not offer STARTTLS: credentials "
                                       "are not sent in clear (use smtps:// or "
                                       "?starttls=never for a local relay without auth)")
            if target["user"]:
                client.login(target["user"], target["password"] or "")
            client.send_message(message)
    except ChannelError:
        raise
    except (smtplib.SMTPException, OSError) as exc:
        raise ChannelError(f"{type(exc).__name__}: {exc}") from None
