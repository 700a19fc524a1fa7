"""A destination's secrets redacted by their values from what its attempts keep and log.

exchange.py redacts by name: a header, query parameter or JSON key called like a credential. A vendor may also
quote the request back in its answer (an error that repeats the token, an echo of the Authorization header, the
keys of a query string), under any name or none. So every text an attempt keeps or logs (the vendor's error,
its answer's excerpt, the exchange's URL, headers and body) has each secret the destination is configured with
(`DestinationConfig.secret_values`), and each its credentials hold now (a token obtained from the vendor),
replaced by REDACTED, in the forms a vendor may write it in: as given, the token after an auth scheme
(`Bearer …`, `Basic …`), a Basic credential's `user:password` and password, URL-encoded, JSON- and
HTML-escaped. A value shorter than MIN_SECRET_CHARS is left alone: it would redact ordinary words, and is
too short to be a secret anyway (`Redactor.short` names such keys, for a warning).

The forms are compiled into one pattern per destination when its adapter is made (at start), so redacting a
text is one pass of the regex engine over it; a token the credentials obtain later adds a pattern compiled once
per token (the last EXTRA_KEPT kept). A text cut short (an excerpt, a clipped header value) may end with the
start of a secret: a cut-off part of MIN_SECRET_CHARS or more is redacted too.

With `secret_url` (an http destination's `url_secret: true`: a webhook URL that is itself the credential), every
URL of the destination is shown as its scheme and host followed by `/[redacted]`, and its base URL's path and
query are secret values like any other.
"""

from __future__ import annotations

import base64
import binascii
import html
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, quote_plus, urlsplit, urlunsplit

from bridge.delivery.exchange import REDACTED

MIN_SECRET_CHARS = 8
EXTRA_KEPT = 4
_PERCENT = re.compile(r"%[0-9A-F]{2}")
_CUT = "…"


def _written(value: str) -> set[str]:
    """`value` as given, and as a URL, a JSON string (with `/` escaped too, as PHP writes it) and HTML write it."""
    encoded = quote(value, safe="")
    as_json = json.dumps(value)[1:-1]
    return {value, encoded, _PERCENT.sub(lambda m: m.group().lower(), encoded), quote_plus(value), as_json,
            json.dumps(value, ensure_ascii=False)[1:-1], as_json.replace("/", "\\/"), html.escape(value)}


def forms(value: str) -> set[str]:
    """The texts a vendor may echo `value` as (`value` itself; after an auth scheme, the token alone; a Basic
    credential's `user:password` and password), each as written by `_written`; none shorter than
    MIN_SECRET_CHARS."""
    parts = {value}
    scheme, space, rest = value.strip().partition(" ")
    if space and scheme.isalpha() and rest.strip():
        token = rest.strip()
        parts.add(token)
        if scheme.lower() == "basic":
            try:
                pair = base64.b64decode(token, validate=True).decode()
            except (binascii.Error, UnicodeDecodeError, ValueError):
                pair = ""
            if ":" in pair:
                parts.update((pair, pair.partition(":")[2]))
    return {form for part in parts if len(part) >= MIN_SECRET_CHARS for form in _written(part)}


@dataclass(frozen=True)
class Matcher:
    """Finds a set of secrets in text: `whole` each of their forms anywhere; `heads`, the first MIN_SECRET_CHARS
    characters of each, tell whether a text can hold one at all (most hold none), and where a form cut off at
    the text's end may start (`head`)."""

    whole: re.Pattern[str]
    head: re.Pattern[str]
    heads: tuple[str, ...]
    forms: tuple[str, ...]
    longest: int

    @classmethod
    def of(cls, values: Iterable[str]) -> Matcher:
        written = {f for v in values for f in forms(v)}
        # A form holding another (`Basic <token>` holds the token) is found, and redacted, through that one.
        found = sorted((f for f in written if not any(g != f and g in f for g in written)),
                       key=lambda f: (-len(f), f))
        if not found:
            never = re.compile("(?!)")
            return cls(never, never, (), (), 0)
        heads = tuple(sorted({f[:MIN_SECRET_CHARS] for f in found}))
        return cls(re.compile("|".join(map(re.escape, found))), re.compile("|".join(map(re.escape, heads))),
                   heads, tuple(found), len(found[0]))

    def text(self, text: str) -> str:
        """`text` with every secret, and a secret cut off at its end (before a `…` marking the cut), redacted."""
        # A substring test per head (a fast search in C) rules out most texts at a few ns a character; the regex
        # engine, which tries every form at every position, runs only on a text that holds a head.
        if not self.holds(text):
            return text
        text = self.whole.sub(REDACTED, text)
        end = len(text) - 1 if text.endswith(_CUT) else len(text)
        found = self.head.search(text, max(0, end - self.longest), end)
        while found is not None:
            piece = text[found.start():end]
            if any(f.startswith(piece) for f in self.forms):
                return text[:found.start()] + REDACTED + text[end:]
            found = self.head.search(text, found.start() + 1, end)
        return text

    def holds(self, text: str) -> bool:
        """Whether `text` may hold a secret, or the start of one: it holds one of the heads."""
        return any(h in text for h in self.heads)

    def value(self, value: Any) -> Any:
        """`value` (JSON-like: dicts, lists, text) with `text` applied to each text it holds, keys aside; `value`
        itself when none holds a head (the heads are looked for once, in all its texts joined)."""
        texts: list[str] = []
        _texts(value, texts)
        return self._value(value) if self.holds("\n".join(texts)) else value

    def _value(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {k: self._value(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self._value(v) for v in value]
        return value


def _texts(value: Any, out: list[str]) -> None:
    if isinstance(value, str):
        out.append(value)
    elif isinstance(value, dict):
        for v in value.values():
            _texts(v, out)
    elif isinstance(value, list):
        for v in value:
            _texts(v, out)


class Redactor:
    """One destination's secrets (`secrets`: where each is configured → its value), found by value; with
    `secret_url`, its URLs shown without path and query."""

    def __init__(self, secrets: Mapping[str, str], *, secret_url: bool = False) -> None:
        self.short = sorted(key for key, value in secrets.items() if 0 < len(value) < MIN_SECRET_CHARS)
        """Where a secret too short to be redacted by value is configured."""
        self.values = frozenset(v for v in secrets.values() if len(v) >= MIN_SECRET_CHARS)
        self.secret_url = secret_url
        self._static = Matcher.of(self.values)
        self._held: dict[frozenset[str], Matcher] = {}

    def matcher(self, held: Iterable[str] = ()) -> Matcher:
        """The matcher of the configured secrets and of `held` (what the credentials hold now: an obtained token),
        compiled once per set of held values."""
        extra = frozenset(v for v in held if len(v) >= MIN_SECRET_CHARS and v not in self.values)
        if not extra:
            return self._static
        found = self._held.get(extra)
        if found is None:
            if len(self._held) >= EXTRA_KEPT:
                del self._held[next(iter(self._held))]
            found = self._held[extra] = Matcher.of(self.values | extra)
        return found

    def url(self, url: str, matcher: Matcher | None = None) -> str:
        """`url` as shown: with `secret_url`, its scheme and host and `/[redacted]` for any path or query; its
        secrets redacted."""
        if self.secret_url:
            try:
                parts = urlsplit(url)
            except ValueError:  # a host urllib cannot read (a bad IPv6 literal): nothing of it is shown
                return REDACTED
            if parts.path.strip("/") or parts.query:
                url = urlunsplit((parts.scheme, parts.netloc, f"/{REDACTED}", "", ""))
        return (matcher or self._static).text(url)

    def exchange(self, kept: dict[str, Any] | None, matcher: Matcher) -> dict[str, Any] | None:
        """An attempt's exchange (exchange.exchange) with its URL shown as `url` shows it, and every text redacted."""
        if kept is None:
            return None
        sent = kept.get("request")
        if not isinstance(sent, dict) or not isinstance(sent.get("url"), str):
            return matcher.value(kept)  # type: ignore[no-any-return]
        # The URL apart: with `secret_url` it always holds a secret, which must not cost a walk of the rest.
        url = self.url(sent["url"], matcher)
        out: dict[str, Any] = matcher.value({**kept, "request": {**sent, "url": ""}})
        out["request"]["url"] = url
        return out

    def text(self, text: str | None, held: Iterable[str] = ()) -> str | None:
        """`text` with the destination's secrets redacted (None stays None)."""
        return None if text is None else self.matcher(held).text(text)


def base_url_secrets(base_url: str | None) -> dict[str, str]:
    """The parts of a base URL that are secret when the whole URL is (a webhook URL): its path and its query."""
    if not base_url:
        return {}
    parts = urlsplit(base_url)
    return {key: value for key, value in (("base_url.path", parts.path.rstrip("/")), ("base_url.query", parts.query))
            if value}
