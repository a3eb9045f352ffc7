"""Instruction counts (callgrind) for the two hot in-process paths: `prepare()` per
event, and rendering the 13 demo destinations' payloads per event.

Wall-clock timings on these shared 2-core machines swing by 30%; callgrind counts
instructions, which repeat exactly for the same code and input, so a small change can be
measured before/after. Run it on two checkouts (or around `git stash`) and compare.

    python -m bench.instructions            # ~2 minutes under valgrind
    python -m bench.instructions --events 100

Each figure is (run with N events - run with 0 events) / N, so start-up and config
compilation cancel out.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.ingest import order_completed

REPO = Path(__file__).resolve().parents[1]
RECEIVED = "2026-11-20T14:03:07.200Z"


def workload(events: int, stage: str) -> None:
    """What runs under valgrind: prepare every event, then (stage=render) render each
    routed destination's payload."""
    from router.config.compile import load_config
    from router.delivery.render import render_payload
    from router.pipeline.prepare import prepare

    config = load_config(str(REPO))
    mapping, account = config.mappings["segment"], config.accounts["demo"]
    environment = account.environments["production"]
    prepared = []
    for n in range(events):
        message = dict(order_completed(n, "instr"), _meta={"ip": "203.0.113.24",
                                                            "received_at": RECEIVED})
        prepared.append(prepare(config, mapping, account, "production", message, RECEIVED))
    if stage == "render":
        for item in prepared:
            assert item.event is not None
            body = item.event.to_dict()
            for name in item.routes or {}:
                render_payload(config.destinations[name], environment.destinations[name], 1,
                               body, None)


def count(events: int, stage: str) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        result = subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable,
             "-m", "bench.instructions", "--workload", stage, "--events", str(events)],
            cwd=REPO, capture_output=True, text=True, check=True)
    found = re.search(r"Collected : (\d+)", result.stderr)
    if not found:
        raise RuntimeError(f"no callgrind total in: {result.stderr[-500:]}")
    return int(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=300)
    parser.add_argument("--workload", choices=("prepare", "render"))
    args = parser.parse_args()
    if args.workload:
        workload(args.events, args.workload)
        return
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed")
    base = count(0, "prepare")
    prepare_total = count(args.events, "prepare")
    render_total = count(args.events, "render")
    per_prepare = (prepare_total - base) / args.events
    per_render = (render_total - prepare_total) / args.events
    print(f"prepare():                     {per_prepare:>12,.0f} instructions per event")
    print(f"render 13 payloads:            {per_render:>12,.0f} instructions per event")


if __name__ == "__main__":
    main()
