"""Request reading and JSON responses with stable error codes.

Every error a client can cause answers JSON `{"error": {"code", "message"}}` with a
code that never changes meaning, so senders can branch on it.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

JSON_TYPES = ("application/json", "text/plain", "application/x-ndjson")


class HttpError(Exception):
    def __init__(self, status: int, code: str, message: str, extra: dict[str, Any] | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.extra = extra or {}
        self.headers = headers or {}


def json_response(payload: Any, status: int = 200,
                  headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(payload), status=status,
                        content_type="application/json", headers=headers)


def error_response(exc: HttpError, headers: dict[str, str] | None = None) -> web.Response:
    return json_response({"error": {"code": exc.code, "message": exc.message}, **exc.extra},
                         exc.status, {**exc.headers, **(headers or {})} or None)


def check_content_type(request: web.Request, allowed: tuple[str, ...] = JSON_TYPES) -> None:
    content_type = request.content_type or ""
    if content_type not in allowed:
        raise HttpError(415, "unsupported_media_type",
                        f"Content-Type {content_type or '(none)'} is not accepted; send "
                        "application/json")


async def read_body(request: web.Request, limit: int) -> bytes:
    """The (gzip-decoded) body, refusing more than `limit` bytes without buffering it all."""
    declared = request.content_length
    if declared is not None and declared > limit and "gzip" not in (
            request.headers.get("Content-Encoding") or ""):
        raise HttpError(413, "payload_too_large", f"body of {declared} bytes exceeds {limit}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(65536):
        size += len(chunk)
        if size > limit:
            raise HttpError(413, "payload_too_large", f"body exceeds {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_json(body: bytes) -> Any:
    if not body.strip():
        raise HttpError(400, "malformed_json", "empty body")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise HttpError(400, "malformed_json", f"body is not valid JSON: {exc}") from None


def client_ip(request: web.Request, trusted_header: str | None) -> str | None:
    """The client address; a configured proxy header is trusted only when set."""
    if trusted_header:
        forwarded = request.headers.get(trusted_header)
        if forwarded:
            return forwarded.split(",")[0].strip() or None
    return request.remote
