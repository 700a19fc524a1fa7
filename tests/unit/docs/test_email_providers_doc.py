"""docs/email-providers.md, as written: its sources load, and its table covers each kind it documents."""

from __future__ import annotations

import re
from pathlib import Path

from handlers.registry import HANDLERS
from tests.conftest import ConfigFactory
from tests.fixtures.providers import postal_public_key

DOC = Path(__file__).resolve().parents[3] / "docs" / "email-providers.md"
KINDS = ["brevo", "mailjet", "mandrill", "sparkpost", "resend", "mailersend", "postal"]


def test_documented_sources_load(write_config: ConfigFactory) -> None:
    """The doc's `sources:` block loads unchanged, with its secrets from the environment, one source per kind."""
    [block, _aliases] = re.findall(r"```yaml\n(.*?)```", DOC.read_text(), flags=re.DOTALL)
    names = re.findall(r"\$\{(\w+)\}", block)
    env = {name: "secret-value" for name in names} | {"RESEND_WEBHOOK_SECRET": "whsec_c2VjcmV0",
                                                      "POSTAL_PUBLIC_KEY": postal_public_key()}
    config = write_config(block, {}, env)
    assert sorted(s.kind for s in config.sources.values()) == sorted(KINDS)


def test_the_documented_sender_domain_aliases_load(write_config: ConfigFactory) -> None:
    """The page's `sender_domain_aliases` example loads as written."""
    [_kinds, block] = re.findall(r"```yaml\n(.*?)```", DOC.read_text(), flags=re.DOTALL)
    config = write_config(block, {}, {"MAILGUN_SIGNING_KEY": "secret-value"})
    assert config.sources["support-mail"].sender_domain_aliases == {"contoso.onmicrosoft.com": "contoso.com",
                                                                    "contoso.de": "contoso.com"}


def test_every_documented_kind_is_registered_and_in_the_table() -> None:
    """Each kind the page documents is a registered email handler with a row in the page's table."""
    text = DOC.read_text()
    for kind in KINDS:
        assert HANDLERS[kind].channel == "email"
        assert f"\n| `{kind}` |" in text, kind
