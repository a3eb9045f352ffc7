"""Slow clients against `router serve`: a normal client's latency while many connections
send a body a byte at a time without authenticating (issue 10's attack).

    python -m bench.slowclients                        # 1,000 slow connections, ~1 minute
    python -m bench.slowclients --addresses 1          # all from one client address
    python -m bench.slowclients --engine /path/to/old  # the same against another checkout

The slow connections post to /v1/batch with `Content-Length: 100000` and no credentials
in the headers, then send one byte every `--interval` seconds; each one the server ends
(408 at the body deadline, 429 beyond the per-client bound) is opened again at once, so
`--connections` stay open for the whole run. With `--addresses N` > 1 they come from N
client addresses (`X-Forwarded-For`, which the router is told to trust), so the
per-client bound does not cut them. Meanwhile one normal client sends the bench's
`Order Completed` with its write key in the Basic header, one request at a time, and
its latencies are reported (p50, p99, max) with every status it got. Delivery is off
unless `--workers`: this measures whether ingest stays available.

Needs a file-descriptor limit above twice `--connections` (client and server ends are
on this machine): `ulimit -n`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import yaml

from bench.ingest import AUTH, REPO, free_port, order_completed, wait_up


def config_dir(engine: Path, target: Path, body_timeout: float | None) -> Path:
    """The checkout's shipped config, with the proxy header trusted (so slow clients can
    come from many addresses)."""
    for sub in ("configs", "mappings", "destinations.d"):
        shutil.copytree(engine / sub, target / sub)
    path = target / "configs" / "router.yaml"
    data = yaml.safe_load(path.read_text())
    data["server"]["trusted_proxy_header"] = "X-Forwarded-For"
    if body_timeout is not None:
        data["server"]["body_timeout_seconds"] = body_timeout
    path.write_text(yaml.safe_dump(data))
    return target


async def slow_connection(port: int, address: str, interval: float, stop: asyncio.Event,
                          ends: Counter[str]) -> None:
    head = (f"POST /v1/batch HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"X-Forwarded-For: {address}\r\nContent-Length: 100000\r\n\r\n").encode()
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError as exc:
            ends[f"connect error {type(exc).__name__}"] += 1
            await asyncio.sleep(0.5)
            continue
        try:
            writer.write(head + b'{"batch": [')
            await writer.drain()
            while not stop.is_set():
                try:
                    line = await asyncio.wait_for(reader.readline(), interval)
                except TimeoutError:
                    writer.write(b" ")
                    await writer.drain()
                    continue
                ends[line.split(b" ")[1].decode() if line else "closed"] += 1
                break
        except (OSError, IndexError):
            ends["reset"] += 1
        finally:
            writer.close()
        await asyncio.sleep(interval)  # the attacker's pace: reconnect at its next byte


async def normal_client(url: str, requests: int, pause: float) -> tuple[list[float], Counter[int]]:
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    async with aiohttp.ClientSession() as session:
        for n in range(requests):
            body = orjson.dumps(order_completed(n, "slowbench"))
            started = time.perf_counter()
            async with session.post(url + "/v1/track", data=body, headers=AUTH) as response:
                await response.read()
            latencies.append((time.perf_counter() - started) * 1000)
            statuses[response.status] += 1
            await asyncio.sleep(pause)
    return latencies, statuses


async def run(url: str, port: int, args: argparse.Namespace) -> dict[str, Any]:
    stop = asyncio.Event()
    ends: Counter[str] = Counter()
    slow = [asyncio.create_task(slow_connection(
        port, f"10.{(i % args.addresses) // 65536}.{(i % args.addresses) // 256 % 256}."
        f"{i % args.addresses % 256}", args.interval, stop, ends))
        for i in range(args.connections)]
    await asyncio.sleep(args.settle)  # all of them connected and sending
    latencies, statuses = await normal_client(url, args.requests, args.pause)
    stop.set()
    await asyncio.gather(*slow, return_exceptions=True)
    ordered = sorted(latencies)
    return {"slow_connections": args.connections, "client_addresses": args.addresses,
            "normal_requests": len(latencies), "normal_statuses": {str(k): v for k, v in statuses.items()},
            "p50_ms": round(statistics.median(ordered), 1),
            "p99_ms": round(ordered[int(len(ordered) * 0.99) - 1], 1),
            "max_ms": round(ordered[-1], 1), "slow_connection_ends": dict(ends)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--addresses", type=int, default=1000,
                        help="client addresses the slow connections come from")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between bytes")
    parser.add_argument("--requests", type=int, default=1000, help="normal client requests")
    parser.add_argument("--pause", type=float, default=0.02)
    parser.add_argument("--settle", type=float, default=3.0)
    parser.add_argument("--engine", type=Path, help="run the server from this checkout")
    parser.add_argument("--body-timeout", type=float, help="server.body_timeout_seconds")
    parser.add_argument("--workers", action="store_true",
                        help="deliver too (13 destinations per event, in the same process): "
                        "the delivery CPU then dominates the latencies")
    args = parser.parse_args()
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2 * args.connections + 100:
        sys.exit(f"ulimit -n is {soft}: raise it above {2 * args.connections + 100}")
    workdir = Path(tempfile.mkdtemp(prefix="router-slow-"))
    engine = args.engine or REPO
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEMO_")}
    env["PYTHONPATH"] = str(engine)
    port, sink_port = free_port(), free_port()
    env["DEMO_SINK_URL"] = f"http://127.0.0.1:{sink_port}"
    root = config_dir(engine, workdir / "config", args.body_timeout)
    sink = subprocess.Popen([sys.executable, "-m", "router.cli", "sandbox", "--config-dir",
                             str(root), "--port", str(sink_port)], env=env, cwd=engine,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = subprocess.Popen([sys.executable, "-m", "router.cli", "serve", "--config-dir",
                               str(root), "--store", f"sqlite:///{workdir / 'slow.db'}",
                               "--port", str(port), "--log-level", "WARNING",
                               *([] if args.workers else ["--no-workers"])], env=env,
                              cwd=engine, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_up(f"http://127.0.0.1:{sink_port}/_sandbox/health", sink)
        wait_up(f"http://127.0.0.1:{port}/healthz", server)
        result = asyncio.run(run(f"http://127.0.0.1:{port}", port, args))
    finally:
        for process in (server, sink):
            process.terminate()
        for process in (server, sink):
            process.wait(30)
        shutil.rmtree(workdir, ignore_errors=True)
    result["engine"] = str(engine)
    result["workers"] = args.workers
    result["ulimit_n"] = soft
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()
