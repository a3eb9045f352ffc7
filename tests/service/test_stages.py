"""The two stages and the delivery plane through real processes: the gateway's answer,
?wait=true, bursts absorbed by the inbox, kill -9, roles split over processes, one bad
event failing alone, and an idle router that leaves the store alone."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import signal
import sqlite3
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import requests

from tests.service.conftest import (
    Service,
    make_config_dir,
    start_sandbox,
    start_service,
    start_worker,
    stop,
)

CONSENT = {"consent": {"categoryPreferences": {"Advertising": True, "Analytics": True}}}


def signup(message_id: str) -> dict[str, Any]:
    return {"type": "track", "event": "Signed Up", "userId": "u-stage", "messageId": message_id,
            "context": CONSENT}


def post(url: str, body: Any, key: str = "acme-production-key", path: str = "/v1/batch",
         **kwargs: Any) -> requests.Response:
    return requests.post(url + path, data=json.dumps(body), auth=(key, ""), timeout=15,
                         headers={"Content-Type": "application/json",
                                  **kwargs.pop("headers", {})}, **kwargs)


def metric(url: str, name: str) -> float:
    text = requests.get(url + "/metrics", timeout=5).text
    found = re.search(rf"^{re.escape(name)}(?:_total)? (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


# --- the gateway's answer ---------------------------------------------------------------

def test_the_acknowledgement_comes_before_stage_2_and_wait_returns_its_decision(
        service: Service) -> None:
    tag = uuid.uuid4().hex
    unmapped = {"type": "track", "event": "Nobody Maps This", "userId": "u",
                "messageId": f"um-{tag}"}
    quick = post(service.url, {"batch": [unmapped]})
    # the gateway cannot know a message is unmapped: that is stage 2's decision
    assert quick.json()["results"] == [{"event_id": f"um-{tag}", "status": "accepted"}]
    retry = post(service.url, {"batch": [unmapped]})
    assert retry.json()["results"][0]["status"] == "duplicate"  # exact retry, at once
    decided = post(service.url, {"batch": [{**unmapped, "messageId": f"um2-{tag}"}]},
                   headers={"X-Router-Wait": "true"})
    assert decided.json()["results"] == [{"event_id": f"um2-{tag}", "status": "unmapped"}]
    bad = post(service.url, {"batch": [unmapped]}, params={"wait": "perhaps"})
    assert (bad.status_code, bad.json()["error"]["code"]) == (400, "invalid_parameter")
    stored = service.event(f"um-{tag}")  # decided shortly after, and visible
    assert stored["status"] == "unmapped" and stored["raw"]["event"] == "Nobody Maps This"


def test_one_event_that_cannot_be_sent_fails_alone(service: Service) -> None:
    """A control character in a header value: the HTTP client refuses the request; the
    batch is split until that event stands alone and is dropped with the reason."""
    tag = uuid.uuid4().hex
    good = [signup(f"hdr-ok{i}-{tag}") for i in range(4)]
    bad = signup(f"hdr-bad-{tag}\r\nX-Injected: 1")
    response = post(service.url, {"batch": [bad, *good]}, params={"wait": "true"})
    assert [r["status"] for r in response.json()["results"]] == ["accepted"] * 5
    for message in good:
        settled = service.wait_for(
            lambda m=message: (d := service.deliveries(m["messageId"]).get("hdrsink"))
            and d["status"] in ("delivered", "dropped") and d, what="the good events")
        assert settled["status"] == "delivered"
    dropped = service.wait_for(
        lambda: (d := service.deliveries(bad["messageId"]).get("hdrsink"))
        and d["status"] == "dropped" and d, what="the bad event dropped")
    assert "invalid request" in dropped["reason"]
    received = [r for r in service.received("hdrsink") if tag in json.dumps(r)]
    assert "X-Injected" not in json.dumps(received)


# --- bursts and crashes -----------------------------------------------------------------

async def _burst(url: str, batches: list[list[dict[str, Any]]], concurrency: int,
                 answered: asyncio.Event | None = None,
                 enough: int = 0) -> list[tuple[int, Any]]:
    """POST the batches, `concurrency` at a time; `answered` is set once `enough`
    requests have their answer (to kill the server in the middle of a burst)."""
    auth = {"Authorization": "Basic " + base64.b64encode(b"acme-production-key:").decode()}
    limit = asyncio.Semaphore(concurrency)
    done = [0]
    async with aiohttp.ClientSession(headers=auth) as session:
        async def one(batch: list[dict[str, Any]]) -> tuple[int, Any]:
            async with limit:
                try:
                    async with session.post(url + "/v1/batch", json={"batch": batch},
                                            timeout=aiohttp.ClientTimeout(total=30)) as r:
                        answer = r.status, await r.json(content_type=None)
                except (TimeoutError, aiohttp.ClientError, ValueError):
                    answer = 0, None
                done[0] += 1
                if answered is not None and done[0] >= enough:
                    answered.set()
                return answer
        return await asyncio.gather(*(one(b) for b in batches))


def _acknowledged(answers: list[tuple[int, Any]]) -> set[str]:
    return {r["event_id"] for status, body in answers if status == 200 and body
            for r in body["results"] if r["status"] == "accepted"}


def test_a_burst_of_10000_events_in_a_second_is_acknowledged_without_503(
        tmp_path: Path) -> None:
    svc = start_service(make_config_dir(tmp_path / "config"), tmp_path / "burst.db",
                        tmp_path / "serve.log")
    try:
        tag = uuid.uuid4().hex[:8]
        batches = [[signup(f"b-{tag}-{n}-{i}") for i in range(50)] for n in range(200)]
        started = time.monotonic()
        answers = asyncio.run(_burst(svc.url, batches, concurrency=50))
        elapsed = time.monotonic() - started
        statuses = Counter(status for status, _ in answers)
        assert statuses == {200: 200}, statuses  # not one 503
        acknowledged = _acknowledged(answers)
        assert len(acknowledged) == 10_000
        print(f"10,000 events acknowledged in {elapsed:.2f} s")  # shown with -s
        # everything acknowledged is decided and delivered in full afterwards
        with sqlite3.connect(tmp_path / "burst.db") as conn:
            svc.wait_for(lambda: conn.execute(
                "SELECT count(*) FROM deliveries WHERE destination IN ('webhook', 'hdrsink') "
                "AND status = 'delivered'").fetchone()[0] == 20_000, timeout=120,
                what="20,000 deliveries")
            assert conn.execute("SELECT count(*) FROM inbox").fetchone()[0] == 0
            stored = {r[0] for r in conn.execute("SELECT event_id FROM events")}
        assert acknowledged <= stored
        sent = Counter(p["event_id"] for r in svc.received("hdrsink")
                       for p in r["body"]["data"])
        assert len(sent) == 10_000 and max(sent.values()) == 1  # each sent exactly once
    finally:
        stop(svc.process)


def test_kill_9_during_a_burst_loses_no_acknowledged_event(tmp_path: Path) -> None:
    config_dir = make_config_dir(tmp_path / "config")
    sandbox, sink = start_sandbox(config_dir, tmp_path / "sandbox.log")
    db = tmp_path / "crash.db"
    try:
        svc = start_service(config_dir, db, tmp_path / "serve.log", sink_url=sink)
        tag = uuid.uuid4().hex[:8]
        batches = [[signup(f"k-{tag}-{n}-{i}") for i in range(50)] for n in range(200)]

        async def burst_then_kill() -> list[tuple[int, Any]]:
            answered = asyncio.Event()
            task = asyncio.ensure_future(_burst(svc.url, batches, concurrency=20,
                                                answered=answered, enough=len(batches) // 3))
            await answered.wait()  # a third acknowledged, more in flight
            svc.process.send_signal(signal.SIGKILL)
            return await task

        answers = asyncio.run(burst_then_kill())
        svc.process.wait(timeout=10)
        acknowledged = _acknowledged(answers)
        assert 0 < len(acknowledged) < 10_000, len(acknowledged)
        again = start_service(config_dir, db, tmp_path / "serve.log", sink_url=sink)
        try:
            with sqlite3.connect(db) as conn:
                again.wait_for(lambda: conn.execute("SELECT count(*) FROM inbox").fetchone()[0]
                               == 0, timeout=120, what="the inbox drained after the restart")
                stored = {r[0] for r in conn.execute("SELECT event_id FROM events")}
                assert acknowledged <= stored  # nothing acknowledged was lost
                again.wait_for(lambda: conn.execute(
                    "SELECT count(*) FROM deliveries WHERE destination = 'hdrsink' AND status "
                    "NOT IN ('delivered', 'dropped')").fetchone()[0] == 0, timeout=120,
                    what="every delivery final")
                delivered = conn.execute(
                    "SELECT count(*) FROM deliveries WHERE destination = 'hdrsink' AND "
                    "status = 'delivered'").fetchone()[0]
            assert delivered == len(stored)
            sent = Counter(p["event_id"] for r in requests.get(
                sink + "/_sandbox/requests?destination=hdrsink", timeout=10).json()["requests"]
                for p in r["body"]["data"])
            assert set(sent) == stored
            # a crash re-sends at most what was in flight: concurrency requests of at most
            # max_events each, per destination (docs/delivery.md states the bound)
            resent = sum(n - 1 for n in sent.values())
            assert resent <= 4 * 20, resent
        finally:
            stop(again.process)
    finally:
        stop(sandbox)


# --- roles over processes and an idle router ----------------------------------------------

def test_gateway_and_worker_processes_share_one_store(tmp_path: Path) -> None:
    config_dir = make_config_dir(tmp_path / "config")
    sandbox, sink = start_sandbox(config_dir, tmp_path / "sandbox.log")
    db = tmp_path / "roles.db"
    gateway = start_service(config_dir, db, tmp_path / "gateway.log",
                            ("--role", "gateway"), sink_url=sink)
    worker = start_worker(config_dir, db, tmp_path / "worker.log", "processor,delivery", sink)
    try:
        tag = uuid.uuid4().hex[:8]
        answer = post(gateway.url, {"batch": [signup(f"r-{tag}")]}, params={"wait": "true"})
        # decided by the worker process, answered by the gateway's process
        assert answer.json()["results"][0]["status"] == "accepted", answer.text
        story = gateway.event(f"r-{tag}")
        settled = gateway.wait_for(
            lambda: (d := gateway.deliveries(f"r-{tag}").get("webhook"))
            and d["status"] == "delivered" and d, what="delivery by the worker")
        assert settled["attempts"] == 1 and story["event_name"] == "sign_up"
        assert metric(gateway.url, "router_processor_batches") == 0  # not this process
    finally:
        stop(gateway.process)
        stop(worker)
        stop(sandbox)


def test_an_idle_router_does_no_store_round_trips(tmp_path: Path) -> None:
    svc = start_service(make_config_dir(tmp_path / "config"), tmp_path / "idle.db",
                        tmp_path / "serve.log")
    try:
        tag = uuid.uuid4().hex
        post(svc.url, {"batch": [signup(f"idle-{tag}")]}, params={"wait": "true"})
        svc.wait_for(lambda: svc.deliveries(f"idle-{tag}").get("webhook", {}).get(
            "status") == "delivered", what="the last delivery")
        time.sleep(1.0)  # let the outcome writer and the claimer settle
        names = ("router_delivery_claims", "router_delivery_outcome_transactions",
                 "router_processor_batches", "router_inbox_transactions")
        before = [metric(svc.url, n) for n in names]
        assert all(before), before  # the counters do move when there is work
        time.sleep(3.0)
        after = [metric(svc.url, n) for n in names]
        assert before == after, dict(zip(names, zip(before, after, strict=True), strict=True))
    finally:
        stop(svc.process)
