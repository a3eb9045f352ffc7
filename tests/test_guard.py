"""The PII guard: card numbers are rejected wherever they hide, and only real ones."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from router.pipeline.guard import check_pan, find_card_number, luhn_valid


@pytest.mark.parametrize("number", ["4111111111111111", "5555555555554444", "378282246310005",
                                    "6011111111111117"])
def test_luhn_accepts_test_card_numbers(number: str) -> None:
    assert luhn_valid(number)


def test_luhn_rejects_near_misses() -> None:
    assert not luhn_valid("4111111111111112")


def test_random_luhn_valid_ids_are_mostly_not_cards() -> None:
    """Shopify-like 13-digit ids: about one in ten passes Luhn; the issuer rules keep
    them from being taken for cards (13-digit cards are only old Visa numbers)."""
    ids = [str(5873245716000 + i) for i in range(2000)]
    luhn_ok = [i for i in ids if luhn_valid(i)]
    assert len(luhn_ok) > 150
    assert not any(find_card_number({"id": i}) for i in luhn_ok)


@pytest.mark.parametrize("text", [
    "4111 1111 1111 1111", "4111-1111-1111-1111", "card:4111111111111111;exp 12/29",
])
def test_card_found_in_any_string_field(text: str) -> None:
    message = {"properties": {"products": [{"name": "x"}, {"note": text}]}}
    assert find_card_number(message) == "properties.products[1].note"
    rejection = check_pan(message)
    assert rejection is not None and rejection.code == "pii_card_number"
    assert "4111" not in rejection.message  # the number itself is never echoed


@pytest.mark.parametrize("payload", [
    {"order_id": 4111111111111111},            # a JSON number is an id, not a typed card
    {"phone": "+1 415 555 0123"},
    {"order_id": "548291000012"},              # 12 digits: too short for a card
    {"ts": "1763647387123"},                   # 13 digits that fail Luhn
    {"id": "4111111111111112"},
    {"admin_graphql_api_id": "gid://shopify/Order/4111111111111111"},  # an id in a path
    {"name": "#4111111111111111"},                                      # an order name
    {"token": "c1-4111111111111111"},                                   # part of a token
    {"id": "8111111111111104"},  # Luhn-valid, but no card network issues 81...
    {"order_id": "4400000000008"},  # 13 digits from 4, Luhn-valid: an order id, not a Visa
])
def test_no_false_positives(payload: dict[str, object]) -> None:
    assert find_card_number(payload) is None


@given(st.text(alphabet="0123456789 -x\"/#\u0663", max_size=80) | st.binary(max_size=80))
def test_the_fast_screen_lets_through_every_payload_the_full_pattern_would(
        text: str | bytes) -> None:
    """The screen (digit tokens after a byte translation) must never hide a candidate
    the card pattern finds in the same serialized payload."""
    from router.pipeline.guard import _ANY_RUN, _may_hold_card_number

    data = text.encode() if isinstance(text, str) else text
    if _ANY_RUN.search(data):
        assert _may_hold_card_number(data)
