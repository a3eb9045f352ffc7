"""Canonical events -> the exact HTTP requests a destination file declares.

Shared by `router explain` (which sends nothing) and the delivery workers, so what a
tracking engineer reviews is byte for byte what the platform receives.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import orjson

from router.config.model import Destination, DestinationConnection
from router.delivery.signing import oauth1_header
from router.expr.tree import merge_trees

SECRET_SETTING = re.compile(r"(token|secret|password|passwd|key|signature)", re.IGNORECASE)
MASK = "***"


class RenderError(ValueError):
    """A template failed for one event: that delivery fails permanently, others go on."""


@dataclass(frozen=True)
class Rendered:
    """One event's payload for one destination."""

    seq: int
    event_id: str
    platform_event: str
    payload: Any
    size: int
    key: str = ""


@dataclass(frozen=True)
class OutgoingRequest:
    method: str
    url: str
    headers: dict[str, str]
    body: bytes | None
    seqs: tuple[int, ...]

    def excerpt(self, secrets: Sequence[str], limit: int = 2048) -> dict[str, Any]:
        """What an operator sees: method, URL and headers with secrets masked, body cut."""
        body = self.body.decode("utf-8", "replace") if self.body else None
        return {"method": self.method, "url": mask(self.url, secrets),
                "headers": {k: mask_header(k, v, secrets) for k, v in self.headers.items()},
                "body": mask(body, secrets)[:limit] if body else None}


def mask_header(name: str, value: str, secrets: Sequence[str]) -> str:
    """Credentials derived from secrets (Basic's base64, OAuth signatures) do not contain
    the secret's text: an Authorization header keeps only its scheme when masking."""
    if secrets and name.lower() in ("authorization", "proxy-authorization"):
        scheme = value.split(" ", 1)[0]
        return f"{scheme} {MASK}" if " " in value else MASK
    return mask(value, secrets)


def mask(text: str, secrets: Sequence[str]) -> str:
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, MASK)
    return text


def connection_settings(dest: Destination, conn: DestinationConnection) -> dict[str, Any]:
    """The connection's settings with `base_url` resolved: shared, read only (templates
    cannot mutate it), built once per compiled destination and connection rather than
    for every payload."""
    key = (id(dest), id(conn))
    cached = _SETTINGS_CACHE.get(key)
    if cached is not None and cached[0] is dest and cached[1] is conn:
        return cached[2]
    settings = dict(conn.settings)
    base = settings.get("base_url") or dest.request.get("base_url") or ""
    settings["base_url"] = base.rstrip("/")
    if len(_SETTINGS_CACHE) >= 4096:  # reloads leave old entries behind: start over
        _SETTINGS_CACHE.clear()
    # holding dest and conn keeps their ids from being reused while the entry lives
    _SETTINGS_CACHE[key] = (dest, conn, settings)
    return settings


_SETTINGS_CACHE: dict[tuple[int, int], tuple[Destination, DestinationConnection,
                                             dict[str, Any]]] = {}


def secrets_of(settings: Mapping[str, Any], access_token: str | None = None) -> list[str]:
    found = [str(v) for k, v in settings.items()
             if SECRET_SETTING.search(k) and isinstance(v, str | int) and str(v)]
    if access_token:
        found.append(access_token)
    return found


def render_payload(dest: Destination, conn: DestinationConnection, seq: int,
                   event: Mapping[str, Any], pii: Mapping[str, Any] | None) -> Rendered:
    name = event.get("event_name") or ""
    platform_event = dest.platform_event(name)
    if not platform_event:
        raise RenderError(f"{name!r} is not listed by {dest.name}")
    settings = connection_settings(dest, conn)
    context = {"event": event, "pii": (pii or {}) if dest.plaintext_pii else {},
               "settings": settings, "base_url": settings["base_url"],
               "test_mode": conn.test_mode, "destination": dest.name,
               "consent": (event.get("consent") or {}).get("purposes", {})}
    try:
        if "{{" in platform_event:
            template = dest.name_templates.get(name) or dest.name_templates.get("*")
            rendered_name = template.render(context, keep_empty=True)
            if rendered_name in (None, "", False):
                raise RenderError(f"{name!r} is not configured for {dest.name} on this "
                                  "connection")
            platform_event = str(rendered_name)
        context["platform_event"] = platform_event
        payload = dest.payload.render(context)
        if conn.test_mode and dest.test_payload is not None:
            payload = merge_trees(payload, dest.test_payload.render(context))
        key = str(dest.batch_key.render(context) or "") if dest.batch_key else ""
    except Exception as exc:  # a template error is this event's problem alone
        raise RenderError(f"{dest.name} template failed for event {event.get('event_id')}: "
                          f"{exc}") from exc
    return Rendered(seq, str(event.get("event_id")), platform_event, payload,
                    len(orjson.dumps(payload)), key)


def batches(dest: Destination, rendered: Sequence[Rendered]) -> list[list[Rendered]]:
    """Group payloads into requests: same batch key, at most max_events and max_bytes."""
    groups: dict[str, list[list[Rendered]]] = {}
    sizes: dict[str, int] = {}  # bytes in each key's open batch (no re-summing per item)
    for item in rendered:
        lists = groups.setdefault(item.key, [[]])
        current = lists[-1]
        size = sizes.get(item.key, 0)
        if current and (len(current) >= dest.max_events or size + item.size > dest.max_bytes):
            current = []
            lists.append(current)
            size = 0
        current.append(item)
        sizes[item.key] = size + item.size
    return [b for lists in groups.values() for b in lists if b]


def build_request(dest: Destination, conn: DestinationConnection, batch: Sequence[Rendered],
                  events: Sequence[Mapping[str, Any]], access_token: str | None = None,
                  now: float | None = None, nonce: str | None = None) -> OutgoingRequest:
    """The exact request for one batch. `now` and `nonce` pin the time- and randomness-
    dependent parts of signatures (previews and tests); production leaves them unset."""
    settings = connection_settings(dest, conn)
    payloads = [r.payload for r in batch]
    context = {"settings": settings, "base_url": settings["base_url"],
               "test_mode": conn.test_mode, "payloads": payloads, "payload": payloads[0],
               "events": list(events), "event": events[0], "access_token": access_token,
               "platform_event": batch[0].platform_event, "destination": dest.name}
    url_tree = dest.test_url if conn.test_mode and dest.test_url is not None else dest.url
    url = str(url_tree.render(context))
    query = dict(dest.query.render(context) or {})
    headers = {k: str(v) for k, v in (dest.headers.render(context) or {}).items()}
    if conn.test_mode:
        if dest.test_query is not None:
            query.update(dest.test_query.render(context) or {})
        if dest.test_headers is not None:
            headers.update({k: str(v) for k, v in (dest.test_headers.render(context) or {}).items()})
    if query:
        url += ("&" if "?" in url else "?") + urlencode(
            {k: _query_value(v) for k, v in query.items()})
    body_kind = dest.request.get("body", "json")
    document: Any
    if dest.wrapper is not None:
        document = dest.wrapper.render(context)
        if conn.test_mode and dest.test_wrapper is not None:
            document = merge_trees(document, dest.test_wrapper.render(context))
    else:
        document = payloads[0] if dest.max_events == 1 else payloads
    body: bytes | None
    if body_kind == "none":
        body = None
    elif body_kind == "form":
        body = urlencode({k: _query_value(v) for k, v in (document or {}).items()}).encode()
        headers.setdefault("Content-Type", "application/x-www-form-urlencoded")
    else:
        body = orjson.dumps(document)
        headers.setdefault("Content-Type", "application/json")
    sign = dest.request.get("sign")
    if sign:
        headers.update(_signature(sign, context, body or b"", now))
    auth = dest.request.get("auth")
    if auth and auth.get("type") == "oauth1":
        form = {k: _query_value(v) for k, v in (document or {}).items()} \
            if body_kind == "form" else None
        headers["Authorization"] = _oauth1(auth, settings, dest.request.get("method", "POST"),
                                           url, form, now, nonce)
    return OutgoingRequest(dest.request.get("method", "POST"), url, headers, body,
                           tuple(r.seq for r in batch))


def _oauth1(auth: Mapping[str, Any], settings: dict[str, Any], method: str, url: str,
            form: dict[str, str] | None, now: float | None, nonce: str | None) -> str:
    context = {"settings": settings, "base_url": settings["base_url"]}

    def value(key: str) -> str | None:
        tree = auth.get(key)
        rendered = tree.render(context) if tree is not None else None
        return str(rendered) if rendered not in (None, "") else None

    return oauth1_header(method, url, value("consumer_key") or "", value("consumer_secret") or "",
                         value("token"), value("token_secret"), form=form, nonce=nonce,
                         timestamp=None if now is None else int(now))


def _query_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return orjson.dumps(value).decode()
    return str(value)


def _signature(sign: Mapping[str, Any], context: dict[str, Any], body: bytes,
               now: float | None) -> dict[str, str]:
    secret = str(sign["secret"].render(context) or "")
    header = str(sign["header"].render(context))
    algorithm = str(sign["algorithm"].render(context)) if sign.get("algorithm") else "hmac-sha256"
    digestmod = hashlib.sha1 if algorithm == "hmac-sha1" else hashlib.sha256
    prefix = str(sign["prefix"].render(context) or "") if sign.get("prefix") else ""
    out: dict[str, str] = {}
    signed = body
    if sign.get("timestamp_header"):
        ts = str(int(time.time() if now is None else now))
        out[str(sign["timestamp_header"].render(context))] = ts
        signed = ts.encode() + b"." + body
    out[header] = prefix + hmac.new(secret.encode(), signed, digestmod).hexdigest()
    return out
