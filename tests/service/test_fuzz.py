"""A bounded property-based fuzz of every endpoint of a real `router serve`, checked
against docs/openapi.yaml: generated requests (valid, nearly valid and hostile: wrong
types, deep nesting, card numbers, junk encodings, bad or good signatures) never get a
5xx, every answer has a status and a body the document describes, and nothing from
rejected input is stored (the SQLite store is read directly at the end).

Budget: FUZZ_EXAMPLES requests per endpoint group (tracking API, webhooks, pixel, admin);
the whole file takes a few tens of seconds. Each message the fuzz can follow carries an
event id of its own (fz-<run>-<n>), so every acceptance and rejection is checked in the
store. Hypothesis (already a test dependency) generates the requests: the interesting
requests are the ones that pass authentication, which a schema-driven fuzzer without
the secrets would rarely produce.
"""

from __future__ import annotations

import gzip
import hashlib
import hmac
import itertools
import json
import sqlite3
import time
import uuid
import zlib
from base64 import b64encode
from typing import Any
from urllib.parse import quote

import pytest
import requests
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from tests.service.conftest import ADMIN_TOKEN, REPO, Service

FUZZ_EXAMPLES = 1000
OPENAPI = yaml.safe_load((REPO / "docs" / "openapi.yaml").read_text())
_REGISTRY = Registry().with_resource("urn:openapi", DRAFT202012.create_resource(OPENAPI))
RUN = uuid.uuid4().hex[:10]
_ids = itertools.count()
CARDS = ["4111 1111 1111 1111", "5555-5555-5555-4444", "https://x.example/p?cc=4111111111111111",
         "\uff14\uff11\uff11\uff11\uff11\uff11\uff11\uff11\uff11\uff11\uff11\uff11\uff11\uff11"
         "\uff11\uff11", "378282246310005x"]
SETTINGS = settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None,
                    suppress_health_check=list(HealthCheck))


class Ledger:
    """What the fuzz sent and what the router answered, for the final store check."""

    def __init__(self) -> None:
        self.requests = 0
        self.statuses: dict[int, int] = {}
        self.accepted: set[str] = set()
        self.rejected: set[str] = set()
        self.cards: set[str] = set()

    def report(self, name: str) -> None:
        """Shown with `pytest -s`: what the fuzz got back (docs/reliability.md quotes it)."""
        print(f"\n{name}: {self.requests} requests, statuses {dict(sorted(self.statuses.items()))}, "
              f"{len(self.accepted)} followed messages stored, {len(self.rejected)} rejected "
              f"({len(self.cards)} with a card number), none of them stored")

    def check_store(self, service: Service) -> None:
        assert service.db is not None
        deadline = time.time() + 10
        while True:  # group commit answers after the write; reads see it at once
            with sqlite3.connect(f"file:{service.db}?mode=ro", uri=True) as conn:
                stored = {row[0] for row in conn.execute(
                    "SELECT event_id FROM events WHERE event_id LIKE ?", (f"fz-{RUN}-%",))}
            if self.accepted <= stored or time.time() > deadline:
                break
            time.sleep(0.2)
        assert not stored & self.rejected, sorted(stored & self.rejected)[:5]
        assert not stored & self.cards
        assert self.accepted <= stored, sorted(self.accepted - stored)[:5]


def fresh_id() -> str:
    return f"fz-{RUN}-{next(_ids)}"


# --- checking an answer against the OpenAPI document -------------------------------------

def check_answer(ledger: Ledger, path: str, method: str, response: requests.Response) -> Any:
    ledger.requests += 1
    ledger.statuses[response.status_code] = ledger.statuses.get(response.status_code, 0) + 1
    assert response.status_code < 500, (path, response.status_code, response.text[:500])
    operation = OPENAPI["paths"][path][method]
    spec = operation["responses"].get(str(response.status_code))
    assert spec is not None, f"{method.upper()} {path}: undocumented {response.status_code}: " \
        f"{response.text[:300]}"
    if "$ref" in spec:
        spec = OPENAPI["components"]["responses"][spec["$ref"].rsplit("/", 1)[1]]
    content = spec.get("content") or {}
    if "application/json" not in content:
        return None
    assert response.headers["Content-Type"].startswith("application/json"), response.headers
    body = response.json()
    schema = content["application/json"].get("schema")
    if schema is not None:
        validator = Draft202012Validator(_rooted(schema), registry=_REGISTRY)
        errors = sorted(validator.iter_errors(body), key=str)
        assert not errors, f"{method.upper()} {path} {response.status_code}: {errors[0].message}"
    return body


def _rooted(schema: dict[str, Any]) -> dict[str, Any]:
    """A schema from the document, its $refs ("#/components/...") pointing into it."""
    rooted: dict[str, Any] = json.loads(
        json.dumps(schema).replace('"#/components/', '"urn:openapi#/components/'))
    return rooted


def follow_results(ledger: Ledger, body: Any, status: int, messages: list[Any],
                   tracked: list[str | None], carded: list[bool]) -> None:
    """Per message: what was accepted must be stored, what was rejected must not be."""
    if status not in (200, 422):
        ledger.rejected.update(t for t in tracked if t)
        return
    results = body["results"]
    assert len(results) == len(messages), (len(results), len(messages))
    for result, mid, card in zip(results, tracked, carded, strict=True):
        if card:  # never stored: rejected for the card, or for an earlier envelope problem
            assert result["status"] == "rejected" and result["code"] in (
                "pii_card_number", "invalid_event", "nesting_too_deep", "event_too_large"), result
        if mid is None:
            continue
        if card:
            ledger.cards.add(mid)
        if result["status"] == "rejected":
            ledger.rejected.add(mid)
        elif result["status"] in ("accepted", "unmapped"):
            assert result["event_id"] == mid, (result, mid)
            ledger.accepted.add(mid)


# --- strategies ------------------------------------------------------------------------------

junk = st.recursive(st.none() | st.booleans() | st.integers() |
                    st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=3) |
                    st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=8)
times = st.sampled_from(["2026-11-20T14:03:07.125Z", "2020-01-01T00:00:00Z", "1763647387",
                         "9999-12-31T23:59:59Z", "0001-01-01T00:00:00Z", "yesterday", "nan",
                         "1e300", "2026-02-30T00:00:00Z"]) | st.integers() | junk
words = st.sampled_from(["Order Completed", "Signed Up", "Product Viewed", "Lead Generated",
                         "Product Added", "Checkout Started", "Wishlist Shared"])


def deep(levels: int) -> Any:
    value: Any = "leaf"
    for i in range(levels):
        value = {"k": value} if i % 2 else [value]
    return value


props = st.fixed_dictionaries({}, optional={
    "order_id": st.text(max_size=12) | st.integers(), "revenue": st.floats(allow_nan=False) | junk,
    "total": st.integers() | junk, "currency": st.sampled_from(["USD", "eur", "", "XXX"]) | junk,
    "products": st.lists(st.fixed_dictionaries({}, optional={
        "product_id": st.text(max_size=6) | junk, "price": st.floats(allow_nan=False) | junk,
        "quantity": st.integers() | junk}), max_size=3) | junk,
    "value": junk, "note": st.text(max_size=40),
    "nested": st.integers(min_value=40, max_value=300).map(deep)})
context = st.fixed_dictionaries({}, optional={
    "ip": st.sampled_from(["203.0.113.9", "::1", "not an ip"]) | junk,
    "traits": st.fixed_dictionaries({}, optional={"email": st.emails() | junk,
                                                  "phone": st.text(max_size=15) | junk}) | junk,
    "page": st.fixed_dictionaries({}, optional={"url": st.text(max_size=30) | junk}) | junk,
    "userAgent": st.text(max_size=30), "consent": junk}) | junk
segment_message = st.fixed_dictionaries({}, optional={
    "type": st.sampled_from(["track", "identify", "page", "screen", "alias", "group"]) | junk,
    "event": words | junk, "userId": st.text(max_size=8) | junk,
    "anonymousId": st.text(max_size=8) | junk, "properties": props | junk,
    "traits": st.dictionaries(st.text(max_size=8), junk, max_size=3) | junk,
    "context": context, "timestamp": times, "originalTimestamp": times, "sentAt": times,
    "previousId": junk})
pixel_message = st.fixed_dictionaries({}, optional={
    "event": st.sampled_from(["page_view", "add_to_cart", "purchase", "lead"]) | junk,
    "timestamp": times, "page": st.fixed_dictionaries({}, optional={
        "url": st.sampled_from(["https://shop.example.com/?fbclid=AbC", "x"]) | junk,
        "referrer": junk}) | junk,
    "data": props | junk, "user": junk, "consent": junk})


@st.composite
def messages(draw: st.DrawFn, base: st.SearchStrategy[Any], id_field: str,
             count: st.SearchStrategy[int]) -> tuple[list[Any], list[str | None], list[bool]]:
    out, tracked, carded = [], [], []
    for _ in range(draw(count)):
        message = draw(base | junk) if draw(st.integers(0, 9)) == 0 else draw(base)
        mid = None
        if isinstance(message, dict):
            choice = draw(st.integers(0, 9))
            if choice < 8:
                mid = fresh_id()
                message[id_field] = mid
            elif choice == 8:
                message[id_field] = draw(junk)
        card = isinstance(message, dict) and draw(st.integers(0, 7)) == 0
        if card:
            where = draw(st.sampled_from(["value", "key", "number"]))
            number = draw(st.sampled_from(CARDS))
            holder = message.setdefault("properties", {}) if isinstance(
                message.get("properties", {}), dict) else message
            if where == "key":
                holder[number] = 1
            elif where == "number":
                holder["cc"] = 4111111111111111
            else:
                holder["card_note"] = number
        out.append(message)
        tracked.append(mid)
        carded.append(card)
    return out, tracked, carded


@st.composite
def encoded(draw: st.DrawFn, document: Any) -> tuple[bytes, dict[str, str], bool]:
    """The body as sent: JSON, sometimes compressed, sometimes broken; and whether it
    decodes to `document` (only then can the answer be matched message by message)."""
    raw = json.dumps(document).encode()
    how = draw(st.sampled_from(["plain"] * 6 + ["gzip", "deflate", "corrupt", "truncated",
                                                 "junk", "empty"]))
    if how == "gzip":
        return gzip.compress(raw), {"Content-Encoding": "gzip"}, True
    if how == "deflate":
        return zlib.compress(raw), {"Content-Encoding": "deflate"}, True
    if how == "corrupt":
        return (b"\x1f\x8b\x08\x00" + draw(st.binary(max_size=40)),
                {"Content-Encoding": "gzip"}, False)
    if how == "truncated":
        return raw[:draw(st.integers(0, max(0, len(raw) - 1)))], {}, False
    if how == "junk":
        return draw(st.binary(max_size=60)), {}, False
    if how == "empty":
        return b"", {}, False
    return raw, {}, True


def settle(ledger: Ledger, answer: Any, status: int, faithful: bool, msgs: list[Any],
           tracked: list[str | None], carded: list[bool]) -> None:
    if faithful and answer is not None:
        follow_results(ledger, answer, status, msgs, tracked, carded)
    elif status not in (200, 422):  # refused whole: none of its messages may be stored
        ledger.rejected.update(t for t in tracked if t)


content_types = st.sampled_from(["application/json"] * 8 + [
    "text/plain", "application/x-ndjson", "application/xml", "", "application/json; charset=utf-8"])


def _ip(draw: st.DrawFn) -> str:
    n = next(_ids)
    return "198.18.0.1" if draw(st.integers(0, 9)) == 0 else f"198.19.{(n >> 8) & 255}.{n & 255}"


# --- the fuzz ---------------------------------------------------------------------------------

def test_fuzz_tracking_api(service: Service) -> None:
    ledger = Ledger()
    session = requests.Session()

    @SETTINGS
    @given(st.data())
    def one(data: st.DataObject) -> None:
        draw = data.draw
        kind = draw(st.sampled_from(["track", "identify", "page", "batch", "batch", "import",
                                     "group", "nope"]))
        count = st.integers(0, 6) if kind in ("batch", "import") else st.just(1)
        msgs, tracked, carded = draw(messages(segment_message, "messageId", count))
        auth = draw(st.sampled_from(["basic", "basic", "basic", "body", "bad", "none", "junk"]))
        if kind in ("batch", "import"):
            document: Any = {"batch": msgs}
            if draw(st.booleans()):
                document["context"] = draw(context)
            if draw(st.booleans()):
                document["sentAt"] = draw(times)
        else:
            document = msgs[0]
        headers = {"Content-Type": draw(content_types), "X-Forwarded-For": _ip(draw)}
        if auth == "basic":
            headers["Authorization"] = "Basic " + b64encode(b"demo-write-key:").decode()
        elif auth == "bad":
            headers["Authorization"] = "Basic " + b64encode(b"nope:").decode()
        elif auth == "junk":
            headers["Authorization"] = draw(st.sampled_from(["Basic !!!", "Bearer x", "Basic "]))
        if auth == "body" and isinstance(document, dict):
            document["writeKey"] = draw(st.sampled_from(["demo-write-key"] * 3 + ["x"]) | junk)
        body, extra, faithful = draw(encoded(document))
        response = session.post(f"{service.url}/v1/{kind}", data=body,
                                headers={**headers, **extra}, timeout=15)
        answer = check_answer(ledger, "/v1/{kind}", "post", response)
        if kind == "nope":
            assert response.status_code == 404
        settle(ledger, answer, response.status_code, faithful and kind != "nope", msgs,
               tracked, carded)

    one()
    assert ledger.requests == FUZZ_EXAMPLES
    assert ledger.statuses.get(200, 0) > FUZZ_EXAMPLES // 10  # the fuzz gets past auth
    ledger.check_store(service)
    ledger.report("tracking API")


def _sign(source: str, body: bytes, draw: st.DrawFn) -> dict[str, str]:
    good = draw(st.integers(0, 9)) < 8
    if source == "segment":
        sig = hmac.new(b"demo-webhook-secret", body, hashlib.sha1).hexdigest()
        return {"X-Signature": sig if good else draw(st.sampled_from(["00", "zz", sig[::-1]]))}
    if source == "shopify":
        sig = b64encode(hmac.new(b"demo-shopify-secret", body, hashlib.sha256).digest()).decode()
        return {"X-Shopify-Hmac-Sha256": sig if good else "AAAA",
                "X-Shopify-Shop-Domain": draw(st.sampled_from(["demo.myshopify.com"] * 4 +
                                                              ["other.myshopify.com", ""])),
                "X-Shopify-Topic": draw(st.sampled_from(["orders/create", "orders/paid",
                                                         "checkouts/update", "nope/x"])),
                "X-Shopify-Event-Id": str(uuid.uuid4())}
    if source == "rudderstack" and draw(st.booleans()):
        return {"X-Router-Secret": "demo-static-secret" if good else "guess"}
    ts = str(int(time.time())) if good else draw(st.sampled_from(
        ["nan", "1000", "1_763_647_387", "yesterday", str(int(time.time()))]))
    sig = hmac.new(b"demo-webhook-secret", ts.encode() + b"." + body, hashlib.sha256).hexdigest()
    headers = {"X-Router-Timestamp": ts, "X-Router-Signature": "sha256=" + sig}
    if draw(st.integers(0, 5)) == 0:
        headers["X-Router-Account"] = draw(st.sampled_from(["demo", "nobody", "acme"]))
    return headers


BATCH_PATHS = {name: (yaml.safe_load((REPO / "mappings" / f"{name}.yaml").read_text())
                      .get("ingest") or {}).get("batch_path")
               for name in ("segment", "rudderstack", "webhook", "shopify")}


def test_fuzz_webhooks(service: Service) -> None:
    ledger = Ledger()
    session = requests.Session()

    @SETTINGS
    @given(st.data())
    def one(data: st.DataObject) -> None:
        draw = data.draw
        source = draw(st.sampled_from(["segment", "rudderstack", "webhook", "shopify", "nope"]))
        id_field = "messageId" if source in ("segment", "rudderstack") else "event_id"
        base = segment_message if source != "shopify" else st.fixed_dictionaries(
            {"id": st.integers(1, 10**13) | junk}, optional={
                "email": st.emails() | junk, "currency": junk, "total_price": junk,
                "line_items": st.lists(junk, max_size=2), "customer": junk})
        msgs, tracked, carded = draw(messages(base, id_field, st.integers(1, 4)))
        if source == "shopify":
            tracked = [None] * len(msgs)  # shopify event ids come from topic and order id
        shape = draw(st.sampled_from(["one", "array", "envelope"]))
        path = BATCH_PATHS.get(source)
        if shape == "one" or len(msgs) == 1:
            document: Any = msgs[0]
            msgs, tracked, carded = msgs[:1], tracked[:1], carded[:1]
            if isinstance(document, list):  # a message that is itself an array: its items
                msgs, tracked, carded = document, [None] * len(document), [False] * len(document)
            elif isinstance(document, dict) and path and isinstance(document.get(path), list):
                msgs = document[path]  # the fuzz built an envelope by chance: not followed
                tracked, carded = [None] * len(msgs), [False] * len(msgs)
        elif shape == "array":
            document = msgs
        else:
            document = {path or "items": msgs}
            if not path:
                msgs, tracked, carded = [document], [None], [any(carded)]
        body, extra, faithful = draw(encoded(document))
        headers = {"Content-Type": draw(content_types), "X-Forwarded-For": _ip(draw),
                   **extra, **_sign(source, body, draw)}
        response = session.post(f"{service.url}/webhooks/{source}", data=body,
                                headers=headers, timeout=15)
        answer = check_answer(ledger, "/webhooks/{source}", "post", response)
        if source == "nope":
            assert response.status_code == 404
        settle(ledger, answer, response.status_code, faithful and source != "nope", msgs,
               tracked, carded)

    one()
    assert ledger.requests == FUZZ_EXAMPLES
    assert ledger.statuses.get(200, 0) > FUZZ_EXAMPLES // 10
    ledger.check_store(service)
    ledger.report("webhooks")


def test_fuzz_pixel(service: Service) -> None:
    ledger = Ledger()
    session = requests.Session()

    @SETTINGS
    @given(st.data())
    def one(data: st.DataObject) -> None:
        draw = data.draw
        msgs, tracked, carded = draw(messages(pixel_message, "event_id", st.integers(1, 4)))
        batched = draw(st.booleans())
        document: Any = {"batch": msgs} if batched else msgs[0]
        if not batched:
            msgs, tracked, carded = msgs[:1], tracked[:1], carded[:1]
            if isinstance(document, dict) and isinstance(document.get("batch"), list):
                tracked = [None]
        account = draw(st.sampled_from(["?account=demo"] * 5 + ["", "?account=nobody",
                                                                "?account=demo&environment=x"]))
        origin = draw(st.sampled_from(["http://localhost"] * 5 + ["https://evil.example", None]))
        body, extra, faithful = draw(encoded(document))
        headers = {"Content-Type": draw(content_types), "X-Forwarded-For": _ip(draw), **extra}
        if origin:
            headers["Origin"] = origin
        if draw(st.booleans()):
            headers["Sec-GPC"] = "1"
        if draw(st.integers(0, 4)) == 0:
            headers["Cookie"] = draw(st.sampled_from(
                ["rt_vid=v1; _fbp=fb.1.1.2", "_ga=GA1.1.1.2", "junk", "_fbc=;;;="]))
        if draw(st.sampled_from([False] * 9 + [True])):
            response = session.options(f"{service.url}/collect{account}", headers=headers,
                                       timeout=15)
            check_answer(ledger, "/collect", "options", response)
            return
        response = session.post(f"{service.url}/collect{account}", data=body, headers=headers,
                                timeout=15)
        answer = check_answer(ledger, "/collect", "post", response)
        # CORS headers exactly for an allowed origin, on errors too
        assert response.headers.get("Access-Control-Allow-Origin") == (
            origin if origin == "http://localhost" else None)
        settle(ledger, answer, response.status_code, faithful, msgs, tracked, carded)

    one()
    assert ledger.requests == FUZZ_EXAMPLES
    assert ledger.statuses.get(200, 0) > FUZZ_EXAMPLES // 10
    ledger.check_store(service)
    ledger.report("pixel")


ADMIN_GETS = ["/admin/events", "/admin/deliveries", "/admin/config", "/admin/pauses",
              "/admin/alerts", "/admin/events/{event_id}"]
query_values = st.text(max_size=12) | st.sampled_from(
    ["2026-11-20T00:00:00Z", "1763647387", "nan", "-1", "99999999999999999999999", "true"])


def _query_names(template: str) -> list[str]:
    """The query parameters docs/openapi.yaml documents for GET `template`."""
    names = []
    for param in OPENAPI["paths"][template]["get"].get("parameters", []):
        if "$ref" in param:
            param = OPENAPI["components"]["parameters"][param["$ref"].rsplit("/", 1)[-1]]
        if param.get("in") == "query":
            names.append(param["name"])
    return names


def test_fuzz_admin(service: Service) -> None:
    ledger = Ledger()
    session = requests.Session()

    @SETTINGS
    @given(st.data())
    def one(data: st.DataObject) -> None:
        draw = data.draw
        token = draw(st.sampled_from([ADMIN_TOKEN] * 8 + ["wrong", ""]))
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        if draw(st.booleans()):
            template = draw(st.sampled_from(ADMIN_GETS))
            path = template.replace("{event_id}", quote(draw(st.text(min_size=1, max_size=20) |
                                                             st.just(f"fz-{RUN}-1")), safe=""))
            # mostly the filters this endpoint documents; now and then one it does not
            # know (an unknown filter is a 400, never "everything")
            names = _query_names(template) or ["limit"]
            params = draw(st.dictionaries(st.sampled_from(names * 9 + ["bogus"]),
                                          query_values, max_size=4))
            response = session.get(service.url + path, params=params, headers=headers,
                                   timeout=15)
            check_answer(ledger, template, "get", response)
            return
        template = draw(st.sampled_from(["/admin/replay", "/admin/resume"]))
        document = draw(st.fixed_dictionaries({}, optional={
            "since": query_values | junk, "destination": st.sampled_from(["webhook", "nope"]) |
            junk, "account": st.sampled_from(["demo", "acme"]) | junk,
            "status": st.sampled_from(["failed", "dropped,failed"]) | junk,
            "event_id": st.text(max_size=8) | junk}) | junk)
        body, extra, _ = draw(encoded(document))
        response = session.post(service.url + template, data=body,
                                headers={**headers, "Content-Type": "application/json", **extra},
                                timeout=15)
        check_answer(ledger, template, "post", response)

    one()
    assert ledger.requests == FUZZ_EXAMPLES
    # filters are strict (a malformed value is a 400): enough answers must still succeed
    # for the success paths to have been exercised
    assert ledger.statuses.get(200, 0) > FUZZ_EXAMPLES // 10
    ledger.report("admin")


@pytest.mark.filterwarnings("ignore::aiohttp.web_exceptions.NotAppKeyWarning")
def test_the_openapi_document_lists_exactly_the_served_routes() -> None:
    """Every route the app serves is in docs/openapi.yaml, and nothing else is."""
    from router.config.compile import load_config
    from router.server.app import build_app
    from router.server.runtime import Runtime
    from router.store import open_store

    config = load_config(str(REPO))
    app = build_app(Runtime(config, open_store("sqlite:///:memory:"),
                            roles=frozenset({"gateway", "processor"})))
    served = {(r.resource.canonical, r.method.lower()) for r in app.router.routes()
              if r.method != "HEAD" and r.resource is not None}
    documented = {(path, method) for path, ops in OPENAPI["paths"].items() for method in ops}
    assert served == documented
    for schema in OPENAPI["components"]["schemas"].values():
        Draft202012Validator.check_schema(schema)


@pytest.fixture(autouse=True)
def _no_tracebacks(service: Service) -> Any:
    """No generated request makes the server log a stack trace."""
    before = service.log.read_text(errors="replace").count("Traceback")
    yield
    time.sleep(0.2)
    log = service.log.read_text(errors="replace")
    assert log.count("Traceback") == before, log[-3000:]

