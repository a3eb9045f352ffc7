"""Which hosts delivery may connect to: an optional allow/deny list for outbound requests.

Destination URLs are templates over per-account settings (a webhook's `url`, a
`base_url`): in an install where tenants edit their own accounts, a URL could point at
the router's own network (a metadata service, a database's HTTP port, localhost). With
`delivery.outbound` (configs/router.yaml) an operator decides:

- `deny`: hosts (`internal.example.com`, `*.corp.example`) or networks (`10.0.0.0/8`,
  `fd00::/8`) never contacted;
- `allow`: hosts or networks always allowed (the sandbox on 127.0.0.1, a partner's
  private endpoint), even with `deny_private`;
- `deny_private: true`: refuse every address that is not globally routable (private,
  loopback, link-local, carrier-grade NAT, documentation, multicast, reserved), unless
  allowed. Recommended for multi-tenant installs; off by default, because the demo and
  the sandbox deliver to 127.0.0.1.

Checked twice: the request URL's host and the addresses it resolves to, before sending
(a refused delivery is `dropped` with the reason, it is never retried), and again by the
HTTP client's resolver when it connects (a name that resolves elsewhere the second time
fails to connect). Redirects are not followed while a policy is on: a redirect to an IP
literal would not pass through the resolver.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Callable
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from router.config.model import OutboundSettings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _address(text: str) -> IPAddress | None:
    try:
        address = ipaddress.ip_address(text.strip("[]").split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _host_matches(pattern: str, host: str) -> bool:
    pattern, host = pattern.lower().rstrip("."), host.lower().rstrip(".")
    if pattern.startswith("*."):
        return host.endswith(pattern[1:])
    return host == pattern


def _listed(entries: tuple[str, ...], host: str, address: IPAddress | None) -> str | None:
    for entry in entries:
        if "/" in entry or _address(entry) is not None:
            network = ipaddress.ip_network(entry, strict=False)
            if address is not None and address.version == network.version and \
                    address in network:
                return entry
        elif _host_matches(entry, host):
            return entry
    return None


def refusal(policy: OutboundSettings, host: str, address: str | None = None) -> str | None:
    """Why connecting to `host` (at `address`, when resolved) is refused, or None.
    Deny wins over allow; allow wins over deny_private."""
    ip = _address(address) if address is not None else _address(host)
    denied = _listed(policy.deny, host, ip)
    if denied is not None:
        return f"{host} ({address or host}) is denied by delivery.outbound.deny ({denied})"
    if _listed(policy.allow, host, ip) is not None:
        return None
    if policy.deny_private and ip is not None and (not ip.is_global or ip.is_multicast):
        return (f"{host} resolves to {ip}, which is not a public address "
                "(delivery.outbound.deny_private)")
    return None


async def url_refusal(policy: OutboundSettings, url: str) -> str | None:
    """The refusal for a request URL: its host, and every address the host resolves to
    (a name refused when any of them is). None when no policy is configured."""
    if not policy.active:
        return None
    host = urlsplit(url).hostname or ""
    if not host:
        return f"no host in {url!r}"
    reason = refusal(policy, host)
    if reason is not None or _address(host) is not None:
        return reason
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, None,
                                                             type=socket.SOCK_STREAM)
    except OSError:
        return None  # unresolvable: the send fails and is retried like any network error
    for info in infos:
        reason = refusal(policy, host, str(info[4][0]))
        if reason is not None:
            return reason
    return None


class GuardedResolver(AbstractResolver):
    """The HTTP client's resolver, keeping only addresses the policy allows (read at each
    resolution, so a reload applies at once)."""

    def __init__(self, get_policy: Callable[[], OutboundSettings]) -> None:
        self._inner = DefaultResolver()
        self._get_policy = get_policy

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        policy = self._get_policy()
        if not policy.active:
            return results
        allowed = [r for r in results if refusal(policy, host, r["host"]) is None]
        if not allowed:
            raise OSError(f"outbound connection to {host} refused by delivery.outbound")
        return allowed

    async def close(self) -> None:
        await self._inner.close()
