"""Sending one request: the only place the delivery plane touches the network.

Redirects are followed by hand, because an HTTP client's default would re-send the
body and every header (Access-Token, x-api-key, personal data) to wherever a `Location`
points. Only 307 and 308 are followed (they keep the method and body, which is what a
platform moving its endpoint means), and only within the same origin or to a host the
destination file allows (`request.redirect_hosts`, e.g. a platform's regional data
centres, over HTTPS). Any other redirect is the answer: the 3xx is classified like any
failure and its target is named in the error, so an operator sees where it pointed.
"""

from __future__ import annotations

import fnmatch
import time
from collections.abc import Sequence
from urllib.parse import urljoin, urlsplit

import aiohttp

from router.delivery.classify import Answer
from router.delivery.render import OutgoingRequest

FOLLOWED = frozenset({307, 308})
REDIRECTS = frozenset({301, 302, 303, 307, 308})
MAX_HOPS = 5


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), port


def host_allowed(host: str, patterns: Sequence[str]) -> bool:
    """`*.example.com` matches subdomains only; other patterns match the host exactly."""
    host = host.lower().rstrip(".")
    return any(fnmatch.fnmatchcase(host, p.lower()) if p.startswith("*.") else host == p.lower()
               for p in patterns)


def redirect_target(url: str, status: int, location: str | None,
                    allowed_hosts: Sequence[str] = ()) -> str | None:
    """Where to re-send the same request, or None when the redirect must not be followed."""
    if status not in FOLLOWED or not location:
        return None
    target = urljoin(url, location)
    if _origin(target) == _origin(url):
        return target
    scheme, host, _ = _origin(target)
    if scheme == "https" and host and host_allowed(host, allowed_hosts):
        return target
    return None


async def send(session: aiohttp.ClientSession, request: OutgoingRequest,
               allowed_hosts: Sequence[str] = (), follow: bool = True) -> Answer:
    """One request, its answer (status 0 for no answer), and at most MAX_HOPS redirects
    (none when `follow` is false: the 3xx is the answer)."""
    started = time.perf_counter()
    url = request.url
    try:
        for _ in range(MAX_HOPS + 1):
            async with session.request(request.method, url, data=request.body,
                                       headers=request.headers,
                                       allow_redirects=False) as response:
                body = await response.read()
                location = response.headers.get("Location")
                target = redirect_target(url, response.status, location, allowed_hosts) \
                    if follow else None
                if target is None:
                    error = None
                    if response.status in REDIRECTS:
                        error = (f"redirect to {urljoin(url, location or '')!r} not followed: "
                                 "only 307/308 within the same origin or to the destination's "
                                 "redirect_hosts are")
                    return Answer(response.status, dict(response.headers), body, error,
                                  (time.perf_counter() - started) * 1000)
            url = target
        return Answer(0, {}, b"", f"more than {MAX_HOPS} redirects",
                      (time.perf_counter() - started) * 1000)
    except TimeoutError:
        return Answer(0, {}, b"", "timeout", (time.perf_counter() - started) * 1000)
    except aiohttp.ClientError as exc:
        return Answer(0, {}, b"", f"{type(exc).__name__}: {exc}",
                      (time.perf_counter() - started) * 1000)
