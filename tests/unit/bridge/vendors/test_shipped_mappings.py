"""The shipped example mappings against their vendors' static checks."""

from __future__ import annotations

from pathlib import Path

from bridge.app import load_mappings
from bridge.config import load_config
from bridge.registries import REGISTRIES
from bridge.vendors.registry import adapter_class


def test_shipped_mappings_pass_their_vendors_static_checks(tmp_path: Path) -> None:
    """Every shipped mapping has the fields and options its vendor's action needs, so loading will not refuse it."""
    config = load_config(None, environ={}, cwd=tmp_path, registries=REGISTRIES)
    mappings = load_mappings(config)
    vendors = set()
    for mapping in mappings.mappings.values():
        vendor = config.destinations[mapping.destination].vendor
        vendors.add((vendor, mapping.action))
        cls = adapter_class(vendor)
        assert cls.static_check(mapping.action, list(mapping.spec.fields), mapping.options) == [], \
            mapping.name
    assert vendors >= {("kapture", "create_ticket"), ("kapture", "update_ticket"),
                       ("leadsquared", "create_ticket"), ("netgroot", "create_ticket")}
