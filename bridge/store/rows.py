"""What the SQL backends share: the delivery columns, row conversion, and the JSON codecs."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import msgspec

from bridge.events import Event
from bridge.store.base import AttemptRow, DeliveryRow

encode = msgspec.json.Encoder().encode
decode_event = msgspec.json.Decoder(Event).decode
decode_dict = msgspec.json.Decoder(dict[str, Any]).decode

ROW_COLUMNS = ("id, event_id, source, mapping, mapping_version, destination, action, status, attempts, tries, "
               "next_attempt_at, created_at, updated_at, last_error, ticket_id, ticket_key")
ROW_WIDTH = 16
ATTEMPT_COLUMNS = "n, started_at, duration_ms, http_status, response_excerpt, classification, error"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def delivery_row(r: Sequence[Any]) -> DeliveryRow:
    """A row selected with ROW_COLUMNS."""
    return DeliveryRow(
        id=r[0], event_id=r[1], source=r[2], mapping=r[3], mapping_version=r[4], destination=r[5],
        action=r[6], status=r[7], attempts=r[8], tries=r[9], next_attempt_at_ms=r[10], created_at_ms=r[11],
        updated_at_ms=r[12], last_error=r[13], ticket_id=r[14], ticket_key=r[15],
    )


def attempt_row(a: Sequence[Any]) -> AttemptRow:
    """A row selected with ATTEMPT_COLUMNS."""
    return AttemptRow(n=a[0], started_at_ms=a[1], duration_ms=a[2], http_status=a[3], response_excerpt=a[4],
                      classification=a[5], error=a[6])
