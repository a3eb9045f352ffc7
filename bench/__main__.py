"""`python -m bench`: ingest, end-to-end latency, fan-out, memory, a CPU profile and the
multi-process mode, each measured in the same run as its baseline (a bare aiohttp +
orjson server, bench/baseline_server.py).

    python -m bench --quick                # ~1-2 minutes
    python -m bench                        # full run, ~12-15 minutes on 2 cores
    python -m bench --memory-events 1000000   # the issue's 100k -> 1M memory check (long)

Writes bench/results/<timestamp>.json, a Markdown summary beside it (also printed), and
the CPU profiles (<timestamp>-ingest.prof + .txt, <timestamp>-delivery.prof + .txt).
All load goes to 127.0.0.1; every run is bounded in time and requests; every process
started is stopped in a `finally`. See docs/performance.md.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import io
import json
import math
import os
import pstats
import shutil
import sys
import tempfile
import time
import traceback
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests

from bench.harness import (
    ADMIN_TOKEN,
    REPO,
    CpuMeter,
    LoadPool,
    Proc,
    Processes,
    SinkCollector,
    cpu_seconds,
    destination_limits,
    fingerprint,
    machine,
    memory_kb,
    metric,
    router_cmd,
    snapshot_engine,
    wait_reuse_port,
)
from bench.ingest import free_port
from bench.load import LoadResult
from bench.report import render

DESTINATIONS = 13
TARGETS = {
    "single_ratio": 0.60,  # single-event ingest / bare aiohttp, same run
    "batch_events_per_s": 20_000,
    "e2e_p50_ms": 25.0,
    "e2e_p99_ms": 100.0,
    "e2e_rate": 500.0,
    "rss_growth": 0.10,  # RSS after N2 within 10% of RSS after N1
}


class Plan:
    def __init__(self, args: argparse.Namespace):
        quick = args.quick
        self.quick = quick
        self.concurrency = args.concurrency
        self.saturation_s = 3.0 if quick else 12.0
        self.fixed_s = 3.0 if quick else 12.0
        self.low_rate = 100.0
        self.batch_s = 3.0 if quick else 10.0
        self.warmup_s = 0.5 if quick else 2.0
        self.idle_s = 1.0 if quick else 5.0
        self.grace_s = 2.0 if quick else 5.0  # open-loop ingest: wait for stragglers
        self.stop_s = 3.0 if quick else 8.0  # SIGTERM -> SIGKILL for routers with backlog
        self.fixed_rate = args.fixed_rate
        self.fixed_tries = 1 if quick else 2
        self.e2e_rate = args.e2e_rate
        self.e2e_s = 4.0 if quick else 20.0
        # awin holds every order 30 s (delay_seconds): the full run waits for it
        self.e2e_drain_max_s = 5.0 if quick else 45.0
        self.e2e_tries = 2 if quick else 3
        self.e2e_admin_sample = 30 if quick else 100
        self.memory_events = args.memory_events or (10_000 if quick else 100_000)
        self.memory_checkpoint = max(100, self.memory_events // 10)
        # a bound, not a target: ~1,200 events/s here, so 1M events take ~14 minutes
        self.memory_max_s = max(120.0 if quick else 900.0, self.memory_events / 400)
        self.profile_s = 3.0 if quick else 12.0
        self.multi = not args.no_multi


def nice_rate(value: float) -> float:
    """Two significant digits, at least 5/s."""
    if value <= 5:
        return 5.0
    digits = 10 ** (int(math.log10(value)) - 1)
    return float(int(value / digits) * digits)


def pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))], 1)


def summarize(result: LoadResult, events_per_request: int = 1,
              cpu: dict[str, float] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "requests": result.requests, "errors": result.errors,
        "seconds": round(result.seconds, 2),
        "requests_per_s": round(result.rate, 1),
        "events_per_s": round(result.rate * events_per_request, 1),
        "p50_ms": round(result.percentile(50), 2), "p99_ms": round(result.percentile(99), 2)}
    if result.offered_rate is not None:
        out.update(offered_per_s=result.offered_rate, sent=result.sent,
                   unfinished=result.unfinished,
                   answered_within_window=result.completed_in_window,
                   achieved_per_s=round(result.achieved_rate, 1),
                   latency_trend=result.latency_trend, sustained=result.sustained)
    if cpu:
        out["cpu_percent_of_one_core"] = cpu
    return out


class Bench:
    def __init__(self, plan: Plan, stamp: str, out_dir: Path, client: str = "raw",
                 keep: bool = False):
        self.client = client
        self.keep = keep
        self.plan = plan
        self.stamp = stamp
        self.out_dir = out_dir
        self.workdir = Path(tempfile.mkdtemp(prefix="router-bench-"))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DEMO_", "ROUTER_"))}
        self.sink_port = free_port()
        env["DEMO_SINK_URL"] = f"http://127.0.0.1:{self.sink_port}"
        env["ROUTER_ADMIN_TOKEN"] = ADMIN_TOKEN
        env["PYTHONUNBUFFERED"] = "1"
        self.env = env
        self.procs = Processes(self.workdir, env)
        self.pool: LoadPool | None = None
        self.sink: Proc | None = None
        self.baseline: Proc | None = None
        self.base_port = free_port()
        self.dbs = 0
        self.results: dict[str, Any] = {}
        self.engine = snapshot_engine(self.workdir / "engine")
        self.limits = destination_limits(self.engine)

    # --- plumbing -----------------------------------------------------------------------

    def __enter__(self) -> Bench:
        self.pool = LoadPool(self.client)
        self.sink = self.procs.start(
            "sandbox", router_cmd("sandbox", "--port", str(self.sink_port)),
            f"{self.sink_url}/_sandbox/health", cwd=self.engine)
        self.baseline = self.procs.start(
            "baseline", [sys.executable, "-m", "bench.baseline_server", str(self.base_port)],
            f"http://127.0.0.1:{self.base_port}/")
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            self.procs.stop_all()
        finally:
            if self.pool is not None:
                self.pool.close()
            if self.keep:
                print(f"kept the work directory (logs, databases): {self.workdir}", flush=True)
            else:
                shutil.rmtree(self.workdir, ignore_errors=True)

    @property
    def sink_url(self) -> str:
        return f"http://127.0.0.1:{self.sink_port}"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.base_port}"

    def fresh_db(self) -> str:
        self.dbs += 1
        return f"sqlite:///{self.workdir / f'bench-{self.dbs}.db'}"

    def router(self, *, workers: bool = True, store: str | None = None, port: int | None = None,
               reuse_port: bool = False, profile: Path | None = None,
               name: str = "router") -> tuple[Proc, str]:
        port = port or free_port()
        args = ["serve", "--store", store or self.fresh_db(), "--port", str(port),
                "--log-level", "WARNING"]
        if not workers:
            # the acknowledgement path alone: stage 2 and delivery run elsewhere (or not)
            args += ["--role", "gateway"]
        if reuse_port:
            args.append("--reuse-port")
        cmd = ([sys.executable, "-m", "cProfile", "-o", str(profile), "-m", "router.cli", *args]
               if profile else router_cmd(*args))
        url = f"http://127.0.0.1:{port}"
        proc = self.procs.start(name, cmd, f"{url}/healthz", cwd=self.engine)
        return proc, url

    def worker(self, store: str, profile: Path | None = None) -> Proc:
        """Stage 2 and delivery without HTTP, beside gateway-only processes."""
        args = ["worker", "--store", store, "--log-level", "WARNING", "--role",
                "processor,delivery"]
        cmd = ([sys.executable, "-m", "cProfile", "-o", str(profile), "-m", "router.cli", *args]
               if profile else router_cmd(*args))
        proc = self.procs.start("worker", cmd, cwd=self.engine)
        time.sleep(1.0)  # it has no health endpoint: give it its start-up
        if not proc.alive():
            raise RuntimeError(f"router worker exited:\n{proc.tail()}")
        return proc

    def load(self, url: str, kind: str = "single", *, token: str | None = None,
             concurrency: int | None = None, duration: float, rate: float | None = None,
             record_sends: bool = False, first: int = 0, max_requests: int = 2_000_000,
             grace: float = 10.0, watch: dict[str, int | None] | None = None,
             ) -> tuple[LoadResult, dict[str, float]]:
        assert self.pool is not None
        pids = {"load": self.pool.pid, "bench": os.getpid(), **(watch or {})}
        meter = CpuMeter(pids)
        future = self.pool.submit(url, kind, token or uuid.uuid4().hex[:8],
                                  concurrency=concurrency or self.plan.concurrency,
                                  duration=duration, rate=rate, record_sends=record_sends,
                                  first=first, max_requests=max_requests, grace=grace)
        result = future.result(timeout=duration + grace + 120)
        return result, meter.read()

    def warm(self, url: str) -> None:
        self.load(url + "/v1/track", concurrency=8, duration=self.plan.warmup_s)

    def stop(self, *procs: Proc, timeout: float | None = None) -> None:
        """SIGTERM, then SIGKILL after `timeout` (a router with a delivery backlog can
        take its 15 s worker shutdown; its database is thrown away anyway)."""
        self.procs.stop(*procs, timeout=self.plan.stop_s if timeout is None else timeout)

    # --- 1 + 2: ingest ------------------------------------------------------------------

    def ingest(self) -> None:
        """The gateway alone (`router serve --role gateway`: the durable acknowledgement,
        no stage 2, no delivery), against the baseline."""
        plan = self.plan
        router, url = self.router(workers=False)
        watch = {"router": router.pid, "baseline": self.baseline.pid if self.baseline else None}
        out: dict[str, Any] = {"mode": "router serve --role gateway (acknowledgement only; durable "
                               "group-committed acknowledgement)"}
        try:
            self.warm(self.base_url)
            self.warm(url)
            base1, cpu_b1 = self.load(self.base_url + "/v1/track", duration=plan.saturation_s,
                                      watch=watch)
            tx0, ev0 = (metric(url, "router_inbox_transactions"),
                        metric(url, "router_inbox_messages"))
            threads0 = thread_cpu(router.pid)
            single, cpu_r = self.load(url + "/v1/track", duration=plan.saturation_s,
                                      watch=watch)
            threads1 = thread_cpu(router.pid)
            tx1, ev1 = (metric(url, "router_inbox_transactions"),
                        metric(url, "router_inbox_messages"))
            base2, cpu_b2 = self.load(self.base_url + "/v1/track", duration=plan.saturation_s,
                                      watch=watch)
            base_rate = (base1.rate + base2.rate) / 2
            out["baseline_single"] = {"before": summarize(base1, cpu=cpu_b1),
                                      "after": summarize(base2, cpu=cpu_b2),
                                      "events_per_s": round(base_rate, 1)}
            out["router_single"] = summarize(single, cpu=cpu_r)
            out["router_single"]["ratio_to_baseline"] = round(single.rate / base_rate, 3)
            out["router_single"]["events_per_transaction"] = round(
                (ev1 - ev0) / max(1.0, tx1 - tx0), 1)
            out["router_single"]["cpu_ms_per_event"] = round(
                10 * cpu_r.get("router", 0) / max(1e-9, single.rate), 3)
            out["router_single"]["threads"] = thread_split(threads0, threads1, router.pid)
            # the fixed offered rate, then (if not sustained) rates it can sustain
            fixed_runs = []
            rate = plan.fixed_rate
            for attempt in range(1 + plan.fixed_tries):
                result, cpu = self.load(url + "/v1/track", duration=plan.fixed_s, rate=rate,
                                        concurrency=256, grace=plan.grace_s, watch=watch)
                fixed_runs.append(summarize(result, cpu=cpu))
                if result.sustained or attempt == plan.fixed_tries:
                    break
                rate = nice_rate(min(0.8 * single.rate, 0.8 * rate) if attempt == 0
                                 else 0.75 * rate)
            out["router_single_fixed_rate"] = fixed_runs
            low, cpu = self.load(url + "/v1/track", duration=plan.fixed_s, rate=plan.low_rate,
                                 concurrency=64, grace=plan.grace_s, watch=watch)
            out["router_single_low_rate"] = summarize(low, cpu=cpu)
            base_batch, cpu_bb = self.load(self.base_url + "/v1/batch", "batch", concurrency=8,
                                           duration=plan.batch_s, watch=watch)
            batch, cpu_rb = self.load(url + "/v1/batch", "batch", concurrency=8,
                                      duration=plan.batch_s, watch=watch)
            out["baseline_batch100"] = summarize(base_batch, 100, cpu_bb)
            out["router_batch100"] = summarize(batch, 100, cpu_rb)
            out["router_batch100"]["ratio_to_baseline"] = round(batch.rate / base_batch.rate, 3)
            out["router_rss_kb"] = memory_kb(router.pid)
        finally:
            self.stop(router)
        self.results["ingest"] = out

    def ingest_with_workers(self) -> None:
        """The shipped default: `router serve` with delivery in the same process."""
        plan = self.plan
        out: dict[str, Any] = {"mode": "router serve (delivery workers in the same process, "
                               "13 destinations delivering to the sandbox)"}
        router, url = self.router(workers=True)
        try:
            out["idle"] = idle_cost(router.pid, plan.idle_s)
            self.warm(url)
            single, cpu = self.load(url + "/v1/track", duration=plan.saturation_s,
                                    watch={"router": router.pid,
                                           "sandbox": self.sink.pid if self.sink else None})
            out["router_single"] = summarize(single, cpu=cpu)
            base = self.results.get("ingest", {}).get("baseline_single", {}).get("events_per_s")
            if base:
                out["router_single"]["ratio_to_baseline"] = round(single.rate / base, 3)
        finally:
            self.stop(router)
        router, url = self.router(workers=True)
        try:
            batch, cpu = self.load(url + "/v1/batch", "batch", concurrency=8,
                                   duration=plan.batch_s,
                                   watch={"router": router.pid,
                                          "sandbox": self.sink.pid if self.sink else None})
            out["router_batch100"] = summarize(batch, 100, cpu)
        finally:
            self.stop(router)
        self.results["ingest_with_workers"] = out

    # --- 3 + 4: end to end and fan-out ------------------------------------------------------

    def e2e_once(self, rate: float, multi: bool = False) -> dict[str, Any]:
        """Ingest at `rate` events/s for e2e_s seconds with all 13 destinations enabled;
        trace every destination request the sink receives back to its event's send time;
        then wait (bounded) for the queue to drain."""
        plan = self.plan
        store = self.fresh_db()
        token = uuid.uuid4().hex[:8]
        sink = SinkCollector(self.sink_url, token)
        sink.clear()
        procs: list[Proc] = []
        try:
            if multi:
                port = free_port()
                first, url = self.router(workers=False, store=store, port=port, reuse_port=True,
                                         name="serve-a")
                second = self.procs.start("serve-b", router_cmd(
                    "serve", "--store", store, "--port", str(port),
                    "--log-level", "WARNING", "--role", "gateway", "--reuse-port"),
                    cwd=self.engine)
                procs += [first, second]
                serving = wait_reuse_port(url + "/healthz", 2)
                procs.append(self.worker(store))
                watch = {"serve-a": first.pid, "serve-b": second.pid, "worker": procs[2].pid}
            else:
                router, url = self.router(workers=True, store=store)
                procs.append(router)
                serving = 1
                watch = {"router": router.pid}
            watch["sandbox"] = self.sink.pid if self.sink else None
            self.warm_e2e(url, token)
            sink.clear()  # forget the warm-up's requests
            assert self.pool is not None
            meter = CpuMeter({"load": self.pool.pid, "bench": os.getpid(), **watch})
            rss: list[tuple[float, dict[str, int]]] = []
            future = self.pool.submit(url + "/v1/track", "single", token, concurrency=256,
                                      duration=plan.e2e_s, rate=rate, record_sends=True,
                                      first=1_000_000, grace=2 * plan.grace_s)
            next_poll = time.monotonic() + 1.0
            while True:
                done, _ = concurrent.futures.wait(
                    [future], timeout=max(0.0, next_poll - time.monotonic()))
                if done:
                    break
                sink.poll()
                rss.append((time.time(), {n: memory_kb(p)["VmRSS"] for n, p in watch.items()
                                          if p and n != "sandbox" and memory_kb(p)}))
                next_poll = time.monotonic() + sink.next_interval()
            load = future.result()
            cpu = meter.read()
            sent_at = load.sent_at
            t_start, t_end = min(sent_at.values()), max(sent_at.values())
            ok = load.sent - load.errors - load.unfinished
            # destinations that hold events longer than the drain wait are not awaited
            awaited = {d for d, lim in self.limits.items()
                       if (lim["delay_seconds"] or 0) < plan.e2e_drain_max_s}
            expected = len(awaited) * len(sent_at)
            drain_deadline = time.monotonic() + plan.e2e_drain_max_s
            sink.poll()

            def received() -> int:
                return sum(1 for d, _ in sink.first_seen if d in awaited)

            while received() < expected and time.monotonic() < drain_deadline:
                time.sleep(min(1.0, sink.next_interval()))
                sink.poll()
            drain_stopped = time.time()
            admin = self.admin_sample(url, token, sorted(sent_at))
            rss_end = {n: memory_kb(p) for n, p in watch.items() if p and n != "sandbox"}
        finally:
            self.stop(*procs)
        return e2e_summary(rate, load, ok, cpu, sink, sent_at, t_start, t_end, drain_stopped,
                           admin, rss, rss_end, serving, multi, self.limits, awaited)

    def warm_e2e(self, url: str, token: str) -> None:
        """A second of light load so connections, caches and tokens are warm."""
        self.load(url + "/v1/track", token=token + "w", duration=self.plan.warmup_s, rate=20,
                  concurrency=8)
        time.sleep(1.0)

    def admin_sample(self, url: str, token: str, ns: list[int]) -> dict[str, list[float]]:
        """Delivery latency_ms (router arrival -> platform acknowledgement) of a sample of
        events, from GET /admin/events/{id}."""
        out: dict[str, list[float]] = {}
        if not ns:
            return out
        k = self.plan.e2e_admin_sample
        step = max(1, len(ns) // k)
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        for n in ns[::step][:k]:
            try:
                body = requests.get(f"{url}/admin/events/bench-{token}-{n}", headers=headers,
                                    timeout=10).json()
            except (requests.RequestException, ValueError):
                continue
            for delivery in body.get("deliveries", []):
                if delivery.get("status") == "delivered" and delivery.get("latency_ms") is not None:
                    out.setdefault(delivery["destination"], []).append(float(delivery["latency_ms"]))
        return out

    def e2e(self, key: str, rates: list[float] | None = None, multi: bool = False) -> None:
        """At the issue's rate; if not sustained, at lower rates found from what kept up."""
        plan = self.plan
        runs: list[dict[str, Any]] = []
        fixed = rates is not None
        queue = list(rates or [plan.e2e_rate])
        while queue and len(runs) < (len(rates) if fixed else plan.e2e_tries):
            rate = queue.pop(0)
            run = self.e2e_once(rate, multi=multi)
            runs.append(run)
            if not fixed and not run["sustained"]:
                queue.append(next_e2e_rate(run))
            elif not fixed:
                break
        self.results[key] = {"runs": runs}

    # --- 5: memory ---------------------------------------------------------------------------

    def memory(self) -> None:
        """RSS of `router serve --role gateway` after N1 and N2 events of batched ingest."""
        plan = self.plan
        n2 = plan.memory_events
        n1 = plan.memory_checkpoint
        router, url = self.router(workers=False)
        out: dict[str, Any] = {"mode": "router serve --role gateway, /v1/batch x100, 8 "
                               "connections", "n1": n1, "n2": n2, "samples": []}
        token = uuid.uuid4().hex[:8]
        started = time.monotonic()
        try:
            out["rss_start_kb"] = memory_kb(router.pid)
            sent = 0
            for target in (n1, n2):
                requests_needed = max(0, (target - sent) // 100)
                remaining = plan.memory_max_s - (time.monotonic() - started)
                if remaining <= 5:
                    break
                assert self.pool is not None
                future = self.pool.submit(url + "/v1/batch", "batch", token, concurrency=8,
                                          duration=remaining, first=sent // 100,
                                          max_requests=requests_needed, grace=10.0)
                while True:
                    done, _ = concurrent.futures.wait([future], timeout=2.0)
                    out["samples"].append([round(time.monotonic() - started, 1),
                                           memory_kb(router.pid).get("VmRSS")])
                    if done:
                        break
                result = future.result()
                sent += (result.requests - result.errors) * 100
                out[f"after_{target}"] = {"events": sent, **memory_kb(router.pid),
                                          "seconds": round(time.monotonic() - started, 1),
                                          "errors": result.errors}
            out["complete"] = sent >= n2
            a, b = out.get(f"after_{n1}"), out.get(f"after_{n2}")
            if a and b:
                out["growth_rss"] = round(b["VmRSS"] / a["VmRSS"] - 1, 3)
                out["growth_hwm"] = round(b["VmHWM"] / a["VmHWM"] - 1, 3)
            out["events_per_s"] = round(sent / max(1e-9, time.monotonic() - started), 1)
        finally:
            self.stop(router)
        self.results["memory"] = out

    # --- 6: profiles -------------------------------------------------------------------------

    def profile(self) -> None:
        """cProfile of the ingest path (single events, closed loop) and of delivery
        (`router worker` while `serve --role gateway` takes a fixed rate)."""
        plan = self.plan
        out: dict[str, Any] = {}
        prof = self.out_dir / f"{self.stamp}-ingest.prof"
        router, url = self.router(workers=False, profile=prof, name="router-cprofile")
        try:
            self.warm(url)
            t0 = thread_cpu(router.pid)
            result, cpu = self.load(url + "/v1/track", duration=plan.profile_s,
                                    watch={"router": router.pid})
            t1 = thread_cpu(router.pid)
            out["ingest_load"] = summarize(result, cpu=cpu)
            out["ingest_threads"] = thread_split(t0, t1, router.pid)
        finally:
            self.stop(router, timeout=60)
        out["ingest"] = write_profile(prof, "prepare")
        # delivery: the worker process alone, so its profile is only the delivery path
        store = self.fresh_db()
        prof = self.out_dir / f"{self.stamp}-delivery.prof"
        router, url = self.router(workers=False, store=store)
        worker = None
        try:
            worker = self.worker(store, profile=prof)
            rate = plan.e2e_rate / 10
            result, cpu = self.load(url + "/v1/track", duration=plan.profile_s, rate=rate,
                                    concurrency=64, watch={"worker": worker.pid})
            time.sleep(2.0)
            out["delivery_load"] = summarize(result, cpu=cpu)
        finally:
            self.stop(*(p for p in (worker, router) if p is not None), timeout=60)
        out["delivery"] = write_profile(prof, "render_payload", DESTINATIONS,
                                        per="event (13 deliveries)")
        self.results["profile"] = out

    # --- the multi-process mode -------------------------------------------------------------

    def multi_ingest(self) -> None:
        """Two `router serve --role gateway --reuse-port` on one port vs one process, and
        two baseline processes on one port vs one."""
        plan = self.plan
        out: dict[str, Any] = {"mode": "2 x router serve --role gateway --reuse-port (one port, "
                               "one SQLite file)"}
        port = free_port()
        store = self.fresh_db()
        a, url = self.router(workers=False, store=store, port=port, reuse_port=True,
                             name="serve-a")
        b = self.procs.start("serve-b", router_cmd("serve", "--store", store, "--port",
                                                   str(port), "--log-level", "WARNING",
                                                   "--role", "gateway", "--reuse-port"),
                             cwd=self.engine)
        bport = free_port()
        base_a = self.procs.start("baseline-a", [sys.executable, "-m", "bench.baseline_server",
                                                 str(bport), "--reuse-port"],
                                  f"http://127.0.0.1:{bport}/")
        base_b = self.procs.start("baseline-b", [sys.executable, "-m", "bench.baseline_server",
                                                 str(bport), "--reuse-port"])
        try:
            out["processes_serving"] = wait_reuse_port(url + "/healthz", 2)
            time.sleep(1.0)
            self.warm(url)
            self.warm(f"http://127.0.0.1:{bport}")
            single, cpu = self.load(url + "/v1/track", duration=plan.saturation_s,
                                    watch={"serve-a": a.pid, "serve-b": b.pid})
            base, cpu_b = self.load(f"http://127.0.0.1:{bport}/v1/track",
                                    duration=plan.saturation_s,
                                    watch={"baseline-a": base_a.pid, "baseline-b": base_b.pid})
            batch, cpu_r = self.load(url + "/v1/batch", "batch", concurrency=8,
                                     duration=plan.batch_s,
                                     watch={"serve-a": a.pid, "serve-b": b.pid})
            out["router_single"] = summarize(single, cpu=cpu)
            out["baseline_single_2proc"] = summarize(base, cpu=cpu_b)
            out["router_single"]["ratio_to_baseline_2proc"] = round(single.rate / base.rate, 3)
            one = self.results.get("ingest", {}).get("router_single", {}).get("events_per_s")
            if one:
                out["router_single"]["ratio_to_one_process"] = round(single.rate / one, 3)
            out["router_batch100"] = summarize(batch, 100, cpu_r)
            one_b = self.results.get("ingest", {}).get("router_batch100", {}).get("events_per_s")
            if one_b:
                out["router_batch100"]["ratio_to_one_process"] = round(
                    batch.rate * 100 / one_b, 3)
        finally:
            self.stop(a, b, base_a, base_b)
        self.results["multi_ingest"] = out


def next_e2e_rate(run: dict[str, Any]) -> float:
    """The next, lower rate to try after an unsustained end-to-end run.

    Below the fan-out the process achieved (deliveries/s / 13) and, if ingest fell
    behind, below the ingest rate achieved. If ingest kept up, also below the slowest
    destination that fell behind (a destination's rate is only meaningful then: with
    ingest saturating the process, every worker is starved alike)."""
    rate = run["offered_per_s"]
    # what delivery managed, during ingest or (once ingest stopped competing) overall
    capacity = max(run["deliveries_per_s_during_ingest"], run["deliveries_per_s_overall"])
    limits = [0.8 * capacity / DESTINATIONS, 0.8 * rate]
    if not run["ingest"]["sustained"]:
        limits.append(0.8 * run["ingest"]["events_per_s"])
    else:
        limits += [0.9 * d["delivered_per_s_during_ingest"]
                   for d in run["destinations"].values()
                   if not d["kept_up"] and d["awaited"] and not d["config_delay_s"]]
    return nice_rate(max(5.0, min(limits)))


def e2e_summary(rate: float, load: LoadResult, ok: int, cpu: dict[str, float],
                sink: SinkCollector, sent_at: dict[int, float], t_start: float, t_end: float,
                drain_stopped: float, admin: dict[str, list[float]],
                rss: list[tuple[float, dict[str, int]]], rss_end: dict[str, Any],
                serving: int, multi: bool, limits: dict[str, dict[str, Any]],
                awaited: set[str]) -> dict[str, Any]:
    window = max(1e-9, t_end - t_start)
    by_dest: dict[str, list[tuple[int, float]]] = {}
    for (dest, n), received in sink.first_seen.items():
        if n in sent_at:
            by_dest.setdefault(dest, []).append((n, received))
    destinations: dict[str, Any] = {}
    all_latencies: list[float] = []
    engine_latencies: list[float] = []
    by_design: list[str] = []
    last_received = t_end
    for dest in sorted(set(by_dest) | set(limits) | {r.destination for r in sink.records}):
        # (latencies of destinations not awaited are left out of every aggregate)
        limit = limits.get(dest, {})
        delay = float(limit.get("delay_seconds") or 0.0)
        capacity = limit.get("capacity_events_per_s")
        per_second = limit.get("rate_per_second")
        # the shipped config alone rules the target out for this destination at this rate:
        # a hold, a rate limit below the offered rate, or requests paced further apart
        # than the p50 target
        reasons = []
        if delay > 0:
            reasons.append(f"holds every event {delay:.0f} s")
        if capacity is not None and capacity < rate:
            reasons.append(f"at most {capacity:,.0f} events/s")
        if per_second and 1000 / per_second > TARGETS["e2e_p50_ms"]:
            reasons.append(f"one request per {1000 / per_second:,.0f} ms")
        unreachable = bool(reasons)
        pairs = by_dest.get(dest, [])
        latencies = [(received - sent_at[n]) * 1000 for n, received in pairs]
        got = {n for n, _ in pairs}
        missing = [n for n in sent_at if n not in got]
        # events this destination had not received when the drain wait ended: their
        # latency is at least (end of wait - send time); kept so percentiles are honest
        censored = [(drain_stopped - sent_at[n]) * 1000 for n in missing]
        if dest not in awaited:  # held longer than the wait: not measured in this run
            latencies, censored = [], []
        during = sum(1 for _, received in pairs if received <= t_end)
        last = max((received for _, received in pairs), default=t_end)
        drain = last - t_end if not missing else None
        if dest in awaited:
            last_received = max(last_received, last)
        destinations[dest] = {
            "delivered": len(pairs), "missing": len(missing), "awaited": dest in awaited,
            "requests": sum(1 for r in sink.records if r.destination == dest),
            "p50_ms": pct(latencies + censored, 50), "p99_ms": pct(latencies + censored, 99),
            "max_ms": round(max(latencies + censored), 1) if latencies or censored else None,
            "delivered_per_s_during_ingest": round(during / window, 1),
            "drain_s": round(drain, 2) if drain is not None else None,
            "kept_up": not missing and drain is not None and drain <= delay + 5.0,
            "config_delay_s": delay, "config_capacity_events_per_s": capacity,
            "target_unreachable_by_config": reasons,
            "admin_latency_p50_ms": pct(admin.get(dest, []), 50),
            "admin_latency_p99_ms": pct(admin.get(dest, []), 99),
            "admin_sample": len(admin.get(dest, [])),
        }
        all_latencies += latencies + censored
        if unreachable:
            by_design.append(dest)
        else:
            engine_latencies += latencies + censored
    expected = len(awaited) * len(sent_at)
    delivered = sum(1 for d, n in sink.first_seen if d in awaited and n in sent_at)
    complete = delivered >= expected
    during_all = sum(1 for (_, n), received in sink.first_seen.items()
                     if n in sent_at and received <= t_end)
    ingest = summarize(load)
    sustained = bool(load.sustained and complete and all(
        d["kept_up"] for name, d in destinations.items() if name in awaited)
        and all(destinations.get(name, {}).get("delivered") for name in awaited))
    return {
        "offered_per_s": rate, "multi_process": multi, "ingest_processes_serving": serving,
        "seconds": round(window, 1), "events_sent": len(sent_at), "events_ok": ok,
        "ingest": ingest,
        "deliveries_expected": expected, "deliveries_received": delivered,
        "not_awaited": sorted(set(destinations) - awaited),
        "deliveries_per_s_during_ingest": round(during_all / window, 1),
        "deliveries_per_s_overall": round(
            len(sink.first_seen) / max(1e-9, max((t for t in sink.first_seen.values()),
                                                 default=t_end) - t_start), 1),
        "drain_s": round(last_received - t_end, 2) if complete else None,
        "drain_waited_s": round(drain_stopped - t_end, 1),
        "sustained": sustained,
        "e2e_p50_ms": pct(all_latencies, 50), "e2e_p99_ms": pct(all_latencies, 99),
        "unreachable_by_config": by_design,
        "e2e_engine_p50_ms": pct(engine_latencies, 50),
        "e2e_engine_p99_ms": pct(engine_latencies, 99),
        "destinations": destinations,
        "cpu_percent_of_one_core": cpu,
        "sink": {"polls": sink.polls, "poll_seconds": round(sink.poll_seconds, 2),
                 "possible_gaps": sink.possible_gaps},
        "rss_kb_samples": [[round(t - t_start, 1), v] for t, v in rss],
        "rss_end_kb": rss_end,
    }


def idle_cost(pid: int, seconds: float) -> dict[str, Any]:
    """What the router costs with no traffic at all: CPU and bytes written to disk."""
    def io() -> dict[str, int]:
        out = {}
        try:
            for line in Path(f"/proc/{pid}/io").read_text().splitlines():
                key, _, value = line.partition(":")
                out[key] = int(value)
        except OSError:
            pass
        return out

    time.sleep(1.0)  # past start-up
    c0, io0, t0 = cpu_seconds(pid), io(), time.perf_counter()
    time.sleep(seconds)
    c1, io1, elapsed = cpu_seconds(pid), io(), time.perf_counter() - t0
    return {"seconds": round(elapsed, 1),
            "cpu_percent_of_one_core": round(100 * (c1 - c0) / elapsed, 1),
            "disk_write_kb_per_s": round((io1.get("write_bytes", 0) - io0.get("write_bytes", 0))
                                         / 1024 / elapsed, 1),
            "write_syscalls_per_s": round((io1.get("syscw", 0) - io0.get("syscw", 0))
                                          / elapsed, 1)}


# --- /proc per-thread CPU -----------------------------------------------------------------

def thread_cpu(pid: int) -> dict[int, float]:
    out = {}
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                text = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
            except OSError:
                continue
            fields = text[text.rindex(")") + 2:].split()
            out[int(tid)] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        pass
    return out


def thread_split(before: dict[int, float], after: dict[int, float], pid: int) -> dict[str, Any]:
    """CPU seconds of the main (event loop) thread vs all other threads (the SQLite writer
    thread, aiosqlite's reader thread): cProfile sees only the main thread."""
    main = after.get(pid, 0.0) - before.get(pid, 0.0)
    other = sum(v - before.get(t, 0.0) for t, v in after.items() if t != pid)
    total = main + other
    return {"main_thread_cpu_s": round(main, 2), "other_threads_cpu_s": round(other, 2),
            "other_threads_share": round(other / total, 3) if total else None}


def write_profile(prof: Path, event_function: str, per_event_calls: int = 1,
                  per: str = "event") -> dict[str, Any]:
    """pstats top-40 by cumulative and by own time, beside the .prof, and a summary.

    Shares are of the profiled busy time: total minus the event loop's idle wait in
    epoll and minus start-up (config compilation). Events are counted by the calls of
    `event_function` (e.g. prepare(): once per ingested event)."""
    if not prof.exists():
        return {"error": f"{prof.name} was not written"}
    stats = pstats.Stats(str(prof))
    text = io.StringIO()
    for key in ("cumulative", "tottime"):
        text.write(f"==== top 40 by {key} ====\n")
        pstats.Stats(str(prof), stream=text).strip_dirs().sort_stats(key).print_stats(40)
    txt = prof.with_suffix(".txt")
    txt.write_text(text.getvalue())
    total = stats.total_tt  # type: ignore[attr-defined]
    rows = [(func, nc, tt, ct) for func, (_, nc, tt, ct, _) in
            stats.stats.items()]  # type: ignore[attr-defined]

    def name(func: tuple[str, int, str]) -> str:
        path, line, fn = func
        short = path.replace(str(REPO) + "/", "")
        if "/engine/router/" in short:  # the engine snapshot
            short = "router/" + short.split("/engine/router/", 1)[1]
        if "site-packages/" in short:
            short = short.split("site-packages/", 1)[1]
        elif "/lib/python" in short:
            short = "stdlib:" + short.split("/lib/python", 1)[1].split("/", 1)[-1]
        return f"{short}:{line}({fn})" if line else fn

    idle = sum(tt for f, _, tt, _ in rows if f[2] == "<method 'poll' of 'select.epoll' objects>")
    startup = max((ct for f, _, _, ct in rows if f[2] == "_load_or_exit"), default=0.0)
    busy = max(1e-9, total - idle - startup)
    calls = sum(nc for f, nc, _, _ in rows if f[2] == event_function and "router/" in f[0])
    events = max(1, calls // per_event_calls)
    own = sorted((r for r in rows if r[0][2] != "<method 'poll' of 'select.epoll' objects>"),
                 key=lambda r: -r[2])[:20]
    skip = ("router/cli.py", "router/server/serve.py", "router/config/")
    cumulative = sorted((r for r in rows if "/router/" in r[0][0]
                         and not any(k in r[0][0] for k in skip)), key=lambda r: -r[3])[:25]
    return {
        "prof": prof.name, "text": txt.name, "total_s": round(total, 2),
        "idle_s": round(idle, 2), "startup_s": round(startup, 2), "busy_s": round(busy, 2),
        "events": events, "per": per, "busy_ms_per_event": round(1000 * busy / events, 3),
        "own_time_top": [{"function": name(f), "calls": n, "own_s": round(tt, 3),
                          "share": round(tt / busy, 3),
                          "ms_per_event": round(1000 * tt / events, 4)}
                         for f, n, tt, _ in own],
        "cumulative_top": [{"function": name(f), "calls": n, "cum_s": round(ct, 3),
                            "share": round(ct / busy, 3),
                            "ms_per_event": round(1000 * ct / events, 3)}
                           for f, n, _, ct in cumulative],
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short runs (~1-2 minutes)")
    parser.add_argument("--memory-events", type=int, default=None,
                        help="events for the memory check (default 100,000 full, 10,000 "
                             "quick; RSS is read after a tenth of them and after all)")
    parser.add_argument("--fixed-rate", type=float, default=1000.0,
                        help="offered rate for ingest latency (events/s, default 1000)")
    parser.add_argument("--e2e-rate", type=float, default=500.0,
                        help="offered rate for end-to-end latency (events/s, default 500)")
    parser.add_argument("--concurrency", type=int, default=64,
                        help="connections for single-event saturation runs (default 64)")
    parser.add_argument("--only", default=None,
                        help="comma-separated subset: ingest,workers,e2e,fanout,memory,"
                             "profile,multi")
    parser.add_argument("--no-multi", action="store_true", help="skip the multi-process mode")
    parser.add_argument("--client", choices=("raw", "aiohttp"), default="raw",
                        help="load-generator HTTP client (default raw; see bench/load.py)")
    parser.add_argument("--out-dir", default=str(REPO / "bench" / "results"))
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary work directory (process logs, databases)")
    args = parser.parse_args()
    plan = Plan(args)
    only = set(args.only.split(",")) if args.only else None
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    bench = Bench(plan, stamp, out_dir, args.client, args.keep)
    header: dict[str, Any] = {
        "started_at": datetime.now(UTC).isoformat(), "quick": plan.quick,
        "command": " ".join(["python", "-m", "bench", *sys.argv[1:]]),
        "machine": machine(), "targets": TARGETS, "git": git_state(),
        "engine_fingerprint": fingerprint(bench.engine),
        "engine": "a copy of router/, configs/, mappings/ and destinations.d/ taken at the "
                  "start; router processes run `python -m router.cli` in it",
        "destination_limits": bench.limits,
        "sink": "router sandbox (separate process); all 13 demo destinations deliver to it "
                "via DEMO_SINK_URL",
        "load_generator": f"asyncio, {args.client} HTTP/1.1 client, in its own process "
                          "(bench/load.py)",
        "baseline": "bench/baseline_server.py: bare aiohttp, orjson.loads of the body, 200",
        "plan": {k: v for k, v in vars(plan).items()},
    }
    failures: dict[str, str] = {}
    timings: dict[str, float] = {}

    def want(name: str) -> bool:
        return only is None or name in only

    steps = [("ingest", bench.ingest), ("workers", bench.ingest_with_workers),
             ("e2e", lambda: bench.e2e("e2e")), ("memory", bench.memory),
             ("profile", bench.profile)]
    if plan.multi:
        steps += [("multi", bench.multi_ingest), ("multi", lambda: bench.e2e(
            "multi_e2e", rates=multi_rates(bench.results, plan), multi=True))]
    bench_cpu0 = cpu_seconds(os.getpid())
    with bench:
        for name, step in steps:
            if not want(name) and not (name == "e2e" and want("fanout")):
                continue
            print(f"[bench {time.monotonic() - started:6.0f}s] {name} ...", flush=True)
            step_started = time.monotonic()
            try:
                step()
            except Exception:  # keep the other measurements; report this one
                failures[name] = traceback.format_exc()
                print(failures[name], file=sys.stderr, flush=True)
            timings[name] = round(timings.get(name, 0) + time.monotonic() - step_started, 1)
    results = {**header, **bench.results, "failures": failures, "step_seconds": timings,
               "duration_s": round(time.monotonic() - started, 1),
               "working_tree_changed_during_run": fingerprint() != fingerprint(bench.engine),
               "bench_process_cpu_s": round(cpu_seconds(os.getpid()) - bench_cpu0, 1)}
    path = out_dir / f"{stamp}.json"
    path.write_text(json.dumps(results, indent=2))
    summary = render(results)
    path.with_suffix(".md").write_text(summary)
    print(summary)
    print(f"\nresults: {path}\nsummary: {path.with_suffix('.md')}")


def git_state() -> dict[str, Any]:
    """The commit measured, and whether the engine differs from it (read-only git)."""
    import subprocess

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,
                                  timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    return {"commit": git("rev-parse", "--short", "HEAD"),
            "router_modified": bool(git("status", "--porcelain", "--", "router"))}


def multi_rates(results: dict[str, Any], plan: Plan) -> list[float]:
    """The issue's rate (full run only), and the best rate the single process sustained
    end to end."""
    rates = [] if plan.quick else [plan.e2e_rate]
    runs = results.get("e2e", {}).get("runs", [])
    sustained = [r["offered_per_s"] for r in runs if r["sustained"]]
    if sustained:
        rates.append(max(sustained))
    elif runs:
        rates.append(runs[-1]["offered_per_s"])
    return list(dict.fromkeys(rates)) or [plan.e2e_rate]


if __name__ == "__main__":
    main()
