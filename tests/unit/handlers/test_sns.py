"""handlers/sns.py: the SNS URL rules, the canonical string, the signed fields and RSA verification."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from bridge.errors import Rejected
from handlers.sns import (
    PARTITIONS,
    certificate_url_problem,
    is_sns_url,
    signed,
    string_to_sign,
    topic_arn_problem,
    topic_host,
    verify_signature,
)
from tests.fixtures.providers import CERT_URL, NOW, load, passes, sns_key, sns_sign

WHEN = datetime.fromtimestamp(NOW, UTC)


@pytest.mark.parametrize("url", [
    CERT_URL,
    "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-abc.pem",
    "https://sns.cn-north-1.amazonaws.com.cn/SimpleNotificationService-abc.pem",
    "https://sns.us-gov-west-1.amazonaws.com/SimpleNotificationService-01d088a6f77103d0fe307c0069e40ed6.pem",
    "https://sns.eu-central-2.amazonaws.com/SimpleNotificationService-abc.pem",
    "https://sns.ap-southeast-4.amazonaws.com/SimpleNotificationService-abc.pem",
    "https://sns.il-central-1.amazonaws.com/SimpleNotificationService-abc.pem",
    "https://sns.cn-northwest-1.amazonaws.com.cn/SimpleNotificationService-abc.pem",
    "https://sns.eusc-de-east-1.amazonaws.eu/SimpleNotificationService-abc.pem",
    "https://sns.us-iso-east-1.c2s.ic.gov/SimpleNotificationService-abc.pem",
    "https://sns.us-iso-west-1.c2s.ic.gov/SimpleNotificationService-abc.pem",
    "https://sns.us-isob-east-1.sc2s.sgov.gov/SimpleNotificationService-abc.pem",
    "https://sns.eu-isoe-west-1.cloud.adc-e.uk/SimpleNotificationService-abc.pem",
    "https://sns.us-isof-south-1.csp.hci.ic.gov/SimpleNotificationService-abc.pem",
])
def test_certificate_urls_are_taken(url: str) -> None:
    """https URLs of SimpleNotificationService-<hex>.pem on sns.<region>.<suffix>, the region one of a partition
    and the suffix that partition's (China's .amazonaws.com.cn, the European Sovereign Cloud's .amazonaws.eu, the
    ISO partitions' own), are certificates'."""
    assert certificate_url_problem(url) is None


SHAPE = "expected https://sns.<region>.<the partition's DNS suffix>/SimpleNotificationService-<hex digits>.pem"
GOOD = "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-abc.pem"
OTHER_PARTS = [
    (GOOD.replace("https", "http"), "scheme 'http' is not https"),
    ("https://sns.us-east-1.amazonaws.com/x.pem", "path '/x.pem'"),
    (GOOD.replace(".pem", ".txt"), "path '/SimpleNotificationService-abc.txt'"),
    (GOOD.replace("-abc", "-xyz"), "path '/SimpleNotificationService-xyz.pem'"),
    (GOOD.replace(".com/", ".com//"), "path '//SimpleNotificationService-abc.pem'"),
    (GOOD.replace(".com/", ".com/a/../"), "path '/a/../SimpleNotificationService-abc.pem'"),
    (GOOD.replace("/Simple", "/%53imple"), "path '/%53impleNotificationService-abc.pem'"),
    (GOOD + "?x=1", "query ('x=1')"),
    (GOOD + "#1", "fragment ('1')"),
    (GOOD + "?", "'https://sns.us-east-1.amazonaws.com/SimpleNotificationService-abc.pem?' is not"),
    (GOOD.replace("abc", "a" * 300), "path '/SimpleNotificationService-aaaaaaaa"),
]
"""URLs on the host, refused for another part: with or without the topic's host given."""


@pytest.mark.parametrize(("url", "named"), [
    ("not a url", "scheme '' is not https"),
    ("https://[::1/x.pem", "'https://[::1/x.pem' is not a URL"),
    (GOOD.replace(".com/", ".com.evil.example/"), "host 'sns.us-east-1.amazonaws.com.evil.example'"),
    ("https://evil.example/sns.us-east-1.amazonaws.com/SimpleNotificationService-abc.pem", "host 'evil.example'"),
    (GOOD.replace(".com/", ".com@evil.example/"), "host 'sns.us-east-1.amazonaws.com@evil.example'"),
    (GOOD.replace("//", "//user@"), "host 'user@sns.us-east-1.amazonaws.com'"),
    (GOOD.replace(".com/", ".com:8443/"), "host 'sns.us-east-1.amazonaws.com:8443'"),
    (GOOD.replace(".com/", ".com:443/"), "host 'sns.us-east-1.amazonaws.com:443'"),
    (GOOD.replace(".com/", ".com:bad/"), "host 'sns.us-east-1.amazonaws.com:bad'"),
    (GOOD.replace("sns.us-east-1", "SNS.us-east-1"), "host 'SNS.us-east-1.amazonaws.com'"),
    ("https://s3.amazonaws.com/SimpleNotificationService-abc.pem", "host 's3.amazonaws.com'"),
    ("https://sns.s3.amazonaws.com/SimpleNotificationService-abc.pem", "host 'sns.s3.amazonaws.com'"),
    ("https://sns.sns.amazonaws.com/SimpleNotificationService-abc.pem", "host 'sns.sns.amazonaws.com'"),
    ("https://sns.us-east.amazonaws.com/SimpleNotificationService-abc.pem", "host 'sns.us-east.amazonaws.com'"),
    (GOOD.replace(".com/", ".com.cn/"), "host 'sns.us-east-1.amazonaws.com.cn'"),
    (GOOD.replace("us-east-1", "cn-north-1"), "host 'sns.cn-north-1.amazonaws.com'"),
    # Each partition's regions on its own suffix only, and only names its regions have.
    (GOOD.replace("us-east-1", "zz-east-1"), "host 'sns.zz-east-1.amazonaws.com'"),
    (GOOD.replace("us-east-1", "xx-gov-west-1"), "host 'sns.xx-gov-west-1.amazonaws.com'"),
    (GOOD.replace("us-east-1", "us-iso-east-1"), "host 'sns.us-iso-east-1.amazonaws.com'"),
    (GOOD.replace("us-east-1", "eusc-de-east-1"), "host 'sns.eusc-de-east-1.amazonaws.com'"),
    ("https://sns.us-east-1.amazonaws.eu/SimpleNotificationService-abc.pem", "host 'sns.us-east-1.amazonaws.eu'"),
    ("https://sns.eusc-fr-east-1.amazonaws.eu/SimpleNotificationService-abc.pem",
     "host 'sns.eusc-fr-east-1.amazonaws.eu'"),
    ("https://sns.us-east-1.c2s.ic.gov/SimpleNotificationService-abc.pem", "host 'sns.us-east-1.c2s.ic.gov'"),
    ("https://sns.us-isob-east-1.c2s.ic.gov/SimpleNotificationService-abc.pem",
     "host 'sns.us-isob-east-1.c2s.ic.gov'"),
    ("https://sns.us-iso-east-1.sc2s.sgov.gov/SimpleNotificationService-abc.pem",
     "host 'sns.us-iso-east-1.sc2s.sgov.gov'"),
    ("https://sns.c2s.ic.gov/SimpleNotificationService-abc.pem", "host 'sns.c2s.ic.gov'"),
    ("https://sns.eu-isoe-west-1.adc-e.uk/SimpleNotificationService-abc.pem", "host 'sns.eu-isoe-west-1.adc-e.uk'"),
    ("https://sns.us-isof-south-1.hci.ic.gov/SimpleNotificationService-abc.pem",
     "host 'sns.us-isof-south-1.hci.ic.gov'"),
    ("https://sns.us-iso-east-1.c2s.ic.gov.evil.example/SimpleNotificationService-abc.pem",
     "host 'sns.us-iso-east-1.c2s.ic.gov.evil.example'"),
    ("https://sns.s3.c2s.ic.gov/SimpleNotificationService-abc.pem", "host 'sns.s3.c2s.ic.gov'"),
    ("https://sns.eusc-de-east-1.amazonaws.eu.evil.example/SimpleNotificationService-abc.pem",
     "host 'sns.eusc-de-east-1.amazonaws.eu.evil.example'"),
    ("https://sns-fips.us-east-1.amazonaws.com/SimpleNotificationService-abc.pem",
     "host 'sns-fips.us-east-1.amazonaws.com'"),
    ("https://sns.us-east-1.api.aws/SimpleNotificationService-abc.pem", "host 'sns.us-east-1.api.aws'"),
    *OTHER_PARTS,
])
def test_other_urls_are_refused_naming_the_part(url: str, named: str) -> None:
    """Plain http, look-alike hosts, user info, any port, another spelling, another path, a query or fragment are
    not a certificate's URL: the reason names the part and its value, and says what is expected."""
    problem = certificate_url_problem(url)
    assert problem is not None and named in problem and problem.endswith(SHAPE)


def test_a_long_value_is_cut_in_the_reason() -> None:
    """A sender's long value is quoted only in part, and its length said."""
    problem = certificate_url_problem(GOOD + "?" + "x" * 10_000)
    assert problem is not None and len(problem) < 300
    assert f"('{'x' * 80}'… (10000 characters))" in problem


@pytest.mark.parametrize(("url", "taken"), [
    ("https://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription&TopicArn=t&Token=x", True),
    ("https://sns.us-east-1.amazonaws.com:443/?Action=ConfirmSubscription", True),
    ("http://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription", False),
    ("https://evil.example/?Action=ConfirmSubscription", False),
    ("https://user@sns.us-east-1.amazonaws.com/", False),
    ("https://sns.us-east-1.amazonaws.com:bad/", False),
    ("https://sns.s3.amazonaws.com/?Action=ConfirmSubscription", False),
])
def test_subscribe_urls_are_on_an_sns_host(url: str, taken: bool) -> None:
    """A SubscribeURL is any https URL on an SNS host, with no user or other port; a bucket named `sns` is no
    SNS host (`sns.s3.amazonaws.com`)."""
    assert is_sns_url(url) is taken


def botocore_data(name: str) -> Any:
    """botocore's endpoint data (installed with aiobotocore, the `ses-s3` extra, and by the test extra)."""
    import botocore

    return json.loads((Path(botocore.__file__).parent / "data" / name).read_text())


def test_the_partitions_are_botocores() -> None:
    """The partitions SNS runs in are botocore's, each with its DNS suffix and every region it lists: a botocore
    that knows a partition or region these do not fails here, rather than its messages failing in service."""
    partitions = {p["id"]: p for p in botocore_data("partitions.json")["partitions"]}
    assert {p.name for p in PARTITIONS} == set(partitions)
    for ours in PARTITIONS:
        theirs = partitions[ours.name]
        assert ours.suffix == theirs["outputs"]["dnsSuffix"]
        regions = [r for r in theirs["regions"] if not r.endswith("-global")]
        assert ours.example in regions
        for region in regions:
            assert re.fullmatch(ours.regions, region), (ours.name, region)
            assert re.fullmatch(theirs["regionRegex"], region)
            for other in PARTITIONS:  # one partition's region is no other's: one host for each
                assert other is ours or not re.fullmatch(other.regions, region), (other.name, region)


def test_every_sns_region_of_botocore_has_its_host_taken() -> None:
    """Each region botocore lists an SNS endpoint in, in each partition, has sns.<region>.<suffix> taken as
    a certificate's host and as its topics' host (the host AWS's own validator resolves for the region)."""
    seen = 0
    for partition in botocore_data("endpoints.json")["partitions"]:
        for region in partition["services"]["sns"]["endpoints"]:
            if region.startswith("fips-") or region.endswith("-fips"):
                continue
            host = f"sns.{region}.{partition['dnsSuffix']}"
            arn = f"arn:{partition['partition']}:sns:{region}:123456789012:inbound"
            assert certificate_url_problem(f"https://{host}/SimpleNotificationService-abc.pem") is None, host
            assert topic_host(arn) == host
            assert topic_arn_problem(arn) is None
            seen += 1
    assert seen > 40


@pytest.mark.parametrize(("arn", "named"), [
    ("arn:aws:sns:us-east-1:123456789012", "is not an SNS topic ARN"),
    ("arn:aws:sqs:us-east-1:123456789012:inbound", "is not an SNS topic ARN"),
    ("arn:aws:sns:us-east-1::inbound", "is not an SNS topic ARN"),
    ("urn:aws:sns:us-east-1:123456789012:inbound", "is not an SNS topic ARN"),
    ("arn:aws-xx:sns:us-east-1:123456789012:inbound", "the partition 'aws-xx', which is none SNS runs in"),
    ("arn:aws:sns:us-iso-east-1:123456789012:inbound",
     "the region 'us-iso-east-1', which is no region of the partition 'aws' (such as us-east-1)"),
    ("arn:aws-iso:sns:us-east-1:123456789012:inbound",
     "the region 'us-east-1', which is no region of the partition 'aws-iso' (such as us-iso-east-1)"),
    ("arn:aws:sns:cn-north-1:123456789012:inbound", "no region of the partition 'aws'"),
    ("arn:aws:sns:s3:123456789012:inbound", "the region 's3'"),
])
def test_a_topic_not_in_a_partition_and_region_sns_runs_in_has_no_host(arn: str, named: str) -> None:
    """A topic ARN whose partition SNS does not run in, or whose region is none of its partition's, has no SNS
    host; the reason names the part and what would be right."""
    assert topic_host(arn) is None
    problem = topic_arn_problem(arn)
    assert problem is not None and named in problem
    assert problem.endswith("expected arn:PARTITION:sns:REGION:ACCOUNT:TOPIC, such as "
                            "arn:aws:sns:eu-west-1:123456789012:inbound")


@pytest.mark.parametrize(("url", "named"), [
    ("https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-abc.pem",
     "host 'sns.eu-west-1.amazonaws.com' is not the SNS host of the topic's region, sns.us-east-1.amazonaws.com"),
    ("https://sns.us-iso-east-1.c2s.ic.gov/SimpleNotificationService-abc.pem",
     "host 'sns.us-iso-east-1.c2s.ic.gov' is not the SNS host"),
    ("https://sns.zz-east-9.amazonaws.com/SimpleNotificationService-abc.pem", "host 'sns.zz-east-9.amazonaws.com'"),
    (GOOD.replace("//", "//user@"), "host 'user@sns.us-east-1.amazonaws.com'"),
    (GOOD.replace(".com/", ".com:443/"), "host 'sns.us-east-1.amazonaws.com:443'"),
    (GOOD.replace("sns.", "SNS."), "host 'SNS.us-east-1.amazonaws.com'"),
    *OTHER_PARTS,
])
def test_with_the_topics_host_only_that_host_is_taken(url: str, named: str) -> None:
    """A message's certificate is on its topic's region's SNS host: any other, SNS's own in another region
    included, is refused naming the host expected; the rest of the URL is checked as ever."""
    host = "sns.us-east-1.amazonaws.com"
    assert certificate_url_problem(GOOD, host) is None
    problem = certificate_url_problem(url, host)
    assert problem is not None and named in problem
    assert problem.endswith(f"expected https://{host}/SimpleNotificationService-<hex digits>.pem")


def test_subscribe_urls_on_the_topics_host() -> None:
    """With the topic's host, a SubscribeURL is taken on that host only."""
    host = "sns.eusc-de-east-1.amazonaws.eu"
    assert is_sns_url(f"https://{host}/?Action=ConfirmSubscription", host)
    assert is_sns_url(f"https://{host}:443/?Action=ConfirmSubscription", host)
    assert not is_sns_url("https://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription", host)
    assert not is_sns_url(f"https://user@{host}/", host)
    assert not is_sns_url(f"http://{host}/", host)


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


@pytest.mark.parametrize("key", ["MessageId", "Subject", "Timestamp", "TopicArn"])
def test_a_line_break_in_a_signed_field_but_message_is_401(key: str) -> None:
    """A line break in any signed field but Message would let two sets of values sign one text: refused, naming
    the field. Message may hold one (SNS's subscription text does): it is first, and every field after it has none."""
    message = {"Type": "Notification", "MessageId": "m", "TopicArn": "t", "Message": "hi\nthere", "Subject": "s",
               "Timestamp": "ts"}
    assert string_to_sign(message).startswith(b"Message\nhi\nthere\nMessageId\n")
    with pytest.raises(Rejected, match=f"SNS {key} '.*' holds a line break") as info:
        string_to_sign({**message, key: message[key] + "\nSubject\ns"})
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


@pytest.mark.parametrize(("change", "reason"), [
    ({"SignatureVersion": None}, "unsupported SNS SignatureVersion None"),
    ({"Signature": "%%"}, "not base64"),
    ({"MessageId": None}, "SNS message has no MessageId"),
    ({"Type": "Other"}, "unknown SNS message Type 'Other'"),
])
def test_signed_fields_are_checked_without_a_certificate(change: dict[str, Any], reason: str) -> None:
    """The signed text, the version and the signature's encoding are checked from the message alone."""
    message = {k: v for k, v in {**sns_sign(load("ses/sns_subscription.json"), "2"), **change}.items()
               if v is not None}
    with pytest.raises(Rejected, match=reason) as info:
        signed(message)
    assert (info.value.status, info.value.check) == (401, "signature")
