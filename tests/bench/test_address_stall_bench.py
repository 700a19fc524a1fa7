"""The event loop's longest stall while requests under the offload threshold whose parse is costly are handled,
against a real server process over real HTTP: a Postmark From of 62 KB (refused before it is parsed) or 8 KiB, or
To of 62 KB, of "[." (the standard library's address parser reads it at microseconds a character), a Mailgun
urlencoded `body-mime` of 40 parts or with such a From of 8 KiB. (SES, whose signed notifications need a fake
certificate server, is proved in the acceptance tests.)

Each is posted one at a time while /healthz is polled back to back on one connection until the post is answered
(the poll stops on that condition, not after a set time); the longest /healthz round trip seen is the loop's
longest stall. It must stay under STALL_TARGET_MS: the parse runs in the parser thread (the loop holds some
0.3 ms before handing it over), and the loop only waits for the GIL in turns with it, 5 ms at a time. Before,
the loop was held 240 ms by the 62 KB From or To."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from urllib.parse import urlencode

import aiohttp
import pytest

from handlers.limits import MAX_FROM_CHARS
from tests.bench.harness import free_port, spawn, stop, wait_port
from tests.fixtures.providers import basic, compact, load, mailgun_fields

pytestmark = pytest.mark.bench

STALL_TARGET_MS = 100.0  # before the fix 240 ms; after, 10-70 ms on 2 shared cores (GIL turns, other load)
ROUNDS = 5
HOSTILE = "[." * 31_000
MAILGUN_KEY = "key-3ax6xnjp29jd6fds4gc373sgvjxteol0"

CONFIG = f"""
server: {{host: 127.0.0.1, port: PORT}}
store: {{url: "sqlite:///var/bridge.db"}}
sources:
  postmark: {{kind: postmark, auth: {{basic: {{username: postmark, password: pm-pw}}}}}}
  mailgun: {{kind: mailgun, signing_key: "{MAILGUN_KEY}"}}
"""
POSTMARK = {"Content-Type": "application/json", "Authorization": basic("postmark", "pm-pw")}
URLENCODED = {"Content-Type": "application/x-www-form-urlencoded"}

Case = tuple[str, Callable[[int], bytes], dict[str, str]]


def postmark(field: str, value: str) -> Callable[[int], bytes]:
    def body(n: int) -> bytes:
        mail = load("postmark/inbound.json")
        mail.update({field: value, "MessageID": f"stall-{n}"})
        mail.pop(f"{field}Full", None)
        return compact(mail)
    return body


def message(n: int, parts: int, from_: str) -> bytes:
    body = "".join("--b\r\nContent-Type: text/plain\r\n\r\nx\r\n" for _ in range(parts))
    return (f"From: {from_}\r\nTo: support@acme.test\r\nSubject: stall\r\nMessage-ID: <stall-{n}@example.com>\r\n"
            f'Content-Type: multipart/mixed; boundary="b"\r\n\r\n{body}--b--\r\n').encode()


def mailgun(parts: int, from_: str) -> Callable[[int], bytes]:
    def body(n: int) -> bytes:
        fields = {**mailgun_fields(MAILGUN_KEY, timestamp=int(time.time()), token=f"stall{n:046d}"),
                  "body-mime": message(n, parts, from_).decode()}
        return urlencode(fields).encode()
    return body


CASES: dict[str, Case] = {
    "Postmark From of 62 KB (413)": ("/hooks/postmark", postmark("From", HOSTILE), POSTMARK),
    "Postmark From of 8 KiB": ("/hooks/postmark", postmark("From", HOSTILE[:MAX_FROM_CHARS]), POSTMARK),
    "Postmark To of 62 KB": ("/hooks/postmark", postmark("To", HOSTILE), POSTMARK),
    "Mailgun body-mime, 40 parts": ("/hooks/mailgun", mailgun(40, "Asha <asha@example.com>"), URLENCODED),
    "Mailgun body-mime, From 8 KiB": ("/hooks/mailgun", mailgun(1, HOSTILE[:MAX_FROM_CHARS]), URLENCODED),
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("stall")
    port = free_port()
    (folder / "bridge.yaml").write_text(CONFIG.replace("PORT", str(port)))
    (folder / "mappings").mkdir()
    proc = spawn(["-m", "bridge", "serve", "--no-workers"], folder)
    try:
        wait_port(port, proc, timeout=20)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)


async def longest_stall(base: str, case: Case) -> tuple[float, int]:
    """The longest /healthz round trip (ms) while each of ROUNDS posts of `case` is handled, and its status."""
    path, make, headers = case
    longest = 0.0
    status = 0
    async with aiohttp.ClientSession() as poll, aiohttp.ClientSession() as send:
        async with poll.get(base + "/healthz") as warm:
            await warm.read()
        for n in range(ROUNDS):
            body = make(n)
            posted = asyncio.ensure_future(send.post(base + path, data=body, headers=headers))
            while True:
                t0 = time.perf_counter()
                async with poll.get(base + "/healthz") as resp:
                    await resp.read()
                longest = max(longest, (time.perf_counter() - t0) * 1000)
                if posted.done():
                    break
            async with await posted as answer:
                status = answer.status
                await answer.read()
    return longest, status


def test_a_costly_parse_under_the_offload_threshold_never_stalls_the_loop(server: str) -> None:
    results = {name: asyncio.run(longest_stall(server, case)) for name, case in CASES.items()}
    print(f"\nlongest /healthz round trip while each is handled ({ROUNDS} posts each, one at a time)")
    for name, (ms, status) in results.items():
        print(f"  {name:32s} {status}  {ms:6.1f} ms")
    print(json.dumps({name: round(ms, 1) for name, (ms, _s) in results.items()}))
    for name, (ms, status) in results.items():
        assert status < 500, f"{name}: {status}"
        assert ms < STALL_TARGET_MS, f"{name}: the loop was held {ms:.0f} ms"

