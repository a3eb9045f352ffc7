"""The admin API (bearer token): an Event with its whole story, search, alerts,
reports, the live stream, and the operator's actions (resume, replay).

GET /admin/events/{event_id} answers "did Meta get order 548291, once, with which
identifiers?": the Event, its Deliveries (queued, dropped with reason, or outcomes)
with every attempt, the dedup evidence (which keys matched, who came first, what was
merged) and the person the identity graph links it to. A duplicate's id leads to the
Event it merged into. The response shapes are a contract (docs/operations.md#admin-api)
the console renders; every parameter is checked and a bad one is a 400 with a code.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import time
from collections.abc import Collection, Mapping
from dataclasses import asdict
from typing import Any

import orjson
from aiohttp import web

from router.expr.functions import iso_time
from router.ops import reports
from router.ops.detectors import KINDS
from router.ops.feed import CLOSED, FILTERS, STATUSES, TYPES, FeedFilter
from router.ops.search import (
    EVENT_FILTERS,
    QueryError,
    check_filters,
    choice,
    known_sources,
    parse_bool,
    parse_event_search,
    parse_limit,
    parse_when,
    resolve,
)
from router.server.http import HttpError, json_response, parse_json, read_body
from router.server.runtime import Runtime
from router.store.base import EventQuery, StoredEvent

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


def _params(request: web.Request, known: Collection[str]) -> dict[str, str]:
    """The query parameters, each known and given once (else a 400)."""
    query = request.query
    try:
        check_filters(query.keys(), known)
    except QueryError as exc:
        raise HttpError(400, exc.code, exc.message) from None
    for key in query:
        if len(query.getall(key)) > 1:
            raise HttpError(400, "invalid_parameter", f"{key} is given more than once")
    return {k: query[k] for k in query}


def _bad(exc: QueryError) -> HttpError:
    return HttpError(400, exc.code, exc.message)


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
    params = _params(request, ("account",))
    event_id = request.match_info["event_id"]
    account = params.get("account")
    found = await store.get_events(event_id, account)
    via_duplicate = False
    if not found:  # the id of a duplicate leads to the Event it merged into
        found = list(reversed(await store.search_events(EventQuery(
            event_id=event_id, account=account, limit=100))))
        via_duplicate = bool(found)
    if not found:
        raise HttpError(404, "not_found", "no event with that event_id (nor a duplicate "
                        "merged into one)")
    out = await event_stories(runtime, found)
    if via_duplicate:
        for story in out:
            story["found_by"] = {"duplicate_event_id": event_id}
    return json_response(out[0] if len(out) == 1 else {"matches": out})


async def event_stories(runtime: Runtime, found: list[StoredEvent]) -> list[dict[str, Any]]:
    store = runtime.store
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
    return out


def _delivery_json(delivery: Any) -> dict[str, Any]:
    data = asdict(delivery)
    return {k: v for k, v in data.items() if v is not None}


async def list_events(request: web.Request) -> web.Response:
    """Search: every filter must match; newest first; `next_cursor` pages on."""
    runtime: Runtime = request.app["runtime"]
    config = runtime.config
    params = _params(request, EVENT_FILTERS)
    try:
        search = parse_event_search(config, params)
    except QueryError as exc:
        raise _bad(exc) from None
    query = await resolve(runtime.store, search, config.accounts)
    events = await runtime.store.search_events(query)
    rejected = [e for e in events if e.row.status == "rejected"]
    summaries = [event_summary(e) for e in events]
    if rejected:
        codes = {e.seq: (e.row.evidence.get("rejection") or {}).get("code") for e in rejected}
        for summary in summaries:
            if summary["seq"] in codes:
                summary["code"] = codes[summary["seq"]]
    more = len(events) == query.limit
    return json_response({"events": summaries,
                          "next_cursor": str(events[-1].seq) if more and events else None})


DELIVERY_FILTERS = ("status", "destination", "account", "since", "limit")


async def list_deliveries(request: web.Request) -> web.Response:
    runtime: Runtime = request.app["runtime"]
    config = runtime.config
    params = _params(request, DELIVERY_FILTERS)
    try:
        since = parse_when("since", params["since"], time.time()) if params.get("since") \
            else None
        status = choice("status", params["status"], ("queued", "failed", "delivered",
                                                     "dropped")) if params.get("status") else None
        destination = choice("destination", params["destination"], config.destinations) \
            if params.get("destination") else None
        account = choice("account", params["account"], config.accounts) \
            if params.get("account") else None
        limit = parse_limit(params.get("limit"))
    except QueryError as exc:
        raise _bad(exc) from None
    deliveries = await runtime.store.list_deliveries(
        status=status, destination=destination, since=_iso(since), account=account,
        limit=limit)
    return json_response({"deliveries": [_delivery_json(d) for d in deliveries]})


def _iso(ts: float | None) -> str | None:
    return iso_time(ts) if ts is not None else None


async def get_config(request: web.Request) -> web.Response:
    runtime: Runtime = request.app["runtime"]
    _params(request, ())
    config = runtime.config
    return json_response({
        "config_hash": config.config_hash, "root": config.root,
        "mappings": {k: m.version_tag for k, m in config.mappings.items()},
        "destinations": {k: d.version_tag for k, d in config.destinations.items()},
        "canonical_version": config.canonical_version,
        "accounts": sorted(config.accounts)})


async def list_pauses(request: web.Request) -> web.Response:
    runtime: Runtime = request.app["runtime"]
    _params(request, ())
    return json_response({"pauses": [asdict(p) for p in await runtime.store.pauses()]})


ALERT_FILTERS = ("open", "kind", "subject", "limit")


def alert_json(alert: Any) -> dict[str, Any]:
    return {"id": alert.id, "kind": alert.kind, "subject": alert.subject,
            "opened_at": alert.opened_at, "updated_at": alert.updated_at,
            "resolved_at": alert.resolved_at, "detail": dict(alert.detail)}


async def list_alerts(request: web.Request) -> web.Response:
    """`?open=true` for the ones still open; `?kind=`, `?subject=` to filter."""
    runtime: Runtime = request.app["runtime"]
    params = _params(request, ALERT_FILTERS)
    try:
        open_only = parse_bool("open", params.get("open", "false"))
        kind = choice("kind", params["kind"], KINDS) if params.get("kind") else None
        limit = parse_limit(params.get("limit"))
    except QueryError as exc:
        raise _bad(exc) from None
    alerts = await runtime.store.alerts(open_only=open_only, kind=kind, limit=limit,
                                        subject=params.get("subject") or None)
    status = runtime.alerting.status() if runtime.alerting is not None else None
    return json_response({"alerts": [alert_json(a) for a in alerts],
                          **({"detectors": status} if status is not None else {})})


async def get_alert(request: web.Request) -> web.Response:
    """One alert with its history: opened, updated, resolved, and what each channel did."""
    runtime: Runtime = request.app["runtime"]
    _params(request, ())
    raw = request.match_info["alert_id"]
    if not raw.isdigit():
        raise HttpError(400, "invalid_parameter", "an alert id is a number")
    alert = await runtime.store.alert(int(raw))
    if alert is None:
        raise HttpError(404, "not_found", f"no alert {raw}")
    history = await runtime.store.alert_log(alert_id=alert.id, limit=1000)
    return json_response({**alert_json(alert), "history": [
        {"id": h.id, "at": h.at, "action": h.action, "detail": dict(h.detail),
         "notified_at": h.notified_at,
         "notified": dict(h.notified) if h.notified is not None else None} for h in history]})


# --- reports ----------------------------------------------------------------------------

REPORTS = {"channel-accuracy": (reports.accuracy_report, reports.ACCURACY_FILTERS),
           "identifier-coverage": (reports.coverage_report, reports.COVERAGE_FILTERS),
           "queue": (reports.queue_report, reports.QUEUE_FILTERS)}


async def report(request: web.Request) -> web.Response:
    runtime: Runtime = request.app["runtime"]
    name = request.match_info["name"]
    if name not in REPORTS:
        raise HttpError(404, "not_found", f"no report {name!r}: reports are "
                        f"{', '.join(REPORTS)}")
    build, known = REPORTS[name]
    params = _params(request, known)
    try:
        return json_response(await build(runtime.store, runtime.config, params))
    except QueryError as exc:
        raise _bad(exc) from None


# --- the live stream --------------------------------------------------------------------

KEEPALIVE_SECONDS = 15.0


def stream_filter(runtime: Runtime, params: Mapping[str, str]) -> FeedFilter:
    config = runtime.config
    allowed: dict[str, Collection[str]] = {
        "type": TYPES, "status": STATUSES, "event": config.canonical,
        "destination": config.destinations, "account": config.accounts,
        "environment": {e for a in config.accounts.values() for e in a.environments},
        "source": known_sources(config)}
    values = {}
    for key, value in params.items():
        try:
            values[key] = choice(key, value.strip(), allowed[key])
        except QueryError as exc:
            raise _bad(exc) from None
    return FeedFilter(**values)


def sse(item: Mapping[str, Any], event: str | None = None) -> bytes:
    head = f"id: {item['id']}\n" if "id" in item else ""
    name = event or str(item.get("type") or "message")
    return f"{head}event: {name}\ndata: ".encode() + orjson.dumps(item) + b"\n\n"


async def stream(request: web.Request) -> web.StreamResponse:
    """Server-Sent Events: each event decided and each delivery outcome in this process,
    as it happens. Filters as for `router tail`; `Last-Event-ID` resumes after a short
    disconnection; a comment every 15 s keeps proxies from closing an idle stream."""
    runtime: Runtime = request.app["runtime"]
    wanted = stream_filter(runtime, _params(request, FILTERS))
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-cache",
                                           "X-Accel-Buffering": "no"})
    await response.prepare(request)
    subscription = runtime.feed.subscribe(wanted, request.headers.get("Last-Event-ID"))
    try:
        await response.write(b"retry: 1000\n: connected\n\n")
        while True:
            item = await subscription.next(KEEPALIVE_SECONDS)
            if item is CLOSED:
                break
            if subscription.lost:
                await response.write(sse({"type": "lost", "lost": subscription.lost}, "lost"))
                subscription.lost = 0
            await response.write(sse(item) if item is not None else b": keepalive\n\n")
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    finally:
        subscription.close()
    with contextlib.suppress(ConnectionResetError):
        await response.write_eof()
    return response


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


async def resume(request: web.Request) -> web.Response:
    runtime: Runtime = request.app["runtime"]
    body = await _json_body(request)
    try:
        check_filters(body, ("destination", "account"))
    except QueryError as exc:
        raise _bad(exc) from None
    for key in ("destination", "account"):
        if body.get(key) is not None and not isinstance(body[key], str):
            raise HttpError(400, "invalid_parameter", f"{key} must be a string")
    lifted = await runtime.resume(body.get("destination"), body.get("account"), "admin API")
    return json_response({"resumed": lifted})


async def replay(request: web.Request) -> web.Response:
    runtime: Runtime = request.app["runtime"]
    body = await _json_body(request)
    try:
        check_filters(body, ("since", "destination", "status", "event_id", "account"))
        statuses = body.get("status", ["failed", "dropped"])
        if isinstance(statuses, str):
            statuses = [s.strip() for s in statuses.split(",") if s.strip()]
        if not isinstance(statuses, list) or not statuses:
            raise QueryError("invalid_parameter", "status is a list of delivery statuses")
        for status in statuses:
            choice("status", str(status), ("queued", "failed", "delivered", "dropped"))
        since = parse_when("since", str(body["since"]), time.time()) if body.get("since") \
            else None
    except QueryError as exc:
        raise _bad(exc) from None
    count = await runtime.store.requeue(
        since=_iso(since), destination=_text(body, "destination"),
        statuses=tuple(statuses), event_id=_text(body, "event_id"),
        account=_text(body, "account"))
    return json_response({"requeued": count})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/admin/pauses", list_pauses)
    app.router.add_get("/admin/alerts", list_alerts)
    app.router.add_get("/admin/alerts/{alert_id}", get_alert)
    app.router.add_get("/admin/stream", stream)
    app.router.add_get("/admin/reports/{name}", report)
    app.router.add_post("/admin/resume", resume)
    app.router.add_post("/admin/replay", replay)
    app.router.add_get("/admin/events", list_events)
    app.router.add_get("/admin/events/{event_id}", get_event)
    app.router.add_get("/admin/deliveries", list_deliveries)
    app.router.add_get("/admin/config", get_config)
