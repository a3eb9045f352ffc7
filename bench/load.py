"""An asyncio load generator (a separate process from the server under test).

Why not wrk: every request must carry a distinct messageId (otherwise the router's
dedup turns the run into a duplicate-detection benchmark), and the end-to-end
measurement needs the send time of every event id; an asyncio client does both
naturally, and runs anywhere Python does (wrk is not installed on these machines).
It is bounded in time and requests, and sends only to loopback.

The default client ("raw") speaks just enough HTTP/1.1 over asyncio protocols —
keep-alive connections, one request in flight per connection, Content-Length or
chunked responses — because on a 2-core machine the load generator shares the CPU
with the server under test, and aiohttp's client costs several times more CPU per
request (with it, a bare aiohttp server measures the client, not itself). The
aiohttp client is kept as `client="aiohttp"` for comparison.

Two modes:
- closed loop: `concurrency` workers, each sending its next request when the last one
  is answered (saturation throughput);
- open loop: requests are started at a fixed `rate` whatever the server does, and each
  latency is measured from the moment the request was due, so a server that falls
  behind shows its queueing delay (no coordinated omission). Requests still open
  `grace` seconds after the send window closes are cancelled and counted as
  `unfinished`; their latency (at least their age at cancellation) is kept, so
  percentiles are never flattered by dropping the slowest requests.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import aiohttp


@dataclass(frozen=True)
class LoadResult:
    requests: int
    errors: int
    seconds: float
    latencies_ms: list[float]
    unfinished: int = 0
    sent: int = 0
    completed_in_window: int = 0  # answered (200) by the end of the send window + 1 s
    send_window_s: float = 0.0
    offered_rate: float | None = None
    sent_at: dict[int, float] = field(default_factory=dict)  # n -> wall-clock send time
    status_counts: dict[int, int] = field(default_factory=dict)
    achieved_rate: float = 0.0  # 200s / (first send -> last 200)
    latency_trend: float = 1.0  # p50 of the last quarter of sends / p50 of the first

    @property
    def rate(self) -> float:
        """Successful requests per second."""
        ok = self.requests - self.errors - self.unfinished
        return ok / self.seconds if self.seconds else 0.0

    def percentile(self, p: float) -> float:
        if not self.latencies_ms:
            return 0.0
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]

    @property
    def sustained(self) -> bool:
        """Open loop: did the server keep up with the offered rate?

        None failed or was left unanswered, at least 97% were answered within one second
        of the end of the send window, the rate answered (first send to last answer) is
        at least 95% of the rate offered, and latency did not grow through the run (p50
        of the last quarter of requests at most 2 x (the first quarter's p50 + 20 ms))."""
        if self.offered_rate is None or not self.sent:
            return True
        return (self.errors == 0 and self.unfinished == 0
                and self.completed_in_window >= 0.97 * self.sent
                and self.achieved_rate >= 0.95 * self.offered_rate
                and self.latency_trend <= 2.0)


def _loopback(url: str) -> tuple[str, int, str]:
    parts = urlsplit(url)
    if parts.hostname not in ("127.0.0.1", "localhost", "::1"):
        raise ValueError(f"load goes to loopback only, not {parts.hostname!r}")
    return parts.hostname, parts.port or 80, parts.path or "/"


# --- the raw HTTP/1.1 client ------------------------------------------------------------

class _Connection(asyncio.Protocol):
    """One keep-alive connection with at most one request in flight."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[int] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("connection closed"))

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buffer[:end]).lower()
        status = int(head[9:12])
        start = head.find(b"\r\ncontent-length:")
        if start >= 0:
            stop = head.find(b"\r\n", start + 2)
            length = int(head[start + 17:stop if stop >= 0 else None])
            total = end + 4 + length
            if len(self.buffer) < total:
                return
        elif b"transfer-encoding: chunked" in head:
            last = self.buffer.find(b"0\r\n\r\n", end + 4)
            if last < 0:
                return
            total = last + 5
        else:
            total = end + 4
        del self.buffer[:total]
        if b"\r\nconnection: close" in head:
            self.closed = True
        waiter.set_result(status)

    async def request(self, data: bytes) -> int:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return await self.waiter

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class _RawClient:
    def __init__(self, url: str, headers: dict[str, str], limit: int):
        self.host, self.port, self.path = _loopback(url)
        head = f"POST {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.head = head.encode()
        self.idle: list[_Connection] = []
        self.open = 0
        self.limit = limit
        self.slots = asyncio.Semaphore(limit)
        self.all: list[_Connection] = []

    async def _connection(self) -> _Connection:
        while self.idle:
            conn = self.idle.pop()
            if not conn.closed:
                return conn
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(_Connection, self.host, self.port)
        self.all.append(conn)
        return conn

    async def post(self, body: bytes) -> int:
        async with self.slots:
            conn = await self._connection()
            try:
                status = await conn.request(
                    self.head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
            except BaseException:
                conn.close()
                raise
            if not conn.closed:
                self.idle.append(conn)
            return status

    async def close(self) -> None:
        for conn in self.all:
            conn.close()


class _AiohttpClient:
    def __init__(self, url: str, headers: dict[str, str], limit: int, timeout: float):
        _loopback(url)
        self.url = url
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=limit), headers=headers,
            timeout=aiohttp.ClientTimeout(total=timeout))

    async def post(self, body: bytes) -> int:
        async with self.session.post(self.url, data=body) as response:
            await response.read()
            return response.status

    async def close(self) -> None:
        await self.session.close()


async def run_load(url: str, make_body: Callable[[int], bytes], *, concurrency: int,
                   duration: float, headers: dict[str, str], max_requests: int = 2_000_000,
                   rate: float | None = None, record_sends: bool = False,
                   grace: float = 10.0, request_timeout: float = 30.0,
                   first: int = 0, client: str = "raw") -> LoadResult:
    """Closed loop with `concurrency` workers, or an open loop at `rate` requests/s.

    `first` is the first request number (bodies are make_body(first), make_body(first+1)
    ...); `record_sends` keeps each request's wall-clock send time by number."""
    _loopback(url)
    duration = min(duration, 3600.0)
    counter = itertools.count(first)
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    sent_at: dict[int, float] = {}
    errors = 0
    ok_at: list[float] = []
    ok_latency: list[tuple[float, float]] = []  # (due, latency ms) of every 200
    deadline = time.perf_counter() + duration
    http = (_RawClient(url, headers, concurrency) if client == "raw"
            else _AiohttpClient(url, headers, concurrency, request_timeout))
    post: Callable[[bytes], Awaitable[int]] = http.post

    async def one(n: int, due: float | None = None) -> None:
        nonlocal errors
        started = time.perf_counter() if due is None else due
        body = make_body(n)
        if record_sends:
            sent_at[n] = time.time() - (time.perf_counter() - started)
        try:
            status = await asyncio.wait_for(post(body), request_timeout)
            statuses[status] = statuses.get(status, 0) + 1
            if status != 200:
                errors += 1
            else:
                ok_at.append(time.perf_counter())
                ok_latency.append((started, (ok_at[-1] - started) * 1000))
        except (OSError, aiohttp.ClientError, TimeoutError, ValueError):
            errors += 1
        latencies.append((time.perf_counter() - started) * 1000)

    async def worker() -> None:
        while time.perf_counter() < deadline:
            n = next(counter)
            if n - first >= max_requests:
                return
            await one(n)

    started = time.perf_counter()
    unfinished = 0
    try:
        if rate is None:
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            sent = len(latencies)
            send_end = time.perf_counter()
        else:
            tasks: list[tuple[asyncio.Task[None], float]] = []
            interval = 1.0 / rate
            next_at = time.perf_counter()
            while next_at < deadline and len(tasks) < max_requests:
                tasks.append((asyncio.create_task(one(next(counter), next_at)), next_at))
                next_at += interval
                await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
            send_end = time.perf_counter()
            sent = len(tasks)
            if tasks:
                _, pending = await asyncio.wait([t for t, _ in tasks], timeout=grace)
                now = time.perf_counter()
                for task, due in tasks:
                    if task in pending:
                        task.cancel()
                        unfinished += 1
                        latencies.append((now - due) * 1000)  # censored: at least this old
                if pending:
                    await asyncio.gather(*pending, return_exceptions=True)
        elapsed = time.perf_counter() - started
    finally:
        await http.close()
    window_end = send_end + 1.0
    completed_in_window = sum(1 for t in ok_at if t <= window_end)
    achieved = len(ok_at) / (max(ok_at) - started) if ok_at and max(ok_at) > started else 0.0
    trend = 1.0
    if len(ok_latency) >= 40:
        ordered = [lat for _, lat in sorted(ok_latency)]
        quarter = len(ordered) // 4
        head, tail = sorted(ordered[:quarter]), sorted(ordered[-quarter:])
        trend = tail[len(tail) // 2] / (head[len(head) // 2] + 20.0)
    return LoadResult(len(latencies), errors, elapsed, latencies, unfinished=unfinished,
                      sent=sent, completed_in_window=completed_in_window,
                      send_window_s=send_end - started, offered_rate=rate,
                      sent_at=sent_at, status_counts=statuses, achieved_rate=achieved,
                      latency_trend=round(trend, 2))
