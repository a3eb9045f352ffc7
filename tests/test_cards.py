"""The card-number screen: card numbers are found in every form a person or a form field
writes them, and the ids, times, hashes and phone numbers real payloads carry are not."""

from __future__ import annotations

import hashlib
import unicodedata
from pathlib import Path
from typing import Any

import orjson
import phonenumbers
import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from router.pipeline.cards import (
    find_card_number,
    is_card_number,
    luhn_valid,
    may_hold_card,
    network_lengths,
    normalize_serialized,
)
from router.pipeline.guard import check_pan

CORPUS = Path(__file__).parent / "fixtures" / "guard" / "false_positives.yaml"

# --- what a card is ---------------------------------------------------------------------

TEST_CARDS = ["4111111111111111", "5555555555554444", "378282246310005", "6011111111111117",
              "3566002020360505", "6200000000000005", "2223003122003222", "36227206271667",
              "2200000000000004", "4222222222222222220"]


@pytest.mark.parametrize("number", ["4111111111111111", "5555555555554444", "378282246310005",
                                    "6011111111111117"])
def test_luhn_accepts_test_card_numbers(number: str) -> None:
    assert luhn_valid(number)


def test_luhn_rejects_near_misses() -> None:
    assert not luhn_valid("4111111111111112")


def test_network_lengths_follow_the_published_ranges() -> None:
    assert network_lengths("4111") == {16, 19}
    assert network_lengths("3782") == {15}
    assert network_lengths("2221") == {16} and network_lengths("2200") == set(range(16, 20))
    assert network_lengths("6011") == set(range(16, 20))
    # prefixes where timestamps, snowflake ids and marketplace order ids live
    assert network_lengths("1763") == set() and network_lengths("8123") == set()
    assert network_lengths("9400") == set()


def test_thirteen_and_fourteen_digit_numbers_are_ids_not_cards() -> None:
    """Shopify order, product, customer (13 digits), line item and variant (14) ids:
    Visa's 13-digit and Diners' 14-digit numbers are retired, ids are not."""
    assert luhn_valid("4400000000008") and not is_card_number("4400000000008")
    assert luhn_valid("36123456789013") and not is_card_number("36123456789013")


# --- where cards hide -------------------------------------------------------------------

def _digits_in(script_zero: int, digits: str) -> str:
    return "".join(chr(script_zero + int(d)) for d in digits)


@pytest.mark.parametrize("value", [
    "4111111111111111", "4111 1111 1111 1111", "4111-1111-1111-1111", "4111.1111.1111.1111",
    "4111/1111/1111/1111", "4111_1111_1111_1111", "4111  1111  1111  1111",
    "4111\t1111\t1111\t1111", "4111\n1111\n1111\n1111", "4111\u00a01111\u00a01111\u00a01111",
    "4111\u202f1111\u202f1111\u202f1111", "4111\u20131111\u20131111\u20131111",
    "4111\u200b1111\u200b1111\u200b1111", "\u3000".join([_digits_in(0xFF10, "4111")] + [_digits_in(0xFF10, "1111")] * 3),
    _digits_in(0x660, "4111111111111111"), _digits_in(0x966, "4111111111111111"),
    "4111111111111111x", "x4111111111111111", "card4111111111111111exp1229",
    "https://shop.example.com/pay?cc=4111111111111111&exp=12%2F29",
    "https://shop.example.com/pay/4111111111111111/confirm",
    "https://shop.example.com/pay?cc=4111%201111%201111%201111",
    "https://shop.example.com/pay?cc=4111+1111+1111+1111",
    "card: 4111 1111 1111 1111 exp 12/29 cvv 123", "4111 1111 1111 1111 123",
    "ref 12 4111 1111 1111 1111", "3782 822463 10005", "-4111111111111111",
])
def test_card_found_in_any_string_field(value: str) -> None:
    message = {"properties": {"products": [{"name": "x"}, {"note": value}]}}
    assert find_card_number(message) == "properties.products[1].note"
    rejection = check_pan(message)
    assert rejection is not None and rejection.code == "pii_card_number"
    assert "4111" not in rejection.message  # the number itself is never echoed


@pytest.mark.parametrize("value", [4111111111111111, 4111111111111111.0, 5555555555554444])
def test_card_found_in_json_numbers(value: float) -> None:
    assert find_card_number({"payment": {"number": value}}) == "payment.number"


def test_card_found_in_object_keys_without_naming_the_key() -> None:
    message = {"properties": {"4111 1111 1111 1111": "visa"}}
    assert find_card_number(message) == "a key of properties"
    rejection = check_pan(message)
    assert rejection is not None and "4111" not in rejection.message
    assert find_card_number({"4111111111111111": 1}) == "a top-level key"


def test_card_found_below_the_depth_orjson_can_serialize() -> None:
    message: Any = {"note": "4111 1111 1111 1111"}
    for _ in range(300):
        message = {"a": message}
    assert find_card_number(message) == ".".join(["a"] * 300) + ".note"


# --- what is not a card -----------------------------------------------------------------

def _corpus() -> list[tuple[str, Any]]:
    data = yaml.safe_load(CORPUS.read_text())
    return [(kind, value) for kind, values in data.items() for value in values]


def test_the_false_positive_corpus_is_large_and_clean() -> None:
    """Every value real payloads carry (fixtures/guard/false_positives.yaml), as a field,
    a key, inside a sentence and in a list: none is taken for a card."""
    corpus = _corpus()
    assert len(corpus) > 3000
    flagged = []
    for kind, value in corpus:
        for message in ({"v": value}, {str(value): 1}, {"v": f"note: {value} ok"},
                        {"v": [value]}):
            if find_card_number(message) is not None:
                flagged.append((kind, value))
    assert flagged == []


def test_the_corpus_holds_what_naive_screens_flag() -> None:
    """The corpus is worth its name: a Luhn-only screen of 13-19 digit runs (separators
    removed) flags dozens of its values."""
    import re
    naive = 0
    for _, value in _corpus():
        digits = re.sub(r"[ .-]", "", str(value))
        naive += any(luhn_valid(run) for run in re.findall(r"\d{13,19}", digits))
    assert naive > 50


@given(st.uuids())
def test_uuids_are_never_cards(value: Any) -> None:
    assert find_card_number({"id": str(value), "hex": value.hex}) is None


@given(st.text("0123456789b", min_size=32, max_size=32))
def test_uuids_made_mostly_of_digits_are_never_cards(hex32: str) -> None:
    """Their all-digit groups, read with the digits of a neighbouring group, look like a
    dash-separated card (226b5699-4493-4308-8880-689f0a415d3d: 5699-4493-4308-8880)."""
    value = f"{hex32[:8]}-{hex32[8:12]}-{hex32[12:16]}-{hex32[16:20]}-{hex32[20:]}"
    for text in (value, value.upper(), "{" + value + "}", f"evt_{value}"):
        assert find_card_number({"id": text}) is None, text


@given(st.binary(min_size=1, max_size=64))
def test_hashes_are_never_cards(data: bytes) -> None:
    for name in ("sha256", "sha1", "md5"):
        digest = hashlib.new(name, data).hexdigest()
        assert find_card_number({"h": digest, "upper": digest.upper()}) is None


@given(st.integers(min_value=10**12, max_value=2 * 10**12 - 1))  # 2001-09-09 to 2033-05-18
def test_unix_times_at_every_precision_are_never_cards(ms: int) -> None:
    """Seconds, milliseconds, micro- and nanoseconds until 2033 (microseconds and
    nanoseconds start with 1 until then; milliseconds have 13 digits until 2286)."""
    for value in (ms, ms * 1000, ms * 1_000_000, ms / 1000, ms // 1000):
        assert find_card_number({"t": value, "s": str(value)}) is None


@given(st.integers(min_value=10**12, max_value=10**14 - 1))
def test_shopify_ids_and_gids_are_never_cards(id_: int) -> None:
    """Every 13- and 14-digit id (orders, products, customers, line items, variants)."""
    assert find_card_number({"id": id_, "gid": f"gid://shopify/ProductVariant/{id_}",
                             "url": f"https://s.example.com/p/mug?variant={id_}"}) is None


@given(st.floats(min_value=0, max_value=1, exclude_max=True))
def test_random_fractions_are_never_cards(value: float) -> None:
    assert find_card_number({"r": value, "url": f"https://px.example.com/p.gif?r={value}"}) \
        is None


_EXAMPLES = [n for region in sorted(phonenumbers.SUPPORTED_REGIONS)
             for kind in (phonenumbers.PhoneNumberType.MOBILE,
                          phonenumbers.PhoneNumberType.FIXED_LINE)
             if (n := phonenumbers.example_number_for_type(region, kind)) is not None]


@settings(suppress_health_check=[HealthCheck.filter_too_much])
@given(st.sampled_from(_EXAMPLES), st.integers(min_value=0, max_value=999_999))
def test_valid_phone_numbers_are_never_cards(example: Any, tail: int) -> None:
    """Real numbers of every region (each region's example with its last six digits
    varied), in E.164, international and national formats."""
    national = example.national_number - example.national_number % 10**6 + tail
    number = phonenumbers.PhoneNumber(country_code=example.country_code,
                                      national_number=national)
    assume(phonenumbers.is_valid_number(number))
    for fmt in (phonenumbers.PhoneNumberFormat.E164,
                phonenumbers.PhoneNumberFormat.INTERNATIONAL,
                phonenumbers.PhoneNumberFormat.NATIONAL):
        text = phonenumbers.format_number(number, fmt)
        assert find_card_number({"phone": text}) is None, text


# --- property: formatted card numbers are always caught ------------------------------------

_NETWORKS = [("4", 16), ("4", 19), ("51", 16), ("55", 16), ("2221", 16), ("2720", 16),
             ("2200", 16), ("34", 15), ("37", 15), ("36", 16), ("3528", 16), ("6011", 16),
             ("65", 19), ("62", 17), ("62", 18), ("5018", 19), ("6759", 16)]
_GROUPINGS = {15: [(4, 6, 5), (5, 5, 5), (4, 4, 4, 3)], 16: [(4, 4, 4, 4), (4, 6, 6)],
              17: [(4, 4, 4, 4, 1), (4, 4, 4, 5)], 18: [(4, 4, 4, 4, 2), (6, 6, 6)],
              19: [(4, 4, 4, 4, 3), (5, 5, 5, 4)]}
_SEPARATORS = [" ", "  ", "\t", "\n", "\u00a0", "\u2009", "-", "\u2010", "\uff0d", ".",
               "\uff0e", "/", "\uff0f", "_", "+", "%20", "\u200b"]
# the zero of every decimal digit script Unicode has (Arabic-Indic, Devanagari, full-width...)
_SCRIPT_ZEROS = sorted({ord(c) for c in map(chr, range(0x110000))
                        if unicodedata.category(c) == "Nd" and unicodedata.decimal(c) == 0})


def _with_check_digit(body: str) -> str:
    for check in "0123456789":
        if luhn_valid(body + check):
            return body + check
    raise AssertionError("unreachable")


@st.composite
def card_numbers(draw: st.DrawFn) -> str:
    prefix, length = draw(st.sampled_from(_NETWORKS))
    middle = draw(st.text("0123456789", min_size=length - len(prefix) - 1,
                          max_size=length - len(prefix) - 1))
    number = _with_check_digit(prefix + middle)
    assert is_card_number(number), number
    return number


@st.composite
def formatted(draw: st.DrawFn, number: str) -> str:
    zeros = draw(st.lists(st.sampled_from(_SCRIPT_ZEROS), min_size=1, max_size=3))
    digits = "".join(chr(draw(st.sampled_from(zeros)) + int(d)) for d in number)
    if draw(st.booleans()):
        return digits
    grouping = draw(st.sampled_from(_GROUPINGS[len(number)]))
    separator = draw(st.sampled_from(_SEPARATORS))
    parts, at = [], 0
    for size in grouping:
        parts.append(digits[at:at + size])
        at += size
    whitespace = separator.strip() == "" and separator not in ("\u200b",)
    if whitespace and draw(st.booleans()):  # mixed whitespace is still one separator
        return "".join(p + draw(st.sampled_from([" ", "\t", "\n", "  "])) for p in parts).rstrip()
    return separator.join(parts)


_CONTEXTS = ["{}", "my card is {} thanks", "{}x", "cc{}", "card:{};exp 12/29",
             "https://shop.example.com/checkout?cc={}&next=%2Fdone",
             "https://shop.example.com/pay/{}/confirm", "<td>{}</td>", '"{}"', "({})",
             "Nº{}", "{}\u3002", "カード{}です"]


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_formatted_card_numbers_are_always_caught(data: st.DataObject) -> None:
    number = data.draw(card_numbers())
    text = data.draw(formatted(number))
    value = data.draw(st.sampled_from(_CONTEXTS)).format(text)
    where = data.draw(st.sampled_from(["value", "key", "list", "deep"]))
    message: Any = {"value": {"note": value}, "key": {"props": {value: True}},
                    "list": {"items": ["a", 1, value]},
                    "deep": {"a": [{"b": {"c": [[value]]}}]}}[where]
    assert find_card_number(message) is not None, (number, value)


@given(card_numbers())
def test_card_numbers_as_json_numbers_are_caught(number: str) -> None:
    assert find_card_number({"n": int(number)}) is not None


# --- the cheap screen never hides a card ----------------------------------------------------

@settings(max_examples=300, deadline=None)
@given(st.data())
def test_the_screen_passes_everything_the_search_finds(data: st.DataObject) -> None:
    """Whatever a card-carrying value is embedded in, the C-level screen lets it through
    and the serialized search agrees with the field-by-field walk."""
    number = data.draw(card_numbers())
    noise = data.draw(st.text(alphabet="0123456789 -./_+x\u00a0\t\"\\%a", max_size=30))
    value = noise + "x" + data.draw(formatted(number)) + "x" + noise[::-1]
    serialized = orjson.dumps({"v": value})
    assert may_hold_card(normalize_serialized(serialized))
    assert find_card_number({"v": value}) == "v"


@given(st.text(alphabet="0123456789 -./_+x\u00a0\t\"\\%a\u0663\uff11", max_size=60))
def test_serialized_and_field_search_agree_on_noise(text: str) -> None:
    found = find_card_number({"v": text})
    assert found in (None, "v")
