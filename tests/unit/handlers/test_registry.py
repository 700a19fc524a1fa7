"""handlers/registry.py: source kind to handler class."""

from __future__ import annotations

import typing

import msgspec
import pytest

from bridge.config import ServerConfig, SourceConfig
from bridge.events import Channel
from handlers.base import Handler
from handlers.form import FormHandler, FormOptions
from handlers.json_hook import JsonHandler, JsonOptions
from handlers.registry import HANDLERS, build_handler, handler_class, saves_attachments, source_options
from tests.fixtures.provider_docs import SAMPLES, inbounds
from tests.fixtures.providers import postal_public_key


def test_known_kinds() -> None:
    """`form` and `json` name their handler classes."""
    assert handler_class("form") is FormHandler
    assert handler_class("json") is JsonHandler


@pytest.mark.parametrize("kind", ["wufoo", "", "Form", "JSON"])
def test_unknown_kind_lists_the_known_ones(kind: str) -> None:
    """An unknown kind (kinds are case-sensitive) is a KeyError whose message lists the known kinds, sorted."""
    with pytest.raises(KeyError) as info:
        handler_class(kind)
    message = info.value.args[0]
    assert f"unknown source kind {kind!r}" in message
    known = message.split("known kinds: ", 1)[1]
    assert known.split(", ") == sorted(HANDLERS)
    assert {"form", "json"} <= set(known.split(", "))


def test_source_options() -> None:
    """`source_options` gives each kind's options struct."""
    assert source_options("form") is FormOptions
    assert source_options("json") is JsonOptions
    with pytest.raises(KeyError):
        source_options("nope")


def test_build_handler_picks_the_class_from_the_options_kind() -> None:
    """`build_handler` makes the handler for the options' kind, with the name, options and server given."""
    opts = msgspec.convert({"kind": "json"}, JsonOptions)
    server = ServerConfig()
    h = build_handler("partner-api", opts, server)
    assert isinstance(h, JsonHandler)
    assert (h.name, h.options, h.server) == ("partner-api", opts, server)


def test_build_handler_unknown_kind() -> None:
    """Building a handler for options of an unknown kind is a KeyError."""
    with pytest.raises(KeyError, match="unknown source kind"):
        build_handler("x", SourceConfig(kind="nope"), ServerConfig())


# The least each kind needs: its secrets (docs/architecture.md, "Source options by kind").
REQUIRED: dict[str, dict[str, typing.Any]] = {
    "mailgun": {"signing_key": "k"}, "ses": {"topic_arns": ["arn:aws:sns:us-east-1:123456789012:t"]},
    "typeform": {"secret": "s"}, "tally": {"secret": "s"}, "webflow": {"secret": "s"}, "jotform": {"secret": "s"},
    "intercom": {"secret": "s"}, "twilio": {"auth_token": "t"}, "whatsapp": {"app_secret": "a", "verify_token": "v"},
    "slack": {"signing_secret": "s"}, "telegram": {"secret_token": "t"},
    "standard-webhooks": {"secret": "whsec_c2VjcmV0"},
    "mandrill": {"webhook_key": "k"}, "mailersend": {"secret": "s"},
    "resend": {"secret": "whsec_c2VjcmV0", "api_key": "re_k"},
    "postal": {"public_key": postal_public_key()},
}

PROVIDERS = {"mailgun", "sendgrid", "postmark", "ses", "cloudmailin", "typeform", "tally", "webflow", "jotform",
             "twilio", "whatsapp", "slack", "telegram", "intercom", "standard-webhooks",
             "brevo", "mailjet", "mandrill", "sparkpost", "resend", "mailersend", "postal"}


def test_every_provider_of_the_issue_is_registered() -> None:
    """Each email, form, chat and generic provider has a handler, besides `form` and `json`."""
    assert set(HANDLERS) == PROVIDERS | {"form", "json"}


@pytest.mark.parametrize("kind", sorted(HANDLERS))
def test_every_registered_handler_is_consistent(kind: str) -> None:
    """Each registered class is a Handler filed under its own kind, on a known channel, with SourceConfig options."""
    cls = HANDLERS[kind]
    assert issubclass(cls, Handler)
    assert cls.kind == kind
    assert cls.channel in typing.get_args(Channel)
    assert issubclass(cls.Options, SourceConfig)
    assert msgspec.convert({"kind": kind, **REQUIRED.get(kind, {})}, cls.Options).kind == kind


@pytest.mark.parametrize("kind", sorted(HANDLERS))
def test_a_kind_saves_attachments_exactly_when_its_events_carry_files(kind: str) -> None:
    """`saves_attachments` (what decides whether `serve` needs `attachments.dir` writable) says what the kind's
    handler does, whatever its channel: it is set exactly for the kinds whose documented samples (every kind
    has some: tests/fixtures/provider_docs.py) give events carrying a file's content for intake to write. Today
    that is every email kind, and no form (which keeps only a file's metadata), chat or webhook one."""
    carried = [item for sample in SAMPLES[kind] for inbound in inbounds(kind, sample) for item in inbound.attachments
               if item.content is not None]
    assert saves_attachments(kind) == bool(carried), (kind, len(carried))


def test_an_unknown_kind_saves_no_attachments() -> None:
    """An unknown kind saves nothing: its config does not load."""
    assert not saves_attachments("wufoo")


@pytest.mark.parametrize("kind", sorted(REQUIRED))
def test_secrets_are_required(kind: str) -> None:
    """A kind that verifies with a secret refuses a config without it."""
    with pytest.raises(msgspec.ValidationError, match="missing required field"):
        msgspec.convert({"kind": kind}, HANDLERS[kind].Options)


@pytest.mark.parametrize("kind", sorted(HANDLERS))
def test_options_of_another_kind_are_refused(kind: str) -> None:
    """Each kind validates its own options: another kind's option is an unknown key."""
    with pytest.raises(msgspec.ValidationError, match="unknown field `redirect_to_nowhere`"):
        msgspec.convert({"kind": kind, **REQUIRED.get(kind, {}), "redirect_to_nowhere": 1}, HANDLERS[kind].Options)
