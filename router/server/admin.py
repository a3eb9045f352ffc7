"""The admin API (bearer token): an Event with its whole story, and listings.

GET /admin/events/{event_id} answers "did Meta get order 548291, once, with which
identifiers?": the Event, its Deliveries (queued, dropped with reason, or outcomes),
the dedup evidence (which keys matched, who came first, what was merged) and the
person the identity graph links it to.
"""

from __future__ import annotations

import hmac
from dataclasses import asdict
from typing import Any

from aiohttp import web

from router.expr.functions import iso_time
from router.server.http import HttpError, json_response, parse_json, read_body
from router.server.runtime import Runtime
from router.store.base import StoredEvent

MAX_LIMIT = 1000
ADMIN_BODY_BYTES = 65536


@web.middleware
async def require_token(request: web.Request, handler: Any) -> web.StreamResponse:
    if request.path.startswith("/admin"):
        runtime: Runtime = request.app["runtime"]
        token = runtime.config.settings.admin_token
        if not token:
            raise HttpError(403, "admin_disabled",
                            "the admin API is disabled: set ROUTER_ADMIN_TOKEN")
        given = request.headers.get("Authorization", "")
        if not given.startswith("Bearer ") or not hmac.compare_digest(
                given[7:].strip().encode(), token.encode()):
            raise HttpError(401, "invalid_token", "missing or wrong admin bearer token")
    return await handler(request)


def _since(value: str | None) -> str | None:
    if not value:
        return None
    parsed = iso_time(value)
    if parsed is None:
        raise HttpError(400, "invalid_parameter", f"since={value!r} is not a time")
    return parsed


def _limit(request: web.Request) -> int:
    try:
        return max(1, min(MAX_LIMIT, int(request.query.get("limit", "100"))))
    except ValueError:
        raise HttpError(400, "invalid_parameter", "limit must be an integer") from None


def event_summary(stored: StoredEvent) -> dict[str, Any]:
    row = stored.row
    return {"seq": stored.seq, "account": row.account, "environment": row.environment,
            "event_id": row.event_id, "event_name": row.event_name, "source": row.source,
            "source_event": row.source_event, "status": row.status,
            "occurred_at": row.occurred_at, "received_at": row.received_at,
            "duplicates": len(row.evidence.get("duplicates", []))}


async def get_event(request: web.Request) -> web.Response:
    runtime: Runtime = request.app["runtime"]
    store = runtime.store
    found = await store.get_events(request.match_info["event_id"], request.query.get("account"))
    if not found:
        raise HttpError(404, "not_found", "no event with that event_id")
    seqs = [s.seq for s in found]
    deliveries = await store.deliveries_for(seqs)
    history = await store.attempts_for(seqs)
    out = []
    for stored in found:
        row = stored.row
        identity: dict[str, Any] = dict(row.evidence.get("identity") or {})
        person = identity.get("person")
        if person:
            view = await store.identity_of(row.account, [person])
            identity["profile"] = view.profiles.get(view.roots.get(person, person), {})
        out.append({
            **event_summary(stored),
            "event": row.body,
            "dedup": {k: v for k, v in row.evidence.items() if k != "identity"},
            "identity": identity,
            "release_at": row.release_at,
            **({"raw": row.raw} if row.raw is not None else {}),
            "deliveries": [{**_delivery_json(d), "history": [
                {k: v for k, v in asdict(a).items() if v is not None}
                for a in history.get((d.event_seq, d.destination), [])]}
                for d in deliveries if d.event_seq == stored.seq],
        })
    return json_response(out[0] if len(out) == 1 else {"matches": out})


def _delivery_json(delivery: Any) -> dict[str, Any]:
    data = asdict(delivery)
    return {k: v for k, v in data.items() if v is not None}


async def list_events(request: web.Request) -> web.Response:
    runtime: Runtime = request.app["runtime"]
    q = request.query
    events = await runtime.store.list_events(
        name=q.get("name"), source=q.get("source"), since=_since(q.get("since")),
        account=q.get("account"), status=q.get("status"), limit=_limit(request))
    return json_response({"events": [event_summary(e) for e in events]})


async def list_deliveries(request: web.Request) -> web.Response:
    runtime: Runtime = request.app["runtime"]
    q = request.query
    deliveries = await runtime.store.list_deliveries(
        status=q.get("status"), destination=q.get("destination"), since=_since(q.get("since")),
        account=q.get("account"), limit=_limit(request))
    return json_response({"deliveries": [_delivery_json(d) for d in deliveries]})


async def get_config(request: web.Request) -> web.Response:
    runtime: Runtime = request.app["runtime"]
    config = runtime.config
    return json_response({
        "config_hash": config.config_hash, "root": config.root,
        "mappings": {k: m.version_tag for k, m in config.mappings.items()},
        "destinations": {k: d.version_tag for k, d in config.destinations.items()},
        "canonical_version": config.canonical_version,
        "accounts": sorted(config.accounts)})


async def list_pauses(request: web.Request) -> web.Response:
    runtime: Runtime = request.app["runtime"]
    return json_response({"pauses": [asdict(p) for p in await runtime.store.pauses()]})


async def list_alerts(request: web.Request) -> web.Response:
    """`?open=true` for the ones still open; `?kind=` to filter."""
    runtime: Runtime = request.app["runtime"]
    open_only = request.query.get("open", "").lower() in ("1", "true", "yes")
    alerts = await runtime.store.alerts(open_only=open_only, kind=request.query.get("kind"),
                                        limit=_limit(request))
    return json_response({"alerts": [asdict(a) for a in alerts]})


async def _json_body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    runtime: Runtime = request.app["runtime"]
    raw = await read_body(request, ADMIN_BODY_BYTES, runtime.config.settings.body_timeout_seconds)
    if not raw.strip():
        return {}
    body = parse_json(raw)
    if not isinstance(body, dict):
        raise HttpError(400, "malformed_json", "body must be a JSON object")
    return body


def _text(body: dict[str, Any], name: str) -> str | None:
    """An optional string field of an admin body; any other type is a 400."""
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise HttpError(400, "invalid_parameter", f"{name} must be a string")
    return value


def _statuses(body: dict[str, Any]) -> tuple[str, ...]:
    value = body.get("status", ["failed", "dropped"])
    if isinstance(value, str):
        return tuple(s.strip() for s in value.split(","))
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise HttpError(400, "invalid_parameter",
                        "status must be a string or a list of strings")
    return tuple(value)


async def resume(request: web.Request) -> web.Response:
    runtime: Runtime = request.app["runtime"]
    body = await _json_body(request)
    lifted = await runtime.store.resume(_text(body, "destination"), _text(body, "account"))
    return json_response({"resumed": lifted})


async def replay(request: web.Request) -> web.Response:
    runtime: Runtime = request.app["runtime"]
    body = await _json_body(request)
    count = await runtime.store.requeue(
        since=_since(_text(body, "since")), destination=_text(body, "destination"),
        statuses=_statuses(body), event_id=_text(body, "event_id"),
        account=_text(body, "account"))
    return json_response({"requeued": count})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/admin/pauses", list_pauses)
    app.router.add_get("/admin/alerts", list_alerts)
    app.router.add_post("/admin/resume", resume)
    app.router.add_post("/admin/replay", replay)
    app.router.add_get("/admin/events", list_events)
    app.router.add_get("/admin/events/{event_id}", get_event)
    app.router.add_get("/admin/deliveries", list_deliveries)
    app.router.add_get("/admin/config", get_config)
