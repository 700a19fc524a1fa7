"""The runtime's counters, as /metrics shows them."""

from __future__ import annotations

from typing import cast

from bridge.config import load_config
from bridge.mapping.mappingset import MappingSet
from bridge.registries import REGISTRIES
from bridge.runtime import INTAKE_OUTCOMES, Runtime, Source, count_key
from handlers.base import Handler


def test_count_keys_labels_sorted_whatever_order_they_come_in() -> None:
    """A count is kept under its name and its labels sorted, however a call site orders them, apart per value."""
    rt = Runtime(config=load_config(None, registries=REGISTRIES), sources={}, mappings=MappingSet.build([]))
    rt.count("escaped", source="a", where="headers")
    rt.count("escaped", where="headers", source="a")
    rt.count("escaped", 3, source="a", where="payload")
    rt.count("escaped", source="b", where="headers")
    rt.count("escaped")
    rt.count("other", source="a", where="headers")
    assert rt.labelled == {
        ("escaped", (("source", "a"), ("where", "headers"))): 2,
        ("escaped", (("source", "a"), ("where", "payload"))): 3,
        ("escaped", (("source", "b"), ("where", "headers"))): 1,
        ("escaped", ()): 1,
        ("other", (("source", "a"), ("where", "headers"))): 1,
    }
    assert rt.counters == {"escaped": 7, "other": 1}


def test_a_key_made_once_counts_as_its_name_and_labels_do() -> None:
    """`add` under a `count_key` (a source's intake outcomes, made when the source is) counts where `count` with
    the same name and labels does."""
    rt = Runtime(config=load_config(None, registries=REGISTRIES), sources={}, mappings=MappingSet.build([]))
    source = Source("web", cast(Handler, None), None, 0.0)
    assert set(source.outcomes) == set(INTAKE_OUTCOMES)
    for name in INTAKE_OUTCOMES:
        rt.add(source.outcomes[name])
        rt.count(name, source="web")
    rt.add(count_key("escaped", where="headers", source="web"), 2)
    rt.count("escaped", source="web", where="headers")
    assert rt.labelled == {
        **{(name, (("source", "web"),)): 2 for name in INTAKE_OUTCOMES},
        ("escaped", (("source", "web"), ("where", "headers"))): 3,
    }
