"""Structured log lines: JSON or text, fields kept, third-party chatter quiet at DEBUG."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import orjson
import pytest

from router.ops import logs
from router.ops.logs import fields


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """Route the configured handler to a buffer; restore logging afterwards."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level, logging.getLogger("router").level)
    buffer = io.StringIO()
    yield buffer
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in saved[0]:
        root.addHandler(handler)
    root.setLevel(saved[1])
    logging.getLogger("router").setLevel(saved[2])


def use(buffer: io.StringIO, level: str, fmt: str) -> None:
    logs.configure(level, fmt)
    logging.getLogger().handlers[0].setStream(buffer)  # type: ignore[attr-defined]


def test_json_lines_carry_the_fields_as_structure(captured: io.StringIO) -> None:
    use(captured, "INFO", "json")
    logging.getLogger("router.delivery").warning(
        "delivery failed, retry at %s: %s", "12:00:05", "HTTP 503", extra=fields(
            event="delivery.retry", destination="meta", account="acme", event_id="e-1",
            status="failed", attempt=2, error="HTTP 503", next_retry_at=None))
    [line] = captured.getvalue().splitlines()
    record = orjson.loads(line)
    assert record["message"] == "delivery failed, retry at 12:00:05: HTTP 503"
    assert record["level"] == "WARNING" and record["logger"] == "router.delivery"
    assert {k: record[k] for k in ("event", "destination", "account", "event_id", "status",
                                   "attempt", "error")} == {
        "event": "delivery.retry", "destination": "meta", "account": "acme",
        "event_id": "e-1", "status": "failed", "attempt": 2, "error": "HTTP 503"}
    assert "next_retry_at" not in record  # None values are left out
    assert record["time"].endswith("Z")


def test_text_lines_append_key_value_pairs_quoting_where_needed(
        captured: io.StringIO) -> None:
    use(captured, "INFO", "text")
    logging.getLogger("router.events").warning("event rejected", extra=fields(
        event="event.rejected", code="invalid_schema", reason="value: must be a number"))
    line = captured.getvalue().strip()
    assert line.endswith('router.events event rejected event=event.rejected '
                         'code=invalid_schema reason="value: must be a number"')


def test_debug_shows_our_lines_and_hides_third_party_chatter(captured: io.StringIO) -> None:
    use(captured, "DEBUG", "text")
    logging.getLogger("aiosqlite").debug("executing SELECT 1")
    logging.getLogger("asyncio").info("poll took 1 ms")
    logging.getLogger("router.delivery").debug("delivered", extra=fields(event_id="e-2"))
    logging.getLogger("aiohttp.client").warning("connection reset")
    lines = captured.getvalue().splitlines()
    assert len(lines) == 2
    assert "router.delivery delivered event_id=e-2" in lines[0]
    assert "aiohttp.client connection reset" in lines[1]  # warnings still show


def test_unknown_levels_and_formats_are_refused() -> None:
    with pytest.raises(ValueError, match="log format 'xml'"):
        logs.configure("INFO", "xml")
    with pytest.raises(ValueError, match="log level 'LOUD'"):
        logs.configure("LOUD", "text")
