"""Conversation identity: which earlier messages an event belongs with, so that its thread is one ticket.

An email's key is its thread's root Message-ID (the first of `references`, else `in_reply_to`, else its own
`message_id`), normalised so that the copies Mailgun, Postmark and SendGrid deliver agree, and so that a reply
received before the message it answers still names the same root. A `[#12345]` ticket token in the subject
joins the mail to that vendor ticket. A chat's key is the provider's `conversation_id` (Slack thread or
channel and person, WhatsApp and Twilio the customer's number, Telegram the chat, Intercom the conversation).
A mapping may compute the key itself (`conversation:`), which takes precedence.

An email's key is written by its sender, so the store lets it join a conversation only from that conversation's
first sender (`ConversationKey.by_sender`); another sender's message gets a conversation of its own
(`split_key`). See docs/security.md, "Conversations".
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, NamedTuple

from bridge.errors import Rejected
from handlers.email import sender as email_sender

DEFAULT_REOPEN_AFTER_S = 7 * 24 * 3600.0
TICKET_TOKEN = re.compile(r"\[#(\d{1,32})\]")
"""A helpdesk's ticket number in a subject, `[#713516551148]`: digits only, so that `[#urgent]` is no ticket."""
MAX_KEY_CHARS = 512
"""A value longer than this is kept as its first KEEP_CHARS characters and the sha256 of the whole value
(`bounded`), so that two long values that share a prefix stay two conversations."""
KEEP_CHARS = MAX_KEY_CHARS - 72
MAX_SENDER_CHARS = 998
"""The longest `from` read as an address (`message_sender`): RFC 5322's limit on a header line, which a From
naming one mailbox fits. A longer value is no one sender's address, and is not parsed: parsing costs about a
millisecond per thousand characters, up to the email handlers' 256 KiB for an address field."""


def bounded(value: str) -> str:
    """`value` when it fits MAX_KEY_CHARS, else its first KEEP_CHARS characters, `~sha256:` and the hex digest
    of the whole value (at most MAX_KEY_CHARS characters either way)."""
    if len(value) <= MAX_KEY_CHARS:
        return value
    digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{value[:KEEP_CHARS]}~sha256:{digest}"


class ConversationKey(NamedTuple):
    """An event's conversation: `key` (stable across providers), and the vendor ticket it names, if any. A tuple:
    one is made for every message of a threaded mapping, at intake."""

    key: str
    ticket_id: str | None = None
    by_sender: bool = False
    """The key comes from what any sender may write (an email's subject token, References, In-Reply-To or
    Message-ID): the message joins the conversation only when its sender is the conversation's first sender."""


def normalise_message_id(value: str) -> str:
    """`<Local@Example.COM>` → `local@example.com`'s form used as a key: brackets and spaces gone, the domain
    in lower case (the local part is case-sensitive by the standard, and kept)."""
    text = value.strip().strip("<>").strip()
    local, at, domain = text.rpartition("@")
    return f"{local}@{domain.lower()}" if at else text


def email_key(payload: dict[str, Any]) -> ConversationKey | None:
    """The key of an email-shaped payload (handlers/email.py), or None when it names no message at all."""
    subject = payload.get("subject")
    if isinstance(subject, str) and "[#" in subject and (token := TICKET_TOKEN.search(subject)) is not None:
        return ConversationKey(f"ticket:{token.group(1)}", ticket_id=token.group(1), by_sender=True)
    refs = payload.get("references")
    root: Any = refs[0] if isinstance(refs, list) and refs else None
    for candidate in (root, payload.get("in_reply_to"), payload.get("message_id")):
        if isinstance(candidate, str) and candidate.strip("<> "):
            return ConversationKey(f"mail:{bounded(normalise_message_id(candidate))}", by_sender=True)
    return None


def _scalar_key(kind: str, value: Any) -> ConversationKey | None:
    """`kind:value` for a scalar value; None for nothing, an empty string, a boolean or a structure."""
    if value is None or value == "" or isinstance(value, bool | dict | list):
        return None
    return ConversationKey(f"{kind}:{bounded(str(value))}")


def chat_key(payload: dict[str, Any]) -> ConversationKey | None:
    return _scalar_key("chat", payload.get("conversation_id"))


EMAIL_KEYS = ("message_id", "in_reply_to", "references")


def channel_key(channel: str, payload: dict[str, Any]) -> ConversationKey | None:
    """The key the event's channel gives it. A plain JSON source's payload (the `webhook` channel: a sender that
    posts messages it has already normalised) is keyed the same way when it has the chat shape
    (`conversation_id`, which a chat message's `message_id` does not override) or the email shape (`message_id`,
    `in_reply_to` or `references`); else None: the message stands alone. A form's fields are typed by whoever
    fills the form in, so they never name another channel's thread: a form threads only by its mapping's
    `conversation:` expression."""
    if channel == "email":
        return email_key(payload)
    if channel == "form":
        return None
    if channel == "chat" or payload.get("conversation_id"):
        return chat_key(payload)
    if payload.get("message_id") or payload.get("in_reply_to") or payload.get("references"):  # EMAIL_KEYS
        return email_key(payload)
    return None


def given_key(value: Any) -> ConversationKey | None:
    """A key a mapping's `conversation:` expression rendered; None when it rendered nothing."""
    return _scalar_key("key", value)


def message_sender(payload: dict[str, Any], aliases: Mapping[str, str] | None = None) -> str:
    """The sender a conversation remembers and compares: the bare, lower-cased address of `from`, read as the
    email handlers read a From (handlers/email.py `sender`: an email's payload has it so already; a JSON
    source's `Bob <Bob@X.io>` is `bob@x.io`, as its `bob@x.io` is; an address's case carries no meaning in
    practice), at the domain its domain is an alias of in `aliases` (the source's `sender_domain_aliases`:
    `jo@contoso.onmicrosoft.com` is `jo@contoso.com`); a `from` naming no one address (a name, a phone number,
    several mailboxes, an unreadable list, an address only inside an encoded word), or longer than
    MAX_SENDER_CHARS (not parsed), trimmed and lower-cased as written; "" when the message names none."""
    value = payload.get("from")
    if not isinstance(value, str):
        return ""
    if "@" in value and len(value) <= MAX_SENDER_CHARS:
        try:
            address = email_sender(value)[1]
        except Rejected:  # over the address caps: not one sender's address
            address = None
        if address is not None:
            if aliases:
                local, _at, domain = address.rpartition("@")
                if domain in aliases:
                    return f"{local}@{aliases[domain]}"
            return address
    return value.strip().lower()


def sender_aliases(sender: str, aliases: Mapping[str, str] | None) -> tuple[str, ...]:
    """The other forms of a `message_sender` address under `aliases` (`jo@contoso.onmicrosoft.com` for
    `jo@contoso.com`): a conversation whose first sender was written so (opened before the alias was named) is
    this sender's too. None but for an address at a domain `aliases` maps to."""
    if not aliases or "@" not in sender:
        return ()
    local, _at, domain = sender.rpartition("@")
    return tuple(f"{local}@{alias}" for alias, canonical in aliases.items() if canonical == domain)


EMAIL_KEY_PREFIXES = ("mail:", "ticket:", "split:")
"""How the keys of email-keyed conversations begin (`email_key`, and `split_key`: only an email's sender check
splits): the only ones whose ticket a sender answers by `[#id]` token, and so the only ones retention keeps past
their messages (`retention.tickets`). A chat's key (`chat:`) and an expression's (`key:`) never begin so."""


def email_keyed(key: str) -> bool:
    """Whether a conversation's `key` is an email thread's (EMAIL_KEY_PREFIXES)."""
    return key.startswith(EMAIL_KEY_PREFIXES)


def split_key(delivery_id: str) -> str:
    """The key of the conversation of its own that a message gets when its sender is not the first sender of the
    conversation its key names: in a namespace no channel's key uses, so it cannot collide with one."""
    return f"split:{delivery_id}"


def scoped(mapping: str, key: str) -> str:
    """The conversation's id in the store: per mapping, since each mapping's destination keeps its own ticket."""
    return f"{mapping}|{key}"


def iso_ms(ms: int | None) -> str | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")


def ticket_context(ticket_id: str, ticket_key: str | None, destination: str, *, created_at_ms: int | None,
                   messages: int, last_message_at_ms: int | None, ticket_uuid: str | None = None,
                   first_sender: str | None = None) -> dict[str, Any]:
    """`ticket` as a follow-up's expressions see it (the same names a mapping test's `input.ticket` uses).
    `first_sender`: the sender of the conversation's first message (None for a conversation older than the
    column, or one whose first message named no sender)."""
    return {"id": ticket_id, "key": ticket_key, "uuid": ticket_uuid, "destination": destination,
            "created_at": iso_ms(created_at_ms), "messages": messages, "last_message_at": iso_ms(last_message_at_ms),
            "first_sender": first_sender or None}

