"""Reading a search: unknown filters and bad values refused; email and phone hashed the
way ingest hashes them; the live tail's lines."""

from __future__ import annotations

import hashlib

import pytest

from router.config.model import CompiledConfig
from router.ops.feed import Feed, FeedFilter
from router.ops.search import QueryError, parse_event_search
from router.ops.tail import format_item
from router.pipeline.identity import normalize_identity
from router.pipeline.mapping import map_message

NOW = 1_800_000_000.0


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def refused(config: CompiledConfig, **params: str) -> QueryError:
    with pytest.raises(QueryError) as info:
        parse_event_search(config, params, NOW)
    return info.value


def test_unknown_filters_are_refused_not_ignored(shipped_config: CompiledConfig) -> None:
    error = refused(shipped_config, order="548291")
    assert error.code == "unknown_filter"
    assert "did you mean 'order_id'?" in error.message


@pytest.mark.parametrize(("params", "fragment"), [
    ({"email": "not-an-email"}, "email is not an email address"),
    ({"phone": "call me"}, "phone is not a phone number"),
    ({"status": "failed"}, "choose from mapped, rejected, unmapped"),
    ({"destination": "mta"}, "did you mean 'meta'?"),
    ({"account": "nobody"}, "account='nobody'"),
    ({"since": "yesterday"}, "neither a time"),
    ({"since": "1h", "until": "2h"}, "since must be before until"),
    ({"limit": "5000"}, "limit must be an integer from 1 to 1000"),
    ({"cursor": "abc"}, "cursor must be the next_cursor"),
    ({"delivery_status": "failed"}, "need destination"),
    ({"lacking": "fbcc"}, "did you mean 'fbc'?"),
    ({"order_id": " "}, "order_id is empty"),
])
def test_bad_values_are_refused_with_a_message(shipped_config: CompiledConfig,
                                               params: dict[str, str], fragment: str) -> None:
    error = refused(shipped_config, **params)
    assert error.code == "invalid_parameter" and fragment in error.message


def test_a_refused_email_is_not_echoed(shipped_config: CompiledConfig) -> None:
    assert "jane.doe" not in refused(shipped_config, email="jane.doe@").message


def test_email_and_phone_are_hashed_as_ingest_hashes_them(
        shipped_config: CompiledConfig) -> None:
    config = shipped_config
    account = config.accounts["demo"]
    event = map_message(config.mappings["segment"], {
        "type": "track", "event": "Signed Up", "messageId": "h1", "userId": "u1",
        "context": {"traits": {"email": " Jane.Doe@Example.COM ", "phone": "(650) 555-1212"}}},
        account="demo", environment="production", received_at="2026-11-20T12:00:00.000Z")
    stored = normalize_identity(event, account.default_country).user_data
    search = parse_event_search(config, {"email": "jane.doe@example.com",
                                         "phone": "650-555-1212", "account": "demo"}, NOW)
    assert search.query.any_terms == ((f"email_sha256:{stored['email_sha256']}",),
                                      (f"phone_sha256:{stored['phone_sha256']}",))
    assert stored["email_sha256"] == sha("jane.doe@example.com")


def test_filters_become_one_query(shipped_config: CompiledConfig) -> None:
    search = parse_event_search(shipped_config, {
        "order_id": "548291", "source": "shopify", "status": "mapped", "since": "24h",
        "destination": "meta", "delivery_status": "failed,dropped", "limit": "20",
        "cursor": "990", "person": "anonymous_id:a-1"}, NOW)
    q = search.query
    assert q.any_terms == (("order_id:548291",),)
    assert (q.source, q.status, q.destination, q.delivery_status, q.limit, q.before_seq) == (
        "shopify", "mapped", "meta", ("failed", "dropped"), 20, 990)
    assert q.since == "2027-01-14T08:00:00.000Z"  # 24 h before NOW
    assert search.person == "anonymous_id:a-1"


def test_the_feed_keeps_items_for_a_listener_that_reconnects() -> None:
    feed = Feed()
    first = feed.subscribe(FeedFilter(destination="meta"))
    for n, destination in enumerate(("meta", "ga4", "meta")):
        feed.publish({"type": "delivery", "destination": destination, "n": n})
    seen = [first.queue.get_nowait()["n"] for _ in range(first.queue.qsize())]
    assert seen == [0, 2]
    last = feed._kept[0]["id"]
    first.close()
    again = feed.subscribe(FeedFilter(), last_id=last)
    assert [again.queue.get_nowait()["n"] for _ in range(again.queue.qsize())] == [1, 2]
    stranger = feed.subscribe(FeedFilter(), last_id="otherboot-1")
    assert stranger.queue.qsize() == 0  # ids of another server run mean nothing here


def test_tail_lines_read_as_sentences() -> None:
    delivery = {"type": "delivery", "at": "2026-11-20T12:00:01.234Z", "account": "acme",
                "environment": "production", "event_id": "ord-7", "event_name": "purchase",
                "destination": "meta", "status": "failed", "attempt": 2,
                "error": "HTTP 503: try later", "next_retry_at": "2026-11-20T12:05:00.000Z"}
    line = format_item(delivery)
    assert line.startswith("12:00:01.234  → meta")
    assert line.endswith("acme/production  failed #2: HTTP 503: try later — retry at 12:05:00")
    event = {"type": "event", "at": "2026-11-20T12:00:00.100Z", "account": "acme",
             "environment": "production", "source": "shopify", "event_id": "ord-7",
             "event_name": "purchase", "status": "accepted", "to": ["ga4", "meta"]}
    assert format_item(event).endswith("acme/production  accepted → ga4, meta")
    coloured = format_item(event, colour=True)
    assert "\x1b[32maccepted\x1b[0m" in coloured
