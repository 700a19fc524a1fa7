"""Source kind → handler class: the only way the core reaches a provider's module."""

from __future__ import annotations

from bridge.config import ServerConfig, SourceConfig
from handlers.base import Handler
from handlers.form import FormHandler
from handlers.json_hook import JsonHandler

HANDLERS: dict[str, type[Handler]] = {cls.kind: cls for cls in (FormHandler, JsonHandler)}


def handler_class(kind: str) -> type[Handler]:
    try:
        return HANDLERS[kind]
    except KeyError:
        raise KeyError(f"unknown source kind {kind!r}; known kinds: {', '.join(sorted(HANDLERS))}") from None


def source_options(kind: str) -> type[SourceConfig]:
    return handler_class(kind).Options


def build_handler(name: str, options: SourceConfig, server: ServerConfig) -> Handler:
    return handler_class(options.kind)(name, options, server)
