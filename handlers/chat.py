"""The chat channel's shape, the same keys for every chat provider (docs/architecture.md, "The canonical event")."""

from __future__ import annotations

from typing import Any


def chat_payload(*, from_: Any, from_name: Any, to: Any, text: Any, conversation_id: Any, message_id: Any,
                 media: list[dict[str, Any]], provider: dict[str, Any]) -> dict[str, Any]:
    """Ids become strings (providers mix numbers and strings), absent values None."""
    return {
        "from": _str(from_), "from_name": _str(from_name), "to": _str(to), "text": text if isinstance(text, str)
        else None, "conversation_id": _str(conversation_id), "message_id": _str(message_id), "media": media,
        "provider": provider,
    }


def _str(value: Any) -> str | None:
    if value is None or value == "" or isinstance(value, bool | dict | list):
        return None
    return str(value)
