"""Process logging: one structured line per thing an operator acts on.

Our loggers (`router.*`) write at the chosen level; everything else (aiosqlite, asyncio,
aiohttp, urllib3...) at WARNING at most, so `--log-level DEBUG` shows the router's own
decisions instead of thousands of lines of library chatter.

A line's structured fields travel as `extra={"fields": {...}}`: `--log-format json`
writes one JSON object per line (`time`, `level`, `logger`, `message`, then the
fields), `text` writes the message followed by `key=value` pairs. Field values are
identifiers of events and connections and platform error messages, never personal
data (error messages are masked for email addresses all the same).
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import orjson

FORMATS = ("text", "json")
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
OWN = "router"


def fields(**values: Any) -> dict[str, Any]:
    """`extra=` for a structured line; None values are left out."""
    return {"fields": {k: v for k, v in values.items() if v is not None}}


def _iso(created: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + \
        f".{int(created % 1 * 1000):03d}Z"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {"time": _iso(record.created), "level": record.levelname,
                               "logger": record.name, "message": record.getMessage()}
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            for key, value in extra.items():
                out.setdefault(key, value)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


def _text_value(value: Any) -> str:
    text = value if isinstance(value, str) else orjson.dumps(value, default=str).decode()
    if text == "" or any(c in text for c in ' "=\n'):
        return orjson.dumps(text).decode()
    return text


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict) and extra:
            tail = " ".join(f"{k}={_text_value(v)}" for k, v in extra.items())
            head, sep, rest = line.partition("\n")  # a traceback stays below the line
            line = f"{head} {tail}{sep}{rest}"
        return line


def configure(level: str = "INFO", fmt: str = "text") -> None:
    """Set up the root handler on stderr; replaces what an earlier call installed."""
    if level not in LEVELS:
        raise ValueError(f"unknown log level {level!r}: choose from {', '.join(LEVELS)}")
    if fmt not in FORMATS:
        raise ValueError(f"unknown log format {fmt!r}: choose from {', '.join(FORMATS)}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    chosen = logging.getLevelName(level)
    # third-party loggers: never below WARNING
    root.setLevel(max(chosen, logging.WARNING))
    logging.getLogger(OWN).setLevel(chosen)
