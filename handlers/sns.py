"""Amazon SNS over HTTPS: the message envelope, its RSA signature (SignatureVersion 1: SHA1, 2: SHA256), and
the URLs of SNS hosts; the signing certificates themselves are kept by `handlers/sns_certificates.py`."""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import aiohttp
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from bridge import USER_AGENT
from bridge.bodies import read_capped
from bridge.errors import Rejected
from bridge.escaping import quoted_sent
from bridge.resolver import BoundedResolver

Fetcher = Callable[[str], Awaitable[bytes]]
"""GET an https URL and return its body; raises FetchError."""


class Partition(NamedTuple):
    """An AWS partition as SNS's hosts in it are named: sns.<region>.<suffix>."""

    name: str
    """As in an ARN: arn:<name>:sns:<region>:<account>:<topic>."""
    regions: str
    """A pattern of its regions' names (botocore's `regionRegex`, with letters for `\\w`)."""
    suffix: str
    """Its DNS suffix."""
    example: str
    """One of its regions, for messages."""


PARTITIONS = (
    Partition("aws", r"(?:us|eu|ap|sa|ca|me|af|il|mx)-[a-z]+-[0-9]{1,2}", "amazonaws.com", "us-east-1"),
    Partition("aws-us-gov", r"us-gov-[a-z]+-[0-9]{1,2}", "amazonaws.com", "us-gov-west-1"),
    Partition("aws-cn", r"cn-[a-z]+-[0-9]{1,2}", "amazonaws.com.cn", "cn-north-1"),
    Partition("aws-eusc", r"eusc-de-[a-z]+-[0-9]{1,2}", "amazonaws.eu", "eusc-de-east-1"),
    Partition("aws-iso", r"us-iso-[a-z]+-[0-9]{1,2}", "c2s.ic.gov", "us-iso-east-1"),
    Partition("aws-iso-b", r"us-isob-[a-z]+-[0-9]{1,2}", "sc2s.sgov.gov", "us-isob-east-1"),
    Partition("aws-iso-e", r"eu-isoe-[a-z]+-[0-9]{1,2}", "cloud.adc-e.uk", "eu-isoe-west-1"),
    Partition("aws-iso-f", r"us-isof-[a-z]+-[0-9]{1,2}", "csp.hci.ic.gov", "us-isof-south-1"),
)
"""Every partition SNS runs in, from botocore's endpoint data (`botocore/data/partitions.json`, `endpoints.json`):
the commercial regions, GovCloud, China, the European Sovereign Cloud and the ISO partitions. The patterns do not
overlap (`us-gov-west-1`, `us-iso-east-1` and `eu-isoe-west-1` are no commercial region's name), so each region
has one SNS host, the one AWS's own validator (aws-sdk-java-v2's sns-message-manager) takes for it."""
_PARTITION = {p.name: p for p in PARTITIONS}
SNS_HOST = re.compile("|".join(rf"sns\.(?:{p.regions})\.{re.escape(p.suffix)}" for p in PARTITIONS))
"""SNS's host in a region of any partition, sns.<region>.<suffix>: a region's name of that partition, nothing
else in its place (one DNS label of anything was also the host of an S3 bucket named `sns`, sns.s3.amazonaws.com),
and the partition's own suffix (no `sns.us-iso-east-1.amazonaws.com`)."""
CERTIFICATE_PATH = re.compile(r"/SimpleNotificationService-[0-9a-f]{1,64}\.pem")
CERTIFICATE_URL = re.compile(r"https://(?:" + SNS_HOST.pattern + ")" + CERTIFICATE_PATH.pattern)
CERTIFICATE_NAME = "SimpleNotificationService-<hex digits>.pem"
CERTIFICATE_SHAPE = f"https://sns.<region>.<the partition's DNS suffix>/{CERTIFICATE_NAME}"
"""Where SNS publishes its signing certificates: each one so far is named SimpleNotificationService- and 32
lower-case hex digits (any number of them up to 64 is taken). AWS's own validators check only https, the host
and `.pem`; the name is checked too, so that a sender can neither make one certificate many URLs (a query, a
fragment, a port, another spelling of the host or path) nor have a path of its choosing fetched. A source names
its topics, and a topic's messages are signed by its region's SNS: the host must be that region's
(`topic_host`), so that a sender cannot have another region's host, or one this machine cannot reach, fetched."""
FETCH_TIMEOUT_S = 10.0
MAX_FETCH_BYTES = 65_536

# The keys signed, in order, for each message type (absent keys are skipped: Subject is optional). Each is
# written as `Key\nValue\n`, so only a value without a line break ends where it seems to: every one but Message,
# the first (SNS's own subscription text holds one), must have none, and then no other set of values signs the
# same text (a MessageId of `id\nSubject\nsubject` with Subject left out would otherwise sign as the message did).
SIGNED_KEYS = {
    "Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    "SubscriptionConfirmation": ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"),
    "UnsubscribeConfirmation": ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"),
}


class FetchError(Exception):
    """A GET that failed: `status` is the HTTP status (not 200, or 200 with a body over the cap), None when
    nothing answered (no connection, a timeout)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


async def https_get(url: str) -> bytes:
    """The default fetcher: one short-lived session per call. Calls are rare (certificates are cached, and
    subscriptions are confirmed once), so no session outlives a request and none needs closing at shutdown."""
    timeout = aiohttp.ClientTimeout(total=FETCH_TIMEOUT_S)
    try:
        async with aiohttp.ClientSession(timeout=timeout, headers={"User-Agent": USER_AGENT},
                                         connector=aiohttp.TCPConnector(resolver=BoundedResolver())) as session, \
                session.get(url, allow_redirects=False) as resp:
            if resp.status != 200:
                raise FetchError(f"HTTP {resp.status}", resp.status)
            data, cut = await read_capped(resp, MAX_FETCH_BYTES)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise FetchError(f"{type(exc).__name__}: {exc}") from None
    if cut:
        raise FetchError(f"more than {MAX_FETCH_BYTES} bytes", 200)
    return data



def _said(value: Any) -> str:
    """A field of the message as an error quotes it: text cut short (`quoted_sent`), else its kind."""
    return quoted_sent(value) if isinstance(value, str) else "None" if value is None else f"a {type(value).__name__}"

def _topic_host(arn: str) -> str:
    """The SNS host of an SNS topic's region; ValueError naming the part that is wrong and what would be right."""
    parts = arn.split(":", 5)
    shape = "expected arn:PARTITION:sns:REGION:ACCOUNT:TOPIC, such as arn:aws:sns:eu-west-1:123456789012:inbound"
    if len(parts) != 6 or parts[0] != "arn" or parts[2] != "sns" or not parts[4] or not parts[5]:
        raise ValueError(f"is not an SNS topic ARN; {shape}")
    partition = _PARTITION.get(parts[1])
    if partition is None:
        raise ValueError(f"names the partition {parts[1]!r}, which is none SNS runs in "
                         f"({', '.join(p.name for p in PARTITIONS)}); {shape}")
    if not re.fullmatch(partition.regions, parts[3]):
        raise ValueError(f"names the region {parts[3]!r}, which is no region of the partition {partition.name!r} "
                         f"(such as {partition.example}); {shape}")
    return f"sns.{parts[3]}.{partition.suffix}"


def topic_host(arn: str) -> str | None:
    """The SNS host of an SNS topic's region (`arn:aws:sns:eu-west-1:123456789012:inbound` is on
    sns.eu-west-1.amazonaws.com), or None when `arn` is no SNS topic's ARN in a partition and region SNS runs in."""
    try:
        return _topic_host(arn)
    except ValueError:
        return None


def topic_arn_problem(arn: str) -> str | None:
    """What makes `arn` no SNS topic's ARN that `topic_host` places (naming the part and what would be right),
    or None."""
    try:
        _topic_host(arn)
    except ValueError as exc:
        return str(exc)
    return None


def is_sns_url(url: str, host: str | None = None) -> bool:
    """Whether `url` is https on an SNS host (`host` when given, else any: sns.<region>.<partition's suffix>),
    with no user or port."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return False
    if parts.scheme != "https" or parts.username is not None or port not in (None, 443):
        return False
    if host is not None:
        return parts.hostname == host
    return SNS_HOST.fullmatch(parts.hostname or "") is not None


def certificate_url_problem(url: str, host: str | None = None) -> str | None:
    """What makes `url` not the URL of an SNS signing certificate (naming the part, and what it should be), or
    None when it is one: on `host` when given (the topic's region's, `topic_host`), else on any SNS host.
    Checked before anything is fetched."""
    if host is None:
        if CERTIFICATE_URL.fullmatch(url):
            return None
        expected = f"expected {CERTIFICATE_SHAPE}"
    else:
        if url.startswith(f"https://{host}/") and CERTIFICATE_PATH.fullmatch(url, len(host) + 8):
            return None
        expected = f"expected https://{host}/{CERTIFICATE_NAME}"
    try:
        parts = urlsplit(url)
    except ValueError:
        return f"SigningCertURL {quoted_sent(url)} is not a URL; {expected}"
    if parts.scheme != "https":
        return f"SigningCertURL's scheme {quoted_sent(parts.scheme)} is not https; {expected}"
    if host is not None and parts.netloc != host:
        return (f"SigningCertURL's host {quoted_sent(parts.netloc)} is not the SNS host of the topic's region, "
                f"{host} (SNS signs a topic's messages there; in lower case, with no user or port); {expected}")
    if not SNS_HOST.fullmatch(parts.netloc):
        return (f"SigningCertURL's host {quoted_sent(parts.netloc)} is not an SNS host (sns.<region>.amazonaws.com, "
                f"the region such as us-east-1, in lower case, with no user or port; in other partitions their "
                f"regions and DNS suffix); {expected}")
    if not CERTIFICATE_PATH.fullmatch(parts.path):
        return f"SigningCertURL's path {quoted_sent(parts.path)} is not an SNS certificate's; {expected}"
    if parts.query or parts.fragment:
        part, value = ("query", parts.query) if parts.query else ("fragment", parts.fragment)
        return f"SigningCertURL has a {part} ({quoted_sent(value)}), which SNS's never have; {expected}"
    return f"SigningCertURL {quoted_sent(url)} is not an SNS certificate's URL; {expected}"


class Signed(NamedTuple):
    """What a message's signature is checked with, read from the message without the certificate."""

    text: bytes
    signature: bytes
    algorithm: hashes.HashAlgorithm


def string_to_sign(message: Mapping[str, Any]) -> bytes:
    """The canonical `Key\\nValue\\n` text SNS signs for this message's type."""
    keys = SIGNED_KEYS.get(str(message.get("Type")))
    if keys is None:
        raise Rejected(401, f"unknown SNS message Type {_said(message.get('Type'))}", check="signature")
    out = []
    for key in keys:
        value = message.get(key)
        if value is None:
            if key == "Subject":
                continue
            raise Rejected(401, f"SNS message has no {key}", check="signature")
        text = str(value)
        if key != "Message" and "\n" in text:
            raise Rejected(401, f"SNS {key} {quoted_sent(text)} holds a line break, which no field SNS signs but "
                                "Message has: the signed text would not say where it ends", check="signature")
        out.append(f"{key}\n{text}\n")
    return "".join(out).encode()


def signed(message: Mapping[str, Any]) -> Signed:
    """The signed text, the signature and its hash, each checked (no I/O, so before any certificate is fetched);
    Rejected(401) naming what is wrong."""
    text = string_to_sign(message)
    version = str(message.get("SignatureVersion"))
    algorithm: hashes.HashAlgorithm
    if version == "1":
        algorithm = hashes.SHA1()  # noqa: S303 - SNS SignatureVersion 1 is defined as SHA1withRSA
    elif version == "2":
        algorithm = hashes.SHA256()
    else:
        raise Rejected(401, f"unsupported SNS SignatureVersion {_said(message.get('SignatureVersion'))}",
                       check="signature")
    try:
        signature = base64.b64decode(str(message.get("Signature") or ""), validate=True)
    except (binascii.Error, ValueError):
        raise Rejected(401, "SNS Signature is not base64", check="signature") from None
    return Signed(text, signature, algorithm)


def verify_signature(message: Mapping[str, Any] | Signed, cert: x509.Certificate, now: datetime) -> None:
    """Check the message's RSA signature with the certificate's key; Rejected(401) naming what failed."""
    parts = message if isinstance(message, Signed) else signed(message)
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise Rejected(401, "the signing certificate is not valid at this time", check="certificate")
    key = cert.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise Rejected(401, "the signing certificate has no RSA key", check="certificate")
    try:
        key.verify(parts.signature, parts.text, padding.PKCS1v15(), parts.algorithm)
    except InvalidSignature:
        raise Rejected(401, "SNS Signature does not match the message", check="signature") from None
