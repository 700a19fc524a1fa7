"""Filters, string methods and JMESPath functions on values a sender chose: an error quotes the value cut short,
never whole; nothing builds past the size cap; and what would take time in the square of its input in one call no
budget can stop is bounded before it runs."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.errors import MappingError
from bridge.mapping import templates
from bridge.mapping.base import MAX_SAID_CHARS, LimitExceeded
from bridge.mapping.compiler import RenderError, compile_field
from bridge.mapping.filters import FEW_CHARS, FILTERS, stripped
from bridge.mapping.limits import MAX_RESULT_CHARS
from bridge.vendors.files import as_metas
from tests.unit.bridge.mapping.test_bombs import BIG, peak_memory

LONG = 32_000
"""As long as a sender's text gets on the event loop (limits.LOOP_BULK_CHARS)."""
# An error that quotes its value cut short: the field's and filter's names, the value's start, a few words.
SHORT_ERROR = 600


def ctx(payload: Any) -> dict[str, Any]:
    return {"payload": payload, "headers": {}, "event": {"id": "evt_1"}, "vars": {}}


def failure(spec: Any, payload: Any) -> str:
    with pytest.raises(RenderError) as info:
        compile_field("f", spec)(ctx(payload))
    return str(info.value)


# -- errors quote a value cut short ---------------------------------------------------------------------

@pytest.mark.parametrize(("transform", "value", "says"), [
    ("int", "x" * LONG, "is not a number"),
    ("int", "1.5" + "0" * LONG, "is not a whole number"),
    ("int", "1" * 5_000, "is too large a number"),
    ("float", "x" * LONG, "is not a number"),
    ("bool", "x" * LONG, "is not a yes/no value"),
    ("phone_e164('IN')", "9" * LONG, "is not a phone number"),
    ("phone_e164('IN')", "9" * 200, "is not a phone number"),
    ("date", "x" * 200, "is not a date this filter reads"),
], ids=["int", "int, fraction", "int, too many digits", "float", "bool", "phone", "phone, 200", "date, 200"])
def test_a_conversion_error_quotes_the_value_cut_short(transform: str, value: str, says: str) -> None:
    """A value a conversion cannot take is quoted by its first 80 characters and its length, as a transform's error
    and a template's alike: Python's own `float()` error, and the filters' own, wrote it whole."""
    for spec in ({"from": "payload.v", "transform": [transform]}, f"{{{{ payload.v | {transform} }}}}"):
        message = failure(spec, {"v": value})
        assert says in message and f"… ({len(value)} characters)" in message, message[:300]
        assert len(message) < SHORT_ERROR, message[:300]


@pytest.mark.parametrize(("template", "payload"), [
    ("{{ payload.t | xmlattr }}", {"t": {"a b" * LONG: "1"}}),  # Jinja's own error names the key whole
    ("{{ payload.t[payload.k] }}", {"t": {}, "k": "k" * LONG}),  # the undefined key, named whole
    ("{{ payload.d | date('iso', payload.tz) }}", {"d": "2024-03-05", "tz": "Z" * LONG}),
], ids=["jinja filter", "undefined key", "time zone"])
def test_a_template_error_says_at_most_a_few_hundred_characters(template: str, payload: Any) -> None:
    """Whatever Jinja or Python says of a sender's value is cut to MAX_SAID_CHARS, the rest counted."""
    message = failure(template, payload)
    assert len(message) < SHORT_ERROR and "characters)" in message, message[:300]


def test_a_time_zone_too_long_for_a_file_name_is_a_render_error() -> None:
    """A template's time zone from the payload, longer than a file's name may be, is an unknown zone: the zone
    look-up's OSError (File name too long) escaped the render as a crash."""
    field = compile_field("f", "{{ payload.d | date('iso', payload.tz) }}")
    with pytest.raises(RenderError, match=r"unknown time zone 'ZZZZ.*… \(300 characters\): use an IANA name"):
        field(ctx({"d": "2024-03-05", "tz": "Z" * 300}))
    assert field(ctx({"d": "2024-03-05T10:00:00Z", "tz": "Asia/Kolkata"})) == "2024-03-05T15:30:00+05:30"


def test_phone_e164_takes_its_region_in_any_case() -> None:
    """`phone_e164('in')` passes the check when the mapping loads, as `IN` does, and reads numbers as `IN` does
    (the library it calls knows upper-case codes alone, and refused every number)."""
    assert FILTERS["phone_e164"]("098765 43210", "in") == "+919876543210"
    assert compile_field("f", {"from": "payload.p", "transform": ["phone_e164('in')"]})(
        ctx({"p": "098765 43210"})) == "+919876543210"


def test_jmespath_describes_a_wrong_argument_cut_short() -> None:
    """A JMESPath function given the wrong type names the value in 60 characters (JMESPath's own message wrote a
    32,000-character text, or a list of thousands of items, whole)."""
    for value in ("y" * LONG, ["y" * 1_000] * 1_000):
        message = failure({"jmespath": "abs(payload.v)"}, {"v": value})
        assert "In function abs(), invalid type for value: " in message and len(message) < 300, message[:300]


def test_a_value_that_is_not_attachments_is_refused_without_being_written_whole() -> None:
    """`attachment_list` and a vendor's `files` field name a wrong value by its start: it was written whole as
    text (20 MB for this list) to be cut to 80 characters."""
    with peak_memory() as peak, pytest.raises(TypeError, match=r"got \['xxxx"):
        FILTERS["attachment_list"](BIG)
    assert peak() < 1_000_000
    with peak_memory() as peak, pytest.raises(MappingError, match=r"got \['xxxx"):
        as_metas(BIG)
    assert peak() < 1_000_000


def test_a_long_message_is_cut_and_counted() -> None:
    """A render error quotes at most MAX_SAID_CHARS of what an exception says, and says how long it was."""
    message = failure("{{ payload.t | xmlattr }}", {"t": {"a b" * 200: "1"}})
    assert message.endswith(" characters)") and len(message) < MAX_SAID_CHARS + 100


# -- nothing builds past the size cap -------------------------------------------------------------------

def test_jmespath_join_is_refused_before_it_passes_the_size_cap() -> None:
    """`join` of a long separator between many items would write their product: refused before it does."""
    field = compile_field("f", {"jmespath": "join(payload.sep, payload.items)"})
    with pytest.raises(LimitExceeded, match=f"string result over {MAX_RESULT_CHARS} characters "
                                            r"\(it would be 1999000\) in field f"):
        field(ctx({"sep": "-" * 2_000, "items": ["a"] * 1_000}))
    assert field(ctx({"sep": ", ", "items": ["a", "b"]})) == "a, b"


def test_jmespath_to_string_weighs_what_it_writes() -> None:
    """`to_string` of an array holding one long text many times is refused before it is written."""
    field = compile_field("f", {"jmespath": "to_string([payload.s, payload.s, payload.s])"})
    with pytest.raises(LimitExceeded, match="list result over 1000000 characters"):
        field(ctx({"s": "z" * 400_000}))
    assert field(ctx({"s": "z"})) == '["z","z","z"]'


# -- nothing takes time in the square of its input -------------------------------------------------------

@given(st.text(alphabet="ab-é\U0001f600", max_size=40),
       st.text(alphabet="ab-é\U0001f600xyz", min_size=FEW_CHARS + 1, max_size=200)
       | st.lists(st.characters(), min_size=FEW_CHARS + 1, max_size=200).map("".join),
       st.sampled_from([(True, True), (True, False), (False, True)]))
def test_stripping_many_characters_strips_as_python_does(text: str, chars: str, sides: tuple[bool, bool]) -> None:
    """`stripped` gives what Python's strip, lstrip and rstrip give, for more characters to strip than FEW_CHARS."""
    left, right = sides
    expected = text.strip(chars) if left and right else text.lstrip(chars) if left else text.rstrip(chars)
    assert stripped(text, chars, left, right) == expected


def test_strip_and_trim_in_templates_strip_as_python_does() -> None:
    """The `strip` and `trim` filters and the strip methods keep Python's results with many characters to strip,
    text and bytes alike."""
    chars = "".join(chr(0x4E00 + i) for i in range(100)) + "-"
    payload = {"s": "--\u4e00abc\u4e01--", "c": chars}
    for template, expected in (("{{ payload.s | strip(payload.c) }}", "abc"), ("{{ payload.s | trim(payload.c) }}",
                               "abc"), ("{{ payload.s.lstrip(payload.c) }}", "abc\u4e01--"),
                               ("{{ payload.s.rstrip(payload.c) }}", "--\u4e00abc"),
                               ("{{ payload.s.encode('utf-8').strip(payload.c.encode('utf-8')) }}", "b'abc'"),
                               ("{{ ' a ' | trim }}|{{ 'xax' | trim('x') }}|{{ '-a-'.strip('-') }}", "a|a|a")):
        assert compile_field("f", template)(ctx(payload)) == expected, template


@pytest.mark.parametrize("codec", ["idna", "IDNA", "puny-code", " punycode"])
def test_encoding_with_a_codec_that_takes_quadratic_time_is_refused(codec: str) -> None:
    """Python's idna and punycode codecs take time in the square of the text (30 s for 16,000 distinct characters,
    in one call): `encode` and `decode` with them are refused, however the name is spelt."""
    for template in (f"{{{{ payload.s.encode({codec!r}) }}}}", f"{{{{ payload.s.encode(encoding={codec!r}) }}}}",
                     f"{{{{ payload.s.encode('utf-8').decode({codec!r}) }}}}"):
        with pytest.raises(LimitExceeded, match=f"with the codec {codec!r} is not available in templates"):
            compile_field("f", template)(ctx({"s": "bücher"}))
    assert compile_field("f", "{{ payload.s.encode('utf-8') }}")(ctx({"s": "b"})) == "b'b'"


def test_pprint_of_a_deep_and_heavy_value_is_refused_before_it_is_laid_out(monkeypatch: pytest.MonkeyPatch) -> None:
    """pprint writes, at each level of a nested value, all that lies below it: a long text 100 lists deep takes
    seconds in one call. One whose weight times its depth squared passes PPRINT_COST is refused unwritten."""
    laid_out: list[Any] = []
    monkeypatch.setattr(templates, "do_pprint", lambda value: laid_out.append(value) or "laid out")
    deep: Any = "x" * 200_000
    for _ in range(100):
        deep = [deep]
    field = compile_field("f", "{{ payload.v | pprint }}")
    with pytest.raises(LimitExceeded, match="pprint: a value 100 levels deep weighing at least"):
        field(ctx({"v": deep}))
    assert laid_out == []
    assert field(ctx({"v": {"a": [1, {"b": "c"}]}})) == "laid out"
