"""bridge/bearer.py: the bearer-token check the admin API and `auth.bearer` sources share."""

from __future__ import annotations

import pytest

from bridge.bearer import check_bearer


@pytest.mark.parametrize("header", ["Bearer s3cret", "bearer s3cret", "BEARER  s3cret "])
def test_the_expected_token_passes(header: str) -> None:
    """The expected token passes with the scheme in any case and spaces around it ignored."""
    assert check_bearer(header, "s3cret") == "ok"


@pytest.mark.parametrize("header", ["", "Bearer", "Bearer   ", "s3cret", "Token s3cret", "Basic czNjcmV0"])
def test_no_bearer_token_is_missing(header: str) -> None:
    """No header, an empty token, a bare token or another scheme carries no bearer token."""
    assert check_bearer(header, "s3cret") == "missing"


@pytest.mark.parametrize("token", ["s3cre", "s3crets", "S3CRET", "s\udcffcret", "s3cret\udcff"])
def test_any_other_token_is_wrong(token: str) -> None:
    """A prefix, an extension, another case or undecodable bytes (kept as surrogates) never match, never raise."""
    assert check_bearer(f"Bearer {token}", "s3cret") == "wrong"
