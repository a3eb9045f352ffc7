"""The first-party pixel endpoint: POST /collect, its CORS preflight, and /collect.js.

No secret can live in a browser, so the account's Origin allowlist is the check and
requests are rate-limited per client. The server reads and sets the first-party
cookies the pixel's mapping declares (visitor id, click-id cookies built from URL
parameters), captures Sec-GPC, the client IP (behind a trusted proxy header only when
configured) and the user agent, and hands the rest to the same pipeline as every source.
"""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from importlib import resources
from typing import Any

from aiohttp import web

from router.config.model import CompiledConfig, CookieSpec, SourceMapping
from router.expr.functions import query_param
from router.server.http import (
    HttpError,
    check_content_type,
    check_declared_size,
    client_ip,
    parse_json,
)
from router.server.ingest_routes import process, read_request_body
from router.server.runtime import Runtime
from router.sources.auth import Candidate, candidates


def _collect_source(config: CompiledConfig) -> SourceMapping:
    mapping = _find_collect_source(config)
    if mapping is None:
        raise HttpError(404, "not_found", "no source is served at /collect")
    return mapping


def _find_collect_source(config: CompiledConfig) -> SourceMapping | None:
    return next((m for m in config.mappings.values() if "collect" in m.ingest.endpoints), None)


def _candidate(config: CompiledConfig, mapping: SourceMapping, request: web.Request,
               document: Any) -> Candidate:
    account = request.query.get("account") or (
        document.get("account") if isinstance(document, dict) else None)
    environment = request.query.get("environment") or "production"
    if not account:
        raise HttpError(400, "missing_account", "pass ?account=NAME (collect.js sets it)")
    for cand in candidates(config, mapping.source):
        if cand.account == account and cand.environment == environment:
            return cand
    raise HttpError(401, "unknown_account", f"no pixel is configured for {account}/{environment}")


def _origin_ok(cand: Candidate, origin: str | None) -> bool:
    allowed = {o.rstrip("/") for o in cand.connection.origins}
    return bool(origin) and origin.rstrip("/") in allowed


def error_cors(request: web.Request) -> dict[str, str]:
    """CORS headers for an error answered on /collect, so the page can read it — only
    for an Origin the pixel allows (that account's, or any pixel's when the request
    names no known account). Any other origin gets none: echoing every Origin would let
    any site read the router's answers with the visitor's cookies."""
    headers = {"Vary": "Origin"}
    origin = request.headers.get("Origin")
    runtime: Runtime = request.app["runtime"]
    mapping = _find_collect_source(runtime.config)
    if not origin or mapping is None:
        return headers
    pool = candidates(runtime.config, mapping.source)
    account = request.query.get("account")
    environment = request.query.get("environment") or "production"
    named = [c for c in pool if c.account == account and c.environment == environment]
    if any(_origin_ok(cand, origin) for cand in (named or pool)):
        headers.update({"Access-Control-Allow-Origin": origin,
                        "Access-Control-Allow-Credentials": "true"})
    return headers


def _cors(origin: str) -> dict[str, str]:
    return {"Access-Control-Allow-Origin": origin, "Access-Control-Allow-Credentials": "true",
            "Access-Control-Allow-Methods": "POST, OPTIONS",
            "Access-Control-Allow-Headers": "Content-Type", "Access-Control-Max-Age": "600",
            "Vary": "Origin"}


def _cookie_value(spec: CookieSpec, value: str | None) -> str:
    now_ms = int(time.time() * 1000)
    return (spec.format.replace("{uuid}", str(uuid.uuid4()))
            .replace("{ms}", str(now_ms))
            .replace("{rand10}", str(secrets.randbelow(9_000_000_000) + 1_000_000_000))
            .replace("{value}", value or ""))


def read_cookies(mapping: SourceMapping, cookies: Mapping[str, str]) -> dict[str, Any]:
    """_meta from the request's cookies. A name ending in "*" collects every cookie with
    that prefix as {rest of the name: value}: cookies named per container or stream
    (`_ga_<container>`), which the destination picks from by its own id."""
    meta: dict[str, Any] = {}
    for name, cookie in mapping.ingest.read_cookies.items():
        if cookie.endswith("*"):
            prefix = cookie[:-1]
            found = {k[len(prefix):]: v for k, v in sorted(cookies.items())
                     if k.startswith(prefix) and len(k) > len(prefix) and v}
            if found:
                meta[name] = found
        elif cookies.get(cookie):
            meta[name] = cookies[cookie]
    return meta


def cookie_plan(mapping: SourceMapping, request: web.Request, page_url: str | None
                ) -> tuple[dict[str, Any], dict[str, tuple[str, bool, int | None]]]:
    """(_meta from cookies, cookies to set: name -> (value, http_only, max_age_days)).

    A from_query cookie (a click id) is written only when the page URL carries a value it
    does not already hold, so its lifetime counts from the click, and it keeps the click
    id for later pages and events that arrive without it in their URL."""
    meta = read_cookies(mapping, request.cookies)
    to_set: dict[str, tuple[str, bool, int | None]] = {}
    for spec in mapping.ingest.set_cookies:
        current = request.cookies.get(spec.name)
        if spec.from_query:
            param = query_param(page_url, spec.from_query) if page_url else None
            if param and not (current and (current == param or current.endswith("." + param))):
                current = _cookie_value(spec, param)
                to_set[spec.name] = (current, spec.http_only, spec.max_age_days)
        elif not current:
            current = _cookie_value(spec, None)
            to_set[spec.name] = (current, spec.http_only, spec.max_age_days)
        if current:
            meta[spec.meta] = current
    return meta, to_set


async def preflight(request: web.Request) -> web.Response:
    runtime: Runtime = request.app["runtime"]
    config = runtime.config
    mapping = _collect_source(config)
    cand = _candidate(config, mapping, request, None)
    origin = request.headers.get("Origin")
    if not _origin_ok(cand, origin):
        raise HttpError(401, "origin_not_allowed", f"origin {origin!r} is not allowed")
    return web.Response(status=204, headers=_cors(origin or ""))


async def collect(request: web.Request) -> web.Response:
    runtime: Runtime = request.app["runtime"]
    config = runtime.config
    mapping = _collect_source(config)
    settings = config.settings
    origin = request.headers.get("Origin")
    ip = client_ip(request, settings.trusted_proxy_header)
    if not runtime.pixel_limiter.allow(ip or "unknown"):
        raise HttpError(429, "rate_limited", "too many pixel requests from this client")
    check_content_type(request)
    check_declared_size(request, settings.max_body_bytes)
    cand = None
    if request.query.get("account"):  # collect.js always names it: judged before the body
        cand = _allowed_candidate(config, mapping, request, None, origin)
    # no secret can live in a browser: every pixel body is read unauthenticated
    body = await read_request_body(request, runtime, authenticated=False)
    document = parse_json(body)
    if cand is None:
        cand = _allowed_candidate(config, mapping, request, document, origin)
    messages = document.get("batch") if isinstance(document, dict) and \
        isinstance(document.get("batch"), list) else [document]
    first_page = next((m["page"].get("url") for m in messages
                       if isinstance(m, dict) and isinstance(m.get("page"), dict)), None)
    cookie_meta, to_set = cookie_plan(mapping, request,
                                      first_page if isinstance(first_page, str) else None)
    meta = {"ip": ip, "user_agent": request.headers.get("User-Agent"), **cookie_meta}
    if request.headers.get("Sec-GPC", "").strip() == "1":
        meta["gpc"] = True
    meta = {k: v for k, v in meta.items() if v is not None}
    with runtime.gate.slot(settings.max_inflight_requests):
        response = await process(runtime, config, mapping, cand, messages, meta,
                                 datetime.now(UTC), request=request)
    for key, value in _cors(origin or "").items():
        response.headers[key] = value
    for name, (value, http_only, days) in to_set.items():
        response.set_cookie(name, value, max_age=(days or settings.cookie_max_age_days) * 86400,
                            path="/", secure=True, httponly=http_only, samesite="Lax",
                            domain=settings.cookie_domain)
    return response


def _allowed_candidate(config: CompiledConfig, mapping: SourceMapping, request: web.Request,
                       document: Any, origin: str | None) -> Candidate:
    cand = _candidate(config, mapping, request, document)
    if not _origin_ok(cand, origin):
        raise HttpError(401, "origin_not_allowed", f"origin {origin!r} is not allowed for "
                        f"{cand.account}/{cand.environment}")
    return cand


async def collect_js(request: web.Request) -> web.Response:
    text = resources.files("router.server").joinpath("static/collect.js").read_text()
    return web.Response(text=text, content_type="application/javascript",
                        headers={"Cache-Control": "public, max-age=3600"})


def add_routes(app: web.Application) -> None:
    app.router.add_post("/collect", collect)
    app.router.add_route("OPTIONS", "/collect", preflight)
    app.router.add_get("/collect.js", collect_js)
