"""Which identifiers a destination takes, read from its own templates.

A destination "takes" fbc when its payload or request reads `event.user_data.fbc`; one
that passes `event.user_data` (or `event.context`) whole takes everything in it. Match
quality is judged only for the identifiers a destination takes: GA4 losing fbc is not
news, Meta losing it is.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from router.config.model import CompiledConfig, Destination, IdentifierTokens

_REFERENCE = re.compile(r"\b(user_data|context)\b(?:\s*\.\s*([A-Za-z0-9_]+)|\s*\[\s*['\"]"
                        r"([A-Za-z0-9_]+)['\"]\s*\])?")
WHOLE = "*"
_CACHE: dict[tuple[int, str], frozenset[str]] = {}


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, Mapping):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list | tuple):
        return [s for v in value for s in _strings(v)]
    return []


def referenced(dest: Destination) -> frozenset[str]:
    """Signal tokens the destination's templates read (`user_data.*`/`context.*` whole:
    `*user_data`, `*context`)."""
    out: set[str] = set()
    for text in _strings(dict(dest.definition)):
        if "{{" not in text and "{%" not in text:
            continue
        for match in _REFERENCE.finditer(text):
            section, key = match.group(1), match.group(2) or match.group(3)
            if key is None:
                out.add(WHOLE + section)
            else:
                out.add(key if section == "user_data" else f"context.{key}")
    return frozenset(out)


def takes(tokens: frozenset[str], identifier: IdentifierTokens) -> bool:
    for group in identifier:
        if all(t in tokens or (WHOLE + "user_data" in tokens and not t.startswith("context."))
               or (WHOLE + "context" in tokens and t.startswith("context.")) for t in group):
            return True
    return False


def with_variants(config: CompiledConfig,
                  identifiers: Mapping[str, IdentifierTokens]) -> dict[str, IdentifierTokens]:
    """Each identifier with the destination-specific hashes derived from the same personal
    field (`email_sha256` also counts as `email_gmail_canonical_sha256`...): computed
    from one email at ingest, present together or not at all."""
    out: dict[str, IdentifierTokens] = {}
    for name, spec in identifiers.items():
        groups = list(spec)
        for variant in config.identifier_variants:
            if (f"{variant.source}_sha256",) in spec and (variant.name,) not in groups:
                groups.append((variant.name,))
        out[name] = tuple(groups)
    return out


def identifiers_taken(config: CompiledConfig, destination: str,
                      identifiers: Mapping[str, IdentifierTokens]) -> list[str]:
    dest = config.destinations.get(destination)
    if dest is None:
        return []
    key = (id(dest), destination)
    tokens = _CACHE.get(key)
    if tokens is None:
        if len(_CACHE) > 1000:
            _CACHE.clear()
        tokens = _CACHE[key] = referenced(dest)
    return [name for name, spec in identifiers.items() if takes(tokens, spec)]
