"""An IP address as a socket or a proxy writes it, read one way wherever the server decides by it: the sandbox's
local access (bridge/sandbox_access.py), the trusted proxies (bridge/forwarded.py) and the SES certificate budget
(handlers/sns_certificates.py)."""

from __future__ import annotations

import ipaddress

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def ip_of(text: str) -> Address | None:
    """`text` as an IP address, or None when it is none: a zone (`fe80::1%eth0`: only a link-local address has one)
    left out, and an IPv4-mapped IPv6 address (`::ffff:192.0.2.7`) read as the IPv4 address it carries."""
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address
