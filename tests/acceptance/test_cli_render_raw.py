"""`ticketbridge render --source NAME --raw FILE`: a provider's raw body through its handler and the source's
mappings, as the console's playground runs it, with nothing stored or sent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bridge import offload
from tests.acceptance.test_cli_mapping import PARTNER, run, setup

SIGNED = """\
store: {url: "sqlite:///var/bridge.db"}
sources:
  partner: {kind: json, hmac: {secret: s3cret}}
destinations:
  kapture: {vendor: kapture, sandbox: true}
"""
JSON = "Content-Type:application/json"


def body(tmp_path: Path, data: object) -> str:
    path = tmp_path / "body.json"
    path.write_text(json.dumps(data))
    return str(path)


def test_raw_body_shows_each_mappings_decision_and_vendor_body(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """Without MAPPING, every mapping of the source is shown with its decision and the body it would send, and
    nothing is written to the store."""
    cfg = setup(tmp_path, {"partner": PARTNER})
    raw = body(tmp_path, {"id": "p-7", "title": " Printer on fire ", "priority": "low"})
    code, out, err = run(capsys, "render", "-c", cfg, "--source", "partner", "--raw", raw, "--header", JSON)
    assert code == 0, err
    doc = json.loads(out)
    [event] = doc["events"]
    assert event["payload"] == {"id": "p-7", "title": " Printer on fire ", "priority": "low"}
    [decision] = event["decisions"]
    assert decision["decision"] == "taken"
    assert decision["vendor_body"] == [{"title": "Printer on fire", "priority": "P3", "source_ref": "p-7"}]
    assert not (tmp_path / "var").exists()


def test_a_render_offloaded_leaves_stdout_to_the_body(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A render that runs past its loop slice (a busy machine; here a slice already over) is begun again in a
    thread and logs `render.offloaded`, an info line, which a command that prints its results does not print
    (its warnings go to stderr), so that stdout holds the body alone (what a user pipes on). Before, the line came
    out on stdout, before the body."""
    monkeypatch.setattr(offload, "LOOP_SLICE_S", -1.0)
    cfg = setup(tmp_path, {"partner": PARTNER})
    raw = body(tmp_path, {"id": "p-8", "title": "Outage"})
    code, out, err = run(capsys, "render", "partner", "-c", cfg, "--source", "partner", "--raw", raw,
                         "--header", JSON)
    assert code == 0, err
    assert json.loads(out) == [{"title": "Outage", "priority": "P2", "source_ref": "p-8"}]
    assert "render.offloaded" not in out and "render.offloaded" not in err


def test_raw_body_with_a_mapping_prints_its_body_and_explains(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """With MAPPING, only its vendor body is printed (as `render MAPPING` does), and --explain tells each
    field's story on stderr; a body the mapping cannot render exits 1 naming the field."""
    cfg = setup(tmp_path, {"partner": PARTNER})
    raw = body(tmp_path, {"id": "p-8", "title": "Outage"})
    code, out, err = run(capsys, "render", "partner", "-c", cfg, "--source", "partner", "--raw", raw,
                         "--header", JSON, "--explain")
    assert code == 0, err
    assert json.loads(out) == [{"title": "Outage", "priority": "P2", "source_ref": "p-8"}]
    assert "== partner (kapture create_ticket): taken" in err and "priority" in err
    code, out, err = run(capsys, "render", "partner", "-c", cfg, "--source", "partner", "--raw",
                         body(tmp_path, {"id": "p-9"}), "--header", JSON)
    assert code == 1 and out == ""
    assert "title: required (payload.title is missing)" in err


def test_raw_body_is_refused_as_intake_would_refuse_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A body the handler refuses (here a form body sent to a JSON source) exits 1 with the handler's reason;
    --verify checks the signature, which an unsigned body fails."""
    cfg = setup(tmp_path, {"partner": PARTNER})
    raw = tmp_path / "form.txt"
    raw.write_text("title=x")
    code, _, err = run(capsys, "render", "-c", cfg, "--source", "partner", "--raw", str(raw),
                       "--header", "Content-Type:application/x-www-form-urlencoded")
    assert code == 1 and "partner: rejected (415)" in err
    (tmp_path / "bridge.yaml").write_text(SIGNED)
    raw_json = body(tmp_path, {"id": "p-1", "title": "t"})
    code, _, err = run(capsys, "render", "-c", cfg, "--source", "partner", "--raw", raw_json, "--header", JSON,
                       "--verify")
    assert code == 1 and "partner: rejected (401)" in err
    code, out, _ = run(capsys, "render", "-c", cfg, "--source", "partner", "--raw", raw_json, "--header", JSON)
    assert code == 0 and json.loads(out)["events"][0]["decisions"][0]["decision"] == "taken"


@pytest.mark.parametrize(("argv", "message"), [
    (["--raw", "b.json"], "--raw and --source go together"),
    (["--source", "partner", "--input", "i.yaml"], "--raw and --source go together"),
    (["--source", "nowhere", "--raw", "BODY"], "unknown source 'nowhere'; configured sources: partner, web"),
    (["--source", "partner", "--raw", "BODY", "--header", "nocolon"], "write it as Name:value"),
])
def test_raw_render_names_what_is_wrong_with_its_arguments(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                            argv: list[str], message: str) -> None:
    """Mismatched options, an unknown source and a malformed header exit 2 saying what would be right."""
    cfg = setup(tmp_path, {"partner": PARTNER})
    raw = body(tmp_path, {"id": "p-1", "title": "t"})
    code, _, err = run(capsys, "render", "-c", cfg, *[raw if a == "BODY" else a for a in argv])
    assert code == 2
    assert message in err
