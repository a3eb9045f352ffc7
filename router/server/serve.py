"""`router serve`: run the app until SIGTERM/SIGINT, then shut down gracefully.

aiohttp stops accepting, lets in-flight requests finish (up to the shutdown timeout),
then runs cleanup: the group committer writes what it has queued and the store closes.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from router.config.model import CompiledConfig
from router.delivery.sandbox import build_sandbox_app
from router.ops.logs import configure as configure_logging
from router.server.app import build_app
from router.server.http import ClientHttpErrors
from router.server.runtime import ROLES, Runtime
from router.store import open_store

log = logging.getLogger("router.serve")


def _event_loop_policy() -> None:
    # The store's writer thread needs the GIL for a moment between SQLite calls; with
    # the default 5 ms switch interval it would wait that long behind the event loop at
    # every step of a commit, and every acknowledgement with it.
    sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


SWITCH_INTERVAL_SECONDS = 0.0005


def _sandbox_context(config: CompiledConfig, host: str, port: int) -> Any:
    async def context(_: web.Application) -> AsyncIterator[None]:
        runner = web.AppRunner(build_sandbox_app(config), access_log=None, shutdown_timeout=1)
        await runner.setup()
        await web.TCPSite(runner, host, port).start()
        log.info("sandbox on http://%s:%d", host, port)
        yield
        await runner.cleanup()
    return context


def _reload_context(runtime: Runtime, watch: bool) -> Any:
    """SIGHUP reloads the config; --watch also reloads when a file changes."""
    async def context(_: web.Application) -> AsyncIterator[None]:
        import signal

        loop = asyncio.get_running_loop()
        pending: set[asyncio.Task[bool]] = set()

        def on_hup() -> None:
            task = asyncio.create_task(runtime.reload("SIGHUP"))
            pending.add(task)
            task.add_done_callback(pending.discard)

        loop.add_signal_handler(signal.SIGHUP, on_hup)
        watcher = asyncio.create_task(runtime.watch()) if watch else None
        yield
        loop.remove_signal_handler(signal.SIGHUP)
        if watcher is not None:
            watcher.cancel()
    return context


def run(config: CompiledConfig, *, store_url: str | None = None, host: str | None = None,
        port: int | None = None, log_level: str = "INFO",
        roles: frozenset[str] = frozenset(ROLES), sandbox_port: int | None = None,
        watch: bool = False, reuse_port: bool = False, log_format: str = "text") -> None:
    configure_logging(log_level, log_format)
    logging.getLogger("aiohttp.server").addFilter(ClientHttpErrors())
    url = store_url or config.settings.store_url
    store = open_store(url)
    runtime = Runtime(config, store, roles=roles)
    app = build_app(runtime)
    if sandbox_port is not None:
        app.cleanup_ctx.insert(0, _sandbox_context(config, "127.0.0.1", sandbox_port))
    app.cleanup_ctx.append(_reload_context(runtime, watch))
    bind_host = host or config.settings.host
    bind_port = port if port is not None else config.settings.port
    log.info("router serving on http://%s:%d (roles %s, store %s, config %s)", bind_host,
             bind_port, ",".join(r for r in ROLES if r in roles), url, config.config_hash)
    for warning in config.warnings:
        log.warning("config: %s", warning.text())
    _event_loop_policy()
    web.run_app(app, host=bind_host, port=bind_port, shutdown_timeout=30, print=None,
                reuse_port=reuse_port,
                access_log=None, handle_signals=True)


def run_workers(config: CompiledConfig, *, store_url: str | None = None,
                log_level: str = "INFO", roles: frozenset[str] = frozenset({"delivery"}),
                log_format: str = "text") -> None:
    """`router worker`: the stages after the acknowledgement, without HTTP."""
    configure_logging(log_level, log_format)
    _event_loop_policy()

    async def main() -> None:
        import signal

        runtime = Runtime(config, open_store(store_url or config.settings.store_url),
                          roles=roles)
        await runtime.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP,
                                lambda: loop.create_task(runtime.reload("SIGHUP")))
        log.info("router worker (roles %s) for %d destinations",
                 ",".join(r for r in ROLES if r in roles), len(config.destinations))
        await stop.wait()
        await runtime.stop()

    asyncio.run(main())


def run_sandbox(config: CompiledConfig, *, host: str, port: int) -> None:
    configure_logging("INFO", "text")
    log.info("sandbox for %d destinations on http://%s:%d", len(config.destinations), host, port)
    web.run_app(build_sandbox_app(config), host=host, port=port, print=None, access_log=None,
                shutdown_timeout=1)
