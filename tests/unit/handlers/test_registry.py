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
from handlers.registry import HANDLERS, build_handler, handler_class, source_options


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


@pytest.mark.parametrize("kind", sorted(HANDLERS))
def test_every_registered_handler_is_consistent(kind: str) -> None:
    """Each registered class is a Handler filed under its own kind, on a known channel, with SourceConfig options."""
    cls = HANDLERS[kind]
    assert issubclass(cls, Handler)
    assert cls.kind == kind
    assert cls.channel in typing.get_args(Channel)
    assert issubclass(cls.Options, SourceConfig)
    assert msgspec.convert({"kind": kind}, cls.Options).kind == kind
