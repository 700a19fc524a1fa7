"""`bridge.yaml`: the structs it decodes into, and the loader that names file:line:key on every error."""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from bridge.conversions import convert_all
from bridge.durations import parse_duration
from bridge.errors import VALUE, ErrorList, Located, ValueProblem
from bridge.escaping import header_problem
from bridge.forwarded import network_problem
from bridge.names import alike, escaped, name_problem
from bridge.pg_schema import split_schema
from bridge.yamlfile import (
    Document,
    KeyPath,
    KeyValueError,
    Quoted,
    env_expander,
    from_variable,
    load_yaml_file,
    shown_value,
    written_text,
)

DEFAULT_RETRY_SCHEDULE = ["5s", "5m", "30m", "2h", "5h", "10h", "10h"]


def check_duration(value: str | float, key: KeyPath) -> None:
    """A duration option checked where it is written, so that its error names its key and line."""
    try:
        parse_duration(value)
    except ValueProblem as exc:
        raise KeyValueError.of(key, exc) from None


class Base(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Every config table: unknown keys are errors."""


class ServerConfig(Base):
    host: str = "0.0.0.0"  # noqa: S104 - a server meant to receive webhooks listens on all interfaces
    port: Annotated[int, Meta(ge=0, le=65535)] = 8080
    max_body_bytes: Annotated[int, Meta(ge=1024)] = 1_048_576
    public_url: str | None = None
    shutdown_grace_seconds: Annotated[float, Meta(ge=0)] = 10.0
    header_timeout_seconds: Annotated[float, Meta(gt=0)] = 10.0
    body_timeout_seconds: Annotated[float, Meta(gt=0)] = 30.0
    keepalive_timeout_seconds: Annotated[float, Meta(gt=0)] = 15.0
    max_connections: Annotated[int, Meta(ge=1)] = 1000
    event_loop: Literal["asyncio", "uvloop", "auto"] = "asyncio"
    """`uvloop` needs the `fast` extra; `auto`: uvloop when it is installed, else asyncio's own loop."""
    trusted_proxies: list[str] = []
    """Addresses and CIDR networks of the reverse proxies in front: a request from one has its client's address
    read from X-Forwarded-For (bridge/forwarded.py). Empty: the connection's peer is the client."""

    def __post_init__(self) -> None:
        for i, entry in enumerate(self.trusted_proxies):
            problem = network_problem(entry)
            if problem is not None:
                raise KeyValueError.of(("trusted_proxies", i), problem)


class StoreConfig(Base):
    url: str = "sqlite:///var/ticketbridge.db"
    group_commit_max: Annotated[int, Meta(ge=1, le=10_000)] = 512
    pool_min: Annotated[int, Meta(ge=0, le=1000)] = 2
    """PostgreSQL: connections the process keeps open (SQLite ignores the pool keys)."""
    pool_max: Annotated[int, Meta(ge=1, le=1000)] = 10
    """PostgreSQL: the most connections the process opens (plus one that listens for new work)."""
    lease_seconds: Annotated[float, Meta(ge=1, le=3600)] = 10.0
    """How long a claimed delivery stays its sender's unless renewed (every third of it, while held): a dead
    process's work is taken over after at most about 1⅓ of this."""

    def __post_init__(self) -> None:
        if self.pool_min > self.pool_max:
            raise KeyValueError(("pool_min",), f"pool_min ({VALUE}) is above pool_max ({{pool_max}}): give a pool_min "
                                "no larger than pool_max", self.pool_min,
                                quotes={"pool_max": Quoted(("pool_max",), self.pool_max)})


def _reads_alike(what: str, name: str, other: str) -> str:
    """The error for `name`, which reads as the earlier `other` (`alike`), both names of `what`."""
    return (f"{what} {escaped(name)} reads as the {what} {escaped(other)}: they differ only in a no-break space; give "
            "them names that read apart")


class AdminConfig(Base):
    token: str = ""  # the admin token: reads and changes, audited as "admin"
    read_tokens: dict[str, str] = {}  # name → token: read-only access, audited and shown by that name

    def __post_init__(self) -> None:
        clashes = alike(self.read_tokens)
        for name, token in self.read_tokens.items():
            problem = name_problem(name, "read token name")  # the audit log's actor
            if problem is not None and name.strip():
                raise KeyValueError(("read_tokens", name), problem)
            if not name.strip() or not token.strip():
                raise KeyValueError(("read_tokens", name), "`read_tokens` needs a name and a non-empty token for "
                                    f"each entry; {name!r} has none")
            if name in clashes:
                raise KeyValueError(("read_tokens", name), _reads_alike("read token name", name, clashes[name]))
            if self.token and token == self.token:
                raise KeyValueError(("read_tokens", name),
                                    f"read token {name!r} is the admin token; a read-only token must differ")


class LogConfig(Base):
    level: Literal["debug", "info", "warning", "error"] = "info"
    # Unset: console (coloured, one line per event) when the log stream is a terminal, else JSON lines.
    format: Literal["json", "console"] | None = None


class TracingConfig(Base):
    """OpenTelemetry traces (the `otel` extra): a span per intake request and per delivery attempt, sent over
    OTLP/HTTP. Off unless `enabled`."""

    enabled: bool = False
    # OTLP/HTTP traces URL; unset: the exporter's own default, or OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT.
    endpoint: str | None = None
    service_name: str = "ticketbridge"


class BasicAuth(Base):
    username: str
    password: str

    def __post_init__(self) -> None:
        # The password is the secret: an empty one (an environment variable set to "") would let in anyone
        # who sends `Basic Og==`. The username may be empty, but the header splits at its first colon.
        if not self.password:
            raise KeyValueError(("password",), "`password` is empty: basic auth without a password lets anyone "
                                "in; set it from the environment, e.g. password: ${FORM_PASSWORD}")
        if ":" in self.username:
            raise KeyValueError(("username",), f"`username` {VALUE} holds a colon, which no basic auth header can "
                                "carry (the colon ends the username): choose one without", self.username)


class AuthConfig(Base):
    basic: BasicAuth | None = None
    bearer: str | None = None

    def __post_init__(self) -> None:
        if (self.basic is None) == (self.bearer is None):
            raise ValueError("give exactly one of `basic: {username, password}` or `bearer: TOKEN`")


_DOMAIN = re.compile(r"(?=.{1,253}\Z)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)+")


class SourceConfig(Base):
    """The options every source takes; each handler kind extends it with its own."""

    kind: str
    dedup: str | None = None
    dedup_window: str = "7d"
    reject_invalid: bool = False
    auth: AuthConfig | None = None
    sender_domain_aliases: dict[str, str] = msgspec.field(default_factory=dict)
    """Domains whose mailboxes are another domain's (`contoso.onmicrosoft.com: contoso.com`, a Microsoft 365
    tenant's own domain beside its custom one): a sender at either is one sender for the thread check
    (bridge/conversations.py `message_sender`). The bridge cannot know them: the operator names them."""

    def __post_init__(self) -> None:
        check_duration(self.dedup_window, ("dedup_window",))
        aliases = self.sender_domain_aliases
        for alias, domain in aliases.items():
            for value, what in ((alias, "alias"), (domain, "domain")):
                if not _DOMAIN.fullmatch(value):
                    raise KeyValueError(("sender_domain_aliases", alias), f"the {what} {{{what}}} is not a domain "
                                        "name in lower case, such as contoso.onmicrosoft.com: contoso.com",
                                        quotes={what: Quoted(("sender_domain_aliases", alias), value)})
            if domain == alias:
                raise KeyValueError(("sender_domain_aliases", alias), f"{VALUE} is an alias of itself", alias)
            if domain in aliases:
                raise KeyValueError(("sender_domain_aliases", alias), f"{VALUE} is an alias of {domain!r}, itself "
                                    f"an alias (of {aliases[domain]!r}): name the domain they all stand for",
                                    alias)


class AttachmentsConfig(Base):
    """Where email attachments are kept (content addressed by sha256), and the largest one kept."""

    dir: str = "var/attachments"
    max_bytes: Annotated[int, Meta(ge=0)] = 10_485_760


RETENTION_BATCH_MOST = 1_000
"""The most `retention.batch` (and `purge --batch`) takes: on SQLite a batch's deletes hold the one writer, and the
intake waiting behind it, for their whole transaction (about 0.2 s for a thousand events of a few kilobytes, each with
its delivery and attempt; 10,000 held it 2 s)."""


class RetentionConfig(Base):
    """How long what the store and the attachments folder hold is kept; a null limit keeps that kind forever."""

    enabled: bool = True
    events: str | float | None = "30d"
    """Events whose deliveries all succeeded (or that have none), with their deliveries and attempts."""
    dead: str | float | None = "90d"
    """Events with a dead delivery, which waits for an operator's replay: by the dead delivery's last change."""
    attempts: str | float | None = "30d"
    """Older attempts of kept deliveries (each delivery's latest is kept)."""
    attachments: str | float | None = "events"
    """Attachment files no kept event names; `events` (the default): the events limit."""
    tickets: str | float | None = "90d"
    """An email thread's conversation that holds a ticket and knows its first sender (not a chat's), after its
    last message: while it is kept
    that sender's `[#id]` reply follows up on the ticket (a stranger's never does); after, it makes a new ticket."""
    every: str | float = "5m"
    batch: Annotated[int, Meta(ge=1, le=RETENTION_BATCH_MOST)] = 200
    """Events (or attempts, or dedup keys) looked at per transaction: about three rows deleted for each event. On
    SQLite a transaction also stops at `group_bytes` of the events and attempts it deletes (their JSON, bodies and
    exchanges), the first whatever its size."""

    def __post_init__(self) -> None:
        for key in ("events", "dead", "attempts", "tickets", "every"):
            value = getattr(self, key)
            if value is not None:
                check_duration(value, (key,))
        if self.attachments is not None and self.attachments != "events":
            check_duration(self.attachments, ("attachments",))
        if parse_duration(self.every) == 0:
            raise KeyValueError(("every",), f"{VALUE} would sweep without a pause: give a duration, e.g. 5m",
                                self.every)

    def limit(self, kind: Literal["events", "dead", "attempts", "attachments", "tickets"]) -> float | None:
        """The age limit of `kind` in seconds; None: kept forever."""
        if not self.enabled:
            return None
        value = self.events if kind == "attachments" and self.attachments == "events" else getattr(self, kind)
        return None if value is None else parse_duration(value)


class RateLimit(Base):
    requests: Annotated[int, Meta(ge=1)]
    per_seconds: Annotated[float, Meta(gt=0)] = 1.0


class RetryConfig(Base):
    schedule: list[str | float] = msgspec.field(default_factory=lambda: list(DEFAULT_RETRY_SCHEDULE))
    jitter: Annotated[float, Meta(ge=0, le=1)] = 0.2
    max_retry_after: str | float = "1h"

    def __post_init__(self) -> None:
        for i, item in enumerate(self.schedule):
            check_duration(item, ("schedule", i))
        check_duration(self.max_retry_after, ("max_retry_after",))

    def delays(self) -> list[float]:
        return [parse_duration(item) for item in self.schedule]


class DestinationAttachments(Base):
    """How many attachment files, and how many bytes of them in all, one request to this destination may
    carry; a file over either cap (or no longer on disk) is named in the ticket text instead of sent.
    `note_field` is the field that note goes to (each vendor has a default: its ticket text)."""

    max_count: Annotated[int, Meta(ge=0)] = 10
    max_bytes: Annotated[int, Meta(ge=0)] = 10_485_760
    note_field: str | None = None


class DestinationConfig(Base):
    """The options every destination takes; each vendor extends it with its own."""

    vendor: str
    base_url: str | None = None
    sandbox: bool = False
    """Served by the vendor's simulator, with its demo credentials (a credential key beside it is refused): this
    process's own, or, with a `base_url`, the one there (a `ticketbridge sandbox` that several processes share)."""
    rate_limit: RateLimit | None = None
    max_in_flight: Annotated[int, Meta(ge=1, le=1000)] = 4
    timeout_seconds: Annotated[float, Meta(gt=0)] = 30.0
    retry: RetryConfig = msgspec.field(default_factory=RetryConfig)
    attachments: DestinationAttachments = msgspec.field(default_factory=DestinationAttachments)
    on_unknown: Literal["resend", "reconcile", "hold"] | None = None
    """What follows a send whose outcome is unknown; None: the vendor's default (`unknown_policy`)."""
    reconcile_timeout: str | float = "5m"
    """How long one reconciliation (every look-up it makes) may take in all; past it, the outcome stays unknown."""

    @property
    def own_sandbox(self) -> bool:
        """Whether this process's own simulator serves the destination (`sandbox: true` without a `base_url`): its
        tickets are this process's alone, unseen by any other process sharing the store."""
        return self.sandbox and not self.base_url

    def can_reconcile(self) -> str | None:
        """None when `on_unknown: reconcile` can work for this destination, else why not (vendors override)."""
        return (f"the {self.vendor} vendor documents no look-up to find a ticket by a reference; use "
                "`on_unknown: hold` (an operator decides) or `resend` (possible duplicates, counted)")

    def default_on_unknown(self) -> Literal["resend", "reconcile", "hold"]:
        """The vendor's default `on_unknown` (docs/vendors.md says why): `reconcile` where the destination can
        look tickets up, else `hold`."""
        return "reconcile" if self.can_reconcile() is None else "hold"

    @property
    def unknown_policy(self) -> Literal["resend", "reconcile", "hold"]:
        """`on_unknown`, else the vendor's default."""
        return self.on_unknown if self.on_unknown is not None else self.default_on_unknown()

    @property
    def reconcile_timeout_s(self) -> float:
        return parse_duration(self.reconcile_timeout)

    def secret_values(self) -> dict[str, str]:
        """The secrets the destination is configured with, by where each is (a key path): redacted by value from
        what its attempts keep and log, wherever a vendor echoes them (bridge/delivery/redaction.py). Vendors
        override; the default: none."""
        return {}

    def secret_url(self) -> bool:
        """Whether the destination's URLs are themselves a secret (a webhook URL): shown without path and query."""
        return False

    def credentials(self) -> dict[KeyPath, str]:
        """The credentials the destination is configured with (those set), by their key path: what a `sandbox: true`
        destination may not have (`check_sandbox_credentials`). Vendors override; the default: none."""
        return {}

    def demo_credentials(self) -> dict[KeyPath, str]:
        """The sandbox's demo value of each credential key that has one: the simulator's public demo key, the one
        value such a key may have beside `sandbox: true` (the shipped demo names the simulator's log-in)."""
        return {}

    def check_sandbox_credentials(self) -> None:
        """Refuse, at its key, a credential beside `sandbox: true`: a sandbox sends the simulator's demo credentials
        only, to wherever `base_url` points, so a real config with `sandbox: true` added would otherwise send the
        account's real key (and the customers' data) there. Never quotes the value."""
        if not self.sandbox:
            return
        demo = self.demo_credentials()
        for key, value in self.credentials().items():
            if demo.get(key) == value:
                continue
            dotted = ".".join(map(str, key))
            raise KeyValueError(key, f"`{dotted}` is a credential, and a `sandbox: true` destination sends only "
                                "the simulator's demo credentials, never configured ones (to wherever `base_url` "
                                f"points): remove `{dotted}` to keep the sandbox, or drop `sandbox: true` to send "
                                "to `base_url` as a real destination")

    def header_texts(self) -> dict[KeyPath, str]:
        """What the destination sends as it is written in an HTTP header (a header's value, a key or token it sends),
        by its key path: checked at load (`check_header_texts`). Vendors override; the default: none."""
        return {}

    def check_header_texts(self) -> None:
        """Refuse, at its key, a `header_texts` value that no HTTP header can carry (CR, LF or another control
        character: a secret file's trailing newline, most often), saying what is wrong but never the value."""
        for key, text in self.header_texts().items():
            problem = header_problem(text)
            if problem is None:
                continue
            hint = " (a secret file's trailing newline? remove it)" if problem == "ends with a newline" else ""
            raise KeyValueError(key, f"`{'.'.join(map(str, key))}` {problem}, which no HTTP header can carry: "
                                f"no request could be sent with it{hint}")

    def __post_init__(self) -> None:
        self.check_sandbox_credentials()
        self.check_header_texts()
        check_duration(self.reconcile_timeout, ("reconcile_timeout",))
        if parse_duration(self.reconcile_timeout) <= 0:
            raise KeyValueError(("reconcile_timeout",), f"{VALUE} would stop every reconciliation before its first "
                                "look-up: give a duration, e.g. 5m", self.reconcile_timeout)
        if self.on_unknown == "reconcile" and (why := self.can_reconcile()) is not None:
            raise ValueError(f"`on_unknown: reconcile` cannot work here: {why}")
        if not self.sandbox and not self.base_url:
            raise ValueError("`base_url` is required unless `sandbox: true`")
        if self.base_url and not self.base_url.startswith(("http://", "https://")):
            quote = None
            if self.secret_url():  # the URL is the credential: its host alone, as everywhere else it is shown
                host, slash, _ = self.base_url.partition("/")
                quote = (f"{host[:80]!r}/… (the rest not shown: url_secret)" if slash and host
                         else "(not shown: url_secret)")
            raise KeyValueError(("base_url",), f"`base_url` {VALUE} must start with http:// or https://",
                                self.base_url, quote=quote)


class _RawConfig(Base):
    server: ServerConfig = msgspec.field(default_factory=ServerConfig)
    store: StoreConfig = msgspec.field(default_factory=StoreConfig)
    admin: AdminConfig = msgspec.field(default_factory=AdminConfig)
    log: LogConfig = msgspec.field(default_factory=LogConfig)
    tracing: TracingConfig = msgspec.field(default_factory=TracingConfig)
    attachments: AttachmentsConfig = msgspec.field(default_factory=AttachmentsConfig)
    retention: RetentionConfig = msgspec.field(default_factory=RetentionConfig)
    mappings: str | None = None
    mappings_on_start_error: Literal["last_good", "fail"] = "last_good"
    mappings_reload_timeout: str | float = "30s"
    mappings_allow_empty: bool = False
    vars: dict[str, Any] = {}
    sources: dict[str, Any] = {}
    destinations: dict[str, Any] = {}

    def __post_init__(self) -> None:
        check_duration(self.mappings_reload_timeout, ("mappings_reload_timeout",))


@dataclass(frozen=True)
class StoreURL:
    scheme: Literal["sqlite", "postgresql"]
    path: Path | None
    dsn: str


@dataclass(frozen=True)
class Config:
    """The loaded, checked configuration."""

    file: Path | None
    base_dir: Path
    server: ServerConfig
    store: StoreConfig
    store_url: StoreURL
    admin: AdminConfig
    log: LogConfig
    mappings_dir: Path
    vars: dict[str, Any]
    sources: dict[str, SourceConfig]
    destinations: dict[str, DestinationConfig]
    document: Document | None = None
    attachments: AttachmentsConfig = field(default_factory=AttachmentsConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    tracing: TracingConfig = field(default_factory=TracingConfig)
    # With a broken mappings folder at start: serve the last good set kept in the store, or refuse to start.
    mappings_on_start_error: Literal["last_good", "fail"] = "last_good"
    mappings_reload_timeout_s: float = 30.0  # how long a hot reload may load and test before it is failed
    # An empty mappings folder is taken as it is (served, kept as the last good set) only with this set; without
    # it a folder emptied while mappings are in force (a deploy, `rsync --delete`) is refused on reload, and at
    # start the last good set kept in the store is served instead.
    mappings_allow_empty: bool = False
    file_digest: str | None = None
    """The sha256 of the bytes `file` was loaded from: what the server runs on, whatever the file holds later."""

    def shown_setting(self, path: KeyPath, made: Path | str) -> str:
        """`made`, what the setting at `path` gave (the mappings folder for `mappings`), as a message may name it:
        as it is, unless the setting took its value from an environment variable (`mappings: ${MAPPINGS}`), which
        a message never quotes: then as `shown_value` shows such a value (its kind, length and variable's name)."""
        written = None if self.document is None else self.document.written.get(path)
        if self.document is None or not from_variable(written):
            return str(made)
        value: Any = self.document.data
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        return shown_value(value, path, written)

    def named_by(self, path: KeyPath, what: str, prefix: str = "") -> str | None:
        """`the <what> named by <the setting as written>` (`the file named by ${BRIDGE_DB}`), less `prefix`
        (`sqlite:///`), when the setting at `path` takes its value from an environment variable: a path so given
        is named by the text that gives it, as an error or an answer may show it, never by the variable's value.
        None when the setting is written in the file (or was not loaded from one): the path itself may be named."""
        written = None if self.document is None else self.document.written.get(path)
        if written is None or not from_variable(written):
            return None
        return f"the {what} named by {written_text(written.removeprefix(prefix))}"

    @property
    def shown_store_file(self) -> str:
        """The SQLite store's file as a message, a log line or an answer names it: its path, or `the file named by
        ${VAR}` when `store.url` took it from an environment variable (`named_by`). Empty for PostgreSQL."""
        if self.store_url.path is None:
            return ""
        return self.named_by(("store", "url"), "file", "sqlite:///") or str(self.store_url.path)

    @property
    def shown_mappings_folder(self) -> str:
        """The mappings folder as an answer of the admin API names it: its path, or `the folder named by ${VAR}`
        when `mappings` took it from an environment variable (`named_by`)."""
        return self.named_by(("mappings",), "folder") or str(self.mappings_dir)

    def shown_mapping_file(self, file: str) -> str:
        """A mapping's file (as `mapping_file_name` named it at load) as an answer of the admin API names it: as it
        is, or, when `mappings` took the folder from an environment variable, `partner.yaml in the folder named by
        ${VAR}` (`named_by`; the folder's own files are the mappings, none in a folder below)."""
        folder = self.named_by(("mappings",), "folder")
        return file if folder is None else f"{Path(file).name} in {folder}"

    def mapping_file_name(self, path: Path) -> str:
        """A mapping file as its errors, a log line or a test result name it: its path, or, when `mappings` took the
        folder from an environment variable, that path relative to the text that gives it (`${MAPS}/partner.yaml`,
        never the variable's value, as `named_by`). A file outside the folder (given on a command line) by its path
        as given."""
        written = None if self.document is None else self.document.written.get(("mappings",))
        if written is None or not from_variable(written) or not path.is_relative_to(self.mappings_dir):
            return str(path)
        return f"{written_text(written.rstrip('/'))}/{path.relative_to(self.mappings_dir)}"

    @property
    def shown_mappings_dir(self) -> str:
        """The mappings folder as a message or a log may name it (`shown_setting`)."""
        return self.shown_setting(("mappings",), self.mappings_dir)

    def mappings_missing(self, cls: type[Located]) -> Located:
        """The error (of class `cls`) that the mappings folder does not exist: naming it as the error's file, or, when
        `mappings` took it from an environment variable, at that key with the folder as `shown_setting` shows it."""
        shown = self.shown_mappings_dir
        if self.document is None or shown == str(self.mappings_dir):
            return cls("the mappings folder does not exist", file=str(self.mappings_dir))
        return self.document.error(("mappings",), f"the mappings folder ({shown}) does not exist", cls)

    def mappings_error(self, message: str, cls: type[Located]) -> Located:
        """An error (of class `cls`) about the mappings folder: naming it as the error's file, or, when `mappings`
        took it from an environment variable, at that key with the folder as `shown_setting` shows it."""
        shown = self.shown_mappings_dir
        if self.document is None or shown == str(self.mappings_dir):
            return cls(message, file=str(self.mappings_dir))
        return self.document.error(("mappings",), f"{message} (the mappings folder: {shown})", cls)

    @functools.cached_property
    def attachments_dir(self) -> Path:
        """The attachments folder; a relative `dir` is relative to the config's folder. Worked out once: each
        request with a file asks (a Path built and joined, some 5 µs)."""
        folder = Path(self.attachments.dir)
        return folder if folder.is_absolute() else self.base_dir / folder


def parse_store_url(url: str, base_dir: Path) -> StoreURL:
    """`sqlite:///rel.db` (relative to the config's folder), `sqlite:////abs.db`, `postgresql://…`. Raises
    ValueProblem, about the url or the schema it names."""
    if url.startswith("sqlite:///"):
        rest = url[len("sqlite:///"):]
        if not rest or rest == "/":
            raise ValueProblem(f"store url {VALUE} names no file: write sqlite:///var/ticketbridge.db", url)
        path = Path(rest) if rest.startswith("/") else base_dir / rest
        return StoreURL("sqlite", path, url)
    if url.startswith(("postgresql://", "postgres://")):
        split_schema(url)  # a schema that is not an identifier: refused here, with the file and line
        return StoreURL("postgresql", None, url)
    raise ValueProblem(f"store url {VALUE} is not supported: write sqlite:///relative.db, sqlite:////abs/path.db or "
                       "postgresql://user@host:5432/db", url, quote=repr(_shown_store_url(url)))


def _shown_store_url(url: str) -> str:
    """A store URL as an error shows it: the password of its user info (`user:password@`) cut to `user:…@`, the URL
    otherwise as written, cut at 200 characters."""
    scheme, sep, rest = url.partition("//")
    authority, path = rest.split("/", 1)[0], rest[len(rest.split("/", 1)[0]):]
    if sep and "@" in authority:
        userinfo, _, host = authority.rpartition("@")
        user, colon, _password = userinfo.partition(":")
        url = f"{scheme}//{user}{':…' if colon else ''}@{host}{path}"
    return url if len(url) <= 200 else url[:199] + "…"


def shipped_default_file() -> Path:
    return Path(__file__).parent / "defaults" / "bridge.yaml"


def shipped_mappings_dir() -> Path:
    """The example mappings: inside the installed package, or at the top of a source checkout."""
    installed = Path(__file__).parent / "defaults" / "mappings"
    if installed.is_dir():
        return installed
    return Path(__file__).resolve().parent.parent / "mappings"


def resolve_config_path(explicit: str | None, cwd: Path | None = None) -> Path | None:
    """The config to load: the one given, else ./bridge.yaml, else None (the shipped default)."""
    if explicit:
        return Path(explicit)
    candidate = (cwd or Path.cwd()) / "bridge.yaml"
    return candidate if candidate.is_file() else None


@dataclass(frozen=True)
class Registries:
    """Where `load_config` looks up the options type of a source kind and of a destination vendor.

    Passed in by the caller (bridge/registries.py holds the real ones) because both registries import
    this module for the option types they extend."""

    source_options: Callable[[str], type[SourceConfig]]
    vendor_options: Callable[[str], type[DestinationConfig]]


def load_config(path: Path | None, environ: Mapping[str, str] | None = None, cwd: Path | None = None, *,
                registries: Registries) -> Config:
    """Load `path`, or the shipped default when it is None. Raises ErrorList naming every problem."""
    env = os.environ if environ is None else environ
    shipped = path is None
    file = shipped_default_file() if shipped else path
    assert file is not None
    unset: list[Located] = []
    try:
        doc = load_yaml_file(file, env_expander(env, str(file), unset))
    except Located as exc:
        raise ErrorList([exc]) from None
    if unset:  # every one at once; what they stand in for cannot be checked without them
        raise ErrorList(unset)
    if doc.data is None:
        doc.data = {}
    if not isinstance(doc.data, dict):
        raise ErrorList([doc.error((), "the config must be a table of keys (server, store, sources, …)")])
    base_dir = (cwd or Path.cwd()) if shipped else file.resolve().parent
    # Every table's every problem is told at once (a bad value stands aside for its default while the rest is
    # checked): the sources, destinations and store url below are checked past a bad `server.port`.
    raw, errors = convert_all(doc, doc.data, _RawConfig, key_hint=True, show_value=True)
    if raw is None:
        raise ErrorList(errors)

    try:
        store_url = parse_store_url(raw.store.url, base_dir)
    except ValueProblem as exc:  # the url, or its schema: either is shown as the url may be
        errors.append(doc.error(("store", "url"), exc.told(doc.shown(("store", "url"), Quoted((), exc.value,
                                                                                               exc.quote)))))
        store_url = StoreURL("sqlite", base_dir / "var" / "ticketbridge.db", "")

    for section, what in (("sources", "source name"), ("destinations", "destination name")):
        for name in getattr(raw, section):
            problem = name_problem(name, what)
            if problem is not None:  # kept on every event and delivery, and by the store's gates
                errors.append(doc.error((section, name), problem))
        for name, other in alike(getattr(raw, section)).items():
            errors.append(doc.error((section, name), _reads_alike(what, name, other)))
    sources: dict[str, SourceConfig] = {}
    for name, table in raw.sources.items():
        opts = _typed_entry(doc, ("sources", name), table, "kind", registries.source_options, errors=errors)
        if opts is not None:
            sources[name] = opts
    destinations: dict[str, DestinationConfig] = {}
    for name, table in raw.destinations.items():
        dest = _typed_entry(doc, ("destinations", name), table, "vendor", registries.vendor_options, errors=errors)
        if dest is not None:
            destinations[name] = dest
    if errors:
        raise ErrorList(sorted(errors, key=lambda e: (e.line or 0, e.col or 0)))  # in the order of the file
    if raw.mappings is not None:
        mappings_dir = Path(raw.mappings) if Path(raw.mappings).is_absolute() else base_dir / raw.mappings
    else:
        mappings_dir = shipped_mappings_dir() if shipped else base_dir / "mappings"
    return Config(
        file=None if shipped else file, base_dir=base_dir, server=raw.server, store=raw.store,
        store_url=store_url, admin=raw.admin, log=raw.log, mappings_dir=mappings_dir, vars=raw.vars,
        sources=sources, destinations=destinations, document=doc, attachments=raw.attachments,
        retention=raw.retention, tracing=raw.tracing,
        mappings_on_start_error=raw.mappings_on_start_error,
        mappings_reload_timeout_s=parse_duration(raw.mappings_reload_timeout),
        mappings_allow_empty=raw.mappings_allow_empty, file_digest=None if shipped else doc.digest,
    )


def _typed_entry(
    doc: Document, path: tuple[str, str], table: Any, tag: str, lookup: Any, *, errors: list[Located],
) -> Any:
    if not isinstance(table, dict):
        errors.append(doc.error(path, f"expected a table with `{tag}:`, got {type(table).__name__}"))
        return None
    if tag not in table:
        errors.append(doc.error(path, f"missing required key {tag!r}"))
        return None
    name = table[tag]
    if not isinstance(name, str):
        errors.append(doc.error((*path, tag), f"`{tag}` must be a name, got {type(name).__name__}"))
        return None
    try:
        typ = lookup(name)
    except KeyError as exc:
        where = (*path, tag)
        said = exc.told(doc.shown(where, Quoted((), name))) if isinstance(exc, ValueProblem) else str(exc.args[0])
        errors.append(doc.error(where, said))
        return None
    options, problems = convert_all(doc, table, typ, path, key_hint=True, show_value=True)
    errors.extend(problems)
    return None if problems else options
