"""`ticketbridge deliveries list|show` and `ticketbridge replay`."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import shlex
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from typing import Any, TypeVar

import aiohttp
import msgspec

from bridge import USER_AGENT
from bridge.app import load_mappings, load_stored_mappings
from bridge.cli.common import at_least, between, config_from, print_errors, store_arguments, with_store
from bridge.cli.remote import TOKEN_ENV, AdminClient, DeliveryReader, RemoteError, check_url, token_from_env
from bridge.config import Config
from bridge.console.models import (
    CONVERSATION_PAGE,
    LAST,
    MAX_PAGE,
    REPLAY_MOST,
    BadCursor,
    ConversationView,
    MarkDeadBody,
    MarkSucceededBody,
    Refusal,
    ReplayBody,
    ReplayResult,
    ResetConversationBody,
    SetTicketBody,
)
from bridge.delivery.orphans import mark_dead
from bridge.delivery.replay import (
    REPLAY_CHUNK,
    ReplayStopped,
    mark_succeeded,
    replay_deliveries,
    reset_conversation,
    set_ticket,
    unknown_filter,
)
from bridge.errors import ErrorList, NotFound, named
from bridge.mapping.mappingset import MappingSet
from bridge.mapping.testing import run_tests
from bridge.store.base import STATUSES, DeliveryFilter, DeliveryRow, Store, StoredMappingSet

T = TypeVar("T")

URL_HELP = f"a running server's address: go through its admin API, with the token in ${TOKEN_ENV}"


LIST_MOST = 10_000
"""The most deliveries `deliveries list` lists at once (--limit): they are held together (the store's read, or the
API's pages joined) and the table lines its columns up over all of them, so that a --limit of millions on a large
store held every row. More are listed a listing at a time, each after the last one's id (--before)."""
LIST_MOST_WHY = ("the deliveries listed are held at once (and a table lines up over them all); list more a "
                 "listing at a time, each with --before the last id the one before listed")


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    d = sub.add_parser("deliveries", help="list and inspect deliveries")
    dsub = d.add_subparsers(dest="action", required=True, metavar="ACTION")
    lst = dsub.add_parser("list", parents=[common], help="list deliveries, newest first")
    lst.add_argument("--status", choices=STATUSES)
    lst.add_argument("--destination")
    lst.add_argument("--source")
    lst.add_argument("--mapping")
    lst.add_argument("--conversation", help="only this conversation's deliveries (its id, `mapping|key`)")
    lst.add_argument("--limit", type=between(1, LIST_MOST, LIST_MOST_WHY), default=50,
                     help=f"how many deliveries, at most {LIST_MOST}")
    lst.add_argument("--before", help="page: only deliveries older than this id")
    lst.add_argument("--json", action="store_true", help="one JSON object per line")
    lst.add_argument("--url", help=URL_HELP)
    lst.set_defaults(run=run_list)
    show = dsub.add_parser("show", parents=[common], help="one delivery: its event, body and attempts")
    show.add_argument("id")
    show.add_argument("--json", action="store_true")
    show.add_argument("--url", help=URL_HELP)
    show.set_defaults(run=run_show)
    mark = dsub.add_parser("mark-succeeded", parents=[common],
                           help="record that a delivery (e.g. one held after an unknown outcome) reached the vendor")
    _add_ticket_arguments(mark, "why, kept with the delivery's attempts (and the audit log, with --url)")
    mark.set_defaults(run=run_mark_succeeded)
    _add_mark_dead(dsub, common)
    given = dsub.add_parser("set-ticket", parents=[common],
                            help="give a succeeded create whose answer named no ticket (NO TICKET ID) the ticket found "
                                 "at the vendor; its conversation takes it while it has none")
    _add_ticket_arguments(given, "why, kept with the delivery's attempts and the audit log")
    given.set_defaults(run=run_set_ticket)
    e = sub.add_parser("events", help="inspect events")
    esub = e.add_subparsers(dest="action", required=True, metavar="ACTION")
    unmatched = esub.add_parser("unmatched", parents=[common],
                                help="events no mapping took (none for their source, or every `when` false)")
    unmatched.add_argument("--limit", type=at_least(1), default=50)
    unmatched.add_argument("--before", help="page: only events older than this id")
    unmatched.add_argument("--json", action="store_true", help="one JSON object per line")
    unmatched.set_defaults(run=run_unmatched)
    _add_conversations(sub, common)
    r = sub.add_parser("replay", parents=[common], help="send deliveries again (by id, or every dead one of a filter)")
    r.add_argument("ids", nargs="*", help="delivery ids")
    r.add_argument("--destination", help="replay the deliveries of this destination")
    r.add_argument("--status", choices=("dead", "succeeded"), default="dead",
                   help="with --destination: which deliveries (default: dead)")
    r.add_argument("--dry-run", action="store_true", help="list what would be replayed")
    r.add_argument("--rerender", action="store_true",
                   help="render each delivery's event again with the current mappings before sending it")
    r.add_argument("--mapping", metavar="NEW",
                   help="with --rerender: render with this loaded mapping instead of each delivery's own (a renamed "
                        "mapping's stranded deliveries); it must take their source and feed their destination and "
                        "action, and they belong to it from then on")
    r.add_argument("--url", help=URL_HELP + " (re-rendering uses the server's mappings)")
    r.set_defaults(run=run_replay)


def _add_conversations(sub: Any, common: argparse.ArgumentParser) -> None:
    c = sub.add_parser("conversations", help="inspect conversations (email threads, chats)")
    csub = c.add_subparsers(dest="action", required=True, metavar="ACTION")
    cshow = csub.add_parser("show", parents=[common], help="a conversation's ticket, messages and deliveries")
    cshow.add_argument("key", help="the conversation key (e.g. mail:<root message id>, chat:<id>) or `mapping|key`")
    cshow.add_argument("--limit", type=between(1, MAX_PAGE),
                       help=f"how many of each conversation's deliveries a page lists (default {CONVERSATION_PAGE}, "
                            f"or {MAX_PAGE} with --all; at most {MAX_PAGE})")
    place = cshow.add_mutually_exclusive_group()
    place.add_argument("--cursor", help="the page a cursor printed by an earlier `conversations show` reads (its "
                                        "conversation's next or previous page)")
    place.add_argument("--last", action="store_true",
                       help="each conversation's last page, its newest deliveries (the cursor it prints reads the "
                            "page before)")
    cshow.add_argument("--all", action="store_true",
                       help="every delivery of each conversation (from --cursor's page on, when given): page after "
                            "page, each printed as it is read")
    cshow.add_argument("--json", action="store_true")
    cshow.add_argument("--url", help=URL_HELP)
    cshow.set_defaults(run=run_conversation)
    reset = csub.add_parser("reset", parents=[common],
                            help="detach a conversation from its ticket, gone at the vendor (deleted, merged): its "
                                 "next message, or a dead one replayed, creates a ticket")
    reset.add_argument("key", help="the conversation key (as `conversations show` takes it)")
    reset.add_argument("--reason", help="why, kept in the audit log")
    reset.add_argument("--url", help=URL_HELP + " (the change is audited there)")
    reset.set_defaults(run=run_reset_conversation)


def _add_ticket_arguments(parser: argparse.ArgumentParser, note_help: str) -> None:
    """The arguments of an operator's ticket for one delivery (mark-succeeded, set-ticket): what the admin API's
    body takes (MarkSucceededBody), and --url."""
    parser.add_argument("id")
    parser.add_argument("--ticket-id", required=True, help="the ticket it made at the vendor")
    parser.add_argument("--ticket-key", help="the vendor's second reference, where it has one (LeadSquared's Key)")
    parser.add_argument("--note", help=note_help)
    parser.add_argument("--url", help=URL_HELP + " (the change is audited there)")


def _add_mark_dead(dsub: Any, common: argparse.ArgumentParser) -> None:
    dead = dsub.add_parser("mark-dead", parents=[common],
                           help="mark the pending deliveries of a destination no longer configured dead, with a reason")
    dead.add_argument("--destination", required=True, help="a destination removed from bridge.yaml")
    dead.add_argument("--status", choices=("pending",), default="pending",
                      help="which deliveries (pending; one in flight is pending again once its lease runs out)")
    dead.add_argument("--reason", required=True,
                      help="why, kept as each delivery's last error (and audited, with --url)")
    dead.add_argument("--url", help=URL_HELP + " (the change is audited there)")
    dead.set_defaults(run=run_mark_dead)


def _ticket(ticket_id: str | None, key: str | None, uuid: str | None, none: str = "-") -> str:
    """A ticket's id, then its key and uuid where the vendor gave them: `143 (key #143, uuid 2f…)`."""
    more = ", ".join(f"{name} {value}" for name, value in (("key", key), ("uuid", uuid)) if value)
    return f"{ticket_id or none}{f' ({more})' if more else ''}"


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _with_server(url: str, body: Any) -> int:
    async def run() -> int:
        async with aiohttp.ClientSession(headers={"User-Agent": USER_AGENT}) as session:
            code: int = await body(AdminClient(url, token_from_env(), session))
            return code

    try:
        check_url(url)
        return asyncio.run(run())
    except RemoteError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    except NotFound as exc:  # a name no path segment can carry (`.`, `..`): no record has it
        print(str(exc), file=sys.stderr)
        return 1


def _with_store(args: argparse.Namespace, body: Any, config: Config | None = None, *, changes: bool = False,
                mappings: MappingSet | None = None) -> int:
    """Run `body` on the server at --url, else on the store of `config` (loaded from the args when not given),
    which it `changes` or only reads (see `with_store`: the names the store keeps are checked first)."""
    if getattr(args, "url", None):
        return _with_server(args.url, body)
    config = config or config_from(args)
    if config is None:
        return 2
    return asyncio.run(with_store(config, body, store_arguments(args), changes=changes, mappings=mappings))


def _json_lines(items: Iterable[msgspec.Struct]) -> None:
    """`--json`: each item as one JSON object on its own line."""
    for item in items:
        sys.stdout.write(msgspec.json.encode(item).decode() + "\n")


def kind_of(r: DeliveryRow) -> str:
    """create / follow_up once sent; `waiting` while a later message of a conversation waits for its ticket."""
    if r.waiting:
        return "waiting"
    return r.role or ("-" if r.conversation is None else "queued")


def doubt_of(r: DeliveryRow) -> str:
    """What an operator must know of unknown outcomes: in doubt (an earlier send may have made a ticket), or
    possible duplicates (sent again after one); empty otherwise."""
    notes = []
    if r.in_doubt_since_ms is not None:
        notes.append(f"in doubt since {_when(r.in_doubt_since_ms)}")
    if r.duplicates:
        notes.append(f"POSSIBLE DUPLICATE x{r.duplicates}")
    return ", ".join(notes)


def _table(rows: list[DeliveryRow]) -> str:
    head = ("ID", "STATUS", "DESTINATION", "MAPPING", "KIND", "TRIES", "TICKET", "CONVERSATION", "UPDATED",
            "LAST ERROR")
    cells = [head] + [
        (r.id, r.status + (f" ({doubt_of(r)})" if doubt_of(r) else ""), r.destination, r.mapping, kind_of(r),
         str(r.attempts), r.ticket_id or "-",
         (r.conversation or "-").split("|", 1)[-1][:60], _when(r.updated_at_ms), (r.last_error or "")[:60])
        for r in rows
    ]
    widths = [max(len(c[i]) for c in cells) for i in range(len(head) - 1)]
    return "\n".join("  ".join(c[i].ljust(widths[i]) for i in range(len(head) - 1)) + "  " + c[-1] for c in cells)


def run_list(args: argparse.Namespace) -> int:
    async def body(store: DeliveryReader) -> int:
        rows = await store.list_deliveries(DeliveryFilter(
            status=args.status, destination=args.destination, source=args.source, mapping=args.mapping,
            conversation=args.conversation, limit=args.limit, before_id=args.before))
        if args.json:
            _json_lines(rows)
        elif rows:
            print(_table(rows))
        else:
            print("no deliveries match", file=sys.stderr)
        return 0

    return _with_store(args, body)


def run_show(args: argparse.Namespace) -> int:
    async def body(store: DeliveryReader) -> int:
        try:
            detail = await store.get_delivery(args.id)
        except NotFound as exc:
            print(str(exc), file=sys.stderr)
            return 1
        if args.json:
            _json_lines([detail])
            return 0
        d = detail.delivery
        print(f"delivery  {d.id}  {d.status}\n"
              f"event     {d.event_id}  source={d.source} received={detail.event.received_at.isoformat()}\n"
              f"mapping   {d.mapping} (version {d.mapping_version}) -> {d.destination} {d.action}\n"
              f"ticket    {_ticket(d.ticket_id, d.ticket_key, d.ticket_uuid)}\n"
              f"kind      {kind_of(d)}"
              + (" (waiting for the conversation's ticket: an earlier message is not delivered yet)"
                 if d.waiting else "") + "\n"
              f"conversation {d.conversation or '-'}\n"
              f"attempts  {d.attempts}",
              f"; next due {_when(d.next_attempt_at_ms)}" if d.status == "pending" else "",
              sep="")
        if d.last_error:
            print(f"error     {d.last_error}")
        if d.unknowns or d.in_doubt_since_ms is not None:
            print(f"unknown   {d.unknowns} send(s) whose outcome was unknown (the vendor may have acted on them)")
        if d.in_doubt_since_ms is not None:
            print(f"in doubt  since {_when(d.in_doubt_since_ms)}: the vendor may hold its ticket; check, then "
                  f"`ticketbridge replay {d.id}` (send again) or `ticketbridge deliveries mark-succeeded {d.id} "
                  "--ticket-id ID`")
        if d.duplicates:
            print(f"POSSIBLE DUPLICATE: sent again {d.duplicates} time(s) after an unknown outcome "
                  "(on_unknown: resend); the vendor may hold more than one ticket for it")
        if d.ticket_missing:
            print("NO TICKET ID: the vendor took it but its answer named no ticket"
                  + ("; the conversation has none, so its next message is sent as a new ticket" if d.conversation
                     else "") + f"; found it at the vendor? `ticketbridge deliveries set-ticket {d.id} --ticket-id T`")
        print("body:")
        print(msgspec.json.format(msgspec.json.encode(detail.body), indent=2).decode())
        print("payload:")
        print(msgspec.json.format(msgspec.json.encode(detail.event.payload), indent=2).decode())
        for a in detail.attempts:
            print(f"  #{a.n} {_when(a.started_at_ms)} {a.duration_ms:.0f}ms HTTP {a.http_status or '-'} "
                  f"{a.classification}" + (f": {a.error}" if a.error else ""))
            if a.response_excerpt:
                print(f"     {a.response_excerpt[:200]}")
        return 0

    return _with_store(args, body)


async def _refusable(call: Awaitable[T]) -> T | None:
    """The server's answer to an operator's change, or None where it refused it for the state of what it changes
    (409), said on stderr: exit 1, as when run on the store. Any other error is raised: no such record (NotFound,
    exit 1, `_with_server`), or the server could not be asked (exit 2)."""
    try:
        return await call
    except RemoteError as exc:
        if exc.status != 409:
            raise
        print(str(exc), file=sys.stderr)
        return None


def run_set_ticket(args: argparse.Namespace) -> int:
    def done(conversation: str | None) -> int:
        print(f"{args.id}: ticket {args.ticket_id} set"
              + (f"; conversation {conversation} follows up on it from now on" if conversation else ""))
        return 0

    async def local(store: Store) -> int:
        try:
            why_not = await set_ticket(store, args.id, args.ticket_id, ticket_key=args.ticket_key,
                                       by=f"cli:{getpass.getuser()}", note=args.note, audit=True)
            if why_not is None:
                return done((await store.get_delivery(args.id)).delivery.conversation)
        except NotFound as exc:
            print(str(exc), file=sys.stderr)
            return 1
        print(f"{args.id}: ticket {args.ticket_id} not set: {why_not}", file=sys.stderr)
        return 1

    async def remote(client: AdminClient) -> int:
        view = await _refusable(client.set_ticket(args.id, SetTicketBody(ticket_id=args.ticket_id,
                                                                         ticket_key=args.ticket_key, note=args.note)))
        return 1 if view is None else done(view.delivery.conversation)

    if args.url:
        return _with_server(args.url, remote)
    return _with_store(args, local, changes=True)


def run_mark_succeeded(args: argparse.Namespace) -> int:
    async def local(store: Store) -> int:
        try:
            why_not = await mark_succeeded(store, args.id, args.ticket_id, ticket_key=args.ticket_key,
                                           by=f"cli:{getpass.getuser()}", note=args.note)
        except NotFound as exc:
            print(str(exc), file=sys.stderr)
            return 1
        if why_not is not None:
            print(f"{args.id}: not marked: {why_not}", file=sys.stderr)
            return 1
        print(f"{args.id}: marked succeeded with ticket {args.ticket_id}")
        return 0

    async def remote(client: AdminClient) -> int:
        if await _refusable(client.mark_succeeded(args.id, MarkSucceededBody(
                ticket_id=args.ticket_id, ticket_key=args.ticket_key, note=args.note))) is None:
            return 1
        print(f"{args.id}: marked succeeded with ticket {args.ticket_id}")
        return 0

    if args.url:
        return _with_server(args.url, remote)
    return _with_store(args, local, changes=True)


def run_mark_dead(args: argparse.Namespace) -> int:
    def done(marked: int) -> int:
        print(f"{marked} pending deliveries of {args.destination} marked dead; `ticketbridge replay --destination "
              f"{args.destination}` sends them again once it is configured, and retention purges them after its "
              "`dead` limit")
        return 0

    async def remote(client: AdminClient) -> int:
        # Refused (409) when the destination is configured, as on the store.
        result = await _refusable(client.mark_dead(args.destination, MarkDeadBody(reason=args.reason,
                                                                                   status=args.status)))
        return 1 if result is None else done(result.marked)

    if args.url:
        return _with_server(args.url, remote)
    config = config_from(args)
    if config is None:
        return 2
    if args.destination in config.destinations:
        print(f"destination {args.destination!r} is configured: its lane sends its deliveries; remove it from "
              "bridge.yaml (and restart the server) before marking its deliveries dead", file=sys.stderr)
        return 1

    async def local(store: Store) -> int:
        return done(await mark_dead(store, args.destination, by=f"cli:{getpass.getuser()}", reason=args.reason))

    return _with_store(args, local, config, changes=True)


UNMATCHED_PAGE = 16
"""The most events `events unmatched` reads from the store at a time, each page printed before the next is read:
the store reads a page's events at once (each up to DECODE_AT_ONCE_BYTES in its rows, then decoded), so that
--limit 1000 over large mails held a gigabyte or two; a page of 16 holds 16 MiB of rows at most."""


def run_unmatched(args: argparse.Namespace) -> int:
    async def body(store: Store) -> int:
        left, before, shown = args.limit, args.before, 0
        while left > 0:
            asked = min(left, UNMATCHED_PAGE)
            events = await store.list_unmatched(asked, before)
            if args.json:
                _json_lines(events)
            else:
                for ev in events:
                    print(f"{ev.id}  {ev.received_at.strftime('%Y-%m-%d %H:%M:%S')}  {ev.source}  "
                          f"{ev.meta.get('unmatched', 'no delivery')}")
            shown += len(events)
            if len(events) < asked:
                break
            left -= asked
            before = events[-1].id
        if not shown and not args.json:
            print("no unmatched events", file=sys.stderr)
        return 0

    return _with_store(args, body)


Pages = Callable[[str, int, str | None], Awaitable[list[ConversationView]]]
"""(key, limit, cursor) → the conversations' pages: ConversationView.read on a store, or the admin API's."""


async def _show_conversations(args: argparse.Namespace, read: Pages) -> int:
    """`conversations show`: each conversation's page (with --all, every page after it, each printed as it is
    read, so that a conversation of any length takes one page of memory), and the cursors of the pages around."""
    limit = args.limit or (MAX_PAGE if args.all else CONVERSATION_PAGE)
    try:
        found: list[ConversationView] = await read(args.key, limit, LAST if args.last else args.cursor)
    except BadCursor as exc:  # `read` answers an unknown key with none, whatever the cursor
        print(f"--cursor {args.cursor[:100]!r}: {exc}; give one that `conversations show {args.key}` printed, "
              "or none for the first page", file=sys.stderr)
        return 2
    if not found:
        print(f"no conversation {named(args.key)}; keys look like mail:<root message id>, chat:<id>, "
              "ticket:<id>, key:<value>, or mapping|key (see `deliveries list`)", file=sys.stderr)
        return 1
    for view in found:
        c = view.conversation
        if not args.json:
            print(f"conversation {c.id}\n"
                  f"mapping      {c.mapping} -> {c.destination}\n"
                  f"ticket       {_ticket(c.ticket_id, c.ticket_key, c.ticket_uuid, none='- (none yet)')}"
                  + (f" since {_when(c.ticket_at_ms)}" if c.ticket_at_ms else "") + "\n"
                  f"messages     {c.messages} since {_when(c.started_at_ms)}, last {_when(c.last_message_at_ms)}")
        page: ConversationView | None = view
        while page is not None:
            _print_page(args, page)
            if not (args.all and page.more and page.next_cursor):
                break
            try:
                got = await read(c.id, limit, page.next_cursor)
            except BadCursor as exc:  # stale: retention deleted the delivery the page read up to, meanwhile
                print(f"conversation {c.id}: the deliveries after the {page.offset + len(page.deliveries)} printed "
                      f"cannot be read: {exc}", file=sys.stderr)
                return 2
            page = next((v for v in got if v.conversation.id == c.id), None)
        if page is not None and not args.json and not args.all:
            id_ = shlex.quote(c.id)
            if page.prev_cursor:
                print(f"earlier deliveries: `ticketbridge conversations show {id_} --cursor {page.prev_cursor}`")
            if page.more and page.next_cursor:
                print(f"more deliveries follow: `ticketbridge conversations show {id_} --cursor "
                      f"{page.next_cursor}` (the next {limit}), --last for the newest, or --all for every one")
    return 0


def _print_page(args: argparse.Namespace, page: ConversationView) -> None:
    if args.json:
        _json_lines([page])
    elif page.deliveries:
        print(f"deliveries {page.offset + 1}-{page.offset + len(page.deliveries)}, in the order they are sent in")
        print(_table(page.deliveries))


def run_conversation(args: argparse.Namespace) -> int:
    if args.last and args.all:  # said before the store is opened (it may be migrated) or the server asked
        print("--last lists each conversation's last page and --all every page from its first (or from --cursor's): "
              "give one of them", file=sys.stderr)
        return 2

    async def local(store: Store) -> int:
        async def read(key: str, limit: int, cursor: str | None) -> list[ConversationView]:
            return await ConversationView.read(store, key, limit, cursor)

        return await _show_conversations(args, read)

    async def remote(client: AdminClient) -> int:
        async def read(key: str, limit: int, cursor: str | None) -> list[ConversationView]:
            try:
                return await client.get_conversations(key, limit, cursor)
            except NotFound:  # the server's 404, or a key no path segment can carry (`.`, `..`)
                return []

        return await _show_conversations(args, read)

    if args.url:
        return _with_server(args.url, remote)
    return _with_store(args, local)


def run_reset_conversation(args: argparse.Namespace) -> int:
    def done(found: list[tuple[str, str | None]]) -> int:
        if not found:
            print(f"no conversation {named(args.key)}; keys look like mail:<root message id>, chat:<id>, ticket:<id>, "
                  "key:<value>, or mapping|key (see `conversations show`)", file=sys.stderr)
            return 1
        for conversation, ticket in found:
            print(f"conversation {conversation}: ticket {ticket or '- (none)'} detached; its next message, or a "
                  "dead one replayed, creates a ticket")
        return 0

    async def remote(client: AdminClient) -> int:
        try:
            result = await client.reset_conversation(args.key, ResetConversationBody(reason=args.reason))
        except NotFound:  # the server's 404, or a key no path segment can carry (`.`, `..`)
            return done([])
        return done([(c.id, c.ticket_id) for c in result.conversations])

    async def local(store: Store) -> int:
        found = await reset_conversation(store, args.key, by=f"cli:{getpass.getuser()}", reason=args.reason,
                                         audit=True)
        return done([(c.id, c.ticket_id) for c in found])

    if args.url:
        return _with_server(args.url, remote)
    return _with_store(args, local, changes=True)


def _progress(done: int, total: int, started: float) -> None:
    if not sys.stderr.isatty() or total < REPLAY_CHUNK:
        return
    width = 30
    filled = int(width * done / total) if total else width
    rate = done / max(time.monotonic() - started, 1e-6)
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total}  {rate:.0f}/s")
    if done >= total:
        sys.stderr.write("\n")
    sys.stderr.flush()


def run_replay(args: argparse.Namespace) -> int:
    if bool(args.ids) == bool(args.destination):
        print("replay takes delivery ids, or --destination NAME (with --status), not both", file=sys.stderr)
        return 2
    if args.mapping and not args.rerender:
        print(f"--mapping {args.mapping} names the mapping to re-render with: it takes --rerender", file=sys.stderr)
        return 2
    if args.url:
        return _with_server(args.url, lambda client: _replay_remote(client, args))
    mappings: MappingSet | None = None
    used: str | None = None
    vars_: dict[str, Any] = {}
    config = config_from(args)  # its destinations: a delivery to one no longer configured is refused
    if config is None:
        return 2
    if args.rerender:
        in_force = _set_in_force(config)
        if isinstance(in_force, int):
            return in_force
        mappings, used = in_force
        vars_ = config.vars
        if args.mapping and args.mapping not in mappings.mappings:
            print(f"--mapping {args.mapping}: no such mapping in the set re-rendering ({used}); loaded: "
                  f"{', '.join(sorted(mappings.mappings)) or '(none)'}", file=sys.stderr)
            return 2

    async def body(store: Store) -> int:
        ids: list[str] = list(args.ids)
        if args.destination:
            before: str | None = None
            while True:
                rows = await store.list_deliveries(DeliveryFilter(
                    status=args.status, destination=args.destination, limit=5000, before_id=before))
                ids.extend(r.id for r in rows)
                if len(rows) < 5000:
                    break
                before = rows[-1].id
            if not ids and (unknown := unknown_filter({"destination": args.destination},
                                                      {"destination": config.destinations})) is not None:
                print(f"--destination {args.destination}: {unknown[1]}", file=sys.stderr)
                return 2
        started = time.monotonic()
        try:
            moved, refused = await replay_deliveries(store, ids, mappings, vars_, destinations=config.destinations,
                                                     dry_run=args.dry_run, rerender_hint="--rerender",
                                                     progress=lambda done: _progress(done, len(ids), started),
                                                     with_mapping=args.mapping)
        except ReplayStopped as stopped:  # those moved before the error stand: said first
            _report(ReplayResult(dry_run=False, matched=ids, replayed=stopped.moved,
                                 refused=[Refusal(id=i, reason=r) for i, r in sorted(stopped.refused.items())],
                                 mappings_version=mappings.version if mappings is not None else None),
                    "a running server", used)
            left = len(ids) - len(stopped.moved) - len(stopped.refused)
            print(f"the replay stopped there: {stopped.cause}; the other {left} deliveries were not replayed "
                  "(run it again for them: those replayed above are refused as pending)", file=sys.stderr)
            return 2
        return _report(ReplayResult(dry_run=args.dry_run, matched=ids, replayed=moved,
                                    refused=[Refusal(id=i, reason=r) for i, r in sorted(refused.items())],
                                    mappings_version=mappings.version if mappings is not None else None),
                       "a running server", used)

    return _with_store(args, body, config, changes=not args.dry_run, mappings=mappings)


async def _replay_remote(client: AdminClient, args: argparse.Namespace) -> int:
    """`replay --url`: the server replays (and re-renders with its own mappings); the change is audited there. One
    call takes at most REPLAY_MOST deliveries: more ids go in several calls, and a filter's matches are taken
    page by page, each call continuing at the cursor the one before answered, until none are left."""
    filtered: dict[str, Any] = {"destination": args.destination, "status": args.status} if args.destination else {}
    first = ReplayBody(rerender=args.rerender, dry_run=args.dry_run, limit=REPLAY_MOST, rerender_mapping=args.mapping,
                       **filtered)
    ids: list[str] = list(args.ids)
    calls = [msgspec.structs.replace(first, ids=ids[start:start + REPLAY_MOST])
             for start in range(0, len(ids), REPLAY_MOST)] or [first]
    done = ReplayResult(dry_run=args.dry_run, matched=[], replayed=[], refused=[], mappings_version=None)
    versions: list[str] = []
    for call in calls:
        given = call
        while True:
            try:
                got = await client.replay(given)
            except RemoteError:
                if done.matched:  # what the calls before this one did stands: say so before the error
                    _report(done, "the server")
                raise
            done.matched += got.matched
            done.replayed += got.replayed
            done.refused += got.refused
            if got.mappings_version is not None and got.mappings_version not in versions:
                versions.append(got.mappings_version)
            done.mappings_version = ", then ".join(versions) or None
            if got.next_cursor is None:
                break
            _paged(len(done.matched))
            given = msgspec.structs.replace(given, ids=[], cursor=got.next_cursor)
    return _report(done, "the server")


def _paged(matched: int) -> None:
    """A long `replay --url`'s progress, between its calls: how many deliveries matched so far."""
    if sys.stderr.isatty():
        print(f"{matched} matched so far; asking the server for the next ones", file=sys.stderr, flush=True)


def _set_in_force(config: Config) -> tuple[MappingSet, str] | int:
    """The mapping set a local `replay --rerender` renders with, and which one it is: the folder's when it loads
    and passes its tests (as a server's reload takes it), else the last good set the store keeps, which the
    server serves in its place; an exit code (2) when neither is there, the folder's problems printed."""
    problem: ErrorList | str
    try:
        folder = load_mappings(config)
    except ErrorList as exc:
        problem = exc
    else:
        failed = [r for r in run_tests(folder, config.vars) if not r.passed]
        if not folder.mappings and not config.mappings_allow_empty:
            problem = "the mappings folder holds no mapping file"
        elif failed:
            problem = "\n".join([f"{len(failed)} mapping tests failed:"] + [
                f"{r.where}: {r.mapping}: {r.name}: {r.message}" for r in failed])
        else:
            return folder, "the mappings folder's set, which loads and passes its tests"
    kept: list[StoredMappingSet | None] = []

    async def read(store: Store) -> int:
        kept.append(await store.load_mapping_set())
        return 0

    code = asyncio.run(with_store(config, read))
    if code != 0:
        return code
    stored = kept[0] if kept else None
    if stored is None or (not stored.files and not config.mappings_allow_empty):
        if isinstance(problem, ErrorList):
            print_errors(problem)
        else:
            print(problem, file=sys.stderr)
        print("the store keeps no last good set to re-render with instead: fix the mappings (ticketbridge check) "
              "before replaying with --rerender", file=sys.stderr)
        return 2
    try:
        mappings = load_stored_mappings(config, stored.files)
    except ErrorList as exc:
        print_errors(exc)
        print(f"the last good set kept in the store (version {stored.version}) does not load with this config: fix "
              "the mappings (ticketbridge check) before replaying with --rerender", file=sys.stderr)
        return 2
    why = str(problem).splitlines()[0] if str(problem) else "it does not load"
    saved = datetime.fromtimestamp(stored.saved_at_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")
    print(f"the mappings folder's set is not the one a server takes ({why}; `ticketbridge check` shows all): "
          f"re-rendering with the last good set kept in the store, version {stored.version} (saved {saved} UTC)",
          file=sys.stderr)
    return mappings, f"the last good set kept in the store, saved {saved} UTC"


def _report(result: ReplayResult, sender: str, used: str | None = None) -> int:
    """What a replay did (or, on a dry run, would do): the ids, each refusal with its reason, and the count;
    exit 1 when some were refused. `used` says which mapping set re-rendered them."""
    if result.dry_run:
        for i in result.matched:
            print(i)
        for refusal in result.refused:
            print(f"{refusal.id}: would not be replayed: {refusal.reason}", file=sys.stderr)
        print(f"{len(result.matched) - len(result.refused)} deliveries would be replayed", file=sys.stderr)
        return 0
    for refusal in result.refused:
        print(f"{refusal.id}: not replayed: {refusal.reason}", file=sys.stderr)
    rerendered = (f" (re-rendered with mappings version {result.mappings_version}"
                  + (f": {used}" if used else "") + ")") if result.mappings_version else ""
    print(f"replayed {len(result.replayed)} of {len(result.matched)} deliveries{rerendered}; {sender} sends them "
          "within seconds")
    return 0 if not result.refused else 1
