"""Request signing schemes a destination file can name (`request.auth.type: oauth1`).

OAuth 1.0a (RFC 5849, HMAC-SHA1) signs the method, the URL without its query, and the
sorted, percent-encoded parameters: the query string's, the oauth_* protocol values,
and a form-encoded body's (a JSON body is not a parameter source and is not signed).
Written here rather than taken from a library because it is forty lines of the RFC and
has to work on the exact bytes the renderer produced.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Mapping, Sequence
from urllib.parse import parse_qsl, quote, urlsplit, urlunsplit


def percent_encode(value: str) -> str:
    """RFC 3986 unreserved characters stay, everything else is %XX of its UTF-8 bytes."""
    return quote(value, safe="-._~")


def base_string_uri(url: str) -> str:
    """Scheme and host lower-cased, default ports dropped, no query or fragment."""
    parts = urlsplit(url)
    scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
    port = parts.port
    netloc = host if port is None or (scheme, port) in (("http", 80), ("https", 443)) \
        else f"{host}:{port}"
    return urlunsplit((scheme, netloc, parts.path or "/", "", ""))


def signature_base_string(method: str, url: str, params: Sequence[tuple[str, str]]) -> str:
    encoded = sorted((percent_encode(k), percent_encode(v)) for k, v in params)
    normalized = "&".join(f"{k}={v}" for k, v in encoded)
    return "&".join((method.upper(), percent_encode(base_string_uri(url)),
                     percent_encode(normalized)))


def oauth1_header(method: str, url: str, consumer_key: str, consumer_secret: str,
                  token: str | None = None, token_secret: str | None = None, *,
                  form: Mapping[str, str] | None = None, nonce: str | None = None,
                  timestamp: int | None = None) -> str:
    """The `Authorization: OAuth ...` value for one request (HMAC-SHA1)."""
    oauth = {"oauth_consumer_key": consumer_key,
             "oauth_nonce": nonce or secrets.token_hex(16),
             "oauth_signature_method": "HMAC-SHA1",
             "oauth_timestamp": str(int(time.time()) if timestamp is None else timestamp),
             "oauth_version": "1.0"}
    if token:
        oauth["oauth_token"] = token
    params = [*parse_qsl(urlsplit(url).query, keep_blank_values=True), *oauth.items(),
              *(form or {}).items()]
    base = signature_base_string(method, url, params)
    key = f"{percent_encode(consumer_secret)}&{percent_encode(token_secret or '')}"
    digest = hmac.new(key.encode(), base.encode(), hashlib.sha1).digest()
    oauth["oauth_signature"] = base64.b64encode(digest).decode()
    return "OAuth " + ", ".join(f'{percent_encode(k)}="{percent_encode(v)}"'
                                for k, v in sorted(oauth.items()))
