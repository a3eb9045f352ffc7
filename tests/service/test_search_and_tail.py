"""Finding events on the running router (order id, email, a duplicate's id, with paging)
and following it live with `router tail`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import requests

from tests.service.conftest import ADMIN_TOKEN, Service

CONSENT = {"consent": {"categoryPreferences": {"Advertising": True, "Analytics": True}}}


def acme(service: Service, *messages: dict[str, Any]) -> None:
    body = {"batch": [{"type": "track", "context": CONSENT, **m} for m in messages]}
    response = requests.post(service.url + "/v1/batch", data=json.dumps(body), timeout=10,
                             auth=("acme-production-key", ""),
                             headers={"Content-Type": "application/json"})
    assert response.status_code == 200, response.text


def purchase(tag: str, order_id: str, email: str | None = None) -> dict[str, Any]:
    context: dict[str, Any] = {**CONSENT, "fbp": f"fb.1.1700000000000.{tag}"}
    if email:
        context["traits"] = {"email": email}
    return {"event": "Order Completed", "messageId": tag, "anonymousId": f"anon-{tag}",
            "properties": {"order_id": order_id, "total": 12, "currency": "GBP"},
            "context": context}


def search(service: Service, **params: Any) -> dict[str, Any]:
    response = service.admin("/admin/events", **params)
    assert response.status_code == 200, response.text
    return response.json()


def test_search_by_order_id_and_by_email(service: Service) -> None:
    tag = uuid.uuid4().hex[:10]
    email = f"Buyer.{tag}@Example.com"
    acme(service, purchase(f"s-{tag}", f"ord-{tag}", email),
         purchase(f"t-{tag}", f"other-{tag}"))
    by_order = service.wait_for(lambda: search(service, order_id=f"ord-{tag}")["events"],
                                what="the order")
    assert [e["event_id"] for e in by_order] == [f"s-{tag}"]
    assert by_order[0]["event_name"] == "purchase" and by_order[0]["account"] == "acme"
    # written differently, hashed the same way ingest hashed it; never stored in plain
    by_email = search(service, email=f"  buyer.{tag}@example.COM ")["events"]
    assert [e["event_id"] for e in by_email] == [f"s-{tag}"]
    assert search(service, email=f"nobody.{tag}@example.com")["events"] == []
    both = search(service, order_id=f"ord-{tag}", account="acme", source="segment",
                  status="mapped", since="10m", destination="webhook")
    assert [e["event_id"] for e in both["events"]] == [f"s-{tag}"]


def test_search_by_person_finds_everything_the_identity_graph_links(service: Service) -> None:
    tag = uuid.uuid4().hex[:10]
    acme(service, {"event": "Signed Up", "messageId": f"p1-{tag}", "anonymousId": f"a-{tag}"})
    person = service.event(f"p1-{tag}")["identity"]["person"]
    # later, the same browser identifies with an email: one person, two identifiers
    acme(service, {"event": "Signed Up", "messageId": f"p2-{tag}", "anonymousId": f"a-{tag}",
                   "context": {**CONSENT, "traits": {"email": f"p.{tag}@example.com"}}})
    service.event(f"p2-{tag}")
    acme(service, {"event": "Signed Up", "messageId": f"p3-{tag}",
                   "context": {**CONSENT, "traits": {"email": f"p.{tag}@example.com"}}})
    service.event(f"p3-{tag}")
    found = search(service, person=person, account="acme")["events"]
    assert sorted(e["event_id"] for e in found) == [f"p1-{tag}", f"p2-{tag}", f"p3-{tag}"]


def test_a_duplicate_id_finds_the_event_it_merged_into(service: Service) -> None:
    tag = uuid.uuid4().hex[:10]
    acme(service, purchase(f"first-{tag}", f"dup-{tag}"))
    service.event(f"first-{tag}")
    acme(service, purchase(f"second-{tag}", f"dup-{tag}"))  # same order, another id
    found = service.wait_for(lambda: search(service, event_id=f"second-{tag}")["events"],
                             what="the merged event")
    assert [e["event_id"] for e in found] == [f"first-{tag}"] and found[0]["duplicates"] == 1


def test_pages_follow_the_cursor_newest_first(service: Service) -> None:
    tag = uuid.uuid4().hex[:10]
    acme(service, *[{"event": "Signed Up", "messageId": f"page-{tag}-{n}",
                     "anonymousId": f"page-{tag}"} for n in range(5)])
    service.event(f"page-{tag}-4")
    first = search(service, account="acme", name="sign_up", since="1m", limit=2)
    second = search(service, account="acme", name="sign_up", since="1m", limit=2,
                    cursor=first["next_cursor"])
    assert first["next_cursor"] and [e["seq"] for e in second["events"]] < \
        [e["seq"] for e in first["events"]]
    assert len({e["seq"] for e in first["events"] + second["events"]}) == 4


def test_bad_searches_are_400s_with_a_code(service: Service) -> None:
    for params, code, fragment in (
            ({"order": "1"}, "unknown_filter", "did you mean 'order_id'?"),
            ({"status": "delivered"}, "invalid_parameter", "choose from"),
            ({"email": "nope"}, "invalid_parameter", "not an email address"),
            ({"limit": "0"}, "invalid_parameter", "limit")):
        response = service.admin("/admin/events", **params)
        assert response.status_code == 400, (params, response.text)
        error = response.json()["error"]
        assert error["code"] == code and fragment in error["message"]
    for path, params in (("/admin/reports/channel-accuracy", {"window": "1h"}),
                         ("/admin/reports/identifier-coverage", {"since": "tomorrow"}),
                         ("/admin/alerts", {"kind": "volcano"}),
                         ("/admin/stream", {"destination": "nowhere"}),
                         ("/admin/deliveries", {"status": "lost"})):
        response = service.admin(path, **params)
        assert response.status_code == 400, (path, response.text)
        assert response.json()["error"]["code"] in ("unknown_filter", "invalid_parameter")
    assert service.admin("/admin/reports/volcano").status_code == 404
    assert service.admin("/admin/alerts/abc").json()["error"]["code"] == "invalid_parameter"
    assert service.admin("/admin/alerts/999999").status_code == 404
    refused = requests.post(service.url + "/admin/resume", json={"destinaton": "meta"},
                            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=10)
    assert refused.status_code == 400 and "did you mean 'destination'?" in refused.text
    replay = requests.post(service.url + "/admin/replay", json={"status": ["lost"]},
                           headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=10)
    assert replay.status_code == 400 and replay.json()["error"]["code"] == "invalid_parameter"


# --- router tail --------------------------------------------------------------------------

def router(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    exe = Path(sys.executable).with_name("router")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "router.cli"]
    return subprocess.Popen([*cmd, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, **(env or {})})


def listeners(service: Service) -> float:
    for line in requests.get(service.url + "/metrics", timeout=10).text.splitlines():
        if line.startswith("router_stream_listeners "):
            return float(line.split()[1])
    raise AssertionError("no router_stream_listeners metric")


def test_router_tail_prints_events_and_deliveries_as_they_happen(service: Service) -> None:
    tag = uuid.uuid4().hex[:10]
    before = listeners(service)
    tail = router("tail", "--url", service.url, "--account", "acme", "--destination", "adsink",
                  "--json", "--count", "2", env={"ROUTER_ADMIN_TOKEN": ADMIN_TOKEN})
    text = router("tail", "--url", service.url, "--token", ADMIN_TOKEN, "--account", "acme",
                  "--type", "delivery", "--status", "delivered", "--destination", "adsink",
                  "--no-color", "--count", "1")
    try:
        service.wait_for(lambda: listeners(service) >= before + 2, what="both tails to listen")
        acme(service, {"event": "Signed Up", "messageId": f"tail-{tag}"})
        out, err = tail.communicate(timeout=20)
        line, _ = text.communicate(timeout=20)
    finally:
        for process in (tail, text):
            if process.poll() is None:
                process.kill()
    assert tail.returncode == 0, err
    items = [json.loads(x) for x in out.splitlines()]
    assert [(i["type"], i["status"]) for i in items] == [("event", "accepted"),
                                                         ("delivery", "delivered")]
    assert items[0]["event_name"] == "sign_up" and "adsink" in items[0]["to"]
    assert items[1]["destination"] == "adsink" and items[1]["attempt"] == 1
    assert f"tail-{tag}" in line and "→ adsink" in line and "delivered #1" in line
    assert "\x1b[" not in line  # --no-color


def test_router_tail_refuses_a_bad_filter_or_token_with_a_message(service: Service) -> None:
    bad = router("tail", "--url", service.url, "--token", ADMIN_TOKEN, "--destination", "mta")
    _, err = bad.communicate(timeout=20)
    assert bad.returncode == 2 and "did you mean 'meta'?" in err
    wrong = router("tail", "--url", service.url, "--token", "not-the-token")
    _, err = wrong.communicate(timeout=20)
    assert wrong.returncode == 1 and "invalid_token" in err
    usage = router("tail", "--url", service.url, "--token", ADMIN_TOKEN, "--status", "lost")
    _, err = usage.communicate(timeout=20)
    assert usage.returncode == 2 and "'lost' is not one of" in err


def test_metrics_count_per_source_and_destination(service: Service) -> None:
    tag = uuid.uuid4().hex[:10]
    acme(service, {"event": "Signed Up", "messageId": f"m-{tag}"},
         {"event": "Product Added", "messageId": f"cart-{tag}",
          "properties": {"product_id": "P-1", "price": 5, "quantity": 1, "currency": "GBP"}})
    service.wait_for(lambda: service.deliveries(f"m-{tag}").get("adsink", {}).get("status")
                     == "delivered", what="the delivery")
    assert "adsink" not in service.deliveries(f"cart-{tag}")  # adsink does not list carts
    time.sleep(0.1)
    text = requests.get(service.url + "/metrics", timeout=10).text
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    assert values['router_events_received_total{source="segment"}'] >= 1
    assert values['router_delivered_total{destination="adsink"}'] >= 1
    assert values['router_delivery_latency_seconds_count{destination="adsink"}'] >= 1
    assert values['router_delivery_batch_events_count{destination="adsink"}'] >= 1
    assert values['router_dropped_total{destination="adsink",reason="not_listed"}'] >= 1
    assert 'router_delivery_oldest_due_seconds{destination="adsink"}' in values
    assert "router_processor_lag_seconds" in values
