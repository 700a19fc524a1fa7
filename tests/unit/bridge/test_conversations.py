"""Conversation keys: email threads by their root Message-ID, subject tokens, chat ids."""

from __future__ import annotations

from bridge.conversations import (
    ConversationKey,
    channel_key,
    chat_key,
    email_key,
    given_key,
    message_sender,
    normalise_message_id,
    sender_aliases,
    ticket_context,
)


def test_the_root_is_the_first_reference_then_in_reply_to_then_the_own_id() -> None:
    """An email's key is its thread's root: first of references, else in_reply_to, else its message id."""
    assert email_key({"references": ["<a@x.io>", "<b@x.io>"], "in_reply_to": "<b@x.io>",
                      "message_id": "<c@x.io>"}) == ConversationKey("mail:a@x.io", by_sender=True)
    assert email_key({"references": [], "in_reply_to": "<b@x.io>", "message_id": "<c@x.io>"}) == \
        ConversationKey("mail:b@x.io", by_sender=True)
    assert email_key({"message_id": "<c@x.io>"}) == ConversationKey("mail:c@x.io", by_sender=True)
    assert email_key({"subject": "hi"}) is None


def test_message_ids_agree_whatever_the_brackets_and_the_domains_case() -> None:
    """Brackets, spaces and the domain's case do not split a thread; the local part's case is kept."""
    assert normalise_message_id(" <CAF=Asha.1@Mail.Example.COM> ") == "CAF=Asha.1@mail.example.com"
    assert normalise_message_id("no-at-sign") == "no-at-sign"


def test_a_subject_token_names_the_ticket_to_join() -> None:
    """`[#713516551148]` in the subject joins that ticket, whatever the thread headers say."""
    assert email_key({"subject": "Re: Router down [#713516551148]", "message_id": "<c@x.io>"}) == \
        ConversationKey("ticket:713516551148", ticket_id="713516551148", by_sender=True)
    assert email_key({"subject": "[#urgent] Router down", "message_id": "<c@x.io>"}) == ConversationKey(
        "mail:c@x.io", by_sender=True)


def test_chat_and_plain_json_payloads_are_keyed_by_their_shape() -> None:
    """A chat's key is its conversation id; a JSON source's email- or chat-shaped payload is keyed the same way;
    a form is not in a conversation."""
    assert channel_key("chat", {"conversation_id": "919876543210"}) == ConversationKey("chat:919876543210")
    assert channel_key("webhook", {"message_id": "<m@x.io>"}) == ConversationKey("mail:m@x.io", by_sender=True)
    assert channel_key("webhook", {"conversation_id": "c1"}) == ConversationKey("chat:c1")
    assert channel_key("webhook", {"conversation_id": "c1", "message_id": "m-7"}) == ConversationKey("chat:c1")
    assert channel_key("form", {"email": "a@b.io"}) is None
    # a form's fields are typed by whoever fills it in: they never name a chat's or an email thread
    assert channel_key("form", {"conversation_id": "919876543210"}) is None
    assert channel_key("form", {"from": "victim@corp.example", "message_id": "x", "subject": "re [#713]"}) is None
    assert given_key("case-7") == ConversationKey("key:case-7")
    assert given_key("") is None


def test_the_ticket_context_uses_utc_iso_times() -> None:
    """`ticket` carries id, key, uuid, destination, created_at and last_message_at (UTC ISO) and messages."""
    assert ticket_context("T-1", None, "kapture", created_at_ms=0, messages=2, last_message_at_ms=1000) == {
        "id": "T-1", "key": None, "uuid": None, "destination": "kapture", "created_at": "1970-01-01T00:00:00Z",
        "messages": 2, "last_message_at": "1970-01-01T00:00:01Z", "first_sender": None}
    assert ticket_context("34", "#034", "lsq", created_at_ms=0, messages=1, last_message_at_ms=0,
                          ticket_uuid="27e8259d")["uuid"] == "27e8259d"
    assert ticket_context("1", None, "k", created_at_ms=0, messages=1, last_message_at_ms=0,
                          first_sender="a@x.io")["first_sender"] == "a@x.io"


def test_a_long_key_keeps_a_prefix_and_the_hash_of_the_whole_value() -> None:
    """Two ids that share their first 512 characters are two conversations (they were cut to one key)."""
    base = "c-".ljust(600, "p")
    a, b = chat_key({"conversation_id": base + "customerA"}), chat_key({"conversation_id": base + "customerB"})
    assert a is not None and b is not None and a.key != b.key
    assert len(a.key) <= len("chat:") + 512 and a.key.startswith("chat:" + base[:400])
    assert chat_key({"conversation_id": base + "customerA"}) == a  # stable
    short = "x" * 512
    assert chat_key({"conversation_id": short}) == ConversationKey("chat:" + short)  # a key that fits is as it was
    ref = "<" + "r" * 600 + "@x.io>"
    one, two = email_key({"references": [ref]}), email_key({"references": [ref.replace("r@", "s@")]})
    assert one is not None and two is not None and one.key != two.key and len(one.key) <= len("mail:") + 512


ALIASES = {"contoso.onmicrosoft.com": "contoso.com", "contoso.de": "contoso.com"}


def test_a_sender_at_an_alias_domain_is_the_sender_at_its_domain() -> None:
    """With a source's `sender_domain_aliases`, an address at an alias domain is the sender at the domain it
    stands for; the local part is kept, and other domains, subdomains and values naming no address are as they
    were."""
    assert message_sender({"from": "Jo <Jo@Contoso.OnMicrosoft.com>"}, ALIASES) == "jo@contoso.com"
    assert message_sender({"from": "jo@contoso.de"}, ALIASES) == "jo@contoso.com"
    assert message_sender({"from": "jo@contoso.com"}, ALIASES) == "jo@contoso.com"
    assert message_sender({"from": "jo@mail.contoso.de"}, ALIASES) == "jo@mail.contoso.de"
    assert message_sender({"from": "jo@evilcontoso.de"}, ALIASES) == "jo@evilcontoso.de"
    assert message_sender({"from": "jo@contoso.onmicrosoft.com"}) == "jo@contoso.onmicrosoft.com"
    assert message_sender({"from": "=?utf-8?q?jo=40contoso.de?="}, ALIASES) == "=?utf-8?q?jo=40contoso.de?="
    assert message_sender({"from": "+15550100"}, ALIASES) == "+15550100"


def test_a_senders_other_forms_are_its_address_at_each_alias_of_its_domain() -> None:
    """The other forms a conversation's first sender may have been written in: the address at each alias."""
    assert sender_aliases("jo@contoso.com", ALIASES) == ("jo@contoso.onmicrosoft.com", "jo@contoso.de")
    assert sender_aliases("jo@fabrikam.com", ALIASES) == ()
    assert sender_aliases("jo@contoso.com", {}) == ()
    assert sender_aliases("+15550100", ALIASES) == ()
