"""Process plumbing for `python -m bench`: start and stop the servers under test, the
load generator process, /proc readings (RSS, CPU) and the sink collector.

Everything listens on and sends to 127.0.0.1. Every process started here is
registered with a `Processes` registry whose `stop_all()` runs in a `finally`.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import requests

from bench.ingest import AUTH, order_completed, poll_until_up
from bench.load import LoadResult, run_load

REPO = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
ADMIN_TOKEN = "bench-admin-token"
SANDBOX_MAX_RECORDED = 20_000  # router/delivery/sandbox.py MAX_RECORDED


# --- payloads (run in the load process) ----------------------------------------------

def _single(token: str, n: int) -> bytes:
    return orjson.dumps(order_completed(n, token))


def _batch(token: str, n: int) -> bytes:
    return orjson.dumps({"batch": [order_completed(n * 100 + i, token) for i in range(100)]})


def _load_process(url: str, kind: str, token: str, concurrency: int, duration: float,
                  rate: float | None, record_sends: bool, first: int, max_requests: int,
                  grace: float, client: str) -> LoadResult:
    maker = _batch if kind == "batch" else _single

    def make(n: int) -> bytes:
        return maker(token, n)

    return asyncio.run(run_load(url, make, concurrency=concurrency, duration=duration,
                                headers=AUTH, rate=rate, record_sends=record_sends,
                                first=first, max_requests=max_requests, grace=grace,
                                client=client))


class LoadPool:
    """One load-generator process for the whole run (spawned, so it shares nothing
    with the orchestrator); its CPU time is read around every load."""

    def __init__(self, client: str = "raw") -> None:
        self.client = client
        self.pool = ProcessPoolExecutor(max_workers=1,
                                        mp_context=multiprocessing.get_context("spawn"))
        self.pool.submit(time.sleep, 0).result()  # start it now, not inside a measurement

    @property
    def pid(self) -> int | None:
        procs = getattr(self.pool, "_processes", None) or {}
        return next(iter(procs), None)

    def submit(self, url: str, kind: str, token: str, *, concurrency: int, duration: float,
               rate: float | None = None, record_sends: bool = False, first: int = 0,
               max_requests: int = 2_000_000, grace: float = 10.0) -> Future[LoadResult]:
        return self.pool.submit(_load_process, url, kind, token, concurrency, duration, rate,
                                record_sends, first, max_requests, grace, self.client)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


# --- /proc ------------------------------------------------------------------------------

def cpu_seconds(pid: int | None) -> float:
    """user + system CPU seconds of a process (0 if it is gone)."""
    if pid is None:
        return 0.0
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = text[text.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def memory_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) in kB."""
    out: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
    except OSError:
        pass
    return out


class CpuMeter:
    """CPU utilisation of several processes over an interval, in % of one core."""

    def __init__(self, pids: dict[str, int | None]):
        self.pids = pids
        self.t0 = time.perf_counter()
        self.c0 = {name: cpu_seconds(pid) for name, pid in pids.items()}

    def read(self) -> dict[str, float]:
        elapsed = time.perf_counter() - self.t0
        return {name: round(100 * (cpu_seconds(pid) - self.c0[name]) / elapsed, 1)
                for name, pid in self.pids.items()} if elapsed > 0 else {}


def machine() -> dict[str, Any]:
    import sqlite3

    import aiohttp

    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kb = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    except OSError:
        pass
    try:
        import uvloop  # noqa: F401

        loop = "uvloop"
    except ImportError:
        loop = "asyncio (default selector loop; uvloop is not installed)"
    return {"nproc": os.cpu_count(), "cpu_model": model,
            "memory_gib": round(mem_kb / 1024 / 1024, 1),
            "python": sys.version.split()[0], "aiohttp": aiohttp.__version__,
            "orjson": orjson.__version__, "sqlite": sqlite3.sqlite_version,
            "event_loop": loop, "kernel": os.uname().release}


_LIMITS = """
import json
from router.config.compile import check_config
config, _ = check_config(".")
out = {}
for name, dest in (config.destinations.items() if config else ()):
    rate = dest.rate_per_second
    out[name] = {"delay_seconds": float(dest.delay_seconds or 0.0), "rate_per_second": rate,
                 "max_events": dest.max_events,
                 "capacity_events_per_s": rate * max(1, dest.max_events) if rate else None}
print(json.dumps(out))
"""


def destination_limits(engine: Path = REPO) -> dict[str, dict[str, float | None]]:
    """What the shipped config itself imposes on each destination's latency and rate: a
    hold before sending (delay_seconds) and a request rate limit x events per request.
    Compiled by the engine snapshot, in a subprocess."""
    done = subprocess.run([sys.executable, "-c", _LIMITS], cwd=engine, capture_output=True,
                          text=True, timeout=120)
    try:
        return dict(orjson.loads(done.stdout))
    except orjson.JSONDecodeError:
        return {}


def fingerprint(root: Path = REPO) -> str:
    """A hash of the engine and the shipped config (router/, configs/, mappings/,
    destinations.d/)."""
    import hashlib

    digest = hashlib.sha1()
    for sub in ENGINE_PARTS:
        for path in sorted((root / sub).rglob("*")):
            if path.is_file() and path.suffix in (".py", ".yaml", ".yml", ".json"):
                digest.update(str(path.relative_to(root)).encode())
                digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


# --- processes --------------------------------------------------------------------------

@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class Processes:
    workdir: Path
    env: dict[str, str]
    running: list[Proc] = field(default_factory=list)

    def start(self, name: str, cmd: list[str], health: str | None = None,
              timeout: float = 60.0, cwd: Path | None = None) -> Proc:
        log = self.workdir / f"{name}-{len(self.running)}.log"
        with open(log, "wb") as out:
            popen = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=self.env,
                                     cwd=cwd or REPO, start_new_session=True)
        proc = Proc(name, popen, log)
        self.running.append(proc)
        if health:
            wait_up(health, proc, timeout)
        return proc

    def stop(self, *procs: Proc, timeout: float = 30.0) -> None:
        for proc in procs:
            if proc.alive():
                proc.popen.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.popen.kill()
                proc.popen.wait(10)
            if proc in self.running:
                self.running.remove(proc)

    def stop_all(self) -> None:
        self.stop(*list(reversed(self.running)))


def wait_up(url: str, proc: Proc, timeout: float = 60.0) -> None:
    poll_until_up(url, lambda: None if proc.alive() else
                  f"{proc.name} exited ({proc.popen.returncode}):\n{proc.tail()}", timeout)


def router_exe() -> str:
    return shutil.which("router") or "router"


ENGINE_PARTS = ("router", "configs", "mappings", "destinations.d")


def snapshot_engine(target: Path) -> Path:
    """Copy the engine and the shipped config into `target`, so every process of one run
    uses the same code and config even if the working tree changes meanwhile. Router
    processes run as `python -m router.cli ...` with `target` as their working
    directory: `-m` puts it first on sys.path, ahead of the editable install's finder."""
    target.mkdir(parents=True, exist_ok=True)
    for part in ENGINE_PARTS:
        shutil.copytree(REPO / part, target / part,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return target


def router_cmd(*args: str) -> list[str]:
    """`router ARGS`, as `python -m router.cli ARGS` (run it in the engine snapshot)."""
    return [sys.executable, "-m", "router.cli", *args]


def wait_reuse_port(url: str, expected: int, timeout: float = 30.0) -> int:
    """SO_REUSEPORT: every /healthz reports its process's uptime; fresh connections land
    on either process, so seeing `expected` distinct start times means all are serving."""
    deadline = time.monotonic() + timeout
    starts: list[float] = []  # one start time per process (uptime is rounded to 0.1 s)
    while time.monotonic() < deadline and len(starts) < expected:
        try:
            body = requests.get(url, timeout=0.5, headers={"Connection": "close"}).json()
            start = time.time() - float(body["uptime_seconds"])
            if all(abs(start - s) > 0.3 for s in starts):
                starts.append(start)
        except (requests.RequestException, ValueError, KeyError):
            time.sleep(0.1)
    return len(starts)


def metric(url: str, name: str) -> float:
    text = requests.get(url + "/metrics", timeout=5).text
    match = re.search(rf"^{name}_total (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


# --- the sink collector -------------------------------------------------------------------

@dataclass
class SinkRecord:
    destination: str
    received_at: float
    count: int
    ids: tuple[int, ...]


class SinkCollector:
    """Collects what `router sandbox` recorded, without losing records to its bounded
    list (SANDBOX_MAX_RECORDED): it polls GET /_sandbox/requests often enough that
    fewer than that arrive between two polls, and de-duplicates by
    (destination, received_at, path). Each request is traced to its events by the
    bench-<token>-<n> messageId or order-<token>-<n> order id anywhere in its body or
    query (some destinations carry only the order id)."""

    def __init__(self, url: str, token: str):
        self.url = url
        self.pattern = re.compile(rf"(?:bench|order)-{re.escape(token)}-(\d+)")
        self.seen: set[tuple[str, float, str]] = set()
        self.records: list[SinkRecord] = []
        self.first_seen: dict[tuple[str, int], float] = {}  # (destination, n) -> received_at
        self.possible_gaps = 0
        self.polls = 0
        self.poll_seconds = 0.0
        self.last_rate = 0.0
        self._last_poll = time.monotonic()

    def clear(self) -> None:
        requests.delete(self.url + "/_sandbox/requests", timeout=30)

    def poll(self) -> int:
        started = time.perf_counter()
        response = requests.get(self.url + "/_sandbox/requests", timeout=60)
        response.raise_for_status()
        items = orjson.loads(response.content)["requests"]
        new = 0
        if len(items) >= SANDBOX_MAX_RECORDED and items:
            oldest = items[0]
            if (oldest["destination"], oldest["received_at"], oldest["path"]) not in self.seen \
                    and self.polls:
                self.possible_gaps += 1  # the list wrapped between two polls
        for item in items:
            key = (item["destination"], item["received_at"], item["path"])
            if key in self.seen:
                continue
            self.seen.add(key)
            new += 1
            text = orjson.dumps([item.get("body"), item.get("query")]).decode()
            ids = tuple(sorted({int(m) for m in self.pattern.findall(text)}))
            record = SinkRecord(item["destination"], float(item["received_at"]),
                                int(item.get("count") or 1), ids)
            self.records.append(record)
            for n in ids:
                self.first_seen.setdefault((record.destination, n), record.received_at)
        now = time.monotonic()
        self.last_rate = new / max(1e-3, now - self._last_poll)
        self._last_poll = now
        self.polls += 1
        self.poll_seconds += time.perf_counter() - started
        return new

    def next_interval(self, lo: float = 0.5, hi: float = 5.0) -> float:
        """Poll when at most ~40% of the sandbox's list can have been replaced."""
        if self.last_rate <= 0:
            return lo
        return max(lo, min(hi, 0.4 * SANDBOX_MAX_RECORDED / self.last_rate))

    def deliveries(self, destinations: Iterable[str] | None = None) -> int:
        wanted = set(destinations) if destinations is not None else None
        return sum(r.count for r in self.records
                   if wanted is None or r.destination in wanted)

    def delivered_pairs(self) -> int:
        return len(self.first_seen)
