"""The client's address behind trusted reverse proxies (`server.trusted_proxies`): what `request.remote` says in
intake's logs, in the `remote` stored with each event, and to the SES source's budget of certificate fetches.

With no trusted proxy (the default) nothing here runs: the hooks' handlers are mounted bare and `request.remote`
is the connection's peer, as ever. With some, the hooks' handlers are wrapped (`behind_proxies`): when the peer is
one of them, the client is read from `X-Forwarded-For`, walking it from the right (the entry the peer itself
appended) past every address that is a trusted proxy too; the first that is not is the client. Everything left of
it was written by the client or by proxies that are not ours, so a client cannot forge its way past the proxy: it
can only add entries the walk never reaches. When every entry is a trusted proxy, the request began at one of them:
the leftmost is the client. An entry that is no IP address (`unknown`, an obfuscated name, garbage), or a walk past
MAX_HOPS entries, leaves the peer's own address: the chain is not understood, and the peer is the one fact known. A
peer that is not trusted has its headers ignored. No outcome is an error: a request is never refused for its
forwarding header.

Only `X-Forwarded-For` is read, not `Forwarded` (RFC 7239): HAProxy's `option forwardfor`, nginx, the Kubernetes
ingress controllers, Envoy and the cloud load balancers write `X-Forwarded-For`, and a proxy that writes only that
passes a client's own `Forwarded` on untouched: reading it would let a client name its address.

The sandbox's local-access decision (bridge/sandbox_access.py) reads the connection's own peer, never this: a
forwarded loopback address grants nothing there. A handler wrapper, not a middleware, as there: a middleware would
run aiohttp's middleware chain for every request to the server; this costs the hooks only, and nothing at all when
no proxy is trusted."""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from bridge.addresses import Address, ip_of
from bridge.errors import VALUE, ValueProblem

if TYPE_CHECKING:  # bridge.config reads `network_problem`: it loads without aiohttp (and the email package)
    from aiohttp import web
    from aiohttp.typedefs import Handler

MAX_HOPS = 16
"""Entries of X-Forwarded-For walked from the right at most: more trusted proxies in a row than any deployment has.
Past them the peer's address stands; a header's entries further left are never split nor read."""
LONGEST_ENTRY = 64
"""The most characters an entry may have and be read as an address (`[` an IPv6 address with a zone `]:` port)."""
HEADER = "X-Forwarded-For"
ENTRIES_KEPT = 4096
"""Addresses whose reading is kept (a few hundred bytes each), the least recently seen forgotten first."""

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def network_problem(text: str) -> ValueProblem | None:
    """What is wrong with one entry of `server.trusted_proxies`, or None when it is an IP address or a network in
    CIDR form (IPv4 or IPv6)."""
    try:
        ipaddress.ip_network(text, strict=True)
    except ValueError:
        try:
            ipaddress.ip_network(text, strict=False)
        except ValueError:
            return ValueProblem(f"{VALUE} is not an IP address or network: write an address (192.0.2.7, 2001:db8::7) "
                                "or a network in CIDR form (10.0.0.0/8, fd00::/8)", text)
        return ValueProblem(f"{VALUE} has bits set past its prefix length: write the network's own address "
                            "(10.0.0.0/8, not 10.0.0.1/8), or the one address without a prefix", text)
    return None


def parse_entry(text: str) -> Address | None:
    """One X-Forwarded-For entry as proxies write it: `192.0.2.7`, `2001:db8::7`, `[2001:db8::7]`, or with a port
    (`192.0.2.7:4711`, `[2001:db8::7]:4711`); None for anything else. Read as `addresses.ip_of` reads it: a zone
    left out, an IPv4-mapped IPv6 address as its IPv4 address."""
    text = text.strip(" \t")
    if len(text) > LONGEST_ENTRY:
        return None
    if text.startswith("["):
        host, bracket, port = text[1:].partition("]")
        if not bracket or (port and not _is_port(port[1:] if port[0] == ":" else "")):
            return None
        if ":" not in host:
            return None
    elif text.count(":") == 1:  # IPv4 with a port
        host, _colon, port = text.partition(":")
        if not _is_port(port):
            return None
    else:
        host = text
    return ip_of(host)


def _unmapped(network: Network) -> Network:
    """An IPv4-mapped IPv6 network (`::ffff:10.0.0.0/104`, `::ffff:192.0.2.7`) as the IPv4 network it names
    (10.0.0.0/8, 192.0.2.7/32), as peers and entries are read (`parse_entry`): kept as it is written, it would
    never hold one of them. Any other network as it is."""
    if isinstance(network, ipaddress.IPv6Network) and network.prefixlen >= 96:
        mapped = network.network_address.ipv4_mapped
        if mapped is not None:
            return ipaddress.IPv4Network((mapped, network.prefixlen - 96))
    return network


def _is_port(text: str) -> bool:
    return 0 < len(text) <= 5 and text.isascii() and text.isdigit()


class TrustedProxies:
    """The addresses and networks of `server.trusted_proxies` (each already checked: `network_problem`)."""

    def __init__(self, networks: Iterable[str]) -> None:
        self.networks: tuple[Network, ...] = tuple(_unmapped(ipaddress.ip_network(n)) for n in networks)
        # Parsing an address costs more than the rest of the walk: the peers (the proxies, and anyone else) and the
        # entries the walk reads (the proxies, and the senders behind them, each appended by a proxy: never what a
        # sender wrote left of its own) are read once while they keep coming, the least recently seen forgotten.
        self.trusts_peer = functools.lru_cache(maxsize=ENTRIES_KEPT)(self._trusts_peer)
        self._read = functools.lru_cache(maxsize=ENTRIES_KEPT)(self._read_entry)

    def __bool__(self) -> bool:
        return bool(self.networks)

    def everyone(self) -> list[str]:
        """The networks that hold every address of their family (`0.0.0.0/0`, `::/0`): behind them any client may
        name itself, in X-Forwarded-For, as any address it likes."""
        return [str(n) for n in self.networks if n.prefixlen == 0]

    def trusts(self, address: Address) -> bool:
        """Whether `address` (IPv4-mapped IPv6 read as IPv4) is in one of the networks."""
        return any(address in network for network in self.networks)

    def _read_entry(self, entry: str) -> tuple[str, bool] | None:
        """One X-Forwarded-For entry (blanks around it stripped) as the address it names, written as `ipaddress`
        writes it, and whether that is a trusted proxy; None when it is no address."""
        address = parse_entry(entry)
        return None if address is None else (str(address), self.trusts(address))

    def _trusts_peer(self, peer: str | None) -> bool:
        """Whether the connection's peer (`request.remote` as the socket gives it: an address, possibly with a zone,
        or empty for a Unix socket) is a trusted proxy."""
        if not peer:
            return False
        address = parse_entry(peer.split("%", 1)[0])
        return address is not None and self.trusts(address)

    def client(self, peer: str | None, forwarded_for: Sequence[str]) -> str | None:
        """The client's address for a request from `peer` carrying `forwarded_for` (each X-Forwarded-For header
        line, in order): the rightmost entry that is not a trusted proxy; the leftmost when all are; `peer` when
        it is not trusted, when there is no header, when an entry walked is no address, or past MAX_HOPS."""
        if not forwarded_for or not self.trusts_peer(peer):
            return peer
        leftmost: str | None = None
        hops = 0
        for line in reversed(forwarded_for):
            # At most the entries still to walk are split off; the rest stays one part, met only past MAX_HOPS.
            for written in reversed(line.rsplit(",", MAX_HOPS - hops)):
                hops += 1
                if hops > MAX_HOPS:
                    return peer
                entry = written.strip(" \t")
                # Too long to be an address: not kept (what is kept is bounded in bytes too).
                read = self._read(entry) if len(entry) <= LONGEST_ENTRY else None
                if read is None:
                    return peer
                address, trusted = read
                if not trusted:
                    return address
                leftmost = address
        return peer if leftmost is None else leftmost


def behind_proxies(handler: Handler, proxies: TrustedProxies) -> Handler:
    """`handler`, given the request with `remote` set to the client's address (`TrustedProxies.client`) when its
    peer is a trusted proxy that forwarded another address; the request as it came otherwise."""

    @functools.wraps(handler)
    async def forwarded(request: web.Request) -> web.StreamResponse:
        peer = request.remote
        if proxies.trusts_peer(peer):
            client = proxies.client(peer, request.headers.getall(HEADER, ()))
            if client != peer and client is not None:
                request = request.clone(remote=client)
        return await handler(request)

    return forwarded
