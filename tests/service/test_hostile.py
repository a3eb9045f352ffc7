"""Hostile input and faults against a real `router serve`: every finding of issue 10 as
a request that used to get a 500, be stored, or take ingest down, and now gets a 4xx
with a stable code (or a per-message rejection) while the rest of its batch is kept."""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import statistics
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.service.conftest import (
    Service,
    fresh_ip,
    make_config_dir,
    router_signature,
    segment_signature,
    start_service,
)

AUTH = "Basic " + base64.b64encode(b"demo-write-key:").decode()


def post(service: Service, path: str, body: bytes | str, **headers: Any) -> requests.Response:
    return requests.post(service.url + path, data=body, timeout=15,
                         headers={"Content-Type": "application/json",
                                  "X-Forwarded-For": fresh_ip(), **headers})


def batch(service: Service, messages: list[Any], **envelope: Any) -> requests.Response:
    return post(service, "/v1/batch", json.dumps({"batch": messages, **envelope}),
                Authorization=AUTH)


def good(mid: str | None = None) -> dict[str, Any]:
    return {"type": "track", "event": "Signed Up", "userId": "u-good",
            "messageId": mid or f"good-{uuid.uuid4()}"}


def stored(service: Service, event_id: str, wait: float = 0.0) -> bool:
    """Is the event stored? Stage 2 stores it shortly after the acknowledgement: `wait`
    gives it that long."""
    deadline = time.time() + wait
    while True:
        if service.admin(f"/admin/events/{event_id}").status_code == 200:
            return True
        if time.time() >= deadline:
            return False
        time.sleep(0.05)


def tracebacks(service: Service) -> int:
    return service.log.read_text(errors="replace").count("Traceback")


@pytest.fixture(scope="module")
def hardened(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """A server with short deadlines and small bounds (so the tests are quick), the
    replay cache on, a 2 s dedup window (to replay after it) and an outbound policy
    that refuses private addresses (the sandbox is on 127.0.0.1)."""
    root = tmp_path_factory.mktemp("hardened")
    config_dir = make_config_dir(
        root / "config", body_timeout_seconds=2, unauthenticated_bodies_per_client=4,
        replay_window_seconds=300,
        sections={"dedup": {"window_seconds": 2},
                  "delivery": {"outbound": {"deny_private": True, "deny": ["evil.example"]}}})
    svc = start_service(config_dir, root / "router.db", root / "serve.log")
    yield svc
    svc.process.terminate()
    svc.process.wait(timeout=30)


# --- slow clients ------------------------------------------------------------------------

async def _slow_connection(port: int, path: str, headers: dict[str, str],
                           declared: int = 100_000) -> tuple[asyncio.StreamReader,
                                                             asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    writer.write((head + f"Content-Length: {declared}\r\n\r\n").encode() + b'{"batch": [')
    await writer.drain()
    return reader, writer


async def _status(reader: asyncio.StreamReader, timeout: float) -> tuple[int, str]:
    line = await asyncio.wait_for(reader.readline(), timeout)
    if not line:
        return 0, ""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
    length = next((int(h.split(b":")[1]) for h in head.split(b"\r\n")
                   if h.lower().startswith(b"content-length:")), 0)
    body = await asyncio.wait_for(reader.readexactly(length), timeout)
    return int(line.split()[1]), body.decode()


def test_slow_unauthenticated_bodies_leave_normal_clients_served(service: Service) -> None:
    """300 connections (more than the 256 processing slots), from 300 client addresses,
    that send their body a byte at a time without credentials in the headers: a normal
    client still gets every answer, none of them 503. Before: the slots were taken
    before the body was read, and every normal client got 503 `overloaded`.
    (test_unauthenticated_bodies_are_bounded_per_client shows the deadline ending them.)"""
    port = int(service.url.rsplit(":", 1)[1])
    secret_headers = router_signature("demo-webhook-secret", b"x")

    async def scenario() -> tuple[list[int], list[float]]:
        slow = []
        for i in range(300):
            headers = {"X-Forwarded-For": f"10.{i // 250}.{i % 250}.1"}  # 300 clients
            if i % 2:  # a webhook whose signature needs the body
                path = "/webhooks/webhook"
                headers.update(secret_headers)
            else:  # a tracking call whose write key might be in the body
                path = "/v1/batch"
            slow.append(await _slow_connection(port, path, headers))

        async def trickle() -> None:
            for _ in range(4):
                await asyncio.sleep(0.4)
                for _, writer in slow:
                    writer.write(b" ")
                await asyncio.gather(*(w.drain() for _, w in slow), return_exceptions=True)

        trickling = asyncio.create_task(trickle())
        statuses, latencies = [], []
        loop = asyncio.get_running_loop()
        with requests.Session() as session:
            for n in range(40):
                started = time.perf_counter()
                response = await loop.run_in_executor(None, lambda n=n: session.post(
                    service.url + "/v1/track", timeout=10,
                    data=json.dumps(good(f"normal-{uuid.uuid4()}-{n}")),
                    headers={"Content-Type": "application/json", "Authorization": AUTH}))
                latencies.append(time.perf_counter() - started)
                statuses.append(response.status_code)
        await trickling
        for _, writer in slow:
            writer.close()
        await asyncio.gather(*(w.wait_closed() for _, w in slow), return_exceptions=True)
        return statuses, latencies

    statuses, latencies = asyncio.run(scenario())
    assert statuses == [200] * 40
    assert statistics.median(latencies) < 1.0  # measured, not a benchmark: see reliability.md


def test_unauthenticated_bodies_are_bounded_per_client(hardened: Service) -> None:
    """From one client address, at most `unauthenticated_bodies_per_client` (4 here)
    bodies are read before authentication at once; the next is refused at once with 429."""
    port = int(hardened.url.rsplit(":", 1)[1])

    async def scenario() -> tuple[list[tuple[int, str]], float]:
        ip = {"X-Forwarded-For": "192.0.2.77"}
        held = [await _slow_connection(port, "/v1/batch", ip) for _ in range(4)]
        await asyncio.sleep(0.2)
        started = time.perf_counter()
        reader, writer = await _slow_connection(port, "/v1/batch", ip)
        refused = await _status(reader, 5)
        elapsed = time.perf_counter() - started
        writer.close()
        ends = await asyncio.gather(*(_status(r, 10) for r, _ in held))
        for _, w in held:
            w.close()
        return [refused, *ends], elapsed

    (refused, *ends), elapsed = asyncio.run(scenario())
    assert refused[0] == 429 and json.loads(refused[1])["error"]["code"] == \
        "too_many_unauthenticated"
    assert elapsed < 1.5  # at once, not at the body deadline
    assert [status for status, _ in ends] == [408] * 4


def test_credentials_in_headers_are_checked_before_the_body(hardened: Service) -> None:
    """A wrong write key, a missing or malformed signature and a stale timestamp are
    answered without waiting for the body (which never comes)."""
    port = int(hardened.url.rsplit(":", 1)[1])
    bad_key = "Basic " + base64.b64encode(b"wrong-key:").decode()
    cases = [("/v1/batch", {"Authorization": bad_key}, "invalid_write_key"),
             ("/webhooks/webhook", {}, "missing_signature"),
             ("/webhooks/webhook", {"X-Router-Signature": "sha256=zz",
                                    "X-Router-Timestamp": str(int(time.time()))},
              "invalid_signature"),
             ("/webhooks/webhook", router_signature("demo-webhook-secret", b"", "1000"),
              "stale_timestamp"),
             ("/webhooks/rudderstack", {"X-Router-Secret": "guess"}, "invalid_secret")]

    async def scenario() -> list[tuple[int, str]]:
        conns = [await _slow_connection(port, path, {**headers, "X-Forwarded-For": fresh_ip()})
                 for path, headers, _ in cases]
        answers = await asyncio.gather(*(_status(r, 1.5) for r, _ in conns))
        for _, w in conns:
            w.close()
        return answers

    answers = asyncio.run(scenario())
    assert [(s, json.loads(b)["error"]["code"]) for s, b in answers] == \
        [(401, code) for _, _, code in cases]


# --- card numbers ------------------------------------------------------------------------

CARD_FORMS = [
    "https://shop.example.com/pay?cc=4111111111111111", "https://shop.example.com/4111111111111111/",
    "4111.1111.1111.1111", "4111/1111/1111/1111", "4111_1111_1111_1111", "4111  1111  1111  1111",
    "4111\t1111\t1111\t1111", "4111\n1111\n1111\n1111", "4111\u00a01111\u00a01111\u00a01111",
    "\uff14\uff11\uff11\uff11\uff11\uff11\uff11\uff11\uff11\uff11\uff11\uff11\uff11\uff11\uff11\uff11",
    "".join(chr(0x660 + int(d)) for d in "5555555555554444"), "4111111111111111x",
]


def test_card_numbers_in_every_form_are_rejected_and_never_stored(service: Service) -> None:
    """Each form of the issue, in a field, as a JSON number and as a key: rejected alone
    (`pii_card_number`), the good event of the batch stored, and none reaches a
    destination. Before: every one of these was stored and forwarded."""
    run = uuid.uuid4().hex[:8]
    messages = [{"type": "track", "event": "Signed Up", "userId": "u", "messageId": f"card-{run}-{i}",
                 "properties": {"note": form}} for i, form in enumerate(CARD_FORMS)]
    messages.append({"type": "track", "event": "Signed Up", "userId": "u",
                     "messageId": f"card-{run}-number", "properties": {"cc": 4111111111111111}})
    messages.append({"type": "track", "event": "Signed Up", "userId": "u",
                     "messageId": f"card-{run}-key", "properties": {"4111111111111111": "x"}})
    keep = good()
    response = batch(service, [*messages, keep])
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["code"] for r in results[:-1]] == ["pii_card_number"] * len(messages)
    assert results[-1]["status"] == "accepted"
    assert "4111" not in response.text and "5555" not in response.text
    assert stored(service, keep["messageId"], wait=10)  # decided, so the batch's turn is over
    assert not any(stored(service, m["messageId"]) for m in messages)
    sent = json.dumps(service.received("webhook"))
    assert f"card-{run}" not in sent


# --- client input that caused 500s --------------------------------------------------------

def test_envelope_errors_are_400_with_stable_codes(service: Service) -> None:
    before = tracebacks(service)
    cases = [
        (post(service, "/v1/track", json.dumps({"writeKey": 5, "type": "track", "event": "x"})),
         400, "invalid_envelope"),
        (post(service, "/v1/track", json.dumps({"writeKey": ["k"], "type": "track"})),
         400, "invalid_envelope"),
        (batch(service, [good()], context=[1]), 400, "invalid_envelope"),
        (batch(service, [good()], context="ctx"), 400, "invalid_envelope"),
        (post(service, "/v1/batch", b"\x1f\x8b garbage", **{"Content-Encoding": "gzip"}),
         400, "malformed_body"),
        (post(service, "/v1/batch", gzip.compress(b" " * 5_000_000),  # 5 MB in 5 kB
              **{"Content-Encoding": "gzip", "Authorization": AUTH}),
         413, "payload_too_large"),
    ]
    for response, status, code in cases:
        assert (response.status_code, response.json()["error"]["code"]) == (status, code), \
            response.text
    time.sleep(0.3)
    assert tracebacks(service) == before


def test_a_connection_that_sent_a_corrupt_body_is_closed_not_wedged(service: Service) -> None:
    """After 400 malformed_body the connection is closed (its parser is mid-message); the
    client's next request, on a new connection, is answered at once."""
    with requests.Session() as session:
        for _ in range(3):
            bad = session.post(service.url + "/v1/group", data=b"\x1f\x8b\x08\x002\xca\n\xda\xe0\x1f\x96-",
                               timeout=5, headers={"Content-Type": "application/json",
                                                   "Content-Encoding": "gzip",
                                                   "Authorization": AUTH})
            assert (bad.status_code, bad.headers.get("Connection")) == (400, "close")
            after = session.post(service.url + "/v1/track", data=json.dumps(good()), timeout=5,
                                 headers={"Content-Type": "application/json",
                                          "Authorization": AUTH})
            assert after.status_code == 200, after.text


def _deep(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = {"a": value}
    return value


@pytest.mark.parametrize("bad, code", [
    ({"context": [1]}, "invalid_event"),
    ({"context": "a string"}, "invalid_event"),
    ({"messageId": [1, 2]}, "invalid_event"),
    ({"messageId": {"a": 1}}, "invalid_event"),
    ({"properties": _deep(300)}, "nesting_too_deep"),
    ({"properties": _deep(70)}, "nesting_too_deep"),
    ({"sentAt": "9999-12-31T23:59:59Z", "originalTimestamp": "0001-01-01T00:00:00Z"}, None),
])
def test_one_bad_message_never_fails_its_batch(service: Service, bad: dict[str, Any],
                                               code: str | None) -> None:
    """A message-level problem rejects that message alone (or, for absurd clocks, is
    simply not corrected); the good message of the batch is stored, with the batch's
    context merged in. Before: a 500 for the whole batch, or a repr as the event id."""
    before = tracebacks(service)
    message = {"type": "track", "event": "Signed Up", "userId": "u",
               "messageId": f"bad-{uuid.uuid4()}", **bad}
    keep = good()
    response = batch(service, [message, keep], context={"ip": "198.51.100.9"})
    assert response.status_code == 200, response.text
    first, second = response.json()["results"]
    if code is None:
        assert first["status"] == "accepted"
    else:
        assert (first["status"], first["code"]) == ("rejected", code)
        assert first["event_id"] in (None, message["messageId"])
        if isinstance(message["messageId"], str):
            assert not stored(service, message["messageId"])
    assert second == {"event_id": keep["messageId"], "status": "accepted"}
    assert service.event(keep["messageId"])["event"]["context"]["ip"] == "198.51.100.9"
    time.sleep(0.2)
    assert tracebacks(service) == before


def test_deep_nesting_on_a_signed_webhook_is_judged_by_its_signature(service: Service) -> None:
    """Before the signature is checked, nothing may fail on the body's shape (the
    first-item fallback serialized it): 401 for a wrong signature, and with the right one
    the deep message is rejected alone. Before: 500 before the signature was checked."""
    body = json.dumps([{"type": "track", "event": "x", "messageId": "deep", "p": _deep(300)},
                       good()]).encode()
    wrong = post(service, "/webhooks/segment", body, **{"X-Signature": "00" * 20})
    assert (wrong.status_code, wrong.json()["error"]["code"]) == (401, "invalid_signature")
    signed = post(service, "/webhooks/segment", body,
                  **{"X-Signature": segment_signature("demo-webhook-secret", body)})
    assert signed.status_code == 200, signed.text
    assert [r["status"] for r in signed.json()["results"]] == ["rejected", "accepted"]


@pytest.mark.parametrize("timestamp", ["nan", "NaN", "inf", "1_763_647_387", "1e9", "+1763647387",
                                       "\uff11\uff17\uff16\uff13\uff16\uff14\uff17\uff13\uff18\uff17"])
def test_timestamps_are_parsed_strictly(service: Service, timestamp: str) -> None:
    """A correctly signed request whose timestamp is not plain unix seconds or RFC 3339 is
    refused. Before: `nan` passed the freshness check (every comparison with nan is
    False) and `1_763_647_387` parsed as a number."""
    body = json.dumps({"event": "lead", "event_id": f"ts-{uuid.uuid4()}"}).encode()
    headers: dict[str, Any] = router_signature("demo-webhook-secret", body, timestamp)
    headers["X-Router-Timestamp"] = timestamp.encode()  # as sent: bytes, UTF-8
    response = post(service, "/webhooks/webhook", body, **headers)
    assert (response.status_code, response.json()["error"]["code"]) == \
        (401, "invalid_timestamp"), response.text


# --- replay, CORS, outbound ---------------------------------------------------------------

def test_a_replayed_segment_signature_is_not_stored_again(hardened: Service) -> None:
    """A Segment-signed webhook carries no timestamp; sent again after the dedup window
    (2 s here), the replay cache answers it as a duplicate and stores nothing. Before:
    the replay was a new event after the window."""
    mid = f"replay-{uuid.uuid4()}"
    body = json.dumps({"type": "track", "event": "Signed Up", "userId": "u",
                       "messageId": mid}).encode()
    signature = {"X-Signature": segment_signature("demo-webhook-secret", body)}
    first = post(hardened, "/webhooks/segment", body, **signature)
    assert first.json()["results"] == [{"event_id": mid, "status": "accepted"}]
    time.sleep(2.5)
    again = post(hardened, "/webhooks/segment", body, **signature)
    assert again.status_code == 200
    [result] = again.json()["results"]
    assert result["status"] == "duplicate" and "replay" in result["reason"]
    assert "matches" not in hardened.event(mid)  # one event, not two
    other = json.dumps({"type": "track", "event": "Signed Up", "userId": "u",
                        "messageId": f"replay-{uuid.uuid4()}"}).encode()
    fresh = post(hardened, "/webhooks/segment", other,
                 **{"X-Signature": segment_signature("demo-webhook-secret", other)})
    assert fresh.json()["results"][0]["status"] == "accepted"


def test_collect_errors_carry_cors_headers_only_for_allowed_origins(service: Service) -> None:
    evil = post(service, "/collect?account=demo", "{}", Origin="https://evil.example")
    assert evil.status_code == 401
    assert "Access-Control-Allow-Origin" not in evil.headers
    unknown = post(service, "/collect?account=nobody", "{}", Origin="https://evil.example")
    assert unknown.status_code == 401 and "Access-Control-Allow-Origin" not in unknown.headers
    allowed = requests.post(service.url + "/collect?account=demo", data="{}", timeout=10,
                            headers={"Content-Type": "application/xml",
                                     "Origin": "http://localhost"})
    assert allowed.status_code == 415
    assert allowed.headers["Access-Control-Allow-Origin"] == "http://localhost"
    assert allowed.headers["Access-Control-Allow-Credentials"] == "true"


def test_outbound_policy_refuses_private_addresses(hardened: Service) -> None:
    """With `delivery.outbound.deny_private`, a destination on 127.0.0.1 (the sandbox) is
    never contacted: its deliveries are dropped with the reason, never retried."""
    mid = f"outbound-{uuid.uuid4()}"
    response = post(hardened, "/webhooks/webhook",
                    body := json.dumps({"event": "lead", "event_id": mid,
                                        "user": {"email": "o@example.com"}}).encode(),
                    **router_signature("demo-webhook-secret", body))
    assert response.status_code == 200, response.text
    delivery = hardened.wait_for(
        lambda: (d := hardened.deliveries(mid).get("webhook", {})).get("status") not in
        (None, "queued") and d, what="the webhook delivery's outcome")
    assert delivery["status"] == "dropped" and delivery["attempts"] == 1
    webhook = delivery["last_error"]
    assert webhook.startswith("outbound refused:") and "not a public address" in webhook
    assert not [r for r in hardened.received("webhook") if mid in json.dumps(r)]


def test_the_sandbox_host_can_be_allowed(tmp_path: Path) -> None:
    """`allow` wins over `deny_private`: the multi-tenant setting with the demo sandbox."""
    config_dir = make_config_dir(tmp_path / "config", sections={"delivery": {"outbound": {
        "deny_private": True, "allow": ["127.0.0.1"]}}})
    svc = start_service(config_dir, tmp_path / "router.db", tmp_path / "serve.log")
    try:
        mid = f"allowed-{uuid.uuid4()}"
        body = json.dumps({"event": "lead", "event_id": mid,
                           "user": {"email": "a@example.com"}}).encode()
        response = post(svc, "/webhooks/webhook", body,
                        **router_signature("demo-webhook-secret", body))
        assert response.status_code == 200, response.text
        svc.wait_for(lambda: svc.deliveries(mid).get("webhook", {}).get("status") ==
                     "delivered", what="a delivery")
    finally:
        svc.process.terminate()
        svc.process.wait(timeout=30)
