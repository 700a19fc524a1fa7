"""What every verb shares: loading the config, reporting its errors and opening the store as a client."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from bridge.config import Config, load_config, resolve_config_path
from bridge.errors import BridgeError, ConfigError, ErrorList, Located, StoreLocked, StoreRefused, StoreUnavailable
from bridge.folders import folder_problem
from bridge.kept_names import config_names, mapping_names, unheld_names
from bridge.mapping.mappingset import MappingSet
from bridge.registries import REGISTRIES
from bridge.store import open_store
from bridge.store.base import Store
from bridge.yamlfile import KeyPath, format_path
from handlers.registry import saves_attachments


def config_from(args: argparse.Namespace) -> Config | None:
    """The config, or None after printing every error to stderr."""
    path = resolve_config_path(args.config)
    problem = None if path is None else config_file_problem(path)
    if problem is not None:
        print(f"{path}: {problem}", file=sys.stderr)
        return None
    try:
        return load_config(path, registries=REGISTRIES)
    except ErrorList as exc:
        print_errors(exc)
        return None


def config_file_problem(path: Path) -> str | None:
    """Why `path`, given as the config, cannot be read as one; None when it is a file."""
    if path.is_file():
        return None
    if path.is_dir():
        return "is a folder, not a config file; give the path of a YAML file such as bridge.yaml"
    return "no such config file"


def config_error(config: Config, path: KeyPath, message: str) -> Located:
    """An error at the config's key `path`: with its file and line (a config built in code has neither)."""
    if config.document is not None:
        return config.document.error(path, message)
    return ConfigError(message, file=None if config.file is None else str(config.file), path=format_path(path))


def attachments_problem(config: Config, *, warning: bool = False) -> Located | None:
    """Why email attachments could not be written to the config's `attachments.dir` on this machine (told without
    writing anything: see folder_problem), at that key; None when nothing stands in the way, or when no source of
    the config carries files (JSON webhooks, forms and chats never write there, and a read-only folder such as
    systemd's ProtectSystem=strict makes of the default one is no problem for them). A server would answer every
    email with a file 503 until it is fixed, so `serve` refuses to start; `check`, which may run on another
    machine than the server, says it as a `warning`."""
    writers = [f"{name} ({source.kind})" for name, source in sorted(config.sources.items())
               if saves_attachments(source.kind)]
    if not writers:
        return None
    folder = config.attachments_dir
    why = folder_problem(folder)
    if why is None:
        return None
    shown = config.shown_setting(("attachments", "dir"), folder)
    if shown != str(folder):  # from an environment variable: neither it nor what folder_problem says of it shown
        shown, why = f"({shown})", "it is missing or not writable"
    return config_error(config, ("attachments", "dir"),
                        f"{'warning: ' if warning else ''}the attachments folder {shown} cannot be written"
                        f"{' here' if warning else ''}: {why}; source{'s' if len(writers) > 1 else ''} "
                        f"{', '.join(writers)} save{'' if len(writers) > 1 else 's'} the files of "
                        f"{'their' if len(writers) > 1 else 'its'} events there; set attachments.dir to a folder "
                        "this process can write")


def at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number no smaller than `minimum`, else an error naming the value."""

    def parse(text: str) -> int:
        try:
            value: int | None = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= {minimum}")
        return value

    return parse


def between(minimum: int, maximum: int, why: str = "") -> Callable[[str], int]:
    """An argparse type: a whole number from `minimum` to `maximum`, else an error naming the value (and `why`, when
    given: why the bound, and what to do instead)."""

    def parse(text: str) -> int:
        try:
            value: int | None = int(text)
        except ValueError:
            value = None
        if value is None or not minimum <= value <= maximum:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number from {minimum} to {maximum}"
                                             + (f": {why}" if why else ""))
        return value

    return parse


def print_errors(exc: BridgeError) -> None:
    errors = exc.errors if isinstance(exc, ErrorList) else [exc]
    for err in errors:
        print(str(err), file=sys.stderr)
    if len(errors) > 1:
        print(f"{len(errors)} errors", file=sys.stderr)


STORE_ARGUMENTS = {"id": "ID", "ids": "ID", "key": "KEY", "destination": "--destination", "source": "--source",
                   "mapping": "--mapping", "conversation": "--conversation", "limit": "--limit",
                   "before": "--before", "ticket_id": "--ticket-id", "ticket_key": "--ticket-key", "note": "--note",
                   "reason": "--reason"}
"""The arguments whose values a verb hands to the store, as its usage names them."""


def store_arguments(args: argparse.Namespace) -> str:
    """The values given to the arguments a verb hands to the store (`--limit 10`, `ID 'dlv_1'`), for an error that
    says the store refused one of them."""
    given = []
    for name, flag in STORE_ARGUMENTS.items():
        value = getattr(args, name, None)
        for one in value if isinstance(value, list) else [] if value is None else [value]:
            given.append(f"{flag} {ascii(one) if isinstance(one, str) else one}")
    return ", ".join(given)


def migrated_note(names: tuple[str, ...]) -> str:
    """What a verb says on stderr when opening the store brought its schema up to date: a server of the older
    version beside it goes on, but the migrations' locks and what an older server does not keep are the upgrade's
    (docs/operations.md, "Upgrades and migrations")."""
    return (f"the store's schema was brought up to this version by {len(names)} "
            f"migration{'s' if len(names) > 1 else ''}: {', '.join(names)} (see docs/operations.md, "
            '"Upgrades and migrations", for what a server of the older version running on this store does beside it)')


async def with_store(config: Config, body: Callable[[Store], Awaitable[int]], given: str = "", *,
                     changes: bool = False, mappings: MappingSet | None = None) -> int:
    """Open the config's store beside a running server (not as its owner), run `body` on it and close it; the
    exit code `body` gives, or 2 with the reason on stderr when the store cannot be opened, or when it refuses a
    value given on the command line for its data (one of `given`, the arguments handed to it): the same value is
    refused on every try. A store whose schema its opening migrated says so on stderr first (`migrated_note`).

    Once open, the names the store keeps are checked as `serve` checks them (`kept_names`: the config's sources,
    destinations and read tokens, and the names of `mappings` when the verb loaded them): a name the database's
    encoding has no equivalent for (😀 in a LATIN1 database) is printed as `serve` says it. A verb that `changes`
    the store then exits 2 having changed nothing, since the server of this config refuses to start on it; one
    that only reads (or only deletes, as `purge`, which writes no name) goes on, as it is what looks into a
    store whose server will not start."""
    store = open_store(config, owner=False)
    try:
        await store.open()
    except (StoreUnavailable, StoreLocked) as exc:
        print(f"cannot open the store: {exc}", file=sys.stderr)
        return 2
    if store.migrated:
        print(migrated_note(store.migrated), file=sys.stderr)
    try:
        if not await names_kept(store, config, mappings, changes=changes):
            return 2
        return await body(store)
    except StoreRefused as exc:
        print(f"the store refused {'a value given: ' + given if given else 'a value given'} ({exc.code}): it can be "
              "neither kept nor looked up as given, and is refused the same way on every try; nothing was changed",
              file=sys.stderr)
        return 2
    finally:
        await store.close()


async def names_kept(store: Store, config: Config, mappings: MappingSet | None, *, changes: bool) -> bool:
    """`serve`'s check of the names the store keeps, for a verb on the open `store`: False (the verb is not to run)
    when the store cannot keep one, or the check cannot be made, and the verb `changes` the store; each name it
    cannot keep, and why not, printed to stderr."""
    names = [*config_names(config), *([] if mappings is None else mapping_names(mappings))]
    try:
        unheld = await unheld_names(store, names)
    except StoreUnavailable as exc:
        print(f"cannot check the names the store keeps: {exc}", file=sys.stderr)
        return not changes  # a verb that only reads goes on, as past a name the store cannot keep
    if not unheld:
        return True
    print_errors(ErrorList(unheld))
    if changes:
        print("nothing was changed: a server with this config refuses to start on this store, and so does this "
              "verb; rename what is named above", file=sys.stderr)
        return False
    print("a server with this config refuses to start on this store (rename what is named above); this verb goes "
          "on, as it writes none of these names", file=sys.stderr)
    return True
