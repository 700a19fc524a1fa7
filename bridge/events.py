"""The canonical event every handler produces and every mapping reads."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import msgspec

from bridge.ids import new_id

Channel = Literal["email", "form", "chat", "webhook"]
_NEVER = datetime.min.replace(tzinfo=UTC)
_LAST_START = datetime.max.replace(microsecond=0, tzinfo=UTC)
_SECOND = timedelta(seconds=1)
_LAST_SECOND: list[tuple[datetime, datetime, str]] = [(_NEVER, _NEVER, "")]
"""The last second `utc_isoformat` wrote: its start, the next second's start, and its text (one tuple, replaced
whole: threads may share it)."""


def utc_isoformat(moment: datetime) -> str:
    """`moment.isoformat()`, with the text up to the second reused while the second is the same one (isoformat
    cost 11k instructions, more than an event's whole render). The second is told by two comparisons with its
    bounds (datetimes of one tzinfo compare their bytes), not by reading its six fields."""
    if moment.tzinfo is not UTC or type(moment) is not datetime:
        return moment.isoformat()
    start, end, text = _LAST_SECOND[0]
    if not start <= moment < end:
        start = moment.replace(microsecond=0)
        if start == _LAST_START:  # the last second there is: no next one to bound it
            return moment.isoformat()
        text = start.replace(tzinfo=None).isoformat()
        _LAST_SECOND[0] = (start, start + _SECOND, text)
    micro = moment.microsecond
    return text + "." + str(micro).zfill(6) + "+00:00" if micro else text + "+00:00"


class Event(msgspec.Struct, kw_only=True):
    """One inbound request (or one message of it), verified and normalised."""

    id: str
    source: str
    kind: str
    channel: Channel
    received_at: datetime
    dedup_key: str | None = None
    payload: dict[str, Any]
    headers: dict[str, str] = {}
    meta: dict[str, Any] = {}
    spam: bool = False

    @classmethod
    def new(
        cls, *, source: str, kind: str, channel: Channel, payload: dict[str, Any],
        headers: dict[str, str] | None = None, meta: dict[str, Any] | None = None,
        dedup_key: str | None = None, spam: bool = False,
    ) -> Event:
        return cls(
            id=new_id("evt"), source=source, kind=kind, channel=channel,
            received_at=datetime.now(UTC), dedup_key=dedup_key, payload=payload,
            headers=headers or {}, meta=meta or {}, spam=spam,
        )

    def context(self) -> dict[str, Any]:
        """The event's own fields as mappings see them under `event`."""
        return {
            "id": self.id, "source": self.source, "kind": self.kind, "channel": self.channel,
            "received_at": utc_isoformat(self.received_at), "dedup_key": self.dedup_key, "meta": self.meta,
        }
