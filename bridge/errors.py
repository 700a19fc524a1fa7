"""The exception tree: one root, and errors that say where and what went wrong."""

from __future__ import annotations

from collections.abc import Iterable


class BridgeError(Exception):
    """A ticketbridge error."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


SHOWN_CHARS = 60
"""The most characters of a bad value (or of the text it was written as) an error quotes."""
VALUE = "{value}"
"""Where the message of a ValueProblem (or of bridge/yamlfile.py's KeyValueError) puts the value it is about."""


def quoted(value: object) -> str:
    """`value` as an error quotes one it was given as it is: text quoted and cut at SHOWN_CHARS, else its repr, cut."""
    if isinstance(value, str):
        return repr(value) if len(value) <= SHOWN_CHARS else repr(value[:SHOWN_CHARS]) + "…"
    text = repr(value)
    return text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS] + "…"


NAMED_CHARS = 100
"""The most characters of an id, key or name given in a path or on a command line that a "no such …" answer quotes."""


def named(value: str) -> str:
    """An id, key or name that names nothing, as a "no such …" answer quotes it: its `repr`, cut to NAMED_CHARS
    with its length said when longer (a path segment may be as long as a request line allows: never echoed whole)."""
    if len(value) <= NAMED_CHARS:
        return repr(value)
    return f"{value[:NAMED_CHARS]!r}… ({len(value)} characters in all)"


class ValueProblem(ValueError):
    """What is wrong with one value, the words and the value kept apart: the message holds VALUE where the value
    goes. As it stands (`str`) it quotes the value (`quoted`), as for one given on a command line; a config loader,
    which knows where the value came from, tells it with `told` instead, never quoting one from an environment
    variable nor a secret (bridge/yamlfile.py `shown_value`). `quote`: how to quote the value where it may be
    quoted, when `quoted` would say too much (a URL's password) or too long."""

    def __init__(self, message: str, value: object, *, quote: str | None = None) -> None:
        self.template = message
        self.value = value
        self.quote = quote
        super().__init__(self.told(quoted(value) if quote is None else quote))

    def told(self, shown: str) -> str:
        """The message with `shown` where the value goes."""
        return self.template.replace(VALUE, shown)

    def __str__(self) -> str:  # a KeyError's own would quote the message
        return str(self.args[0])


class UnknownName(ValueProblem, KeyError):
    """A name looked up in a registry (a source kind, a vendor) that is not there; the message lists those that are."""


class Located(BridgeError):
    """An error tied to a place in a file: `file:line:col: path: message`."""

    def __init__(
        self, message: str, *, file: str | None = None, line: int | None = None,
        col: int | None = None, path: str | None = None,
    ) -> None:
        self.message = message
        self.file = file
        self.line = line
        self.col = col
        self.path = path
        super().__init__(self.render())

    def render(self) -> str:
        where = ""
        if self.file is not None:
            where = self.file
            if self.line is not None:
                where += f":{self.line}"
                if self.col is not None:
                    where += f":{self.col}"
            where += ": "
        path = f"{self.path}: " if self.path else ""
        return f"{where}{path}{self.message}"


class ConfigError(Located, ValueError):
    """The configuration is not valid."""


class MappingError(Located, ValueError):
    """A mapping is not valid, or could not render an event."""


class ErrorList(BridgeError):
    """Several located errors, reported together so that one run shows them all."""

    def __init__(self, errors: Iterable[Located]) -> None:
        self.errors = list(errors)
        super().__init__("\n".join(e.render() for e in self.errors))


class StoreUnavailable(BridgeError):
    """The store cannot be reached or cannot commit; nothing was stored."""


class StoreRefused(StoreUnavailable):
    """The database refused the statement for the data it was given (a value out of range, a character its
    encoding has no equivalent for, a row past a size limit, a constraint the row breaks): the same data would be
    refused on every try, so this is the data's problem, not the store's. Nothing was stored, and the store is not
    counted as failing. A StoreUnavailable, so that a caller that knows no better still answers as for a write
    that did not happen; intake and the delivery loop tell it apart."""

    def __init__(self, reason: str, code: str) -> None:
        self.reason = reason
        self.code = code
        """What kind of refusal, without the database's words (which name its tables and indexes): the SQLSTATE,
        or the SQLite exception's name. What a sender is told; `reason` is for the log."""
        super().__init__(reason)


class LeaseLost(BridgeError):
    """A delivery's lease is no longer the caller's (it ran out and was given back, or another sender holds
    it): its attempt is not recorded over the new holder's claim."""


class StoreLocked(BridgeError):
    """Another ticketbridge process holds this SQLite store."""


class NotFound(BridgeError, KeyError):
    """No such record."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "not found"


class Rejected(BridgeError):
    """An inbound request refused with an HTTP status; `check` names the check that failed, and `retry_after`
    (seconds, for a 503 the sender is asked to retry) is answered as Retry-After."""

    def __init__(self, status: int, message: str, check: str | None = None, *, retry_after: int | None = None) -> None:
        self.status = status
        self.check = check
        self.retry_after = retry_after
        super().__init__(message)
