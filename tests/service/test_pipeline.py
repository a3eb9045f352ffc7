"""Dedup, identity, guard, error codes and the admin API, through the running service."""

from __future__ import annotations

import hashlib
import json
import signal
import sqlite3
import subprocess
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from tests.service.conftest import (
    ADMIN_TOKEN,
    Service,
    fresh_ip,
    make_config_dir,
    shopify_hmac,
    start_service,
)


def track(service: Service, message: dict[str, object], key: str = "demo-write-key",
          path: str = "/v1/track", wait: bool = True) -> requests.Response:
    """POST like an SDK; `wait` (?wait=true) answers with stage 2's decision."""
    return requests.post(service.url + path, data=json.dumps(message), auth=(key, ""), timeout=15,
                         params={"wait": "true"} if wait else None,
                         headers={"Content-Type": "application/json"})


def order(order_id: str, message_id: str, **extra: object) -> dict[str, object]:
    return {"type": "track", "event": "Order Completed", "messageId": message_id,
            "anonymousId": "anon-dedup", "properties": {"order_id": order_id, "total": 30,
                                                        "currency": "USD"}, **extra}


# --- dedup -------------------------------------------------------------------------------

def test_sequential_duplicates_coalesce_with_evidence(service: Service) -> None:
    oid = f"seq-{uuid.uuid4()}"
    first = track(service, order(oid, f"{oid}-a"))
    second = track(service, order(oid, f"{oid}-a"))  # the same event_id again
    third = track(service, order(oid, f"{oid}-b"))  # another id, same order
    assert [r.json()["results"][0]["status"] for r in (first, second, third)] == \
        ["accepted", "duplicate", "duplicate"]
    assert "order_id=" + oid in third.json()["results"][0]["reason"]
    stored = service.event(f"{oid}-a")
    duplicates = stored["dedup"]["duplicates"]
    assert [d["event_id"] for d in duplicates] == [f"{oid}-a", f"{oid}-b"]
    assert duplicates[1]["matched"] == [f"purchase:order_id={oid}"]
    assert stored["dedup"]["first_source"] == "segment"
    # never a second Event: the duplicate's id leads to the one it merged into
    via_duplicate = service.admin(f"/admin/events/{oid}-b").json()
    assert (via_duplicate["seq"], via_duplicate["event_id"]) == (stored["seq"], f"{oid}-a")
    assert via_duplicate["found_by"] == {"duplicate_event_id": f"{oid}-b"}


def test_concurrent_duplicates_yield_exactly_one_event(service: Service) -> None:
    oid = f"conc-{uuid.uuid4()}"
    messages = [order(oid, f"{oid}-{i}") for i in range(24)]
    with ThreadPoolExecutor(max_workers=12) as pool:
        responses = list(pool.map(lambda m: track(service, m), messages))
    statuses = [r.json()["results"][0]["status"] for r in responses]
    assert statuses.count("accepted") == 1, statuses
    assert statuses.count("duplicate") == 23
    purchases = service.admin("/admin/events", name="purchase", limit=1000).json()["events"]
    assert len([e for e in purchases if e["event_id"].startswith(oid)]) == 1


def test_pixel_and_webhook_halves_merge_into_one_purchase(service: Service) -> None:
    order_id = 4_400_000_000_000 + uuid.uuid4().int % 1_000_000_000
    pixel_id = f"px-{order_id}"
    pixel = requests.post(
        service.url + "/collect?account=demo&wait=true", timeout=10,
        data=json.dumps({"event": "purchase", "event_id": pixel_id,
                         "page": {"url": "https://shop.test/thanks?fbclid=ClickX"},
                         "data": {"order_id": str(order_id), "value": 59.9, "currency": "USD"}}),
        headers={"Content-Type": "application/json", "Origin": "http://localhost",
                 "X-Forwarded-For": "203.0.113.77", "User-Agent": "Browser/9"})
    assert pixel.json()["results"][0]["status"] == "accepted"
    body = json.dumps({"id": order_id, "email": "Half@Example.com", "currency": "USD",
                       "total_price": "59.90", "created_at": "2026-11-20T10:00:00Z",
                       "line_items": [{"product_id": 1, "title": "x", "price": "59.90",
                                       "quantity": 1}]}).encode()
    headers = {"Content-Type": "application/json", "X-Shopify-Topic": "orders/create",
               "X-Shopify-Shop-Domain": "demo.myshopify.com",
               "X-Shopify-Event-Id": str(uuid.uuid4()),
               "X-Shopify-Hmac-Sha256": shopify_hmac("demo-shopify-secret", body)}
    webhook = requests.post(service.url + "/webhooks/shopify?wait=true", data=body, timeout=10,
                            headers=headers)
    assert webhook.json()["results"][0]["status"] == "duplicate"
    stored = service.event(pixel_id)
    user = stored["event"]["user_data"]
    assert user["email_sha256"] == hashlib.sha256(b"half@example.com").hexdigest()  # from Shopify
    assert user["fbc"].endswith(".ClickX")  # from the pixel
    assert stored["event"]["context"]["ip"] == "203.0.113.77"
    evidence = stored["dedup"]["duplicates"][0]
    assert evidence["source"] == "shopify"
    assert "user_data.email_sha256" in evidence["merged"]
    assert stored["dedup"]["first_source"] == "pixel"


# --- identity -----------------------------------------------------------------------------

def test_anonymous_event_is_enriched_from_an_earlier_identify(service: Service) -> None:
    anon = f"anon-{uuid.uuid4()}"
    identify = track(service, {"type": "identify", "anonymousId": anon, "userId": f"u-{anon}",
                               "messageId": f"{anon}-identify",
                               "traits": {"email": "Known@Person.test", "phone": "415 555 0100"}},
                     path="/v1/identify")
    assert identify.json()["results"][0]["status"] == "accepted"
    assert service.event(f"{anon}-identify")["event_name"] == "profile_update"
    view = track(service, {"type": "track", "event": "Product Viewed", "anonymousId": anon,
                           "messageId": f"{anon}-view",
                           "properties": {"product_id": "SKU-9", "price": 5, "currency": "USD"}})
    assert view.json()["results"][0]["status"] == "accepted"
    stored = service.event(f"{anon}-view")
    assert stored["event"]["user_data"]["email_sha256"] == \
        hashlib.sha256(b"known@person.test").hexdigest()
    assert stored["event"]["user_data"]["user_id"] == f"u-{anon}"
    assert {"email_sha256", "phone_sha256", "user_id"} <= set(stored["identity"]["enriched"])
    assert stored["identity"]["person"] == service.event(f"{anon}-identify")["identity"]["person"]


# --- guard and error codes ------------------------------------------------------------------

def test_card_numbers_are_rejected_and_never_stored(service: Service) -> None:
    mid = f"pan-{uuid.uuid4()}"
    response = track(service, {"type": "track", "event": "Signed Up", "userId": "u",
                               "messageId": mid, "properties": {"note": "4111 1111 1111 1111"}})
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "pii_card_number"
    assert "4111" not in response.text
    assert service.admin(f"/admin/events/{mid}").status_code == 404
    assert "4111 1111" not in service.log.read_text()


def test_one_bad_event_in_a_batch_is_rejected_alone(service: Service) -> None:
    tag = uuid.uuid4()
    batch = {"batch": [
        {"type": "track", "event": "Signed Up", "userId": "u", "messageId": f"ok1-{tag}"},
        {"type": "track", "event": "Order Completed", "userId": "u", "messageId": f"bad-{tag}",
         "properties": {"order_id": "1", "total": 5}},  # no currency
        {"type": "track", "event": "Signed Up", "userId": "u", "messageId": f"pan-{tag}",
         "properties": {"card": "5555555555554444"}},
        {"type": "track", "event": "Something Custom", "userId": "u", "messageId": f"un-{tag}"},
        {"type": "track", "event": "Logged In", "userId": "u", "messageId": f"ok2-{tag}"},
    ]}
    response = track(service, batch, path="/v1/batch")
    assert response.status_code == 200
    results = response.json()["results"]
    assert [r["status"] for r in results] == ["accepted", "rejected", "rejected", "unmapped",
                                              "accepted"]
    assert results[1]["code"] == "invalid_event" and "currency" in results[1]["reason"]
    assert results[2]["code"] == "pii_card_number"
    assert service.event(f"ok1-{tag}")["event_name"] == "sign_up"
    assert service.event(f"ok2-{tag}")["event_name"] == "login"
    unmapped = service.event(f"un-{tag}")
    assert unmapped["status"] == "unmapped" and unmapped["source_event"] == "Something Custom"
    assert unmapped["deliveries"] == []
    # the schema-rejected purchase is kept, visible with its code, and never routed
    rejected = service.event(f"bad-{tag}")
    assert rejected["status"] == "rejected" and rejected["deliveries"] == []
    assert rejected["dedup"]["rejection"]["code"] == "invalid_event"
    # the card number was refused at the gateway: not even a rejected event holds it
    assert service.admin(f"/admin/events/pan-{tag}").status_code == 404


def test_impossible_timestamps_do_not_fail_the_batch(service: Service) -> None:
    """A timestamp no clock can show ("inf", 1e300) is no timestamp: the event is stored
    with its arrival time, and the other events of the request are not lost."""
    tag = uuid.uuid4()
    batch = {"batch": [
        {"type": "track", "event": "Signed Up", "userId": "u", "messageId": f"inf-{tag}",
         "timestamp": "inf", "sentAt": "-infinity"},
        {"type": "track", "event": "Logged In", "userId": "u", "messageId": f"big-{tag}",
         "timestamp": 1e300},
        {"type": "track", "event": "Logged In", "userId": "u", "messageId": f"fine-{tag}"},
    ]}
    response = track(service, batch, path="/v1/batch")
    assert response.status_code == 200, response.text
    assert [r["status"] for r in response.json()["results"]] == ["accepted"] * 3
    for mid in (f"inf-{tag}", f"big-{tag}"):
        stored = service.event(mid)
        assert stored["occurred_at"] == stored["received_at"]


def test_error_codes(service: Service) -> None:
    def post(path: str, data: bytes, content_type: str = "application/json") -> requests.Response:
        return requests.post(service.url + path, data=data, auth=("demo-write-key", ""),
                             headers={"Content-Type": content_type}, timeout=10,
                             params={"wait": "true"})

    malformed = post("/v1/track", b"{not json")
    assert (malformed.status_code, malformed.json()["error"]["code"]) == (400, "malformed_json")
    media = post("/v1/track", b"a=b", "application/x-www-form-urlencoded")
    assert (media.status_code, media.json()["error"]["code"]) == (415, "unsupported_media_type")
    huge = post("/v1/track", b'{"x":"' + b"a" * 1_100_000 + b'"}')
    assert (huge.status_code, huge.json()["error"]["code"]) == (413, "payload_too_large")
    many = {"batch": [{"type": "track", "event": "Signed Up", "userId": "u",
                       "messageId": f"m{i}"} for i in range(51)]}
    too_many = post("/v1/batch", json.dumps(many).encode())
    assert (too_many.status_code, too_many.json()["error"]["code"]) == (413, "batch_too_large")
    invalid = post("/v1/track", json.dumps({"type": "track", "event": "Order Completed",
                                            "userId": "u", "properties": {"total": 5}}).encode())
    assert (invalid.status_code, invalid.json()["error"]["code"]) == (422, "invalid_event")
    unknown = requests.post(service.url + "/webhooks/nosuch", data=b"{}", timeout=10,
                            headers={"Content-Type": "application/json"})
    assert (unknown.status_code, unknown.json()["error"]["code"]) == (404, "unknown_source")


# --- admin API -------------------------------------------------------------------------------

def test_admin_api_requires_the_token(service: Service) -> None:
    assert requests.get(service.url + "/admin/events", timeout=10).status_code == 401
    wrong = requests.get(service.url + "/admin/events", timeout=10,
                         headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_token"
    assert requests.get(service.url + "/healthz", timeout=10).status_code == 200


def test_admin_listings_filter(service: Service) -> None:
    mid = f"list-{uuid.uuid4()}"
    track(service, {"type": "track", "event": "Lead Submitted", "userId": "u", "messageId": mid})
    leads = service.admin("/admin/events", name="lead", source="segment").json()["events"]
    assert mid in [e["event_id"] for e in leads]
    assert all(e["event_name"] == "lead" for e in leads)
    future = service.admin("/admin/events", since="2999-01-01T00:00:00Z").json()["events"]
    assert future == []
    mid2 = f"drop-{uuid.uuid4()}"
    track(service, {"type": "track", "event": "Lead Submitted", "userId": "u", "messageId": mid2},
          key="acme-production-key")  # GB, opt-in, no consent signal: ads are dropped
    dropped = service.admin("/admin/deliveries", status="dropped", destination="adsink").json()
    assert any(d["event_id"] == mid2 for d in dropped["deliveries"])
    assert all(d["status"] == "dropped" and d["destination"] == "adsink"
               for d in dropped["deliveries"])
    bad = service.admin("/admin/events", since="not-a-time")
    assert bad.status_code == 400
    config = service.admin("/admin/config").json()
    assert config["mappings"]["segment"].startswith("segment@")


def test_event_story_shows_deliveries_evidence_and_identity(service: Service) -> None:
    mid = f"story-{uuid.uuid4()}"
    track(service, {"type": "track", "event": "Order Completed", "userId": f"u-{mid}",
                    "messageId": mid, "context": {"traits": {"email": "story@example.com"}},
                    "properties": {"order_id": mid, "revenue": 10, "currency": "usd"}},
          key="acme-production-key")
    story = service.event(mid)
    assert story["account"] == "acme"
    statuses = {d["destination"]: d["status"] for d in story["deliveries"]}
    assert statuses["adsink"] == "dropped", story["deliveries"]  # GB opt-in: no signal, no ads
    assert statuses["webhook"] in ("queued", "delivered"), story["deliveries"]
    assert story["deliveries"][0]["destination_version"].startswith("adsink@")
    assert story["dedup"]["keys"] == [f"id:{mid}", f"purchase:order_id={mid}"]
    assert story["identity"]["person"]
    assert story["identity"]["profile"]["email_sha256"] == \
        hashlib.sha256(b"story@example.com").hexdigest()
    assert story["event"]["consent"]["default"] == "opt_in"


# --- lifecycle ---------------------------------------------------------------------------------

def test_graceful_shutdown_keeps_acknowledged_events(tmp_path: Path) -> None:
    config_dir = make_config_dir(tmp_path / "config")
    db = tmp_path / "router.db"
    svc = start_service(config_dir, db, tmp_path / "serve.log")
    try:
        ids = [f"shut-{i}" for i in range(40)]
        with ThreadPoolExecutor(max_workers=8) as pool:
            responses = list(pool.map(lambda i: track(svc, {
                "type": "track", "event": "Signed Up", "userId": "u", "messageId": i}), ids))
        assert all(r.status_code == 200 for r in responses)
        svc.process.send_signal(signal.SIGTERM)
        assert svc.process.wait(timeout=30) == 0
    finally:
        if svc.process.poll() is None:
            svc.process.kill()
    with sqlite3.connect(db) as conn:
        stored = {row[0] for row in conn.execute("SELECT event_id FROM events")}
        waiting = {i for (ids_json,) in conn.execute("SELECT event_ids FROM inbox")
                   for i in json.loads(ids_json)}
        leases = conn.execute("SELECT count(*) FROM leases").fetchone()[0]
        claimed = conn.execute("SELECT count(*) FROM deliveries WHERE owner IS NOT NULL"
                               ).fetchone()[0]
    # every acknowledged event is durable: decided, or still in the inbox for the next start
    assert set(ids) <= stored | waiting
    assert (leases, claimed) == (0, 0)  # a graceful stop hands every lease back at once
    again = start_service(config_dir, db, tmp_path / "serve-2.log")
    try:
        for event_id in ids:
            assert again.event(event_id)["event_name"] == "sign_up"
    finally:
        again.process.terminate()
        again.process.wait(timeout=30)
    assert ADMIN_TOKEN
    _ = fresh_ip, subprocess


def test_overload_is_shed_with_503_and_nothing_is_stored(tmp_path: Path) -> None:
    """Past `max_inflight_requests` requests being processed, an ingest request is
    answered at once with 503 `overloaded` + Retry-After (SDKs retry it) instead of
    queueing without bound. (A slot is held while a request is processed, after its body
    is read: test_hostile.py shows slow bodies hold none.)"""
    config_dir = make_config_dir(tmp_path / "config", max_inflight_requests=1,
                                 max_batch_events=500)
    svc = start_service(config_dir, tmp_path / "router.db", tmp_path / "serve.log")
    try:
        stop = []
        busy_ids: list[str] = []

        def busy() -> list[int]:  # 500-event batches keep the only slot busy most of the time
            statuses = []
            while not stop:
                ids = [f"busy-{uuid.uuid4()}" for _ in range(500)]
                busy_ids.extend(ids)
                statuses.append(track(svc, {"batch": [
                    {"type": "track", "event": "Signed Up", "userId": "u", "messageId": i}
                    for i in ids]}, path="/v1/batch").status_code)
            return statuses

        shed_ids: list[str] = []

        def shed() -> list[requests.Response]:
            shed_ids.append(f"shed-{uuid.uuid4()}")
            response = track(svc, {"type": "track", "event": "Signed Up", "userId": "u",
                                   "messageId": shed_ids[-1]})
            return [response] if response.status_code == 503 else []

        with ThreadPoolExecutor(1) as pool:
            busy_statuses = pool.submit(busy)
            try:
                [refused] = svc.wait_for(shed, timeout=30, what="a 503")
            finally:
                stop.append(True)
            statuses = busy_statuses.result()
        assert refused.json()["error"]["code"] == "overloaded"
        assert refused.headers["Retry-After"] == "1"
        later = track(svc, {"type": "track", "event": "Signed Up", "userId": "u",
                            "messageId": f"after-{uuid.uuid4()}"})
        assert later.status_code == 200, later.text  # the slot is free again
        assert svc.admin(f"/admin/events/{shed_ids[-1]}").status_code == 404
        accepted = [ids for ids, status in zip(
            [busy_ids[i:i + 500] for i in range(0, len(busy_ids), 500)], statuses,
            strict=True) if status == 200]
        assert accepted and svc.event(accepted[-1][-1])["event"]["event_name"] == "sign_up"
        metrics = requests.get(svc.url + "/metrics", timeout=5).text
        shed_total = next(float(line.split()[1]) for line in metrics.splitlines()
                          if line.startswith('router_requests_shed_total{reason="in_flight"}'))
        assert shed_total >= 1
    finally:
        svc.process.terminate()
        svc.process.wait(timeout=30)
