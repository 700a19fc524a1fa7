"""Vendor name → adapter class; the config and mapping loaders look vendors up here."""

from __future__ import annotations

from bridge.config import DestinationConfig
from bridge.errors import VALUE, UnknownName
from bridge.vendors.base import Adapter
from bridge.vendors.http import HttpAdapter
from bridge.vendors.kapture import KaptureAdapter
from bridge.vendors.leadsquared import LeadSquaredAdapter
from bridge.vendors.netgroot import NetgrootAdapter

ADAPTERS: dict[str, type[Adapter]] = {
    cls.vendor: cls for cls in (KaptureAdapter, LeadSquaredAdapter, NetgrootAdapter, HttpAdapter)
}


def adapter_class(vendor: str) -> type[Adapter]:
    try:
        return ADAPTERS[vendor]
    except KeyError:
        raise UnknownName(f"unknown vendor {VALUE}; known vendors: {', '.join(sorted(ADAPTERS))}", vendor) from None


def vendor_options(vendor: str) -> type[DestinationConfig]:
    return adapter_class(vendor).Options
