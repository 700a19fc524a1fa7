"""handlers/ses.py: SES receiving over SNS: envelope checks, signature, subscriptions, notifications."""

from __future__ import annotations

import json
import threading
from typing import Any, cast

import msgspec
import pytest
from structlog.testing import capture_logs

import handlers.ses
from bridge.errors import Rejected
from bridge.intake import OFFLOAD_BYTES, run_handler
from bridge.runtime import Runtime, Source
from handlers.base import Intercepted, answered, per_request, skip_signatures
from handlers.email import email_payload
from handlers.s3_client import S3Client, S3NoSuchKey, S3Object, S3TooLarge, S3Unavailable
from handlers.ses import SesHandler, SesOptions
from handlers.sns_certificates import CertificateCache
from tests.fixtures.providers import (
    ASHA_EMAIL,
    CERT_URL,
    ENVELOPE,
    FORWARDED,
    JPEG,
    NOW,
    THREAD_EMAIL,
    TOPIC,
    FakeSns,
    build,
    compact,
    iso,
    load,
    message_shape,
    post,
    ses_notification,
    ses_raw,
    sns_sign,
    without_provider,
)
from tests.fixtures.s3 import BUCKET, SES_KEY, ses_s3_received

SNS = {"Content-Type": "text/plain; charset=UTF-8", "x-amz-sns-message-type": "Notification"}


def handler(fake: FakeSns | None = None, **options: Any) -> SesHandler:
    h: SesHandler = build("ses", **{"topic_arns": [TOPIC], **options})
    h.fetch = fake or FakeSns()
    return h


async def run(h: SesHandler, message: dict[str, Any]) -> Any:
    """verify, then intercept, then (when not intercepted) parse, as intake does."""
    body, req = compact(message), post(SNS)
    h.verify(req, body)
    early = await h.intercept(req, body)
    return early if early is not None else h.parse(req, body)


def test_kind_and_channel() -> None:
    """SES is kind `ses` on the `email` channel, taking SNS's text/plain JSON."""
    assert (SesHandler.kind, SesHandler.channel) == ("ses", "email")
    assert "text/plain" in SesHandler.content_types


@pytest.mark.parametrize("version", ["1", "2"])
async def test_signed_notification_becomes_one_email(version: str) -> None:
    """A Received notification signed with SNS's key (either version) gives the email shape, from the raw MIME."""
    fake = FakeSns()
    [inbound] = await run(handler(fake), ses_notification(version))
    assert without_provider(inbound.payload) == {**ASHA_EMAIL, **ENVELOPE, "spam": {"verdict": "ham", "score": None}}
    assert inbound.attachments[0].content == JPEG
    assert inbound.dedup_key == "d6f4c2a0-3f2b-5b9a-9e4d-2a1c0b7e6f11"
    assert inbound.spam is False
    assert fake.fetched == [CERT_URL]


async def test_provider_keeps_the_notification_without_the_raw_message() -> None:
    """The SES notification is kept under provider (with the SNS ids), but not the raw MIME again."""
    [inbound] = await run(handler(), ses_notification())
    provider = inbound.payload["provider"]
    assert provider["sns"]["TopicArn"] == TOPIC
    assert provider["receipt"]["spfVerdict"] == {"status": "PASS"}
    assert "content" not in provider


async def test_base64_content_is_decoded() -> None:
    """With the SNS action's BASE64 encoding, the content is decoded before parsing."""
    import base64

    received = load("ses/received.json")
    received["content"] = base64.b64encode(received["content"].encode()).decode()
    received["receipt"]["action"]["encoding"] = "BASE64"
    [inbound] = await run(handler(), ses_notification(Message=json.dumps(received)))
    assert inbound.payload["text"] == ASHA_EMAIL["text"]


async def test_notification_without_content_uses_the_headers() -> None:
    """A notification from an S3 action (no content) still gives addresses, subject and ids."""
    received = load("ses/received.json")
    del received["content"]
    [inbound] = await run(handler(), ses_notification(Message=json.dumps(received)))
    payload = inbound.payload
    assert (payload["from"], payload["subject"], payload["in_reply_to"]) == (
        "asha.rao@example.com", "Re: Router down [#1042]", "<ticket-1042@acme.test>")
    assert (payload["text"], payload["attachments"]) == (None, [])


async def test_failed_spam_verdict_marks_spam() -> None:
    """A notification SES judged spam or virus is stored as spam (never delivered)."""
    received = load("ses/received.json")
    received["receipt"]["virusVerdict"] = {"status": "FAIL"}
    [inbound] = await run(handler(), ses_notification(Message=json.dumps(received)))
    assert inbound.spam is True


async def test_subscription_is_confirmed_from_the_sns_host() -> None:
    """A signed SubscriptionConfirmation is confirmed by fetching its SubscribeURL, and answered 200."""
    fake = FakeSns()
    message = sns_sign({**load("ses/sns_subscription.json"), "Timestamp": iso(NOW - 5)}, "2")
    early = await run(handler(fake), message)
    assert (early.outcome, early.response.status) == ("handshake", 200)
    assert fake.fetched == [CERT_URL, message["SubscribeURL"]]


async def test_failed_confirmation_is_503() -> None:
    """When the confirmation cannot be fetched, the answer is 503 so SNS sends it again."""
    fake = FakeSns()
    message = sns_sign({**load("ses/sns_subscription.json"), "Timestamp": iso(NOW)}, "2")
    h = handler(fake)

    async def flaky(url: str) -> bytes:
        if "ConfirmSubscription" in url:
            from handlers.sns import FetchError

            raise FetchError("HTTP 500", 500)
        return await fake(url)

    h.fetch = flaky
    with pytest.raises(Rejected) as info:
        await run(h, message)
    assert (info.value.status, info.value.retry_after) == (503, 15)


@pytest.mark.parametrize(("notification_type", "reason"), [("Bounce", "'Bounce'"), ("Complaint", "'Complaint'")])
async def test_other_ses_notifications_are_ignored(notification_type: str, reason: str) -> None:
    """Signed SES notifications other than Received are answered 200 and ignored."""
    message = ses_notification(Message=json.dumps({"notificationType": notification_type}))
    early = await run(handler(), message)
    assert early.outcome == "ignored" and reason in early.reason


async def test_unsubscribe_confirmation_is_ignored() -> None:
    """A signed UnsubscribeConfirmation is answered 200 and ignored."""
    message = sns_sign({**load("ses/sns_subscription.json"), "Type": "UnsubscribeConfirmation",
                        "Timestamp": iso(NOW)}, "2")
    assert (await run(handler(), message)).outcome == "ignored"


async def test_forged_signature_is_401_and_confirms_nothing() -> None:
    """A message whose signature does not match is refused, and its SubscribeURL is never fetched."""
    fake = FakeSns()
    message = {**sns_sign({**load("ses/sns_subscription.json"), "Timestamp": iso(NOW)}, "2"), "Token": "forged"}
    with pytest.raises(Rejected) as info:
        await run(handler(fake), message)
    assert (info.value.status, info.value.check) == (401, "signature")
    assert fake.fetched == [CERT_URL]


async def test_a_captured_notification_cannot_be_sent_again_under_another_message_id() -> None:
    """Subject is optional, so a MessageId of `id\nSubject\n<subject>` with Subject left out signs the same text:
    such a message is refused (401, naming MessageId) rather than stored again under a new dedup key."""
    captured = ses_notification()
    [inbound] = await run(handler(), captured)
    replayed = {k: v for k, v in captured.items() if k != "Subject"}
    replayed["MessageId"] = f"{captured['MessageId']}\nSubject\n{captured['Subject']}"
    with pytest.raises(Rejected, match=r"SNS MessageId .* holds a line break") as info:
        await run(handler(), replayed)
    assert (info.value.status, info.value.check) == (401, "signature")
    assert inbound.dedup_key == captured["MessageId"]


def rejected_by_verify(message: dict[str, Any], **options: Any) -> Rejected:
    fake = FakeSns()
    with pytest.raises(Rejected) as info:
        handler(fake, **options).verify(post(SNS), compact(message))
    assert info.value.status == 401
    assert fake.fetched == []  # refused before any certificate is fetched
    return info.value


def test_topic_not_allowed_is_401() -> None:
    """A message from a topic not in topic_arns is refused before any fetch."""
    err = rejected_by_verify(ses_notification(TopicArn="arn:aws:sns:us-east-1:999999999999:other"))
    assert err.check == "topic_arn"


@pytest.mark.parametrize("url", ["https://evil.example/cert.pem", "http://sns.us-east-1.amazonaws.com/c.pem",
                                 "https://sns.us-east-1.amazonaws.com/c.txt"])
def test_certificate_off_the_sns_host_is_401(url: str) -> None:
    """A SigningCertURL that is not an https .pem on an SNS host is refused and never fetched."""
    assert rejected_by_verify(ses_notification(SigningCertURL=url)).check == "certificate"


@pytest.mark.parametrize("url", [
    "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-9c6465fa7f48f5cacd23014631ec1136.pem",
    "https://sns.us-gov-west-1.amazonaws.com/SimpleNotificationService-9c6465fa7f48f5cacd23014631ec1136.pem",
    "https://sns.us-iso-east-1.c2s.ic.gov/SimpleNotificationService-9c6465fa7f48f5cacd23014631ec1136.pem",
    "https://sns.zz-east-9.amazonaws.com/SimpleNotificationService-9c6465fa7f48f5cacd23014631ec1136.pem",
])
async def test_a_certificate_on_another_sns_host_than_the_topics_is_never_fetched(url: str) -> None:
    """SNS signs a topic's messages on its region's host: a message of a us-east-1 topic naming a certificate on
    another region's SNS host (or a made-up region's, which may never answer) is a 401 naming the host
    expected, and nothing is fetched."""
    fake = FakeSns()
    with pytest.raises(Rejected) as info:
        await run(handler(fake), ses_notification(SigningCertURL=url))
    assert (info.value.status, info.value.check) == (401, "certificate")
    assert "is not the SNS host of the topic's region, sns.us-east-1.amazonaws.com" in str(info.value)
    assert fake.fetched == []


@pytest.mark.parametrize(("topic", "cert_url"), [
    ("arn:aws-eusc:sns:eusc-de-east-1:123456789012:inbound",
     "https://sns.eusc-de-east-1.amazonaws.eu/SimpleNotificationService-0123456789abcdef0123456789abcdef.pem"),
    ("arn:aws-iso:sns:us-iso-east-1:123456789012:inbound",
     "https://sns.us-iso-east-1.c2s.ic.gov/SimpleNotificationService-0123456789abcdef0123456789abcdef.pem"),
    ("arn:aws-iso-b:sns:us-isob-east-1:123456789012:inbound",
     "https://sns.us-isob-east-1.sc2s.sgov.gov/SimpleNotificationService-0123456789abcdef0123456789abcdef.pem"),
    ("arn:aws-iso-e:sns:eu-isoe-west-1:123456789012:inbound",
     "https://sns.eu-isoe-west-1.cloud.adc-e.uk/SimpleNotificationService-0123456789abcdef0123456789abcdef.pem"),
    ("arn:aws-iso-f:sns:us-isof-south-1:123456789012:inbound",
     "https://sns.us-isof-south-1.csp.hci.ic.gov/SimpleNotificationService-0123456789abcdef0123456789abcdef.pem"),
    ("arn:aws-cn:sns:cn-north-1:123456789012:inbound",
     "https://sns.cn-north-1.amazonaws.com.cn/SimpleNotificationService-0123456789abcdef0123456789abcdef.pem"),
])
async def test_topics_of_every_partition_are_verified_on_their_hosts(topic: str, cert_url: str) -> None:
    """A topic in the European Sovereign Cloud, an ISO partition or China has its messages' certificate fetched
    from its region's SNS host, and its messages and subscriptions are taken; another host is refused."""
    fake = FakeSns()
    h = handler(fake, topic_arns=[topic])
    [inbound] = await run(h, ses_notification(TopicArn=topic, SigningCertURL=cert_url))
    assert inbound.payload["provider"]["sns"]["TopicArn"] == topic
    host = cert_url.split("/")[2]
    subscription = sns_sign({**load("ses/sns_subscription.json"), "Timestamp": iso(NOW), "TopicArn": topic,
                             "SigningCertURL": cert_url,
                             "SubscribeURL": f"https://{host}/?Action=ConfirmSubscription&TopicArn={topic}"}, "2")
    early = await run(h, subscription)
    assert (early.outcome, early.response.status) == ("handshake", 200)
    assert fake.fetched == [cert_url, subscription["SubscribeURL"]]
    elsewhere = cert_url.replace(host, "sns.us-east-1.amazonaws.com")
    err = rejected_by_verify(ses_notification(TopicArn=topic, SigningCertURL=elsewhere), topic_arns=[topic])
    assert f"is not the SNS host of the topic's region, {host}" in str(err)


@pytest.mark.parametrize("url", ["https://evil.example/?Action=ConfirmSubscription",
                                 "https://sns.eu-west-1.amazonaws.com/?Action=ConfirmSubscription"])
async def test_a_subscribe_url_off_the_topics_sns_host_is_refused(url: str) -> None:
    """A signed SubscriptionConfirmation is confirmed only on its topic's region's SNS host: a SubscribeURL
    elsewhere (off SNS, or on another region's SNS host) is never fetched."""
    fake = FakeSns()
    message = sns_sign({**load("ses/sns_subscription.json"), "Timestamp": iso(NOW), "SubscribeURL": url}, "2")
    with pytest.raises(Rejected) as info:
        await run(handler(fake), message)
    assert (info.value.status, info.value.check) == (401, "subscribe_url")
    assert "is not an https URL on sns.us-east-1.amazonaws.com, the SNS host of the topic's region" in str(info.value)
    assert fake.fetched == [CERT_URL]


@pytest.mark.parametrize(("change", "check"), [
    ({"SignatureVersion": "3"}, "signature"),
    ({"Signature": "not base64!"}, "signature"),
    ({"MessageId": None}, "signature"),
    ({"SigningCertURL": None}, "certificate"),
    ({"SigningCertURL": CERT_URL + "?v=2"}, "certificate"),
])
def test_unsigned_shape_is_refused_before_any_fetch(change: dict[str, Any], check: str) -> None:
    """A message whose signature could never verify (an unknown version, a signature that is not base64, a
    signed field missing) or that names no certificate URL is refused by `verify`, before anything is fetched."""
    message = {k: v for k, v in {**ses_notification(), **change}.items() if v is not None}
    assert rejected_by_verify(message).check == check


async def test_a_verified_message_keeps_its_certificate_first() -> None:
    """The certificate that verified a message is kept before others that verified none."""
    fake = FakeSns()
    h = handler(fake)
    h.certificates = CertificateCache(limit=2)
    await run(h, ses_notification())
    for other in ("0", "1"):
        await h.certificates.get(CERT_URL.replace("9c6465fa", other), fake)
    await run(h, ses_notification())
    assert fake.fetched.count(CERT_URL) == 1


def test_stale_message_is_401() -> None:
    """A message older than max_age (default 1 hour) is refused."""
    assert rejected_by_verify(ses_notification(timestamp=NOW - 3601)).check == "timestamp"
    handler().verify(post(SNS), compact(ses_notification(timestamp=NOW - 3500)))


def test_future_message_is_401() -> None:
    """A message stamped more than 5 minutes ahead is refused."""
    assert rejected_by_verify(ses_notification(timestamp=NOW + 301)).check == "timestamp"


def test_max_age_is_configurable() -> None:
    """`max_age` narrows the window."""
    assert rejected_by_verify(ses_notification(timestamp=NOW - 120), max_age="1m").check == "timestamp"


@pytest.mark.parametrize(("options", "reason"), [
    ({}, "missing required field `topic_arns`"),
    ({"topic_arns": []}, "`topic_arns` is empty"),
    ({"topic_arns": ["acme-inbound"]}, "is not an SNS topic ARN"),
    ({"topic_arns": [TOPIC, "arn:aws:sns:us-iso-east-1:1:t"]},
     r"'arn:aws:sns:us-iso-east-1:1:t' names the region 'us-iso-east-1', which is no region of "
     r"the partition 'aws' \(such as us-east-1\)"),
    ({"topic_arns": ["arn:aws-eu:sns:eu-west-1:1:t"]}, "names the partition 'aws-eu', which is none SNS runs in"),
    ({"topic_arns": [TOPIC], "max_age": "old"}, "not a duration"),
])
def test_invalid_options(options: dict[str, Any], reason: str) -> None:
    """topic_arns is required, non-empty and made of SNS ARNs; max_age is a duration."""
    with pytest.raises(msgspec.ValidationError, match=reason):
        msgspec.convert({"kind": "ses", **options}, SesOptions)


async def test_raw_thread_keeps_its_attachments_intact() -> None:
    """The raw thread as base64 `content`: the message's own shape wins over commonHeaders, the attached
    message is stored as its exact bytes, and the envelope and spam verdict are SES's."""
    [inbound] = await run(handler(), ses_raw())
    assert message_shape(inbound.payload) == THREAD_EMAIL
    assert {k: inbound.payload[k] for k in ("envelope_from", "envelope_to", "spam")} == \
        {**ENVELOPE, "spam": {"verdict": "ham", "score": None}}
    assert inbound.attachments[3].content == FORWARDED


# -- the S3 action -----------------------------------------------------------------------------------


class FakeBucket:
    """Stands in for S3 behind the handler's reader: serves `objects`, or raises `error`; records each read, and
    how many turns are held (taken by a read, given back by its release)."""

    def __init__(self, objects: dict[str, bytes] | None = None, error: Exception | None = None) -> None:
        self.objects = objects or {}
        self.error = error
        self.reads: list[tuple[str, str]] = []
        self.held = 0

    async def get(self, bucket: str, key: str) -> S3Object:
        self.reads.append((bucket, key))
        if self.error is not None:
            raise self.error
        if key not in self.objects:
            raise S3NoSuchKey(f"s3://{bucket}/{key} does not exist (S3 answered 404 NoSuchKey)")
        self.held += 1
        return S3Object(self.objects[key], self._released)

    def _released(self) -> None:
        self.held -= 1


def s3_handler(bucket: FakeBucket) -> SesHandler:
    h = handler(s3={})
    h.s3 = bucket
    return h


def s3_message(**action: Any) -> dict[str, Any]:
    received, _raw = ses_s3_received()
    received["receipt"]["action"].update(action)
    return ses_notification(Message=json.dumps(received))


async def test_s3_action_reads_the_message_from_the_bucket() -> None:
    """With `s3`, an S3-action notification has its raw message read from the named bucket and key, and
    parsed as the SNS action's `content` is: the same email, attachments and all."""
    _received, raw = ses_s3_received()
    bucket = FakeBucket({SES_KEY: raw})
    [inbound] = await run(s3_handler(bucket), s3_message())
    assert bucket.reads == [(BUCKET, SES_KEY)]
    assert without_provider(inbound.payload) == {**ASHA_EMAIL, **ENVELOPE, "spam": {"verdict": "ham", "score": None}}
    assert inbound.attachments[0].content == JPEG
    assert inbound.dedup_key == "d6f4c2a0-3f2b-5b9a-9e4d-2a1c0b7e6f11"
    assert inbound.payload["provider"]["receipt"]["action"]["objectKey"] == SES_KEY


def large_text_mail(size: int) -> bytes:
    """A plain text message of about `size` bytes: one body, no attachment, nothing that looks like MIME parts."""
    line = b"the router blinks red and the line drops every few minutes, please help\r\n"
    return (b"From: Asha Rao <asha.rao@example.com>\r\nTo: support@acme.test\r\nSubject: Router logs\r\n"
            b"Message-ID: <big.1@mail.example.com>\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
            + line * (size // len(line)))


@pytest.mark.parametrize(("size", "off"), [(8 * 1024, False), (OFFLOAD_BYTES * 16, True)], ids=["small", "large"])
async def test_an_s3_message_is_parsed_where_its_size_places_it(monkeypatch: pytest.MonkeyPatch, size: int,
                                                               off: bool) -> None:
    """The notification is small, so its body alone would place the parse on the event loop; the message read
    from S3 decides instead: a large one is parsed (the MIME, the payload with its reply stripping) in the parser
    thread, a small one on the loop. The read's turn is held until intake has answered the request, and then
    given back, and the parse let go of."""
    threads: list[str] = []

    def recorded(**fields: Any) -> dict[str, Any]:
        threads.append(threading.current_thread().name)
        return email_payload(**fields)

    monkeypatch.setattr(handlers.ses, "email_payload", recorded)
    raw = large_text_mail(size)
    bucket = FakeBucket({SES_KEY: raw})
    h = s3_handler(bucket)
    body, request = compact(s3_message()), post(SNS)
    with capture_logs() as logs:
        handled = await run_handler(cast(Runtime, None), Source("ses", h, None, 0.0), request, body)
    assert not isinstance(handled, Intercepted)
    [inbound] = handled[0]
    assert inbound.payload["text"] == raw.partition(b"\r\n\r\n")[2].decode().replace("\r\n", "\n")
    assert [name.startswith("ticketbridge-parse") for name in threads] == [off]
    assert not [e for e in logs if e["event"] == "intake.parse_offloaded"]  # placed there at once, not run twice
    assert bucket.held == 1
    answered(request)
    assert bucket.held == 0
    assert per_request(request, "ses.s3.mime", lambda: None) is None  # not kept by an idle keep-alive connection


async def test_s3_action_is_not_read_without_the_option() -> None:
    """Without `s3`, an S3-action notification is taken from its headers alone, as before, and nothing is read."""
    h = handler()
    assert h.s3 is None
    [inbound] = await run(h, s3_message())
    assert inbound.payload["subject"] == "Re: Router down [#1042]"
    assert inbound.payload["text"] is None


async def test_s3_unavailable_is_503_and_nothing_parsed() -> None:
    """When S3 cannot be read (down, 5xx, timeout, denied), the answer is 503 so SNS sends the notification again."""
    bucket = FakeBucket(error=S3Unavailable("s3://acme-inbound-mail/x could not be read: connection refused"))
    with pytest.raises(Rejected) as info:
        await run(s3_handler(bucket), s3_message())
    assert (info.value.status, info.value.check, info.value.retry_after) == (503, "s3", 15)
    assert "connection refused" in str(info.value) and "send it again" in str(info.value)


async def test_s3_object_too_large_is_413() -> None:
    """An object over `s3.max_bytes` is refused with 413 (SNS does not retry a 4xx), saying it stays in the bucket."""
    bucket = FakeBucket(error=S3TooLarge("s3://b/k is 30000000 bytes, over the source's s3.max_bytes of 26214400",
                                         30_000_000))
    with pytest.raises(Rejected) as info:
        await run(s3_handler(bucket), s3_message())
    assert (info.value.status, info.value.check) == (413, "limits")
    assert "30000000 bytes" in str(info.value) and "left in the bucket" in str(info.value)


async def test_s3_object_gone_is_ignored() -> None:
    """An object the bucket no longer holds cannot be read on any retry: answered 200, ignored, nothing stored."""
    bucket = FakeBucket()
    early = await run(s3_handler(bucket), s3_message())
    assert (early.outcome, early.response.status, early.code) == ("ignored", 200, "not_a_message:s3_gone")
    assert early.reason.startswith("not a message: the SES S3 action's object is gone: s3://")


@pytest.mark.parametrize("action", [{"objectKey": ""}, {"bucketName": None}, {"objectKey": 7}])
async def test_s3_action_without_bucket_or_key_is_ignored(action: dict[str, Any]) -> None:
    """An S3 action that names no object is not a message: 200, ignored, and no read is tried."""
    bucket = FakeBucket()
    early = await run(s3_handler(bucket), s3_message(**action))
    assert early.outcome == "ignored" and "bucketName and objectKey" in early.reason
    assert bucket.reads == []


async def test_s3_object_that_is_not_mail_is_refused_like_bad_content() -> None:
    """The object's bytes go through the same MIME checks as `content`: a hostile shape is a 413."""
    bomb = b"Content-Type: multipart/mixed; boundary=a\r\n\r\n" + b"".join(
        b"--a\r\nContent-Type: multipart/mixed; boundary=%d\r\n\r\n" % i for i in range(40))
    with pytest.raises(Rejected) as info:
        await run(s3_handler(FakeBucket({SES_KEY: bomb})), s3_message())
    assert info.value.status == 413


def test_s3_option_takes_its_settings() -> None:
    """`s3` takes endpoint_url, region, max_bytes and timeout; the default region is the SNS topic's."""
    h = handler(s3={"endpoint_url": "http://127.0.0.1:9000", "region": "eu-west-1", "max_bytes": 4096,
                    "timeout": "3s"})
    assert isinstance(h.s3, S3Client)
    assert (h.s3.config.endpoint_url, h.s3.config.region, h.s3.config.max_bytes, h.s3.timeout_s) == (
        "http://127.0.0.1:9000", "eu-west-1", 4096, 3.0)
    assert h.s3.default_region == "us-east-1"


def test_s3_option_needs_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the `ses-s3` extra installed, the `s3` option is refused, naming what to install."""
    import handlers.ses

    monkeypatch.setattr(handlers.ses, "available", lambda: False)
    with pytest.raises(msgspec.ValidationError, match=r"pip install 'ticketbridge\[ses-s3\]'"):
        msgspec.convert({"kind": "ses", "topic_arns": [TOPIC], "s3": {}}, SesOptions)


async def test_setup_notification_reads_nothing() -> None:
    """SES's AMAZON_SES_SETUP_NOTIFICATION for a new S3 action names an object but carries no mail: 200,
    ignored, and the bucket is not read."""
    received, _raw = ses_s3_received("inbound/AMAZON_SES_SETUP_NOTIFICATION")
    received["notificationType"] = "AMAZON_SES_SETUP_NOTIFICATION"
    bucket = FakeBucket()
    early = await run(s3_handler(bucket), ses_notification(Message=json.dumps(received)))
    assert early.outcome == "ignored" and "AMAZON_SES_SETUP_NOTIFICATION" in early.reason
    assert bucket.reads == []


async def unchecked(h: SesHandler, message: dict[str, Any]) -> Any:
    """intercept then parse with the signature not checked (the playground with `verify` off)."""
    body, req = compact(message), post(SNS)
    skip_signatures(req)
    early = await h.intercept(req, body)
    return early if early is not None else h.parse(req, body)


async def test_unchecked_an_unsigned_message_fetches_no_certificate_and_confirms_nothing() -> None:
    """With signatures not checked, intercept still sorts the message (a notification parses, a subscription is a
    handshake) but fetches no certificate, confirms no subscription and reads no S3 object a forger could name."""
    fake = FakeSns()
    [inbound] = await unchecked(handler(fake), {**ses_notification(), "Signature": "forged"})
    assert inbound.payload["subject"] == ASHA_EMAIL["subject"]
    subscription = {**load("ses/sns_subscription.json"), "Timestamp": iso(NOW)}
    early = await unchecked(handler(fake), subscription)
    assert (early.outcome, early.response.status) == ("handshake", 200) and "not confirmed" in early.reason
    bucket = FakeBucket({SES_KEY: ses_s3_received()[1]})
    [from_headers] = await unchecked(s3_handler(bucket), s3_message())
    assert from_headers.payload["text"] is None
    assert fake.fetched == [] and bucket.reads == []
