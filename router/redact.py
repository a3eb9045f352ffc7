"""Masking of personal data and secrets in what is kept for people to read.

Raw messages kept for visibility (rejected and unmapped events) and excerpts of what
was sent must show their shape and enough of each value to recognise it, never the
plaintext: an email becomes `j***@e***.com`, a phone or a name keeps its first
character. Which keys hold personal data is decided by name (the names sources use:
`email`, `firstName`, `postal_code`, ...); any string that contains an email address
is masked whatever its key, because free-text fields carry them too.
"""

from __future__ import annotations

import re
from typing import Any

MASK = "***"
_EMAIL = re.compile(r"([A-Za-z0-9._%+-])[A-Za-z0-9._%+-]*@([A-Za-z0-9-])[A-Za-z0-9.-]*"
                    r"(\.[A-Za-z]{2,})")
_PERSONAL_KEYS = frozenset({
    "email", "emailaddress", "phone", "phonenumber", "mobile", "mobilephone", "firstname",
    "lastname", "fullname", "middlename", "street", "streetaddress", "address1", "address2",
    "city", "zip", "zipcode", "postalcode", "postcode", "birthday", "dateofbirth", "dob",
    "birthdate", "gender", "ssn", "ip", "browserip", "clientip", "ipaddress"})
# "name" is a product's or a page's name too: personal only inside these objects
_PERSON_OBJECTS = frozenset({
    "traits", "customer", "user", "billingaddress", "shippingaddress", "address", "contact",
    "defaultaddress", "profile", "person"})
_SECRET_KEYS = re.compile(r"(token|secret|password|passwd|authorization|apikey|api_key)",
                          re.IGNORECASE)


def _norm(key: str) -> str:
    return key.replace("_", "").replace("-", "").lower()


def mask_email(text: str) -> str:
    return _EMAIL.sub(lambda m: f"{m.group(1)}{MASK}@{m.group(2)}{MASK}{m.group(3)}", text)


def mask_value(value: Any) -> Any:
    """A personal value reduced to its first character (emails keep their shape)."""
    if value is None or isinstance(value, bool):
        return value
    text = str(value)
    if "@" in text and _EMAIL.search(text):
        return mask_email(text)
    return (text[0] + MASK) if len(text) > 1 else MASK


def redact(value: Any, *, _parent: str = "") -> Any:
    """A copy of a JSON document with personal data and secrets masked."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            name = _norm(str(key))
            if _SECRET_KEYS.search(str(key)) and isinstance(item, str | int | float):
                out[key] = MASK
            elif name in _PERSONAL_KEYS or (name == "name" and _parent in _PERSON_OBJECTS):
                out[key] = redact_all(item)
            else:
                out[key] = redact(item, _parent=name)
        return out
    if isinstance(value, list):
        return [redact(item, _parent=_parent) for item in value]
    if isinstance(value, str) and "@" in value:
        return mask_email(value)
    return value


def redact_all(value: Any) -> Any:
    """Every scalar inside masked (an address object under a personal key)."""
    if isinstance(value, dict):
        return {k: redact_all(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact_all(v) for v in value]
    return mask_value(value)
