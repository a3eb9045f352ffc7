"""Delivery end to end: router serve (workers) -> router sandbox, with injected faults."""

from __future__ import annotations

import json
import uuid
from typing import Any

import requests
from segment.analytics import Client as SegmentClient

from tests.service.conftest import ADMIN_TOKEN, Service, fresh_ip

CONSENT = {"consent": {"categoryPreferences": {"Advertising": True, "Analytics": True}}}
FINAL = ("delivered", "dropped")


def acme(service: Service, *messages: dict[str, Any]) -> requests.Response:
    body = {"batch": [{"type": "track", "userId": "u-acme", "context": CONSENT, **m}
                      for m in messages]}
    response = requests.post(service.url + "/v1/batch", data=json.dumps(body), timeout=10,
                             auth=("acme-production-key", ""),
                             headers={"Content-Type": "application/json"})
    assert response.status_code == 200, response.text
    return response


def signup(tag: str) -> dict[str, Any]:
    return {"event": "Signed Up", "messageId": tag}


def settle(service: Service, event_id: str, destination: str, statuses: tuple[str, ...] = FINAL,
           timeout: float = 20.0) -> dict[str, Any]:
    return service.wait_for(
        lambda: (d := service.deliveries(event_id).get(destination)) and d["status"] in statuses
        and d, timeout, f"{destination} delivery of {event_id} to reach {statuses}")


def paused_delivery(service: Service, event_id: str) -> dict[str, Any]:
    return service.wait_for(
        lambda: (d := service.deliveries(event_id).get("adsink")) and
        (d.get("last_error") or "").startswith("paused") and d, what="a paused delivery")


def admin_post(service: Service, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = requests.post(service.url + path, json=body, timeout=10,
                             headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert response.status_code == 200, response.text
    return response.json()


def requests_for(service: Service, destination: str, event_id: str) -> list[dict[str, Any]]:
    return [r for r in service.received(destination) if event_id in json.dumps(r)]


def test_segment_order_completed_reaches_every_destination(service: Service) -> None:
    mid = f"e2e-{uuid.uuid4()}"
    client = SegmentClient("demo-write-key", host=service.url, sync_mode=True)
    client.track(user_id="user-e2e", event="Order Completed", message_id=mid,
                 properties={"order_id": mid, "revenue": 99.5, "currency": "usd",
                             "products": [{"product_id": "P-1", "name": "Mug", "price": 99.5,
                                           "quantity": 1}]},
                 context={"traits": {"email": "e2e@example.com", "phone": "+1 415 555 0199"},
                          "ip": "203.0.113.5", "userAgent": "Mozilla/5.0 E2E",
                          "page": {"url": "https://shop.test/thanks?gclid=G-E2E&ttclid=T-E2E"
                                   "&ScCid=S-E2E&rdt_cid=R-E2E&li_fat_id=L-E2E&awc=A-E2E"
                                   "&epik=P-E2E&tblci=TB-E2E"},
                          "consent": {"categoryPreferences": {"Advertising": True,
                                                              "Analytics": True,
                                                              "Marketing": True}}})
    client.flush()
    story = service.event(mid)
    routed = {name for name, d in ((d["destination"], d) for d in story["deliveries"])
              if d["status"] != "dropped" or d.get("attempts")}
    assert "webhook" in routed
    for destination in routed:
        delivery = settle(service, mid, destination)
        assert delivery["status"] == "delivered", (destination, delivery)
        assert delivery["attempts"] == 1 and delivery["latency_ms"] >= 0
        sent = requests_for(service, destination, mid) or requests_for(
            service, destination, "99.5")
        assert sent, f"the sandbox got no {destination} request for {mid}"
    # the exact request recorded on the Delivery (secrets masked) is what was sent
    webhook = service.deliveries(mid)["webhook"]
    assert webhook["request"]["url"].endswith("/webhook")
    assert "demo-outbound-secret" not in json.dumps(webhook["request"])


def test_500_then_200_is_retried_to_delivered(service: Service) -> None:
    tag = f"r500-{uuid.uuid4()}"
    service.fault("adsink", status=500, times=1)
    acme(service, signup(tag))
    delivery = settle(service, tag, "adsink")
    assert delivery["status"] == "delivered"
    assert delivery["attempts"] == 2
    sent = requests_for(service, "adsink", tag)
    assert len(sent) == 2
    assert all(tag in json.dumps(r["body"]) for r in sent)  # the same event_id both times


def test_400_ends_dropped_with_the_platform_message(service: Service) -> None:
    tag = f"r400-{uuid.uuid4()}"
    service.fault("adsink", status=400, times=1)
    acme(service, signup(tag))
    delivery = settle(service, tag, "adsink")
    assert delivery["status"] == "dropped"
    assert delivery["attempts"] == 1
    assert "HTTP 400" in delivery["last_error"] and "sandbox: injected 400" in delivery["last_error"]
    assert delivery["response"]["status"] == 400


def test_one_bad_event_in_a_batch_does_not_block_the_rest(service: Service) -> None:
    tags = [f"batch-{uuid.uuid4()}" for _ in range(5)]
    bad = tags[3]
    service.fault("adsink", status=400, times=-1, match=bad)
    try:
        acme(service, *[signup(t) for t in tags])
        outcomes = {t: settle(service, t, "adsink")["status"] for t in tags}
    finally:
        service.sandbox("/_sandbox/faults", "DELETE")
    assert outcomes[bad] == "dropped"
    assert [outcomes[t] for t in tags if t != bad] == ["delivered"] * 4
    first = [r for r in service.received("adsink") if tags[0] in json.dumps(r["body"])]
    assert first[0]["count"] == 5  # they did travel as one batch before the split


def test_per_event_errors_inside_a_200_fail_only_those_events(service: Service) -> None:
    tags = [f"pe-{uuid.uuid4()}" for _ in range(3)]
    service.fault("adsink", event_errors=[1], times=1)
    acme(service, *[signup(t) for t in tags])
    outcomes = {t: settle(service, t, "adsink") for t in tags}
    assert [outcomes[t]["status"] for t in tags] == ["delivered", "dropped", "delivered"]
    assert "event 1 rejected" in outcomes[tags[1]]["last_error"]


def test_a_hung_destination_does_not_delay_the_others(service: Service) -> None:
    tag = f"hang-{uuid.uuid4()}"
    service.fault("adsink", hang=True, times=1)
    acme(service, signup(tag))
    webhook = settle(service, tag, "webhook")
    assert webhook["status"] == "delivered"
    # the ad platform is still hanging (its 2 s timeout has not passed) when the webhook
    # has long been delivered
    assert service.deliveries(tag)["adsink"]["status"] == "queued"
    adsink = settle(service, tag, "adsink", timeout=30)
    assert adsink["status"] == "delivered" and adsink["attempts"] == 2


def test_auth_failure_pauses_without_burning_attempts(service: Service) -> None:
    tag = f"auth-{uuid.uuid4()}"
    service.fault("adsink", status=401, times=1)
    acme(service, signup(tag))
    paused = service.wait_for(lambda: [p for p in service.admin("/admin/pauses").json()["pauses"]
                                       if p["destination"] == "adsink"], what="a pause")
    assert paused[0]["account"] == "acme" and "401" in paused[0]["reason"]
    waiting = paused_delivery(service, tag)
    # the refused attempt is in the history; the retry policy's count starts over on resume
    assert waiting["status"] == "queued" and waiting["attempts"] == 1
    tag2 = f"auth2-{uuid.uuid4()}"
    acme(service, signup(tag2))  # arrives while paused: waits too, nothing is lost
    assert paused_delivery(service, tag2)["status"] == "queued"
    alerts = service.admin("/admin/alerts", open="true").json()["alerts"]
    opened = [a for a in alerts if a["subject"] == "adsink/acme/production"]
    assert len(opened) == 1 and opened[0]["kind"] == "platform_down"
    assert "401" in opened[0]["detail"]["reason"] and opened[0]["resolved_at"] is None
    assert admin_post(service, "/admin/resume", {"destination": "adsink"})["resumed"] == 1
    assert settle(service, tag, "adsink")["status"] == "delivered"
    assert settle(service, tag2, "adsink")["status"] == "delivered"
    history = service.deliveries(tag)["adsink"]["history"]
    assert [(h["n"], h["status"]) for h in history] == [(1, "paused"), (2, "delivered")]
    assert "401" in history[0]["error"] and history[0]["response"]["status"] == 401
    after = {a["id"]: a for a in service.admin("/admin/alerts").json()["alerts"]}
    assert after[opened[0]["id"]]["resolved_at"]  # the audit trail keeps it, resolved
    still_open = service.admin("/admin/alerts", open="true").json()["alerts"]
    assert opened[0]["id"] not in {a["id"] for a in still_open}


def test_replay_resends_with_the_same_event_id(service: Service) -> None:
    tag = f"replay-{uuid.uuid4()}"
    acme(service, signup(tag))
    assert settle(service, tag, "adsink")["status"] == "delivered"
    result = admin_post(service, "/admin/replay", {"event_id": tag, "destination": "adsink",
                                                   "status": "delivered"})
    assert result["requeued"] == 1
    service.wait_for(lambda: len(requests_for(service, "adsink", tag)) == 2, what="a re-send")
    bodies = [r["body"]["data"] for r in requests_for(service, "adsink", tag)]
    ids = [p["event_id"] for data in bodies for p in data if p["event_id"] == tag]
    assert ids == [tag, tag]


def test_retry_after_is_honoured(service: Service) -> None:
    tag = f"ra-{uuid.uuid4()}"
    service.fault("adsink", status=429, times=1, retry_after="3")
    acme(service, signup(tag))
    failed = settle(service, tag, "adsink", statuses=("failed",))
    from router.expr.functions import parse_time

    wait = (parse_time(failed["next_retry_at"]) - parse_time(failed["last_attempt_at"]))
    assert wait.total_seconds() >= 2.9  # not the 0.3 s base backoff
    assert settle(service, tag, "adsink", timeout=30)["status"] == "delivered"


def test_hold_lets_pixel_and_server_halves_merge_before_sending(service: Service) -> None:
    tag = f"hold-{uuid.uuid4()}"
    pixel = requests.post(service.url + "/collect?account=acme", timeout=10,
                          data=json.dumps({"event": "lead", "event_id": tag,
                                           "consent": {"ad_storage": "granted",
                                                       "ad_user_data": "granted"}}),
                          headers={"Content-Type": "application/json", "X-Forwarded-For":
                                   fresh_ip(), "Origin": "https://shop.acme.test"})
    assert pixel.json()["results"][0]["status"] == "accepted"
    server = acme(service, {"event": "Lead Submitted", "messageId": tag,
                            "context": {**CONSENT, "traits": {"email": "held@example.com"}}})
    assert server.json()["results"][0]["status"] == "duplicate"
    assert settle(service, tag, "adsink")["status"] == "delivered"
    [sent] = requests_for(service, "adsink", tag)
    [payload] = [p for p in sent["body"]["data"] if p["event_id"] == tag]
    assert payload["em"]  # the server half's email reached the platform with the pixel event


def test_a_held_half_without_its_partner_is_decided_when_the_hold_ends(service: Service) -> None:
    tag = f"alone-{uuid.uuid4()}"
    requests.post(service.url + "/collect?account=acme", timeout=10,
                  data=json.dumps({"event": "lead", "event_id": tag,
                                   "consent": {"ad_storage": "granted", "ad_user_data": "granted"}}),
                  headers={"Content-Type": "application/json", "X-Forwarded-For": fresh_ip(),
                           "Origin": "https://shop.acme.test"})
    held = service.wait_for(lambda: (d := service.deliveries(tag).get("adsink")) and
                            (d.get("last_error") or "").startswith("held") and d, what="a hold")
    assert held["status"] == "queued"
    final = settle(service, tag, "adsink")
    assert final["status"] == "dropped" and "send_if" in final["reason"]
    assert requests_for(service, "adsink", tag) == []
