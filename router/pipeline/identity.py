"""Normalize and hash personal identifiers (the graph linking them lives in the store).

The Event keeps only SHA-256 of personal data (`email_sha256`, ...); the normalized
plaintext travels beside it in `Event.pii` for the length of the pipeline. Values
that already are 64-hex digests pass through unhashed. Click ids, cookies, IP and
user agent are identifiers of a device or ad click, not of a person: never hashed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from router.config.model import IdentifierSpec
from router.expr import functions as fx
from router.expr.jinja import FILTERS
from router.pipeline.event import Event

Normalizer = Callable[[Any, str], str | None]

# field -> normalizer(value, default_country); the hash is SHA-256 of the result
PERSONAL: dict[str, Normalizer] = {
    "email": lambda v, c: fx.norm_email(v),
    "phone": lambda v, c: fx.norm_phone(v, c),
    "first_name": lambda v, c: fx.norm_name(v),
    "last_name": lambda v, c: fx.norm_name(v),
    "city": lambda v, c: fx.norm_city(v),
    "state": lambda v, c: fx.norm_state(v),
    "zip": lambda v, c: fx.norm_zip(v, c),
    "country": lambda v, c: fx.norm_country(v),
    "date_of_birth": lambda v, c: fx.norm_date_of_birth(v),
    "gender": lambda v, c: fx.norm_gender(v),
    "street": lambda v, c: fx.norm_name(v),
}

# hashed form of each personal field; phones are hashed as digits with country code
# and no "+", the form the ad platforms document (see shared/reference)
HASH_INPUT: dict[str, Callable[[str], str | None]] = {"phone": fx.phone_digits}

DISPLAY_FIELDS = ("first_name", "last_name", "city", "state", "zip", "street")

# ids that identify a customer record rather than a person's attributes: kept as given
# and additionally hashed, because several platforms take only the hash
ALSO_HASHED = ("external_id",)


def _country_hint(user_data: dict[str, Any], default_country: str) -> str:
    country = fx.norm_country(user_data.get("country"))
    return country.upper() if country and len(country) == 2 else default_country


_HASHERS: dict[str, Callable[[Any], str | None]] = {
    "sha256": fx.sha256, "md5": fx.md5, "sha1": fx.sha1, "none": fx.to_str}


def variants(pii: dict[str, Any], specs: tuple[IdentifierSpec, ...]) -> dict[str, Any]:
    """Destination-specific hashed forms (MD5, gmail-canonical email, "+"-E.164 phone).

    Computed here, at ingest, from the plaintext that lives only for this pipeline run,
    so no destination needs plaintext stored just to hash it its own way."""
    out: dict[str, Any] = {}
    for spec in specs:
        plain = pii.get(spec.source)
        if plain in (None, ""):
            continue
        normalized = FILTERS[spec.normalize](plain)
        if normalized not in (None, ""):
            out[spec.name] = _HASHERS[spec.hash](normalized)
    return out


def normalize_identity(event: Event, default_country: str = "US",
                       specs: tuple[IdentifierSpec, ...] = ()) -> Event:
    raw = dict(event.user_data)
    country = _country_hint(raw, default_country)
    user_data: dict[str, Any] = {}
    pii: dict[str, Any] = {}
    # personal fields first, so a hash computed here wins over a *_sha256 a payload sent
    for key, value in sorted(raw.items(), key=lambda kv: kv[0] not in PERSONAL):
        if isinstance(value, list):
            value = fx.first(value)
        normalizer = PERSONAL.get(key)
        if key.endswith("_sha256") and normalizer is None:
            if fx.is_sha256(value) and key not in user_data:
                user_data[key] = str(value).strip().lower()
            continue
        if normalizer is None:
            if key in ALSO_HASHED and value not in (None, ""):
                text = fx.norm_external_id(value)
                if text:
                    user_data[key] = text
                    user_data[f"{key}_sha256"] = fx.sha256(text)
            elif value not in (None, ""):
                user_data[key] = value
            continue
        normalized = normalizer(value, country)
        if not normalized:
            continue
        if fx.is_sha256(normalized):
            user_data[f"{key}_sha256"] = normalized.lower()
            continue
        pii[key] = normalized
        to_hash = HASH_INPUT.get(key)
        user_data[f"{key}_sha256"] = fx.sha256(to_hash(normalized) if to_hash else normalized)
    if "country" in pii:
        user_data["country"] = pii["country"]  # a country code alone identifies nobody
    # lifecycle platforms show names and places to people: keep the form the person
    # typed (trimmed) beside the matching form; like all of `pii`, never stored on the Event
    display = {k: " ".join(str(raw[k]).split()) for k in DISPLAY_FIELDS
               if k in pii and isinstance(raw.get(k), str | int) and str(raw[k]).strip()}
    if display:
        pii["display"] = display
    user_data.update(variants(pii, specs))
    return event.evolve(user_data=user_data, pii=pii)
