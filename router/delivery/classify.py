"""Reading a platform's answer: success, per-event errors, retry, pause, or permanent.

Platforms disagree on how they fail (a 4xx for the whole batch, a 200 with a non-zero
`code`, per-element statuses inside a 200); each destination file states how to read
its answers, and this module applies those rules the same way for all of them.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from router.config.model import Destination

OK = "ok"  # delivered (possibly with per-event failures)
RETRY = "retry"  # the whole request failed transiently
AUTH = "auth"  # credentials rejected: pause the connection, keep the deliveries
PERMANENT = "permanent"  # the request is wrong; retrying the same bytes will not help


@dataclass(frozen=True)
class Answer:
    status: int  # 0 when no HTTP answer arrived (timeout, connection error)
    headers: Mapping[str, str]
    body: bytes
    error: str | None = None  # transport error text
    elapsed_ms: float = 0.0

    def document(self) -> Any:
        try:
            return orjson.loads(self.body) if self.body else None
        except orjson.JSONDecodeError:
            return self.body.decode("utf-8", "replace")


@dataclass(frozen=True)
class Verdict:
    kind: str
    message: str = ""
    event_errors: dict[int, str] = field(default_factory=dict)  # index in the request
    retry_after: float | None = None  # seconds


def retry_after_seconds(headers: Mapping[str, str], now: float | None = None) -> float | None:
    value = headers.get("Retry-After")
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, parsed.timestamp() - (time.time() if now is None else now))


def _message(dest: Destination, doc: dict[str, Any], fallback: str) -> str:
    rule = dest.response.error_message
    text = rule.search(doc) if rule is not None else None
    if text in (None, "", [], {}):
        body = doc.get("body")
        text = body if isinstance(body, str) else (orjson.dumps(body).decode() if body else "")
        text = text or fallback
    if not isinstance(text, str):
        text = orjson.dumps(text).decode()
    return text[:500]


def classify(dest: Destination, answer: Answer, size: int) -> Verdict:
    rules = dest.response
    retry_after = retry_after_seconds(answer.headers)
    if answer.status == 0:
        return Verdict(RETRY, answer.error or "no response", retry_after=retry_after)
    doc = {"status": answer.status, "headers": dict(answer.headers), "body": answer.document(),
           "size": size}
    success = rules.success.search(doc) if rules.success is not None else \
        200 <= answer.status < 300
    if success:
        errors: dict[int, str] = {}
        if rules.event_errors is not None:
            for item in rules.event_errors.search(doc) or []:
                if isinstance(item, dict) and isinstance(item.get("index"), int):
                    errors[item["index"]] = str(item.get("message") or "rejected by platform")[:500]
        return Verdict(OK, event_errors=errors)
    message = f"HTTP {answer.status}: {_message(dest, doc, 'request failed')}"
    if answer.status in rules.auth_status or (rules.auth is not None and rules.auth.search(doc)):
        return Verdict(AUTH, message)
    if rules.retryable is not None:
        retryable = bool(rules.retryable.search(doc))
    else:
        retryable = answer.status in rules.retryable_status or answer.status >= 500
    return Verdict(RETRY if retryable else PERMANENT, message, retry_after=retry_after)
