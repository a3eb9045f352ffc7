"""The aiohttp application: ingest routes, the pixel, the admin API, health, metrics."""

from __future__ import annotations

import logging
import time
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from router.server import admin, collect, ingest_routes
from router.server.http import HttpError, error_response, json_response
from router.server.runtime import Runtime

log = logging.getLogger("router.server")


@web.middleware
async def errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """Every client error is JSON with a stable code; nothing leaks a stack trace."""
    started = time.perf_counter()
    code = "500"
    try:
        response = await handler(request)
        code = str(response.status)
        return response
    except HttpError as exc:
        code = str(exc.status)
        headers = collect.error_cors(request) if request.path == "/collect" else None
        return error_response(exc, headers)
    except web.HTTPException as exc:
        code = str(exc.status)
        if exc.status >= 400:
            return error_response(HttpError(exc.status, _http_code(exc.status), exc.reason))
        raise
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(HttpError(500, "internal_error", "internal error; see the logs"))
    finally:
        if request.path.startswith(("/v1/", "/webhooks/", "/collect")):
            runtime: Runtime = request.app["runtime"]
            endpoint = request.match_info.route.resource.canonical \
                if request.match_info.route.resource else request.path
            runtime.metrics.requests.labels(endpoint, code).observe(
                time.perf_counter() - started)


def _http_code(status: int) -> str:
    return {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}.get(
        status, f"http_{status}")


async def healthz(request: web.Request) -> web.Response:
    runtime: Runtime = request.app["runtime"]
    return json_response({"status": "ok", "config_hash": runtime.config.config_hash,
                          "uptime_seconds": round(time.time() - runtime.started_at, 1)})


async def metrics(request: web.Request) -> web.Response:
    runtime: Runtime = request.app["runtime"]
    try:
        await runtime.refresh_gauges()
    except Exception:  # the counters still answer; the store's gauges keep their last value
        log.exception("reading the store for /metrics failed")
    return web.Response(body=generate_latest(runtime.metrics.registry),
                        headers={"Content-Type": CONTENT_TYPE_LATEST})


def build_app(runtime: Runtime) -> web.Application:
    settings = runtime.config.settings
    # our own limit (read_body) answers 413 JSON; aiohttp's is only a backstop
    app = web.Application(middlewares=[errors, admin.require_token],
                          client_max_size=settings.max_body_bytes * 4 + 65536)
    app["runtime"] = runtime
    ingest_routes.add_routes(app)
    collect.add_routes(app)
    admin.add_routes(app)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)

    async def on_startup(_: web.Application) -> None:
        await runtime.start()

    async def on_shutdown(_: web.Application) -> None:
        runtime.feed.close()  # live streams end, so the graceful stop does not wait on them

    async def on_cleanup(_: web.Application) -> None:
        await runtime.stop()

    app.on_startup.append(on_startup)
    app.on_shutdown.append(on_shutdown)
    app.on_cleanup.append(on_cleanup)
    return app
