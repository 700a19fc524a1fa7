"""The client's address behind trusted reverse proxies: X-Forwarded-For walked from the right past the trusted
proxies, only from a trusted peer, never past MAX_HOPS, never an error."""

from __future__ import annotations

from typing import Any
from unittest import mock

import pytest
import structlog
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from bridge import forwarded
from bridge.app import build_app
from bridge.forwarded import MAX_HOPS, TrustedProxies, behind_proxies, network_problem, parse_entry
from bridge.intake import hook_get, hook_post
from tests.conftest import ConfigFactory

PROXIES = TrustedProxies(["10.0.0.0/8", "192.0.2.7", "fd00::/8", "2001:db8::7"])


@pytest.mark.parametrize(("peer", "header", "client"), [
    # the entry the proxy appended, when it is not a proxy itself
    ("10.0.0.2", ["8.8.4.4"], "8.8.4.4"),
    # entries a client wrote itself, left of the one its proxy appended, are never reached
    ("10.0.0.2", ["1.1.1.1, 127.0.0.1, 8.8.4.4"], "8.8.4.4"),
    ("10.0.0.2", ["127.0.0.1", "8.8.4.4"], "8.8.4.4"),  # header lines read as one list, in order
    # trusted proxies in a row are walked past, right to left
    ("10.0.0.2", ["1.1.1.1, 8.8.4.4, 10.9.9.9, 192.0.2.7"], "8.8.4.4"),
    ("10.0.0.2", ["8.8.4.4, 10.9.9.9", "192.0.2.7"], "8.8.4.4"),
    # every entry a trusted proxy: the request began at the leftmost
    ("10.0.0.2", ["10.1.1.1, 10.2.2.2"], "10.1.1.1"),
    # IPv6, bracketed, with ports, IPv4-mapped, blanks
    ("fd00::1", ["2001:4860::8888"], "2001:4860::8888"),
    ("fd00::1", ["[2001:4860::8888]:4711, fd00::9"], "2001:4860::8888"),
    ("fd00::1", ["[2001:4860::8888]"], "2001:4860::8888"),
    ("10.0.0.2", ["8.8.4.4:55000"], "8.8.4.4"),
    ("10.0.0.2", ["  8.8.4.4 ,\t2001:db8::7 "], "8.8.4.4"),
    ("::ffff:10.0.0.2", ["::ffff:8.8.4.4"], "8.8.4.4"),
    ("2001:db8::7", ["8.8.4.4"], "8.8.4.4"),
    ("10.0.0.2", ["2001:db8::8"], "2001:db8::8"),  # next to a trusted address, not trusted itself
])
def test_the_client_is_the_rightmost_entry_that_is_no_trusted_proxy(peer: str, header: list[str], client: str
                                                                     ) -> None:
    assert PROXIES.client(peer, header) == client


@pytest.mark.parametrize("header", [
    ["unknown"], ["_hidden"], ["8.8.4.4, garbage"], ["8.8.4.4,"], [""], ["8.8.4.4, 10.0.0.300"],
    ["8.8.4.4:port"], ["8.8.4.4:123456"], ["[2001:4860::8888"], ["[2001:4860::8888]x"], ["[8.8.4.4]"],
    ["2001:4860::8888:80:80:80:80:80"], ["8.8.4.4\x00"], ["\uff18.\uff18.\uff14.\uff14"], ["8.8.4.4:\u0661\u0662"],
    ["1" * 1000],
])
def test_an_entry_walked_that_is_no_address_leaves_the_peer(header: list[str]) -> None:
    """A malformed entry reached before any untrusted one: the chain is not understood, the peer stands."""
    assert PROXIES.client("10.0.0.2", header) == "10.0.0.2"


def test_an_entry_too_long_to_be_an_address_is_not_kept() -> None:
    """An entry over LONGEST_ENTRY characters (a header line may hold 8 KiB) leaves the peer and is not kept: the
    readings kept stay small whatever a proxy that appends nothing passes on."""
    proxies = TrustedProxies(["10.0.0.0/8"])
    assert proxies.client("10.0.0.2", ["8" * 8000]) == "10.0.0.2"
    assert proxies.client("10.0.0.2", ["8.8.4.4"]) == "8.8.4.4"
    assert proxies._read.cache_info().currsize == 1


def test_garbage_left_of_the_client_is_never_read() -> None:
    """What a client wrote left of the entry its proxy appended does not matter, whatever it is."""
    assert PROXIES.client("10.0.0.2", ["garbage, , unknown, 8.8.4.4"]) == "8.8.4.4"


def test_the_walk_stops_past_max_hops_and_leaves_the_peer(monkeypatch: pytest.MonkeyPatch) -> None:
    """MAX_HOPS trusted entries, then the client: past the bound, the peer stands; a header of 100,000 entries
    has only its last MAX_HOPS read, however many lines it comes in."""
    within = ", ".join(["8.8.4.4", *(f"10.0.0.{i}" for i in range(MAX_HOPS - 1))])
    assert PROXIES.client("10.0.0.2", [within]) == "8.8.4.4"
    past = ", ".join(["8.8.4.4", *(f"10.0.0.{i}" for i in range(MAX_HOPS))])
    assert PROXIES.client("10.0.0.2", [past]) == "10.0.0.2"

    read: list[str] = []

    def counted(text: str) -> Any:
        read.append(text)
        return parse_entry(text)

    monkeypatch.setattr(forwarded, "parse_entry", counted)
    entries = [f"10.{i // 65536}.{i // 256 % 256}.{i % 256}" for i in range(100_000)]
    assert TrustedProxies(["10.0.0.0/8"]).client("10.0.0.2", [", ".join(entries)]) == "10.0.0.2"
    assert read == ["10.0.0.2", *entries[-MAX_HOPS:][::-1]]  # the peer, then the entries walked
    read.clear()
    assert TrustedProxies(["10.0.0.0/8"]).client("10.0.0.2", entries[:1000]) == "10.0.0.2"
    assert read == ["10.0.0.2", *entries[1000 - MAX_HOPS:1000][::-1]]


@pytest.mark.parametrize("peer", ["8.8.4.4", "127.0.0.1", "", None, "not an address",
                                  "2001:db8::8"])
def test_a_peer_that_is_no_trusted_proxy_has_its_header_ignored(peer: str | None) -> None:
    assert PROXIES.client(peer, ["8.8.8.8"]) == peer


def test_no_header_leaves_the_peer() -> None:
    assert PROXIES.client("10.0.0.2", []) == "10.0.0.2"


def test_no_trusted_proxy_trusts_nothing() -> None:
    nobody = TrustedProxies([])
    assert not nobody
    assert nobody.client("10.0.0.2", ["8.8.4.4"]) == "10.0.0.2"
    assert TrustedProxies(["0.0.0.0/0"]).client("8.8.4.4", ["9.9.9.9"]) == "9.9.9.9"


@pytest.mark.parametrize("entry", ["10.0.0.0/8", "192.0.2.7", "192.0.2.7/32", "fd00::/8", "2001:db8::7",
                                   "::ffff:0:0/96", "0.0.0.0/0"])
def test_addresses_and_networks_are_taken(entry: str) -> None:
    assert network_problem(entry) is None


@pytest.mark.parametrize(("entry", "said"), [
    ("10.0.0.1/8", "'10.0.0.1/8' has bits set past its prefix length: write the network's own address "
                   "(10.0.0.0/8, not 10.0.0.1/8), or the one address without a prefix"),
    ("10.0.0.0/33", "'10.0.0.0/33' is not an IP address or network: write an address (192.0.2.7, 2001:db8::7) or a "
                    "network in CIDR form (10.0.0.0/8, fd00::/8)"),
    ("proxy.internal", "'proxy.internal' is not an IP address or network"),
    ("", "'' is not an IP address or network"),
    ("10.0.0.0-10.0.0.9", "'10.0.0.0-10.0.0.9' is not an IP address or network"),
])
def test_a_bad_entry_says_what_is_right(entry: str, said: str) -> None:
    problem = network_problem(entry)
    assert problem is not None
    assert str(problem).startswith(said)


async def test_the_wrapper_hands_a_trusted_peers_request_on_with_the_client_as_remote() -> None:
    """From a trusted peer, the handler sees the forwarded client as `request.remote` (the transport's peer is
    unchanged); from any other, the request as it came."""
    seen: list[tuple[str | None, Any]] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        transport = request.transport
        seen.append((request.remote, transport.get_extra_info("peername") if transport else None))
        return web.Response()

    wrapped = behind_proxies(handler, PROXIES)
    for peer in ("10.0.0.2", "8.8.8.8"):
        transport = mock.Mock()
        transport.get_extra_info.side_effect = lambda name, default=None, peer=peer: (
            (peer, 4711) if name == "peername" else default)
        await wrapped(make_mocked_request("POST", "/hooks/x", headers={"X-Forwarded-For": "1.2.3.4, 8.8.4.4"},
                                          transport=transport))
    assert seen == [("8.8.4.4", ("10.0.0.2", 4711)), ("8.8.8.8", ("8.8.8.8", 4711))]


@pytest.mark.parametrize(("server", "wrapped"), [("{}", False), ("{trusted_proxies: [10.0.0.0/8]}", True)])
def test_the_hooks_are_mounted_bare_unless_a_proxy_is_trusted(write_config: ConfigFactory, server: str,
                                                              wrapped: bool) -> None:
    """With no trusted proxy, /hooks/{source}'s GET and POST are intake's own handlers: not one step more per
    request; with some, they are wrapped to read the forwarded client."""
    app = build_app(write_config(f"server: {server}\nstore: {{url: 'sqlite:///var/bridge.db'}}\n"), workers=False)
    handlers = {route.method: route.handler for route in app.router.routes()
                if route.resource is not None and route.resource.canonical == "/hooks/{source}"}
    assert (handlers["POST"] is not hook_post, handlers["GET"] is not hook_get) == (wrapped, wrapped)
    assert getattr(handlers["POST"], "__wrapped__", handlers["POST"]) is hook_post


@pytest.mark.parametrize("network", ["::ffff:10.0.0.0/104", "::ffff:0:0/96", "::ffff:10.0.0.2"])
@pytest.mark.parametrize("peer", ["10.0.0.2", "::ffff:10.0.0.2"])
def test_an_ipv4_mapped_network_trusts_the_ipv4_addresses_it_names(network: str, peer: str) -> None:
    """A trusted network written IPv4-mapped (as a dual-stack socket shows an IPv4 peer) holds the IPv4 addresses it
    names, as a peer and as an entry walked past: peers and entries are read as IPv4, so kept as IPv6 it held none
    and the proxy's header was never read."""
    proxies = TrustedProxies([network])
    assert proxies.client(peer, ["8.8.4.4"]) == "8.8.4.4"
    assert proxies.client(peer, ["8.8.4.4, ::ffff:10.0.0.2"]) == "8.8.4.4"
    assert proxies.client("192.0.2.9", ["8.8.4.4"]) == ("8.8.4.4" if network == "::ffff:0:0/96" else "192.0.2.9")


@pytest.mark.parametrize(("networks", "everyone"), [
    ("[0.0.0.0/0]", ["0.0.0.0/0"]), ("['::/0', 10.0.0.0/8]", ["::/0"]), ("['::ffff:0:0/96']", ["0.0.0.0/0"]),
    ("[10.0.0.0/8, '0.0.0.0/1']", None),
])
def test_trusting_every_address_is_warned_of_at_start(write_config: ConfigFactory, networks: str,
                                                      everyone: list[str] | None) -> None:
    """A trusted network that holds every address of its family lets any sender name itself: the start's log says
    which, and what to write instead; a network short of that is no such warning."""
    with structlog.testing.capture_logs() as logs:
        build_app(write_config(f"server: {{trusted_proxies: {networks}}}\nstore: {{url: 'sqlite:///var/bridge.db'}}\n"),
                  workers=False)
    warned = [e for e in logs if e["event"] == "server.trusted_proxies_everyone"]
    if everyone is None:
        assert warned == []
    else:
        assert [w["networks"] for w in warned] == [everyone]
        assert "list the reverse proxies' own addresses" in warned[0]["note"]
