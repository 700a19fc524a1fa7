"""Source kind → handler class: the only way the core reaches a provider's module."""

from __future__ import annotations

from bridge.config import ServerConfig, SourceConfig
from bridge.errors import VALUE, UnknownName
from handlers.base import Handler
from handlers.brevo import BrevoHandler
from handlers.cloudmailin import CloudmailinHandler
from handlers.form import FormHandler
from handlers.intercom import IntercomHandler
from handlers.jotform import JotformHandler
from handlers.json_hook import JsonHandler
from handlers.mailersend import MailersendHandler
from handlers.mailgun import MailgunHandler
from handlers.mailjet import MailjetHandler
from handlers.mandrill import MandrillHandler
from handlers.postal import PostalHandler
from handlers.postmark import PostmarkHandler
from handlers.resend import ResendHandler
from handlers.sendgrid import SendgridHandler
from handlers.ses import SesHandler
from handlers.slack import SlackHandler
from handlers.sparkpost import SparkpostHandler
from handlers.standard_webhooks import StandardWebhooksHandler
from handlers.tally import TallyHandler
from handlers.telegram import TelegramHandler
from handlers.twilio import TwilioHandler
from handlers.typeform import TypeformHandler
from handlers.webflow import WebflowHandler
from handlers.whatsapp import WhatsappHandler

HANDLERS: dict[str, type[Handler]] = {cls.kind: cls for cls in (
    FormHandler, JsonHandler,
    MailgunHandler, SendgridHandler, PostmarkHandler, SesHandler, CloudmailinHandler,
    BrevoHandler, MailjetHandler, MandrillHandler, SparkpostHandler, ResendHandler, MailersendHandler, PostalHandler,
    TypeformHandler, TallyHandler, WebflowHandler, JotformHandler,
    TwilioHandler, WhatsappHandler, SlackHandler, TelegramHandler, IntercomHandler,
    StandardWebhooksHandler,
)}


def handler_class(kind: str) -> type[Handler]:
    try:
        return HANDLERS[kind]
    except KeyError:
        raise UnknownName(f"unknown source kind {VALUE}; known kinds: {', '.join(sorted(HANDLERS))}", kind) from None


def source_options(kind: str) -> type[SourceConfig]:
    return handler_class(kind).Options


def saves_attachments(kind: str) -> bool:
    """Whether the events of a source of `kind` can carry files written to `attachments.dir`; False for a kind
    that is not known (the config that names it does not load)."""
    cls = HANDLERS.get(kind)
    return cls is not None and cls.saves_attachments


def build_handler(name: str, options: SourceConfig, server: ServerConfig) -> Handler:
    return handler_class(options.kind)(name, options, server)
