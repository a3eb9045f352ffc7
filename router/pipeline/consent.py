"""Consent: every source's signal, normalized into the purposes of configs/consent.yaml.

Signals (Segment/RudderStack category preferences, Google Consent Mode v2, an IAB TCF
v2 string, Sec-GPC) are combined with "deny wins". A purpose no signal speaks about
falls back to the regional default: opt-in regions deny it, opt-out regions grant it.
A destination is sent an event only if every purpose it requires is granted; the
decision and its reason are recorded, never silently skipped.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from router.config.model import ConsentConfig

ALWAYS_GRANTED = "necessary"
_TRUE = {"granted", "true", "yes", "1", "allow", "allowed", "accept", "accepted", "opt_in"}
_FALSE = {"denied", "false", "no", "0", "deny", "reject", "rejected", "opt_out"}
_GCM_FIELDS = ("ad_storage", "analytics_storage", "ad_user_data", "ad_personalization",
               "functionality_storage", "personalization_storage", "security_storage")


@dataclass(frozen=True)
class Decision:
    allowed: bool
    denied: tuple[str, ...] = ()

    @property
    def reason(self) -> str:
        return "consent: " + ", ".join(self.denied) + " not granted" if self.denied else ""


ALLOWED = Decision(True)


def _flag(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    return None


@functools.lru_cache(maxsize=4096)
def decode_tcf(tc_string: str) -> dict[int, bool] | None:
    """Purpose consents of a TCF v2 string; None when it cannot be decoded."""
    from iab_tcf import decode_v2

    try:
        decoded = decode_v2(tc_string.strip())
    except Exception:  # malformed strings arrive from the wild; treat as no signal
        return None
    if getattr(decoded, "version", None) != 2:
        return None
    return {int(k): bool(v) for k, v in decoded.purposes_consent.items()}


@functools.lru_cache(maxsize=4096)
def tcf_vendor_allowed(tc_string: str, vendor_id: int) -> bool:
    from iab_tcf import decode_v2

    try:
        return bool(decode_v2(tc_string.strip()).is_vendor_allowed(vendor_id))
    except Exception:
        return False


def _combine(result: dict[str, bool], purpose: str, granted: bool) -> None:
    result[purpose] = result.get(purpose, True) and granted


def _from_mapping(flags: dict[str, bool], table: Any) -> dict[str, bool]:
    out: dict[str, bool] = {}
    for signal, granted in flags.items():
        for purpose in table.get(signal, ()):
            _combine(out, purpose, granted)
    return out


def _tcf_string(raw: dict[str, Any]) -> str | None:
    for key in ("tcf", "tc_string", "tcString", "gdpr_consent", "euconsent-v2", "euconsent"):
        value = raw.get(key)
        if isinstance(value, str) and value.strip():
            return value
    return None


def normalize_consent(raw: dict[str, Any] | None, config: ConsentConfig, *, gpc: bool = False,
                      region: str | None = None) -> dict[str, Any]:
    """The consent record stored on the Event: purposes decided, by which signals."""
    raw = dict(raw or {})
    explicit: dict[str, bool] = {}
    signals: list[str] = []

    prefs = raw.get("categoryPreferences", raw.get("category_preferences"))
    if isinstance(prefs, dict):
        signals.append("categories")
        if not prefs:  # an empty object means every category is refused (Segment semantics)
            flags = {category: False for category in config.categories}
        else:
            flags = {k: bool(_flag(v)) for k, v in prefs.items() if _flag(v) is not None}
        for purpose, granted in _from_mapping(flags, config.categories).items():
            _combine(explicit, purpose, granted)

    # RudderStack consent management: allowed/denied CMP category ids
    allowed_ids, denied_ids = raw.get("allowedConsentIds"), raw.get("deniedConsentIds")
    if isinstance(allowed_ids, dict):
        allowed_ids = list(allowed_ids)
    if isinstance(allowed_ids, list) or isinstance(denied_ids, list):
        signals.append("consent_ids")
        flags = {str(c): True for c in allowed_ids or ()}
        flags.update({str(c): False for c in denied_ids or ()})
        for purpose, granted in _from_mapping(flags, config.categories).items():
            _combine(explicit, purpose, granted)

    gcm_source = raw.get("google_consent_mode") or raw.get("consent_mode") or raw
    gcm = {f: _flag(gcm_source.get(f)) for f in _GCM_FIELDS if isinstance(gcm_source, dict)}
    gcm = {k: v for k, v in gcm.items() if v is not None}
    if gcm:
        signals.append("google_consent_mode")
        for purpose, granted in _from_mapping(gcm, config.google_consent_mode).items():
            _combine(explicit, purpose, granted)

    tc_string = _tcf_string(raw)
    if tc_string:
        consents = decode_tcf(tc_string)
        if consents is not None:
            signals.append("tcf")
            for number, purposes in config.tcf.items():
                for purpose in purposes:
                    _combine(explicit, purpose, consents.get(number, False))

    before_gpc = dict(explicit)
    if gpc or _flag(raw.get("gpc")):
        signals.append("gpc")
        for purpose in config.gpc_denies:
            explicit[purpose] = False

    mode = config.default_mode
    if region:
        country = region.upper()[:2]
        if region.upper() in config.opt_in_regions or country in config.opt_in_regions:
            mode = "opt_in"
        elif region.upper() in config.opt_out_regions or country in config.opt_out_regions:
            mode = "opt_out"
    purposes = {p: explicit.get(p, mode == "opt_out") for p in config.purposes}
    if ALWAYS_GRANTED in purposes:
        purposes[ALWAYS_GRANTED] = True
    out: dict[str, Any] = {"purposes": purposes, "signals": signals, "default": mode}
    # purposes refused by Global Privacy Control alone (every other signal, or the
    # default, grants them): a platform with a restricted-processing flag may still
    # receive the event, flagged (decide(..., gpc_restricted=True))
    gpc_only = [p for p in config.gpc_denies if "gpc" in signals and not purposes.get(p)
                and before_gpc.get(p, mode == "opt_out")]
    if gpc_only:
        out["gpc_only"] = gpc_only
    if region:
        out["region"] = region.upper()
    if tc_string:
        out["tcf"] = tc_string
    return out


def decide(consent: dict[str, Any], requires: tuple[str, ...],
           tcf_vendor_id: int | None = None, gpc_restricted: bool = False) -> Decision:
    """May an event with this consent record go to a destination requiring `requires`?

    `gpc_restricted`: the destination sends Global Privacy Control opt-outs with its
    restricted-processing flag, so purposes refused by GPC alone count as granted."""
    purposes = consent.get("purposes") or {}
    if gpc_restricted and consent.get("gpc_only"):
        purposes = {**purposes, **{p: True for p in consent["gpc_only"]}}
    tc_string = consent.get("tcf")
    if tc_string is None or tcf_vendor_id is None:  # the common case: purposes only
        for purpose in requires:
            if not purposes.get(purpose, False):
                break
        else:
            return ALLOWED
    denied = [p for p in requires if not purposes.get(p, False)]
    if tcf_vendor_id is not None and tc_string and not tcf_vendor_allowed(tc_string, tcf_vendor_id):
        denied.append(f"tcf vendor {tcf_vendor_id}")
    return Decision(not denied, tuple(denied))
