"""Every source reaches the store through `router serve`, and every authentication
failure mode is rejected with its stable code."""

from __future__ import annotations

import gzip
import hashlib
import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import requests
from rudderstack.analytics import Client as RudderClient
from segment.analytics import Client as SegmentClient

from tests.service.conftest import (
    Service,
    fresh_ip,
    router_signature,
    segment_signature,
    shopify_hmac,
)


def post(service: Service, path: str, body: bytes, **headers: str) -> requests.Response:
    """POST a signed webhook and answer with stage 2's decision (?wait=true)."""
    return requests.post(service.url + path, data=body, timeout=10, params={"wait": "true"},
                         headers={"Content-Type": "application/json", **headers})


# --- official SDKs ----------------------------------------------------------------------

def test_segment_sdk_unchanged_reaches_the_store(service: Service) -> None:
    errors: list[Exception] = []
    client = SegmentClient("demo-write-key", host=service.url, sync_mode=True,
                           on_error=lambda e, batch: errors.append(e))
    message_id = f"seg-{uuid.uuid4()}"
    client.identify(user_id="user-77", traits={"email": "Jane.SDK@Example.com"},
                    message_id=f"{message_id}-id")
    client.track(user_id="user-77", event="Order Completed", message_id=message_id,
                 properties={"order_id": f"o-{message_id}", "revenue": 42.5, "currency": "eur",
                             "products": [{"product_id": "P1", "price": 42.5, "quantity": 1}]},
                 context={"traits": {"phone": "+44 7911 123456"}, "ip": "203.0.113.9"})
    client.flush()
    assert errors == []
    stored = service.event(message_id)
    assert stored["event_name"] == "purchase"
    assert stored["source"] == "segment"
    body = stored["event"]
    assert body["custom_data"]["value"] == 42.5 and body["custom_data"]["currency"] == "EUR"
    assert len(body["user_data"]["phone_sha256"]) == 64
    assert "phone" not in body["user_data"]
    # the identify linked user-77 to an email; the purchase, which carried none, gained it
    assert body["user_data"]["email_sha256"] == \
        hashlib.sha256(b"jane.sdk@example.com").hexdigest()
    assert "email_sha256" in stored["identity"]["enriched"]


def test_rudderstack_sdk_gzip_batches_reach_the_store(service: Service) -> None:
    errors: list[Exception] = []
    client = RudderClient("demo-rudderstack-write-key", host=service.url, sync_mode=True,
                          on_error=lambda e, batch: errors.append(e))
    assert client.gzip is True
    ids = [f"rs-{uuid.uuid4()}" for _ in range(3)]
    for i, mid in enumerate(ids):
        client.track(anonymous_id="anon-rs", event="Product Viewed", message_id=mid,
                     properties={"product_id": f"SKU-{i}", "price": 10 + i, "currency": "usd"})
    client.flush()
    assert errors == []
    for mid in ids:
        stored = service.event(mid)
        assert stored["source"] == "rudderstack"
        assert stored["event_name"] == "view_content"
        assert stored["event"]["mapping_version"].startswith("rudderstack@")


def test_write_key_failures(service: Service) -> None:
    body = json.dumps({"type": "track", "event": "Signed Up", "userId": "u"}).encode()
    missing = post(service, "/v1/track", body)
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "missing_write_key"
    wrong = requests.post(service.url + "/v1/track", data=body, auth=("nope", ""), timeout=10,
                          headers={"Content-Type": "application/json"})
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_write_key"


def test_write_key_selects_account_and_environment(service: Service) -> None:
    mid = f"acme-{uuid.uuid4()}"
    body = json.dumps({"type": "track", "event": "Signed Up", "userId": "u1",
                       "messageId": mid}).encode()
    response = requests.post(service.url + "/v1/track", data=body, auth=("acme-staging-key", ""),
                             headers={"Content-Type": "application/json"}, timeout=10)
    assert response.status_code == 200, response.text
    stored = service.event(mid)
    assert (stored["account"], stored["environment"]) == ("acme", "staging")


def test_gzip_request_bodies_are_accepted(service: Service) -> None:
    mid = f"gz-{uuid.uuid4()}"
    raw = json.dumps({"batch": [{"type": "page", "name": "Home", "anonymousId": "a",
                                 "messageId": mid}]}).encode()
    response = requests.post(service.url + "/v1/batch", data=gzip.compress(raw),
                             auth=("demo-write-key", ""), timeout=10,
                             headers={"Content-Type": "application/json",
                                      "Content-Encoding": "gzip"})
    assert response.status_code == 200, response.text
    assert service.event(mid)["event_name"] == "page_view"


# --- signed webhooks -------------------------------------------------------------------

def test_segment_webhook_signature(service: Service) -> None:
    mid = f"swh-{uuid.uuid4()}"
    body = json.dumps({"type": "track", "event": "Lead Generated", "userId": "u9",
                       "messageId": mid, "timestamp": "2026-11-20T10:00:00Z"}).encode()
    good = post(service, "/webhooks/segment", body,
                **{"X-Signature": segment_signature("demo-webhook-secret", body)})
    assert good.status_code == 200, good.text
    assert good.json()["results"][0]["status"] == "accepted"
    assert service.event(mid)["event_name"] == "lead"
    bad = post(service, "/webhooks/segment", body,
               **{"X-Signature": segment_signature("other-secret", body)})
    assert bad.status_code == 401 and bad.json()["error"]["code"] == "invalid_signature"
    missing = post(service, "/webhooks/segment", body)
    assert missing.status_code == 401
    assert missing.json()["error"]["code"] == "missing_credentials"
    assert "X-Signature" in missing.json()["error"]["message"]


def test_segment_webhook_batch_signed_over_first_item(service: Service) -> None:
    ids = [f"swb-{uuid.uuid4()}" for _ in range(2)]
    items = [{"type": "track", "event": "Signed Up", "userId": "b", "messageId": m} for m in ids]
    body = json.dumps(items).encode()
    first = json.dumps(items[0], separators=(",", ":")).encode()
    response = post(service, "/webhooks/segment", body,
                    **{"X-Signature": segment_signature("demo-webhook-secret", first)})
    assert response.status_code == 200, response.text
    assert [r["status"] for r in response.json()["results"]] == ["accepted", "accepted"]


def test_rudderstack_webhook_signed_and_static_secret(service: Service) -> None:
    mid = f"rwh-{uuid.uuid4()}"
    body = json.dumps({"type": "track", "event": "Order Completed", "messageId": mid,
                       "anonymousId": "a", "originalTimestamp": "2026-11-20T10:00:00.000Z",
                       "properties": {"order_id": f"R-{mid}", "total": "19.99",
                                      "currency": "gbp"}}).encode()
    signed = post(service, "/webhooks/rudderstack", body,
                  **router_signature("demo-webhook-secret", body),
                  **{"X-Router-Account": "demo", "X-Router-Environment": "production"})
    assert signed.status_code == 200, signed.text
    assert service.event(mid)["event"]["custom_data"]["value"] == 19.99
    mid2 = f"rws-{uuid.uuid4()}"
    body2 = body.replace(mid.encode(), mid2.encode())
    static = post(service, "/webhooks/rudderstack", body2,
                  **{"X-Router-Secret": "demo-static-secret"})
    assert static.status_code == 200, static.text
    wrong = post(service, "/webhooks/rudderstack", body2, **{"X-Router-Secret": "guess"})
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_secret"


def test_router_signature_failure_modes(service: Service) -> None:
    body = json.dumps({"event": "lead", "event_id": f"g-{uuid.uuid4()}"}).encode()
    account = {"X-Router-Account": "acme", "X-Router-Environment": "production"}

    def code(**headers: str) -> tuple[int, str]:
        response = post(service, "/webhooks/webhook", body, **headers)
        return response.status_code, response.json().get("error", {}).get("code", "")

    now = int(time.time())
    assert code(**account, **router_signature("acme-production-secret", body))[0] == 200
    assert code(**account, **router_signature("acme-production-secret", body, str(now - 301))) \
        == (401, "stale_timestamp")
    assert code(**account, **router_signature("acme-production-secret", body, str(now + 301))) \
        == (401, "stale_timestamp")
    rfc3339 = (datetime.now(UTC) - timedelta(seconds=10)).isoformat().replace("+00:00", "Z")
    body_ok = body.replace(b'"lead"', b'"contact"')
    assert post(service, "/webhooks/webhook", body_ok, **account,
                **router_signature("acme-production-secret", body_ok, rfc3339)).status_code == 200
    assert code(**account, **{"X-Router-Timestamp": "yesterday", "X-Router-Signature": "sha256=00"})\
        == (401, "invalid_timestamp")
    assert code(**account, **router_signature("acme-production-secret", body + b" "))[1] == \
        "invalid_signature"
    # a staging secret never authenticates production
    assert code(**account, **router_signature("acme-staging-secret", body)) == \
        (401, "invalid_signature")
    assert code(**{"X-Router-Account": "acme", "X-Router-Environment": "staging"},
                **router_signature("acme-staging-secret", body))[0] == 200
    assert code(**{"X-Router-Account": "nobody"}, **router_signature("x", body)) == \
        (401, "unknown_account")
    assert code(**account) == (401, "missing_signature")


# --- Shopify ---------------------------------------------------------------------------

def shopify_order(order_id: int, email: str = "buyer@example.com") -> dict[str, object]:
    return {"id": order_id, "admin_graphql_api_id": f"gid://shopify/Order/{order_id}",
            "name": "#1001", "email": email, "currency": "USD", "total_price": "59.90",
            "subtotal_price": "49.90", "total_tax": "10.00", "created_at": "2026-11-20T10:00:00-05:00",
            "source_name": "web", "browser_ip": "203.0.113.50",
            "landing_site": "/products/x?fbclid=IwAR-shop&gclid=G-1",
            "line_items": [{"id": 1, "product_id": 111, "title": "Mug", "price": "49.90",
                            "quantity": 1, "sku": "MUG"}],
            "customer": {"id": 7001, "email": email, "first_name": "Ana", "last_name": "Lopez"}}


def shopify_post(service: Service, body: bytes, topic: str, event_id: str,
                 secret: str = "demo-shopify-secret",
                 shop: str = "demo.myshopify.com") -> requests.Response:
    return post(service, "/webhooks/shopify", body, **{
        "X-Shopify-Topic": topic, "X-Shopify-Shop-Domain": shop,
        "X-Shopify-Hmac-Sha256": shopify_hmac(secret, body), "X-Shopify-Event-Id": event_id,
        "X-Shopify-Webhook-Id": str(uuid.uuid4())})


def test_shopify_webhook_verified_and_idempotent(service: Service) -> None:
    order_id = 5_873_245_000_000 + int(time.time() * 1000) % 1_000_000
    body = json.dumps(shopify_order(order_id)).encode()
    event_id = str(uuid.uuid4())
    first = shopify_post(service, body, "orders/create", event_id)
    assert first.status_code == 200, first.text
    assert first.json()["results"][0]["status"] == "accepted"
    # Shopify retries the same delivery: same topic and X-Shopify-Event-Id
    again = shopify_post(service, body, "orders/create", event_id)
    assert again.json()["results"][0]["status"] == "duplicate"
    # orders/paid for the same order is the same purchase (business key)
    paid = shopify_post(service, body, "orders/paid", str(uuid.uuid4()))
    assert paid.json()["results"][0]["status"] == "duplicate"
    purchases = service.admin("/admin/events", name="purchase", source="shopify").json()["events"]
    matching = [e for e in purchases if e["event_id"].endswith(str(order_id))]
    assert len(matching) == 1 and matching[0]["duplicates"] == 2


def test_shopify_authentication_failures(service: Service) -> None:
    body = json.dumps(shopify_order(1)).encode()
    bad = shopify_post(service, body, "orders/create", "e", secret="wrong")
    assert bad.status_code == 401 and bad.json()["error"]["code"] == "invalid_signature"
    unknown = shopify_post(service, body, "orders/create", "e", shop="other.myshopify.com")
    assert unknown.status_code == 401 and unknown.json()["error"]["code"] == "unknown_account"
    tampered = post(service, "/webhooks/shopify", body + b" ", **{
        "X-Shopify-Topic": "orders/create", "X-Shopify-Shop-Domain": "demo.myshopify.com",
        "X-Shopify-Hmac-Sha256": shopify_hmac("demo-shopify-secret", body)})
    assert tampered.status_code == 401


# --- the first-party pixel ---------------------------------------------------------------

def collect(service: Service, message: dict[str, object], origin: str = "http://localhost",
            ip: str | None = None, **headers: str) -> requests.Response:
    return requests.post(service.url + "/collect?account=demo&environment=production",
                         data=json.dumps(message), timeout=10,
                         headers={"Content-Type": "text/plain", "Origin": origin,
                                  "X-Forwarded-For": ip or fresh_ip(), "User-Agent": "Pixel/1.0",
                                  **headers})


def test_pixel_sets_first_party_cookies_and_captures_the_request(service: Service) -> None:
    eid = f"px-{uuid.uuid4()}"
    ip = fresh_ip()
    response = collect(service, {"event": "page_view", "event_id": eid,
                                 "page": {"url": "https://shop.test/?fbclid=AbC123"}}, ip=ip)
    assert response.status_code == 200, response.text
    assert response.headers["Access-Control-Allow-Origin"] == "http://localhost"
    cookies = {c.name: c for c in response.cookies}
    assert {"rt_vid", "_fbp", "_fbc"} <= set(cookies)
    for cookie in cookies.values():
        assert cookie.secure
    for name in ("rt_vid", "_fbp"):  # the router's own ids: server.cookie_max_age_days
        assert cookies[name].expires and cookies[name].expires > time.time() + 300 * 86400
    # a click id lives as long as its platform documents (Meta: 90 days for _fbc)
    assert abs(cookies["_fbc"].expires - time.time() - 90 * 86400) < 120
    set_cookie = response.headers["Set-Cookie"]
    assert "SameSite=Lax" in set_cookie and "HttpOnly" in set_cookie  # rt_vid
    fbc = cookies["_fbc"].value
    assert fbc.startswith("fb.1.") and fbc.endswith(".AbC123")
    assert len(fbc.split(".")[2]) == 13  # millisecond timestamp
    stored = service.event(eid)["event"]
    assert stored["user_data"]["fbc"] == fbc
    assert stored["user_data"]["visitor_id"] == cookies["rt_vid"].value
    assert stored["context"]["ip"] == ip
    assert stored["context"]["user_agent"] == "Pixel/1.0"


def test_pixel_keeps_existing_cookies(service: Service) -> None:
    eid = f"px-{uuid.uuid4()}"
    response = collect(service, {"event": "page_view", "event_id": eid,
                                 "page": {"url": "https://shop.test/"}},
                       Cookie="rt_vid=v-known; _fbp=fb.1.1.42")
    assert response.status_code == 200
    assert "rt_vid" not in {c.name for c in response.cookies}
    assert service.event(eid)["event"]["user_data"]["fbp"] == "fb.1.1.42"


def test_pixel_origin_allowlist_and_preflight(service: Service) -> None:
    denied = collect(service, {"event": "page_view"}, origin="https://evil.test")
    assert denied.status_code == 401
    assert denied.json()["error"]["code"] == "origin_not_allowed"
    ok = requests.options(service.url + "/collect?account=demo", timeout=10,
                          headers={"Origin": "http://localhost",
                                   "Access-Control-Request-Method": "POST"})
    assert ok.status_code == 204 and ok.headers["Access-Control-Allow-Credentials"] == "true"
    script = requests.get(service.url + "/collect.js", timeout=10)
    assert script.status_code == 200 and "function router(" in script.text
    assert script.headers["Content-Type"].startswith("application/javascript")


def test_pixel_is_rate_limited_per_client(service: Service) -> None:
    ip = fresh_ip()
    codes = [collect(service, {"event": "page_view", "event_id": f"rl-{ip}-{i}"}, ip=ip).status_code
             for i in range(30)]
    assert codes[0] == 200
    assert 429 in codes
    assert collect(service, {"event": "page_view"}).status_code == 200  # another client


def test_sec_gpc_is_captured_and_denies_advertising(service: Service) -> None:
    eid = f"gpc-{uuid.uuid4()}"
    response = requests.post(service.url + "/collect?account=acme&environment=production",
                             data=json.dumps({"event": "sign_up", "event_id": eid}), timeout=10,
                             headers={"Content-Type": "application/json", "Sec-GPC": "1",
                                      "Origin": "https://shop.acme.test",
                                      "X-Forwarded-For": fresh_ip()})
    assert response.status_code == 200, response.text
    stored = service.event(eid)
    assert stored["event"]["context"]["gpc"] is True
    assert stored["event"]["consent"]["purposes"]["advertising"] is False
    deliveries = {d["destination"]: d for d in stored["deliveries"]}
    assert deliveries["adsink"]["status"] == "dropped"
    assert "advertising" in deliveries["adsink"]["reason"]
    assert deliveries["webhook"]["status"] in ("queued", "delivered")


def test_click_ids_survive_the_landing_page_in_first_party_cookies(
        service: Service, shipped_config: Any) -> None:
    """The landing page's click ids become first-party cookies with the lifetimes the
    pixel mapping declares; a later purchase on a page without them still carries them."""
    declared = {c.name: c for c in shipped_config.mappings["pixel"].ingest.set_cookies
                if c.from_query}
    landing = ("https://shop.test/?gclid=Cj0-landing&msclkid=ms-landing&li_fat_id=li-landing"
               "&twclid=tw-landing&fbclid=FbLanding")
    ip = fresh_ip()
    first = collect(service, {"event": "page_view", "event_id": f"cl-{uuid.uuid4()}",
                              "page": {"url": landing}}, ip=ip)
    assert first.status_code == 200, first.text
    cookies = {c.name: c for c in first.cookies}
    for name, param in (("rt_gclid", "gclid"), ("rt_msclkid", "msclkid"),
                        ("rt_li_fat_id", "li_fat_id"), ("rt_twclid", "twclid")):
        spec = declared[name]
        assert spec.from_query == param
        lifetime = cookies[name].expires - time.time()
        assert abs(lifetime - spec.max_age_days * 86400) < 120, (name, lifetime)
        assert cookies[name].secure and cookies[name].has_nonstandard_attr("HttpOnly")
    assert cookies["rt_gclid"].value == "Cj0-landing"
    assert abs(cookies["rt_li_fat_id"].expires - time.time() - 30 * 86400) < 120
    jar = "; ".join(f"{c.name}={c.value}" for c in first.cookies)
    purchase_id = f"cl-{uuid.uuid4()}"
    later = collect(service, {"event": "purchase", "event_id": purchase_id,
                              "page": {"url": "https://shop.test/thank-you"},
                              "data": {"order_id": purchase_id, "value": 5, "currency": "EUR"}},
                    ip=ip, Cookie=jar)
    assert later.status_code == 200, later.text
    assert not [c for c in later.cookies if c.name == "rt_gclid"]  # not rewritten
    user = service.event(purchase_id)["event"]["user_data"]
    assert user["gclid"] == "Cj0-landing" and user["msclkid"] == "ms-landing"
    assert user["li_fat_id"] == "li-landing" and user["twclid"] == "tw-landing"
    assert user["fbc"].endswith(".FbLanding")
