"""Amazon SES receiving, delivered by an SNS action to an HTTPS subscription: the SNS envelope is verified
(signature, certificate host, topic allow-list, age), subscriptions are confirmed, and each `Received`
notification becomes one email event. With the `s3` option, a notification from SES's S3 action has its
raw message read from the bucket before the event is stored."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar, Protocol

import msgspec
import structlog
from aiohttp import web

from bridge.config import SourceConfig, check_duration
from bridge.durations import parse_duration
from bridge.errors import VALUE, Rejected
from bridge.escaping import quoted_sent
from bridge.yamlfile import KeyValueError, Quoted
from handlers.attachments import decode_base64
from handlers.base import (
    Handler,
    Inbound,
    Intercepted,
    count_fetched,
    decode_json_object,
    handshake_answer,
    hold_until_answered,
    ignored,
    named,
    not_a_message,
    obj,
    optional_json_object,
    per_request,
    signatures_checked,
)
from handlers.email import Headers, MimeContent, Spam, email_payload, message_files, parse_mime
from handlers.limits import CHECK as LIMITS_CHECK
from handlers.s3_client import S3Client, S3Config, S3NoSuchKey, S3Object, S3TooLarge, S3Unavailable, available
from handlers.signing import check_dedup_covers
from handlers.sns import (
    Fetcher,
    FetchError,
    Signed,
    certificate_url_problem,
    https_get,
    is_sns_url,
    signed,
    topic_arn_problem,
    topic_host,
    verify_signature,
)
from handlers.sns_certificates import CertificateCache

log = structlog.get_logger("ticketbridge.handlers.ses")
RETRY_AFTER_S = 15
"""The Retry-After of a 503 for a read that may succeed later, as the certificate fetch's 503s say one. SNS retries
on its own delivery policy (3 times, 20 s apart by default) and reads no Retry-After; the value is shorter than its
wait, for a sender or a proxy that does read it."""

FUTURE_SKEW_S = 300.0


class ObjectReader(Protocol):
    """What reads an S3 object (S3Client; a fake in tests), holding a turn until the object is released."""

    async def get(self, bucket: str, key: str) -> S3Object: ...


class SesOptions(SourceConfig, kw_only=True, forbid_unknown_fields=True):
    topic_arns: list[str]
    max_age: str = "1h"
    """How old a message's signed Timestamp may be; SNS retries a failed delivery with the same one."""
    s3: S3Config | None = None
    """Read the raw message of S3-action notifications from the bucket (needs the `ses-s3` extra)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.s3 is not None and not available():
            raise ValueError("`s3` needs the S3 client: pip install 'ticketbridge[ses-s3]'")
        if not self.topic_arns:
            raise ValueError("`topic_arns` is empty: list the SNS topics whose messages this source takes")
        for i, arn in enumerate(self.topic_arns):
            if (problem := topic_arn_problem(arn)) is not None:
                raise KeyValueError(("topic_arns", i), f"{VALUE} {problem}", arn)
        check_duration(self.max_age, ("max_age",))
        check_dedup_covers(self.dedup_window, parse_duration(self.max_age) + FUTURE_SKEW_S,
                           f"`max_age` {{made}}, and {FUTURE_SKEW_S:.0f}s ahead",
                           Quoted(("max_age",), self.max_age, quote=self.max_age),
                           f"`max_age` and {FUTURE_SKEW_S:.0f}s")


def _timestamp(value: Any) -> datetime:
    try:
        stamp = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise Rejected(401, f"SNS Timestamp {quoted_sent(str(value))} is not an ISO 8601 time",
                       check="timestamp") from None
    return stamp if stamp.tzinfo is not None else stamp.replace(tzinfo=UTC)


class SesHandler(Handler):
    kind: ClassVar[str] = "ses"
    channel = "email"
    saves_attachments = True
    Options: ClassVar[type[SourceConfig]] = SesOptions
    # SNS posts JSON labelled text/plain.
    content_types: ClassVar[frozenset[str]] = frozenset({"text/plain", "application/json"})

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fetch: Fetcher = https_get
        # Looked up at each count: the app sets `self.count` once the handler is made (`build_runtime`).
        self.certificates = CertificateCache(source=self.name,
                                             count=lambda name, n=1, **labels: self.count(name, n, **labels))
        # Each topic's messages name a certificate on its region's SNS host, the only one fetched for them.
        self.hosts = {arn: host for arn in self.ses.topic_arns if (host := topic_host(arn)) is not None}
        s3 = self.ses.s3
        self.s3: ObjectReader | None = S3Client(s3, _topic_region(self.ses.topic_arns)) if s3 is not None else None

    async def open(self) -> None:
        if isinstance(self.s3, S3Client):
            await self.s3.open()

    async def close(self) -> None:
        if isinstance(self.s3, S3Client):
            await self.s3.close()

    @property
    def ses(self) -> SesOptions:
        assert isinstance(self.options, SesOptions)
        return self.options

    def _message(self, request: web.Request, body: bytes) -> dict[str, Any]:
        return per_request(request, "sns", lambda: decode_json_object(body))

    def verify(self, request: web.Request, body: bytes) -> None:
        """Every check that needs no I/O, so that a message they refuse has no certificate fetched: the topic, the
        certificate's URL, the age, and the signed fields; the signature itself is checked in `intercept`."""
        message = self._message(request, body)
        topic = message.get("TopicArn")
        host = self.hosts.get(topic) if isinstance(topic, str) else None
        if host is None:
            raise Rejected(401, f"SNS topic {repr(topic)[:300]} is not in this source's topic_arns",
                           check="topic_arn")
        cert_url = message.get("SigningCertURL") or message.get("SigningCertUrl")
        if not isinstance(cert_url, str):
            raise Rejected(401, "the SNS message has no SigningCertURL", check="certificate")
        if (problem := certificate_url_problem(cert_url, host)) is not None:
            raise Rejected(401, problem, check="certificate")
        sent = _timestamp(message.get("Timestamp")).timestamp()
        now = self.clock()
        if now - sent > parse_duration(self.ses.max_age):
            raise Rejected(401, f"SNS Timestamp is {now - sent:.0f}s old; the limit is {self.ses.max_age}",
                           check="timestamp")
        if sent - now > FUTURE_SKEW_S:
            raise Rejected(401, f"SNS Timestamp is {sent - now:.0f}s in the future", check="timestamp")
        self._signed(request, message)

    def _signed(self, request: web.Request, message: dict[str, Any]) -> Signed:
        return per_request(request, "sns.signed", lambda: signed(message))

    def prepare(self, request: web.Request, body: bytes) -> None:
        self._message(request, body)

    async def intercept(self, request: web.Request, body: bytes) -> Intercepted | None:
        message = self._message(request, body)
        checked = signatures_checked(request)
        if checked:
            cert_url = str(message.get("SigningCertURL") or message.get("SigningCertUrl"))
            cert = await self.certificates.get(cert_url, self.fetch, client=request.remote)
            verify_signature(self._signed(request, message), cert, datetime.fromtimestamp(self.clock(), UTC))
            self.certificates.proven(cert_url)
        kind = message.get("Type")
        if kind == "SubscriptionConfirmation":
            if not checked:  # an unsigned message confirms nothing: it would subscribe whoever wrote it
                return handshake_answer(web.json_response({"accepted": True, "subscribed": None}),
                                        "SNS subscription confirmation, not confirmed: its signature was not checked")
            return await self._confirm(message)
        if kind == "UnsubscribeConfirmation":
            log.warning("ses.unsubscribed", source=self.name, topic=message.get("TopicArn"))
            return ignored("SNS unsubscribe confirmation")
        notification = self._notification(request, message)
        if notification is None:
            return ignored("the SNS message is not an SES notification")
        if notification.get("notificationType") != "Received":
            return not_a_message("notification",
                                 f"an SES {named(notification.get('notificationType'))} notification")
        action = obj(obj(notification.get("receipt")).get("action"))
        # Unsigned, the message could name any object the S3 credentials read: it is read only for a signed one.
        if action.get("type") == "S3" and self.s3 is not None and checked:
            return await self._read_s3(request, message, action)
        return None

    async def _read_s3(self, request: web.Request, message: dict[str, Any],
                       action: dict[str, Any]) -> Intercepted | None:
        """Read the raw message the S3 action stored, for `parse`, before anything is stored: a read that may
        succeed later is a 503 (SNS sends the notification again), an object that is gone is not a message. The
        read's turn is held until the request is answered, and its size tells intake where to parse (`count_fetched`):
        a large message is parsed and rendered in the parser thread, though the notification is small."""
        assert self.s3 is not None
        bucket, key = action.get("bucketName"), action.get("objectKey")
        if not isinstance(bucket, str) or not bucket or not isinstance(key, str) or not key:
            return not_a_message("s3_action", "an SES S3 action without bucketName and objectKey")
        ids = {"source": self.name, "sns_message_id": message.get("MessageId"), "bucket": bucket, "key": key}
        try:
            read = await self.s3.get(bucket, key)
        except S3NoSuchKey as exc:
            log.error("ses.s3_object_missing", **ids, error=str(exc))
            return not_a_message("s3_gone", f"the SES S3 action's object is gone: {exc}")
        except S3TooLarge as exc:
            log.error("ses.s3_object_too_large", **ids, size=exc.size)
            raise Rejected(413, f"{exc}; it is left in the bucket, and nothing was stored",
                           check=LIMITS_CHECK) from None
        except S3Unavailable as exc:
            log.warning("ses.s3_unavailable", **ids, error=str(exc))
            raise Rejected(503, f"the message could not be read from S3 ({exc}); nothing was stored, send it again",
                           check="s3", retry_after=RETRY_AFTER_S) from None
        hold_until_answered(request, read.release)
        log.info("ses.s3_read", **ids, size=len(read.data))
        count_fetched(request, len(read.data))
        per_request(request, "ses.s3", lambda: read)
        return None

    @staticmethod
    def _s3_mime(request: web.Request) -> MimeContent | None:
        """The message read from S3, parsed once (None when none was read). Its bytes are let go of once parsed:
        the parse is what the request keeps until it is answered. On the loop, a large one stops the parse
        (OffLoop, from `parse_mime`), which is run again in the parser thread."""
        read: S3Object | None = per_request(request, "ses.s3", lambda: None)
        if read is None:
            return None
        mime = per_request(request, "ses.s3.mime", lambda: _parse_raw(read.data))
        read.data = b""
        return mime

    async def _confirm(self, message: dict[str, Any]) -> Intercepted:
        url = message.get("SubscribeURL")
        host = self.hosts.get(str(message.get("TopicArn")), "")  # `verify` took only a message of one of them
        if not isinstance(url, str) or not host or not is_sns_url(url, host):
            raise Rejected(401, f"SubscribeURL is not an https URL on {host}, the SNS host of the topic's region",
                           check="subscribe_url")
        try:
            await self.fetch(url)
        except FetchError as exc:
            raise Rejected(503, f"could not confirm the SNS subscription ({exc}); try again",
                           check="subscribe_url", retry_after=RETRY_AFTER_S) from None
        topic = message.get("TopicArn")
        log.info("ses.subscribed", source=self.name, topic=topic)
        body = msgspec.json.encode({"accepted": True, "subscribed": topic})
        return handshake_answer(web.Response(body=body, content_type="application/json"), "SNS subscription confirmed")

    def _notification(self, request: web.Request, message: dict[str, Any]) -> dict[str, Any] | None:
        # None (not an SES notification) is answered as ignored.
        return per_request(request, "ses", lambda: optional_json_object(str(message.get("Message") or "")))

    def parse(self, request: web.Request, body: bytes) -> list[Inbound]:
        message = self._message(request, body)
        notification = self._notification(request, message) or {}
        mail = obj(notification.get("mail"))
        receipt = obj(notification.get("receipt"))
        common = obj(mail.get("commonHeaders"))
        raw_headers = mail.get("headers")
        headers = Headers((str(h["name"]), str(h["value"])) for h in raw_headers
                          if isinstance(h, dict) and isinstance(h.get("name"), str) and "value" in h) \
            if isinstance(raw_headers, list) else Headers()
        mime = self._s3_mime(request) or self._content(notification, receipt)
        files = message_files(mime, [])
        verdict = obj(receipt.get("spamVerdict")).get("status")
        payload = email_payload(
            from_=common.get("from") or headers.get("From"),
            to=common.get("to") or headers.get_all("To"),
            cc=common.get("cc") or headers.get_all("Cc"),
            subject=common.get("subject") if isinstance(common.get("subject"), str) else headers.get("Subject"),
            text=None,
            html=None,
            stripped_text=None,
            message_id_=common.get("messageId") or headers.get("Message-ID"),
            in_reply_to=headers.get("In-Reply-To"),
            references=headers.get_all("References"),
            attachments=files,
            provider={
                "sns": {k: message[k] for k in ("MessageId", "TopicArn", "Subject", "Timestamp") if k in message},
                **{k: v for k, v in notification.items() if k != "content"},  # the raw MIME is parsed, not kept
            },
            mime=mime,
            reply_to=common.get("replyTo") or headers.get_all("Reply-To"),
            date=common.get("date") if isinstance(common.get("date"), str) else headers.get("Date"),
            envelope_from=mail.get("source") if isinstance(mail.get("source"), str) else None,
            envelope_to=receipt.get("recipients") or mail.get("destination"),
            spam=None if not isinstance(verdict, str) else Spam(
                {"PASS": "ham", "FAIL": "spam"}.get(verdict.upper(), "unknown")),
        )
        verdicts = (receipt.get("spamVerdict"), receipt.get("virusVerdict"))
        spam = any(isinstance(v, dict) and v.get("status") == "FAIL" for v in verdicts)
        return [Inbound(payload=payload, dedup_key=str(message.get("MessageId")), spam=spam, attachments=files)]

    @staticmethod
    def _content(notification: dict[str, Any], receipt: dict[str, Any]) -> MimeContent | None:
        """The raw message an SNS action carries (`content`); other actions (S3, Lambda) carry none."""
        content = notification.get("content")
        if not isinstance(content, str):
            return None
        action = obj(receipt.get("action"))
        if str(action.get("encoding", "")).upper() == "BASE64":
            return _parse_raw(decode_base64(content, "SES `content`"))
        return _parse_raw(content.encode("utf-8", "surrogateescape"))


def _parse_raw(raw: bytes) -> MimeContent:
    """The raw message, from the notification's `content` or from the S3 object, parsed alike."""
    return parse_mime(raw)


def _topic_region(topic_arns: list[str]) -> str | None:
    """The region of the first SNS topic (arn:aws:sns:REGION:…): SES writes to a bucket its rule names, most
    often in its own region, and S3 redirects a client that asked the wrong one."""
    parts = topic_arns[0].split(":") if topic_arns else []
    return parts[3] if len(parts) > 3 and parts[3] else None
