"""Which addresses the gateway may call on a tenant's behalf: the public internet only.

A webhook URL is the tenant's to choose, so it must not reach the gateway's own network:
loopback, private ranges, link-local (cloud metadata at 169.254.169.254), multicast or
reserved space. The check runs twice: when an endpoint is created (on what its host
resolves to then) and at every connection (:class:`GuardedResolver`), so a DNS answer
that changed since cannot slip a private address through.

IPv6 has several spellings of an IPv4 address, and each one is judged by the IPv4
address inside it: IPv4-mapped (``::ffff:127.0.0.1``), IPv4-compatible (``::127.0.0.1``),
IPv4-translated (``::ffff:0:127.0.0.1``), 6to4 (``2002:7f00:1::``) and the NAT64
well-known prefix (``64:ff9b::127.0.0.1``). The local-use NAT64 prefix
``64:ff9b:1::/48`` is never public.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Sequence

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_COMPATIBLE = ipaddress.IPv6Network("::/96")
_TRANSLATED = ipaddress.IPv6Network("::ffff:0:0:0/96")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")


def embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for, in any of the spellings above."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _COMPATIBLE or ip in _TRANSLATED or ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def address_forbidden(address: str | IPAddress) -> bool:
    """Loopback, private, link-local (cloud metadata), multicast, reserved: not the internet."""
    ip = ipaddress.ip_address(address.split("%", 1)[0] if isinstance(address, str)
                              else address)
    if isinstance(ip, ipaddress.IPv6Address):
        if ip in _NAT64_LOCAL:
            return True
        inner = embedded_ipv4(ip)
        if inner is not None:
            # "::" and "::1" sit in the IPv4-compatible range but are IPv6's own.
            if ip in _COMPATIBLE and int(ip) <= 1:
                return True
            ip = inner
    return not ip.is_global or ip.is_multicast


def ip_literal(host: str) -> IPAddress | None:
    """The address when ``host`` is an IP literal (``[::1]`` brackets allowed; an IPv4
    address in any form a browser or curl reads as one, :func:`ipv4_any_form`), else
    None."""
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return ipv4_any_form(host)


_RADIX_DIGITS = {8: frozenset("01234567"), 10: frozenset("0123456789"),
                 16: frozenset("0123456789abcdefABCDEF")}


def ipv4_any_form(host: str) -> ipaddress.IPv4Address | None:
    """``host`` read as the WHATWG URL standard's IPv4 parser reads it (as browsers do,
    and curl and the C library's ``inet_aton``): one to four numbers, each decimal, octal
    (``0177``) or hex (``0x7f``), the last filling the bytes left (``127.1``,
    ``2130706433``), one trailing dot allowed. None when it is not such an address."""
    if len(host) > 253:  # no name is longer (and int() refuses 4,300 digits)
        return None
    parts = host.split(".")
    if len(parts) > 1 and parts[-1] == "":
        parts.pop()
    if not 1 <= len(parts) <= 4:
        return None
    numbers: list[int] = []
    for part in parts:
        radix = 10
        if part[:2] in ("0x", "0X"):
            part, radix = part[2:], 16
        elif len(part) > 1 and part[0] == "0":
            part, radix = part[1:], 8
        elif not part:
            return None
        if not set(part) <= _RADIX_DIGITS[radix]:
            return None
        numbers.append(int(part, radix) if part else 0)  # ("0x" alone is 0)
    *leading, last = numbers
    if any(n > 255 for n in leading) or last >= 256 ** (5 - len(numbers)):
        return None
    return ipaddress.IPv4Address(
        sum(n << 8 * (3 - i) for i, n in enumerate(leading)) + last)


class ForbiddenAddress(OSError):
    """The endpoint's host resolves to an address the gateway must not call."""


class GuardedResolver(AbstractResolver):
    """Resolves like aiohttp's default resolver, then refuses non-public addresses."""

    def __init__(self, inner: AbstractResolver | None = None) -> None:
        self._inner = inner or DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        for result in results:
            if address_forbidden(result["host"]):
                raise ForbiddenAddress(f"{host} resolves to {result['host']}, a non-public address")
        return results

    async def close(self) -> None:
        await self._inner.close()


async def resolve_forbidden(host: str, timeout_s: float = 2.0) -> Sequence[str] | None:
    """Addresses ``host`` resolves to that the gateway must not call; None if it does not
    resolve (yet): such a host is accepted and checked again at delivery."""
    literal = ip_literal(host)
    if literal is not None:
        return [str(literal)] if address_forbidden(literal) else []
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout_s):
            infos = await loop.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (OSError, TimeoutError, UnicodeError):
        return None
    return sorted({str(info[4][0]) for info in infos if address_forbidden(str(info[4][0]))})
