"""Building tracing from the config: nothing while off, and a clear error when on without the `otel` extra."""

from __future__ import annotations

import sys

import pytest

from bridge.config import TracingConfig
from bridge.errors import ConfigError
from bridge.tracing import build_tracing


def test_tracing_off_builds_nothing() -> None:
    """`enabled: false` (the default) gives no tracing at all."""
    assert build_tracing(TracingConfig()) is None


def test_tracing_on_without_the_extra_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    """Enabled without OpenTelemetry installed, the error names the extra to install and the key to turn off."""
    monkeypatch.setitem(sys.modules, "bridge.otel", None)  # as if its imports failed
    with pytest.raises(ConfigError, match=r"pip install 'ticketbridge\[otel\]', or set tracing.enabled: false"):
        build_tracing(TracingConfig(enabled=True))
