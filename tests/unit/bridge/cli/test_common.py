"""bridge/cli/common.py: a verb on the store runs `serve`'s check of the names the store keeps, with a store that
(as a LATIN1 database does) cannot keep names past Latin-1."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pytest

from bridge.app import load_mappings
from bridge.cli import common
from bridge.config import Config, load_config
from bridge.errors import StoreUnavailable
from bridge.registries import REGISTRIES
from bridge.store.base import Store
from bridge.store.memory import MemoryStore

SMILE = "\U0001F600"
CONFIG = f"""
store: {{url: "sqlite:///var/unused.db"}}
sources:
  partner: {{kind: json}}
destinations:
  kapture: {{vendor: kapture, sandbox: true}}
  kapture-{SMILE}: {{vendor: kapture, sandbox: true}}
"""
MAPPING = """
source: partner
destination: kapture
action: create_ticket
fields:
  title: "{{ payload.title }}"
"""


class Latin1Store(MemoryStore):
    """An in-memory store that keeps only Latin-1, as a LATIN1 PostgreSQL database does; `fails`: asking fails."""

    encoding = "LATIN1"

    def __init__(self, fails: bool = False) -> None:
        super().__init__()
        self.fails = fails
        self.closed = False

    async def unheld(self, texts: Iterable[str]) -> list[str]:
        if self.fails:
            raise StoreUnavailable("postgresql: connection lost")
        return sorted({t for t in texts if any(ord(c) > 0xFF for c in t)})

    async def close(self) -> None:
        self.closed = True
        await super().close()


@pytest.fixture
def config(tmp_path: Path) -> Config:
    (tmp_path / "bridge.yaml").write_text(CONFIG)
    (tmp_path / "mappings").mkdir()
    return load_config(tmp_path / "bridge.yaml", {}, registries=REGISTRIES)


def use(monkeypatch: pytest.MonkeyPatch, store: Store) -> None:
    monkeypatch.setattr(common, "open_store", lambda config, owner: store)


async def body_ran(ran: list[Store], store: Store) -> int:
    ran.append(store)
    return 0


async def test_a_verb_that_changes_the_store_refuses_a_name_the_store_cannot_keep(
    config: Config, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    """A destination named with 😀: as `serve` refuses to start, a verb that changes the store prints the same error
    (the file and line, the name, the encoding, what to do), says nothing was changed, exits 2 without running,
    and closes the store."""
    store = Latin1Store()
    use(monkeypatch, store)
    ran: list[Store] = []
    code = await common.with_store(config, lambda s: body_ran(ran, s), changes=True)
    err = capsys.readouterr().err
    assert (code, ran, store.closed) == (2, [], True)
    first, second = err.splitlines()
    assert first.startswith(f"{config.file}:7:3: destinations[\"kapture-{SMILE}\"]: destination name "
                            "'kapture-\\U0001f600' holds characters the database's encoding, LATIN1, has no equivalent "
                            "for")
    assert second.startswith("nothing was changed: a server with this config refuses to start on this store")


async def test_a_verb_that_only_reads_names_the_problem_and_goes_on(
    config: Config, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    """The same name, for a verb that only reads: the error is printed, with that the server would refuse to start,
    and the verb runs (its exit code stands)."""
    store = Latin1Store()
    use(monkeypatch, store)
    ran: list[Store] = []
    assert await common.with_store(config, lambda s: body_ran(ran, s)) == 0
    err = capsys.readouterr().err
    assert ran == [store]
    assert "destination name 'kapture-\\U0001f600' holds characters" in err
    assert "a server with this config refuses to start on this store" in err and "this verb goes on" in err


async def test_the_names_of_the_mappings_a_verb_loaded_are_checked_too(
    config: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    """With a config whose names the store keeps, the mapping names a verb loaded (replay --rerender) are checked:
    one named with 😀 is refused at its file; one named with é (Latin-1) is not."""
    config = load_config(_write(tmp_path, CONFIG.replace(f"kapture-{SMILE}", "kapture-2")), {},
                         registries=REGISTRIES)
    (tmp_path / "mappings" / "billing.yaml").write_text(f"name: billing-{SMILE}\n" + MAPPING)
    (tmp_path / "mappings" / "café.yaml").write_text(MAPPING)
    mappings = load_mappings(config)
    use(monkeypatch, Latin1Store())
    ran: list[Store] = []
    assert await common.with_store(config, lambda s: body_ran(ran, s), changes=True, mappings=mappings) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"{tmp_path / 'mappings' / 'billing.yaml'}: name: mapping name 'billing-\\U0001f600' holds")
    assert "café" not in err and ran == []


async def test_names_the_store_keeps_print_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    config = load_config(_write(tmp_path, CONFIG.replace(f"kapture-{SMILE}", "kapture-é")), {}, registries=REGISTRIES)
    use(monkeypatch, Latin1Store())
    ran: list[Store] = []
    assert await common.with_store(config, lambda s: body_ran(ran, s), changes=True) == 0
    assert capsys.readouterr().err == "" and len(ran) == 1


async def test_a_check_the_store_cannot_answer_stops_a_verb_that_changes_it(
    config: Config, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    store = Latin1Store(fails=True)
    use(monkeypatch, store)
    ran: list[Store] = []
    assert await common.with_store(config, lambda s: body_ran(ran, s), changes=True) == 2
    assert capsys.readouterr().err == ("cannot check the names the store keeps: postgresql: connection lost\n")
    assert ran == [] and store.closed


async def test_a_verb_that_only_reads_goes_on_when_the_check_cannot_be_answered(
    config: Config, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    """As past a name the store cannot keep: reading is how a store whose server will not start is looked into."""
    store = Latin1Store(fails=True)
    use(monkeypatch, store)
    ran: list[Store] = []
    assert await common.with_store(config, lambda s: body_ran(ran, s)) == 0
    assert capsys.readouterr().err == ("cannot check the names the store keeps: postgresql: connection lost\n")
    assert len(ran) == 1 and store.closed


def _write(folder: Path, text: str) -> Path:
    (folder / "bridge.yaml").write_text(text)
    (folder / "mappings").mkdir(exist_ok=True)
    return folder / "bridge.yaml"
