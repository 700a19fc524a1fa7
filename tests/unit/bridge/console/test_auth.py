"""Who a bearer token names: the admin token, a named read-only token, or nobody."""

from __future__ import annotations

import pytest

from bridge.config import AdminConfig
from bridge.console.auth import Caller, api_on, identify

ADMIN = AdminConfig(token="admin-secret", read_tokens={"grafana": "g-secret", "oncall": "o-secret"})


@pytest.mark.parametrize(("header", "caller"), [
    ("Bearer admin-secret", Caller("admin", "admin")),
    ("bearer  g-secret ", Caller("grafana", "read")),
    ("Bearer o-secret", Caller("oncall", "read")),
    ("Bearer g-secre", None),
    ("Basic g-secret", None),
    ("Bearer", None),
    ("", None),
    ("Bearer \udcff", None),
])
def test_a_token_names_its_caller_and_role(header: str, caller: Caller | None) -> None:
    """The admin token is the caller "admin" who may change things; a read token is its name, read-only;
    anything else, including undecodable bytes, is nobody."""
    assert identify(header, ADMIN) == caller


def test_the_api_is_on_with_any_token_configured() -> None:
    """The admin API is off only while neither admin.token nor a read token is set."""
    assert not api_on(AdminConfig())
    assert api_on(AdminConfig(read_tokens={"grafana": "g"}))
    assert api_on(AdminConfig(token="t"))
