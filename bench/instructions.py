"""Instruction counts (callgrind) for the hot in-process paths: `prepare()` per event,
rendering the 13 demo destinations' payloads per event, and the card-number screen
(`check_pan`, on the acknowledgement path of every message).

Wall-clock timings on these shared 2-core machines swing by 30%; callgrind counts
instructions, which repeat exactly for the same code and input, so a small change can be
measured before/after. Run it on two checkouts (or around `git stash`) and compare.

    python -m bench.instructions            # ~2 minutes under valgrind
    python -m bench.instructions --events 100
    python -m bench.instructions --only guard   # the card-number screen alone, ~20 s

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


def _guard_message(n: int, with_ids: bool) -> dict[str, object]:
    """The bench event as the screen sees it; with_ids adds what makes the cheap
    pre-screen pass and the full search run: long digit runs that are not cards (a
    Shopify order gid, unix milliseconds, a _fbp cookie)."""
    message = dict(order_completed(n, "instr"), _meta={"ip": "203.0.113.24",
                                                        "received_at": RECEIVED})
    if with_ids:
        message["properties"] = {**message["properties"],  # type: ignore[dict-item]
                                 "order_gid": f"gid://shopify/Order/{5873245000001 + n}",
                                 "sent_ms": 1763647387123 + n,
                                 "fbp": f"fb.1.1763647387123.{4472850161 + n}"}
    return message


def workload(events: int, stage: str) -> None:
    """What runs under valgrind: prepare every event, then (stage=render) render each
    routed destination's payload; or (stage=guard) only screen every event for card
    numbers."""
    from router.config.compile import load_config
    from router.delivery.render import render_payload
    from router.pipeline.guard import check_pan
    from router.pipeline.prepare import prepare

    if stage.startswith(("messages", "guard")):
        messages = [_guard_message(n, with_ids=stage.endswith("-ids")) for n in range(events)]
        if stage.startswith("guard"):
            for message in messages:
                assert check_pan(message) is None
        return
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
    parser.add_argument("--workload", choices=("prepare", "render", "messages", "guard",
                                                 "messages-ids", "guard-ids"))
    parser.add_argument("--only", choices=("guard",), help="measure only this path")
    args = parser.parse_args()
    if args.workload:
        workload(args.events, args.workload)
        return
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed")
    # the screen alone: building the same messages is measured apart and taken off
    per_guard = (count(args.events, "guard") - count(args.events, "messages")) / args.events
    per_ids = (count(args.events, "guard-ids") - count(args.events, "messages-ids")) / \
        args.events
    print(f"check_pan() (card screen):     {per_guard:>12,.0f} instructions per event")
    print(f"check_pan(), long digit runs:  {per_ids:>12,.0f} instructions per event")
    if args.only == "guard":
        return
    base = count(0, "prepare")
    prepare_total = count(args.events, "prepare")
    render_total = count(args.events, "render")
    per_prepare = (prepare_total - base) / args.events
    per_render = (render_total - prepare_total) / args.events
    print(f"prepare():                     {per_prepare:>12,.0f} instructions per event")
    print(f"render 13 payloads:            {per_render:>12,.0f} instructions per event")


if __name__ == "__main__":
    main()
