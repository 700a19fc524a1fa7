"""handlers/auth.py: basic and bearer credentials, and HMAC signatures over the raw body."""

from __future__ import annotations

import base64
import hashlib
import hmac
from types import SimpleNamespace
from typing import Any, cast

import msgspec
import pytest
from aiohttp.http_parser import HeadersParser
from aiohttp.test_utils import make_mocked_request
from aiohttp.web import Request

from bridge.config import AuthConfig, BasicAuth
from bridge.errors import Rejected
from handlers.auth import HmacConfig, check_auth, check_hmac, hmac_digest, signature_matches
from tests.fixtures.providers import passes

BODY = b'{"id": 42, "text": "hello"}'


def request(headers: dict[str, str] | None = None) -> Request:
    return make_mocked_request("POST", "/hooks/x", headers=headers or {})


def wire_request(name: bytes, value: bytes) -> Request:
    """A request whose headers come from aiohttp's own parser, as raw bytes from the wire would.

    `make_mocked_request` cannot carry bytes that are not UTF-8; aiohttp's parser keeps them as surrogates,
    and the checks only read `request.headers`.
    """
    headers, _ = HeadersParser().parse_headers([name + b": " + value, b""])
    return cast(Request, SimpleNamespace(headers=headers))


def basic_header(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def rejected(auth: AuthConfig, headers: dict[str, str]) -> Rejected:
    with pytest.raises(Rejected) as info:
        check_auth(auth, request(headers))
    assert info.value.status == 401
    return info.value


def hmac_rejected(cfg: HmacConfig, headers: dict[str, str], body: bytes = BODY) -> Rejected:
    with pytest.raises(Rejected) as info:
        check_hmac(cfg, request(headers), body)
    assert info.value.status == 401
    assert info.value.check == "hmac"
    return info.value


BASIC = AuthConfig(basic=BasicAuth(username="forms", password="s3cret:with:colons"))
BEARER = AuthConfig(bearer="tok-123")


class Spy:
    """Wraps `hmac.compare_digest`, recording its arguments."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, Any]] = []
        self.real = hmac.compare_digest

    def __call__(self, a: Any, b: Any) -> bool:
        self.calls.append((a, b))
        return self.real(a, b)


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> Spy:
    s = Spy()
    monkeypatch.setattr(hmac, "compare_digest", s)  # the module handlers.auth calls through
    return s


# -- no auth -----------------------------------------------------------------------------------------


def test_no_auth_configured_accepts_anything() -> None:
    """A source without `auth` accepts requests with or without credentials."""
    assert passes(lambda: check_auth(None, request()))
    assert passes(lambda: check_auth(None, request({"Authorization": "Bearer whatever"})))
    assert not passes(lambda: check_auth(BEARER, request({"Authorization": "Bearer whatever"})))


# -- basic -------------------------------------------------------------------------------------------


def test_basic_right_credentials() -> None:
    """The configured username and password pass, with colons in the password kept."""
    assert passes(lambda: check_auth(BASIC, request({"Authorization": basic_header("forms", "s3cret:with:colons")})))
    assert not passes(lambda: check_auth(BASIC, request({"Authorization": basic_header("forms", "s3cret:with")})))


def test_basic_scheme_is_case_insensitive() -> None:
    """`basic` and `BASIC` are the same scheme."""
    value = basic_header("forms", "s3cret:with:colons").split(" ", 1)[1]
    assert passes(lambda: check_auth(BASIC, request({"Authorization": f"basic {value}"})))
    assert passes(lambda: check_auth(BASIC, request({"Authorization": f"BASIC {value}"})))
    check_auth(BASIC, request({"Authorization": f"BASIC {value}"}))


def test_basic_non_ascii_credentials() -> None:
    """UTF-8 usernames and passwords are compared as configured."""
    cfg = AuthConfig(basic=BasicAuth(username="józef", password="pässwörd"))
    check_auth(cfg, request({"Authorization": basic_header("józef", "pässwörd")}))
    rejected(cfg, {"Authorization": basic_header("jozef", "pässwörd")})


@pytest.mark.parametrize(
    ("user", "password"),
    [("forms", "wrong"), ("other", "s3cret:with:colons"), ("forms", "s3cret"), ("forms", ""), ("", "")],
)
def test_basic_wrong_credentials(user: str, password: str) -> None:
    """A wrong username or password (including a prefix of the right one) is a 401 from the basic check."""
    err = rejected(BASIC, {"Authorization": basic_header(user, password)})
    assert err.check == "basic_auth"
    assert "wrong username or password" in str(err)


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": ""}, {"Authorization": "Basic"}, {"Authorization": "Bearer tok-123"},
     {"Authorization": basic_header("forms", "s3cret:with:colons").replace("Basic ", "Digest ")}],
)
def test_basic_missing_or_other_scheme(headers: dict[str, str]) -> None:
    """No Authorization header, an empty one, or another scheme is a 401 asking for basic auth."""
    err = rejected(BASIC, headers)
    assert err.check == "basic_auth"
    assert "basic auth required" in str(err)


@pytest.mark.parametrize("value", ["not base64!", "Zm9vOmJhcg", "/w==", "zé9v"])
def test_basic_undecodable_header(value: str) -> None:
    """A basic header that is not base64 of UTF-8 text (or is not ASCII at all) is a 401, not a crash."""
    err = rejected(BASIC, {"Authorization": f"Basic {value}"})
    assert err.check == "basic_auth"


def test_basic_compares_in_constant_time(spy: Spy) -> None:
    """Both username and password go through `hmac.compare_digest`, even when the username is wrong."""
    rejected(BASIC, {"Authorization": basic_header("intruder", "guess")})
    assert (b"intruder", b"forms") in spy.calls
    assert (b"guess", b"s3cret:with:colons") in spy.calls


def test_basic_empty_credentials_never_pass() -> None:
    """Empty credentials (`Basic Og==`, the text ":") get no one in, even where a config holds an empty password
    (refused at load; here set after it): an empty password is never a credential."""
    cfg = AuthConfig(basic=BasicAuth(username="forms", password="p"))
    assert cfg.basic is not None
    cfg.basic.username, cfg.basic.password = "", ""
    err = rejected(cfg, {"Authorization": "Basic Og=="})
    assert err.check == "basic_auth"
    rejected(cfg, {"Authorization": basic_header("", "")})


def test_basic_config_refuses_an_empty_password() -> None:
    """BasicAuth itself refuses an empty password, however it is made."""
    with pytest.raises(ValueError, match="`password` is empty"):
        BasicAuth(username="forms", password="")


# -- bearer ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("header", ["Bearer tok-123", "bearer tok-123", "BEARER tok-123", "Bearer  tok-123 "])
def test_bearer_right_token(header: str) -> None:
    """The configured token passes, with the scheme in any case and surrounding spaces ignored."""
    assert passes(lambda: check_auth(BEARER, request({"Authorization": header})))
    assert not passes(lambda: check_auth(BEARER, request({"Authorization": header.replace("123", "124")})))


@pytest.mark.parametrize("token", ["tok-12", "tok-1234", "TOK-123", "x"])
def test_bearer_wrong_token(token: str) -> None:
    """Any other token, including a prefix or extension of the right one, is a 401 from the bearer check."""
    err = rejected(BEARER, {"Authorization": f"Bearer {token}"})
    assert err.check == "bearer"
    assert "wrong bearer token" in str(err)


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer"}, {"Authorization": "tok-123"}, {"Authorization": "Token tok-123"},
     {"Authorization": basic_header("a", "b")}],
)
def test_bearer_missing_or_other_scheme(headers: dict[str, str]) -> None:
    """No header, a bare token or another scheme is a 401 asking for a bearer token."""
    err = rejected(BEARER, headers)
    assert err.check == "bearer"
    assert "bearer token required" in str(err)


@pytest.mark.parametrize("token", ["tök-123".encode(), b"tok-\xff", b"tok-123\xff"])
def test_bearer_non_ascii_token_is_rejected_not_a_crash(token: bytes) -> None:
    """A token with non-ASCII or undecodable bytes on the wire is a plain 401."""
    with pytest.raises(Rejected) as info:
        check_auth(BEARER, wire_request(b"Authorization", b"Bearer " + token))
    assert (info.value.status, info.value.check) == (401, "bearer")


def test_basic_undecodable_bytes_are_rejected_not_a_crash() -> None:
    """A basic header with bytes that are not UTF-8 on the wire is a plain 401."""
    with pytest.raises(Rejected) as info:
        check_auth(BASIC, wire_request(b"Authorization", b"Basic Zm9v\xff"))
    assert (info.value.status, info.value.check) == (401, "basic_auth")


def test_bearer_compares_in_constant_time(spy: Spy) -> None:
    """The bearer token is compared with `hmac.compare_digest`."""
    rejected(BEARER, {"Authorization": "Bearer guess"})
    assert spy.calls == [(b"tok-123", b"guess")]


# -- HMAC --------------------------------------------------------------------------------------------


def test_hmac_digest_matches_the_known_vectors() -> None:
    """`hmac_digest` gives the well-known HMAC values for key `key` and the quick brown fox."""
    msg = b"The quick brown fox jumps over the lazy dog"
    assert hmac_digest(b"key", msg, "sha256").hex() == (
        "f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8")
    assert hmac_digest(b"key", msg, "sha1").hex() == "de7c9b85b8b78aa6bc8a7a36f70a90701c9db4d9"
    assert hmac_digest(b"key", msg, "sha512").hex().startswith("b42af09057bac1e2d41708e48a902e09b5ff7f12ab428a4fe866")


def sign(secret: str, body: bytes, algorithm: str = "sha256") -> bytes:
    return hmac.new(secret.encode(), body, getattr(hashlib, algorithm)).digest()


@pytest.mark.parametrize("algorithm", ["sha1", "sha256", "sha512"])
def test_hmac_hex_signature(algorithm: str) -> None:
    """A hex HMAC of the raw body under the configured algorithm passes."""
    cfg = msgspec.convert({"secret": "sh", "algorithm": algorithm}, HmacConfig)
    headers = {"X-Signature": sign("sh", BODY, algorithm).hex()}
    assert passes(lambda: check_hmac(cfg, request(headers), BODY))
    assert not passes(lambda: check_hmac(cfg, request(headers), BODY + b" "))


def test_hmac_hex_is_case_insensitive_and_trimmed() -> None:
    """Upper-case hex digits and surrounding spaces in the header are accepted."""
    cfg = HmacConfig(secret="sh")
    assert passes(lambda: check_hmac(cfg, request({"X-Signature": f"  {sign('sh', BODY).hex().upper()} "}), BODY))


def test_hmac_base64_signature() -> None:
    """A base64 HMAC passes when the encoding is base64."""
    cfg = HmacConfig(secret="sh", encoding="base64")
    headers = {"X-Signature": base64.b64encode(sign("sh", BODY)).decode()}
    assert passes(lambda: check_hmac(cfg, request(headers), BODY))
    assert not passes(lambda: check_hmac(cfg, request(headers), BODY + b" "))


def test_hmac_encoding_must_match() -> None:
    """A hex signature is refused by a source expecting base64, and the other way round."""
    hex_sig = sign("sh", BODY).hex()
    b64_sig = base64.b64encode(sign("sh", BODY)).decode()
    hmac_rejected(HmacConfig(secret="sh", encoding="base64"), {"X-Signature": hex_sig})
    hmac_rejected(HmacConfig(secret="sh", encoding="hex"), {"X-Signature": b64_sig})


def test_hmac_with_prefix() -> None:
    """With a prefix such as `sha256=`, the signature after the prefix is checked."""
    cfg = HmacConfig(secret="sh", header="X-Hub-Signature-256", prefix="sha256=")
    assert passes(lambda: check_hmac(cfg, request({"X-Hub-Signature-256": "sha256=" + sign("sh", BODY).hex()}), BODY))
    assert not passes(lambda: check_hmac(cfg, request({"X-Hub-Signature-256": sign("sh", BODY).hex()}), BODY))


def test_hmac_check_name_is_the_callers() -> None:
    """A provider verified with a fixed config (Intercom, Meta) is refused under its own check name."""
    cfg = HmacConfig(secret="sh", header="X-Hub-Signature", algorithm="sha1", prefix="sha1=")
    check_hmac(cfg, request({"X-Hub-Signature": "sha1=" + sign("sh", BODY, "sha1").hex()}), BODY, check="signature")
    with pytest.raises(Rejected) as info:
        check_hmac(cfg, request({"X-Hub-Signature": "sha1=" + "0" * 40}), BODY, check="signature")
    assert (info.value.status, info.value.check) == (401, "signature")


def test_hmac_missing_prefix_is_rejected() -> None:
    """A signature without the configured prefix is a 401 saying so."""
    cfg = HmacConfig(secret="sh", prefix="sha256=")
    err = hmac_rejected(cfg, {"X-Signature": sign("sh", BODY).hex()})
    assert "does not start with 'sha256='" in str(err)


def test_hmac_header_name_is_configurable_and_case_insensitive() -> None:
    """The signature is read from the configured header, whatever its case on the wire."""
    cfg = HmacConfig(secret="sh", header="X-Partner-Signature")
    check_hmac(cfg, request({"x-partner-signature": sign("sh", BODY).hex()}), BODY)
    hmac_rejected(cfg, {"X-Signature": sign("sh", BODY).hex()})


@pytest.mark.parametrize("headers", [{}, {"X-Signature": ""}])
def test_hmac_missing_header(headers: dict[str, str]) -> None:
    """A missing or empty signature header is a 401 naming the header."""
    err = hmac_rejected(HmacConfig(secret="sh"), headers)
    assert "X-Signature is missing" in str(err)


@pytest.mark.parametrize(
    "signature",
    [
        sign("other", BODY).hex(),
        sign("sh", BODY + b" ").hex(),
        sign("sh", BODY, "sha1").hex(),
        sign("sh", BODY).hex()[:-2],
        "zz",
    ],
)
def test_hmac_wrong_signature(signature: str) -> None:
    """A signature made with another secret, body or algorithm, or truncated, is a 401 naming the header."""
    err = hmac_rejected(HmacConfig(secret="sh"), {"X-Signature": signature})
    assert "signature in X-Signature does not match the body" in str(err)


@pytest.mark.parametrize("encoding", ["hex", "base64"])
@pytest.mark.parametrize("signature", ["é".encode() * 32, b"\xff" * 64, b"ab" * 31 + b"a\xff"])
def test_hmac_non_ascii_signature_is_rejected_not_a_crash(encoding: str, signature: bytes) -> None:
    """A signature header with non-ASCII or undecodable bytes on the wire is a plain 401, not a TypeError."""
    cfg = msgspec.convert({"secret": "sh", "encoding": encoding}, HmacConfig)
    with pytest.raises(Rejected) as info:
        check_hmac(cfg, wire_request(b"X-Signature", signature), BODY)
    assert (info.value.status, info.value.check) == (401, "hmac")


def test_hmac_signature_read_from_the_wire_still_matches() -> None:
    """A correct signature parsed by aiohttp from raw header bytes passes."""
    cfg = HmacConfig(secret="sh")
    assert passes(lambda: check_hmac(cfg, wire_request(b"X-Signature", sign("sh", BODY).hex().encode()), BODY))
    assert not passes(lambda: check_hmac(cfg, wire_request(b"X-Signature", sign("sh", BODY).hex().encode()), b"{}"))


def test_hmac_compares_in_constant_time(spy: Spy) -> None:
    """The signature check goes through `hmac.compare_digest`."""
    hmac_rejected(HmacConfig(secret="sh"), {"X-Signature": "ab" * 32})
    assert len(spy.calls) == 1
    given = spy.calls[0][1]
    assert (given.decode() if isinstance(given, bytes) else given) == "ab" * 32


def test_signature_matches() -> None:
    """`signature_matches` compares a raw digest with its hex or base64 text."""
    digest = bytes(range(32))
    assert signature_matches(digest, digest.hex(), "hex")
    assert signature_matches(digest, base64.b64encode(digest).decode(), "base64")
    assert not signature_matches(digest, bytes(32).hex(), "hex")
    assert not signature_matches(digest, base64.b64encode(bytes(32)).decode(), "base64")


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        ({"secret": ""}, "`secret` is empty"),
        ({}, "missing required field `secret`"),
        ({"secret": "s", "algorithm": "md5"}, "Invalid enum value 'md5'"),
        ({"secret": "s", "encoding": "base32"}, "Invalid enum value 'base32'"),
        ({"secret": "s", "salt": "x"}, "unknown field `salt`"),
    ],
)
def test_hmac_options_are_checked(options: dict[str, str], reason: str) -> None:
    """An empty secret, an unknown algorithm or encoding, or an unknown key is refused."""
    with pytest.raises(msgspec.ValidationError, match=reason):
        msgspec.convert(options, HmacConfig)
