"""What one destination would receive for one event — decided exactly as routing and
delivery decide it (listed, templated name, send_if, consent), rendered exactly as the
worker renders it. `router explain`, `router test` and `router diff` all use this, so
the three can never disagree with production or with each other."""

from __future__ import annotations

import hashlib
import time
from typing import Any

import orjson

from router.config.model import Destination, DestinationConnection
from router.delivery.age import too_old
from router.delivery.render import (
    RenderError,
    build_request,
    connection_settings,
    mask,
    mask_header,
    render_payload,
    secrets_of,
)
from router.pipeline.event import Event
from router.pipeline.routing import decide_delivery

PLACEHOLDER_TOKEN = "<oauth2 access token>"


def preview(dest: Destination, conn: DestinationConnection, event: Event, body: dict[str, Any],
            now: float | None = None, *, masked: bool = False,
            access_token: str = PLACEHOLDER_TOKEN) -> dict[str, Any]:
    decision = decide_delivery(dest, conn, event, body)
    if not decision.send:
        return {"sent": False, "reason": decision.reason}
    stale = too_old(dest, body.get("occurred_at"), time.time() if now is None else now)
    if stale:
        return {"sent": False, "reason": stale}
    try:
        rendered = render_payload(dest, conn, 1, body, event.pii)
    except RenderError as exc:
        return {"sent": False, "reason": str(exc)}
    auth = dest.request.get("auth") or {}
    token = access_token if auth.get("type") == "oauth2_refresh_token" else None
    # a nonce from the event, so signed previews (OAuth 1.0a) are reproducible
    nonce = hashlib.sha256(f"{now}:{rendered.event_id}".encode()).hexdigest()[:32]
    request = build_request(dest, conn, [rendered], [body], access_token=token, now=now,
                            nonce=nonce)
    secrets = secrets_of(connection_settings(dest, conn)) if masked else []
    text = request.body.decode() if request.body is not None else None
    payload: Any = mask(text, secrets) if text is not None else None
    if payload is not None and "json" in request.headers.get("Content-Type", ""):
        payload = orjson.loads(payload)
    return {"sent": True, "platform_event": rendered.platform_event,
            "request": {"method": request.method, "url": mask(request.url, secrets),
                        "headers": {k: mask_header(k, v, secrets)
                                    for k, v in request.headers.items()},
                        "body": payload}}
