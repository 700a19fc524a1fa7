"""The `schema` a PostgreSQL store url may name (`postgresql://…?schema=name`): ticketbridge's tables in their own
schema. Read here, apart from the store, so that the config's loading checks it (file and line) without asyncpg."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from bridge.errors import VALUE, ValueProblem

_SCHEMA = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def split_schema(dsn: str) -> tuple[str, str | None]:
    """`postgresql://…?schema=name` → (the DSN without it, name). ValueProblem, about the name, when it is not a
    lower-case identifier (it is written into statements as one)."""
    parts = urlsplit(dsn)
    query = parse_qsl(parts.query, keep_blank_values=True)
    schema = next((v for k, v in query if k == "schema"), None)
    rest = urlencode([(k, v) for k, v in query if k != "schema"])
    if schema is not None and not _SCHEMA.match(schema):
        raise ValueProblem(f"schema {VALUE} in the store url must be a lower-case identifier, e.g. ticketbridge",
                           schema)
    return urlunsplit(parts._replace(query=rest)), schema
