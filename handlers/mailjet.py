"""Mailjet Parse API: one parsed message as JSON; headers as an object, bodies in `Text-part` and `Html-part`,
attachments base64 in the fields their `Parts` entry names (`Attachment1`, `InlineAttachment1`, …). The Parse
API signs nothing: protect the source with `auth` (basic auth in the Parse route's URL)."""

from __future__ import annotations

from typing import ClassVar

from aiohttp import web

from bridge.config import SourceConfig
from handlers.attachments import Attachment, decode_base64
from handlers.base import Handler, Inbound, decode_json_object, items, obj
from handlers.email import Spam, spam_score
from handlers.mail_message import Fields, header_pairs, mail_inbound, part_file, provider_file, text, without


class MailjetOptions(SourceConfig, kw_only=True, forbid_unknown_fields=True):
    pass


class MailjetHandler(Handler):
    kind: ClassVar[str] = "mailjet"
    channel = "email"
    saves_attachments = True
    Options: ClassVar[type[SourceConfig]] = MailjetOptions
    content_types: ClassVar[frozenset[str]] = frozenset({"application/json"})

    def parse(self, request: web.Request, body: bytes) -> list[Inbound]:
        data = decode_json_object(body)
        files: list[Attachment] = []
        refs: list[str] = []
        for part in map(obj, items(data.get("Parts"))):
            ref = part.get("ContentRef")
            if not isinstance(ref, str) or "Attachment" not in ref:  # Text-part, Html-part
                continue
            part_headers = header_pairs(part.get("Headers"))
            name, ctype = part_file(part_headers)
            inline = ref.startswith("Inline") or part_headers.get("Content-ID") is not None
            files.append(provider_file(name, ctype, decode_base64(data.get(ref), f"`{ref}`"), inline=inline))
            refs.append(ref)
        headers = header_pairs(data.get("Headers"))
        score = spam_score(data.get("SpamAssassinScore"))  # a score without Mailjet's threshold: no verdict
        fields = Fields(  # `Sender` and `Recipient` are the envelope's: the headers come first
            from_=text(data.get("From")) or headers.get("From") or text(data.get("Sender")),
            to=headers.get_all("To") or text(data.get("Recipient")),
            subject=text(data.get("Subject")),
            date=headers.get("Date") or text(data.get("Date")),  # `Date` alone is Mailjet's 20240603T100500
            envelope_from=text(data.get("Sender")),
            envelope_to=text(data.get("Recipient")),
            spam=None if score is None else Spam("unknown", score),
            text=text(data.get("Text-part")),
            html=text(data.get("Html-part")),
            attachments=files,
            headers=headers,
        )
        return [mail_inbound(without(data, refs), fields, provider_id=data.get("CustomID") or None)]
