"""Who may use the vendor simulators mounted on the public port (`/sandbox/{vendor}/…`): clients on this
machine, and anyone else with the admin token. The simulators can wipe tickets, create them and inject
faults, so they are no open door when `server.host` is a public address.

"On this machine" is decided by the connection's own peer address, never by a header a client can write.
Forwarding headers (a reverse proxy in front) can only make the decision stricter: a proxy on this
machine connects from loopback on behalf of clients that are not."""

from __future__ import annotations

import ipaddress
from typing import Literal

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from bridge.admin import refuse

log = structlog.get_logger("ticketbridge.sandbox")

PROXY_HEADERS = ("Forwarded", "X-Forwarded-For", "X-Real-IP")

Access = Literal["local", "token", "refused"]


def is_loopback(peer: str | None) -> bool:
    """Whether a transport peer address is loopback (127.0.0.0/8, ::1, or ::ffff:127.x); False for anything
    else, including no address or one that does not parse."""
    if not peer:
        return False
    try:
        address = ipaddress.ip_address(peer.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def decide(peer: str | None, proxied: bool, token: str) -> Access:
    """`local` (let it through), `token` (let it through with the admin token) or `refused` (no token is set)."""
    if is_loopback(peer) and not proxied:
        return "local"
    return "token" if token else "refused"


def transport_peer(request: web.Request) -> str | None:
    """The connection's peer host as the socket reports it (not `request.remote`, which may be rewritten)."""
    transport = request.transport
    peername = transport.get_extra_info("peername") if transport is not None else None
    if isinstance(peername, (tuple, list)) and peername:
        return str(peername[0])
    return None


def guard(token: str) -> Middleware:
    """A middleware for a simulator's application mounted on the public port."""

    @web.middleware
    async def sandbox_guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        proxied = any(name in request.headers for name in PROXY_HEADERS)
        peer = transport_peer(request)
        access = decide(peer, proxied, token)
        if access == "local":
            return await handler(request)
        if access == "token":
            refused = refuse(request, token)
            if refused is None:
                return await handler(request)
            log.info("sandbox.refused", peer=peer, method=request.method, path=request.path, reason="token")
            return refused
        log.info("sandbox.refused", peer=peer, method=request.method, path=request.path, reason="not_local")
        return web.json_response({"error": "the sandbox answers clients on this machine only (a loopback address, "
                                           "no proxy in between); to reach it from elsewhere set admin.token and "
                                           "send Authorization: Bearer <admin.token>"}, status=403)

    return sandbox_guard
