"""Who may use the vendor simulators mounted on the public port (`/sandbox/{vendor}/…`): clients on this
machine, and anyone else with the admin token. The simulators can wipe tickets, create them and inject
faults, so they are no open door when `server.host` is a public address.

"On this machine" is decided by the connection's own peer address, never by a header a client can write.
Forwarding headers (a reverse proxy in front) can only make the decision stricter: a proxy on this
machine connects from loopback on behalf of clients that are not. So can a browser on this machine acting for
a page of another site: a request marked cross-site (`Origin` of another site, `Sec-Fetch-Site`), or one for a
host name that is not this machine's (a name an attacker's DNS points at 127.0.0.1) is not local either."""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Callable
from typing import Literal

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

from bridge.addresses import ip_of
from bridge.admin import refuse

log = structlog.get_logger("ticketbridge.sandbox")

PROXY_HEADERS = ("Forwarded", "X-Forwarded-For", "X-Real-IP")

Access = Literal["local", "token", "refused"]


def is_loopback(peer: str | None) -> bool:
    """Whether a transport peer address is loopback (127.0.0.0/8, ::1, or ::ffff:127.x); False for anything
    else, including no address or one that does not parse."""
    address = ip_of(peer) if peer else None
    return address is not None and address.is_loopback


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


LOCAL_HOSTS = ("localhost", "127.0.0.1", "[::1]")


def _host_name(host: str) -> str:
    """A Host header's name without its port, lower-case (`[::1]` keeps its brackets)."""
    host = host.strip().lower()
    if host.startswith("["):
        return host.split("]", 1)[0] + "]"
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _loopback_ip(host: str) -> bool:
    """Whether a Host name is a loopback IP address written out (`127.0.0.2`), not a name such as
    `127.example.com` that a DNS answer could point anywhere."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def why_not_local(request: web.Request) -> str | None:
    """Why a request on a loopback connection does not speak for this machine, or None when it does: a proxy's
    forwarding header, a browser's mark of a page on another site, or a Host that names no loopback address."""
    for name in PROXY_HEADERS:
        if name in request.headers:
            return f"it came through a proxy ({name})"
    host = _host_name(request.headers.get("Host", "localhost"))
    if host not in LOCAL_HOSTS and not host.endswith(".localhost") and not _loopback_ip(host):
        return f"it was sent for the host {host[:100]!r}, not localhost or a loopback address"
    site = request.headers.get("Sec-Fetch-Site", "none").lower()
    if site not in ("none", "same-origin"):
        return f"a browser sent it for a page of another site (Sec-Fetch-Site: {site})"
    origin = request.headers.get("Origin")
    if origin is not None and origin.lower() != f"{request.scheme}://{request.headers.get('Host', '')}".lower():
        return f"a browser sent it for a page of another site (Origin: {origin[:100]})"
    return None


NOT_LOCAL = ("the sandbox answers clients on this machine only (a loopback address, no proxy in between, no page of "
             "another site){said}; to reach it from elsewhere set admin.token and send Authorization: Bearer "
             "<admin.token>")


def guard(token: str) -> Callable[[Handler], Handler]:
    """What wraps each handler of a simulator's application mounted on the public port. A handler wrapper, not a
    middleware: a middleware on a mounted application makes aiohttp run the middleware chain for every request to
    the server, intake's included (about 12k instructions a request); this costs only the sandbox's own."""

    def wrap(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def sandbox_guard(request: web.Request) -> web.StreamResponse:
            foreign = why_not_local(request)
            peer = transport_peer(request)
            access = decide(peer, foreign is not None, token)
            if access == "local":
                return await handler(request)
            if access == "token":
                refused = refuse(request, token)
                if refused is None:
                    return await handler(request)
                log.info("sandbox.refused", peer=peer, method=request.method, path=request.path, reason="token")
                return refused
            log.info("sandbox.refused", peer=peer, method=request.method, path=request.path, reason="not_local",
                     why=foreign)
            said = f" ({foreign})" if foreign is not None and is_loopback(peer) else ""
            return web.json_response({"error": NOT_LOCAL.format(said=said)}, status=403)

        return sandbox_guard

    return wrap
