"""Reading a platform's answer: success, per-event errors, retry, pause, or permanent.

Platforms disagree on how they fail (a 4xx for the whole batch, a 200 with a non-zero
`code`, per-element statuses inside a 200); each destination file states how to read
its answers, and this module applies those rules the same way for all of them.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Mapping, Sequence
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


def _event_errors(dest: Destination, items: Any, payloads: Sequence[Any] | None) -> dict[int, str]:
    """[{index | key, message}] -> {index: message}. A platform that names failed events
    by a key of their own (an order reference) is read through `response.event_key`,
    evaluated on each payload of the request; keys that match no payload are ignored."""
    errors: dict[int, str] = {}
    by_key: dict[str, list[int]] | None = None
    for item in items or []:
        if not isinstance(item, dict):
            continue
        message = str(item.get("message") or "rejected by platform")[:500]
        index = item.get("index")
        if isinstance(index, int) and not isinstance(index, bool):
            errors[index] = message
        elif item.get("key") is not None and dest.event_key is not None and payloads:
            if by_key is None:
                by_key = {}
                for i, payload in enumerate(payloads):
                    key = dest.event_key.search(payload)
                    if key is not None:
                        by_key.setdefault(str(key), []).append(i)
            for i in by_key.get(str(item["key"]), ()):
                errors[i] = message
    return errors


def classify(dest: Destination, answer: Answer, size: int,
             payloads: Sequence[Any] | None = None) -> Verdict:
    """`payloads` (this request's, in order) are needed only by event_key rules."""
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
            errors = _event_errors(dest, rules.event_errors.search(doc), payloads)
        return Verdict(OK, event_errors=errors)
    message = f"HTTP {answer.status}: {_message(dest, doc, 'request failed')}"
    if answer.error:  # e.g. a redirect that was not followed
        message = f"{message} ({answer.error})"
    if answer.status in rules.auth_status or (rules.auth is not None and rules.auth.search(doc)):
        return Verdict(AUTH, message)
    if rules.retryable is not None:
        retryable = bool(rules.retryable.search(doc))
    else:
        retryable = answer.status in rules.retryable_status or answer.status >= 500
    return Verdict(RETRY if retryable else PERMANENT, message, retry_after=retry_after)
