"""The baseline: a bare aiohttp server with the router's event loop and JSON library
that parses the same body and answers 200. Every router figure is a ratio to this,
measured in the same run, because these machines are shared and noisy."""

from __future__ import annotations

import asyncio
import sys

import orjson
from aiohttp import web


async def handle(request: web.Request) -> web.Response:
    orjson.loads(await request.read())
    return web.Response(body=b'{"ok":true}', content_type="application/json")


def main() -> None:
    """python -m bench.baseline_server PORT [--reuse-port]"""
    port = int(sys.argv[1])
    reuse_port = "--reuse-port" in sys.argv[2:]
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass
    app = web.Application()
    app.router.add_post("/{tail:.*}", handle)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None,
                reuse_port=reuse_port)


if __name__ == "__main__":
    main()
