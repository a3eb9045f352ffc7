"""kill -9 under load: every acknowledged event is in the store after a restart.

    python -m bench.killtrials              # 5 trials, ~1 minute
    python -m bench.killtrials --trials 20

Each trial starts `router serve` (SQLite, delivery on, the sandbox as its sink) on the
same database, sends single events from 16 concurrent clients, each with an id of its
own, kills the process with SIGKILL at a random moment between 1 and 3 s, restarts it,
and checks that every event answered 200 is stored (read from SQLite) and that the
restarted router serves. A request cut by the kill has no answer and may or may not be
stored; that is the at-least-once contract (the sender retries it, dedup absorbs it).
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import orjson
import requests

from bench.ingest import AUTH, REPO, free_port, wait_up


def serve(db: Path, port: int, sink_port: int) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEMO_")}
    env["DEMO_SINK_URL"] = f"http://127.0.0.1:{sink_port}"
    process = subprocess.Popen(
        [sys.executable, "-m", "router.cli", "serve", "--store", f"sqlite:///{db}", "--port",
         str(port), "--sandbox", "--sandbox-port", str(sink_port), "--log-level", "WARNING"],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_up(f"http://127.0.0.1:{port}/healthz", process)
    return process


def trial(n: int, db: Path, rng: random.Random) -> dict[str, int]:
    port, sink_port = free_port(), free_port()
    process = serve(db, port, sink_port)
    acknowledged: list[str] = []
    stop = threading.Event()

    def client(c: int) -> None:
        session = requests.Session()
        i = 0
        while not stop.is_set():
            event_id = f"kill-{n}-{c}-{i}"
            i += 1
            body = orjson.dumps({"type": "track", "event": "Signed Up", "userId": f"u{c}",
                                 "messageId": event_id})
            try:
                response = session.post(f"http://127.0.0.1:{port}/v1/track", data=body,
                                        headers=AUTH, timeout=5)
            except requests.RequestException:
                return  # the kill cut it: no answer, no promise
            if response.status_code == 200:
                acknowledged.append(event_id)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(16)]
    for thread in threads:
        thread.start()
    time.sleep(rng.uniform(1.0, 3.0))
    process.send_signal(signal.SIGKILL)
    process.wait()
    stop.set()
    for thread in threads:
        thread.join()
    restarted = serve(db, free_port(), free_port())  # recovery: the WAL replays
    try:
        with sqlite3.connect(db) as conn:
            stored = {row[0] for row in conn.execute(
                "SELECT event_id FROM events WHERE event_id LIKE ?", (f"kill-{n}-%",))}
    finally:
        restarted.terminate()
        restarted.wait(30)
    lost = set(acknowledged) - stored
    return {"acknowledged": len(acknowledged), "stored": len(stored), "lost": len(lost),
            "stored_without_answer": len(stored - set(acknowledged))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--seed", type=int, default=10)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="router-kill-") as tmp:
        db = Path(tmp) / "kill.db"
        results = [trial(n, db, rng) for n in range(args.trials)]
    for n, result in enumerate(results):
        print(f"trial {n}: {result}")
    lost = sum(r["lost"] for r in results)
    print(f"{args.trials} trials, {sum(r['acknowledged'] for r in results)} acknowledged, "
          f"{lost} lost")
    sys.exit(1 if lost else 0)


if __name__ == "__main__":
    main()
