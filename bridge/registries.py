"""The registries `load_config` is given: source kind and destination vendor → their options type."""

from __future__ import annotations

from bridge.config import Registries
from bridge.vendors.registry import vendor_options
from handlers.registry import source_options

REGISTRIES = Registries(source_options=source_options, vendor_options=vendor_options)
