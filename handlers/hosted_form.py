"""Shared by hosted form providers: their options, and answers flattened to field -> value."""

from __future__ import annotations

from typing import Any, Literal

from bridge.config import SourceConfig
from handlers.formdata import add_value
from handlers.signing import require


class SignedFormOptions(SourceConfig, kw_only=True, forbid_unknown_fields=True):
    secret: str
    field_names: Literal["label", "ref"] = "label"
    """Key each answer by the question's label as the form shows it, or by its stable reference."""

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.secret, "secret", "FORM_WEBHOOK_SECRET")


def flatten(answers: list[tuple[str, Any]], raw: dict[str, Any]) -> dict[str, Any]:
    """Answers as `{field: value}` (a field answered twice becomes a list), the raw body under `provider`."""
    out: dict[str, Any] = {}
    for key, value in answers:
        add_value(out, "provider_" if key == "provider" else key, value)  # the raw body owns `provider`
    out["provider"] = raw
    return out
