"""Vendor simulators: in-process stand-ins for sandbox destinations, tests and benchmarks.

The registry maps a vendor name to its simulator; `sandbox: true` destinations of that vendor are
served by it, and `ticketbridge sandbox` serves every registered one under /{vendor}/: one such process can serve
the `sandbox: true` destinations of several bridge processes, each given its `base_url`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from aiohttp import web

from bridge.simulators.base import VendorSimulator


def registry() -> dict[str, Callable[[], VendorSimulator]]:
    # Imported here: the simulators import the vendors, which the config loader imports.
    from bridge.simulators.http import HttpSimulator  # noqa: PLC0415
    from bridge.simulators.kapture import KaptureSimulator  # noqa: PLC0415
    from bridge.simulators.leadsquared import LeadSquaredSimulator  # noqa: PLC0415
    from bridge.simulators.netgroot import NetgrootSimulator  # noqa: PLC0415

    return {"kapture": KaptureSimulator, "leadsquared": LeadSquaredSimulator, "netgroot": NetgrootSimulator,
            "http": HttpSimulator}


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def serving(vendors: Iterable[str]) -> web.Application:
    """One application with a fresh simulator of each of `vendors` under /{vendor}/, and `/healthz` and `/readyz`
    (200 while it serves: what a container's health check and an orchestrator's probes ask)."""
    app = web.Application()
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _healthz)
    made = registry()
    for vendor in sorted(vendors):
        app.add_subapp(f"/{vendor}/", made[vendor]().app())
    return app
