"""Ingest endpoints: the Segment-compatible tracking API and signed webhooks.

Each request: read (size limits, gzip), parse, authenticate (the source's schemes
from its mapping file), split into messages, and hand them to the gateway, which
screens each, appends the good ones to the inbox durably and answers per message
(stage 1). A bad event is rejected alone; the good ones are stored. Stage 2 (mapping,
dedup, routing) runs after the answer.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from router.config.model import CompiledConfig, SourceMapping
from router.expr.functions import iso_time, parse_time
from router.gateway.accept import accept
from router.pipeline.mapping import split_messages
from router.server.http import (
    HttpError,
    check_content_type,
    client_ip,
    json_response,
    parse_json,
    read_body,
)
from router.server.runtime import Runtime
from router.sources.auth import (
    AuthError,
    Candidate,
    authenticate,
    basic_username,
    candidates,
    narrow,
    verify_write_key,
)

log = logging.getLogger("router.ingest")
TRACKING_TYPES = ("track", "identify", "page", "screen", "alias", "group")


async def process(runtime: Runtime, config: CompiledConfig, mapping: SourceMapping,
                  cand: Candidate, messages: list[Any], meta: dict[str, Any],
                  received: datetime, request: web.Request | None = None) -> web.Response:
    """Acknowledge the request's messages (stage 1) and answer one result per event."""
    settings = config.settings
    if len(messages) > settings.max_batch_events:
        raise HttpError(413, "batch_too_large", f"{len(messages)} events exceed the limit of "
                        f"{settings.max_batch_events} per request")
    runtime.check_backlog()
    wait = request is not None and wants_wait(request)
    answer = await accept(config, runtime.appender, runtime.waiters, mapping, cand.account,
                          cand.environment, messages, meta, iso_time(received) or "", wait)
    runtime.observer.acknowledged(mapping.source, cand.account, cand.environment,
                                  answer.acknowledged or answer.results)
    return json_response(answer.body, answer.status)


def wants_wait(request: web.Request) -> bool:
    """`?wait=true` or `X-Router-Wait: true`: answer with stage 2's decision."""
    value = request.query.get("wait") or request.headers.get("X-Router-Wait") or ""
    if value.lower() in ("", "0", "false", "no"):
        return False
    if value.lower() in ("1", "true", "yes"):
        return True
    raise HttpError(400, "invalid_parameter", f"wait={value!r}: use true or false")


def request_meta(request: web.Request, config: CompiledConfig,
                 mapping: SourceMapping) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "ip": client_ip(request, config.settings.trusted_proxy_header),
        "user_agent": request.headers.get("User-Agent"),
        # browsers send Origin on cross-site POSTs; server SDKs do not
        "origin": request.headers.get("Origin"),
    }
    for name, header in mapping.ingest.meta_headers.items():
        value = request.headers.get(header)
        if value is not None:
            meta[name] = value
    return {k: v for k, v in meta.items() if v is not None}


# --- the Segment-compatible tracking API --------------------------------------------

def correct_skew(message: dict[str, Any], sent_at: Any, received: datetime) -> dict[str, Any]:
    """timestamp = receivedAt - (sentAt - originalTimestamp), never in the future.

    A sender's clock may be wrong; the difference between when it says it sent the
    request and when we received it corrects every event time in the request."""
    sent = parse_time(message.get("sentAt") or sent_at)
    original_raw = message.get("originalTimestamp") or message.get("timestamp")
    original = parse_time(original_raw)
    if sent is None or original is None:
        return message
    corrected = received - (sent - original)
    corrected = min(corrected, received)
    out = dict(message)
    out["originalTimestamp"] = original_raw
    out["timestamp"] = iso_time(corrected)
    out.setdefault("receivedAt", iso_time(received))
    return out


def _tracking_sources(config: CompiledConfig) -> list[SourceMapping]:
    return [m for _, m in sorted(config.mappings.items())
            if "tracking_api" in m.ingest.endpoints]


def resolve_write_key(config: CompiledConfig, key: str | None,
                      sample: dict[str, Any] | None) -> tuple[SourceMapping, Candidate]:
    """Which source and (account, environment) a write key belongs to.

    Distinct write keys per source are the rule; when sources share one, a source's
    `detect` expression claims the message, else the first source without one."""
    matches: list[tuple[SourceMapping, Candidate]] = []
    first_error: AuthError | None = None
    for mapping in _tracking_sources(config):
        scheme = next((s for s in mapping.ingest.auth if s.scheme == "write_key"), None)
        if scheme is None:
            continue
        try:
            matches.append((mapping, verify_write_key(scheme, key, candidates(config,
                                                                               mapping.source))))
        except AuthError as exc:
            first_error = first_error or exc
    if not matches:
        raise first_error or AuthError("invalid_write_key", "unknown write key")
    if len(matches) > 1 and sample is not None:
        for mapping, cand in matches:
            if mapping.ingest.detect is not None and mapping.ingest.detect.search(sample):
                return mapping, cand
        undetected = [m for m in matches if m[0].ingest.detect is None]
        if undetected:
            return undetected[0]
    return matches[0]


async def tracking_api(request: web.Request) -> web.Response:
    runtime: Runtime = request.app["runtime"]
    config = runtime.config
    kind = request.match_info["kind"]
    if kind not in (*TRACKING_TYPES, "batch", "import"):
        raise HttpError(404, "not_found", f"unknown endpoint /v1/{kind}")
    check_content_type(request)
    received = datetime.now(UTC)
    body = await read_body(request, config.settings.max_body_bytes)
    document = parse_json(body)
    if not isinstance(document, dict):
        raise HttpError(400, "malformed_json", "the body must be a JSON object")
    key = basic_username(request.headers.get("Authorization")) or document.get("writeKey")
    if kind in ("batch", "import"):
        messages = document.get("batch")
        if not isinstance(messages, list):
            raise HttpError(400, "malformed_json", "a batch body needs a \"batch\" array")
    else:
        messages = [{**document, "type": document.get("type") or kind}]
    sample = next((m for m in messages if isinstance(m, dict)), None)
    try:
        mapping, cand = resolve_write_key(config, key, sample)
    except AuthError as exc:
        raise HttpError(401, exc.code, exc.message) from None
    messages = [correct_skew(m, document.get("sentAt"), received) if isinstance(m, dict) else m
                for m in messages]
    if document.get("context") and kind in ("batch", "import"):
        messages = [{**m, "context": {**document["context"], **(m.get("context") or {})}}
                    if isinstance(m, dict) else m for m in messages]
    return await process(runtime, config, mapping, cand, messages,
                         request_meta(request, config, mapping), received, request)


# --- signed webhooks ---------------------------------------------------------------

def webhook_pool(config: CompiledConfig, mapping: SourceMapping,
                 request: web.Request) -> list[Candidate]:
    pool = candidates(config, mapping.source)
    spec = mapping.ingest
    if spec.lookup and spec.lookup_header:
        value = (request.headers.get(spec.lookup_header) or "").strip().lower()
        if not value:
            raise AuthError("missing_account", f"missing {spec.lookup_header} header")
        pool = [c for c in pool if (getattr(c.connection, spec.lookup) or "").lower() == value]
        if not pool:
            raise AuthError("unknown_account", f"no account is configured for {value!r}")
    account = request.headers.get(spec.account_header) if spec.account_header else None
    environment = request.headers.get(spec.environment_header) if spec.environment_header \
        else None
    return narrow(pool, account, environment)


async def webhook(request: web.Request) -> web.Response:
    runtime: Runtime = request.app["runtime"]
    config = runtime.config
    source = request.match_info["source"]
    mapping = config.mappings.get(source)
    if mapping is None or "webhook" not in mapping.ingest.endpoints:
        raise HttpError(404, "unknown_source", f"no webhook source named {source!r}")
    check_content_type(request)
    received = datetime.now(UTC)
    body = await read_body(request, config.settings.max_body_bytes)
    try:
        pool = webhook_pool(config, mapping, request)
        cand, _ = authenticate(mapping.ingest.auth, body=body, headers=request.headers,
                               pool=pool, write_key=basic_username(
                                   request.headers.get("Authorization")))
    except AuthError as exc:
        raise HttpError(401, exc.code, exc.message) from None
    document = parse_json(body)
    messages = split_messages(mapping, document)
    return await process(runtime, config, mapping, cand, messages,
                         request_meta(request, config, mapping), received, request)


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/{kind}", tracking_api)
    app.router.add_post("/webhooks/{source}", webhook)


_ = timedelta  # kept for readers: skew correction is a timedelta between two clocks
