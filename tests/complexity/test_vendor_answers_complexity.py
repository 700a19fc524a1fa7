"""A vendor's answer is read in time linear in its size when the strict decode refuses it and it is read again
leniently (`decode_json`), and a token endpoint's answer is described (`token_answer_said`) in linear time: 8x
the input costs at most ~16x the time. Each input is one a broken or hostile vendor would answer."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from bridge.vendors.base import decode_json, token_answer_said
from tests.complexity.scaling import assert_linear

ANSWERS: dict[str, Callable[[int], bytes]] = {
    # a lone surrogate per string, many strings
    "surrogates": lambda n: b'{"a": [' + b",".join([b'"\\ud83d"'] * n) + b'], "id": "1"}',
    # a byte that is not UTF-8 in one long string
    "latin1": lambda n: b'{"id": "1", "t": "' + b"\xe9" * (8 * n) + b'"}',
    # many keys, each with a bad byte
    "keys": lambda n: b"{" + b",".join(b'"k%d\xe9": "\\udc00"' % i for i in range(n)) + b"}",
    # objects nested a little, many of them
    "objects": lambda n: b"[" + b",".join([b'{"x": {"y": "\xff"}}'] * n) + b"]",
}


@pytest.mark.parametrize("shape", list(ANSWERS))
def test_a_lenient_read_is_linear(shape: str) -> None:
    make = ANSWERS[shape]
    assert decode_json(make(8)) is not None
    assert_linear(decode_json, make, 1000)


def test_a_token_answer_is_described_in_linear_time() -> None:
    def run(body: bytes) -> object:
        return token_answer_said(body, "application/json", decode_json(body))

    assert_linear(run, lambda n: b'{"access_token": "' + b"\xe9" * (8 * n) + b'", "x": [' +
                  b",".join([b'{"token": "t"}'] * n) + b"]}", 1000)
