"""`ticketbridge check` for people and for CI: its FAILED summary, `--format json|junit`, and every missing
environment variable named in one run."""

from __future__ import annotations

import json
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest

from tests.acceptance.test_cli_mapping import CONFIG, PARTNER, run, setup
from tests.fixtures.bad_config_values import CASES, VARIABLE, BadValue


def test_check_json_lists_errors_with_their_place_and_every_test(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """`--format json` prints one document on stdout: ok false, each mapping error with file and line, and each
    test with its result; nothing on stderr."""
    cfg = setup(tmp_path, {"partner": PARTNER.replace("priority: P1, ", "priority: P9, "),
                           "typo": PARTNER.replace("required: true", "requird: true")})
    code, out, err = run(capsys, "check", "-c", cfg, "--format", "json")
    assert code == 1 and err == ""
    doc = json.loads(out)
    assert doc["ok"] is False and doc["summary"].startswith("check FAILED: ")
    [error] = doc["errors"]
    assert error["kind"] == "mapping" and error["file"] == str(tmp_path / "mappings" / "typo.yaml")
    assert error["line"] == 5 and "unknown key 'requird'" in error["message"]
    assert {(t["name"], t["passed"]) for t in doc["tests"]} == {("a partner ticket", False), ("no title", True)}
    assert (doc["passed"], doc["failed"]) == (1, 1)


def test_check_junit_has_a_case_per_test_and_per_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--format junit` is JUnit XML: a failed case per load error, and a suite per mapping of its tests."""
    cfg = setup(tmp_path, {"partner": PARTNER.replace("priority: P1, ", "priority: P9, "),
                           "typo": PARTNER.replace("required: true", "requird: true")})
    code, out, _ = run(capsys, "check", "-c", cfg, "--format", "junit")
    assert code == 1
    root = ET.fromstring(out)
    assert root.tag == "testsuites" and (root.get("tests"), root.get("failures")) == ("3", "2")
    suites = {s.get("name"): s for s in root}
    [load_case] = suites["load"]
    failure = load_case.find("failure")
    assert failure is not None and "unknown key 'requird'" in (failure.get("message") or "")
    cases = {c.get("name"): c.find("failure") for c in suites["partner"].iter("testcase")}
    assert cases["no title"] is None
    failed = cases["a partner ticket"]
    assert failed is not None and '"P9"' in (failed.text or "")


def test_check_formats_say_ok_on_a_good_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A folder that loads and passes gives ok true (JSON) and a load suite without failures (JUnit), exit 0."""
    cfg = setup(tmp_path, {"partner": PARTNER})
    code, out, _ = run(capsys, "check", "-c", cfg, "--format", "json")
    assert code == 0 and json.loads(out)["ok"] is True and json.loads(out)["summary"].startswith("config ok: ")
    code, out, _ = run(capsys, "check", "-c", cfg, "--format", "junit")
    assert code == 0 and ET.fromstring(out).get("failures") == "0"


def test_check_names_mapping_files_of_a_folder_from_a_variable_by_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With `mappings: ${MAPS}`, check names each mapping file relative to the variable (`${MAPS}/typo.yaml`), in
    its errors, failed tests and warnings, as text, JSON and JUnit: never by the folder's path, the value."""
    folder = tmp_path / "secret-maps"
    cfg = setup(tmp_path, {})
    (tmp_path / "bridge.yaml").write_text(CONFIG + "mappings: ${MAPS}\n")
    folder.mkdir()
    (folder / "partner.yaml").write_text(PARTNER.replace("priority: P1, ", "priority: P9, "))
    (folder / "typo.yaml").write_text(PARTNER.replace("required: true", "requird: true"))
    (folder / "untested.yaml").write_text(PARTNER.split("tests:")[0])
    monkeypatch.setenv("MAPS", str(folder))
    code, out, err = run(capsys, "check", "-c", cfg)
    assert code == 1
    assert "${MAPS}/typo.yaml:5:" in err and "${MAPS}/partner.yaml" in out + err
    assert "${MAPS}/untested.yaml: untested: warning: this mapping has no tests" in out + err
    assert str(folder) not in out + err
    for form in ("json", "junit"):
        code, out, _ = run(capsys, "check", "-c", cfg, "--format", form)
        assert code == 1 and "${MAPS}/typo.yaml" in out and str(folder) not in out, out
    [error] = json.loads(run(capsys, "check", "-c", cfg, "--format", "json")[1])["errors"]
    assert error["file"] == "${MAPS}/typo.yaml"


def test_check_names_every_missing_environment_variable_and_says_failed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A config needing three unset variables: one run names all three at their lines, and the summary says
    FAILED."""
    for name in ("TB_A", "TB_B", "TB_C"):
        monkeypatch.delenv(name, raising=False)
    cfg = tmp_path / "bridge.yaml"
    cfg.write_text('admin: {token: "${TB_A}"}\nsources:\n  p: {kind: json, hmac: {secret: "${TB_B}"}}\n'
                   'destinations:\n  k: {vendor: kapture, base_url: "https://x.example", token: "${TB_C}"}\n')
    code, out, err = run(capsys, "check", "-c", str(cfg))
    assert code == 2
    assert [line.split(": ", 1)[0] for line in err.splitlines()] == [f"{cfg}:1:16", f"{cfg}:3:34", f"{cfg}:5:62"]
    assert all(f"environment variable TB_{x} is not set" in err for x in "ABC")
    assert out.startswith("check FAILED: the config does not load (3 errors)")
    code, out, _ = run(capsys, "check", "-c", str(cfg), "--format", "json")
    assert code == 2
    assert [e["message"].split(" is ")[0] for e in json.loads(out)["errors"]] == [
        "environment variable TB_A", "environment variable TB_B", "environment variable TB_C"]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_check_never_shows_a_bad_value_from_an_environment_variable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, case: BadValue,
) -> None:
    """`check` on a config whose bad value comes from a variable of a plain name: the error is at the value's line,
    names the variable, and neither the text nor the JSON report holds the value; written in the file, the value is
    quoted."""
    monkeypatch.setenv(VARIABLE, case.value)
    cfg = tmp_path / "bridge.yaml"
    cfg.write_text(case.text(env=True))
    code, out, err = run(capsys, "check", "-c", str(cfg))
    assert code == 2
    assert err.count("\n") == 1 and err.startswith(f"{cfg}:{case.line}:")
    assert err.endswith(f": {case.path}: {case.env_message}\n")
    _, json_out, _ = run(capsys, "check", "-c", str(cfg), "--format", "json")
    said = (out + err + json_out).replace(str(cfg), "")
    assert f"${{{VARIABLE}}}" in json_out
    assert [secret for secret in case.hidden if secret in said] == []
    cfg.write_text(case.text(env=False))
    code, _, err = run(capsys, "check", "-c", str(cfg))
    assert code == 2 and err.endswith(f": {case.path}: {case.written}\n")


def test_check_refuses_a_filter_argument_no_render_could_use(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """A mapping without tests whose transform would fail (or empty) every event's field fails `check`, at the
    entry's line, naming the field, the filter, the value and what it takes; so a hot reload refuses it too."""
    cfg = setup(tmp_path, {"partner": PARTNER.replace("transform: [strip]",
                                                      "transform: [strip, \"truncate('x')\", truncate(0)]")})
    code, out, err = run(capsys, "check", "-c", cfg)
    file = tmp_path / "mappings" / "partner.yaml"
    assert code == 1 and out.startswith("check FAILED: ")
    assert err.splitlines() == [
        f"{file}:5:67: partner.title.transform[1]: bad arguments in \"truncate('x')\": the length must be a whole "
        "number of characters, 1 or more, not 'x': write e.g. truncate(100)",
        f"{file}:5:84: partner.title.transform[2]: bad arguments in 'truncate(0)': the length must be a whole "
        "number of characters, 1 or more, not 0: write e.g. truncate(100)",
    ]


@pytest.mark.parametrize("fmt", ["text", "json", "junit"])
def test_check_exits_2_on_a_config_that_does_not_load_as_every_verb_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fmt: str,
) -> None:
    """README: exit 2 is a config that does not load, for `check` (in each format) as for `test`, `doctor`, `purge`
    and `deliveries`; a count of one is said in the singular."""
    cfg = tmp_path / "bridge.yaml"
    cfg.write_text("server: {port: 99999}\n")
    (tmp_path / "mappings").mkdir()
    code, out, _ = run(capsys, "check", "-c", str(cfg), "--format", fmt)
    assert code == 2
    if fmt == "text":
        assert out == "check FAILED: the config does not load (1 error)\n"
    for verb in (["test"], ["doctor"], ["purge", "--older-than", "30d"], ["deliveries", "list"]):
        assert run(capsys, *verb, "-c", str(cfg))[0] == 2, verb


def test_check_counts_in_the_singular_where_there_is_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`1 source, 1 destination; 1 mapping, 1 broken file; … 1 mapping error`, not `1 sources`."""
    cfg = setup(tmp_path, {"partner": PARTNER, "typo": PARTNER.replace("required: true", "requird: true")})
    (tmp_path / "bridge.yaml").write_text((tmp_path / "bridge.yaml").read_text().replace("  web: {kind: form}\n", ""))
    code, out, _ = run(capsys, "check", "-c", cfg)
    assert code == 1
    assert out == ("check FAILED: 1 source, 1 destination; 1 mapping, 1 broken file; 2 passed, 0 failed; "
                   "1 mapping error\n")


TWILIO_SOURCES = """\
store: {url: "sqlite:///var/bridge.db"}
sources:
  sms: {kind: twilio, auth_token: t}
  signed: {kind: twilio, auth_token: t, public_url: "https://bridge.example.com/hooks/signed"}
  mail: {kind: mandrill, webhook_key: k}
destinations:
  kapture: {vendor: kapture, sandbox: true}
"""


def test_check_warns_of_a_signed_url_source_without_public_url(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """A Twilio (or Mandrill) source with no public_url, and no server.public_url, would check signatures against
    the URL each request arrives at, which behind a TLS proxy is not the one signed: `check` warns at the source's
    line, saying what to set, and still passes; a source with public_url, or a server.public_url, is not warned."""
    cfg = tmp_path / "bridge.yaml"
    (tmp_path / "mappings").mkdir()
    cfg.write_text(TWILIO_SOURCES)
    code, out, err = run(capsys, "check", "-c", str(cfg))
    assert code == 0 and out.startswith("config ok: "), err
    warned = [line for line in err.splitlines() if "public_url" in line]
    assert [line.split(": ", 1)[0] for line in warned] == [f"{cfg}:5:3", f"{cfg}:3:3"]
    assert "sources.sms: warning: Twilio signs the URL it calls" in warned[1]
    assert "every post gets 401; set public_url to the webhook URL exactly as configured in Twilio, e.g. " \
           "https://bridge.example.com/hooks/sms" in warned[1]
    assert "sources.mail: warning: Mandrill signs the URL" in warned[0]
    code, out, _ = run(capsys, "check", "-c", str(cfg), "--format", "json")
    assert code == 0 and len([w for w in json.loads(out)["warnings"] if "public_url" in w]) == 2
    cfg.write_text("server: {public_url: \"https://bridge.example.com\"}\n" + TWILIO_SOURCES)
    code, _, err = run(capsys, "check", "-c", str(cfg))
    assert code == 0 and "public_url" not in err
