"""bridge/delivery/redaction.py: a destination's secrets found by value, in every form a vendor may echo them."""

from __future__ import annotations

import base64
import json
from typing import Any
from urllib.parse import quote

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict, istr

from bridge.delivery.exchange import REDACTED, exchange
from bridge.delivery.redaction import (
    CUT_CHARS,
    EXTRA_KEPT,
    MIN_SECRET_CHARS,
    WORD_CHARS,
    Redactor,
    base_url_secrets,
    url_secrets,
)
from bridge.vendors.http import HttpOptions
from bridge.vendors.http_auth import basic
from bridge.vendors.kapture import KaptureOptions
from bridge.vendors.leadsquared import LeadSquaredOptions
from bridge.vendors.netgroot import NetgrootOptions
from tests.complexity.scaling import assert_linear

TOKEN = "tok/9f8e+7d6c 5b4a"  # with characters each encoding writes apart


@pytest.mark.parametrize("written", [
    TOKEN, quote(TOKEN, safe=""), quote(TOKEN, safe="").lower(), "tok%2F9f8e%2B7d6c+5b4a",
    json.dumps(TOKEN)[1:-1].replace("/", "\\/"),
], ids=["as-is", "url-encoded", "lower-hex", "form-encoded", "php-json"])
def test_a_secret_is_redacted_in_each_form_a_vendor_writes_it(written: str) -> None:
    """The secret as given, URL-encoded (either hex case, or as a form writes spaces) or in JSON with `/` escaped
    is redacted where it stands, the text around it kept."""
    redactor = Redactor({"token": TOKEN})
    assert redactor.text(f"bad key '{written}' given") == "bad key '[redacted]' given"


def test_an_auth_header_s_token_and_a_basic_credential_s_parts_are_redacted_alone() -> None:
    """An Authorization value's token is found without its scheme; a Basic credential's base64 and its password
    each are (in `user:password`, the user name is left)."""
    redactor = Redactor({"auth.basic": basic("acme-integration", "pa55-w0rd-xyz"), "bearer": "Bearer abcdefgh1234"})
    encoded = base64.b64encode(b"acme-integration:pa55-w0rd-xyz").decode()
    said = f"got {encoded}; user acme-integration:pa55-w0rd-xyz; password pa55-w0rd-xyz; token abcdefgh1234"
    assert redactor.text(said) == ("got [redacted]; user acme-integration:[redacted]; password [redacted]; "
                                   "token [redacted]")
    assert redactor.text("acme-integration alone is a user name") == "acme-integration alone is a user name"


def test_a_value_too_short_to_be_a_secret_is_left_and_named() -> None:
    """A value under MIN_SECRET_CHARS would redact ordinary words: it is left alone, and its key is named so that
    the operator can be told."""
    short = "k" * (MIN_SECRET_CHARS - 1)
    redactor = Redactor({"token": short, "secret_key": "s" * MIN_SECRET_CHARS, "empty": ""})
    assert redactor.short == ["token"]
    assert redactor.text(f"{short} {'s' * MIN_SECRET_CHARS}") == f"{short} [redacted]"


def test_a_secret_cut_off_at_the_end_of_a_text_is_redacted() -> None:
    """A text cut short (an excerpt of CUT_CHARS or more, a value clipped with `…`) ending in the first characters
    of a secret has them redacted from MIN_SECRET_CHARS on; fewer are left (no secret is that short), and so is a
    short text that was not cut."""
    secret = "0123456789abcdefghij"
    redactor = Redactor({"token": secret})
    said = "x" * CUT_CHARS + " the key "
    assert redactor.text(f"{said}{secret[:12]}") == f"{said}[redacted]"
    assert redactor.text(f"the key {secret[:MIN_SECRET_CHARS]}…") == "the key [redacted]…"
    assert redactor.text(f"{said}{secret[:MIN_SECRET_CHARS - 1]}") == f"{said}{secret[:MIN_SECRET_CHARS - 1]}"
    assert redactor.text(f"the key {secret[:12]}") == f"the key {secret[:12]}"
    kept = exchange("POST", "https://api.example.com/t", {}, b"", {"X-Echo": "v" * 490 + secret})
    shown = redactor.exchange(kept, redactor.matcher())
    assert shown is not None and shown["response_headers"]["X-Echo"].endswith("v[redacted]…")


def test_a_header_named_with_a_secret_is_kept_under_a_placeholder() -> None:
    """A vendor echoing a secret as a response header's name (`X-<key>: 1`), and a request header so named: each
    such name (whole, cut off at HEADER_CHARS too) is kept as `[redacted-N]`, N counting so that two never
    collide, not even with a header the vendor itself called `[redacted-1]`; the other names stay as they are."""
    key, other = "SuperSecretKey123456", "a1b2c3d4e5f6g7h8"
    redactor = Redactor({"headers.X-Api-Key": key, "headers.X-Id": other})
    answered = {f"X-{key}": "1", other: "2", "[redacted-1]": "3", "X-" + "n" * 488 + other: "4", "Server": "nginx"}
    kept = exchange("POST", "https://api.example.com/t", {f"X-Echo-{other}": "v", "Accept": "x"}, b"", answered)
    shown = redactor.exchange(kept, redactor.matcher())
    assert shown is not None
    assert shown["response_headers"] == {"[redacted-2]": "[redacted]", "[redacted-3]": "2", "[redacted-1]": "3",
                                         "[redacted-4]": "4", "Server": "nginx"}
    assert shown["request"]["headers"] == {"[redacted-1]": "v", "Accept": "x"}
    assert key not in json.dumps(shown) and other[:MIN_SECRET_CHARS] not in json.dumps(shown)


def test_an_exchange_of_aiohttps_header_names_holding_no_secret_is_not_walked(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Header names as aiohttp gives them (`istr`, a `str` of multidict's) count as texts: an exchange holding no
    secret is ruled out by the one search over its texts, never walked value by value nor its names looked at."""
    import bridge.delivery.redaction as redaction

    walked: list[object] = []
    monkeypatch.setattr(redaction, "_texts", lambda value, out: walked.append(value))
    redactor = Redactor({"token": TOKEN})
    answered = CIMultiDict({istr("Server"): "nginx", istr("Content-Type"): "application/json"})
    kept = exchange("POST", "https://api.example.com/t", CIMultiDict({istr("Accept"): "x"}), b'{"a": 1}', answered)
    assert any(type(name) is istr for name in kept["response_headers"])
    monkeypatch.setattr(redaction.Matcher, "names", lambda self, headers: pytest.fail(f"names looked at: {headers}"))
    shown = redactor.exchange(kept, redactor.matcher())
    assert walked == []
    assert shown == {**kept, "request": {**kept["request"], "url": "https://api.example.com/t"}}


def test_a_text_without_secrets_is_returned_as_it_is() -> None:
    """What holds no secret is given back unchanged, the exchange not even copied."""
    redactor = Redactor({"token": TOKEN})
    kept = exchange("POST", "https://api.example.com/t", {"Accept": "x"}, b'{"a": 1}', {"Server": "nginx"})
    matcher = redactor.matcher()
    assert matcher.value(kept) is kept
    assert redactor.text("nothing here") == "nothing here"
    assert Redactor({}).text(TOKEN) == TOKEN


def test_values_the_credentials_hold_are_redacted_beside_the_configured_ones() -> None:
    """A token obtained at run time is redacted beside the configured secrets; the matcher for it is compiled once
    and reused."""
    redactor = Redactor({"client_secret": "cs-77aa88bb99cc"})
    held = {"Bearer at-1111aaaa2222bbbb", "at-1111aaaa2222bbbb"}
    matcher = redactor.matcher(held)
    assert matcher.text("at-1111aaaa2222bbbb / cs-77aa88bb99cc") == "[redacted] / [redacted]"
    assert redactor.matcher(held) is matcher
    assert redactor.matcher().text("at-1111aaaa2222bbbb") == "at-1111aaaa2222bbbb"


def test_a_secret_url_is_shown_without_its_path_and_query() -> None:
    """With `secret_url`, a URL keeps its scheme and host only; its base URL's path and query are secret values
    wherever else they appear."""
    base = "https://hooks.slack.com/services/T0001/B0002/XXXXXXXXXXXX?key=zzzz"
    redactor = Redactor(base_url_secrets(base), secret_url=True)
    assert redactor.url(base) == "https://hooks.slack.com/[redacted]"
    assert redactor.url("https://hooks.slack.com/") == "https://hooks.slack.com/"
    assert redactor.url("http://[::1") == "[redacted]"
    assert redactor.text("no route /services/T0001/B0002/XXXXXXXXXXXX") == "no route [redacted]"
    kept = exchange("POST", base + "&x=1", {}, b"", None)
    shown = redactor.exchange(kept, redactor.matcher())
    assert shown is not None and shown["request"]["url"] == "https://hooks.slack.com/[redacted]"
    assert base_url_secrets("https://hooks.example.com") == {}


def test_each_vendor_names_the_secrets_it_is_configured_with() -> None:
    """Each vendor's options list their secrets by key: Kapture's keys, LeadSquared's access and secret keys,
    Netgroot's token or password, and an http destination's non-content headers and auth values."""
    def options(typ: type[Any], **given: Any) -> Any:
        return msgspec.convert(given, typ)

    assert options(KaptureOptions, vendor="kapture", base_url="https://k", token="t1", tokens={"pull": "t2"}
                   ).secret_values() == {"token": "t1", "tokens.pull": "t2"}
    assert options(LeadSquaredOptions, vendor="leadsquared", base_url="https://l", org_id="1", access_key="a",
                   secret_key="s").secret_values() == {"access_key": "a", "secret_key": "s"}
    assert options(NetgrootOptions, vendor="netgroot", base_url="https://n",
                   auth={"login": {"username": "u", "password": "p"}}).secret_values() == {"auth.login.password": "p"}
    http = options(HttpOptions, vendor="http", base_url="https://h/hook/abc", url_secret=True,
                   headers={"X-Tenant": "t", "Accept": "application/json"}, auth={"bearer": "b"})
    assert http.secret_values() == {"headers.X-Tenant": "t", "auth.bearer": "b", "base_url.path": "/hook/abc"}
    assert http.secret_url()


def test_a_secret_holding_another_secret_is_redacted_whole() -> None:
    """A secret that holds another configured secret (a webhook path ending in a key also set as a header) is
    redacted whole, not left around the one it holds; a scheme or user name around a value's own token is kept."""
    path, key = "/hooks/catch/40021/zz-key-4f3e2d1c", "zz-key-4f3e2d1c"
    redactor = Redactor({"base_url.path": path, "headers.X-Hook-Key": key, "auth.bearer": "Bearer at-0a1b2c3d4e"})
    assert redactor.text(f"no hook at {path}, key {key}") == "no hook at [redacted], key [redacted]"
    assert redactor.text("got Bearer at-0a1b2c3d4e") == "got Bearer [redacted]"


@pytest.mark.parametrize(("secrets", "said", "shown"), [
    (["AAAAAAAA1234", "1234BBBBBBBB"], "x AAAAAAAA1234BBBBBBBB y", "x [redacted] y"),
    (["1234BBBBBBBB", "AAAAAAAA1234"], "x AAAAAAAA1234BBBBBBBB y", "x [redacted] y"),
    (["abcdefgh", "cdefghijklmn", "ijklmnopqrst"], "abcdefghijklmnopqrst!", "[redacted]!"),
    (["0123456789abcdef", "456789ab"], "<0123456789abcdef> <456789ab>", "<[redacted]> <[redacted]>"),
    (["AAAAAAAA1234", "1234BBBBBBBB"], "AAAAAAAA12341234BBBBBBBB", "[redacted][redacted]"),
    (["zzzzzzzz"], "zzzzzzzzzzz zzzzzzzzzzzzzzzz", "[redacted] [redacted]"),
    (["abababab"], "ababababab, abababab", "[redacted], [redacted]"),
], ids=["overlapping", "overlapping-other-order", "chained", "nested", "adjacent", "repeated-run", "self-overlapping"])
def test_every_character_of_secrets_that_overlap_is_redacted(secrets: list[str], said: str, shown: str) -> None:
    """Secrets that overlap in a text (one's tail another's head, one inside another, a secret whose tail starts it
    again) are redacted as one run, none of them showing around another; secrets side by side are redacted each."""
    redactor = Redactor({f"s{i}": secret for i, secret in enumerate(secrets)})
    assert redactor.text(said) == shown


def test_a_secret_cut_off_inside_another_is_redacted_with_it() -> None:
    """A text cut short right after a secret whose tail starts another secret: the start of that other one, cut off
    at the end, is redacted with the first."""
    redactor = Redactor({"a": "AAAAAAAA1234", "b": "1234BBBBBBBB"})
    assert redactor.text("the keys AAAAAAAA1234BBBB…") == "the keys [redacted]…"


def test_a_secret_cut_off_before_a_cut_mark_inside_a_text_is_redacted() -> None:
    """An excerpt cut with `…` and then quoted inside a longer text (`(HTTP 401: {excerpt}): check …`) ending in
    the first characters of a secret has them redacted, before each such mark; fewer than MIN_SECRET_CHARS are
    left, as at a text's end; so is a mark no secret's start stands before."""
    secret = "cs-77aa88bb99cc"
    redactor = Redactor({"client_secret": secret})
    said = f"(HTTP 401: client_secret={secret[:10]}…): check auth.oauth2.client_secret"
    assert redactor.text(said) == "(HTTP 401: client_secret=[redacted]…): check auth.oauth2.client_secret"
    twice = f"a {secret[:9]}… b {secret[:12]}… c {secret[:MIN_SECRET_CHARS - 1]}… and so on…"
    assert redactor.text(twice) == f"a [redacted]… b [redacted]… c {secret[:MIN_SECRET_CHARS - 1]}… and so on…"
    matcher = redactor.matcher()
    assert matcher.value({"error": said, "n": 1}) == {"error": redactor.text(said), "n": 1}


@pytest.mark.parametrize("before", range(1, 22))
def test_a_text_is_redacted_before_it_is_clipped(before: int) -> None:
    """`clip` redacts a text before it cuts it: a secret across the cut shows no character, however few stand
    before the cut (`before`), the cut moved back rather than split REDACTED; the text is at most `limit` long,
    and `…` marks a cut."""
    secret, limit = "S3CR3T-S3CR3T-S3CR3T", 300  # no character of it in the rest of the text
    matcher = Redactor({"token": secret}).matcher()
    for rest in (" tail", " tail" + "t" * 1000):
        said = "a" * (limit - 1 - before) + secret + rest
        shown = matcher.clip(said, limit)
        assert len(shown) <= limit
        assert set(shown.replace(REDACTED, "")) <= set("a tail…"), shown
        assert shown.endswith("…") == (len(said) - len(secret) + len(REDACTED) > limit), shown
    assert matcher.clip("short " + secret, limit) == "short [redacted]"
    assert matcher.clip("a" * 1000, limit) == "a" * (limit - 1) + "…"


def test_a_text_shrunk_by_its_redactions_is_clipped_without_a_secret_s_head() -> None:
    """A long secret said many times shrinks the text under REDACTED, so that more of it may be shown than was
    first searched: a secret that the search's end cut with fewer than MIN_SECRET_CHARS of its characters before
    it is found all the same, none of them shown."""
    secret, limit = "sk_live_ABCDEFGHIJKLMNOPQRST", 2000
    matcher = Redactor({"token": secret}).matcher()
    head = (secret + " ") * 10
    for before in range(1, MIN_SECRET_CHARS + 1):
        at = limit + len(secret) - before
        for rest in (" and more", " and more" + "y" * 2000):
            said = head + "x" * (at - len(head)) + secret + rest
            shown = matcher.clip(said, limit)
            assert len(shown) <= limit
            assert secret[:2] not in shown, shown[-20:]
            assert shown.removesuffix("…") == matcher.text(said)[:len(shown.removesuffix("…"))], shown[-20:]
            assert len(shown) >= min(limit - len(REDACTED), len(matcher.text(said))), len(shown)


def test_a_secret_url_s_ids_and_tokens_are_secrets_alone() -> None:
    """A secret URL's path and query are secrets whole and each of their segments that is no word of the API (of
    MIN_SECRET_CHARS or more, not lower-case letters alone), so that a hook quoting only its token, or only an id,
    has it redacted; `services` is left."""
    base = "https://hooks.slack.com/services/T0001ABCD/B0002EFGH/XXXXXXXXXXXXXXXXXXXXXXXX?key=zz-9f8e7d6c&a=b"
    secrets = base_url_secrets(base)
    assert secrets == {"base_url.path": "/services/T0001ABCD/B0002EFGH/XXXXXXXXXXXXXXXXXXXXXXXX",
                       "base_url.path[1]": "T0001ABCD", "base_url.path[2]": "B0002EFGH",
                       "base_url.path[3]": "XXXXXXXXXXXXXXXXXXXXXXXX",
                       "base_url.query": "key=zz-9f8e7d6c&a=b", "base_url.query[1]": "zz-9f8e7d6c"}
    redactor = Redactor(secrets, secret_url=True)
    assert redactor.text("invalid_token XXXXXXXXXXXXXXXXXXXXXXXX for team T0001ABCD; services down") == (
        "invalid_token [redacted] for team [redacted]; services down")
    assert redactor.text("key zz-9f8e7d6c") == "key [redacted]"


@pytest.mark.parametrize(("text", "secrets"), [
    ("/services", {}),
    ("/", {}),
    ("/Incoming-webhook/", {}),
    ("/hook/abc", {"k": "/hook/abc"}),
    ("/services/incoming-webhook/", {"k": "/services/incoming-webhook"}),
    ("/a/" + "w" * WORD_CHARS, {"k": "/a/" + "w" * WORD_CHARS, "k[1]": "w" * WORD_CHARS}),
    ("/a/" + "w" * (WORD_CHARS - 1), {"k": "/a/" + "w" * (WORD_CHARS - 1)}),
    ("/hooks/9f8e7d6c5b4a", {"k": "/hooks/9f8e7d6c5b4a", "k[1]": "9f8e7d6c5b4a"}),
    ("/9f8e7d6c5b4a/", {"k": "/9f8e7d6c5b4a", "k[0]": "9f8e7d6c5b4a"}),
    ("9f8e7d6c5b4a", {"k": "9f8e7d6c5b4a"}),
], ids=["word", "root", "capitalised-word", "short", "words", "long-letters", "word-length", "token", "one-segment",
        "bare-token"])
def test_which_parts_of_a_secret_path_are_secrets(text: str, secrets: dict[str, str]) -> None:
    """The path whole unless it is one word; each segment of MIN_SECRET_CHARS or more unless it is a word (lower-case
    letters, joined by `-`, `_` or `.`, shorter than WORD_CHARS)."""
    assert url_secrets("k", text) == secrets


@pytest.mark.parametrize(("base", "secrets"), [
    ("https://hooks.example.com/hooksupersecret", {"base_url.path": "/hooksupersecret"}),
    ("https://hooks.example.com/Abcdefghijklmnopqrs/", {"base_url.path": "/Abcdefghijklmnopqrs"}),
    ("https://hooks.example.com/abc-defgh-ijklmn", {"base_url.path": "/abc-defgh-ijklmn"}),
    ("https://example.com/services?tokenabcdefghij",
     {"base_url.path": "/services", "base_url.query": "tokenabcdefghij"}),
    ("https://example.com/services/incoming-webhook", {"base_url.path": "/services/incoming-webhook"}),
], ids=["one-word", "capitalised", "hyphened", "query", "words"])
def test_a_secret_base_url_s_path_and_query_are_secrets_whatever_they_read_as(base: str,
                                                                              secrets: dict[str, str]) -> None:
    """A base URL's path and query are the credential itself: each is a secret whole even when it reads as a word
    (only their segments, and a path template's literal parts, are exempt as words), so a vendor echoing the
    path it could not route has it redacted."""
    assert base_url_secrets(base) == secrets
    path = "/" + base.split("/", 3)[3].rstrip("/")
    shown = Redactor(secrets, secret_url=True).text(f"404: no route for {path}")
    assert shown == "404: no route for " + "?".join([REDACTED] * len(secrets))


def test_a_matcher_in_use_is_kept_while_others_come_and_go() -> None:
    """The matchers of per-attempt values are kept by last use: one used between others (a mapping's secret path,
    on every attempt) is compiled once, however many others are made meanwhile."""
    redactor = Redactor({"client_secret": "cs-77aa88bb99cc"})
    held = ["/services/T0001ABCD/B0002EFGH"]
    matcher = redactor.matcher(held)
    for i in range(2 * EXTRA_KEPT):
        redactor.matcher([f"at-{i:04d}aaaa2222bbbb"])
        assert redactor.matcher(held) is matcher
    assert matcher.text("no /services/T0001ABCD/B0002EFGH") == "no [redacted]"


_SECRET_CHARS = "XY01"
"""Secrets of few characters, so that spliced ones overlap often; none in REDACTED, nor changed by any encoding."""


@st.composite
def _spliced(draw: st.DrawFn) -> tuple[list[str], str]:
    """Secrets, and a text built of them whole, of their heads and tails, and of other characters between."""
    secrets = draw(st.lists(st.text(_SECRET_CHARS, min_size=MIN_SECRET_CHARS, max_size=14), min_size=1, max_size=4))
    piece = st.one_of(st.sampled_from(secrets),
                      st.tuples(st.sampled_from(secrets), st.integers(1, 13)).map(lambda s: s[0][s[1]:]),
                      st.tuples(st.sampled_from(secrets), st.integers(1, 13)).map(lambda s: s[0][:s[1]]),
                      st.text(_SECRET_CHARS + " -", max_size=3))
    return secrets, "".join(draw(st.lists(piece, max_size=12)))


@settings(max_examples=500, deadline=None)
@given(_spliced())
def test_no_secret_shows_in_a_text_spliced_of_secrets(case: tuple[list[str], str]) -> None:
    """However secrets are spliced together (overlapping, nested, side by side, repeated), none of them is left in
    the text redacted, nor any part of one: what shows besides REDACTED is exactly the characters no secret covers."""
    secrets, said = case
    shown = Redactor({f"s{i}": secret for i, secret in enumerate(secrets)}).text(said)
    assert not [secret for secret in secrets if secret in shown], shown
    covered = {i for secret in secrets for at in range(len(said)) if said.startswith(secret, at)
               for i in range(at, at + len(secret))}
    assert shown.replace(REDACTED, "") == "".join(c for i, c in enumerate(said) if i not in covered), shown


def test_clipping_a_text_that_shrinks_under_its_redactions_grows_linearly() -> None:
    """However far the search must go for what may be shown (a text of secrets that each shrink to REDACTED, the
    limit half of it), `clip` costs about as much more as the text is longer: its window doubles."""
    secret = "sk_live_ABCDEFGHIJKLMNOPQRST"
    matcher = Redactor({"token": secret}).matcher()
    assert_linear(lambda said: matcher.clip(said, len(said) // 2), lambda n: (secret + " ") * n, 2_000)


@settings(max_examples=500, deadline=None)
@given(_spliced(), st.integers(1, 60))
def test_a_clipped_text_is_the_start_of_the_text_redacted(case: tuple[list[str], str], limit: int) -> None:
    """However secrets are spliced together and however much their redaction shrinks the text, `clip` shows the
    start of the text as `text` redacts it whole: no character of a secret, at most `limit` characters, `…` after
    a cut, and no more than a REDACTED short of the limit. (A text whose redaction is `limit` long or one less may
    be shown cut all the same: what follows the part searched is not looked at.)"""
    secrets, said = case
    matcher = Redactor({f"s{i}": secret for i, secret in enumerate(secrets)}).matcher()
    full, shown = matcher.text(said), matcher.clip(said, limit)
    assert len(shown) <= limit
    if len(full) < limit - 1 or (len(full) <= limit and len(said) <= limit):
        assert shown == full
    else:
        kept = shown.removesuffix("…")
        assert full.startswith(kept), (shown, full)
        assert shown == full or (shown.endswith("…") and len(shown) >= min(limit, len(full)) - len(REDACTED))
