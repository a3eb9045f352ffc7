"""Consent normalization: each signal kind, deny-wins combination, regional defaults."""

from __future__ import annotations

import base64
from types import MappingProxyType

import pytest

from router.config.model import ConsentConfig
from router.pipeline.consent import decide, decode_tcf, normalize_consent

CONFIG = ConsentConfig(
    version="1",
    purposes=("necessary", "analytics", "advertising", "personalization"),
    categories=MappingProxyType({"Advertising": ("advertising", "personalization"),
                                 "Analytics": ("analytics",), "C0004": ("advertising",)}),
    google_consent_mode=MappingProxyType({"ad_storage": ("advertising",),
                                          "ad_user_data": ("advertising",),
                                          "ad_personalization": ("personalization",),
                                          "analytics_storage": ("analytics",)}),
    tcf=MappingProxyType({1: ("advertising", "analytics", "personalization"), 3: ("personalization",),
                          4: ("personalization",), 7: ("advertising",), 8: ("analytics",)}),
    gpc_denies=("advertising", "personalization"),
    default_mode="opt_out",
    opt_in_regions=frozenset({"DE", "FR", "GB"}),
    opt_out_regions=frozenset({"US"}),
)


def tc_string(purposes: set[int], vendors: set[int] = frozenset()) -> str:  # type: ignore[assignment]
    """Encode a minimal TCF v2 core segment (bit layout from the IAB spec)."""
    # (value, width) of each core-segment field, in spec order
    fields = [(2, 6), (0, 36), (0, 36), (7, 12), (1, 12), (1, 6), (0, 12), (100, 12), (4, 6),
              (0, 1), (0, 1), (0, 12)]
    bits = "".join(format(v, f"0{w}b") for v, w in fields)
    bits += "".join("1" if i in purposes else "0" for i in range(1, 25))
    bits += "0" * 24  # purposes LI
    bits += "0" + "0" * 12  # purpose one treatment, publisher cc
    max_vendor = max(vendors) if vendors else 0
    bits += format(max_vendor, "016b") + "0"  # vendor consents as a bit field
    bits += "".join("1" if i in vendors else "0" for i in range(1, max_vendor + 1))
    bits += "0" * 16 + "0"  # LI vendors: none
    bits += "0" * 12  # no publisher restrictions
    bits += "0" * (-len(bits) % 8)
    return base64.urlsafe_b64encode(int(bits, 2).to_bytes(len(bits) // 8, "big")).decode().rstrip("=")


def test_no_signal_uses_the_regional_default() -> None:
    us = normalize_consent({}, CONFIG, region="US")
    assert us["purposes"] == {"necessary": True, "analytics": True, "advertising": True,
                              "personalization": True}
    de = normalize_consent({}, CONFIG, region="DE")
    assert de["purposes"]["advertising"] is False and de["purposes"]["necessary"] is True
    assert de["default"] == "opt_in"


def test_segment_category_preferences() -> None:
    out = normalize_consent({"categoryPreferences": {"Advertising": False, "Analytics": True}},
                            CONFIG, region="DE")
    assert out["purposes"]["advertising"] is False
    assert out["purposes"]["analytics"] is True
    assert out["signals"] == ["categories"]


def test_empty_category_preferences_refuse_everything_mapped() -> None:
    out = normalize_consent({"categoryPreferences": {}}, CONFIG, region="US")
    assert out["purposes"]["advertising"] is False and out["purposes"]["analytics"] is False


def test_rudderstack_consent_ids() -> None:
    out = normalize_consent({"allowedConsentIds": ["Analytics"], "deniedConsentIds": ["C0004"]},
                            CONFIG, region="US")
    assert out["signals"] == ["consent_ids"]
    assert out["purposes"]["advertising"] is False
    assert out["purposes"]["analytics"] is True


def test_google_consent_mode_deny_wins() -> None:
    out = normalize_consent({"ad_storage": "granted", "ad_user_data": "denied",
                             "analytics_storage": "granted"}, CONFIG, region="DE")
    assert out["purposes"]["advertising"] is False  # ad_user_data denied
    assert out["purposes"]["analytics"] is True
    assert out["purposes"]["personalization"] is False  # unknown in an opt-in region


def test_tcf_string_is_decoded() -> None:
    granted = tc_string({1, 7, 8})
    assert decode_tcf(granted) == {i: i in {1, 7, 8} for i in range(1, 25)}
    out = normalize_consent({"tcf": granted}, CONFIG, region="DE")
    assert out["purposes"]["advertising"] is True
    assert out["purposes"]["analytics"] is True
    assert out["purposes"]["personalization"] is False  # purposes 3/4 refused
    assert "tcf" in out["signals"]


def test_tcf_vendor_consent_is_required_when_declared() -> None:
    consent = normalize_consent({"gdpr_consent": tc_string({1, 7}, vendors={89})}, CONFIG)
    assert decide(consent, ("advertising",), tcf_vendor_id=89).allowed
    refused = decide(consent, ("advertising",), tcf_vendor_id=755)
    assert not refused.allowed and "tcf vendor 755" in refused.reason


def test_malformed_tcf_string_is_no_signal() -> None:
    out = normalize_consent({"tcf": "%%%not-base64"}, CONFIG, region="US")
    assert "tcf" not in out["signals"]
    assert out["purposes"]["advertising"] is True


def test_gpc_denies_sale_and_sharing_even_when_granted() -> None:
    out = normalize_consent({"categoryPreferences": {"Advertising": True}}, CONFIG, gpc=True)
    assert out["purposes"]["advertising"] is False
    assert out["purposes"]["analytics"] is True
    assert "gpc" in out["signals"]


@pytest.mark.parametrize(("requires", "allowed"), [
    ((), True), (("necessary",), True), (("analytics",), True), (("advertising",), False),
    (("analytics", "advertising"), False),
])
def test_destination_decision(requires: tuple[str, ...], allowed: bool) -> None:
    consent = normalize_consent({"categoryPreferences": {"Advertising": False, "Analytics": True}},
                                CONFIG)
    decision = decide(consent, requires)
    assert decision.allowed is allowed
    if not allowed:
        assert decision.reason == "consent: advertising not granted"
