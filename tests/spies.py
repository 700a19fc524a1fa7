"""A function of a module watched for a test: each call noted, then made as before."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest


def calls_through(monkeypatch: pytest.MonkeyPatch, owner: object, name: str, note: Callable[..., object]) -> None:
    """Replace `owner.name` for the test by a function that calls `note` with its arguments, then the original
    with the same arguments, and returns what the original returns."""
    original = getattr(owner, name)

    def noted(*args: Any, **kwargs: Any) -> Any:
        note(*args, **kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, noted)
