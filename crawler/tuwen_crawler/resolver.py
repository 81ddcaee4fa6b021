"""The crawler's name resolver: the one resolution Scrapy connects with, filtered to public addresses.

Checking an address in a middleware and then letting Scrapy resolve the name again to connect leaves
a gap: a DNS answer can change between the two lookups (rebinding), so a check of the first answer
says nothing about the address connected to. Here the check *is* the lookup: Scrapy's connections
(Twisted's HostnameEndpoint) get their addresses from this resolver, which drops a name whose answer
contains any non-public address. A name that does not resolve, or resolves only to refused addresses,
yields no address at all and the connection fails (closed, never open). Refused names are remembered
so the failure is recorded as `private_address`, not as a DNS error.

A crawl process crawls one site; the spider sets whether that site may use private addresses
(`allow_private_addresses: true`, the local fixture sites) before its first request. Until then the
policy is to refuse.

Installed with TWISTED_DNS_RESOLVER in settings.py.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Any, Self

from scrapy.utils.datatypes import LocalCache
from twisted.internet.interfaces import IAddress, IHostnameResolver, IHostResolution, IResolutionReceiver
from zope.interface import implementer, provider

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_SIX_TO_FOUR = ipaddress.IPv6Network("2002::/16")
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")


class _Policy:
    allow_private = False
    private_hosts: frozenset[str] = frozenset()  # names allowed to resolve to private addresses


POLICY = _Policy()
_REFUSED: LocalCache[str, str] = LocalCache(10_000)  # host name -> why it was refused


def allow_private_addresses(allowed: bool, hosts: tuple[str, ...] = ()) -> None:
    """Set by the spider from its site's `allow_private_addresses` (and `allow_private_hosts`, exact
    host names in normal form) before the crawl starts."""
    POLICY.allow_private = allowed
    POLICY.private_hosts = frozenset(hosts)


def refusal_for(host: str | None) -> str | None:
    """Why the resolver refused `host`, or None when it did not."""
    return _REFUSED.get((host or "").lower().rstrip("."))


def embedded_ipv4(ip: IPAddress) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries (mapped, NAT64, 6to4, IPv4-compatible, Teredo)."""
    if isinstance(ip, ipaddress.IPv4Address):
        return []
    found: list[ipaddress.IPv4Address] = []
    if ip.ipv4_mapped:
        found.append(ip.ipv4_mapped)
    if ip in _NAT64 or (ip in _IPV4_COMPATIBLE and int(ip) > 1):
        found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    if ip in _SIX_TO_FOUR and ip.sixtofour:
        found.append(ip.sixtofour)
    if ip.teredo:
        found.extend(ip.teredo)
    return found


def is_public_address(address: str | IPAddress) -> bool:
    """A global unicast address, also after unwrapping any IPv4 address an IPv6 form embeds."""
    ip = ipaddress.ip_address(address) if isinstance(address, str) else address
    # fec0::/10 is deprecated site-local space; :: and ::1 are in ::/96 but carry no IPv4 address.
    if isinstance(ip, ipaddress.IPv6Address) and (ip.is_site_local or (ip in _IPV4_COMPATIBLE and int(ip) <= 1)):
        return False
    return all(each.is_global and not each.is_multicast for each in (ip, *embedded_ipv4(ip)))


@implementer(IHostResolution)
class _Resolution:
    def __init__(self, name: str) -> None:
        self.name = name

    def cancel(self) -> None:  # pragma: no cover - Twisted never cancels a resolution it started
        raise NotImplementedError


@provider(IResolutionReceiver)
class _FilteringReceiver:
    """Holds a lookup's answers until it completes, then passes them on only if all are allowed."""

    def __init__(self, receiver: IResolutionReceiver, host: str, allow_private: bool,
                 cache: LocalCache[tuple[str, bool], list[IAddress]]) -> None:
        self.receiver = receiver
        self.host = host
        self.allow_private = allow_private
        self.cache = cache
        self.addresses: list[IAddress] = []

    def resolutionBegan(self, resolution: IHostResolution) -> None:
        self.receiver.resolutionBegan(resolution)

    def addressResolved(self, address: IAddress) -> None:
        self.addresses.append(address)

    def resolutionComplete(self) -> None:
        private = [] if self.allow_private else [
            a.host for a in self.addresses if not is_public_address(a.host)]  # type: ignore[attr-defined]
        if private:
            _REFUSED[self.host.lower().rstrip(".")] = f"{self.host} resolves to non-public {', '.join(private)}"
            allowed: list[IAddress] = []
        else:
            allowed = self.addresses
        if allowed and self.cache.limit:
            self.cache[(self.host, self.allow_private)] = allowed
        for address in allowed:
            self.receiver.addressResolved(address)
        self.receiver.resolutionComplete()


@implementer(IHostnameResolver)
class PublicAddressResolver:
    """Twisted's name resolver (IPv4 and IPv6), answers filtered by `is_public_address`, then cached."""

    def __init__(self, reactor: Any, cache_size: int = 10_000) -> None:
        self.reactor = reactor
        self.original: IHostnameResolver = reactor.nameResolver
        self.cache: LocalCache[tuple[str, bool], list[IAddress]] = LocalCache(cache_size)

    @classmethod
    def from_crawler(cls, crawler: Any, reactor: Any) -> Self:
        settings = crawler.settings
        return cls(reactor, settings.getint("DNSCACHE_SIZE") if settings.getbool("DNSCACHE_ENABLED") else 0)

    def install_on_reactor(self) -> None:
        self.reactor.installNameResolver(self)

    def resolveHostName(self, resolutionReceiver: IResolutionReceiver, hostName: str, portNumber: int = 0,
                        addressTypes: Sequence[type[IAddress]] | None = None,
                        transportSemantics: str = "TCP") -> IHostResolution:
        allow = POLICY.allow_private or hostName.lower().rstrip(".") in POLICY.private_hosts
        cached = self.cache.get((hostName, allow)) if self.cache.limit else None
        if cached is None:
            receiver = _FilteringReceiver(resolutionReceiver, hostName, allow, self.cache)
            return self.original.resolveHostName(receiver, hostName, portNumber, addressTypes, transportSemantics)
        resolution = _Resolution(hostName)
        resolutionReceiver.resolutionBegan(resolution)
        for address in cached:
            port = getattr(address, "port", portNumber)
            resolutionReceiver.addressResolved(
                address if port == portNumber else type(address)("TCP", address.host, portNumber))  # type: ignore[attr-defined]
        resolutionReceiver.resolutionComplete()
        return resolution
