"""OpenTelemetry traces (the optional `otel` extra), off unless `tracing.enabled`: a span per intake request
(its source, answer, event and delivery ids) and per delivery attempt (its delivery, event, mapping,
destination, classification and HTTP status).

Each span is recorded once its work is over, with that work's own start and end times: nothing is held
open across awaits, and with tracing off there is no Tracing at all, so the intake path pays one `is None`.
Spans leave through the SDK's batch processor, on its own thread. The SDK is used in bridge/otel.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bridge.config import TracingConfig
from bridge.errors import ConfigError

if TYPE_CHECKING:
    from bridge.otel import Tracing


def build_tracing(config: TracingConfig) -> Tracing | None:
    """The configured tracing, exporting over OTLP/HTTP; None while it is off. Raises ConfigError when it is
    on without the `otel` extra installed."""
    if not config.enabled:
        return None
    try:
        from bridge.otel import exporting  # noqa: PLC0415 - the optional extra, loaded only when enabled
    except ImportError as exc:
        raise _not_installed(exc) from None
    return exporting(config)


def tracing_problem(config: TracingConfig) -> ConfigError | None:
    """The error build_tracing would raise for `config` (the `otel` extra missing while tracing is on), found
    without building anything, for `check`; None when it would raise none."""
    if not config.enabled:
        return None
    try:
        import bridge.otel  # noqa: F401, PLC0415 - the optional extra, loaded only when enabled
    except ImportError as exc:
        return _not_installed(exc)
    return None


def _not_installed(exc: ImportError) -> ConfigError:
    return ConfigError(f"tracing.enabled is true, but OpenTelemetry is not installed ({exc.name} is missing): "
                       "pip install 'ticketbridge[otel]', or set tracing.enabled: false", path="tracing.enabled")
