"""`router tail`: the live stream (`GET /admin/stream`) as one readable line per item.

The client reconnects on its own (a restart of the server, a dropped connection) with
`Last-Event-ID`, so a short gap loses nothing the server still keeps; it stops on a
refused token (exit 1) or a refused filter (exit 2), since retrying cannot fix those.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Mapping
from typing import Any, TextIO

import aiohttp
import click
import orjson

COLOURS = {"accepted": "green", "delivered": "green", "duplicate": "cyan", "queued": "yellow",
           "failed": "yellow", "paused": "magenta", "dropped": "red", "rejected": "red",
           "unmapped": "red", "lost": "red"}


class TailError(Exception):
    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


def format_item(item: Mapping[str, Any], colour: bool = False) -> str:
    """One line per item: time, what, event, scope, outcome."""
    def paint(text: str, status: str) -> str:
        return click.style(text, fg=COLOURS.get(status)) if colour else text

    if item.get("type") == "lost":
        return paint(f"... {item.get('lost')} item(s) lost: this terminal read too slowly",
                     "lost")
    at = str(item.get("at") or "")[11:23]
    status = str(item.get("status") or "")
    name = item.get("event_name") or item.get("source_event") or "-"
    scope = f"{item.get('account', '?')}/{item.get('environment', '?')}"
    if item.get("type") == "delivery":
        head = f"{at}  → {item.get('destination', '?'):<14} {name:<16} {item.get('event_id')}"
        tail = paint(status, status)
        if item.get("attempt"):
            tail += f" #{item['attempt']}"
        if status == "delivered" and item.get("latency_ms") is not None:
            tail += f" {item['latency_ms']:.0f} ms"
        if item.get("cause"):
            tail += f" ({item['cause']})"
        if item.get("error"):
            tail += f": {item['error']}"
        if item.get("next_retry_at"):
            tail += f" — retry at {str(item['next_retry_at'])[11:19]}"
        return f"{head}  {scope}  {tail}"
    head = f"{at}  ● {item.get('source', '?'):<14} {name:<16} {item.get('event_id')}"
    tail = paint(status, status)
    if item.get("code"):
        tail += f" [{item['code']}]"
    if item.get("reason") and status != "accepted":
        tail += f": {item['reason']}"
    if item.get("duplicate_of") and item.get("duplicate_of") != item.get("event_id"):
        tail += f" of {item['duplicate_of']}"
    if item.get("to"):
        tail += " → " + ", ".join(item["to"])
    return f"{head}  {scope}  {tail}"


async def _read(response: aiohttp.ClientResponse,
                emit: Callable[[dict[str, Any]], bool]) -> tuple[str | None, bool]:
    """Parse SSE from a response; returns (last id seen, stop requested)."""
    last_id: str | None = None
    data: list[str] = []
    event_id: str | None = None
    async for raw in response.content:
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        if not line:
            if data:
                item = orjson.loads("\n".join(data))
                if event_id:
                    last_id = event_id
                if emit(item):
                    return last_id, True
            data, event_id = [], None
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "data":
            data.append(value)
        elif field == "id":
            event_id = value
    return last_id, False


async def tail(url: str, token: str, filters: Mapping[str, str], *, as_json: bool,
               colour: bool, count: int | None = None, out: TextIO | None = None,
               err: TextIO | None = None, max_delay: float = 5.0) -> None:
    out = out or sys.stdout
    err = err or sys.stderr
    params = {k: v for k, v in filters.items() if v is not None}
    printed = 0
    last_id: str | None = None
    delay = 0.5
    connected_once = False

    def emit(item: dict[str, Any]) -> bool:
        nonlocal printed
        out.write((orjson.dumps(item).decode() if as_json else format_item(item, colour)) + "\n")
        out.flush()
        if item.get("type") != "lost":
            printed += 1
        return count is not None and printed >= count

    timeout = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=60)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        while True:
            headers = {"Authorization": f"Bearer {token}", "Accept": "text/event-stream"}
            if last_id:
                headers["Last-Event-ID"] = last_id
            try:
                async with session.get(url.rstrip("/") + "/admin/stream", params=params,
                                       headers=headers) as response:
                    if response.status != 200:
                        raise TailError(_refusal(response.status, await response.read()),
                                        1 if response.status in (401, 403) else 2)
                    if connected_once:
                        err.write("reconnected\n")
                    connected_once = True
                    delay = 0.5
                    seen, stop = await _read(response, emit)
                    last_id = seen or last_id
                    if stop:
                        return
                    err.write("the stream ended (server stopping?); reconnecting\n")
            except (aiohttp.ClientError, TimeoutError, ConnectionError) as exc:
                err.write(f"cannot reach {url} ({type(exc).__name__}); retrying in "
                          f"{delay:.1f} s\n")
            err.flush()
            await asyncio.sleep(delay)
            delay = min(max_delay, delay * 2)


def _refusal(status: int, body: bytes) -> str:
    try:
        error = orjson.loads(body)["error"]
        return f"{error['message']} ({error['code']}, HTTP {status})"
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return f"HTTP {status}: {body[:200].decode('utf-8', 'replace')}"
