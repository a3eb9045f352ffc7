"""Reading an operator's search (query parameters) into a store query, strictly.

Every filter name is known or the search is refused (`unknown_filter`): a typo must not
silently answer "everything". Values are checked against the configuration (accounts,
destinations, sources, canonical names, identifiers) so a misspelt name is an error
that says what exists. An email or a phone is normalized and hashed here, exactly as
ingest hashes them, and only the hash goes further: the plaintext is never stored,
logged or echoed back.
"""

from __future__ import annotations

import difflib
import re
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass, replace
from typing import Any

from router.config.model import CompiledConfig
from router.expr import functions as fx
from router.expr.functions import iso_time
from router.ops.coverage import with_variants
from router.store.base import EventQuery, Store

EVENT_FILTERS = ("event_id", "order_id", "email", "phone", "person", "source", "status",
                 "name", "account", "environment", "since", "until", "destination",
                 "delivery_status", "undelivered", "lacking", "limit", "cursor")
EVENT_STATUSES = ("mapped", "unmapped", "rejected")
DELIVERY_STATUSES = ("queued", "failed", "delivered", "dropped")
MAX_LIMIT = 1000
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")


class QueryError(ValueError):
    """A search the router refuses; `code` is the stable error code of the 400."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def _hint(value: str, known: Collection[str]) -> str:
    close = difflib.get_close_matches(value, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_filters(given: Collection[str], known: Collection[str]) -> None:
    for name in given:
        if name not in known:
            raise QueryError("unknown_filter", f"unknown filter {name!r}{_hint(name, known)}: "
                             f"known filters are {', '.join(known)}")


def duration(text: str) -> float | None:
    match = _DURATION.fullmatch(text.strip())
    return float(match.group(1)) * _UNITS[match.group(2)] if match else None


def parse_when(name: str, value: str, now: float) -> float:
    """A time: ISO 8601, or a duration meaning that long ago (`24h`, `15m`, `7d`)."""
    seconds = duration(value)
    if seconds is not None:
        return now - seconds
    parsed = fx.parse_time(value) if iso_time(value) else None
    if parsed is None:
        raise QueryError("invalid_parameter", f"{name}={value!r} is neither a time (ISO 8601) "
                         f"nor a duration (30s, 15m, 24h, 7d)")
    return parsed.timestamp()


def parse_limit(value: str | None, default: int = 100) -> int:
    if value is None:
        return default
    if not value.isdigit() or not 1 <= int(value) <= MAX_LIMIT:
        raise QueryError("invalid_parameter", f"limit must be an integer from 1 to {MAX_LIMIT}")
    return int(value)


def parse_bool(name: str, value: str) -> bool:
    if value.lower() in ("1", "true", "yes"):
        return True
    if value.lower() in ("0", "false", "no", ""):
        return False
    raise QueryError("invalid_parameter", f"{name} must be true or false")


def choice(name: str, value: str, allowed: Collection[str]) -> str:
    if value not in allowed:
        raise QueryError("invalid_parameter", f"{name}={value!r}{_hint(value, allowed)}: "
                         f"choose from {', '.join(sorted(allowed))}")
    return value


def choices(name: str, value: str, allowed: Collection[str]) -> tuple[str, ...]:
    items = tuple(v.strip() for v in value.split(",") if v.strip())
    if not items:
        raise QueryError("invalid_parameter", f"{name} is empty")
    return tuple(choice(name, v, allowed) for v in items)


def known_sources(config: CompiledConfig) -> set[str]:
    return set(config.mappings) | {s for a in config.accounts.values()
                                   for e in a.environments.values() for s in e.sources}


def email_hash(value: str) -> str:
    normalized = fx.norm_email(value)
    if not normalized or not _EMAIL.fullmatch(normalized):
        raise QueryError("invalid_parameter", "email is not an email address")
    return fx.sha256(normalized) or ""


def phone_hashes(value: str, countries: Collection[str]) -> list[str]:
    """The hash ingest would store, for each default country the phone may be read in
    (a number written with +country code has one reading)."""
    out: set[str] = set()
    for country in countries:
        normalized = fx.norm_phone(value, country)
        digits = fx.phone_digits(normalized) if normalized else None
        if digits:
            out.add(fx.sha256(digits) or "")
    if not out:
        raise QueryError("invalid_parameter", "phone is not a phone number (give it with its "
                         "country code, +44...)")
    return sorted(out)


@dataclass(frozen=True)
class Search:
    query: EventQuery
    person: str | None = None  # expanded by `resolve` into the person's identifiers


def parse_event_search(config: CompiledConfig, params: Mapping[str, str],
                       now: float | None = None) -> Search:
    """GET /admin/events parameters -> a store query (see docs/operations.md)."""
    now = time.time() if now is None else now
    check_filters(params, EVENT_FILTERS)
    q: dict[str, Any] = {"limit": parse_limit(params.get("limit"))}
    terms: list[tuple[str, ...]] = []
    for name, value in params.items():
        if name in ("limit",):
            continue
        if not value.strip():
            raise QueryError("invalid_parameter", f"{name} is empty")
        value = value.strip()
        if name == "event_id":
            q["event_id"] = value
        elif name == "order_id":
            terms.append((f"order_id:{value}",))
        elif name == "email":
            terms.append((f"email_sha256:{email_hash(value)}",))
        elif name == "phone":
            account = params.get("account")
            countries = {config.accounts[account].default_country} if account in \
                config.accounts else {a.default_country for a in config.accounts.values()}
            terms.append(tuple(f"phone_sha256:{h}" for h in phone_hashes(value, countries)))
        elif name == "account":
            q["account"] = choice(name, value, config.accounts)
        elif name == "environment":
            q["environment"] = choice(name, value, {e for a in config.accounts.values()
                                                    for e in a.environments})
        elif name == "source":
            q["source"] = choice(name, value, known_sources(config))
        elif name == "status":
            q["status"] = choice(name, value, EVENT_STATUSES)
        elif name == "name":
            q["name"] = choice(name, value, config.canonical)
        elif name in ("since", "until"):
            q[name] = iso_time(parse_when(name, value, now))
        elif name == "destination":
            q["destination"] = choice(name, value, config.destinations)
        elif name == "delivery_status":
            q["delivery_status"] = choices(name, value, DELIVERY_STATUSES)
        elif name == "undelivered":
            q["undelivered"] = parse_bool(name, value)
        elif name == "lacking":
            identifiers = with_variants(config,
                                        config.settings.alerts.match_quality_drop.identifiers)
            q["lacking"] = identifiers[choice(name, value, identifiers)]
        elif name == "cursor":
            if not value.isdigit():
                raise QueryError("invalid_parameter", "cursor must be the next_cursor of the "
                                 "previous page")
            q["before_seq"] = int(value)
    if ("delivery_status" in q or q.get("undelivered")) and "destination" not in q:
        raise QueryError("invalid_parameter", "delivery_status and undelivered need "
                         "destination")
    if q.get("since") and q.get("until") and q["since"] >= q["until"]:
        raise QueryError("invalid_parameter", "since must be before until")
    return Search(EventQuery(any_terms=tuple(terms), **q), params.get("person", "").strip()
                  or None)


async def resolve(store: Store, search: Search, accounts: Collection[str]) -> EventQuery:
    """Expand a person (an identity root, as `identity.person` shows it) into every
    identifier the identity graph links to them: their events carry one of those."""
    if search.person is None:
        return search.query
    identifiers: set[str] = {search.person}
    for account in [search.query.account] if search.query.account else sorted(accounts):
        identifiers.update(await store.person_identifiers(account, search.person))
    return replace(search.query, any_terms=(*search.query.any_terms, tuple(sorted(identifiers))))
