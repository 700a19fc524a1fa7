"""Rendering speed of a compiled 6-field LeadSquared mapping, next to one Jinja template of the whole body.

The mapping: an email with strip/lower, a template title, a message with a default, a mapped priority
with a default, and two constants. The Jinja baseline renders the same body as JSON text from one template
(a plain, unsandboxed Environment: the fastest Jinja can be). Both run in this process on one core, in
alternating rounds; the median of each is reported, with the ratio, and the compiled mapping is held to
50,000 renders per second.
"""

from __future__ import annotations

import json
import os
import statistics
import textwrap
import time
from collections.abc import Callable
from typing import Any

import jinja2
import msgspec
import pytest

from bridge.mapping.mappingset import compile_document
from bridge.yamlfile import load_yaml

pytestmark = pytest.mark.bench

TARGET = 50_000
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
N = int(os.environ.get("BENCH_RENDERS", "50000"))

MAPPING = """\
name: contact-to-leadsquared
source: website-contact
destination: lsq
action: create_ticket
fields:
  LeadDetail.EmailAddress: {from: payload.email, required: true, transform: [strip, lower]}
  Title: "Website enquiry: {{ payload.subject }}"
  Description: {from: payload.message, default: ""}
  Priority: {from: payload.priority, map: {high: High, low: Low}, default: Medium}
  Channel: Web
  Status: Open
"""

WHOLE_BODY = (
    '{"LeadDetail.EmailAddress": {{ payload.email | trim | lower | tojson }}, '
    '"Title": {{ ("Website enquiry: " ~ payload.subject) | tojson }}, '
    '"Description": {{ payload.message | default("") | tojson }}, '
    '"Priority": {{ {"high": "High", "low": "Low"}.get(payload.priority, '
    '{"high": "High", "low": "Low"}.get((payload.priority | default("")) | lower, "Medium")) | tojson }}, '
    '"Channel": "Web", "Status": "Open"}'
)

PAYLOADS = [
    {"email": " Asha@Example.com ", "subject": "Router down", "message": "No internet since morning",
     "priority": "high"},
    {"email": "ravi@example.in", "subject": "Billing", "priority": "LOW"},
    {"email": " X@Y.io", "subject": "Slow line", "message": "Evenings only", "priority": "urgent"},
]


def contexts() -> list[dict[str, Any]]:
    return [{"payload": p, "headers": {}, "event": {"id": "evt_1", "source": "website-contact"}, "vars": {}}
            for p in PAYLOADS]


def rate(fn: Callable[[dict[str, Any]], Any], ctxs: list[dict[str, Any]]) -> float:
    k = len(ctxs)
    started = time.perf_counter()
    for i in range(N):
        fn(ctxs[i % k])
    return N / (time.perf_counter() - started)


def test_render_rate_against_one_jinja_template_of_the_whole_body() -> None:
    """A compiled 6-field mapping renders at least 50,000 bodies a second on one core."""
    doc = load_yaml(textwrap.dedent(MAPPING), "bench.yaml")
    mapping, errors = compile_document(doc, "bench", "v1", {"website-contact"}, {"lsq": frozenset({"create_ticket"})})
    assert errors == [] and mapping is not None
    template = jinja2.Environment(autoescape=False).from_string(WHOLE_BODY)
    ctxs = contexts()
    for ctx in ctxs:  # the same output, or the comparison means nothing
        assert json.loads(template.render(ctx)) == mapping.render(ctx)

    encode = msgspec.json.encode
    fast, fast_json, whole = [], [], []
    for _ in range(ROUNDS):
        fast.append(rate(mapping.render, ctxs))
        fast_json.append(rate(lambda ctx: encode(mapping.render(ctx)), ctxs))
        whole.append(rate(template.render, ctxs))
    f, fj, w = statistics.median(fast), statistics.median(fast_json), statistics.median(whole)
    print(f"\ncompiled mapping:            {f:>10,.0f} renders/s (dict)")
    print(f"compiled mapping + JSON:     {fj:>10,.0f} renders/s (bytes)")
    print(f"one Jinja whole-body template: {w:>8,.0f} renders/s (JSON text)")
    print(f"ratio compiled / Jinja:      {f / w:>10.1f}x (with JSON encoding: {fj / w:.1f}x)")
    assert f >= TARGET
