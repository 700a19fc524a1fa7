"""The names the store keeps on its rows (sources, destinations, mapping names, read token names), checked against
what the store can hold: a PostgreSQL database whose encoding is not UTF-8 (LATIN1) has no equivalent for most
characters, and would refuse every event, delivery or audit entry naming one of them. Checked when the server starts
(it then refuses to), on each hot reload of the mappings (the old set then stays) and by each CLI verb that opens the
store (bridge.cli.common.with_store: a verb that changes the store then refuses to run)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from bridge.config import Config
from bridge.errors import ConfigError, Located, MappingError
from bridge.mapping.mappingset import MappingSet
from bridge.names import escaped
from bridge.store.base import Store
from bridge.yamlfile import KeyPath, format_path


@dataclass(frozen=True)
class KeptName:
    """A name the store keeps, what it names, and the error at the place it is given."""

    name: str
    what: str
    error: Callable[[str], Located]


def config_names(config: Config) -> list[KeptName]:
    """The names the config gives that the store keeps: its sources, destinations and read tokens."""

    def at(path: KeyPath) -> Callable[[str], Located]:
        doc = config.document
        if doc is not None:
            return lambda message: doc.error(path, message)
        file = None if config.file is None else str(config.file)
        return lambda message: ConfigError(message, file=file, path=format_path(path))

    return [*(KeptName(name, "source name", at(("sources", name))) for name in config.sources),
            *(KeptName(name, "destination name", at(("destinations", name))) for name in config.destinations),
            *(KeptName(name, "read token name", at(("admin", "read_tokens", name)))
              for name in config.admin.read_tokens)]


def mapping_names(mappings: MappingSet) -> list[KeptName]:
    """The names of `mappings`, each at its file (at its `name:` when it has one, else named for the file)."""

    def at(file: str, named: bool) -> Callable[[str], Located]:
        return lambda message: MappingError(message, file=file, path="name" if named else None)

    return [KeptName(m.name, "mapping name" if m.spec.name is not None else "mapping name (its file's name without "
                     "the extension, as it has no `name:`)", at(m.file, m.spec.name is not None))
            for m in mappings.mappings.values()]


async def unheld_names(store: Store, names: list[KeptName]) -> list[Located]:
    """An error for each of `names` the store cannot keep, naming it, the database's encoding and what to do."""
    unheld = set(await store.unheld(n.name for n in names))
    encoding = store.encoding
    return [n.error(f"{n.what} {escaped(n.name)} holds characters the database's encoding, {encoding}, has no "
                    "equivalent for: every event, delivery or audit entry naming it would be refused (SQLSTATE "
                    f"22P05); rename it using only characters {encoding} holds, or keep the store in a UTF-8 "
                    "database (CREATE DATABASE … ENCODING 'UTF8')")
            for n in names if n.name in unheld]
