"""handlers/sns.py: the SNS host rule, the canonical string and RSA verification."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from bridge.errors import Rejected
from handlers.sns import is_sns_url, string_to_sign, verify_signature
from tests.fixtures.providers import CERT_URL, NOW, load, passes, sns_key, sns_sign

WHEN = datetime.fromtimestamp(NOW, UTC)


@pytest.mark.parametrize("url", [
    CERT_URL,
    "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-abc.pem",
    "https://sns.cn-north-1.amazonaws.com.cn/SimpleNotificationService-abc.pem",
    "https://sns.us-east-1.amazonaws.com:443/x.pem",
])
def test_sns_hosts_are_taken(url: str) -> None:
    """https URLs on sns.<region>.amazonaws.com(.cn) are SNS URLs."""
    assert is_sns_url(url, pem=True)


@pytest.mark.parametrize("url", [
    "http://sns.us-east-1.amazonaws.com/x.pem",
    "https://sns.us-east-1.amazonaws.com.evil.example/x.pem",
    "https://evil.example/sns.us-east-1.amazonaws.com/x.pem",
    "https://sns.us-east-1.amazonaws.com@evil.example/x.pem",
    "https://user@sns.us-east-1.amazonaws.com/x.pem",
    "https://sns.us-east-1.amazonaws.com:8443/x.pem",
    "https://s3.amazonaws.com/x.pem",
    "https://sns.us-east-1.amazonaws.com/x.txt",
    "https://sns.us-east-1.amazonaws.com:bad/x.pem",
    "not a url",
])
def test_other_urls_are_refused(url: str) -> None:
    """Plain http, look-alike hosts, user info, other ports, non-.pem paths and junk are not SNS URLs."""
    assert not is_sns_url(url, pem=True)


def test_string_to_sign_for_a_notification() -> None:
    """A notification signs Message, MessageId, Subject (when present), Timestamp, TopicArn and Type."""
    message = {"Type": "Notification", "MessageId": "m", "TopicArn": "t", "Message": "hi\nthere",
               "Timestamp": "ts", "Signature": "ignored", "UnsubscribeURL": "ignored"}
    assert string_to_sign(message) == (b"Message\nhi\nthere\nMessageId\nm\nTimestamp\nts\nTopicArn\nt\n"
                                       b"Type\nNotification\n")
    assert b"Subject\ns\n" in string_to_sign({**message, "Subject": "s"})


def test_string_to_sign_for_a_subscription() -> None:
    """A subscription confirmation signs its SubscribeURL and Token too."""
    text = string_to_sign(load("ses/sns_subscription.json"))
    assert text.startswith(b"Message\nYou have chosen")
    assert b"\nSubscribeURL\nhttps://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription" in text
    assert b"\nToken\n2336412f" in text


@pytest.mark.parametrize("message", [{"Type": "Other"}, {"Type": "Notification", "Message": "m"}])
def test_unknown_type_or_missing_key_is_401(message: dict[str, str]) -> None:
    """An unknown Type, or a signed key missing, fails the signature check."""
    with pytest.raises(Rejected) as info:
        string_to_sign(message)
    assert (info.value.status, info.value.check) == (401, "signature")


def certificate() -> x509.Certificate:
    return x509.load_pem_x509_certificate(sns_key()[1])


@pytest.mark.parametrize("version", ["1", "2"])
def test_both_signature_versions_verify(version: str) -> None:
    """SignatureVersion 1 (SHA1withRSA) and 2 (SHA256withRSA) both verify with the certificate's key."""
    message = sns_sign(load("ses/sns_subscription.json"), version)
    assert passes(lambda: verify_signature(message, certificate(), WHEN))
    assert not passes(lambda: verify_signature({**message, "Token": message["Token"] + "0"}, certificate(), WHEN))


def test_version_mismatch_fails() -> None:
    """A SHA1 signature labelled as version 2 does not verify."""
    message = {**sns_sign(load("ses/sns_subscription.json"), "1"), "SignatureVersion": "2"}
    with pytest.raises(Rejected, match="does not match"):
        verify_signature(message, certificate(), WHEN)


def test_other_key_fails() -> None:
    """A message signed by another key does not verify with SNS's certificate."""
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    message = sns_sign(load("ses/sns_subscription.json"), "2", key=other)
    with pytest.raises(Rejected) as info:
        verify_signature(message, certificate(), WHEN)
    assert info.value.check == "signature"


@pytest.mark.parametrize(("change", "reason"), [
    ({"SignatureVersion": "3"}, "unsupported SNS SignatureVersion"),
    ({"Signature": "***"}, "not base64"),
    ({"Message": "changed"}, "does not match"),
])
def test_bad_signatures_are_401(change: dict[str, str], reason: str) -> None:
    """An unknown version, a signature that is not base64, or a changed message is refused."""
    message = {**sns_sign(load("ses/sns_subscription.json"), "2"), **change}
    with pytest.raises(Rejected, match=reason):
        verify_signature(message, certificate(), WHEN)


def test_expired_certificate_fails() -> None:
    """A certificate outside its validity period is refused."""
    message = sns_sign(load("ses/sns_subscription.json"), "2")
    with pytest.raises(Rejected) as info:
        verify_signature(message, certificate(), WHEN + timedelta(days=3650))
    assert info.value.check == "certificate"
