"""An IP address read one way wherever the server decides by it (bridge/addresses.py)."""

from __future__ import annotations

import ipaddress

import pytest

from bridge.addresses import ip_of
from bridge.forwarded import parse_entry


@pytest.mark.parametrize(("text", "read"), [
    ("192.0.2.7", "192.0.2.7"),
    ("2001:db8::7", "2001:db8::7"),
    ("::ffff:192.0.2.7", "192.0.2.7"),
    ("fe80::1%eth0", "fe80::1"),
    ("::ffff:127.0.0.1", "127.0.0.1"),
])
def test_an_address_is_read_without_its_zone_and_an_ipv4_mapped_one_as_ipv4(text: str, read: str) -> None:
    assert ip_of(text) == ipaddress.ip_address(read)


@pytest.mark.parametrize("text", ["", "unknown", "192.0.2.256", "[2001:db8::7]", "%eth0", "2001:db8::7/64"])
def test_what_is_no_address_is_none(text: str) -> None:
    assert ip_of(text) is None


def test_a_forwarded_entry_with_a_zone_names_the_address_alone() -> None:
    """A trusted proxy writing a link-local client with its zone: the client's address as every other place reads
    it, not `fe80::1%eth0` (the zone, a name on the proxy's host, was kept in the address's text)."""
    assert str(parse_entry("[fe80::1%eth0]:4711")) == "fe80::1"
