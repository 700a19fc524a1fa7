"""What the simulators keep, weighed: a value's JSON length, a ticket's kept as its fields and histories change."""

from __future__ import annotations

import random
from typing import Any

import msgspec
import pytest

from bridge.simulators.weights import TicketWeight, field_weight, set_delta, weigh
from tests.fixtures.ticket_weight import ticket_weight


def json_length(value: Any) -> int:
    return len(msgspec.json.encode(value))


def test_a_value_weighs_its_json_length() -> None:
    """Text weighs its escaped UTF-8 bytes, containers their punctuation too, a number-keyed dict its quoted keys."""
    for value in ["é\x00\"", 12, None, [1, [2, "x"]], {"a": {"b": []}}, {1: 2}, 10 ** 30]:
        assert weigh(value) == json_length(value)
    assert (weigh("é"), weigh("\x00"), weigh({1: 2})) == (4, 8, 7)


def test_what_json_cannot_hold_weighs_its_repr_or_its_size() -> None:
    """An object, a tuple key and a cycle weigh their repr's length; an int too long to write out its size."""
    cycle: list[Any] = []
    cycle.append(cycle)
    thing = object()
    assert (weigh(thing), weigh({(1, 2): 3}), weigh(cycle)) == (len(repr(thing)), len("{(1, 2): 3}"), len("[[...]]"))
    assert weigh(10 ** 5000) > 2000


def test_a_field_and_a_change_weigh_what_they_add_inside_the_braces() -> None:
    obj: dict[str, Any] = {"a": 1}
    assert field_weight("name", [1]) == len('"name":[1]')
    for name, value in [("a", "longer"), ("b", [1, 2]), ("a", None)]:
        before = json_length(obj)
        delta = set_delta(obj, name, value)
        obj[name] = value
        assert json_length(obj) - before == delta
    assert set_delta({}, "k", 1) == len('"k":1')


def test_a_ticket_weighs_its_json_length_however_it_is_built() -> None:
    ticket: dict[str, Any] = {"id": "T-1", "comments": ["a", {"b": 2}], "files": [], "body": {"x": [1]}}
    assert ticket_weight(ticket, ("comments", "files")) == json_length(ticket) == TicketWeight(
        ticket, ("comments", "files")).total
    assert ticket_weight({}, ()) == TicketWeight({}, ()).total == 2
    odd = {"id": object(), "comments": [object(), "x"]}  # weighed by the fallback, alike both ways
    assert ticket_weight(odd, ("comments",)) == TicketWeight(odd, ("comments",)).total


def test_a_history_changes_only_through_its_entries() -> None:
    ticket = {"id": 1, "comments": []}
    with pytest.raises(ValueError, match="'comments' is a history"):
        TicketWeight(ticket, ("comments",)).set(ticket, "comments", ["x"])


def random_value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(6 if depth < 2 else 4)
    if kind == 0:
        return rng.choice(["", "é", "x" * rng.randrange(50), "\"\\\n"])
    if kind == 1:
        return rng.randrange(-10 ** 6, 10 ** 6)
    if kind == 2:
        return rng.choice([None, True, 1.5])
    if kind == 3:
        return "y" * rng.randrange(200)
    if kind == 4:
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {f"k{n}": random_value(rng, depth + 1) for n in range(rng.randrange(4))}


def test_the_kept_weight_is_the_fresh_one_after_any_changes() -> None:
    """Seeded random sets of fields (new and replaced), entries added and oldest dropped: the kept total equals the
    ticket weighed afresh after each, and each step's answer is the change in it."""
    rng = random.Random(20240419)
    histories = ("a", "b")
    ticket: dict[str, Any] = {"id": 1, "a": [], "b": ["x"]}
    weight = TicketWeight(ticket, histories)
    for _ in range(2_000):
        before = weight.total
        step = rng.randrange(3)
        if step == 0:
            name = rng.choice(["id", "f1", "f2", "f3"])
            value = random_value(rng)
            delta = weight.set(ticket, name, value)
            ticket[name] = value
        elif step == 1:
            name = rng.choice(histories)
            added = [random_value(rng) for _ in range(rng.randrange(4))]
            ticket[name].extend(added)
            delta = weight.add(name, [weigh(e) for e in added])
        else:
            name = rng.choice(histories)
            count = rng.randrange(3)
            del ticket[name][:count]
            delta = weight.drop_oldest(name, count)
        assert weight.total - before == delta
        assert weight.total == ticket_weight(ticket, histories) == json_length(ticket)
        assert weight.sums == {name: sum(map(weigh, ticket[name])) for name in histories}
