"""Authentication schemes for inbound requests, parameterized by each source's YAML.

Four schemes cover every sender: an HTTP Basic write key, an HMAC signature (hex or
base64, SHA-1 or SHA-256, over the raw body or over "timestamp.body" with a freshness
window), a static secret header for senders that cannot sign, and a browser origin
allowlist. Which header, algorithm and credential a source uses is data in
mappings/<source>.yaml; this module knows no platform.

Every comparison is constant-time. The credential that verifies decides the
(account, environment), so a staging secret can never authenticate production.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

import orjson

from router.config.model import AuthScheme, CompiledConfig, Environment, SourceConnection


class AuthError(Exception):
    """401 with a stable code; the message says what was wrong, never a secret."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Principal:
    account: str
    environment: str
    source: str
    scheme: str


@dataclass(frozen=True)
class Candidate:
    account: str
    environment: str
    connection: SourceConnection


def candidates(config: CompiledConfig, source: str) -> list[Candidate]:
    """Every (account, environment) where `source` is configured and enabled."""
    out = []
    for account in config.accounts.values():
        for env in account.environments.values():
            conn = env.sources.get(source)
            if conn is not None and conn.enabled:
                out.append(Candidate(account.name, env.name, conn))
    return out


def _credential(conn: SourceConnection, name: str) -> str | None:
    value = getattr(conn, name, None)
    return value if isinstance(value, str) and value else None


def _digest(secret: str, payload: bytes, algorithm: str) -> bytes:
    return hmac.new(secret.encode(), payload, getattr(hashlib, algorithm)).digest()


def _decode_signature(text: str, scheme: AuthScheme) -> bytes | None:
    text = text.strip()
    if scheme.prefix:
        if not text.startswith(scheme.prefix):
            return None
        text = text[len(scheme.prefix):]
    try:
        if scheme.encoding == "base64":
            return base64.b64decode(text, validate=True)
        return bytes.fromhex(text)
    except (ValueError, binascii.Error):
        return None


_UNIX_SECONDS = re.compile(r"[0-9]{1,12}(?:\.[0-9]{1,9})?")
_RFC3339 = re.compile(r"([0-9]{4}-[0-9]{2}-[0-9]{2})[Tt ]([0-9]{2}:[0-9]{2}:[0-9]{2})"
                      r"(?:\.([0-9]{1,9}))?([Zz]|[+-][0-9]{2}:[0-9]{2})")


def parse_timestamp(value: str) -> float | None:
    """Unix seconds (digits, optionally a fraction) or an RFC 3339 time with its offset;
    None for anything else. Strict on purpose: `float()` would take "nan" (which passes
    every freshness comparison), "inf", "1e9" and "1_000"."""
    text = value.strip()
    if _UNIX_SECONDS.fullmatch(text):
        return float(text)
    found = _RFC3339.fullmatch(text)
    if found is None:
        return None
    date, clock, fraction, offset = found.groups()
    offset = "+00:00" if offset in ("Z", "z") else offset
    try:
        return datetime.fromisoformat(f"{date}T{clock}.{(fraction or '0')[:6]:0<6}{offset}"
                                      ).timestamp()
    except ValueError:  # month 13, 25:00, ...
        return None


def _first_item_payload(body: bytes) -> bytes | None:
    """JSON.stringify(body[0]) for senders that sign only the first item of a batch."""
    try:
        document = orjson.loads(body)
        if isinstance(document, list) and document:
            return orjson.dumps(document[0])
    except (orjson.JSONDecodeError, orjson.JSONEncodeError):  # not JSON; nested too deep
        return None
    return None


@dataclass(frozen=True)
class PendingSignature:
    """An HMAC scheme whose headers are present and well formed (signature decoded,
    timestamp fresh): all that is left is to compare the signature with the body's."""

    scheme: AuthScheme
    signature: bytes
    timestamp: str | None = None  # the timestamp header's text, for timestamp_dot_body


def check_signature_headers(scheme: AuthScheme, headers: Mapping[str, str],
                            now: float | None = None) -> PendingSignature:
    """Everything about an HMAC that can be judged before the body is read."""
    signature_text = headers.get(scheme.header or "")
    if not signature_text:
        raise AuthError("missing_signature", f"missing {scheme.header} header")
    signature = _decode_signature(signature_text, scheme)
    if signature is None:
        raise AuthError("invalid_signature", f"{scheme.header} is malformed")
    if scheme.signed != "timestamp_dot_body":
        return PendingSignature(scheme, signature)
    raw_ts = headers.get(scheme.timestamp_header or "")
    if not raw_ts:
        raise AuthError("missing_timestamp", f"missing {scheme.timestamp_header} header")
    ts = parse_timestamp(raw_ts)
    if ts is None:
        raise AuthError("invalid_timestamp", f"{scheme.timestamp_header} is not RFC 3339 "
                        "or unix seconds")
    now = time.time() if now is None else now
    if abs(now - ts) > scheme.tolerance_seconds:
        raise AuthError("stale_timestamp", f"{scheme.timestamp_header} is outside the "
                        f"{scheme.tolerance_seconds}s tolerance")
    return PendingSignature(scheme, signature, raw_ts.strip())


def _signed_payloads(pending: PendingSignature, body: bytes) -> list[bytes]:
    if pending.timestamp is not None:
        return [pending.timestamp.encode() + b"." + body]
    payloads = [body]
    if pending.scheme.first_item_fallback:
        first = _first_item_payload(body)
        if first is not None:
            payloads.append(first)
    return payloads


def verify_signature(pending: PendingSignature, body: bytes,
                     pool: Iterable[Candidate]) -> Candidate:
    """The candidate whose secret signed this body, or 401 invalid_signature."""
    scheme = pending.scheme
    payloads = _signed_payloads(pending, body)
    matched = None
    for cand in pool:
        secret = _credential(cand.connection, scheme.credential)
        if secret is None:
            continue
        for payload in payloads:
            # compare against every candidate: no early exit that times the secret list
            if hmac.compare_digest(_digest(secret, payload, scheme.algorithm),
                                   pending.signature) and matched is None:
                matched = cand
    if matched is None:
        raise AuthError("invalid_signature", f"{scheme.header} does not match")
    return matched


def verify_hmac(scheme: AuthScheme, body: bytes, headers: Mapping[str, str],
                pool: Iterable[Candidate], now: float | None = None) -> Candidate:
    return verify_signature(check_signature_headers(scheme, headers, now), body, pool)


def verify_static(scheme: AuthScheme, headers: Mapping[str, str],
                  pool: Iterable[Candidate]) -> Candidate:
    given = headers.get(scheme.header or "")
    if not given:
        raise AuthError("missing_secret", f"missing {scheme.header} header")
    matched = None
    for cand in pool:
        secret = _credential(cand.connection, scheme.credential)
        if secret and hmac.compare_digest(secret.encode(), given.strip().encode()) and \
                matched is None:
            matched = cand
    if matched is None:
        raise AuthError("invalid_secret", f"{scheme.header} does not match")
    return matched


def basic_username(authorization: str | None) -> str | None:
    """The username of an HTTP Basic header (the write key), or None."""
    if not authorization or not authorization.lower().startswith("basic "):
        return None
    try:
        decoded = base64.b64decode(authorization[6:].strip(), validate=True).decode()
    except (ValueError, binascii.Error, UnicodeDecodeError):
        return None
    return decoded.split(":", 1)[0] or None


def verify_write_key(scheme: AuthScheme, key: str | None, pool: Iterable[Candidate]) -> Candidate:
    if not key:
        raise AuthError("missing_write_key", "missing write key (HTTP Basic username)")
    matched = None
    for cand in pool:
        secret = _credential(cand.connection, scheme.credential or "write_key")
        if secret and hmac.compare_digest(secret.encode(), key.encode()) and matched is None:
            matched = cand
    if matched is None:
        raise AuthError("invalid_write_key", "unknown write key")
    return matched


def origin_allowed(origin: str | None, env: Environment, source: str) -> bool:
    conn = env.sources.get(source)
    if conn is None or not origin:
        return False
    return origin.rstrip("/") in {o.rstrip("/") for o in conn.origins}


def narrow(pool: list[Candidate], account: str | None, environment: str | None) -> list[Candidate]:
    """Restrict candidates to the account/environment a request names, if it names one."""
    if account:
        pool = [c for c in pool if c.account == account]
        if not pool:
            raise AuthError("unknown_account", f"unknown account {account!r} for this source")
    if environment:
        pool = [c for c in pool if c.environment == environment]
        if not pool:
            raise AuthError("unknown_environment", f"unknown environment {environment!r}")
    return pool


def authenticate_headers(schemes: tuple[AuthScheme, ...], *, headers: Mapping[str, str],
                         pool: list[Candidate], write_key: str | None = None,
                         now: float | None = None) -> tuple[Candidate, str] | PendingSignature:
    """Authenticate from the headers alone, before the body is read: a write key or a
    static secret decides here; an HMAC scheme whose headers are present and well formed
    comes back as a PendingSignature for `verify_signature` once the body is in.

    The source's schemes are tried in order; the first whose credential is present
    decides. A present but wrong credential fails at once (no falling through to a
    weaker scheme). With no credential at all, the error names every accepted scheme."""
    missing: list[AuthError] = []
    for scheme in schemes:
        try:
            if scheme.scheme == "write_key":
                return verify_write_key(scheme, write_key, pool), scheme.scheme
            if scheme.scheme == "hmac":
                return check_signature_headers(scheme, headers, now)
            if scheme.scheme == "static_secret":
                return verify_static(scheme, headers, pool), scheme.scheme
        except AuthError as exc:
            if not exc.code.startswith("missing_"):
                raise
            missing.append(exc)
    if len(missing) == 1:
        raise missing[0]
    if missing:
        raise AuthError("missing_credentials", "send one of: " +
                        "; ".join(e.message.removeprefix("missing ") for e in missing))
    raise AuthError("unauthenticated", "this source accepts no credentials on this endpoint")


def authenticate(schemes: tuple[AuthScheme, ...], *, body: bytes, headers: Mapping[str, str],
                 pool: list[Candidate], write_key: str | None = None,
                 now: float | None = None) -> tuple[Candidate, str]:
    """authenticate_headers, then the signature over `body` when one is pending."""
    verdict = authenticate_headers(schemes, headers=headers, pool=pool, write_key=write_key,
                                   now=now)
    if isinstance(verdict, PendingSignature):
        return verify_signature(verdict, body, pool), verdict.scheme.scheme
    return verdict
