"""The `alerts:` section of configs/router.yaml: detector settings and channels.

The schema has checked shapes and ranges; this module checks what a schema cannot (a
channel that is on must be able to send: an email channel needs recipients and a
sender, a webhook needs its signing secret; detectors name canonical events and known
sources) and builds the frozen settings the detectors and channels run on.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from router.config.issues import WARNING, Issue
from router.config.model import (
    DEFAULT_IDENTIFIERS,
    AlertSettings,
    ChannelSpec,
    DeliveryRateSettings,
    IdentifierTokens,
    MatchQualitySettings,
    PlatformDownSettings,
    QueueBacklogSettings,
    TrackingStoppedSettings,
)
from router.config.yamlload import Loaded

URL_SCHEMES = {"slack": ("http", "https"), "webhook": ("http", "https"),
               "email": ("smtp", "smtps")}


def token_of(path: str) -> str:
    """The signal token of an identifier path: user_data keys bare, context fields
    prefixed (router.pipeline.index writes the same tokens)."""
    return path[len("user_data."):] if path.startswith("user_data.") else path


def identifier_tokens(spec: Mapping[str, Any]) -> dict[str, IdentifierTokens]:
    out: dict[str, IdentifierTokens] = {}
    for name, alternatives in spec.items():
        groups = []
        for alternative in alternatives:
            paths = [alternative] if isinstance(alternative, str) else list(alternative)
            groups.append(tuple(token_of(p) for p in paths))
        out[name] = tuple(groups)
    return out


def _recipients(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = value.split(",")
    return tuple(v.strip() for v in value or () if v and v.strip())


def _channels(loaded: Loaded, raw: list[dict[str, Any]],
              issues: list[Issue]) -> tuple[ChannelSpec, ...]:
    out: list[ChannelSpec] = []
    names: set[str] = set()
    for index, item in enumerate(raw):
        path = ("alerts", "channels", index)
        kind = item["type"]
        name = item.get("name") or kind
        if not item.get("name"):
            n = 2
            while name in names:
                name = f"{kind}-{n}"
                n += 1
        if name in names:
            issues.append(loaded.issue((*path, "name"), f"alert channel {name!r} is declared "
                                       f"twice", code="duplicate-channel"))
        names.add(name)
        url = (item.get("url") or "").strip()
        spec = ChannelSpec(name=name, type=kind, url=url, secret=item.get("secret") or "",
                           to=_recipients(item.get("to")), sender=(item.get("from") or "").strip(),
                           tls_ca_file=item.get("tls_ca_file") or None,
                           timeout_seconds=float(item.get("timeout_seconds", 10.0)))
        for old in ("smtp_host", "smtp_port"):
            if old in item:
                issues.append(loaded.issue((*path, old), f"{old} is ignored: give the SMTP "
                                           "server in url (smtp://user:pass@host:port)",
                                           severity=WARNING, code="no-effect"))
        if url:
            _check_channel(loaded, path, spec, issues)
        out.append(spec)
    return tuple(out)


def _check_channel(loaded: Loaded, path: tuple[Any, ...], spec: ChannelSpec,
                   issues: list[Issue]) -> None:
    schemes = URL_SCHEMES.get(spec.type, ())
    parts = urlsplit(spec.url)
    try:
        parts.port  # noqa: B018 -- raises for a port that is not a number
    except ValueError:
        issues.append(loaded.issue((*path, "url"), f"alert channel {spec.name!r}: the port in "
                                   "url is not a number", code="invalid-channel"))
        return
    if parts.scheme not in schemes or not parts.hostname:
        issues.append(loaded.issue((*path, "url"), f"alert channel {spec.name!r}: url must be "
                                   f"{' or '.join(s + '://' for s in schemes)}host...",
                                   code="invalid-channel"))
        return
    if spec.type == "email":
        if not spec.to:
            issues.append(loaded.issue((*path, "to"), f"alert channel {spec.name!r} sends mail "
                                       "but has no recipients", code="invalid-channel",
                                       hint="set ROUTER_ALERT_EMAIL_TO (comma-separated)"))
        if not spec.sender:
            issues.append(loaded.issue((*path, "from"), f"alert channel {spec.name!r} sends "
                                       "mail but has no From address", code="invalid-channel",
                                       hint="set ROUTER_ALERT_EMAIL_FROM"))
        if spec.tls_ca_file and not os.path.isfile(spec.tls_ca_file):
            issues.append(loaded.issue((*path, "tls_ca_file"), f"no such file: "
                                       f"{spec.tls_ca_file}", code="invalid-channel"))
    if spec.type == "webhook" and not spec.secret:
        issues.append(loaded.issue((*path, "secret"), f"alert channel {spec.name!r} posts to a "
                                   "webhook but has no signing secret", code="invalid-channel",
                                   hint="set ROUTER_ALERT_WEBHOOK_SECRET"))


def compile_alerts(loaded: Loaded, canonical: Collection[str], sources: Collection[str],
                   issues: list[Issue]) -> AlertSettings:
    data = (loaded.data or {}).get("alerts") or {}
    detectors = data.get("detectors") or {}
    base = AlertSettings()

    def events(section: str, names: list[str]) -> tuple[str, ...]:
        for i, name in enumerate(names):
            if canonical and name not in canonical:
                issues.append(loaded.issue(("alerts", "detectors", section, "events", i),
                                           f"unknown canonical event {name!r}",
                                           code="unknown-event"))
        return tuple(names)

    rate = dict(detectors.get("delivery_rate_drop") or {})
    for i, source in enumerate(rate.get("sources") or ()):
        if sources and source not in sources:
            issues.append(loaded.issue(("alerts", "detectors", "delivery_rate_drop", "sources",
                                        i), f"no mapping for source {source!r}",
                                       severity=WARNING, code="unknown-source"))
    if "events" in rate:
        rate["events"] = events("delivery_rate_drop", rate["events"])
    if "sources" in rate:
        rate["sources"] = tuple(rate["sources"])
    quality = dict(detectors.get("match_quality_drop") or {})
    if "events" in quality:
        quality["events"] = events("match_quality_drop", quality["events"])
    quality["identifiers"] = MappingProxyType(identifier_tokens(quality["identifiers"])) \
        if "identifiers" in quality else DEFAULT_IDENTIFIERS
    return AlertSettings(
        interval_seconds=float(data.get("interval_seconds", base.interval_seconds)),
        console_url=(data.get("console_url") or "").rstrip("/"),
        channels=_channels(loaded, list(data.get("channels") or ()), issues),
        channel_retry_base_seconds=float(data.get("channel_retry_base_seconds",
                                                  base.channel_retry_base_seconds)),
        channel_max_attempts=int(data.get("channel_max_attempts", base.channel_max_attempts)),
        platform_down=PlatformDownSettings(**(detectors.get("platform_down") or {})),
        queue_backlog=QueueBacklogSettings(**(detectors.get("queue_backlog") or {})),
        tracking_stopped=TrackingStoppedSettings(**(detectors.get("tracking_stopped") or {})),
        delivery_rate_drop=DeliveryRateSettings(**rate),
        match_quality_drop=MatchQualitySettings(**quality))
