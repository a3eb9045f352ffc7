"""Ingest endpoints: the Segment-compatible tracking API and signed webhooks.

Each request: what the headers can decide (size declared, credentials: a write key in
the Basic header, a static secret, the form and freshness of a signature), then the body
(size limit, gzip, a deadline; a body read before its sender is authenticated counts
against a per-client bound), then what needs the body (a signature, a write key in the
body, the JSON envelope), and only then a processing slot (load shedding). The gateway
then screens each message on its own (router/gateway/accept.py: envelope checks, the
request's adjustments, the card screen, its event id), appends the good ones to the inbox
durably and answers per message (stage 1). A bad event is rejected alone; the good ones
are stored. Stage 2 (mapping, dedup, routing) runs after the answer.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from router.config.model import CompiledConfig, SourceMapping
from router.expr.functions import iso_time, parse_time
from router.gateway.accept import Adjust, accept
from router.gateway.envelope import scalar_id
from router.pipeline.mapping import split_messages
from router.server.http import (
    HttpError,
    check_content_type,
    check_declared_size,
    client_ip,
    json_response,
    parse_json,
    read_body,
)
from router.server.runtime import Runtime
from router.sources.auth import (
    AuthError,
    Candidate,
    PendingSignature,
    authenticate_headers,
    basic_username,
    candidates,
    narrow,
    verify_signature,
    verify_write_key,
)
from router.sources.replay import ReplayCache

TRACKING_TYPES = ("track", "identify", "page", "screen", "alias", "group")


async def process(runtime: Runtime, config: CompiledConfig, mapping: SourceMapping,
                  cand: Candidate, messages: list[Any], meta: dict[str, Any],
                  received: datetime, adjust: Adjust | None = None,
                  request: web.Request | None = None) -> web.Response:
    """Acknowledge the request's messages (stage 1) and answer one result per event."""
    settings = config.settings
    if len(messages) > settings.max_batch_events:
        raise HttpError(413, "batch_too_large", f"{len(messages)} events exceed the limit of "
                        f"{settings.max_batch_events} per request")
    runtime.check_backlog()
    wait = request is not None and wants_wait(request)
    answer = await accept(config, runtime.appender, runtime.waiters, mapping, cand.account,
                          cand.environment, messages, meta, iso_time(received) or "", wait,
                          adjust)
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


async def read_request_body(request: web.Request, runtime: Runtime,
                            authenticated: bool) -> bytes:
    """The body, with its deadline; counted against the client's bound on bodies read
    before authentication when the sender is not known yet."""
    settings = runtime.config.settings
    if authenticated:
        return await read_body(request, settings.max_body_bytes, settings.body_timeout_seconds)
    with runtime.gate.unauthenticated(client_ip(request, settings.trusted_proxy_header),
                                      settings.unauthenticated_bodies_per_client):
        return await read_body(request, settings.max_body_bytes, settings.body_timeout_seconds)


# --- the Segment-compatible tracking API --------------------------------------------

def correct_skew(message: dict[str, Any], sent_at: Any, received: datetime) -> dict[str, Any]:
    """timestamp = receivedAt - (sentAt - originalTimestamp), never in the future.

    A sender's clock may be wrong; the difference between when it says it sent the
    request and when we received it corrects every event time in the request."""
    sent_raw = message.get("sentAt") or sent_at
    if not sent_raw:  # nothing to correct with (most server SDKs' single calls)
        return message
    sent = parse_time(sent_raw)
    original_raw = message.get("originalTimestamp") or message.get("timestamp")
    original = parse_time(original_raw)
    if sent is None or original is None:
        return message
    try:
        corrected = received - (sent - original)
    except OverflowError:  # clocks thousands of years apart: nothing to correct with
        return message
    corrected = min(corrected, received)
    out = dict(message)
    out["originalTimestamp"] = original_raw
    out["timestamp"] = iso_time(corrected)
    out.setdefault("receivedAt", iso_time(received))
    return out


def tracking_adjust(document: dict[str, Any], batch: bool, received: datetime) -> Adjust:
    """Per message of a tracking request: skew correction, and the batch's context
    merged under the message's own (the message's keys win)."""
    sent_at = document.get("sentAt")
    shared = document.get("context") if batch else None

    def adjust(message: dict[str, Any]) -> dict[str, Any]:
        message = correct_skew(message, sent_at, received)
        if shared:
            message = {**message, "context": {**shared, **(message.get("context") or {})}}
        return message

    return adjust


def _tracking_sources(config: CompiledConfig) -> list[SourceMapping]:
    return [m for _, m in sorted(config.mappings.items())
            if "tracking_api" in m.ingest.endpoints]


def write_key_matches(config: CompiledConfig,
                      key: str | None) -> list[tuple[SourceMapping, Candidate]]:
    """Every (source, account/environment) the write key belongs to; 401 when none.

    The answer for a key is remembered per compiled config (a reload starts afresh), by
    the key's SHA-256: a lookup never compares secret material byte by byte, and the
    constant-time comparison runs once per key rather than on every request."""
    if not key:
        return _match_write_key(config, key)
    cache = _WRITE_KEYS.get(id(config))
    if cache is None or cache[0] is not config:
        if len(_WRITE_KEYS) > 8:  # configs of earlier reloads
            _WRITE_KEYS.clear()
        cache = _WRITE_KEYS[id(config)] = (config, {})
    digest = hashlib.sha256(key.encode()).digest()
    found = cache[1].get(digest)
    if found is None:
        try:
            found = _match_write_key(config, key)
        except AuthError as exc:
            found = exc
        if len(cache[1]) >= WRITE_KEY_CACHE:  # unknown keys must not grow it without bound
            cache[1].clear()
        cache[1][digest] = found
    if isinstance(found, AuthError):
        raise AuthError(found.code, found.message)
    return found


WRITE_KEY_CACHE = 10_000
# id(config) -> (config, {sha256(key): matches or the AuthError}); holding the config
# keeps its id from being reused while its entry lives
_WRITE_KEYS: dict[int, tuple[CompiledConfig, dict[bytes, Any]]] = {}


def _match_write_key(config: CompiledConfig,
                     key: str | None) -> list[tuple[SourceMapping, Candidate]]:
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
    return matches


def choose_source(matches: list[tuple[SourceMapping, Candidate]],
                  sample: dict[str, Any] | None) -> tuple[SourceMapping, Candidate]:
    """Distinct write keys per source are the rule; when sources share one, a source's
    `detect` expression claims the message, else the first source without one."""
    if len(matches) > 1 and sample is not None:
        for mapping, cand in matches:
            if mapping.ingest.detect is not None and _detects(mapping, sample):
                return mapping, cand
        undetected = [m for m in matches if m[0].ingest.detect is None]
        if undetected:
            return undetected[0]
    return matches[0]


def _detects(mapping: SourceMapping, sample: dict[str, Any]) -> bool:
    assert mapping.ingest.detect is not None
    try:
        return bool(mapping.ingest.detect.search(sample))
    except Exception:  # an odd first message claims nothing; it is judged on its own
        return False


def resolve_write_key(config: CompiledConfig, key: str | None,
                      sample: dict[str, Any] | None) -> tuple[SourceMapping, Candidate]:
    """Which source and (account, environment) a write key belongs to."""
    return choose_source(write_key_matches(config, key), sample)


async def tracking_api(request: web.Request) -> web.Response:
    runtime: Runtime = request.app["runtime"]
    config = runtime.config
    settings = config.settings
    kind = request.match_info["kind"]
    if kind not in (*TRACKING_TYPES, "batch", "import"):
        raise HttpError(404, "not_found", f"unknown endpoint /v1/{kind}")
    check_content_type(request)
    check_declared_size(request, settings.max_body_bytes)
    received = datetime.now(UTC)
    header_key = basic_username(request.headers.get("Authorization"))
    try:
        # a write key in the Basic header is checked before the body is read
        matches = write_key_matches(config, header_key) if header_key else None
    except AuthError as exc:
        raise HttpError(401, exc.code, exc.message) from None
    body = await read_request_body(request, runtime, authenticated=matches is not None)
    document = parse_json(body)
    if not isinstance(document, dict):
        raise HttpError(400, "malformed_json", "the body must be a JSON object")
    batch = kind in ("batch", "import")
    if batch:
        messages = document.get("batch")
        if not isinstance(messages, list):
            raise HttpError(400, "malformed_json", "a batch body needs a \"batch\" array")
        context = document.get("context")
        if context is not None and not isinstance(context, dict):
            raise HttpError(400, "invalid_envelope", "the batch's context must be an object")
    else:
        messages = [{**document, "type": document.get("type") or kind}]
    if matches is None:
        key = document.get("writeKey")
        if key is not None and not isinstance(key, str):
            raise HttpError(400, "invalid_envelope", "writeKey must be a string")
        try:
            matches = write_key_matches(config, key)
        except AuthError as exc:
            raise HttpError(401, exc.code, exc.message) from None
    mapping, cand = choose_source(matches, next((m for m in messages if isinstance(m, dict)),
                                                None))
    with runtime.gate.slot(settings.max_inflight_requests):
        return await process(runtime, config, mapping, cand, messages,
                             request_meta(request, config, mapping), received,
                             tracking_adjust(document, batch, received), request)


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
    settings = config.settings
    source = request.match_info["source"]
    mapping = config.mappings.get(source)
    if mapping is None or "webhook" not in mapping.ingest.endpoints:
        raise HttpError(404, "unknown_source", f"no webhook source named {source!r}")
    check_content_type(request)
    check_declared_size(request, settings.max_body_bytes)
    received = datetime.now(UTC)
    try:
        pool = webhook_pool(config, mapping, request)
        verdict = authenticate_headers(mapping.ingest.auth, headers=request.headers, pool=pool,
                                       write_key=basic_username(
                                           request.headers.get("Authorization")))
    except AuthError as exc:
        raise HttpError(401, exc.code, exc.message) from None
    pending = verdict if isinstance(verdict, PendingSignature) else None
    body = await read_request_body(request, runtime, authenticated=pending is None)
    if pending is not None:
        try:
            cand = verify_signature(pending, body, pool)
        except AuthError as exc:
            raise HttpError(401, exc.code, exc.message) from None
    else:
        assert not isinstance(verdict, PendingSignature)
        cand = verdict[0]
    document = parse_json(body)
    messages = split_messages(mapping, document)
    replay_key = _replay_key(settings.replay_window_seconds, source, pending)
    if replay_key is not None and runtime.replays.seen(replay_key):
        return replayed(runtime, mapping, messages)
    with runtime.gate.slot(settings.max_inflight_requests):
        response = await process(runtime, config, mapping, cand, messages,
                                 request_meta(request, config, mapping), received,
                                 request=request)
    if replay_key is not None:
        runtime.replays.remember(replay_key, settings.replay_window_seconds)
    return response


def _replay_key(window: float, source: str, pending: PendingSignature | None) -> bytes | None:
    """Only signatures without a timestamp need the replay cache, and only when on."""
    if not window or pending is None or pending.timestamp is not None:
        return None
    return ReplayCache.key(source, pending.signature)


def replayed(runtime: Runtime, mapping: SourceMapping, messages: list[Any]) -> web.Response:
    """A signed request accepted before, sent again within the replay window: nothing is
    stored, and the answer is a success (a sender retrying a request whose answer it
    lost must not count it as failed), each message a duplicate."""
    results = [{"event_id": scalar_id(m), "status": "duplicate",
                "reason": "replay of a signed request already accepted (same signature)"}
               for m in messages]
    runtime.metrics.count_results(mapping.source, results)
    return json_response({"results": results})


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/{kind}", tracking_api)
    app.router.add_post("/webhooks/{source}", webhook)

