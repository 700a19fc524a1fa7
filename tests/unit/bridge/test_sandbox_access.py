"""bridge/sandbox_access.py: which clients may use the simulators mounted on the public port."""

from __future__ import annotations

import pytest

from bridge.sandbox_access import decide, is_loopback


@pytest.mark.parametrize("peer", ["127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"])
def test_loopback_peers(peer: str) -> None:
    """IPv4 127/8, IPv6 ::1 and IPv4-mapped 127.x are loopback."""
    assert is_loopback(peer) is True


@pytest.mark.parametrize("peer", ["192.0.2.2", "10.0.0.1", "0.0.0.0", "::", "::ffff:10.0.0.1", "fe80::1%eth0",
                                  "2001:db8::1", "localhost", "127.0.0.1.evil.test", "", None])
def test_other_peers_are_not_loopback(peer: str | None) -> None:
    """Any other address, a name, a lookalike, or no address at all is not loopback."""
    assert is_loopback(peer) is False


@pytest.mark.parametrize(("peer", "proxied", "token", "access"), [
    ("127.0.0.1", False, "", "local"),
    ("127.0.0.1", False, "adm", "local"),
    ("::1", False, "", "local"),
    ("127.0.0.1", True, "", "refused"),  # a proxy on this machine speaks for clients that are not
    ("127.0.0.1", True, "adm", "token"),
    ("192.0.2.2", False, "", "refused"),
    ("192.0.2.2", False, "adm", "token"),
    (None, False, "", "refused"),
])
def test_decision(peer: str | None, proxied: bool, token: str, access: str) -> None:
    """Loopback without a proxy goes through; everyone else needs the admin token, refused while none is set."""
    assert decide(peer, proxied, token) == access
