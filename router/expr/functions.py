"""The named, tested value transforms shared by mappings (JMESPath) and templates (Jinja).

Keeping normalizers, hashers, time and money helpers here — not inside YAML strings —
is what keeps mapping tables and destination templates short and reviewable. Every
function is null-safe (None in, None out) because source payloads are sparse.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re
import unicodedata
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import parse_qs, urlsplit

import phonenumbers

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_NON_DIGIT = re.compile(r"\D+")
# what iso_time produces (and most senders send): UTC, milliseconds, Z; years from 1000
# because strftime does not zero-pad smaller ones
_CANONICAL_TIME = re.compile(r"[1-9]\d{3}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def is_sha256(value: Any) -> bool:
    """True for values that already are SHA-256 hex digests (never hash them twice)."""
    # every identifier passes through here, most far shorter than a digest: the length
    # test answers them without the strip/lower copies and the regex
    if not isinstance(value, str) or len(value) < 64:
        return False
    return bool(_HEX64.match(value.strip().lower()))


def sha256(value: Any) -> str | None:
    if value is None or value == "":
        return None
    text = str(value)
    if is_sha256(text):
        return text.strip().lower()
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def md5(value: Any) -> str | None:
    if value is None or value == "":
        return None
    return hashlib.md5(str(value).encode("utf-8")).hexdigest()


def sha1(value: Any) -> str | None:
    if value is None or value == "":
        return None
    return hashlib.sha1(str(value).encode("utf-8")).hexdigest()


# --- text -------------------------------------------------------------------------

def lower(value: Any) -> str | None:
    return None if value is None else str(value).lower()


def upper(value: Any) -> str | None:
    return None if value is None else str(value).upper()


def trim(value: Any) -> str | None:
    return None if value is None else str(value).strip()


def to_str(value: Any) -> str | None:
    """Text form of ids: 1001 -> "1001", 12.0 -> "12", None -> None."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


# --- numbers and money -------------------------------------------------------------

def to_number(value: Any) -> int | float | None:
    """Numbers from numbers or money strings ("1,299.50", " 12 "); None if not numeric."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return value
    text = str(value).strip().replace(",", "")
    if not text:
        return None
    try:
        dec = Decimal(text)
    except InvalidOperation:
        return None
    if not dec.is_finite():
        return None
    return int(dec) if dec == dec.to_integral_value() and "." not in text else float(dec)


def to_int(value: Any) -> int | None:
    num = to_number(value)
    return None if num is None else int(num)


def multiply(a: Any, b: Any) -> int | float | None:
    """Product of two numbers (price x quantity); None when either is missing."""
    x, y = to_number(a), to_number(b)
    return None if x is None or y is None else x * y


def money(value: Any, places: int = 2) -> float | None:
    """Round a monetary amount half-up to `places` decimals (float for JSON)."""
    num = to_number(value)
    if num is None:
        return None
    quant = Decimal(1).scaleb(-places)
    return float(Decimal(str(num)).quantize(quant, rounding="ROUND_HALF_UP"))


def money_string(value: Any, places: int = 2) -> str | None:
    """Amount as a fixed-point string, for APIs that take money as text."""
    num = to_number(value)
    if num is None:
        return None
    quant = Decimal(1).scaleb(-places)
    return str(Decimal(str(num)).quantize(quant, rounding="ROUND_HALF_UP"))


def to_micros(value: Any) -> int | None:
    num = to_number(value)
    return None if num is None else int((Decimal(str(num)) * 1_000_000).to_integral_value())


# --- time --------------------------------------------------------------------------

def parse_time(value: Any) -> datetime | None:
    """ISO 8601 text (with Z or offset) or a unix timestamp in s / ms / µs -> aware UTC."""
    if value is None or value == "" or isinstance(value, bool):
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, str) and _CANONICAL_TIME.fullmatch(value):
        try:  # the common case, already canonical: no float() attempt, no copies
            return datetime.fromisoformat(value[:-1]).replace(tzinfo=UTC)
        except ValueError:
            return None
    if isinstance(value, int | float) or (isinstance(value, str) and _is_numeric(value)):
        num = float(value)
        if num > 1e14:
            num /= 1_000_000
        elif num > 1e11:
            num /= 1000
        try:
            return datetime.fromtimestamp(num, tz=UTC)
        except (OverflowError, OSError, ValueError):  # inf, nan, beyond year 9999
            return None
    text = str(value).strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _is_numeric(text: str) -> bool:
    if ":" in text:  # every ISO time has one and no number does: skip the exception
        return False
    try:
        float(text)
    except ValueError:
        return False
    return True


def iso_time(value: Any) -> str | None:
    """Canonical event time: UTC, ISO 8601 with milliseconds and a Z."""
    if isinstance(value, str) and _CANONICAL_TIME.fullmatch(value):
        return value if parse_time(value) is not None else None
    dt = parse_time(value)
    if dt is None:
        return None
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def unix_seconds(value: Any) -> int | None:
    dt = parse_time(value)
    return None if dt is None else int(dt.timestamp())


def unix_millis(value: Any) -> int | None:
    dt = parse_time(value)
    return None if dt is None else int(dt.timestamp() * 1000)


def unix_micros(value: Any) -> int | None:
    dt = parse_time(value)
    return None if dt is None else int(dt.timestamp() * 1_000_000)


def strftime(value: Any, fmt: str) -> str | None:
    dt = parse_time(value)
    return None if dt is None else dt.strftime(fmt)


def to_base64(value: Any) -> str | None:
    """Standard base64 (RFC 4648, with padding) of the text's UTF-8 bytes: HTTP Basic
    auth is `"Basic " ~ (user ~ ":" ~ password) | base64` (Mixpanel's service accounts,
    its project secret)."""
    if value is None:
        return None
    return base64.b64encode(str(value).encode("utf-8")).decode("ascii")


# --- URLs and attribute lists ------------------------------------------------------

@functools.lru_cache(maxsize=4096)
def _query(url: str) -> dict[str, list[str]]:
    query = urlsplit(url).query if ("?" in url or "://" in url) else url.lstrip("?")
    return parse_qs(query, keep_blank_values=False)


def query_param(url: Any, name: str) -> str | None:
    """A query parameter from a URL, a path with a query, or a bare query string."""
    if not url or not isinstance(url, str):
        return None
    values = _query(url).get(name)  # one page URL is read for ~10 click ids: parse once
    return values[0] if values else None


@functools.lru_cache(maxsize=256)
def _pattern(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def regex_group(value: Any, pattern: str) -> str | None:
    """The first capture group of the first match of `pattern` in the text (or the whole
    match without a group); None when nothing matches. For values whose shape a cookie
    or id defines ("GS2.1.s1732100000$o3..." -> the session's start time)."""
    if value is None or isinstance(value, dict | list):
        return None
    match = _pattern(pattern).search(str(value))
    if match is None:
        return None
    return match.group(1) if match.re.groups else match.group(0)


def split_tail(value: Any, sep: str, count: int) -> str | None:
    """The last `count` parts of a separated value ("GA1.1.123.456", ".", 2 -> "123.456")."""
    if not value or not isinstance(value, str):
        return None
    parts = value.split(sep)
    n = int(count)
    return sep.join(parts[-n:]) if len(parts) >= n else None


def attr(pairs: Any, name: str) -> Any:
    """Value of the first `{name, value}` (or `{key, value}`) element whose name matches."""
    if not isinstance(pairs, list):
        return None
    for pair in pairs:
        if isinstance(pair, dict) and (pair.get("name") == name or pair.get("key") == name):
            return pair.get("value")
    return None


# --- identity normalizers ----------------------------------------------------------
# Rules follow the platforms' published normalization (see shared/reference): trim and
# lower-case; names without punctuation; phones in E.164; dates as YYYYMMDD.

def norm_email(value: Any) -> str | None:
    if not value or not isinstance(value, str):
        return None
    email = value.strip().lower()
    return email if "@" in email and not is_sha256(email) else (email or None)


def norm_email_gmail(value: Any) -> str | None:
    """Email canonicalized the way Google matches: dots removed from gmail local parts."""
    email = norm_email(value)
    if not email or "@" not in email:
        return email
    local, _, domain = email.partition("@")
    if domain in ("gmail.com", "googlemail.com"):
        local = local.replace(".", "")
    return f"{local}@{domain}"


def norm_email_alnum(value: Any) -> str | None:
    """Email with the local part cut at "+" and stripped to [a-z0-9] (any domain): the
    canonical form some platforms match on (Reddit documents this normalization)."""
    email = norm_email(value)
    if not email or "@" not in email or is_sha256(email):
        return email
    local, _, domain = email.rpartition("@")
    local = re.sub(r"[^a-z0-9]", "", local.split("+", 1)[0])
    return f"{local}@{domain}" if local else None


def norm_email_gmail_canonical(value: Any) -> str | None:
    """Google's Data Manager form: for gmail.com / googlemail.com local parts, dots
    removed and a "+tag" dropped ("cloudy.sf+shopping@gmail.com" -> "cloudysf@gmail.com");
    other domains keep both (their mail servers may treat them as different boxes)."""
    email = norm_email(value)
    if not email or "@" not in email or is_sha256(email):
        return email
    local, _, domain = email.rpartition("@")
    if domain in ("gmail.com", "googlemail.com"):
        local = local.split("+", 1)[0].replace(".", "")
    return f"{local}@{domain}" if local else None


def norm_email_unaliased(value: Any) -> str | None:
    """Any domain: the local part without dots and without a "+alias" (Reddit's
    canonical email: "Al.ice+Apple@Example.Com" -> "alice@example.com"); other
    characters stay."""
    email = norm_email(value)
    if not email or "@" not in email or is_sha256(email):
        return email
    local, _, domain = email.rpartition("@")
    local = local.split("+", 1)[0].replace(".", "")
    return f"{local}@{domain}" if local else None


def norm_phone(value: Any, country: str | None = None) -> str | None:
    """E.164 ("+14155550123"); numbers without a country code use the account's country."""
    if value is None or value == "":
        return None
    return _norm_phone(str(value).strip(), country)


@functools.lru_cache(maxsize=65536)
def _norm_phone(text: str, country: str | None) -> str | None:
    """Cached: libphonenumber parsing costs ~50 us and customers repeat."""
    if is_sha256(text):
        return text.lower()
    region = (country or "US").upper()
    candidate = text
    if text.startswith("00"):
        candidate = "+" + text[2:]
    try:
        parsed = phonenumbers.parse(candidate, None if candidate.startswith("+") else region)
    except phonenumbers.NumberParseException:
        digits = _NON_DIGIT.sub("", text)
        return f"+{digits}" if len(digits) >= 7 else None
    if not phonenumbers.is_possible_number(parsed):
        digits = _NON_DIGIT.sub("", text)
        return f"+{digits}" if len(digits) >= 7 else None
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def phone_digits(value: Any) -> str | None:
    """E.164 without the plus sign, the form most ad platforms hash."""
    if value is None:
        return None
    text = str(value)
    return text if is_sha256(text) else text.lstrip("+")


_ASCII_DROP = re.compile(r"[^A-Za-z0-9]+")
_ASCII_DROP_KEEP_SPACES = re.compile(r"[^A-Za-z0-9\s]+")


def _keep(text: str, spaces: bool) -> str:
    """Letters, marks and digits (Unicode L/M/N); combining vowel signs of Indic and Thai
    scripts are marks, and dropping them would change the name ("प्रिया" -> "परय")."""
    if text.isascii():  # the same rule for ASCII, without a lookup per character
        return (_ASCII_DROP_KEEP_SPACES if spaces else _ASCII_DROP).sub("", text)
    return "".join(ch for ch in text if unicodedata.category(ch)[0] in "LMN"
                   or (spaces and ch.isspace()))


def norm_name(value: Any) -> str | None:
    """Lower-case, trimmed, punctuation removed (letters with accents are kept)."""
    if value is None or value == "":
        return None
    text = unicodedata.normalize("NFC", str(value)).strip().lower()
    if is_sha256(text):
        return text
    text = " ".join(_keep(text, spaces=True).split())
    return text or None


def norm_city(value: Any) -> str | None:
    """Lower-case with spaces and punctuation removed ("New York" -> "newyork")."""
    if value is None or value == "":
        return None
    text = unicodedata.normalize("NFC", str(value)).strip().lower()
    if is_sha256(text):
        return text
    return _keep(text, spaces=False) or None


def norm_state(value: Any) -> str | None:
    """Lower-case state/province code with punctuation and spaces removed."""
    return norm_city(value)


def norm_zip(value: Any, country: str | None = None) -> str | None:
    """Lower-case, no spaces or dashes; US codes cut to their first five digits."""
    if value is None or value == "":
        return None
    text = str(value).strip().lower()
    if is_sha256(text):
        return text
    text = re.sub(r"[\s\-]+", "", text)
    if (country or "").upper() == "US" and len(text) > 5 and text[:5].isdigit():
        text = text[:5]
    return text or None


_COUNTRY_ALIASES = {"uk": "gb", "usa": "us", "u.s.a.": "us", "u.s.": "us", "england": "gb",
                    "scotland": "gb", "wales": "gb", "great britain": "gb"}


@functools.lru_cache(maxsize=2048)
def _country_code(text: str) -> str | None:
    import pycountry

    if text in _COUNTRY_ALIASES:
        return _COUNTRY_ALIASES[text]
    letters = re.sub(r"[^a-z]", "", text)
    if len(letters) == 2 and pycountry.countries.get(alpha_2=letters.upper()):
        return letters
    if len(letters) < 2:
        return None
    try:  # exact codes and names only: fuzzy matching turned "n/a" into Namibia
        return str(pycountry.countries.lookup(text).alpha_2).lower()
    except LookupError:
        return None


def norm_country(value: Any) -> str | None:
    """ISO 3166-1 alpha-2, lower-case, from a code, an alpha-3 code or an English name."""
    if value is None or value == "":
        return None
    text = str(value).strip().lower()
    if is_sha256(text):
        return text
    return _country_code(text)


def norm_gender(value: Any) -> str | None:
    if value is None or value == "":
        return None
    text = str(value).strip().lower()
    if is_sha256(text):
        return text
    if text in ("f", "female", "woman", "w"):
        return "f"
    if text in ("m", "male", "man"):
        return "m"
    return None


def norm_date_of_birth(value: Any) -> str | None:
    """YYYYMMDD from ISO dates, datetimes or already-compact strings."""
    if value is None or value == "":
        return None
    text = str(value).strip()
    if is_sha256(text):
        return text.lower()
    digits = _NON_DIGIT.sub("", text)
    if len(digits) == 8 and re.match(r"^\d{4}-?\d{2}-?\d{2}", text):
        return digits
    slashed = re.fullmatch(r"(\d{1,2})[/.](\d{1,2})[/.](\d{4})", text)
    if slashed:  # month first (US) unless the first number cannot be a month
        a, b, year = (int(g) for g in slashed.groups())
        month, day = (b, a) if a > 12 else (a, b)
        if 1 <= month <= 12 and 1 <= day <= 31:
            return f"{year:04d}{month:02d}{day:02d}"
        return None
    dt = parse_time(text) if not text.isdigit() else None
    return dt.strftime("%Y%m%d") if dt else (digits if len(digits) == 8 else None)


def norm_external_id(value: Any) -> str | None:
    if value is None or value == "":
        return None
    return str(value).strip() or None


# --- collections -------------------------------------------------------------------

def compact(value: Any) -> Any:
    """Drop None, empty strings, empty lists and empty dicts, recursively.

    Templates and mappings declare every field a platform could take; this is what
    makes "empty values are omitted" true without a condition around each field.
    """
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if type(item) not in _SCALARS:
                item = compact(item)
            if item is not None and item != "" and item != [] and item != {}:
                out[key] = item
        return out
    if isinstance(value, list):
        items = [v if type(v) in _SCALARS else compact(v) for v in value]
        return [v for v in items if v is not None and v != "" and v != [] and v != {}]
    return value


_SCALARS = frozenset({str, int, float, bool, type(None)})


def project(items: Any, fields: Mapping[str, Any],
            defaults: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """Rename, select and convert the fields of each item.

        items | project({'id': 'id', 'item_price': 'price|money_string', 'kind': '=sku'},
                        {'quantity': 1})

    A source is an item key, optionally followed by "|filter" (any named filter); "=text"
    or a non-string value is a constant; `defaults` fill keys an item lacks."""
    spec = _project_spec(fields)
    out = []
    for item in items if isinstance(items, list) else []:
        if not isinstance(item, Mapping):
            continue
        row: dict[str, Any] = {}
        for target, constant, key, convert in spec:
            if key is None:
                row[target] = constant
            else:
                value = item.get(key)
                if value is not None and convert is not None:
                    value = convert(value)
                row[target] = value
        for target, value in (defaults or {}).items():
            if row.get(target) in (None, ""):
                row[target] = value
        out.append(compact(row))
    return out


_Spec = tuple[tuple[str, Any, str | None, Any], ...]
_PROJECT_SPECS: dict[tuple[tuple[str, type, Any], ...], _Spec] = {}


def _project_spec(fields: Mapping[str, Any]) -> _Spec:
    """`project`'s field sources parsed once per distinct field table (templates pass the
    same few tables for every event): (target, constant, item key, filter)."""
    try:
        # with the types: 1, 1.0 and True are equal keys but different constants
        cache_key: tuple[tuple[str, type, Any], ...] | None = tuple(
            (k, type(v), v) for k, v in fields.items())
        hash(cache_key)
    except TypeError:  # a list or dict constant: parse every time
        cache_key = None
    if cache_key is not None and cache_key in _PROJECT_SPECS:
        return _PROJECT_SPECS[cache_key]
    from router.expr.jinja import FILTERS

    spec: list[tuple[str, Any, str | None, Any]] = []
    for target, source in fields.items():
        if not isinstance(source, str):
            spec.append((target, source, None, None))
        elif source.startswith("="):
            spec.append((target, source[1:], None, None))
        else:
            key, _, filter_name = source.partition("|")
            spec.append((target, None, key.strip(),
                         FILTERS[filter_name.strip()] if filter_name else None))
    parsed = tuple(spec)
    if cache_key is not None and len(_PROJECT_SPECS) < 1024:
        _PROJECT_SPECS[cache_key] = parsed
    return parsed


def with_index(items: Any) -> list[dict[str, Any]] | None:
    """[{index, value}] for each element, so per-element statuses can name their event."""
    if not isinstance(items, list):
        return None
    return [{"index": i, "value": v} for i, v in enumerate(items)]


class KeepEmpty(list):  # type: ignore[type-arg]
    """A list a platform requires even when empty: payload trees drop empty values,
    except these (LinkedIn's `user.userIds`: "an empty list is required, not omitted")."""


def keep_empty(value: Any) -> KeepEmpty:
    """The value as a list that survives empty-value dropping (None -> [])."""
    if value is None:
        return KeepEmpty()
    return KeepEmpty(compact(value) if isinstance(value, list) else [value])


def first(value: Any) -> Any:
    if isinstance(value, list):
        for item in value:
            if item is not None and item != "":
                return item
        return None
    return value


def as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]
