"""Request reading and JSON responses with stable error codes.

Every error a client can cause answers JSON `{"error": {"code", "message"}}` with a
code that never changes meaning, so senders can branch on it.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any

import orjson
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

JSON_TYPES = ("application/json", "text/plain", "application/x-ndjson")


class HttpError(Exception):
    def __init__(self, status: int, code: str, message: str, extra: dict[str, Any] | None = None,
                 headers: dict[str, str] | None = None, close: bool = False):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.extra = extra or {}
        self.headers = headers or {}
        self.close = close  # the connection cannot carry another request after this one


def json_response(payload: Any, status: int = 200,
                  headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(payload), status=status,
                        content_type="application/json", headers=headers)


def error_response(exc: HttpError, headers: dict[str, str] | None = None) -> web.Response:
    response = json_response({"error": {"code": exc.code, "message": exc.message}, **exc.extra},
                             exc.status, {**exc.headers, **(headers or {})} or None)
    if exc.close:
        response.force_close()
    return response


def check_content_type(request: web.Request, allowed: tuple[str, ...] = JSON_TYPES) -> None:
    content_type = request.content_type or ""
    if content_type not in allowed:
        raise HttpError(415, "unsupported_media_type",
                        f"Content-Type {content_type or '(none)'} is not accepted; send "
                        "application/json")


def check_declared_size(request: web.Request, limit: int) -> None:
    """413 on a declared Content-Length over `limit`, before anything is read (a
    compressed body is judged by its decoded size, while it is read)."""
    declared = request.content_length
    encoding = request.headers.get("Content-Encoding", "").strip().lower()
    if declared is not None and declared > limit and encoding in ("", "identity"):
        raise HttpError(413, "payload_too_large", f"body of {declared} bytes exceeds {limit}")


async def read_body(request: web.Request, limit: int, timeout: float) -> bytes:
    """The decoded body, refusing more than `limit` bytes without buffering it all, and
    a body not received within `timeout` seconds (a client that sends a byte now and
    then must not hold a connection and its buffers for ever).

    The deadline varies by up to 10% per request: a thousand slow connections opened
    together would otherwise all be ended, and all reconnect, in the same instant."""
    check_declared_size(request, limit)
    stream = request.content
    if stream.is_eof() and not stream.exception():
        # the whole body arrived with the headers (the usual small request): no deadline
        # to arm, nothing to wait for
        body = stream.read_nowait(-1)
        if len(body) > limit:
            raise HttpError(413, "payload_too_large", f"body exceeds {limit} bytes")
        return body
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout * random.uniform(0.9, 1.0)):
            async for chunk in request.content.iter_chunked(65536):
                size += len(chunk)
                if size > limit:
                    raise HttpError(413, "payload_too_large", f"body exceeds {limit} bytes")
                chunks.append(chunk)
    except TimeoutError:
        raise HttpError(408, "body_timeout", f"the body was not received within {timeout:g} "
                        "seconds", close=True) from None
    except web.RequestPayloadError as exc:  # corrupt gzip/deflate, broken chunked encoding
        # nothing more can be read: mark the stream ended (else aiohttp's drain of the
        # unread body after our answer hits the same error and logs it as unhandled), and
        # close the connection after the answer: the parser is mid-message
        request.content.feed_eof()
        raise HttpError(400, "malformed_body", "the body could not be decoded "
                        f"({_payload_problem(exc)})", close=True) from None
    return b"".join(chunks)


def _payload_problem(exc: BaseException) -> str:
    """The innermost cause, in one line (zlib's "incorrect header check", ...)."""
    while exc.__cause__ is not None or exc.__context__ is not None:
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return (lines[-1] if lines else type(exc).__name__)[:200]


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


def _client_http_error(exc: BaseException | None) -> HttpProcessingError | None:
    while exc is not None:
        if isinstance(exc, HttpProcessingError):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


class ClientHttpErrors(logging.Filter):
    """aiohttp logs malformed HTTP from a client with a stack trace at ERROR: a bad header
    or an undecodable Content-Encoding answered 400 before any handler runs, and a body
    that fails to decode (corrupt gzip) while aiohttp drains what a handler did not read
    (a request refused from its headers). That is the client's fault, not the server's:
    one warning line instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = _client_http_error(record.exc_info[1] if record.exc_info else None)
        if exc is not None:
            message = " ".join(str(exc.message).split()) if exc.message else type(exc).__name__
            record.msg = f"{record.getMessage()}: 400 ({message})"
            record.args = ()
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True
