"""`router sandbox`: a local stand-in for every destination, driven by their YAML.

Each destination file's `sandbox:` block says which paths the platform serves and how
it answers; this server accepts those requests, records them, and answers like the
platform. Faults (status codes, per-event errors, latency, hangs) are injected through
its own small API, so tests and demos exercise retries, splits and pauses for real:

    POST   /_sandbox/faults    {"destination", "status"?, "times"? (-1: until cleared),
                                "latency_ms"?, "hang"?, "event_errors"?: [index...],
                                "retry_after"?, "match"? (only bodies containing it)}
    DELETE /_sandbox/faults
    GET    /_sandbox/requests  ?destination=NAME
    DELETE /_sandbox/requests
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import orjson
from aiohttp import web

from router.config.model import CompiledConfig, Destination
from router.expr.jmes import Expr, compile_expr
from router.expr.tree import TemplateTree, compile_tree

MAX_RECORDED = 20_000


@dataclass
class Fault:
    status: int | None = None
    times: int = 1  # how many requests it affects; -1 = until cleared
    latency_ms: float = 0.0
    hang: bool = False
    event_errors: list[int] = field(default_factory=list)
    retry_after: str | None = None
    match: str | None = None  # only requests whose raw body contains this text


@dataclass(frozen=True)
class Imitation:
    destination: str
    routes: tuple[tuple[str, re.Pattern[str]], ...]  # (method, compiled path pattern)
    count: Expr | None
    success: Mapping[str, Any]
    event_error: Mapping[str, Any] | None
    error: Mapping[str, Any] | None
    token_path: str | None


def _pattern(path: str) -> re.Pattern[str]:
    """aiohttp-style patterns: {name} matches one segment, {name:regex} a regex."""
    out, pos = "", 0
    for match in re.finditer(r"\{(\w+)(?::([^{}]+))?\}", path):
        out += re.escape(path[pos:match.start()])
        out += f"(?P<{match.group(1)}>{match.group(2) or '[^/]+'})"
        pos = match.end()
    out += re.escape(path[pos:])
    return re.compile(f"^{out}$")


def _reply(spec: Mapping[str, Any] | None) -> dict[str, Any]:
    if not spec:
        return {}
    errors: list[str] = []
    body = compile_tree(spec.get("body"), ("sandbox",), lambda p, m: errors.append(m)) \
        if spec.get("body") is not None else None
    return {"status": spec.get("status", 200), "headers": dict(spec.get("headers") or {}),
            "body": body}


def imitations(config: CompiledConfig) -> list[Imitation]:
    out = []
    for name, dest in sorted(config.destinations.items()):
        sandbox = dest.sandbox
        if not sandbox:
            continue
        out.append(_imitation(name, dest, sandbox))
    return out


def _imitation(name: str, dest: Destination, sandbox: Mapping[str, Any]) -> Imitation:
    routes = tuple((r.get("method", "POST"), _pattern(r["path"])) for r in sandbox["routes"])
    count = compile_expr(sandbox["count"]) if sandbox.get("count") else None
    token = sandbox.get("token")
    return Imitation(name, routes, count, _reply(sandbox["success"]),
                     _reply(sandbox.get("event_error")) or None,
                     _reply(sandbox.get("error")) or None, token["path"] if token else None)


def _specificity(path_regex: str) -> int:
    """Literal characters in a route: /v3/{pixel}/events beats /{version}/{pixel}/events."""
    return len(re.sub(r"\(\?P<\w+>[^)]*\)", "", path_regex))


class Sandbox:
    def __init__(self, config: CompiledConfig):
        self.imitations = imitations(config)
        # every (method, pattern) of every destination, most specific first, so that
        # platforms whose paths overlap are told apart as a real router would
        self.routes = sorted(((m, p, i) for i in self.imitations for m, p in i.routes),
                             key=lambda r: -_specificity(r[1].pattern))
        self.requests: deque[dict[str, Any]] = deque(maxlen=MAX_RECORDED)
        self.faults: dict[str, deque[Fault]] = {}

    def match(self, method: str, path: str) -> Imitation | None:
        for route_method, pattern, imitation in self.routes:
            if route_method == method and pattern.match(path):
                return imitation
        return None

    def next_fault(self, destination: str, raw: bytes) -> Fault | None:
        queue = self.faults.get(destination)
        if not queue:
            return None
        fault = next((f for f in queue if not f.match or f.match.encode() in raw), None)
        if fault is None:
            return None
        if fault.times > 0:
            fault.times -= 1
            if fault.times == 0:
                queue.remove(fault)
        return fault

    # --- handlers ---------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.path.startswith("/_sandbox/"):
            return await self.control(request)
        for imitation in self.imitations:
            if imitation.token_path and request.path == imitation.token_path:
                return web.json_response({"access_token": f"sandbox-token-{int(time.time())}",
                                          "expires_in": 3599, "token_type": "Bearer"})
        imitation = self.match(request.method, request.path)
        raw = await request.read()
        if imitation is None:
            return web.json_response({"error": {"message": f"sandbox: no destination serves "
                                                           f"{request.method} {request.path}"}},
                                     status=404)
        body: Any
        try:
            body = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            body = {k: v[0] for k, v in parse_qs(raw.decode("utf-8", "replace")).items()} \
                if raw else None
        query = {k: v for k, v in request.query.items()}
        count = imitation.count.search({"body": body, "query": query}) if imitation.count else 1
        count = count if isinstance(count, int) else 1
        self.requests.append({
            "destination": imitation.destination, "method": request.method,
            "path": request.path, "query": query,
            "headers": {str(k): v for k, v in request.headers.items()},
            "body": body if body is not None else raw.decode("utf-8", "replace"),
            "count": count, "received_at": time.time()})
        fault = self.next_fault(imitation.destination, raw)
        if fault is not None:
            if fault.hang:
                await asyncio.sleep(3600)
            if fault.latency_ms:
                await asyncio.sleep(fault.latency_ms / 1000)
            if fault.status:
                return self._error(imitation, fault)
            if fault.event_errors and imitation.event_error:
                errors = [{"index": i, "message": f"sandbox: event {i} rejected"}
                          for i in fault.event_errors if i < count]
                return self._render(imitation.event_error,
                                    {"count": count, "body": body, "errors": errors})
        return self._render(imitation.success, {"count": count, "body": body})

    def _render(self, reply: Mapping[str, Any], context: dict[str, Any]) -> web.Response:
        tree: TemplateTree | None = reply.get("body")
        body = tree.render(context, keep_empty=True) if tree is not None else None
        headers = dict(reply.get("headers") or {})
        content_type = next((headers.pop(k) for k in list(headers)
                             if k.lower() == "content-type"), "application/json")
        if body is None:
            return web.Response(status=reply.get("status", 200), headers=headers)
        return web.Response(status=reply.get("status", 200), body=orjson.dumps(body),
                            content_type=content_type.split(";")[0], headers=headers)

    def _error(self, imitation: Imitation, fault: Fault) -> web.Response:
        status = fault.status or 500
        message = f"sandbox: injected {status}"
        headers = {"Retry-After": fault.retry_after} if fault.retry_after else {}
        if imitation.error:
            response = self._render({**imitation.error, "status": status},
                                    {"status": status, "message": message})
            response.headers.update(headers)
            return response
        return web.json_response({"error": {"message": message}}, status=status, headers=headers)

    async def control(self, request: web.Request) -> web.Response:
        path, method = request.path, request.method
        if path == "/_sandbox/requests" and method == "GET":
            dest = request.query.get("destination")
            items = [r for r in self.requests if not dest or r["destination"] == dest]
            return web.json_response({"requests": items}, dumps=lambda o: orjson.dumps(o).decode())
        if path == "/_sandbox/requests" and method == "DELETE":
            self.requests.clear()
            return web.json_response({"cleared": True})
        if path == "/_sandbox/faults" and method == "POST":
            spec = await request.json()
            dest = spec.pop("destination", None)
            if not dest or dest not in {i.destination for i in self.imitations}:
                return web.json_response({"error": {"message": f"unknown destination {dest!r}"}},
                                         status=400)
            fault = Fault(**{k: v for k, v in spec.items() if k in Fault.__dataclass_fields__})
            self.faults.setdefault(dest, deque()).append(fault)
            return web.json_response({"queued": True})
        if path == "/_sandbox/faults" and method == "DELETE":
            self.faults.clear()
            return web.json_response({"cleared": True})
        if path == "/_sandbox/health":
            return web.json_response({"destinations": [i.destination for i in self.imitations]})
        return web.json_response({"error": {"message": "unknown sandbox endpoint"}}, status=404)


def build_sandbox_app(config: CompiledConfig) -> web.Application:
    sandbox = Sandbox(config)
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app["sandbox"] = sandbox
    app.router.add_route("*", "/{tail:.*}", sandbox.handle)
    return app
