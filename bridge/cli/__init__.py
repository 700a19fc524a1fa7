"""The `ticketbridge` command."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from bridge import __version__
from bridge.cli import check, deliveries, doctor, kapture, mapping_tools, purge, serve
from bridge.logs import cli_logging

SERVERS = ("serve", "sandbox")
"""The verbs that run a server: they log where the config says (stdout); every other verb prints its results there
and logs on stderr (`cli_logging`)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ticketbridge", description=__doc__)
    parser.add_argument("--version", action="version", version=f"ticketbridge {__version__}")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-c", "--config", help="config file (default: ./bridge.yaml, else the shipped default)")
    serve.add_parsers(sub, common)
    check.add_parsers(sub, common)
    doctor.add_parsers(sub, common)
    deliveries.add_parsers(sub, common)
    mapping_tools.add_parsers(sub, common)
    kapture.add_parsers(sub, common)
    purge.add_parsers(sub, common)
    return parser


def _not_utf8(argv: Sequence[str]) -> list[str]:
    """The arguments holding bytes that are not UTF-8 (which Python hands over as lone surrogates), escaped."""
    return [ascii(os.fsencode(a))[1:] for a in argv if any("\udc80" <= c <= "\udcff" for c in a)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.verb in SERVERS:
            code: int = args.run(args)
        else:
            with cli_logging():
                code = args.run(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    except UnicodeEncodeError:
        # A file name may be any bytes, but an id, a filter or a note goes to the store or a URL as text: an
        # argument that is not UTF-8 fails there, and is named here instead of a traceback.
        bad = _not_utf8(sys.argv[1:] if argv is None else argv)
        if not bad:
            raise
        print(f"ticketbridge: {', '.join(bad)}: not valid UTF-8; ids, filters and notes are UTF-8 text",
              file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
