"""What an operator meets when `serve` or a CLI verb cannot start: each error names what failed (the path, the key,
the value) and what would be right, exits 2, and shows no traceback."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from bridge.cli import main

CONFIG = """\
server: {{host: 127.0.0.1, port: 0}}
store:
  url: "{url}"
log: {{level: warning}}
"""


def config(folder: Path, url: str, extra: str = "") -> str:
    """bridge.yaml (store at `url`, plus `extra`) and an empty mappings folder in `folder`; the config's path."""
    (folder / "bridge.yaml").write_text(CONFIG.format(url=url) + extra)
    (folder / "mappings").mkdir(exist_ok=True)
    return str(folder / "bridge.yaml")


def cli(*args: str, before: str = "") -> tuple[int, str]:
    """`ticketbridge <args>` in its own process, after running the Python `before` in it: exit code and stderr."""
    code, _out, err = _spawned(*args, before=before)
    return code, err


def _spawned(*args: str, before: str = "") -> tuple[int, str, str]:
    script = f"import sys\n{before}\nfrom bridge.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=60, env=env,
                          check=False)
    return done.returncode, done.stdout, done.stderr


def refused(*args: str, before: str = "") -> tuple[int, str]:
    """`ticketbridge serve <args>` (its log in JSON lines: stdout is no terminal) refusing to start, as `cli` runs
    it: the exit code, and what its `server.start_refused` log line says (`error`, then each of `errors`). Nothing
    else is written: no line on stderr, no line of the log that is not JSON."""
    code, out, err = _spawned("serve", *args, before=before)
    assert err == "", err
    lines = [json.loads(line) for line in out.splitlines()]
    [refusal] = [line for line in lines if line["event"] == "server.start_refused"]
    assert refusal["level"] == "error"
    return code, "\n".join([refusal["error"], *refusal.get("errors", [])])


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(list(args))
    return code, capsys.readouterr().err


READ_ONLY = """
import errno, pathlib
def mkdir(self, *args, **kwargs):
    raise OSError(errno.EROFS, "Read-only file system", str(self))
pathlib.Path.mkdir = mkdir
"""
"""Python making every folder fail as on a read-only file system (what systemd's ProtectSystem=strict gives)."""


def read_only(monkeypatch: pytest.MonkeyPatch) -> None:
    def mkdir(self: Path, *args: object, **kwargs: object) -> None:
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    monkeypatch.setattr(Path, "mkdir", mkdir)


# -- the store ------------------------------------------------------------------------------------


def test_serve_names_the_store_when_its_folder_is_a_file(tmp_path: Path) -> None:
    """An SQLite store under a regular file is a store problem, not a port one: `cannot open the store: <path>`."""
    (tmp_path / "plain").write_text("a file")
    cfg = config(tmp_path, "sqlite:///plain/sub/bridge.db")
    code, err = refused("-c", cfg)
    assert code == 2, err
    assert err.startswith(f"cannot open the store: {tmp_path / 'plain' / 'sub' / 'bridge.db'}: "), err
    assert f"cannot make its folder {tmp_path / 'plain' / 'sub'}: {tmp_path / 'plain'} is not a folder" in err
    assert "cannot listen" not in err and "Traceback" not in err


def test_serve_names_the_store_on_a_read_only_file_system(tmp_path: Path) -> None:
    cfg = config(tmp_path, "sqlite:///var/bridge.db")
    code, err = refused("-c", cfg, before=READ_ONLY)
    assert code == 2, err
    assert err.startswith(f"cannot open the store: {tmp_path / 'var' / 'bridge.db'}: "), err
    assert "Read-only file system" in err and "cannot listen" not in err and "Traceback" not in err


def test_serve_refused_a_store_in_use_says_so_in_its_log_format(tmp_path: Path) -> None:
    """A start refused because another process holds the SQLite store is one JSON line under `log.format: json`
    (`server.start_refused`, naming the store and the holder), not a line of plain text among the JSON ones."""
    cfg = config(tmp_path, "sqlite:///var/bridge.db")
    Path(cfg).write_text(Path(cfg).read_text().replace("log: {level: warning}", "log: {level: warning, format: json}"))
    (tmp_path / "var").mkdir()
    fd = os.open(tmp_path / "var" / "bridge.db.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a serving process holds it
        os.write(fd, b"4242")
        code, err = refused("-c", cfg)
    finally:
        os.close(fd)
    assert (code, err) == (2, f"cannot open the store: {tmp_path / 'var' / 'bridge.db'} is in use by another "
                              "ticketbridge process (pid 4242); an SQLite store serves one process: stop the other "
                              "one, or use PostgreSQL to run several")


def test_serve_still_says_when_it_cannot_listen(tmp_path: Path) -> None:
    """The bind's own failure is the one a port is named for."""
    cfg = config(tmp_path, "sqlite:///var/bridge.db")
    code, err = refused("-c", cfg, "--host", "192.0.2.1")  # TEST-NET-1: no interface has it
    assert code == 2, err
    assert err.startswith("cannot listen on 192.0.2.1:0: "), err
    assert "Traceback" not in err


@pytest.mark.parametrize("verb", [["deliveries", "list"], ["purge", "--older-than", "30d"],
                                  ["replay", "--destination", "kapture", "--dry-run"]])
def test_cli_verbs_name_the_store_when_its_folder_cannot_be_made(
    verb: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """README: a verb on the store exits 2 when the store cannot be opened; a read-only file system included."""
    cfg = config(tmp_path, "sqlite:///var/bridge.db")
    read_only(monkeypatch)
    code, err = run(capsys, *verb, "-c", cfg)
    assert code == 2, err
    assert err == (f"cannot open the store: {tmp_path / 'var' / 'bridge.db'}: cannot make its folder "
                   f"{tmp_path / 'var'}: Read-only file system; store.url must name a file in a folder this "
                   "process can write\n")


@pytest.mark.parametrize(("url", "named"), [("${BRIDGE_DB}", "${BRIDGE_DB}"),
                                            ("sqlite:///${BRIDGE_DB}", "${BRIDGE_DB}"),
                                            ("sqlite:///${DATA:-var}/sub/bridge.db", "${DATA:-var}/sub/bridge.db")])
def test_a_store_file_taken_from_a_variable_is_named_by_it_never_by_its_path(
    url: str, named: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A store whose file `store.url` takes from `${VAR}` is named by the text that gives it, as `serve` and every
    verb say they cannot open it: never by the path, nor by the folders on its way that the system names."""
    (tmp_path / "plain").write_text("a file")
    secret = tmp_path / "plain" / SECRET_FOLDER
    monkeypatch.setenv("BRIDGE_DB", f"sqlite:///{secret / 'bridge.db'}" if url == "${BRIDGE_DB}"
                       else str(secret / "bridge.db"))
    monkeypatch.setenv("DATA", str(secret))
    cfg = config(tmp_path, url)
    said = (f"cannot open the store: the file named by {named}: cannot make its folder: Not a directory; "
            "store.url must name a file in a folder this process can write\n")
    assert refused("-c", cfg) == (2, said.rstrip("\n"))  # serve's, once its config has loaded, a log line
    for verb in (["deliveries", "list"], ["purge", "--older-than", "30d"]):
        code, err = run(capsys, *verb, "-c", cfg)
        assert (code, err) == (2, said)
    read_only(monkeypatch)  # an OSError naming the folder it could not make
    code, err = run(capsys, "deliveries", "list", "-c", cfg)
    assert code == 2 and "the file named by" in err and "Read-only file system" in err and SECRET_FOLDER not in err


def test_a_store_file_written_in_the_config_is_still_named_by_its_path(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """A `${VAR}` elsewhere in the config changes nothing for a store file written as a path."""
    (tmp_path / "plain").write_text("a file")
    cfg = config(tmp_path, "sqlite:///plain/sub/bridge.db", "vars: {team: '${TEAM:-noc}'}\n")
    code, err = run(capsys, "deliveries", "list", "-c", cfg)
    assert code == 2
    assert err.startswith(f"cannot open the store: {tmp_path / 'plain' / 'sub' / 'bridge.db'}: cannot make its "
                          f"folder {tmp_path / 'plain' / 'sub'}: {tmp_path / 'plain'} is not a folder"), err


def test_serve_and_cli_say_the_same_when_postgresql_cannot_be_reached(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    cfg = config(tmp_path, "postgresql://127.0.0.1:1/test")  # port 1: nothing listens
    code, served = refused("-c", cfg)
    assert code == 2 and served.startswith("cannot open the store: postgresql: "), served
    code, listed = run(capsys, "deliveries", "list", "-c", cfg)
    assert code == 2 and listed.startswith("cannot open the store: postgresql: "), listed


def test_a_postgresql_store_without_asyncpg_says_to_install_the_extra(tmp_path: Path) -> None:
    cfg = config(tmp_path, "postgresql://127.0.0.1:5432/test")
    no_asyncpg = "sys.modules['asyncpg'] = None  # `import asyncpg` raises ImportError, as when not installed"
    said = ("cannot open the store: a postgresql:// store needs the asyncpg package: "
            "pip install 'ticketbridge[postgres]'")
    assert refused("-c", cfg, before=no_asyncpg) == (2, said)
    assert cli("deliveries", "list", "-c", cfg, before=no_asyncpg) == (2, said + "\n")


def test_a_bad_schema_in_the_store_url_is_a_config_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Found by `check` (and refused by `serve` and every verb) at `store.url`, with the file and line."""
    cfg = config(tmp_path, "postgresql://127.0.0.1:1/test?schema=Po-Probe")
    for verb in (["check"], ["deliveries", "list"]):
        code, err = run(capsys, *verb, "-c", cfg)
        assert code in (1, 2), err
        assert f"{cfg}:3:3: store.url: schema 'Po-Probe' in the store url must be a lower-case identifier" in err


# -- the config file, the attachments folder and the extras ----------------------------------------------------


@pytest.mark.parametrize("verb", [["check"], ["deliveries", "list"], ["serve"]])
def test_a_folder_given_as_the_config_is_named_a_folder(verb: list[str], tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run(capsys, *verb, "-c", str(tmp_path))
    assert code in (1, 2)
    assert f"{tmp_path}: is a folder, not a config file; give the path of a YAML file such as bridge.yaml" in err
    assert "no such config file" not in err


EMAIL_SOURCE = "sources:\n  hooks: {kind: json}\n  mail: {kind: postmark}\n"
"""A source whose events carry files (an email kind) beside one whose events never do."""

UNWRITABLE_ATTACHMENTS = "attachments: {dir: plain/files}\n"
"""The attachments folder under a regular file (`plain`, made by each test): nothing can be written there."""


def serve_until_started(cfg: str) -> tuple[bool, str]:
    """`ticketbridge serve -c <cfg>` in its own process (its log at level info), stopped once it logs
    `server.started`: whether it did, and what it wrote (log and errors) until then, or until it exited."""
    Path(cfg).write_text(Path(cfg).read_text().replace("level: warning", "level: info"))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    script = "import sys\nfrom bridge.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    proc = subprocess.Popen([sys.executable, "-c", script, "serve", "-c", cfg], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)
    watchdog = threading.Timer(60, proc.kill)  # neither started nor exited: the read below ends all the same
    watchdog.start()
    seen: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # ends when the process exits
            seen.append(line)
            if "server.started" in line:
                return True, "".join(seen)
        return False, "".join(seen)
    finally:
        watchdog.cancel()
        proc.terminate()
        proc.wait(timeout=60)
        if proc.stdout is not None:
            proc.stdout.close()


def test_serve_refuses_an_attachments_folder_it_cannot_write(tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("a file")
    cfg = config(tmp_path, "sqlite:///var/bridge.db", UNWRITABLE_ATTACHMENTS + EMAIL_SOURCE)
    code, err = refused("-c", cfg)
    assert code == 2, err
    assert err.startswith(f"{cfg}:5:"), err
    assert f"attachments.dir: the attachments folder {tmp_path / 'plain' / 'files'} cannot be written" in err
    assert f"{tmp_path / 'plain'} is not a folder" in err and "Traceback" not in err
    assert "source mail (postmark) saves the files of its events there" in err and "hooks" not in err


def test_serve_names_a_dangling_symlink_as_the_attachments_folder(tmp_path: Path) -> None:
    """A link left behind by a moved data folder: every write would fail with `File exists`, so serve says so."""
    (tmp_path / "files").symlink_to(tmp_path / "moved")
    cfg = config(tmp_path, "sqlite:///var/bridge.db", "attachments: {dir: files/attachments}\n" + EMAIL_SOURCE)
    code, err = refused("-c", cfg)
    assert code == 2, err
    assert (f"attachments.dir: the attachments folder {tmp_path / 'files' / 'attachments'} cannot be written: "
            f"{tmp_path / 'files'} is a symbolic link to {tmp_path / 'moved'}, which does not exist") in err, err


def test_serve_starts_with_an_unwritable_attachments_folder_no_source_writes_to(tmp_path: Path) -> None:
    """A deployment whose sources never carry files (JSON webhooks, forms, chats) never writes the attachments
    folder: under systemd's ProtectSystem=strict the default var/attachments may be read-only, and it starts."""
    (tmp_path / "plain").write_text("a file")
    cfg = config(tmp_path, "sqlite:///var/bridge.db", UNWRITABLE_ATTACHMENTS + "sources:\n  hooks: {kind: json}\n")
    started, out = serve_until_started(cfg)
    assert started, out
    assert "attachments" not in out, out


def test_check_warns_of_an_attachments_folder_it_cannot_write(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """`check` says so as a warning: the folder is this machine's, which may not be the one the server runs on."""
    (tmp_path / "plain").write_text("a file")
    cfg = config(tmp_path, "sqlite:///var/bridge.db", UNWRITABLE_ATTACHMENTS + EMAIL_SOURCE)
    code, err = run(capsys, "check", "-c", cfg)
    assert code == 0
    assert (f"{cfg}:5:15: attachments.dir: warning: the attachments folder {tmp_path / 'plain' / 'files'} cannot be "
            f"written here: {tmp_path / 'plain'} is not a folder") in err


SECRET_FOLDER = "hunter2-secret"
"""A folder's name given by an environment variable, which no message may show."""


def test_check_and_serve_never_show_a_mappings_folder_taken_from_a_variable(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A mappings folder that does not exist, given by `${VAR}`, is named at its key by its kind, length and
    variable, as any value from a variable is, never by its path; one written in the file is named as before."""
    monkeypatch.setenv("MAPS", str(tmp_path / SECRET_FOLDER))
    cfg = config(tmp_path, "sqlite:///var/bridge.db", "mappings: ${MAPS}\n")
    shown = f"text of {len(str(tmp_path / SECRET_FOLDER))} characters from ${{MAPS}}"
    code, err = run(capsys, "check", "-c", cfg)
    assert code == 1, err
    assert f"{cfg}:5:1: mappings: the mappings folder ({shown}) does not exist" in err, err
    assert SECRET_FOLDER not in err, err
    code, out, err = _spawned("serve", "-c", cfg)
    assert code == 2, err
    assert f"mappings: the mappings folder ({shown}) does not exist" in out and SECRET_FOLDER not in out + err, out
    cfg = config(tmp_path, "sqlite:///var/bridge.db", f"mappings: {tmp_path / 'gone'}\n")
    code, err = run(capsys, "check", "-c", cfg)
    assert f"{tmp_path / 'gone'}: the mappings folder does not exist" in err, err


def test_check_never_shows_an_attachments_folder_taken_from_a_variable(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / SECRET_FOLDER).write_text("a file")
    monkeypatch.setenv("FILES", str(tmp_path / SECRET_FOLDER / "files"))
    cfg = config(tmp_path, "sqlite:///var/bridge.db", "attachments: {dir: '${FILES}'}\n" + EMAIL_SOURCE)
    code, err = run(capsys, "check", "-c", cfg)
    assert code == 0, err
    shown = f"text of {len(str(tmp_path / SECRET_FOLDER / 'files'))} characters from ${{FILES}}"
    assert (f"attachments.dir: warning: the attachments folder ({shown}) cannot be written here: it is missing or "
            "not writable") in err, err
    assert SECRET_FOLDER not in err, err


def test_check_says_nothing_of_an_attachments_folder_no_source_writes_to(tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "plain").write_text("a file")
    cfg = config(tmp_path, "sqlite:///var/bridge.db", UNWRITABLE_ATTACHMENTS + "sources:\n  hooks: {kind: json}\n")
    code, err = run(capsys, "check", "-c", cfg)
    assert code == 0, err
    assert "attachments" not in err, err


def test_check_says_as_serve_does_that_uvloop_is_missing(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = config(tmp_path, "sqlite:///var/bridge.db")
    Path(cfg).write_text(Path(cfg).read_text().replace("port: 0}", "port: 0, event_loop: uvloop}"))
    monkeypatch.setitem(sys.modules, "uvloop", None)
    code, err = run(capsys, "check", "-c", cfg)
    assert code == 1
    assert f"{cfg}:1:" in err and "server.event_loop is uvloop, but uvloop is not installed" in err


def test_check_says_as_serve_does_that_opentelemetry_is_missing(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = config(tmp_path, "sqlite:///var/bridge.db", "tracing: {enabled: true}\n")
    for name in ["opentelemetry", *(n for n in sys.modules if n.startswith("opentelemetry."))]:
        monkeypatch.setitem(sys.modules, name, None)  # each one imported raises ImportError, as when not installed
    monkeypatch.delitem(sys.modules, "bridge.otel", raising=False)
    code, err = run(capsys, "check", "-c", cfg)
    assert code == 1
    assert f"{cfg}:5:" in err and "tracing.enabled: tracing.enabled is true, but OpenTelemetry is not installed" in err


def test_a_url_without_a_scheme_is_named(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRIDGE_ADMIN_TOKEN", "t")
    code, err = run(capsys, "deliveries", "list", "--url", "localhost:8080")
    assert code == 2
    assert err == ("--url 'localhost:8080': not an http:// or https:// URL; give the server's address with its "
                   "scheme, e.g. http://localhost:8080\n")
