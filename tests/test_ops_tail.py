"""`router tail`'s client against a real local SSE server: it reconnects on its own when
the stream drops, asking for what came after the last item it printed."""

from __future__ import annotations

import asyncio
import io
import socket
from typing import Any

import orjson
from aiohttp import web

from router.ops.tail import tail


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_tail_reconnects_with_the_last_event_id_and_misses_nothing() -> None:
    seen: list[dict[str, Any]] = []

    async def stream(request: web.Request) -> web.StreamResponse:
        seen.append({"last": request.headers.get("Last-Event-ID"),
                     "auth": request.headers.get("Authorization"),
                     "query": dict(request.query)})
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b": connected\n\n")
        start = 1 if len(seen) == 1 else 2
        for n in range(start, start + 1):
            item = {"type": "delivery", "id": f"boot-{n}", "status": "delivered",
                    "destination": "meta", "event_id": f"e{n}", "at": "2026-11-20T12:00:00.000Z"}
            await response.write(f"id: boot-{n}\nevent: delivery\ndata: ".encode() +
                                 orjson.dumps(item) + b"\n\n")
        return response  # the stream ends: the client must come back on its own

    async def go() -> tuple[str, str]:
        app = web.Application()
        app.router.add_get("/admin/stream", stream)
        runner = web.AppRunner(app, shutdown_timeout=0.1)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        out, err = io.StringIO(), io.StringIO()
        try:
            await asyncio.wait_for(tail(f"http://127.0.0.1:{port}", "tok", {
                "destination": "meta", "status": None}, as_json=True, colour=False, count=2,
                out=out, err=err, max_delay=0.2), 10)
        finally:
            await runner.cleanup()
        return out.getvalue(), err.getvalue()

    out, err = asyncio.run(go())
    assert [orjson.loads(line)["event_id"] for line in out.splitlines()] == ["e1", "e2"]
    assert [s["last"] for s in seen] == [None, "boot-1"]
    assert all(s["auth"] == "Bearer tok" and s["query"] == {"destination": "meta"} for s in seen)
    assert "reconnecting" in err and "reconnected" in err
