"""Identity normalization: personal data leaves the Event only as SHA-256."""

from __future__ import annotations

import hashlib

from router.pipeline.event import Event
from router.pipeline.identity import normalize_identity


def make(user_data: dict[str, object]) -> Event:
    return Event(event_name="purchase", event_id="e1", occurred_at=None,
                 received_at="2026-01-01T00:00:00.000Z", source="test", source_event="x",
                 account="a", environment="production", user_data=dict(user_data))


def h(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_personal_fields_are_normalized_then_hashed() -> None:
    event = normalize_identity(make({
        "email": "  Jane.Doe@Example.COM ", "phone": "(415) 555-0123", "first_name": " Jane ",
        "last_name": "O'Neil", "city": "San Francisco", "state": "CA", "zip": "94103-1234",
        "country": "US", "date_of_birth": "1990-02-07", "gender": "female",
    }), "US")
    ud = event.user_data
    assert ud["email_sha256"] == h("jane.doe@example.com")
    assert ud["phone_sha256"] == h("14155550123")  # E.164 digits, no plus
    assert ud["first_name_sha256"] == h("jane")
    assert ud["last_name_sha256"] == h("oneil")
    assert ud["city_sha256"] == h("sanfrancisco")
    assert ud["zip_sha256"] == h("94103")
    assert ud["date_of_birth_sha256"] == h("19900207")
    assert ud["gender_sha256"] == h("f")
    assert ud["country"] == "us"
    for plaintext in ("email", "phone", "first_name", "last_name", "city", "zip"):
        assert plaintext not in ud
    assert event.pii["email"] == "jane.doe@example.com"
    assert event.pii["phone"] == "+14155550123"
    assert "pii" not in event.to_dict()


def test_phone_country_comes_from_the_event_then_the_account() -> None:
    gb = normalize_identity(make({"phone": "07911 123456", "country": "GB"}), "US")
    assert gb.pii["phone"] == "+447911123456"
    de = normalize_identity(make({"phone": "030 1234567"}), "DE")
    assert de.pii["phone"] == "+49301234567"


def test_existing_hashes_are_not_hashed_again() -> None:
    digest = h("jane.doe@example.com")
    event = normalize_identity(make({"email": digest.upper()}), "US")
    assert event.user_data["email_sha256"] == digest
    assert "email" not in event.pii


def test_device_and_click_ids_are_never_hashed() -> None:
    ids = {"fbp": "fb.1.1700000000000.123", "fbc": "fb.1.1700000000000.IwAR", "ttclid": "T1",
           "gclid": "G1", "anonymous_id": "anon", "user_id": "u1"}
    event = normalize_identity(make(ids), "US")
    for key, value in ids.items():
        assert event.user_data[key] == value
    assert not any(k.endswith("_sha256") for k in event.user_data)


def test_external_id_is_kept_and_hashed() -> None:
    event = normalize_identity(make({"external_id": " cust-42 "}), "US")
    assert event.user_data["external_id"] == "cust-42"
    assert event.user_data["external_id_sha256"] == h("cust-42")


def test_unusable_values_are_dropped_not_hashed() -> None:
    event = normalize_identity(make({"email": "", "phone": "n/a", "country": "Narnia"}), "US")
    assert event.user_data == {}
