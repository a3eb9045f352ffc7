"""Payment card numbers (PANs) in a decoded message, wherever and however they are written.

A card number must never be stored or forwarded, so every message is screened before
it is acknowledged: every string, every number and every object key, after Unicode
normalization (full-width and other scripts' digits, NBSP and other spaces, Unicode
dashes, zero-width characters, percent-encoded separators in URLs). A card is found

- as a run of 13-19 digits, alone or glued to letters, in a URL path or query string, as
  a JSON number or as a key (`4111111111111111`, `4111111111111111x`, `?cc=4111...`), or
- as groups of 3-6 digits (the last group 1-6) joined by one kind of separator: any
  whitespace (spaces, double spaces, tabs, newlines, NBSP), `-`, `.`, `/`, `_` or `+`
  (`4111 1111 1111 1111`, `3782-822463-10005`, `4111.1111.1111.1111`),

and it is a card only when it passes the Luhn check *and* a card network issues numbers
of that length with that prefix (ISO/IEC 7812 ranges as the networks publish them).

False positives matter as much: a real purchase must never be rejected because of an
order id. What keeps ids out, and the price paid for it:

- Networks whose prefixes start with 1, 8 or 9 (UATP, RuPay 81/82, UzCard, Humo, Napas,
  Troy 9792) are not screened: those ranges are where unix timestamps (ms, us, ns),
  snowflake ids and marketplace order ids live. Visa's retired 13-digit numbers and
  Diners' legacy 14-digit ones are not screened either: 13- and 14-digit numbers are
  Shopify order, product, customer, line item and variant ids.
- Digits after a decimal point (`0.4111111111111111`, a `Math.random()` cache buster)
  are a fraction, not a card.
- A run inside a hex token of 24 or more characters with a letter in it (SHA-256, MD5,
  UUIDs without dashes, trace ids, Mongo ids) is part of a hash or an id.
- A dash-separated sequence inside a UUID is part of the UUID (`226b5699-4493-4308-8880-...`
  reads as 5699-4493-4308-8880 otherwise).
- A separated sequence that is an IBAN (`FR76 3000 6000 ...`, mod-97 valid) is an IBAN.
- A separated sequence longer than a card is looked at only as its leading and trailing
  card-length windows (a card with its CVV after it, a label number before it), not at
  every window in the middle (formatted tracking numbers).

The common case costs one serialization and two byte operations in C: a message without
13 digits in a row (ignoring separators) cannot hold a card. Only when that screen
passes do the regular expressions run, and only when they find a card is the message
walked to name the field (`find_card_number`).
"""

from __future__ import annotations

import codecs
import re
import unicodedata
from collections.abc import Iterator
from typing import Any

import orjson

# --- card networks -------------------------------------------------------------------

_R16_19 = frozenset(range(16, 20))
_GPN = frozenset({16, 18, 19})
# (prefix, lengths): the longest matching prefix decides. Ranges are expanded to their
# prefixes once at import.
_NETWORK_RANGES: tuple[tuple[int, int, frozenset[int]], ...] = (
    (4, 4, frozenset({16, 19})),            # Visa (13-digit numbers retired)
    (51, 55, frozenset({16})),              # Mastercard
    (2221, 2720, frozenset({16})),          # Mastercard 2-series
    (2200, 2204, _R16_19),                  # Mir
    (2205, 2205, frozenset({16})),          # BORICA
    (34, 34, frozenset({15})),              # American Express
    (37, 37, frozenset({15})),
    (36, 36, _R16_19),                      # Diners Club International (14: legacy, ids)
    (300, 305, _R16_19),                    # Diners Club
    (3095, 3095, _R16_19),
    (38, 39, _R16_19),
    (3528, 3589, _R16_19),                  # JCB
    (6011, 6011, _R16_19),                  # Discover
    (644, 649, _R16_19),
    (65, 65, _R16_19),
    (62, 62, _R16_19),                      # UnionPay (and Discover's 622126-622925)
    (50, 50, _GPN),                         # Maestro 5018/5020/5038, Verve, GPN
    (56, 56, _GPN),                         # GPN
    (58, 58, _GPN),
    (5893, 5893, _R16_19),                  # Maestro
    (60, 61, _GPN),                         # RuPay 60, GPN 60-63
    (63, 63, _GPN),
    (6304, 6304, _R16_19),                  # Maestro, Laser
    (636, 636, _R16_19),                    # InterPayment
    (637, 639, frozenset({16})),            # InstaPayment
    (6706, 6706, _R16_19),                  # Laser
    (6709, 6709, _R16_19),
    (6759, 6759, _R16_19),                  # Maestro UK
    (6761, 6763, _R16_19),                  # Maestro
    (6771, 6771, _R16_19),                  # Laser
)


def _prefix_table() -> dict[str, frozenset[int]]:
    table: dict[str, frozenset[int]] = {}
    for low, high, lengths in _NETWORK_RANGES:
        for prefix in range(low, high + 1):
            table[str(prefix)] = lengths
    return table


_PREFIXES = _prefix_table()
_PREFIX_SIZES = sorted({len(p) for p in _PREFIXES}, reverse=True)


def network_lengths(digits: str) -> frozenset[int]:
    """The lengths a card network issues for numbers starting like `digits` (longest
    published prefix wins); empty when no screened network uses the prefix."""
    for size in _PREFIX_SIZES:
        lengths = _PREFIXES.get(digits[:size])
        if lengths is not None:
            return lengths
    return frozenset()


def luhn_valid(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def is_card_number(digits: str) -> bool:
    """A Luhn-valid number of a length its network issues with its prefix."""
    return len(digits) in network_lengths(digits) and luhn_valid(digits)


# --- normalization: any text -> ASCII bytes the patterns read ---------------------------

_DOTS = "\u00b7\u2024\u2027\u2219\u22c5\u3002\uff61\u30fb"
_SLASHES = "\u2044\u2215\u29f8"


def _ascii_replacement(char: str) -> str:
    """What a non-ASCII character means to the screen: a digit, a separator, nothing
    (zero-width and other format characters), or a letter-like break."""
    if char.isdecimal():
        return str(unicodedata.decimal(char))
    if char.isspace():
        return " "
    if char in _DOTS:
        return "."
    if char in _SLASHES:
        return "/"
    category = unicodedata.category(char)
    if category == "Pd" or char == "\u2212":
        return "-"
    if category == "Cf":
        return ""
    return "x"


def _card_screen_errors(exc: UnicodeError) -> tuple[str, int]:
    if not isinstance(exc, UnicodeEncodeError):
        raise exc
    part = exc.object[exc.start:exc.end]
    return "".join(_ascii_replacement(c) for c in part), exc.end


_ERRORS = "router-card-screen"
codecs.register_error(_ERRORS, _card_screen_errors)

# control characters as orjson escapes them (\t, \n, \u000b, ...; an escaped backslash
# is kept as it is), and in decoded text
_JSON_ESCAPES = re.compile(rb"\\\\|\\(?:[tnrfb]|u00[01][0-9a-fA-F])")
_CONTROLS = bytes(range(32))
_CONTROL_TO_SPACE = bytes.maketrans(_CONTROLS, b" " * 32)
# percent-encoded separators in URLs (%20, + is kept as itself and is a separator)
_PERCENT = re.compile(rb"%(?:20|09|0[aAdD]|[cC]2%[aA]0|2[dDeEfF]|5[fF])")
_PERCENT_TO = {b"2d": b"-", b"2e": b".", b"2f": b"/", b"5f": b"_"}


def _percent(match: re.Match[bytes]) -> bytes:
    return _PERCENT_TO.get(match.group()[1:].lower(), b" ")


def _to_ascii(data: bytes) -> bytes:
    if not data.isascii():
        text = unicodedata.normalize("NFKC", data.decode("utf-8", "replace"))
        data = text.encode("ascii", _ERRORS)
    if b"%" in data:
        data = _PERCENT.sub(_percent, data)
    return data


def _escape(match: re.Match[bytes]) -> bytes:
    return b"\\\\" if match.group() == b"\\\\" else b" "


def normalize_serialized(data: bytes) -> bytes:
    """A serialized JSON document as the patterns read it."""
    data = _to_ascii(data)
    if b"\\" in data:
        data = _JSON_ESCAPES.sub(_escape, data)
    return data


def normalize_text(text: str) -> bytes:
    """One decoded string (or key) as the patterns read it."""
    return _to_ascii(text.encode("utf-8")).translate(_CONTROL_TO_SPACE)


# --- the screen ----------------------------------------------------------------------

# digits and separators -> "0", everything else a break: a card needs a stretch of
# digits and separators holding 13 digits or more. Finding such stretches is a byte
# translation and a substring search in C; the patterns below run on those alone.
_SEPARATORS = b" -./_+"
_STRETCH = bytes(48 if 48 <= b <= 57 or b in _SEPARATORS else 32 for b in range(256))
# the same with separators deleted: 13 "0"s in a row <=> some stretch holds 13 digits
_DIGIT_RUNS = bytes(48 if 48 <= b <= 57 else 32 for b in range(256))
_THIRTEEN = b"0" * 13


def may_hold_card(normalized: bytes) -> bool:
    """The screen: False means no card can be in this text (the common case)."""
    return _THIRTEEN in normalized.translate(_DIGIT_RUNS, _SEPARATORS)


def stretches(normalized: bytes) -> Iterator[tuple[int, int]]:
    """(start, end) of each maximal stretch of digits and separators holding at least
    13 digits: the only places a card can be."""
    marked = normalized.translate(_STRETCH)
    start = marked.find(_THIRTEEN)
    while start != -1:
        end = marked.find(b" ", start)
        if end == -1:
            end = len(marked)
        if len(normalized[start:end].translate(None, _SEPARATORS)) >= 13:
            yield start, end
        start = marked.find(_THIRTEEN, end)


# --- the search ------------------------------------------------------------------------

_RUN = re.compile(rb"(?<![0-9])[0-9]{13,19}(?![0-9])")
_G = rb"[0-9]{3,6}(?![0-9])"
_LAST = rb"[0-9]{1,6}(?![0-9])"
_GROUPS = re.compile(b"(?<![0-9])(?:" + b"|".join(
    _G + b"(?:" + sep + _G + b")*" + sep + _LAST
    for sep in (rb" +", rb"-", rb"\.", rb"/", rb"_", rb"\+")) + b")")
_DIGITS = re.compile(rb"[0-9]+")
_HEX = frozenset(b"0123456789abcdefABCDEF")
_ALNUM = frozenset(b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_UUID = re.compile(rb"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_IBAN_HEAD = re.compile(rb"[A-Z]{2}[0-9]{2} ?$")
_IBAN_TAIL = re.compile(rb"(?: ?[0-9A-Z]{1,4})*")


def _is_fraction(data: bytes, start: int) -> bool:
    return start >= 2 and data[start - 1] == 0x2E and 48 <= data[start - 2] <= 57


def _in_hex_token(data: bytes, start: int, end: int) -> bool:
    left, right = start, end
    while left > 0 and data[left - 1] in _ALNUM:
        left -= 1
    while right < len(data) and data[right] in _ALNUM:
        right += 1
    token = data[left:right]
    return len(token) >= 24 and all(b in _HEX for b in token) and not token.isdigit()


def _in_uuid(data: bytes, start: int, end: int) -> bool:
    """Is data[start:end] inside a UUID (whose all-digit groups, glued to the digits of
    a neighbouring group, can look like a dash-separated card)?"""
    return any(m.start() < end and start < m.end()
               for m in _UUID.finditer(data, max(0, start - 36), min(len(data), end + 36)))


def _is_iban(data: bytes, start: int, end: int) -> bool:
    """Is the digit sequence at data[start:end] the body of an IBAN (country code and
    check digits just before it, mod-97 valid)?"""
    head = _IBAN_HEAD.search(data, max(0, start - 5), start)
    if head is None:
        return False
    tail = _IBAN_TAIL.match(data, end)
    text = data[head.start():tail.end() if tail else end].replace(b" ", b"").decode()
    if not 15 <= len(text) <= 34:
        return False
    rearranged = text[4:] + text[:4]
    number = "".join(str(int(c, 36)) for c in rearranged)
    return int(number) % 97 == 1


def _windows(groups: list[bytes]) -> Iterator[str]:
    """The whole sequence, then its leading and trailing windows of card length."""
    count = len(groups)
    for first, last in {(0, count), *((0, k) for k in range(1, count)),
                        *((k, count) for k in range(1, count))}:
        digits = b"".join(groups[first:last])
        if 13 <= len(digits) <= 19:
            yield digits.decode()


def holds_card(normalized: bytes) -> bool:
    """Does this normalized text hold a card number (see the module docstring)?"""
    if not may_hold_card(normalized):
        return False
    return any(_stretch_holds_card(normalized, start, end)
               for start, end in stretches(normalized))


def _stretch_holds_card(data: bytes, first: int, last: int) -> bool:
    for match in _RUN.finditer(data, first, last):
        start, end = match.span()
        if _is_fraction(data, start) or _in_hex_token(data, start, end) or \
                _is_iban(data, start, end):
            continue
        if is_card_number(match.group().decode()):
            return True
    for match in _GROUPS.finditer(data, first, last):
        start, end = match.span()
        if _is_fraction(data, start) or _is_iban(data, start, end) or \
                _in_uuid(data, start, end):
            continue
        groups = _DIGITS.findall(match.group())
        if any(is_card_number(digits) for digits in _windows(groups)):
            return True
    return False


def _leaf_holds_card(value: Any) -> bool:
    if isinstance(value, str):
        return holds_card(normalize_text(value))
    if isinstance(value, bool) or value is None:
        return False
    if isinstance(value, int | float):
        return holds_card(orjson.dumps(value))
    return False


def _locate(message: Any) -> str | None:
    """The path of the first field (or key) holding a card, walking iteratively (depth
    is bounded only by the parser). Keys are named by their parent: the key itself may be
    the card number, and a path is shown to the sender."""
    stack: list[tuple[Any, str]] = [(message, "")]
    while stack:
        value, path = stack.pop()
        if isinstance(value, dict):
            children = []
            for key, child in value.items():
                key_text = str(key)
                if holds_card(normalize_text(key_text)):
                    return f"a key of {path}" if path else "a top-level key"
                children.append((child, f"{path}.{key_text}" if path else key_text))
            stack.extend(reversed(children))
        elif isinstance(value, list):
            stack.extend(reversed([(child, f"{path}[{i}]") for i, child in enumerate(value)]))
        elif _leaf_holds_card(value):
            return path or "(body)"
    return None


def find_card_number(message: Any, serialized: bytes | None = None) -> str | None:
    """Where the first card number in a decoded message is, or None.

    Pure: reads the message only. `serialized` may pass the message's orjson
    serialization when the caller already has it (the size check does), to save one."""
    if serialized is None:
        try:
            serialized = orjson.dumps(message)
        except (orjson.JSONEncodeError, TypeError):
            return _locate(message)  # too deep for orjson: walk it
    normalized = normalize_serialized(serialized)
    if not holds_card(normalized):
        return None
    # found in the serialized form: name the field (the walk applies the same rules to
    # each value; should it disagree, the message is still refused)
    return _locate(message) or "(message)"
