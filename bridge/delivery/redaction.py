"""A destination's secrets redacted by their values from what its attempts keep and log.

exchange.py redacts by name: a header, query parameter or JSON key called like a credential. A vendor may also
quote the request back in its answer (an error that repeats the token, an echo of the Authorization header, the
keys of a query string), under any name or none. So every text an attempt keeps or logs (the vendor's error,
its answer's excerpt, the exchange's URL, headers and body) has each secret the destination is configured with
(`DestinationConfig.secret_values`), and each its credentials hold now (a token obtained from the vendor),
replaced by REDACTED (a header's name holding one by `[redacted-N]`, unique in its headers: a vendor may echo a
key as a header's name), in the forms a vendor may write it in: as given, the token after an auth scheme
(`Bearer …`, `Basic …`), a Basic credential's `user:password` and password, URL-encoded, JSON- and
HTML-escaped. A value shorter than MIN_SECRET_CHARS is left alone: it would redact ordinary words, and is
too short to be a secret anyway (`Redactor.short` names such keys, for a warning).

The forms are compiled into one pattern per destination when its adapter is made (at start); values known per
attempt (a token the credentials obtain later, the secret parts of a mapping's path) add a pattern compiled once
per set of them (the last EXTRA_KEPT used kept). A record is ruled out by one substring search per secret over
its texts joined (most hold none); only a text that holds one is searched by the regex engine, from each position
a secret starts at, so that secrets that overlap (one's tail another's head) are each found, and every character
any of them covers is redacted. Both are linear in the text.

A text cut short may end a secret's first characters: an excerpt (cut without a mark at CUT_CHARS or more, or with
`…`), a clipped header value, and an excerpt quoted inside a longer text (`(HTTP 401: {excerpt}…): check …`). So
before each `…` anywhere in a text, and at the end of one that may have been cut, a cut-off part of MIN_SECRET_CHARS
or more is redacted too (before each `…` only the characters since the one before it are searched: still linear).
What the bridge cuts itself after it was said, an attempt's error (sender.ERROR_CHARS), it redacts first and cuts
after (`Matcher.clip`), so that the cut never splits a secret, however few of its characters stand before it and
however much the secrets before it shrink the text. Cost per attempt record: tests/bench/test_redaction_bench.py.

With `secret_url` (an http destination's `url_secret: true`: a webhook URL that is itself the credential), every
URL of the destination is shown as its scheme and host followed by `/[redacted]`, and the secret parts of its
paths are secret values like any other (`url_secrets`): the base URL's path and query, and the literal parts of
the destination's `path` (and `doctor.path`, `lookup.path`) and of a mapping's `options.path` (placeholders are
filled from the event's fields: no secret), each whole and by each segment that is no word of the API (an id, a
token), since a hook may quote its token alone. A literal part that is one word (`/tickets`) is none, but the base
URL's path and query are the credential: secret whole whatever they read as. Without `url_secret` no path is a
secret.
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

from multidict import istr

from bridge.delivery.exchange import REDACTED

MIN_SECRET_CHARS = 8
EXTRA_KEPT = 16
CUT_CHARS = 200
"""A text this long may be an excerpt cut without a mark (the shortest excerpt kept is 200 characters)."""
_PERCENT = re.compile(r"%[0-9A-F]{2}")
_PLAIN = re.compile(r"[A-Za-z0-9._~-]+")
_CUT = "…"
_SEGMENT = re.compile(r"[/?&=;#]+")
_WORD = re.compile(r"[A-Za-z][a-z]*(?:[-_.][a-z]+)*")
_TEXT = frozenset({str, istr})
"""The types of text an exchange holds: header names are aiohttp's case-insensitive `istr`, a `str`."""
WORD_CHARS = 20
"""A segment of a secret path this long is a secret by itself even when it reads as a word (`url_secrets`)."""


def _written(value: str) -> set[str]:
    """`value` as given, and as a URL, a JSON string (with `/` escaped too, as PHP writes it) and HTML write it."""
    encoded = quote(value, safe="")
    as_json = json.dumps(value)[1:-1]
    return {value, encoded, _PERCENT.sub(lambda m: m.group().lower(), encoded), quote_plus(value), as_json,
            json.dumps(value, ensure_ascii=False)[1:-1], as_json.replace("/", "\\/"), html.escape(value)}


def forms(value: str) -> set[str]:
    """The texts a vendor may echo `value` as: each of its `_parts` as written by `_written`."""
    return {form for part in _parts(value) for form in _written(part)}


def _parts(value: str) -> set[str]:
    """`value` itself; after an auth scheme, the token alone; a Basic credential's `user:password` and password;
    none shorter than MIN_SECRET_CHARS."""
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
    return {part for part in parts if len(part) >= MIN_SECRET_CHARS}


def _core(part: str) -> str:
    """The longest run of `part` that every written form keeps as it is (letters, digits, `-._~`)."""
    return max(_PLAIN.findall(part), key=len, default="")


@dataclass(frozen=True)
class Matcher:
    """Finds a set of secrets in text: `whole` each of their forms anywhere. `needles` tell whether a text can
    hold one at all (most hold none): a run of each secret that all its forms keep as it is (else the start of
    each form). `head` finds, near a text's end, where a form cut off there may start (its first
    MIN_SECRET_CHARS characters)."""

    whole: re.Pattern[str]
    head: re.Pattern[str]
    needles: tuple[str, ...]
    forms: tuple[str, ...]
    longest: int

    @classmethod
    def of(cls, values: Iterable[str]) -> Matcher:
        parts: set[str] = set()
        kept: set[str] = set()
        for value in values:
            own = _parts(value)
            parts |= own
            written = {f for p in own for f in _written(p)}
            # A form holding another of the same value (`Basic <token>` holds the token) is found, and redacted,
            # through that one: the rest of it is the scheme or the user name. One holding another value's secret
            # is kept whole, its rest secret too; the pattern tries longer forms first, so it is redacted whole.
            kept.update(f for f in written if not any(g != f and g in f for g in written))
        found = sorted(kept, key=lambda f: (-len(f), f))
        if not found:
            never = re.compile("(?!)")
            return cls(never, never, (), (), 0)
        needles: set[str] = set()
        for part in parts:
            core = _core(part)
            needles.update([core] if len(core) >= MIN_SECRET_CHARS else (f[:MIN_SECRET_CHARS] for f in _written(part)))
        heads = sorted({f[:MIN_SECRET_CHARS] for f in found})
        return cls(re.compile("|".join(map(re.escape, found))), re.compile("|".join(map(re.escape, heads))),
                   tuple(sorted(needles)), tuple(found), len(found[0]))

    def text(self, text: str, *, cut: bool = False) -> str:
        """`text` with every secret, and a secret cut off before a cut (a `…` anywhere, marking where an excerpt
        or a value was cut; the end of a text that may have been cut short, or is, `cut`), redacted: each
        character any of them covers, where they overlap too."""
        # A substring test per needle (a fast search in C) rules out most texts at a fraction of a ns a character;
        # the regex engine, which tries every form at every position, runs only on a text that holds a needle.
        spans = self._found(text) if self.holds(text) else []
        spans += self._cuts(text, cut)
        return _redacted(text, spans) if spans else text

    def clip(self, text: str, limit: int) -> str:
        """`text` redacted (`text`) and then cut to `limit` characters, an ellipsis marking the cut: redacted
        before it is cut, so that the cut never splits a secret, however few of its characters stand before it.
        Only what may be shown is searched: a window of the text, of which only what stands as many characters as
        the longest form before its end is shown (a form that the window's end cuts starts after that, unseen);
        while redaction shrinks what may be shown under `limit` (a long secret said many times), the window is
        doubled, so that the work stays linear in what is shown. The cut is moved back to before a REDACTED it
        would split; a text that REDACTED lengthens (a secret shorter than it) is cut to `limit` too."""
        reach = limit + self.longest
        while True:
            more = reach < len(text)
            if not more:
                shown = self.text(text)
                if len(shown) <= limit:
                    return shown
                break
            window = text[:reach]
            spans = self._found(window) if self.holds(window) else []
            spans += self._cuts(window, True)
            shown = _redacted(window, spans, until=reach - self.longest)
            if len(shown) >= limit - 1:
                break
            reach *= 2
        end = limit - 1
        split = shown.find(REDACTED, max(0, end - len(REDACTED) + 1), end + len(REDACTED) - 1)
        if 0 <= split < end:
            end = split
        return shown[:end] + _CUT

    def holds(self, text: str) -> bool:
        """Whether `text` may hold a whole secret: it holds one of the needles."""
        return any(n in text for n in self.needles)

    def _found(self, text: str) -> list[tuple[int, int]]:
        """Where forms stand in `text`, each as far as the longest one starting there reaches. Each search goes on
        from the last start found, not from its end (as `sub` would), so that a form starting inside another and
        going on past it is found too (one's tail is another's head, often by a character or two); each position
        is still tried once, the cost per match found."""
        spans = []
        found = self.whole.search(text)
        while found is not None:
            spans.append(found.span())
            found = self.whole.search(text, found.start() + 1)
        return spans

    def _cuts(self, text: str, cut: bool = False) -> list[tuple[int, int]]:
        """Where a secret cut off by a cut stands: before each `…` in `text` (an excerpt, a clipped value, each
        may be inside a longer text: `HTTP 400: {excerpt}; …`), and at its end when `cut` is set or it is as long
        as CUT_CHARS or more (excerpts are cut without a mark). Before each cut only the characters since the
        one before it are searched, at most as many as the longest form: linear in the text."""
        if not self.forms:
            return []
        ends = []
        mark = text.find(_CUT)  # an ASCII text (most) cannot hold it: no search at all
        while mark >= 0:
            ends.append(mark)
            mark = text.find(_CUT, mark + 1)
        if (cut or len(text) >= CUT_CHARS) and not text.endswith(_CUT):
            ends.append(len(text))
        spans = []
        since = 0
        for end in ends:
            found = self.head.search(text, max(since, end - self.longest), end)
            while found is not None:
                piece = text[found.start():end]
                if any(f.startswith(piece) for f in self.forms):
                    spans.append((found.start(), end))
                    break
                found = self.head.search(text, found.start() + 1, end)
            since = end + 1
        return spans

    def value(self, value: Any, texts: list[str] | None = None) -> Any:
        """`value` (JSON-like: dicts, lists, text) with `text` applied to each text it holds (`texts`, when the
        caller has them at hand), keys aside (a headers' names: `names`); `value` itself when that changes nothing
        (the needles are looked for once, in all its texts joined)."""
        if texts is None:
            texts = []
            _texts(value, texts)
        return self._value(value) if self._changes(texts) else value

    def _changes(self, texts: list[str]) -> bool:
        """Whether redaction changes any of `texts`."""
        joined = "\n".join(texts)
        if self.holds(joined):
            return True
        if not self.forms:
            return False
        cut = texts if _CUT in joined else [t for t in texts if len(t) >= CUT_CHARS]
        return any(self._cuts(t) for t in cut)

    def names(self, headers: Mapping[str, Any]) -> dict[str, Any]:
        """`headers` with each name that holds a secret (or a secret cut off: `text`) shown as `[redacted-N]`, N
        counting from 1 and skipping any name the headers already have, so that two never collide; the values as
        they are. A vendor may echo a key as a header's name (`X-<key>: 1`); a part of the name redacted in place
        (`X-[redacted]`) would make two such names one, and keep the other's value under it alone. One `holds`
        test per name; the regex engine only on a name that holds a needle or a cut."""
        if all(type(name) is str for name in headers):
            joined = "\n".join(headers)  # most headers: no name holds a needle, a cut or an excerpt's length
            if not self.holds(joined) and _CUT not in joined and max(map(len, headers), default=0) < CUT_CHARS:
                return dict(headers)
        out: dict[str, Any] = {}
        n = 0
        for name, value in headers.items():
            if isinstance(name, str) and self.text(name) != name:
                n += 1
                while f"[redacted-{n}]" in headers:
                    n += 1
                out[f"[redacted-{n}]"] = value
            else:
                out[name] = value
        return out

    def _value(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {k: self._value(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self._value(v) for v in value]
        return value


def _redacted(text: str, spans: list[tuple[int, int]], until: int | None = None) -> str:
    """`text` with REDACTED for each run of characters `spans` cover, overlapping spans merged (adjacent ones are
    not: two secrets side by side show as two); with `until`, only what stands before it: the characters before
    it, and a run starting before it whole (as REDACTED)."""
    out: list[str] = []
    shown = 0
    start = end = -1
    for s, e in sorted(spans):
        if s < end:
            end = max(end, e)
            continue
        if end >= 0:
            out += (text[shown:start], REDACTED)
            shown = end
        if until is not None and s >= until:
            start = end = -1
            break
        start, end = s, e
    if end >= 0:
        out += (text[shown:start], REDACTED)
        shown = end
    out.append(text[shown:until] if until is None or shown < until else "")
    return "".join(out)


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
        """The matcher of the configured secrets and of `held` (those known per attempt: what the credentials hold
        now, an obtained token; the secret parts of a mapping's path), compiled once per set of such values (the
        last EXTRA_KEPT used kept: a token or two at a time, times the few paths a destination's mappings give)."""
        extra = frozenset(v for v in held if len(v) >= MIN_SECRET_CHARS and v not in self.values)
        if not extra:
            return self._static
        found = self._held.pop(extra, None)
        if found is None:
            if len(self._held) >= EXTRA_KEPT:
                del self._held[next(iter(self._held))]
            found = Matcher.of(self.values | extra)
        self._held[extra] = found  # the last used last, the least recently used first
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
        """An attempt's exchange (exchange.exchange) with its URL shown as `url` shows it, every text redacted, and
        each request or response header whose name holds a secret renamed `[redacted-N]` (`Matcher.names`). The
        names are searched with the texts, in the one pass that rules most exchanges out."""
        if kept is None:
            return None
        sent = kept.get("request")
        if not isinstance(sent, dict) or not isinstance(sent.get("url"), str):
            return matcher.value(kept)  # type: ignore[no-any-return]
        # The URL apart: with `secret_url` it always holds a secret, which must not cost a walk of the rest.
        url = self.url(sent["url"], matcher)
        rest = {**kept, "request": {**sent, "url": ""}}
        answered = kept.get("response_headers")
        try:  # the texts of exchange.exchange's shape, gathered without walking it: the headers' names too
            texts: list[str] | None = [sent["method"], *sent["headers"].values(), *sent["headers"], sent["body"],
                                       *(answered or {}).values(), *(answered or {})]
        except (KeyError, AttributeError, TypeError):
            texts = None
        if texts is not None and not set(map(type, texts)) <= _TEXT:  # all texts: checked at C speed
            texts = None
        out: dict[str, Any] = matcher.value(rest, texts)
        if out is not rest or texts is None:  # some text or name holds a secret (or, not that shape: may)
            if isinstance(out["request"].get("headers"), dict):
                out["request"]["headers"] = matcher.names(out["request"]["headers"])
            if isinstance(out.get("response_headers"), dict):
                out["response_headers"] = matcher.names(out["response_headers"])
        out["request"]["url"] = url
        return out

    def text(self, text: str | None, held: Iterable[str] = ()) -> str | None:
        """`text` with the destination's secrets redacted (None stays None)."""
        return None if text is None else self.matcher(held).text(text)


def url_secrets(key: str, text: str, *, whole: bool = False) -> dict[str, str]:
    """The secret parts of a secret URL's path or query, or of a literal part of a path template (`text`,
    configured at `key`), by where each is: `text` itself, a `/` at its end aside (`key`), and each of its
    segments (between `/`, `?`, `&`, `=`, `;`, `#`) of MIN_SECRET_CHARS characters or more (`key[i]`): a webhook
    path (`/services/T…/B…/…`) is the secret as a whole, and so is each of its ids and tokens, which a vendor may
    quote alone. A segment (or a `text` of one segment, unless `whole`) that reads as a word of the API is no
    secret by itself: letters alone, lower-case but for the first, in runs joined by `-`, `_` or `.` (`services`,
    `incoming-webhook`), shorter than WORD_CHARS. With `whole` (a base URL's path or query: the credential itself)
    `text` is a secret whatever it reads as (`/hooksupersecret`)."""
    text = text.rstrip("/")
    segments = [s for s in _SEGMENT.split(text) if s]
    out = {} if not segments or (not whole and len(segments) == 1 and _word(segments[0])) else {key: text}
    out.update((f"{key}[{i}]", s) for i, s in enumerate(segments)
               if s != text and len(s) >= MIN_SECRET_CHARS and not _word(s))
    return out


def _word(segment: str) -> bool:
    return len(segment) < WORD_CHARS and _WORD.fullmatch(segment) is not None


def base_url_secrets(base_url: str | None) -> dict[str, str]:
    """The parts of a base URL that are secret when the whole URL is (a webhook URL): its path and its query,
    each a secret whole whatever it reads as, and each of their segments that is no word (`url_secrets`)."""
    if not base_url:
        return {}
    parts = urlsplit(base_url)
    return {**url_secrets("base_url.path", parts.path, whole=True),
            **url_secrets("base_url.query", parts.query, whole=True)}
