"""Who is typing: the client a request's failed attempts are counted for.

The library throttles sign-in, activation, resets and reminders per login
*and client*, so that a stranger's wrong guesses never slow the owner
down.  :func:`client_address` gives that client for a Django request: the
address the connection came from (``REMOTE_ADDR``), or, when that address
is one of the project's reverse proxies (``ACCOUNT_MERGE["TRUSTED_PROXIES"]``),
the address the proxies name in ``ACCOUNT_MERGE["CLIENT_HEADER"]``
(``X-Forwarded-For`` by default).

The header is read from the right: each proxy appends the address it
received the request from, so the entries a trusted proxy wrote are at
the end, and anything left of them may have been written by the client
itself.  The client is the first address, from the right, that is not a
trusted proxy; whatever lies further left is never read.  Without
``TRUSTED_PROXIES`` the header is never read at all: a header a client
can set itself never chooses its bucket.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING

from account_merge.contrib.django.service import app_settings

if TYPE_CHECKING:
    from django.http import HttpRequest

__all__ = ["client_address"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _address(text: object) -> Address | None:
    if not isinstance(text, str):
        return None
    text = text.strip()
    if text.startswith("[") and "]" in text:  # [2001:db8::1]:443
        text = text[1:text.index("]")]
    elif text.count(":") == 1:  # 192.0.2.1:443
        text = text.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _trusted(address: Address, proxies: tuple[Network, ...]) -> bool:
    return any(address.version == network.version and address in network for network in proxies)


def client_address(request: HttpRequest | None) -> str | None:
    """The client of *request* for the throttle: an IP address, or None without request.

    ``REMOTE_ADDR``, unless it is one of ``TRUSTED_PROXIES``: then the
    right-most address of ``CLIENT_HEADER`` that is not a trusted proxy
    (an entry that is not an address stops the walk at the proxy that
    wrote it).
    """
    if request is None:
        return None
    remote = _address(request.META.get("REMOTE_ADDR"))
    if remote is None:
        return None
    loaded = app_settings()
    if not loaded.trusted_proxies or not _trusted(remote, loaded.trusted_proxies):
        return str(remote)
    header = request.META.get(loaded.client_header)
    client = remote
    if isinstance(header, str):
        for hop in reversed(header.split(",")):
            address = _address(hop)
            if address is None:
                break
            client = address
            if not _trusted(address, loaded.trusted_proxies):
                break
    return str(client)
