"""SES's SNS signing certificates through the whole app: what a sender who knows an allowed topic can make the
bridge fetch. A message refused on its own (topic, age, URL, signed fields) fetches nothing; a URL that failed
is answered from memory; distinct URLs are fetched only within the bounds (a few at once, and a few a second per
public client address: none for the loopback address the test client has, as for a proxy's), the rest answered 503
with Retry-After, while messages signed with the certificate already kept are still taken."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from handlers.sns import FetchError
from handlers.sns_certificates import NEW_BURST
from tests.acceptance.test_metrics import samples
from tests.acceptance.test_providers import stored_events
from tests.conftest import AppClient, ConfigFactory, runtime
from tests.fixtures.clocks import ManualClock
from tests.fixtures.providers import CERT_URL, NOW, TOPIC, FakeSns, compact, ses_notification

MAPPINGS = {
    "email": """
        source: ses
        destination: kapture
        action: create_ticket
        fields:
          title: "{{ payload.subject }}"
          email_id: {from: payload.from, required: true}
    """,
}
SNS = {"Content-Type": "text/plain; charset=UTF-8", "x-amz-sns-message-type": "Notification"}


@dataclass
class OnlySnsCertificate:
    """SNS's hosts as a sender finds them: the real certificate at CERT_URL, 404 at any other name."""

    sns: FakeSns = field(default_factory=FakeSns)
    fetched: list[str] = field(default_factory=list)

    async def __call__(self, url: str) -> bytes:
        self.fetched.append(url)
        if url != CERT_URL:
            raise FetchError("HTTP 404", 404)
        return await self.sns(url)


async def start(write_config: ConfigFactory, bridge_client: AppClient, server: str = "{}") -> Any:
    """The app with an SES source, SNS's hosts faked (OnlySnsCertificate); `server`: its server table."""
    config = write_config(f"""
        server: {server}
        store: {{url: "sqlite:///var/bridge.db"}}
        admin: {{token: letmein}}
        sources:
          ses: {{kind: ses, topic_arns: ["{TOPIC}"]}}
        destinations:
          kapture: {{vendor: kapture, sandbox: true}}
        """, MAPPINGS)
    c = await bridge_client(config)
    handler: Any = runtime(c).sources["ses"].handler
    handler.clock = lambda: float(NOW)
    handler.fetch = OnlySnsCertificate()
    handler.certificates.clock = ManualClock()
    return c


@pytest.fixture
async def client(write_config: ConfigFactory, bridge_client: AppClient) -> Any:
    return await start(write_config, bridge_client)


def fetched(client: Any) -> list[str]:
    fetch: OnlySnsCertificate = runtime(client).sources["ses"].handler.fetch  # type: ignore[attr-defined]
    return fetch.fetched


def url(i: int) -> str:
    return f"https://sns.us-east-1.amazonaws.com/SimpleNotificationService-{i:032x}.pem"


async def post(client: Any, message: dict[str, Any], forwarded_for: str | None = None
               ) -> tuple[int, dict[str, Any], Any]:
    headers = SNS if forwarded_for is None else {**SNS, "X-Forwarded-For": forwarded_for}
    resp = await client.post("/hooks/ses", data=compact(message), headers=headers)
    return resp.status, await resp.json(), resp.headers


@pytest.mark.parametrize(("change", "check", "reason"), [
    ({"TopicArn": "arn:aws:sns:us-east-1:999999999999:other"}, "topic_arn", "is not in this source's topic_arns"),
    ({"timestamp": NOW - 3601}, "timestamp", "SNS Timestamp is 3601s old"),
    ({"SigningCertURL": CERT_URL + "?x=1"}, "certificate", "SigningCertURL has a query ('x=1')"),
    ({"SigningCertURL": "https://sns.us-east-1.amazonaws.com/x1.pem"}, "certificate",
     "SigningCertURL's path '/x1.pem' is not an SNS certificate's; expected https://sns.us-east-1.amazonaws.com"
     "/SimpleNotificationService-<hex digits>.pem"),
    ({"SigningCertURL": "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-00.pem"}, "certificate",
     "SigningCertURL's host 'sns.eu-west-1.amazonaws.com' is not the SNS host of the topic's region, "
     "sns.us-east-1.amazonaws.com"),
    ({"unsigned": {"SignatureVersion": "3"}}, "signature", "unsupported SNS SignatureVersion '3'"),
    ({"unsigned": {"MessageId": None}}, "signature", "SNS message has no MessageId"),
])
async def test_a_message_refused_on_its_own_fetches_nothing(client: Any, tmp_path: Path, change: dict[str, Any],
                                                            check: str, reason: str) -> None:
    """The topic, the age, the certificate's URL and the signed fields are checked before any fetch: a message
    they refuse (signed as SNS signs, or changed after) is a 401 naming the check, and nothing is fetched."""
    signed = {k: v for k, v in change.items() if k != "unsigned"}
    message = {k: v for k, v in {**ses_notification(**signed), **change.get("unsigned", {})}.items() if v is not None}
    status, answer, _headers = await post(client, message)
    assert (status, answer["check"]) == (401, check)
    assert reason in answer["error"]
    assert fetched(client) == []
    assert stored_events(tmp_path) == 0


async def test_a_huge_topic_is_named_cut(client: Any) -> None:
    """A TopicArn of 200,000 characters is a 401 whose answer names it cut, not echoed whole."""
    status, answer, _headers = await post(client, ses_notification(TopicArn="arn:" + "a" * 200_000))
    assert (status, answer["check"]) == (401, "topic_arn")
    assert answer["error"] == f"SNS topic {repr('arn:' + 'a' * 300)[:300]} is not in this source's topic_arns"


async def test_a_missing_certificate_is_fetched_once(client: Any) -> None:
    """Requests naming a certificate URL that answered 404 are answered 401 from memory: one fetch for all."""
    with capture_logs() as logs:
        answers = [await post(client, ses_notification(SigningCertURL=url(1))) for _ in range(20)]
    assert {(status, answer["check"]) for status, answer, _h in answers} == {(401, "certificate")}
    assert "(HTTP 404); that answer stands for 600s" in answers[-1][1]["error"]
    assert fetched(client) == [url(1)]
    assert [e["url"] for e in logs if e["event"] == "sns.certificate_fetch_failed"] == [url(1)]


async def test_a_flood_from_loopback_is_not_refused_by_rate_and_a_genuine_message_is_taken(
        client: Any, tmp_path: Path) -> None:
    """A sender naming a new made-up URL in each of 30 requests from 127.0.0.1 (the address a reverse proxy on the
    same machine gives every sender) has each fetched once (a 401 each, the 404 remembered), none refused by the
    budget of one address, which only a public address has (the unit tests cover it); a genuine message then
    naming SNS's certificate, not yet kept (just after a start, or when SNS rotates it), through the same address,
    has it fetched and is taken; /metrics counts the fetches and no `rate` refusal."""
    answers = [await post(client, ses_notification(SigningCertURL=url(i))) for i in range(30)]
    assert [(status, answer["check"]) for status, answer, _h in answers] == [(401, "certificate")] * 30
    assert fetched(client) == [url(i) for i in range(30)]
    assert NEW_BURST < 30

    status, _answer, _headers = await post(client, ses_notification())
    assert status == 202
    assert fetched(client) == [*(url(i) for i in range(30)), CERT_URL]
    assert stored_events(tmp_path) == 1

    received = json.loads(ses_notification()["Message"])
    received["mail"]["messageId"] = "another"
    # Signed with the certificate now kept: taken without a fetch.
    status, _answer, _headers = await post(client, ses_notification(Message=json.dumps(received),
                                                                    MessageId="another-sns-message"))
    assert status == 202
    assert stored_events(tmp_path) == 2
    assert len(fetched(client)) == 31

    got = samples(await (await client.get("/metrics", headers={"Authorization": "Bearer letmein"})).text())
    assert {k: v for k, v in got.items() if k.startswith("ticketbridge_sns_")} == {
        'ticketbridge_sns_certificate_fetches_total{source="ses",result="failed"}': 30,
        'ticketbridge_sns_certificate_fetches_total{source="ses",result="ok"}': 1,
    }


FLOODER = "8.8.4.9"
"""A public address naming made-up certificate URLs, behind the proxy."""
AWS = "54.240.197.9"
"""A public address posting SNS's genuine messages, behind the same proxy."""


async def test_behind_a_trusted_proxy_the_budget_is_the_forwarded_clients(
        write_config: ConfigFactory, bridge_client: AppClient, tmp_path: Path) -> None:
    """With the test client's loopback address in `server.trusted_proxies`, the address the proxy appended to
    X-Forwarded-For is the client's: a sender naming made-up URLs has NEW_BURST fetched, then is refused by `rate`
    (503 with Retry-After), whatever it wrote left of its address (AWS's, to spend that one's budget); a genuine
    message forwarded for another address then has its certificate fetched and is taken, stored with that address
    as its `remote`, and the refusals are logged under the flooder's address. Before, the key was unknown, and behind
    a proxy every sender had its address, which has no budget."""
    client = await start(write_config, bridge_client, "{trusted_proxies: [127.0.0.0/8, '::1']}")
    with capture_logs() as logs:
        answers = [await post(client, ses_notification(SigningCertURL=url(i)), f"{AWS}, {FLOODER}")
                   for i in range(10)]
    assert [status for status, _a, _h in answers] == [401] * NEW_BURST + [503] * (10 - NEW_BURST)
    refused, headers = answers[-1][1], answers[-1][2]
    assert refused["check"] == "certificate"
    assert f"requests from {FLOODER} may have at most {NEW_BURST} certificates" in refused["error"]
    assert int(headers["Retry-After"]) >= 1
    assert fetched(client) == [url(i) for i in range(NEW_BURST)]
    assert {e["remote"] for e in logs if e["event"] == "intake.rejected"} == {FLOODER}
    assert [e["client"] for e in logs if e["event"] == "sns.certificate_fetch_refused"] == [FLOODER]

    status, answer, _headers = await post(client, ses_notification(), AWS)
    assert status == 202
    assert fetched(client) == [*(url(i) for i in range(NEW_BURST)), CERT_URL]
    assert (await runtime(client).store.get_event(answer["event_id"])).meta["remote"] == AWS


@pytest.mark.parametrize("server", ["{}", "{trusted_proxies: [10.0.0.0/8, 'fd00::/8']}"])
async def test_a_peer_that_is_no_trusted_proxy_has_its_forwarding_header_ignored(
        write_config: ConfigFactory, bridge_client: AppClient, server: str) -> None:
    """With no trusted proxy, or none that is the test client's loopback address, the X-Forwarded-For it sends
    (naming one public address) is ignored: the client is its loopback address, which has no budget, so 30 made-up
    URLs are all fetched and none is refused by `rate`; the event's `remote` is the loopback address."""
    client = await start(write_config, bridge_client, server)
    answers = [await post(client, ses_notification(SigningCertURL=url(i)), FLOODER) for i in range(30)]
    assert [(status, answer["check"]) for status, answer, _h in answers] == [(401, "certificate")] * 30
    assert fetched(client) == [url(i) for i in range(30)]
    status, answer, _headers = await post(client, ses_notification(), FLOODER)
    assert status == 202
    assert (await runtime(client).store.get_event(answer["event_id"])).meta["remote"] == "127.0.0.1"
