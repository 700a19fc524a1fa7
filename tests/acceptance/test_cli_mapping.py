"""The ops workflow on the command line: `check`, `test`, `render [--explain]` and `replay --rerender`."""

from __future__ import annotations

import asyncio
import json
import textwrap
from pathlib import Path

import pytest

from bridge.app import load_mappings
from bridge.config import load_config
from bridge.events import Event
from bridge.registries import REGISTRIES
from bridge.store import open_store
from bridge.store.base import NewDelivery
from tests.acceptance.cli_store import run

CONFIG = """\
store: {url: "sqlite:///var/bridge.db"}
vars: {brand: Acme}
sources:
  partner: {kind: json}
  web: {kind: form}
destinations:
  kapture: {vendor: kapture, sandbox: true}
"""

PARTNER = """\
source: partner
destination: kapture
action: create_ticket
fields:
  title: {from: payload.title, required: true, transform: [strip]}
  priority: {from: payload.priority, map: {high: P1, low: P3}, default: P2}
  source_ref: "{{ payload.id }}"
tests:
  - name: a partner ticket
    input: {payload: {id: p-1, title: " Outage ", priority: high}}
    expect: [{title: Outage, priority: P1, source_ref: p-1}]
  - name: no title
    input: {payload: {id: p-2}}
    expect_error: "title: required (payload.title is missing)"
"""


def setup(tmp_path: Path, mappings: dict[str, str]) -> str:
    (tmp_path / "bridge.yaml").write_text(CONFIG)
    folder = tmp_path / "mappings"
    folder.mkdir(exist_ok=True)
    for name, text in mappings.items():
        (folder / f"{name}.yaml").write_text(textwrap.dedent(text))
    return str(tmp_path / "bridge.yaml")



# -- check ----------------------------------------------------------------------------------------


def test_check_prints_every_error_with_its_place_and_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`check` on a folder with broken mappings prints each error as file:line:col: mapping.field and exits 1."""
    cfg = setup(tmp_path, {
        "partner": PARTNER,
        "broken": """\
            source: [partner, nowhere]
            destination: kapture
            action: create_ticket
            fields:
              ticket_details: {from: payload.x, transform: [strip, shout]}
              when: "{{ payload.date | date('iso', 'Mars/Base') }}"
            """,
        "typo": PARTNER.replace("required: true", "requird: true"),
    })
    code, out, err = run(capsys, "check", "-c", cfg)
    broken, typo = tmp_path / "mappings" / "broken.yaml", tmp_path / "mappings" / "typo.yaml"
    assert code == 1
    assert err.splitlines()[:5] == [
        f"{broken}:1:19: broken.source[1]: unknown source 'nowhere'; configured sources: partner, web",
        f"{broken}:5:56: broken.ticket_details.transform[1]: unknown filter 'shout'; known filters: attachment_list, "
        "bool, date, "
        "default, first, float, html_to_text, int, join, lower, phone_e164, replace, split, strip, strip_quoted, "
        "title, truncate, upper",
        f"{broken}:6:3: broken.when: bad arguments to the date filter: the time zone must be an IANA time zone name "
        "such as UTC or Asia/Kolkata, not 'Mars/Base': write e.g. date('iso', 'Asia/Kolkata')",
        f"{broken}:4:1: broken.title: kapture create_ticket needs a `title` field",
        f"{typo}:5:32: typo.title.requird: unknown key 'requird' (did you mean 'required'?): a field table takes "
        "from, jmespath, template, value, object, required, default, on_missing, map, map_default, transform",
    ]
    assert out.startswith("check FAILED: ")
    assert out.strip().endswith("2 passed, 0 failed; 5 mapping errors")


def test_check_refuses_names_no_store_can_keep_naming_file_line_and_value(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`check` on a config whose destination name holds a NUL (YAML's "\\0"), then on a mapping whose field key does:
    each is an error naming file, line, key and the value escaped, and check exits 2 (the config does not load), then
    1 (a mapping does not)."""
    cfg = setup(tmp_path, {"partner": PARTNER})
    config = tmp_path / "bridge.yaml"
    config.write_text(CONFIG + '  "kapture\\0b": {vendor: kapture, sandbox: true}\n')
    code, _, err = run(capsys, "check", "-c", cfg)
    assert code == 2
    assert err.startswith(f'{config}:8:3: destinations["kapture\\u0000b"]: destination name \'kapture\\x00b\' holds '
                          "\\x00 (U+0000): a destination name is 1 to 200 printable characters")
    config.write_text(CONFIG)
    (tmp_path / "mappings" / "partner.yaml").write_text(PARTNER.replace("  source_ref:", '  "source\\0ref":'))
    code, _, err = run(capsys, "check", "-c", cfg)
    assert code == 1
    assert err.startswith(f"{tmp_path / 'mappings' / 'partner.yaml'}:7:3: partner.fields: field key "
                          "'source\\x00ref' holds \\x00 (U+0000): a field key is printable characters")


def test_check_on_the_shipped_default_passes(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """`check` with no config runs the shipped default and its example mappings, and exits 0."""
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, "check")
    assert code == 0, err
    assert " 0 failed" in out
    assert "warning" not in err


def test_check_fails_on_a_failing_mapping_test(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A mapping that loads but fails its own test makes `check` fail, with the diff."""
    cfg = setup(tmp_path, {"partner": PARTNER.replace("priority: P1, ", "priority: P9, ")})
    code, _, err = run(capsys, "check", "-c", cfg)
    assert code == 1
    assert f"FAIL {tmp_path / 'mappings' / 'partner.yaml'}:9: partner: a partner ticket" in err
    assert '  -    "priority": "P9",' in err.splitlines()


def test_check_test_and_render_place_a_template_nesting_too_deeply_at_its_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A template nesting deeper than Jinja and Python can compile is a mapping error at its file, line and field
    for `check` (exit 1), `test` (exit 1) and `render` (exit 2), never a traceback."""
    ifs = "{% if true %}" * 400 + "x" + "{% endif %}" * 400
    sums = "{{ " + " + ".join(["1"] * 3000) + " }}"
    cfg = setup(tmp_path, {"partner": PARTNER, "deep": PARTNER.replace('"{{ payload.id }}"', f'"{ifs}"'),
                           "sums": PARTNER.replace('"{{ payload.id }}"', f'"{sums}"')})
    deep, summed = tmp_path / "mappings" / "deep.yaml", tmp_path / "mappings" / "sums.yaml"
    errors = [f"{deep}:7:3: deep.source_ref: template nests too deeply: 400 blocks ({{% for %}}, {{% if %}}, "
              "{% macro %}, …) inside one another, over the limit of 16",
              f"{summed}:7:3: sums.source_ref: template nests too deeply: 3001 levels of operators, filters and "
              "blocks inside one another, over the limit of 64; break a long chain up with {% set %}"]
    code, out, err = run(capsys, "check", "-c", cfg)
    assert code == 1 and "Traceback" not in err
    assert err.splitlines()[:2] == errors
    assert out.startswith("check FAILED: ")
    code, out, err = run(capsys, "test", "-c", cfg)
    assert code == 1 and err == ""
    assert out.splitlines()[:2] == errors
    given = write_input(tmp_path, {"payload": {"id": "p-1", "title": "x"}})
    assert run(capsys, "render", "deep", "-c", cfg, "--input", given) == (2, "", errors[0] + "\n")


# -- test -----------------------------------------------------------------------------------------

def test_check_names_a_jinja_builtin_given_an_argument_no_render_could_use(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Jinja's own filters and tests are checked when the mappings load as ticketbridge's are: a literal argument no
    render could use (a rounding method, a test's name, a divisor of 0) is an error at its file, line and field that
    names the filter and the value, where it used to load and then fail every delivery of the mapping."""
    cfg = setup(tmp_path, {"partner": PARTNER, "rounded": PARTNER.replace(
        '"{{ payload.id }}"', '''"{{ payload.amount | round(2, 'sideways') }}"''').replace(
        "action: create_ticket\n", "action: create_ticket\nwhen: \"payload.n is divisibleby(0) or "
                                   "payload.tags | select('no_such_test') | list\"\n")})
    rounded = tmp_path / "mappings" / "rounded.yaml"
    code, out, err = run(capsys, "check", "-c", cfg)
    assert code == 1 and "Traceback" not in err
    assert err.splitlines()[:2] == [
        f"{rounded}:4:1: rounded.when: bad arguments to the divisibleby test: the number to divide by must be a "
        "number other than 0, not 0: write e.g. divisibleby(3)",
        f"{rounded}:4:1: rounded.when: bad arguments to the select filter: the test must be the name of a known "
        "test, not 'no_such_test': write e.g. select('divisibleby', 3); known tests: boolean, callable, defined, "
        "divisibleby, eq, equalto, escaped, even, false, filter, float, ge, greaterthan, gt, in, integer, iterable, "
        "le, lessthan, lower, lt, mapping, ne, none, number, odd, sameas, sequence, string, test, true, undefined, "
        "upper",
    ]
    assert f"{rounded}:8:3: rounded.source_ref: bad arguments to the round filter: the method must be 'common', " \
           "'ceil' or 'floor', not 'sideways': write e.g. round(2, 'floor')" in err.splitlines()
    assert out.startswith("check FAILED: ")



def test_test_shows_a_diff_per_failure_and_ends_with_the_counts(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """`test` shows each failure as a diff and ends with `N passed, M failed`, exiting 1 on a failure."""
    cfg = setup(tmp_path, {"partner": PARTNER.replace("title: Outage,", "title: outage,")})
    code, out, _ = run(capsys, "test", "-c", cfg)
    lines = out.splitlines()
    assert code == 1
    assert lines[0] == f"FAIL {tmp_path / 'mappings' / 'partner.yaml'}:9: partner: a partner ticket"
    assert '  -    "title": "outage"' in lines
    assert '  +    "title": "Outage"' in lines
    assert lines[-1] == "1 passed, 1 failed"


def test_test_takes_files_and_folders(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`test PATH…` runs the tests of the files named (or in the folders named); a broken file counts as failed."""
    cfg = setup(tmp_path, {"partner": PARTNER, "other": PARTNER.replace("source_ref", "ref").replace(
        "expect: [{title: Outage, priority: P1, source_ref: p-1}]", "expect_contains: {ref: p-1}")})
    (tmp_path / "extra").mkdir()
    (tmp_path / "extra" / "bad.yaml").write_text("source: partner\n")
    code, out, _ = run(capsys, "test", "-c", cfg, str(tmp_path / "mappings" / "partner.yaml"))
    assert (code, out.splitlines()[-1]) == (0, "2 passed, 0 failed")
    code, out, _ = run(capsys, "test", "-c", cfg, str(tmp_path / "mappings"), str(tmp_path / "extra"),
                       str(tmp_path / "missing.yaml"))
    lines = out.splitlines()
    assert code == 1
    assert f"{tmp_path / 'missing.yaml'}: no such mapping file or folder" in lines
    assert f"{tmp_path / 'extra' / 'bad.yaml'}:1:1: bad: missing required key 'destination'" in lines
    assert lines[-1] == "4 passed, 2 failed"


# -- render ---------------------------------------------------------------------------------------


def write_input(tmp_path: Path, data: object, name: str = "input.json") -> str:
    (tmp_path / name).write_text(json.dumps(data))
    return str(tmp_path / name)


def test_render_prints_the_vendor_body_alone_on_stdout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`render` prints the body the vendor is sent (Kapture's array) as JSON, and nothing else, on stdout."""
    cfg = setup(tmp_path, {"partner": PARTNER})
    given = write_input(tmp_path, {"payload": {"id": "p-9", "title": "Slow", "priority": "LOW"}})
    code, out, err = run(capsys, "render", "partner", "-c", cfg, "--input", given)
    assert (code, err) == (0, "")
    assert json.loads(out) == [{"title": "Slow", "priority": "P3", "source_ref": "p-9"}]
    code, out, _ = run(capsys, "render", str(tmp_path / "mappings" / "partner.yaml"), "-c", cfg, "--fields",
                       "--payload", write_input(tmp_path, {"id": "p-9", "title": "Slow"}, "payload.json"))
    assert code == 0
    assert json.loads(out) == {"title": "Slow", "priority": "P2", "source_ref": "p-9"}


def test_render_explain_shows_a_default_and_why(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--explain` shows per field its path, raw value, transforms and, for a default used, that it was and why."""
    cfg = setup(tmp_path, {"partner": PARTNER})
    given = write_input(tmp_path, {"payload": {"id": "p-9", "title": " Slow "}})
    code, out, err = run(capsys, "render", "partner", "-c", cfg, "--input", given, "--explain")
    assert code == 0
    assert json.loads(out) == [{"title": "Slow", "priority": "P2", "source_ref": "p-9"}]
    assert err.splitlines()[1:10] == [
        "  title  <- from payload.title",
        "      raw:      ' Slow '",
        "      strip     -> 'Slow'",
        "      value:    'Slow'",
        "  priority  <- from payload.priority",
        "      raw:      (missing)  (payload.priority is missing)",
        "      default:  'P2' used, because payload.priority is missing (on_missing: default, implied by `default:`)",
        "      value:    'P2'",
        "  source_ref  <- template '{{ payload.id }}'",
    ]


def test_render_reports_a_render_error_and_unknown_mappings(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """A render that fails exits 1 with the field's error; an unknown mapping exits 2 listing the known ones."""
    cfg = setup(tmp_path, {"partner": PARTNER})
    given = write_input(tmp_path, {"payload": {"id": "p-9"}})
    assert run(capsys, "render", "partner", "-c", cfg, "--input", given) == (
        1, "", "title: required (payload.title is missing)\n")
    assert run(capsys, "render", "nope", "-c", cfg, "--input", given) == (
        2, "", f"no mapping named 'nope' in {tmp_path / 'mappings'}; known: partner\n")
    bad = write_input(tmp_path, {"payload": {}, "extra": 1}, "bad.json")
    code, _, err = run(capsys, "render", "partner", "-c", cfg, "--input", bad)
    assert code == 2
    assert "unknown field `extra`" in err


# -- replay --rerender ----------------------------------------------------------------------------


def test_replay_rerender_renders_dead_deliveries_with_the_current_mapping(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A delivery that never rendered is re-rendered with the fixed mapping and queued, with its new version."""
    cfg = setup(tmp_path, {"partner": PARTNER})
    config = load_config(Path(cfg), {}, registries=REGISTRIES)
    event = Event.new(source="partner", kind="json", channel="webhook", payload={"id": "p-5", "title": "Fixed"})
    dead = NewDelivery(id="dlv_dead", mapping="partner", mapping_version="old", destination="kapture",
                       action="create_ticket", body=None, status="dead", error="title: template failed")
    gone = NewDelivery(id="dlv_gone", mapping="retired", mapping_version="old", destination="kapture",
                       action="create_ticket", body=None, status="dead", error="x")

    async def seed() -> None:
        store = open_store(config)
        await store.open()
        await store.accept(event, [dead, gone], 0)
        await store.close()

    asyncio.run(seed())
    code, _, err = run(capsys, "replay", "dlv_dead", "dlv_gone", "-c", cfg)
    assert code == 1
    assert "dlv_dead: not replayed: it never rendered (fix the mapping, then replay with --rerender)" in err
    code, out, err = run(capsys, "replay", "dlv_dead", "dlv_gone", "--rerender", "-c", cfg)
    assert code == 1
    assert err == ("dlv_gone: not replayed: mapping 'retired' is not among the current mappings; if it was renamed, "
                   "re-render with the new one (--mapping NEW)\n")
    assert out.startswith("replayed 1 of 2 deliveries (re-rendered with mappings version ")

    async def read() -> tuple[str, str, object]:
        store = open_store(config, owner=False)
        await store.open()
        detail = await store.get_delivery("dlv_dead")
        await store.close()
        return detail.delivery.status, detail.delivery.mapping_version, detail.body

    status, version, body = asyncio.run(read())
    assert status == "pending"
    assert version != "old" and len(version) == 12
    assert body == {"title": "Fixed", "priority": "P2", "source_ref": "p-5"}


def test_render_with_a_ticket_renders_the_follow_up(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An input with `ticket` renders the mapping's follow_up: the update a conversation's later message sends."""
    threaded = PARTNER.replace("tests:", 'follow_up:\n  action: update_ticket\n'
                               '  fields: {ticket_id: "{{ ticket.id }}", sub_status: P,\n'
                               '           comment: "{{ payload.title }}"}\ntests:')
    cfg = setup(tmp_path, {"partner": threaded})
    given = write_input(tmp_path, {"payload": {"id": "p-9", "title": "Still slow"}, "ticket": {"id": "713"}})
    code, out, err = run(capsys, "render", "partner", "-c", cfg, "--input", given)
    assert (code, err) == (0, "")
    assert json.loads(out) == [{"ticket_id": "713", "sub_status": "P", "comment": "Still slow"}]


def test_replay_rerender_uses_the_kept_set_when_the_folder_fails_its_tests(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A folder whose edit fails its own tests is not what a server serves: a local `replay --rerender` renders
    with the last good set the store keeps, and says so; with no set kept it refuses, naming the failures."""
    cfg = setup(tmp_path, {"partner": PARTNER})
    config = load_config(Path(cfg), {}, registries=REGISTRIES)
    good = load_mappings(config)
    event = Event.new(source="partner", kind="json", channel="webhook", payload={"id": "p-5", "title": "Fixed"})
    dead = NewDelivery(id="dlv_dead", mapping="partner", mapping_version="old", destination="kapture",
                       action="create_ticket", body=None, status="dead", error="title: template failed")

    async def seed(keep: bool) -> None:
        store = open_store(config)
        await store.open()
        if keep:
            await store.save_mapping_set(good.files, good.version)
        else:
            await store.accept(event, [dead], 0)
        await store.close()

    rejected = PARTNER.replace("title: {from: payload.title, required: true, transform: [strip]}",
                               'title: "Rejected {{ payload.title }}"')
    (tmp_path / "mappings" / "partner.yaml").write_text(rejected)
    asyncio.run(seed(keep=False))
    capsys.readouterr()
    code, out, err = run(capsys, "replay", "dlv_dead", "--rerender", "-c", cfg)
    assert (code, out) == (2, "")
    assert "mapping tests failed" in err and "keeps no last good set" in err

    asyncio.run(seed(keep=True))
    capsys.readouterr()
    code, out, err = run(capsys, "replay", "dlv_dead", "--rerender", "-c", cfg)
    assert code == 0, err
    assert f"re-rendering with the last good set kept in the store, version {good.version}" in err
    assert out.startswith(f"replayed 1 of 1 deliveries (re-rendered with mappings version {good.version}: "
                          "the last good set kept in the store")

    async def body() -> object:
        store = open_store(config, owner=False)
        await store.open()
        detail = await store.get_delivery("dlv_dead")
        await store.close()
        return detail.body

    assert asyncio.run(body()) == {"title": "Fixed", "priority": "P2", "source_ref": "p-5"}


def test_replay_rerender_with_mapping_renders_a_renamed_mappings_deliveries(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`replay --rerender --mapping NEW` renders a delivery of a mapping no longer loaded with NEW, which it then
    belongs to; NEW must be loaded, feed the same destination and action, and --mapping needs --rerender."""
    cfg = setup(tmp_path, {"partner": PARTNER})
    config = load_config(Path(cfg), {}, registries=REGISTRIES)
    event = Event.new(source="partner", kind="json", channel="webhook", payload={"id": "p-6", "title": "Moved"})
    gone = NewDelivery(id="dlv_gone", mapping="retired", mapping_version="old", destination="kapture",
                       action="create_ticket", body=None, status="dead", error="x")
    other = NewDelivery(id="dlv_other", mapping="retired", mapping_version="old", destination="kapture",
                        action="update_ticket", body=None, status="dead", error="x")

    async def seed() -> None:
        store = open_store(config)
        await store.open()
        await store.accept(event, [gone, other], 0)
        await store.close()

    asyncio.run(seed())
    capsys.readouterr()
    code, _, err = run(capsys, "replay", "dlv_gone", "--mapping", "partner", "-c", cfg)
    assert (code, err) == (2, "--mapping partner names the mapping to re-render with: it takes --rerender\n")
    code, _, err = run(capsys, "replay", "dlv_gone", "--rerender", "--mapping", "nope", "-c", cfg)
    assert code == 2 and "--mapping nope: no such mapping" in err and "loaded: partner" in err
    code, out, err = run(capsys, "replay", "dlv_gone", "dlv_other", "--rerender", "--mapping", "partner", "-c", cfg)
    assert code == 1
    assert err == ("dlv_other: not replayed: mapping 'partner' feeds kapture create_ticket, but this delivery goes "
                   "to kapture update_ticket; name a mapping of the same destination and action\n")
    assert out.startswith("replayed 1 of 2 deliveries")

    async def read() -> tuple[str, str, object]:
        store = open_store(config, owner=False)
        await store.open()
        detail = await store.get_delivery("dlv_gone")
        await store.close()
        return detail.delivery.status, detail.delivery.mapping, detail.body

    assert asyncio.run(read()) == ("pending", "partner", {"title": "Moved", "priority": "P2", "source_ref": "p-6"})
