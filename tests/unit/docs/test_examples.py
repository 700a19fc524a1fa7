"""The example mappings under docs/examples load against their vendors and pass their own inline tests."""

from __future__ import annotations

import shutil
from pathlib import Path

from bridge.app import load_mappings
from bridge.mapping.testing import describe_failure, run_tests
from tests.conftest import ConfigFactory

EXAMPLES = Path(__file__).resolve().parents[3] / "docs" / "examples"

CONFIG = """
sources:
  chat: {kind: json}
destinations:
  isp-crm: {vendor: netgroot, sandbox: true, type_id: 1, status_id: 1, priority_id: 2, group_id: 1}
"""


def test_netgroot_follow_up_example_loads_and_passes_its_tests(write_config: ConfigFactory, tmp_path: Path) -> None:
    """The ISP CRM follow-up example (a new ticket naming the first, attachments listed) passes its inline tests,
    one of which gives a `ticket` as a follow-up's input, and one a message without text (a photo)."""
    config = write_config(CONFIG)
    shutil.copy(EXAMPLES / "chat-to-ispcrm-follow-ups.yaml", tmp_path / "mappings")
    results = run_tests(load_mappings(config), config.vars)
    assert len(results) == 4
    assert [describe_failure(r) for r in results if not r.passed] == []
