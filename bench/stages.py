"""CPU per event through the whole flow, and a burst: the two-stage pipeline's figures.

    python -m bench.stages                 # ~4 minutes
    python -m bench.stages --quick         # ~1.5 minutes
    python -m bench.stages --original-13   # the 13 destinations the targets were set for

Three measurements, each on a fresh SQLite store with every demo destination delivering
to a `router sandbox` in its own process:

- `cpu`: the default `router serve` (gateway, processor and delivery in one process),
  warmed with 20 events first (the steady state: templates compiled, connections open).
  Single events at a low fixed rate (25/s), then as fast as the process acknowledges
  them; after each, the run waits until every delivery is final (Awin's 30 s hold and
  the paced platforms included), and divides the router's CPU seconds (/proc, user +
  system, all threads) by the events. CPU time, not wall time, so a noisy machine
  changes the figure little.
- `split`: the same flow with each stage in its own process on one store (`router serve
  --role gateway`, `router worker --role processor`, `router worker --role delivery`),
  so each stage's CPU per event is read apart.
- `burst`: 10,000 events offered within about a second (200 requests of 50 events, 50
  at a time) to the default `router serve`: how many were answered 503 (none is the
  target), how long acknowledging took, and how long until all were decided and
  delivered.

Writes bench/results/stages-<time>.json and prints a Markdown summary.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import shutil
import sqlite3
import sys
import tempfile
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from bench.harness import (
    ADMIN_TOKEN,
    REPO,
    LoadPool,
    Proc,
    Processes,
    cpu_seconds,
    fingerprint,
    machine,
    router_cmd,
    snapshot_engine,
)
from bench.ingest import free_port, order_completed

ORIGINAL_13 = ("meta", "ga4", "tiktok", "klaviyo", "pinterest", "snapchat", "linkedin",
               "reddit", "criteo", "awin", "taboola", "google_ads", "webhook")
FINAL = ("delivered", "dropped")


class Run:
    def __init__(self, quick: bool, original_13: bool):
        self.quick = quick
        self.workdir = Path(tempfile.mkdtemp(prefix="router-stages-"))
        self.engine = snapshot_engine(self.workdir / "engine")
        if original_13:
            _only_destinations(self.engine, ORIGINAL_13)
        self.sink_port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DEMO_", "ROUTER_"))}
        env.update(DEMO_SINK_URL=f"http://127.0.0.1:{self.sink_port}",
                   ROUTER_ADMIN_TOKEN=ADMIN_TOKEN, PYTHONUNBUFFERED="1")
        self.procs = Processes(self.workdir, env)
        self.pool = LoadPool()
        self.dbs = 0
        self.destinations = _enabled_destinations(self.engine)

    def __enter__(self) -> Run:
        self.procs.start("sandbox", router_cmd("sandbox", "--port", str(self.sink_port)),
                         f"http://127.0.0.1:{self.sink_port}/_sandbox/health", cwd=self.engine)
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            self.procs.stop_all()
        finally:
            self.pool.close()
            shutil.rmtree(self.workdir, ignore_errors=True)

    def db(self) -> Path:
        self.dbs += 1
        return self.workdir / f"stages-{self.dbs}.db"

    def serve(self, db: Path, *args: str) -> tuple[Proc, str]:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        proc = self.procs.start("serve", router_cmd(
            "serve", "--store", f"sqlite:///{db}", "--port", str(port), "--log-level",
            "WARNING", *args), f"{url}/healthz", cwd=self.engine)
        return proc, url

    def worker(self, db: Path, roles: str) -> Proc:
        proc = self.procs.start(roles, router_cmd(
            "worker", "--store", f"sqlite:///{db}", "--role", roles, "--log-level", "WARNING"),
            cwd=self.engine)
        return proc

    def load(self, url: str, events: int, rate: float | None) -> Any:
        future = self.pool.submit(url + "/v1/track", "single", uuid.uuid4().hex[:8],
                                  concurrency=64 if rate is None else 256,
                                  duration=events / rate + 5 if rate else 120.0, rate=rate,
                                  max_requests=events, grace=10.0)
        return future.result(timeout=600)

    # --- measurements --------------------------------------------------------------------

    def cpu(self, events: int, rate: float | None) -> dict[str, Any]:
        db = self.db()
        router, url = self.serve(db)
        try:
            _settle(router.pid)
            self.warm(url, db)
            c0 = cpu_seconds(router.pid)
            started = time.monotonic()
            result = self.load(url, events, rate)
            acked = result.requests - result.errors - result.unfinished
            drained = _wait_final(db, 300.0)
            used = cpu_seconds(router.pid) - c0
            return {"offered_per_s": rate or "as fast as acknowledged", "events": acked,
                    "acknowledged_per_s": round(result.rate, 1),
                    "ack_p50_ms": round(result.percentile(50), 2),
                    "ack_p99_ms": round(result.percentile(99), 2),
                    "seconds_to_all_final": round(time.monotonic() - started, 1),
                    "all_final": drained, **_counts(db),
                    "router_cpu_s": round(used, 2),
                    "cpu_ms_per_event": round(1000 * used / max(1, acked), 3)}
        finally:
            self.procs.stop(router)

    def warm(self, url: str, db: Path) -> None:
        """Steady state: a few events through every destination first (templates are
        compiled at first use, connections opened, caches filled), not measured."""
        self.load(url, 20, 20.0)
        _wait_final(db, 120.0)

    def split(self, events: int, layout: tuple[str, ...] = ("gateway", "processor",
                                                            "delivery")) -> dict[str, Any]:
        """The flow with its roles split over processes on one store: the first entry of
        `layout` is a `router serve --role ...` (it takes the load), the others are
        `router worker --role ...`."""
        db = self.db()
        first, url = self.serve(db, "--role", layout[0])
        procs = {layout[0]: first}
        for roles in layout[1:]:
            procs[roles] = self.worker(db, roles)
        try:
            for proc in procs.values():
                _settle(proc.pid)
            self.warm(url, db)
            c0 = {name: cpu_seconds(p.pid) for name, p in procs.items()}
            started = time.monotonic()
            result = self.load(url, events, None)
            acked = result.requests - result.errors - result.unfinished
            drained = _wait_final(db, 300.0)
            elapsed = time.monotonic() - started
            used = {name: cpu_seconds(p.pid) - c0[name] for name, p in procs.items()}
            counts = _counts(db)
            delivering = next((n for n in procs if "delivery" in n), None)
            return {"layout": list(layout), "events": acked,
                    "acknowledged_per_s": round(result.rate, 1),
                    "ack_p50_ms": round(result.percentile(50), 2),
                    "ack_p99_ms": round(result.percentile(99), 2), "all_final": drained,
                    "seconds_to_all_final": round(elapsed, 1), **counts,
                    "cpu_ms_per_event": {n: round(1000 * u / max(1, acked), 3)
                                         for n, u in used.items()},
                    "delivery_cpu_us_per_delivery": round(
                        1e6 * used[delivering] / max(1, counts["delivered"]), 1)
                    if delivering else None,
                    "total_cpu_ms_per_event": round(1000 * sum(used.values()) / max(1, acked),
                                                    3)}
        finally:
            self.procs.stop(*procs.values())

    def burst(self, events: int = 10_000, per_request: int = 50) -> dict[str, Any]:
        db = self.db()
        router, url = self.serve(db)
        try:
            _settle(router.pid)
            token = uuid.uuid4().hex[:8]
            batches = [[order_completed(n * per_request + i, token) for i in range(per_request)]
                       for n in range(events // per_request)]
            started = time.monotonic()
            answers = asyncio.run(_post_all(url, batches, concurrency=50))
            acked_s = time.monotonic() - started
            statuses = Counter(status for status, _ in answers)
            accepted = sum(1 for status, body in answers if status == 200 and body
                           for r in body["results"] if r["status"] == "accepted")
            decided = _wait(lambda c: c.execute("SELECT count(*) FROM inbox").fetchone()[0]
                            == 0, db, 600.0)
            decided_s = time.monotonic() - started
            drained = _wait_final(db, 900.0)
            return {"events": events, "ingest_requests": len(batches),
                    "statuses": dict(statuses),
                    "answered_503": statuses.get(503, 0), "accepted": accepted,
                    "seconds_to_acknowledge_all": round(acked_s, 2),
                    "seconds_to_decide_all": round(decided_s, 1) if decided else None,
                    "seconds_to_all_final": round(time.monotonic() - started, 1)
                    if drained else None, **_counts(db)}
        finally:
            self.procs.stop(router)


async def _post_all(url: str, batches: list[list[dict[str, Any]]],
                    concurrency: int) -> list[tuple[int, Any]]:
    headers = {"Authorization": "Basic " + base64.b64encode(b"demo-write-key:").decode(),
               "Content-Type": "application/json"}
    limit = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession(headers=headers) as session:
        async def one(batch: list[dict[str, Any]]) -> tuple[int, Any]:
            async with limit:
                try:
                    async with session.post(url + "/v1/batch", data=orjson.dumps(
                            {"batch": batch}), timeout=aiohttp.ClientTimeout(total=60)) as r:
                        return r.status, await r.json(content_type=None)
                except (aiohttp.ClientError, TimeoutError, ValueError):
                    return 0, None
        return list(await asyncio.gather(*(one(b) for b in batches)))


def _settle(pid: int, quiet_s: float = 1.0, limit_s: float = 30.0) -> None:
    """Wait until a process has finished starting (its CPU stops moving)."""
    deadline = time.monotonic() + limit_s
    last = cpu_seconds(pid)
    while time.monotonic() < deadline:
        time.sleep(quiet_s)
        now = cpu_seconds(pid)
        if now - last < 0.02 * quiet_s:
            return
        last = now


def _wait(check: Any, db: Path, limit_s: float) -> bool:
    deadline = time.monotonic() + limit_s
    with sqlite3.connect(db, timeout=30) as conn:
        while time.monotonic() < deadline:
            if check(conn):
                return True
            time.sleep(0.25)
    return False


def _wait_final(db: Path, limit_s: float) -> bool:
    """Until the inbox is empty and no delivery is waiting to be sent (held, delayed,
    paced, retrying)."""
    return _wait(lambda c: c.execute("SELECT count(*) FROM inbox").fetchone()[0] == 0 and
                 c.execute("SELECT count(*) FROM deliveries WHERE status IN ('queued', "
                           "'failed')").fetchone()[0] == 0, db, limit_s)


def _counts(db: Path) -> dict[str, int]:
    with sqlite3.connect(db, timeout=30) as conn:
        rows = dict(conn.execute("SELECT status, count(*) FROM deliveries GROUP BY status"))
        requests_sent = conn.execute("SELECT count(*) FROM requests").fetchone()[0]
    return {"delivered": rows.get("delivered", 0), "dropped": rows.get("dropped", 0),
            "pending": rows.get("queued", 0) + rows.get("failed", 0),
            "requests": requests_sent}


def _enabled_destinations(engine: Path) -> list[str]:
    import yaml

    demo = yaml.safe_load((engine / "configs" / "accounts" / "demo.yaml").read_text())
    return sorted(demo["environments"]["production"]["destinations"])


def _only_destinations(engine: Path, keep: tuple[str, ...]) -> None:
    """Disable every demo destination not in `keep` (the engine copy only)."""
    import yaml

    path = engine / "configs" / "accounts" / "demo.yaml"
    data = yaml.safe_load(path.read_text())
    for env in data["environments"].values():
        for name, conn in (env.get("destinations") or {}).items():
            if name not in keep:
                conn["enabled"] = False
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def render(results: dict[str, Any]) -> str:
    lines = [f"# Pipeline stages {results['started_at']} ({'quick' if results['quick'] else 'full'})",
             "", f"`{results['command']}`; {len(results['destinations'])} destinations: "
             f"{', '.join(results['destinations'])}.", ""]
    cpu = results.get("cpu") or []
    if cpu:
        lines += ["## CPU per event, default `router serve` (one process)", "",
                  "| offered | events | acknowledged/s | ack p50 / p99 ms | all final after s | "
                  "delivered | requests | router CPU ms/event | target |",
                  "|---|---:|---:|---|---:|---:|---:|---:|---|"]
        for run in cpu:
            lines.append(f"| {run['offered_per_s']} | {run['events']:,} | "
                         f"{run['acknowledged_per_s']:,} | {run['ack_p50_ms']} / "
                         f"{run['ack_p99_ms']} | {run['seconds_to_all_final']} | "
                         f"{run['delivered']:,} | {run['requests']:,} | "
                         f"**{run['cpu_ms_per_event']}** | ≤ 3 |")
        lines.append("")
    splits = results.get("split") or []
    if splits:
        lines += ["## Roles split over processes on one store", "",
                  "| processes | events | acknowledged/s | ack p50 / p99 ms | all final "
                  "after s | CPU ms per event, by process | total | delivery µs per delivery |",
                  "|---|---:|---:|---|---:|---|---:|---:|"]
        for split in splits:
            per = ", ".join(f"{n} {v}" for n, v in split["cpu_ms_per_event"].items())
            lines.append(f"| {' + '.join(split['layout'])} | {split['events']:,} | "
                         f"{split['acknowledged_per_s']:,} | {split['ack_p50_ms']} / "
                         f"{split['ack_p99_ms']} | {split['seconds_to_all_final']} | {per} | "
                         f"**{split['total_cpu_ms_per_event']}** | "
                         f"{split['delivery_cpu_us_per_delivery']} |")
        lines.append("")
    burst = results.get("burst")
    if burst:
        lines += ["## A burst of 10,000 events within a second (default `router serve`)", "",
                  "| requests x events | answered 503 | accepted | acknowledged in s | "
                  "decided after s | all final after s | delivered |",
                  "|---|---:|---:|---:|---:|---:|---:|",
                  f"| {burst['ingest_requests']} x {burst['events'] // burst['ingest_requests']} | "
                  f"{burst['answered_503']} | {burst['accepted']:,} | "
                  f"{burst['seconds_to_acknowledge_all']} | {burst['seconds_to_decide_all']} | "
                  f"{burst['seconds_to_all_final']} | {burst['delivered']:,} |", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.stages", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--original-13", action="store_true",
                        help="only the 13 destinations the issue's targets were set for")
    parser.add_argument("--only", default="cpu,split,burst",
                        help="comma-separated subset of cpu,split,burst")
    parser.add_argument("--out-dir", default=str(REPO / "bench" / "results"))
    args = parser.parse_args()
    only = set(args.only.split(","))
    events = 1000 if args.quick else 3000
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    results: dict[str, Any] = {"started_at": datetime.now(UTC).isoformat(), "quick": args.quick,
                               "command": " ".join(["python", "-m", "bench.stages",
                                                    *sys.argv[1:]]),
                               "machine": machine()}
    with Run(args.quick, args.original_13) as run:
        results["destinations"] = run.destinations
        results["engine_fingerprint"] = fingerprint(run.engine)
        if "cpu" in only:
            results["cpu"] = [run.cpu(250 if args.quick else 750, 25.0),
                              run.cpu(events, None)]
        if "split" in only:
            results["split"] = [run.split(events),
                                run.split(events, ("gateway,processor", "delivery"))]
        if "burst" in only:
            results["burst"] = run.burst()
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"stages-{stamp}.json"
    path.write_text(json.dumps(results, indent=2))
    summary = render(results)
    path.with_suffix(".md").write_text(summary)
    print(summary)
    print(f"results: {path}")


if __name__ == "__main__":
    main()
