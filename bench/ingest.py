"""Ingest benchmark: single-event and batched ingest through `router serve` (SQLite,
durable group-committed acknowledgement), against a bare aiohttp baseline measured in
the same run.

    python -m bench.ingest            # ~2 minutes
    python -m bench.ingest --quick    # ~30 seconds

Writes bench/results/ingest-<time>.json and prints a Markdown summary.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import requests

from bench.load import LoadResult, run_load

REPO = Path(__file__).resolve().parent.parent
AUTH = {"Authorization": "Basic " + base64.b64encode(b"demo-write-key:").decode(),
        "Content-Type": "application/json"}


# when the run started: recent, so every platform's maximum event age lets it through
TIMESTAMP = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + "125Z"


def order_completed(n: int, token: str | None = None) -> dict[str, Any]:
    """A realistic ~1.2 KB Segment `Order Completed` with two products.

    Its messageId is bench-<token>-<n> and its order_id order-<token>-<n> (token: the
    process id unless given), so a destination request can be traced to its event."""
    token = token or str(os.getpid())
    return {
        "type": "track", "event": "Order Completed", "messageId": f"bench-{token}-{n}",
        "userId": f"user-{n % 5000}", "anonymousId": f"anon-{n % 7000}",
        "timestamp": TIMESTAMP,
        "context": {
            "ip": "203.0.113.24", "library": {"name": "analytics-python", "version": "2.4.0"},
            "userAgent": "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 "
                         "(KHTML, like Gecko) Version/17.5 Safari/605.1.15",
            # a Taboola click id (tblci), so the event is attributable and Taboola's
            # send_if lets it through: every one of the 13 demo destinations gets it
            "page": {"url": "https://shop.example.com/checkout/thank-you?utm_source=news"
                            f"&tblci=GiBench{n % 1000:04d}",
                     "referrer": "https://www.example.com/", "title": "Thank you"},
            "traits": {"email": f"customer{n % 5000}@example.com", "phone": f"+1 415 555 {n % 5000:04d}",
                       "firstName": "Jane", "lastName": "Doe",
                       "address": {"city": "San Francisco", "state": "CA",
                                   "postalCode": "94103", "country": "US"}},
        },
        "properties": {
            "order_id": f"order-{token}-{n}", "checkout_id": f"chk-{n}", "total": 114.5,
            "revenue": 99.0, "shipping": 8.5, "tax": 7.0, "discount": 5.0,
            "coupon": "WELCOME5", "currency": "USD",
            "products": [
                {"product_id": "SKU-1", "sku": "SKU-1", "name": "Trail Runner", "price": 69.0,
                 "quantity": 1, "category": "Shoes", "brand": "Acme"},
                {"product_id": "SKU-2", "sku": "SKU-2", "name": "Wool Socks", "price": 15.0,
                 "quantity": 2, "category": "Socks", "brand": "Acme"}]},
    }


def _single(n: int) -> bytes:
    return orjson.dumps(order_completed(n))


def _batch(n: int) -> bytes:
    return orjson.dumps({"batch": [order_completed(n * 100 + i) for i in range(100)]})


def _load_process(url: str, kind: str, concurrency: int, duration: float,
                  rate: float | None) -> LoadResult:
    make = _batch if kind == "batch" else _single
    return asyncio.run(run_load(url, make, concurrency=concurrency, duration=duration,
                                headers=AUTH, rate=rate))


def load(url: str, kind: str, concurrency: int, duration: float,
         rate: float | None = None) -> LoadResult:
    with ProcessPoolExecutor(max_workers=1) as pool:  # the load runs in its own process
        return pool.submit(_load_process, url, kind, concurrency, duration, rate).result()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def poll_until_up(url: str, exited: Callable[[], str | None], timeout: float = 30.0) -> None:
    """Poll `url` until it answers; `exited()` says why the server died, or None."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        why = exited()
        if why is not None:
            raise RuntimeError(why)
        try:
            requests.get(url, timeout=0.5)
            return
        except requests.RequestException:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f} s")


def wait_up(url: str, process: subprocess.Popen[bytes]) -> None:
    poll_until_up(url, lambda: f"{url} exited" if process.poll() is not None else None)


def start(cmd: list[str], health: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env=env, cwd=REPO)
    wait_up(health, process)
    return process


def metric(url: str, name: str) -> float:
    text = requests.get(url + "/metrics", timeout=5).text
    match = re.search(rf"^{name}_total (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def summarize(result: LoadResult, events_per_request: int = 1) -> dict[str, Any]:
    return {"requests": result.requests, "errors": result.errors,
            "seconds": round(result.seconds, 2),
            "requests_per_s": round(result.rate, 1),
            "events_per_s": round(result.rate * events_per_request, 1),
            "p50_ms": round(result.percentile(50), 2), "p99_ms": round(result.percentile(99), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--no-workers", action="store_true",
                        help="Measure ingest alone (delivery in no process).")
    args = parser.parse_args()
    duration = 5.0 if args.quick else 20.0
    workdir = Path(tempfile.mkdtemp(prefix="router-bench-"))
    results: dict[str, Any] = {"started_at": datetime.now(UTC).isoformat(),
                               "sink": "router sandbox (separate process), 13 destinations",
                               "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
                               "duration_s": duration, "concurrency": args.concurrency}
    router_exe = shutil.which("router") or "router"
    base_port, router_port, sink_port = free_port(), free_port(), free_port()
    baseline = start([sys.executable, "-m", "bench.baseline_server", str(base_port)],
                     f"http://127.0.0.1:{base_port}/")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEMO_")}
    env["DEMO_SINK_URL"] = f"http://127.0.0.1:{sink_port}"
    # all 13 demo destinations deliver to `router sandbox`, in its own process
    sink = start([router_exe, "sandbox", "--port", str(sink_port)],
                 f"http://127.0.0.1:{sink_port}/_sandbox/health", env)
    router = start([router_exe, "serve", "--store", f"sqlite:///{workdir / 'bench.db'}",
                    "--port", str(router_port), "--log-level", "WARNING",
                    *(["--no-workers"] if args.no_workers else [])],
                   f"http://127.0.0.1:{router_port}/healthz", env)
    router_url = f"http://127.0.0.1:{router_port}"
    try:
        load(f"http://127.0.0.1:{base_port}/v1/track", "single", 8, 1.0)  # warm-up
        load(router_url + "/v1/track", "single", 8, 1.0)
        base = load(f"http://127.0.0.1:{base_port}/v1/track", "single", args.concurrency,
                    duration)
        tx0, ev0 = (metric(router_url, "router_inbox_transactions"),
                    metric(router_url, "router_inbox_messages"))
        single = load(router_url + "/v1/track", "single", args.concurrency, duration)
        tx1, ev1 = (metric(router_url, "router_inbox_transactions"),
                    metric(router_url, "router_inbox_messages"))
        fixed = load(router_url + "/v1/track", "single", args.concurrency, duration, rate=1000)
        base_batch = load(f"http://127.0.0.1:{base_port}/v1/batch", "batch", 8, duration)
        batch = load(router_url + "/v1/batch", "batch", 8, duration)
        results["baseline_single"] = summarize(base)
        results["router_single"] = summarize(single)
        results["router_single"]["ratio_to_baseline"] = round(single.rate / base.rate, 3)
        results["router_single"]["events_per_transaction"] = \
            round((ev1 - ev0) / max(1.0, tx1 - tx0), 1)
        results["router_single_at_1000_per_s"] = summarize(fixed)
        results["baseline_batch100"] = summarize(base_batch, 100)
        results["router_batch100"] = summarize(batch, 100)
        results["router_batch100"]["ratio_to_baseline"] = round(batch.rate / base_batch.rate, 3)
    finally:
        for process in (router, baseline, sink):
            process.terminate()
        for process in (router, baseline, sink):
            process.wait(30)
        shutil.rmtree(workdir, ignore_errors=True)
    out_dir = REPO / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"ingest-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    out.write_text(json.dumps(results, indent=2))
    print(render(results))
    print(f"\nresults: {out}")


def render(r: dict[str, Any]) -> str:
    rows = [("bare aiohttp, POST /v1/track", r["baseline_single"], "1.00"),
            ("router, POST /v1/track (durable)", r["router_single"],
             f"{r['router_single']['ratio_to_baseline']:.2f}"),
            ("router, /v1/track at 1,000/s offered", r["router_single_at_1000_per_s"], ""),
            ("bare aiohttp, /v1/batch x100", r["baseline_batch100"], "1.00"),
            ("router, /v1/batch x100 (durable)", r["router_batch100"],
             f"{r['router_batch100']['ratio_to_baseline']:.2f}")]
    lines = ["| run | events/s | p50 ms | p99 ms | errors | ratio |", "|---|---:|---:|---:|---:|---:|"]
    for name, s, ratio in rows:
        lines.append(f"| {name} | {s['events_per_s']:,.0f} | {s['p50_ms']} | {s['p99_ms']} | "
                     f"{s['errors']} | {ratio} |")
    lines.append(f"\nevents per group-commit transaction under load: "
                 f"{r['router_single']['events_per_transaction']}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
