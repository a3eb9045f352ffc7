"""`router replay`, `router resume` and `router explain` as an operator runs them."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from pathlib import Path

from click.testing import CliRunner

from router.cli import main
from router.config.model import CompiledConfig
from router.expr.functions import iso_time
from router.pipeline.commit import commit
from router.store.base import Outcome
from router.store.sqlite import SQLiteStore
from tests.items import item


def seeded_store(config: CompiledConfig, path: Path) -> None:
    async def run() -> None:
        store = SQLiteStore(f"sqlite:///{path}")
        await store.open()
        results = await commit(store, config, [item(config, "op-1", "o-op-1"),
                                               item(config, "op-2", "o-op-2")])
        seqs = [r.seq for r in results]
        now = time.time()
        await store.claim_due({"webhook": 10}, now, "seed", 30)
        await store.record([
            Outcome(seqs[0], "webhook", "dropped", True, "gave up"),
            Outcome(seqs[1], "webhook", "delivered", True),
        ], [], "seed", now)
        await store.pause("meta", "demo", "production", "HTTP 401: token expired")
        await store.close()
    asyncio.run(run())


def test_replay_requeues_matching_deliveries(shipped_config: CompiledConfig, repo_root: Path,
                                             tmp_path: Path) -> None:
    db = tmp_path / "ops.db"
    seeded_store(shipped_config, db)
    runner = CliRunner()
    args = ["replay", "--config-dir", str(repo_root), "--store", f"sqlite:///{db}",
            "--since", "3650d"]
    result = runner.invoke(main, [*args, "--destination", "webhook"])
    assert result.exit_code == 0, result.output
    assert "re-queued 1 deliveries" in result.output  # the dropped one, not the delivered
    with sqlite3.connect(db) as conn:
        rows = dict(conn.execute("SELECT e.event_id, d.status FROM deliveries d JOIN events e "
                                 "ON e.seq = d.event_seq WHERE d.destination = 'webhook'"
                                 ).fetchall())
    assert rows == {"op-1": "queued", "op-2": "delivered"}
    again = runner.invoke(main, [*args, "--status", "delivered", "--event-id", "op-2"])
    assert "re-queued 1 deliveries" in again.output
    bad = runner.invoke(main, [*args, "--since", "yesterday-ish"])
    assert bad.exit_code == 2 and "--since" in bad.output


def test_resume_lifts_pauses(shipped_config: CompiledConfig, repo_root: Path,
                             tmp_path: Path) -> None:
    db = tmp_path / "pause.db"
    seeded_store(shipped_config, db)
    result = CliRunner().invoke(main, ["resume", "--config-dir", str(repo_root), "--store",
                                       f"sqlite:///{db}", "--destination", "meta"])
    assert result.exit_code == 0 and "resumed 1 paused connection(s)" in result.output
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM pauses").fetchone()[0] == 0


def test_explain_shows_every_destination_request(shipped_config: CompiledConfig,
                                                  repo_root: Path, tmp_path: Path) -> None:
    # the example, happening an hour ago (its fixed date would soon be older than what
    # meta and ga4 accept: max_event_age)
    example = json.loads((repo_root / "examples/segment/order_completed.json").read_text())
    example["timestamp"] = iso_time(time.time() - 3600)
    fresh = tmp_path / "order_completed.json"
    fresh.write_text(json.dumps(example))
    result = CliRunner().invoke(main, ["explain", "--config-dir", str(repo_root), "--source",
                                       "segment", str(fresh)])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    [event] = report["events"]
    assert event["event"]["event_name"] == "purchase"
    decisions = {d["destination"]: d for d in event["destinations"]}
    enabled = shipped_config.accounts["demo"].environments["production"].destinations
    assert set(decisions) == set(enabled)  # every destination enabled on the account
    sent = {name for name, d in decisions.items() if d["decision"] == "send"}
    assert {"meta", "ga4", "tiktok", "webhook"} <= sent
    meta = decisions["meta"]["request"]
    assert meta["method"] == "POST" and "/events" in meta["url"]
    assert "access_token=***" in meta["url"]  # secrets masked
    assert meta["body"]["data"][0]["event_name"] == "Purchase"
    text = CliRunner().invoke(main, ["explain", "--config-dir", str(repo_root), "--source",
                                     "segment", "--format", "text",
                                     str(fresh)])
    assert "-> meta" in text.output and "send Purchase" in text.output
