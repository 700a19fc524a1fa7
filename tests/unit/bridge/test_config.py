"""bridge/config.py: loading `bridge.yaml`, with every error naming file, line and key path."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from bridge.config import (
    Config,
    DestinationConfig,
    Registries,
    SourceConfig,
    StoreURL,
    load_config,
    parse_store_url,
    resolve_config_path,
    shipped_mappings_dir,
)
from bridge.errors import ErrorList, Located
from bridge.registries import REGISTRIES
from bridge.vendors.kapture import KaptureOptions
from handlers.form import FormOptions
from handlers.json_hook import JsonOptions
from tests.fixtures.bad_config_values import CASES, VARIABLE, BadValue


def write(folder: Path, text: str, name: str = "bridge.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def load(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> Config:
    return load_config(write(tmp_path, text), environ or {}, registries=REGISTRIES)


def errors_of(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> list[Located]:
    path = write(tmp_path, text)
    with pytest.raises(ErrorList) as info:
        load_config(path, environ or {}, registries=REGISTRIES)
    for err in info.value.errors:
        assert isinstance(err, Located)
        assert err.file == str(path)
    return info.value.errors


def only_error(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> Located:
    errors = errors_of(tmp_path, text, environ)
    assert len(errors) == 1, [e.render() for e in errors]
    return errors[0]


FULL = """\
server: {host: 0.0.0.0, port: 8080, max_body_bytes: 1048576}
store:  {url: "sqlite:///var/ticketbridge.db"}
admin:  {token: "${BRIDGE_ADMIN_TOKEN:-}"}
mappings: mappings/
vars:   {brand: Acme}

sources:
  website-contact: {kind: form, redirect: "https://example.com/thanks", cors_origins: ["https://example.com"], honeypot: website}
  partner-api:     {kind: json, hmac: {secret: "${PARTNER_SECRET}", header: X-Signature, algorithm: sha256, encoding: hex}, dedup: payload.id}
  private:         {kind: json, auth: {bearer: "${PRIVATE_TOKEN}"}}

destinations:
  kapture-support:
    vendor: kapture
    base_url: "https://acme.kapturecrm.com"
    token: "${KAPTURE_TOKEN}"
    rate_limit: {requests: 10, per_seconds: 1}
    max_in_flight: 4
    timeout_seconds: 30
    retry: {schedule: [5s, 5m, 30m, 2h, 5h, 10h, 10h], jitter: 0.2}
  demo-kapture: {vendor: kapture, sandbox: true}
"""  # noqa: E501 - the example of docs/architecture.md, kept as written

FULL_ENV = {"PARTNER_SECRET": "p-secret", "PRIVATE_TOKEN": "tok", "KAPTURE_TOKEN": "k-token"}


# -- a whole file ------------------------------------------------------------------------------------


def test_the_documented_example_loads(tmp_path: Path) -> None:
    """The example config of docs/architecture.md loads into typed options."""
    cfg = load(tmp_path, FULL, FULL_ENV)
    assert cfg.file == tmp_path / "bridge.yaml"
    assert cfg.base_dir == tmp_path.resolve()
    assert cfg.server.port == 8080
    assert cfg.admin.token == ""
    assert cfg.vars == {"brand": "Acme"}

    web = cfg.sources["website-contact"]
    assert isinstance(web, FormOptions)
    assert (web.kind, web.redirect, web.cors_origins, web.honeypot) == (
        "form", "https://example.com/thanks", ["https://example.com"], "website")
    partner = cfg.sources["partner-api"]
    assert isinstance(partner, JsonOptions)
    assert partner.hmac is not None
    assert (partner.hmac.secret, partner.hmac.header, partner.dedup) == ("p-secret", "X-Signature", "payload.id")
    private = cfg.sources["private"]
    assert private.auth is not None
    assert private.auth.bearer == "tok"

    kapture = cfg.destinations["kapture-support"]
    assert isinstance(kapture, KaptureOptions)
    assert (kapture.token, kapture.base_url, kapture.max_in_flight) == (
        "k-token", "https://acme.kapturecrm.com", 4)
    assert kapture.rate_limit is not None
    assert (kapture.rate_limit.requests, kapture.rate_limit.per_seconds) == (10, 1.0)
    assert kapture.retry.delays() == [5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0]
    assert cfg.destinations["demo-kapture"].sandbox is True


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    """An empty file is a valid config: defaults everywhere, no sources, no destinations."""
    cfg = load(tmp_path, "")
    assert cfg.server.port == 8080
    assert cfg.server.max_body_bytes == 1_048_576
    assert (cfg.server.header_timeout_seconds, cfg.server.body_timeout_seconds,
            cfg.server.keepalive_timeout_seconds, cfg.server.max_connections) == (10.0, 30.0, 15.0, 1000)
    assert cfg.sources == {}
    assert cfg.destinations == {}
    assert cfg.store_url.scheme == "sqlite"
    assert cfg.store_url.path == tmp_path.resolve() / "var" / "ticketbridge.db"
    assert cfg.mappings_dir == tmp_path.resolve() / "mappings"


def test_top_level_must_be_a_table(tmp_path: Path) -> None:
    """A file whose top level is a list is an error at line 1."""
    err = only_error(tmp_path, "- a\n- b\n")
    assert err.line == 1
    assert "must be a table" in err.message


def test_all_errors_are_reported_together(tmp_path: Path) -> None:
    """Problems in several sources and destinations are all reported in one ErrorList."""
    errors = errors_of(tmp_path, """\
        store: {url: "mysql://x"}
        sources:
          a: {kind: nope}
          b: {kind: form, colour: red}
        destinations:
          c: {vendor: kapture}
        """)
    assert sorted(e.path or "" for e in errors) == ["destinations.c", "sources.a.kind", "sources.b.colour",
                                                     "store.url"]


def test_every_bad_value_of_a_table_is_reported(tmp_path: Path) -> None:
    """Every bad value of one table is reported at once, its own checks' (durations) and its types' (a range) alike,
    in the order of the file."""
    errors = errors_of(tmp_path, "retention: {events: 30 days, dead: 1y, every: 0s, batch: 0}\n")
    assert [(e.path, e.col, e.message) for e in errors] == [
        ("retention.events", 13, "'30 days' is not a duration: write 250ms, 5s, 5m, 2h, 1d, 2w or a number of "
                                 "seconds"),
        ("retention.dead", 30, "'1y' is not a duration: write 250ms, 5s, 5m, 2h, 1d, 2w or a number of seconds"),
        ("retention.every", 40, "'0s' would sweep without a pause: give a duration, e.g. 5m"),
        ("retention.batch", 51, "got 0, expected a whole number from 1 to 1000"),
    ]


def test_bad_values_of_several_tables_are_reported_together(tmp_path: Path) -> None:
    """A bad value in one table hides none in another: the server's port, a retention limit, a source's and a
    destination's options and the store url are all reported in one run, in the order of the file."""
    errors = errors_of(tmp_path, """\
        server: {port: 99999}
        store: {url: "mysql://x"}
        retention: {events: soon}
        sources:
          a: {kind: json, reject_invalid: maybe}
        destinations:
          k: {vendor: kapture, sandbox: true, max_in_flight: 0, retry: {jitter: 3}}
        """)
    assert [(e.line, e.path) for e in errors] == [
        (1, "server.port"), (2, "store.url"), (3, "retention.events"), (5, "sources.a.reject_invalid"),
        (7, "destinations.k.max_in_flight"), (7, "destinations.k.retry.jitter")]


def test_a_check_of_two_keys_is_not_told_against_a_default_standing_in_for_a_bad_one(tmp_path: Path) -> None:
    """A bad `pool_max` is reported alone: `pool_min` is not compared with the default that stands in for it, nor
    is a destination's need of a `base_url` told when its `sandbox` is what is wrong."""
    errors = errors_of(tmp_path, """\
        store: {url: "sqlite:///x.db", pool_min: 20, pool_max: many}
        destinations:
          k: {vendor: kapture, sandbox: "yes please", token: t}
        """)
    assert [(e.path, e.message) for e in errors] == [
        ("store.pool_max", "got 'many', expected a whole number from 1 to 1000"),
        ("destinations.k.sandbox", "got 'yes please', expected true or false")]


def test_error_list_renders_every_error(tmp_path: Path) -> None:
    """The ErrorList's text has one `file:line:col: path: message` line per error."""
    path = write(tmp_path, "sources:\n  a: {kind: nope}\n  b: {kind: nope}\n")
    with pytest.raises(ErrorList) as info:
        load_config(path, {}, registries=REGISTRIES)
    lines = str(info.value).splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"{path}:2:")
    assert lines[1].startswith(f"{path}:3:")


# -- environment -------------------------------------------------------------------------------------


def test_environment_values_are_typed_by_the_schema(tmp_path: Path) -> None:
    """`port: ${PORT}` takes the variable's text and the schema turns it into an int."""
    cfg = load(tmp_path, "server: {port: '${PORT:-8080}'}\n", {"PORT": "9090"})
    assert cfg.server.port == 9090


def test_environment_default_applies(tmp_path: Path) -> None:
    """With the variable unset, the `:-` default is used."""
    assert load(tmp_path, "server: {port: '${PORT:-8181}'}\n").server.port == 8181


def test_unset_variable_is_an_error_list_naming_file_line_and_path(tmp_path: Path) -> None:
    """An unset variable without a default comes back as an ErrorList entry with file, line and key path."""
    err = only_error(tmp_path, """\
        sources:
          partner:
            kind: json
            hmac: {secret: "${PARTNER_SECRET}"}
        """)
    assert err.line == 4
    assert err.path == "sources.partner.hmac.secret"
    assert "PARTNER_SECRET" in err.message


def test_only_the_given_environ_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An explicit `environ` replaces the process environment entirely."""
    monkeypatch.setenv("TB_TEST_TOKEN", "from-os")
    err = only_error(tmp_path, "admin: {token: '${TB_TEST_TOKEN}'}\n", {})
    assert err.path == "admin.token"
    cfg = load(tmp_path, "admin: {token: '${TB_TEST_TOKEN}'}\n", {"TB_TEST_TOKEN": "given"})
    assert cfg.admin.token == "given"


def test_process_environment_is_the_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without `environ`, variables come from the process environment."""
    monkeypatch.setenv("TB_TEST_TOKEN", "from-os")
    cfg = load_config(write(tmp_path, "admin: {token: '${TB_TEST_TOKEN}'}\n"), registries=REGISTRIES)
    assert cfg.admin.token == "from-os"


# -- file-level failures -----------------------------------------------------------------------------


def test_syntax_error_is_an_error_list_with_its_line(tmp_path: Path) -> None:
    """A YAML syntax error comes back as an ErrorList entry at the parser's line."""
    err = only_error(tmp_path, "server:\n  port: 8080\n bad: indent\n")
    assert err.line == 3
    assert "YAML syntax error" in err.message


def test_duplicate_key_is_an_error_list(tmp_path: Path) -> None:
    """A duplicate key comes back as an ErrorList entry at the repeated key."""
    err = only_error(tmp_path, "sources:\n  a: {kind: form}\n  a: {kind: json}\n")
    assert (err.line, err.path) == (3, "sources")
    assert "duplicate key 'a'" in err.message


def test_missing_file_is_an_error_list(tmp_path: Path) -> None:
    """A config file that does not exist comes back as an ErrorList naming it."""
    path = tmp_path / "nope.yaml"
    with pytest.raises(ErrorList) as info:
        load_config(path, {}, registries=REGISTRIES)
    assert [e.file for e in info.value.errors] == [str(path)]


# -- unknown keys ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "line", "path"),
    [
        ("server:\n  port: 1\nsevrer: {}\n", 3, "sevrer"),
        ("server:\n  port: 1\n  hots: x\n", 3, "server.hots"),
        ("store:\n  url: sqlite:///x.db\n  pool: 5\n", 3, "store.pool"),
        ("admin:\n  tokne: x\n", 2, "admin.tokne"),
        ("log:\n  lvl: debug\n", 2, "log.lvl"),
        ("sources:\n  web:\n    kind: form\n    colour: red\n", 4, "sources.web.colour"),
        ("sources:\n  web:\n    kind: form\n    auth:\n      bearer: t\n      realm: x\n", 6, "sources.web.auth.realm"),
        ("sources:\n  web:\n    kind: form\n    auth:\n      basic: {username: u, password: p, pin: 1}\n", 5,
         "sources.web.auth.basic.pin"),
        ("sources:\n  api:\n    kind: json\n    hmac:\n      secret: s\n      algo: sha1\n", 6,
         "sources.api.hmac.algo"),
        ("destinations:\n  k:\n    vendor: kapture\n    sandbox: true\n    colour: red\n", 5,
         "destinations.k.colour"),
        ("destinations:\n  k:\n    vendor: kapture\n    sandbox: true\n    retry:\n      tries: 3\n", 6,
         "destinations.k.retry.tries"),
        ("destinations:\n  k:\n    vendor: kapture\n    sandbox: true\n    rate_limit: {requests: 1, burst: 2}\n",
         5, "destinations.k.rate_limit.burst"),
    ],
)
def test_unknown_key_names_file_line_and_path(tmp_path: Path, text: str, line: int, path: str) -> None:
    """An unknown key anywhere is an error naming the file, the key's line and its full key path, and the keys
    its table takes."""
    err = only_error(tmp_path, text)
    assert err.line == line
    assert err.path == path
    assert err.message.startswith(f"unknown key {path.rsplit('.', 1)[-1]!r}")
    assert "; it takes " in err.message


def test_unknown_key_in_a_form_source_is_an_error(tmp_path: Path) -> None:
    """A form source rejects an option that belongs to another kind (here json's `hmac`)."""
    err = only_error(tmp_path, "sources:\n  web:\n    kind: form\n    hmac: {secret: s}\n")
    assert (err.line, err.path) == (4, "sources.web.hmac")


# -- sources and destinations ------------------------------------------------------------------------


def test_unknown_source_kind_lists_the_known_ones(tmp_path: Path) -> None:
    """An unknown `kind` is an error at that key listing the kinds that exist."""
    err = only_error(tmp_path, "sources:\n  web:\n    honeypot: x\n    kind: wufoo\n")
    assert (err.line, err.path) == (4, "sources.web.kind")
    assert "unknown source kind 'wufoo'" in err.message
    assert "form" in err.message
    assert "json" in err.message


def test_unknown_vendor_lists_the_known_ones(tmp_path: Path) -> None:
    """An unknown `vendor` is an error at that key listing the vendors that exist."""
    err = only_error(tmp_path, "destinations:\n  zd:\n    vendor: zendesk\n    base_url: https://x\n")
    assert (err.line, err.path) == (3, "destinations.zd.vendor")
    assert "unknown vendor 'zendesk'" in err.message
    assert "kapture" in err.message


def test_source_without_kind(tmp_path: Path) -> None:
    """A source with no `kind` is an error on that source."""
    err = only_error(tmp_path, "sources:\n  web:\n    honeypot: x\n")
    assert (err.line, err.path) == (2, "sources.web")
    assert "kind" in err.message


def test_destination_without_vendor(tmp_path: Path) -> None:
    """A destination with no `vendor` is an error on that destination."""
    err = only_error(tmp_path, "destinations:\n  k:\n    sandbox: true\n")
    assert (err.line, err.path) == (2, "destinations.k")
    assert "vendor" in err.message


@pytest.mark.parametrize("value", ["form", "null", "[form]"])
def test_source_that_is_not_a_table_is_named(tmp_path: Path, value: str) -> None:
    """A source whose value is not a table is an error naming that source, not its parent."""
    err = only_error(tmp_path, f"sources:\n  other: {{kind: form}}\n  web: {value}\n")
    assert (err.line, err.path) == (3, "sources.web")


def test_destination_that_is_not_a_table_is_named(tmp_path: Path) -> None:
    """A destination whose value is not a table is an error naming that destination."""
    err = only_error(tmp_path, "destinations:\n  k: kapture\n")
    assert (err.line, err.path) == (2, "destinations.k")


@pytest.mark.parametrize("value", ["[form]", "{name: form}", "5"])
def test_kind_that_is_not_a_name_is_an_error(tmp_path: Path, value: str) -> None:
    """A `kind` that is a list, table or number is a located error, not a crash."""
    err = only_error(tmp_path, f"sources:\n  web:\n    kind: {value}\n")
    assert (err.line, err.path) == (3, "sources.web.kind")


def test_sources_must_be_a_table(tmp_path: Path) -> None:
    """`sources:` given as a list is an error on `sources`."""
    err = only_error(tmp_path, "sources:\n  - kind: form\n")
    assert (err.line, err.path) == (1, "sources")


def test_source_option_types_are_checked(tmp_path: Path) -> None:
    """A wrongly typed option is reported at its key with its path."""
    err = only_error(tmp_path, "sources:\n  web:\n    kind: form\n    reject_invalid: maybe\n")
    assert (err.line, err.path) == (4, "sources.web.reject_invalid")


def test_dedup_window_must_be_a_duration(tmp_path: Path) -> None:
    """A source's `dedup_window` that is not a duration is an error at that key, on its line."""
    err = only_error(tmp_path, "sources:\n  web:\n    kind: form\n    dedup_window: forever\n")
    assert (err.line, err.path) == (4, "sources.web.dedup_window")
    assert "'forever' is not a duration" in err.message


@pytest.mark.parametrize(("section", "text", "path"), [
    ("sources", "  mail:\n    kind: mailgun\n    signing_key: k\n    tolerance: forever\n", "sources.mail.tolerance"),
    ("sources", "  ses:\n    kind: ses\n    topic_arns: ['arn:aws:sns:eu-west-1:1:t']\n    s3: {timeout: forever}\n",
     "sources.ses.s3.timeout"),
    ("destinations", "  isp:\n    vendor: netgroot\n    sandbox: true\n    subjects_ttl: forever\n",
     "destinations.isp.subjects_ttl"),
])
def test_provider_and_vendor_durations_are_errors_at_their_key(tmp_path: Path, section: str, text: str,
                                                               path: str) -> None:
    """A kind's or vendor's own duration option that is not a duration is reported at that key, on its line."""
    err = only_error(tmp_path, f"{section}:\n{text}")
    assert (err.line, err.path) == (5, path)
    assert "'forever' is not a duration" in err.message


@pytest.mark.parametrize(
    "auth",
    ["{}", "{bearer: t, basic: {username: u, password: p}}"],
)
def test_auth_takes_exactly_one_scheme(tmp_path: Path, auth: str) -> None:
    """`auth` with neither or both of basic and bearer is an error on `auth`."""
    err = only_error(tmp_path, f"sources:\n  web:\n    kind: form\n    auth: {auth}\n")
    assert (err.line, err.path) == (4, "sources.web.auth")
    assert "exactly one" in err.message


def test_basic_auth_needs_both_fields(tmp_path: Path) -> None:
    """Basic auth without a password is a missing-key error on `basic`."""
    err = only_error(tmp_path, "sources:\n  web:\n    kind: form\n    auth:\n      basic: {username: u}\n")
    assert err.path == "sources.web.auth.basic"
    assert err.message == "missing required key 'password'"


@pytest.mark.parametrize(("basic", "environ"), [
    ("{username: u, password: ''}", {}),
    ("{username: '', password: ''}", {}),
    ("{username: '${BU:-}', password: '${BP:-}'}", {}),
    ("{username: u, password: '${BP}'}", {"BP": ""}),
])
def test_basic_auth_refuses_an_empty_password(tmp_path: Path, basic: str, environ: dict[str, str]) -> None:
    """An empty basic-auth password (written so, or from an environment variable set to "") is refused at load,
    naming the file, line and `password`: with it, `Authorization: Basic Og==` would let anyone in."""
    err = only_error(tmp_path, f"sources:\n  web:\n    kind: form\n    auth:\n      basic: {basic}\n", environ)
    assert (err.line, err.path) == (5, "sources.web.auth.basic.password")
    assert "`password` is empty" in err.message
    assert "${" in err.message  # says how to set it


def test_basic_auth_refuses_a_colon_in_the_username(tmp_path: Path) -> None:
    """A username with a colon could never match (the header's first colon ends the username): refused at load,
    without the username, which is half of the credential (`user:password` written as one, most often)."""
    err = only_error(tmp_path,
                     "sources:\n  web:\n    kind: form\n    auth:\n      basic: {username: 'a:b', password: p}\n")
    assert err.path == "sources.web.auth.basic.username"
    assert err.message.startswith("`username` text (not shown: a secret) holds a colon")
    assert "a:b" not in err.render()


def test_basic_auth_takes_an_empty_username_with_a_password(tmp_path: Path) -> None:
    """The password is the secret: an empty username beside one loads."""
    cfg = load(tmp_path, "sources:\n  web:\n    kind: form\n    auth:\n      basic: {username: '', password: p}\n")
    auth = cfg.sources["web"].auth
    assert auth is not None and auth.basic is not None
    assert (auth.basic.username, auth.basic.password) == ("", "p")


def test_base_url_required_unless_sandbox(tmp_path: Path) -> None:
    """A non-sandbox destination without `base_url` is an error naming it."""
    err = only_error(tmp_path, "destinations:\n  k:\n    vendor: kapture\n    token: t\n")
    assert (err.line, err.path) == (2, "destinations.k")
    assert "base_url" in err.message


def test_sandbox_needs_neither_base_url_nor_token(tmp_path: Path) -> None:
    """A sandbox destination loads without `base_url` or `token`."""
    cfg = load(tmp_path, "destinations:\n  demo: {vendor: kapture, sandbox: true}\n")
    dest = cfg.destinations["demo"]
    assert isinstance(dest, DestinationConfig)
    assert (dest.sandbox, dest.base_url) == (True, None)


@pytest.mark.parametrize(("vendor", "lines", "key"), [
    ("kapture", "    token: real-key\n", "token"),
    ("kapture", "    tokens: {add: real-key}\n", "tokens.add"),
    ("leadsquared", "    access_key: real-key\n", "access_key"),
    ("netgroot", "    auth: {login: {username: sandbox, password: real-key}}\n", "auth.login.password"),
    ("http", "    headers: {X-Api-Key: real-key}\n", "headers.X-Api-Key"),
    ("http", "    auth: {bearer: real-key}\n", "auth.bearer"),
    ("http", "    auth: {oauth2: {token_url: /t, client_id: sandbox-client, client_secret: real-key}}\n",
     "auth.oauth2.client_secret"),
    ("http", "    url_secret: true\n", "url_secret"),
])
def test_a_sandbox_with_a_credential_is_refused_at_its_key(tmp_path: Path, vendor: str, lines: str, key: str
                                                           ) -> None:
    """`sandbox: true` sends only the simulator's demo credentials, wherever `base_url` points: a credential beside
    it (a real config with the flag added) is an error at that key, on its line, saying to remove it or drop
    `sandbox: true`, never quoting the value."""
    err = only_error(tmp_path, f"destinations:\n  k:\n    vendor: {vendor}\n    sandbox: true\n"
                               f"    base_url: https://api.example\n{lines}")
    assert (err.line, err.path) == (6, f"destinations.k.{key}")
    assert f"remove `{key}`" in err.message and "drop `sandbox: true`" in err.message
    assert "real-key" not in err.render()


def test_a_sandbox_may_name_its_demo_credentials(tmp_path: Path) -> None:
    """The simulators' public demo credentials may be written beside `sandbox: true` (the shipped demo logs in to
    the ISP CRM's simulator with its demo subscriber)."""
    cfg = load(tmp_path, """\
        destinations:
          k: {vendor: kapture, sandbox: true, token: sandbox-token}
          i: {vendor: netgroot, sandbox: true, auth: {login: {username: sandbox, password: sandbox-password}}}
          h: {vendor: http, sandbox: true, headers: {Accept: application/json},
              auth: {oauth2: {token_url: /oauth/token, client_id: sandbox-client, client_secret: sandbox-secret}}}
        """)
    assert sorted(cfg.destinations) == ["h", "i", "k"]


@pytest.mark.parametrize("url", ["acme.kapturecrm.com", "ftp://acme.example", "//acme.example"])
def test_base_url_must_be_http(tmp_path: Path, url: str) -> None:
    """A `base_url` that is not http(s) is an error at that key naming the value."""
    err = only_error(tmp_path, f"destinations:\n  k: {{vendor: kapture, token: t, base_url: '{url}'}}\n")
    assert err.path == "destinations.k.base_url"
    assert url in err.message


@pytest.mark.parametrize("token_line", ["", "    token: ''\n", "    token: '${KAPTURE_TOKEN:-}'\n"])
def test_kapture_token_required_unless_sandbox(tmp_path: Path, token_line: str) -> None:
    """A real Kapture destination without a (non-empty) token is an error naming `token`."""
    text = "destinations:\n  k:\n    vendor: kapture\n    base_url: https://acme.kapturecrm.com\n" + token_line
    err = only_error(tmp_path, text)
    assert err.path == "destinations.k"
    assert "token" in err.message


def test_retry_schedule_durations_are_checked(tmp_path: Path) -> None:
    """A retry schedule entry that is not a duration is an error at that entry, naming its value."""
    err = only_error(tmp_path, """\
        destinations:
          k:
            vendor: kapture
            sandbox: true
            retry:
              schedule: [5s, soon, 1h]
        """)
    assert (err.line, err.path) == (6, "destinations.k.retry.schedule[1]")
    assert "'soon' is not a duration" in err.message


@pytest.mark.parametrize(("value", "said"), [("soon", "'soon' is not a duration"),
                                             ("0", "0 would stop every reconciliation before its first look-up")])
def test_reconcile_timeout_is_a_duration_longer_than_nothing(tmp_path: Path, value: str, said: str) -> None:
    """A destination's `reconcile_timeout` is 5 minutes unless set; one that is not a duration, or is 0, is an
    error at that key, on its line."""
    cfg = load(tmp_path, "destinations:\n  demo: {vendor: kapture, sandbox: true}\n")
    assert cfg.destinations["demo"].reconcile_timeout_s == 300.0
    err = only_error(tmp_path, f"destinations:\n  k:\n    vendor: kapture\n    sandbox: true\n"
                               f"    reconcile_timeout: {value}\n")
    assert (err.line, err.path) == (5, "destinations.k.reconcile_timeout")
    assert said in err.message


def test_retry_schedule_accepts_numbers_and_text(tmp_path: Path) -> None:
    """Schedule entries may be durations or plain numbers of seconds."""
    cfg = load(tmp_path, "destinations:\n  k: {vendor: kapture, sandbox: true, retry: {schedule: [1.5, 2m, 250ms]}}\n")
    assert cfg.destinations["k"].retry.delays() == [1.5, 120.0, 0.25]


def test_default_retry_schedule(tmp_path: Path) -> None:
    """Without `retry`, the documented schedule 5s, 5m, 30m, 2h, 5h, 10h, 10h applies."""
    cfg = load(tmp_path, "destinations:\n  k: {vendor: kapture, sandbox: true}\n")
    assert cfg.destinations["k"].retry.delays() == [5, 300, 1800, 7200, 18000, 36000, 36000]


@pytest.mark.parametrize(
    ("retry", "path"),
    [
        ("{max_retry_after: later}", "destinations.k.retry.max_retry_after"),
        ("{jitter: 1.5}", "destinations.k.retry.jitter"),
        ("{schedule: [-5]}", "destinations.k.retry.schedule[0]"),
    ],
)
def test_retry_options_are_checked(tmp_path: Path, retry: str, path: str) -> None:
    """Bad `max_retry_after`, out-of-range jitter and negative delays are errors at the bad key under `retry`."""
    err = only_error(tmp_path, f"destinations:\n  k: {{vendor: kapture, sandbox: true, retry: {retry}}}\n")
    assert err.path == path


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ("server: {port: 70000}\n", "server.port"),
        ("server: {port: http}\n", "server.port"),
        ("server: {max_body_bytes: 10}\n", "server.max_body_bytes"),
        ("server: {header_timeout_seconds: 0}\n", "server.header_timeout_seconds"),
        ("server: {body_timeout_seconds: -1}\n", "server.body_timeout_seconds"),
        ("server: {keepalive_timeout_seconds: soon}\n", "server.keepalive_timeout_seconds"),
        ("server: {max_connections: 0}\n", "server.max_connections"),
        ("log: {level: verbose}\n", "log.level"),
        ("destinations:\n  k: {vendor: kapture, sandbox: true, max_in_flight: 0}\n", "destinations.k.max_in_flight"),
        ("destinations:\n  k: {vendor: kapture, sandbox: true, rate_limit: {requests: 0}}\n",
         "destinations.k.rate_limit.requests"),
        ("destinations:\n  k: {vendor: kapture, sandbox: true, timeout_seconds: 0}\n",
         "destinations.k.timeout_seconds"),
    ],
)
def test_value_constraints(tmp_path: Path, text: str, path: str) -> None:
    """Out-of-range or wrongly typed values are errors at their key path."""
    assert only_error(tmp_path, text).path == path


# -- store URLs --------------------------------------------------------------------------------------


def test_sqlite_relative_url_is_relative_to_the_config_folder(tmp_path: Path) -> None:
    """`sqlite:///data/x.db` is resolved against the config file's folder, not the working directory."""
    folder = tmp_path / "etc" / "bridge"
    path = write(folder, "store: {url: 'sqlite:///data/x.db'}\n")
    cfg = load_config(path, {}, cwd=tmp_path / "elsewhere", registries=REGISTRIES)
    assert cfg.store_url == StoreURL("sqlite", folder.resolve() / "data" / "x.db", "sqlite:///data/x.db")


def test_sqlite_absolute_url(tmp_path: Path) -> None:
    """`sqlite:////abs/path.db` names an absolute path."""
    db = tmp_path / "abs" / "x.db"
    cfg = load(tmp_path / "conf", f"store: {{url: 'sqlite:///{db}'}}\n")
    assert cfg.store_url.scheme == "sqlite"
    assert cfg.store_url.path == db
    assert cfg.store_url.path.is_absolute()


@pytest.mark.parametrize(
    "url", ["postgresql://user:pass@db.internal:5432/bridge", "postgresql://user@host/db", "postgres://u@h/d"],
)
def test_postgresql_url(tmp_path: Path, url: str) -> None:
    """A PostgreSQL URL is kept whole as the DSN, with no file path."""
    cfg = load(tmp_path, f"store: {{url: '{url}'}}\n")
    assert cfg.store_url == StoreURL("postgresql", None, url)


@pytest.mark.parametrize("url", ["mysql://u@h/db", "sqlite://relative.db", "x.db", "sqlite:///", "sqlite:////", ""])
def test_bad_store_url_is_an_error_at_store_url(tmp_path: Path, url: str) -> None:
    """An unsupported or empty store URL is an error at `store.url` naming the value."""
    err = only_error(tmp_path, f"server: {{port: 1}}\nstore:\n  url: '{url}'\n")
    assert (err.line, err.path) == (3, "store.url")
    assert repr(url) in err.message


def test_store_url_from_the_environment(tmp_path: Path) -> None:
    """The store URL may come from the environment, secrets included."""
    cfg = load(tmp_path, "store: {url: '${DATABASE_URL}'}\n", {"DATABASE_URL": "postgresql://u:s3cret@h/db"})
    assert cfg.store_url.dsn == "postgresql://u:s3cret@h/db"


def test_parse_store_url_directly(tmp_path: Path) -> None:
    """`parse_store_url` resolves relative SQLite paths against the folder it is given."""
    assert parse_store_url("sqlite:///a/b.db", tmp_path).path == tmp_path / "a" / "b.db"
    assert parse_store_url("sqlite:////a/b.db", tmp_path).path == Path("/a/b.db")
    with pytest.raises(ValueError, match="not supported"):
        parse_store_url("redis://x", tmp_path)


@pytest.mark.parametrize(("url", "shown"), [
    ("postgresq://ops:s3cret-pw@db.internal:5432/tickets", "'postgresq://ops:…@db.internal:5432/tickets'"),
    ("mysql://root:p@ss@wd@h/db", "'mysql://root:…@h/db'"),
    ("postgresl://u:" + "x" * 500 + "@h/" + "d" * 500, repr(("postgresl://u:…@h/" + "d" * 500)[:199] + "…")),
])
def test_an_unsupported_store_url_is_named_without_its_password(tmp_path: Path, url: str, shown: str) -> None:
    """A mistyped scheme in a URL holding the database's password: the error names the URL without its user
    info, which `check` and the start-up log would otherwise print."""
    with pytest.raises(ValueError) as info:
        parse_store_url(url, tmp_path)
    assert str(info.value).startswith(f"store url {shown} is not supported")
    assert "s3cret" not in str(info.value) and "ss@wd" not in str(info.value)


# -- mappings folder ---------------------------------------------------------------------------------


def test_relative_mappings_folder(tmp_path: Path) -> None:
    """A relative `mappings` folder is relative to the config file's folder."""
    cfg = load_config(write(tmp_path / "conf", "mappings: maps/\n"), {}, cwd=tmp_path, registries=REGISTRIES)
    assert cfg.mappings_dir == (tmp_path / "conf").resolve() / "maps"


def test_absolute_mappings_folder(tmp_path: Path) -> None:
    """An absolute `mappings` folder is used as it is."""
    target = tmp_path / "shared-maps"
    cfg = load(tmp_path / "conf", f"mappings: '{target}'\n")
    assert cfg.mappings_dir == target


# -- the shipped default -----------------------------------------------------------------------------


def test_shipped_default_loads(tmp_path: Path) -> None:
    """With no file, the shipped default loads with an empty environment."""
    cfg = load_config(None, {}, cwd=tmp_path, registries=REGISTRIES)
    assert cfg.file is None
    assert cfg.base_dir == tmp_path
    assert cfg.admin.token == ""
    assert cfg.server.port == 8080
    assert cfg.mappings_dir == shipped_mappings_dir()


def test_shipped_default_has_the_contact_form_and_demo_kapture() -> None:
    """The shipped default has the website-contact form source and the demo-kapture sandbox destination."""
    cfg = load_config(None, {}, registries=REGISTRIES)
    web = cfg.sources["website-contact"]
    assert isinstance(web, SourceConfig)
    assert web.kind == "form"
    assert isinstance(web, FormOptions)
    assert web.honeypot is not None
    demo = cfg.destinations["demo-kapture"]
    assert demo.vendor == "kapture"
    assert demo.sandbox is True


def test_shipped_default_store_is_under_the_working_directory(tmp_path: Path) -> None:
    """The shipped default keeps its SQLite file under ./var of the working directory."""
    cfg = load_config(None, {}, cwd=tmp_path, registries=REGISTRIES)
    assert cfg.store_url.scheme == "sqlite"
    assert cfg.store_url.path == tmp_path / "var" / "ticketbridge.db"


def test_shipped_default_takes_port_and_admin_token_from_the_environment() -> None:
    """The shipped default reads PORT and BRIDGE_ADMIN_TOKEN from the environment it is given."""
    cfg = load_config(None, {"PORT": "9999", "BRIDGE_ADMIN_TOKEN": "adm"}, registries=REGISTRIES)
    assert cfg.server.port == 9999
    assert cfg.admin.token == "adm"


def test_shipped_mappings_folder_exists() -> None:
    """The shipped mappings folder the default points at is a real folder."""
    assert shipped_mappings_dir().is_dir()


# -- resolve_config_path -----------------------------------------------------------------------------


def test_resolve_explicit_path_wins(tmp_path: Path) -> None:
    """An explicitly given path is used, even when ./bridge.yaml exists and even if it does not exist."""
    write(tmp_path, "")
    assert resolve_config_path("/etc/tb/other.yaml", cwd=tmp_path) == Path("/etc/tb/other.yaml")


def test_resolve_finds_bridge_yaml_in_cwd(tmp_path: Path) -> None:
    """Without an explicit path, ./bridge.yaml in the working directory is used."""
    path = write(tmp_path, "")
    assert resolve_config_path(None, cwd=tmp_path) == path


def test_resolve_falls_back_to_the_shipped_default(tmp_path: Path) -> None:
    """With no explicit path and no ./bridge.yaml, the answer is None (the shipped default)."""
    assert resolve_config_path(None, cwd=tmp_path) is None


def test_resolve_ignores_a_bridge_yaml_folder(tmp_path: Path) -> None:
    """A folder named bridge.yaml is not a config file."""
    (tmp_path / "bridge.yaml").mkdir()
    assert resolve_config_path(None, cwd=tmp_path) is None


def test_resolve_uses_the_process_cwd_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without `cwd`, the process's working directory is searched."""
    path = write(tmp_path, "")
    monkeypatch.chdir(tmp_path)
    resolved = resolve_config_path(None)
    assert resolved is not None
    assert resolved.resolve() == path.resolve()


def test_load_config_looks_kinds_and_vendors_up_in_the_registries_it_is_given(tmp_path: Path) -> None:
    """`load_config` takes its registries as an argument: a kind they do not know is an error at its key."""
    only_json = Registries(source_options=lambda kind: {"json": JsonOptions}[kind],
                           vendor_options=lambda vendor: {"kapture": KaptureOptions}[vendor])
    path = write(tmp_path, "sources:\n  a: {kind: json}\n  b: {kind: form}\n")
    with pytest.raises(ErrorList) as info:
        load_config(path, {}, registries=only_json)
    [err] = info.value.errors
    assert isinstance(err, Located)
    assert (err.line, "form" in str(err)) == (3, True)


def test_the_config_module_imports_no_registry() -> None:
    """bridge.config is imported by the registries, so it must not import them (no hidden cycle)."""
    import subprocess
    import sys

    code = ("import sys, bridge.config; "
            "print(sorted(m for m in sys.modules if m.endswith('registry') or m.startswith('handlers')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize(("text", "says"), [
    ("  mail:\n    kind: mailgun\n    signing_key: k\n    dedup_window: 1m\n", "`tolerance` 5m either way"),
    ("  ses:\n    kind: ses\n    topic_arns: ['arn:aws:sns:us-east-1:1:t']\n    dedup_window: 30m\n", "`max_age` 1h"),
])
def test_a_dedup_window_shorter_than_a_signed_request_stays_valid_is_an_error(tmp_path: Path, text: str,
                                                                              says: str) -> None:
    """A signed source whose `dedup_window` ends before its requests' timestamps expire is refused at that key."""
    err = only_error(tmp_path, f"sources:\n{text}")
    assert (err.line, err.path) == (5, f"sources.{text.split(':', maxsplit=1)[0].strip()}.dedup_window")
    assert says in err.message


def test_retention_limits_are_durations_named_where_they_are_written(tmp_path: Path) -> None:
    """A retention limit that is not a duration, or a sweep interval of zero, is an error naming its line and key."""
    [bad] = errors_of(tmp_path, "retention:\n  events: 30d\n  dead: soon\n")
    assert bad.line == 3 and "retention.dead: 'soon' is not a duration" in str(bad)
    [late] = errors_of(tmp_path, "retention:\n  tickets: someday\n")
    assert late.line == 2 and "retention.tickets: 'someday' is not a duration" in str(late)
    [busy] = errors_of(tmp_path, "retention:\n  every: 0s\n")
    assert busy.line == 2 and "retention.every: '0s' would sweep without a pause" in str(busy)
    loaded = load(tmp_path, "retention: {events: null, attachments: 7d}\n").retention
    assert (loaded.limit("events"), loaded.limit("attachments"), loaded.limit("dead")) == (None, 7 * 86400, 90 * 86400)


def test_mapping_start_and_reload_options(tmp_path: Path) -> None:
    """`mappings_on_start_error` defaults to last_good and takes fail; `mappings_reload_timeout` is a duration."""
    default = load(tmp_path, "sources: {}\n")
    assert (default.mappings_on_start_error, default.mappings_reload_timeout_s) == ("last_good", 30.0)
    set_ = load(tmp_path, "mappings_on_start_error: fail\nmappings_reload_timeout: 2m\n")
    assert (set_.mappings_on_start_error, set_.mappings_reload_timeout_s) == ("fail", 120.0)
    [bad] = errors_of(tmp_path, "mappings_on_start_error: maybe\n")
    assert (bad.line, "mappings_on_start_error" in str(bad)) == (1, True)
    [slow] = errors_of(tmp_path, "sources: {}\nmappings_reload_timeout: soon\n")
    assert slow.line == 2 and "mappings_reload_timeout" in str(slow)


def test_mappings_allow_empty_is_off_unless_set(tmp_path: Path) -> None:
    """`mappings_allow_empty` defaults to false (an emptied folder is refused) and takes true."""
    assert load(tmp_path, "sources: {}\n").mappings_allow_empty is False
    assert load(tmp_path, "mappings_allow_empty: true\n").mappings_allow_empty is True


def test_pool_keys_reach_the_postgresql_store(tmp_path: Path) -> None:
    """`store.pool_min`/`pool_max` size the PostgreSQL pool, and `group_commit_max` its accept groups."""
    from bridge.store import open_store
    from bridge.store.postgres import PostgresStore

    cfg = load(tmp_path, "store: {url: 'postgresql://u@h/db?schema=tb', pool_min: 4, pool_max: 40, "
                         "group_commit_max: 64}\n")
    store = open_store(cfg)
    assert isinstance(store, PostgresStore)
    assert (store.min_size, store.max_size, store.batcher.group_max, store.schema) == (4, 40, 64, "tb")


def test_pool_min_above_pool_max_is_an_error_at_pool_min(tmp_path: Path) -> None:
    """A pool_min above pool_max is refused at `store.pool_min`, naming both values."""
    err = only_error(tmp_path, "store:\n  url: 'postgresql://u@h/db'\n  pool_min: 12\n  pool_max: 5\n")
    assert err.path == "store.pool_min"
    assert "pool_min (12) is above pool_max (5)" in err.message


def test_trusted_proxies_are_addresses_and_networks(tmp_path: Path) -> None:
    """`server.trusted_proxies` is empty unless set, and takes IPv4 and IPv6 addresses and CIDR networks."""
    assert load(tmp_path, "").server.trusted_proxies == []
    cfg = load(tmp_path, "server: {trusted_proxies: [10.0.0.0/8, 192.0.2.7, 'fd00::/8', '::1']}\n")
    assert cfg.server.trusted_proxies == ["10.0.0.0/8", "192.0.2.7", "fd00::/8", "::1"]


@pytest.mark.parametrize(("entry", "said"), [
    ("10.0.0.1/8", "'10.0.0.1/8' has bits set past its prefix length: write the network's own address (10.0.0.0/8, "
                   "not 10.0.0.1/8), or the one address without a prefix"),
    ("'fd00::/129'", "'fd00::/129' is not an IP address or network: write an address (192.0.2.7, 2001:db8::7) or a "
                     "network in CIDR form (10.0.0.0/8, fd00::/8)"),
    ("10", "got 10, expected text"),
])
def test_a_bad_trusted_proxy_is_an_error_at_its_index(tmp_path: Path, entry: str, said: str) -> None:
    """An entry that is no address nor network is refused at its index, on its line, quoting it and saying what
    would be right."""
    err = only_error(tmp_path, f"server:\n  port: 8080\n  trusted_proxies:\n    - 10.0.0.0/8\n    - {entry}\n")
    assert (err.line, err.path, err.message) == (5, "server.trusted_proxies[1]", said)


def test_store_lease_seconds_defaults_to_ten_and_is_bounded(tmp_path: Path) -> None:
    """`store.lease_seconds` is 10 unless set; a value under a second is an error naming the key and value."""
    assert load(tmp_path, "").store.lease_seconds == 10.0
    assert load(tmp_path, "store: {lease_seconds: 4}").store.lease_seconds == 4.0
    err = only_error(tmp_path, "store: {lease_seconds: 0.5}")
    assert err.path == "store.lease_seconds"
    assert err.message == "got 0.5, expected a number of seconds from 1 to 3600"


def test_read_tokens_map_names_to_tokens(tmp_path: Path) -> None:
    """`admin.read_tokens` is a map of name to token, each read-only and named in the audit log."""
    cfg = load(tmp_path, "admin: {token: a-secret, read_tokens: {grafana: g-secret, oncall: o-secret}}\n")
    assert cfg.admin.read_tokens == {"grafana": "g-secret", "oncall": "o-secret"}


@pytest.mark.parametrize(("text", "says"), [
    ("admin: {read_tokens: {grafana: ''}}\n", "'grafana' has none"),
    ("admin: {token: same, read_tokens: {grafana: same}}\n", "read token 'grafana' is the admin token"),
])
def test_read_tokens_refuse_an_empty_token_or_the_admin_one(tmp_path: Path, text: str, says: str) -> None:
    """A read token that is empty, or equal to admin.token, is refused at load, naming the key and why."""
    err = only_error(tmp_path, text)
    assert err.path == "admin.read_tokens.grafana"
    assert err.line == 1
    assert says in err.message


ALLOWED = ("1 to 200 printable characters (letters, digits, punctuation, symbols and spaces, a no-break space among "
           "them, though no space at either end; a zero-width joiner or non-joiner only where it joins letters: "
           "after a virama, or between two letters of a joining script such as Arabic; no NUL, tab, newline or other "
           "control or format character)")


@pytest.mark.parametrize(("section", "written", "shown", "why"), [
    ("sources", '"web\\0form"', "'web\\x00form'", "holds \\x00 (U+0000)"),
    ("destinations", '"kapture\\ud800"', "'kapture\\ud800'", "holds \\ud800 (U+D800)"),
    ("destinations", '"kap\\nture"', "'kap\\nture'", "holds \\n (U+000A)"),
    ("sources", "x" * 201, "'" + "x" * 201 + "'", "is 201 characters long"),
    ("sources", '"  "', "'  '", "is only spaces"),
    ("sources", '"\\xa0\\u202f"', "'\\xa0\\u202f'", "is only spaces"),
    ("sources", '"support\\u200cteam"', "'support\\u200cteam'", "holds \\u200c (U+200C) where it joins no letters"),
    ("destinations", '"\\u0645\\u200c"', "'\\u0645\\u200c'", "holds \\u200c (U+200C) where it joins no letters"),
    ("destinations", '"a\\u200db"', "'a\\u200db'", "holds \\u200d (U+200D) where it joins no letters"),
    ("sources", '"web\\u200bform"', "'web\\u200bform'", "holds \\u200b (U+200B)"),
    ("sources", '"\\u202eabc"', "'\\u202eabc'", "holds \\u202e (U+202E)"),
    ("destinations", '"support\\xa0"', "'support\\xa0'", "ends with a no-break space (U+00A0), which no reader sees"),
    ("sources", '"\\u202fsupport"', "'\\u202fsupport'", "begins with a no-break space (U+202F), which no reader sees"),
    ("sources", '"support "', "'support '", "ends with a space, which no reader sees"),
], ids=["nul", "surrogate", "newline", "long", "blank", "no-break-blank", "zwnj-latin", "zwnj-at-end", "zwj-latin",
        "zero-width-space", "direction-override", "trailing-nbsp", "leading-narrow-nbsp", "trailing-space"])
def test_a_name_no_store_can_keep_is_an_error_naming_its_line_and_value(
        tmp_path: Path, section: str, written: str, shown: str, why: str) -> None:
    """A source or destination name holding a NUL (YAML's "\\0"), a lone surrogate or another character that is
    not printable, or past 200 characters, is refused at load: its line, its key, the value escaped and what a name
    may hold. PostgreSQL would refuse it in every event, delivery and gate at run time."""
    kind = "kind: json" if section == "sources" else "vendor: kapture, sandbox: true"
    err = only_error(tmp_path, f"{section}:\n  ok: {{{kind}}}\n  {written}: {{{kind}}}\n")
    what = "source name" if section == "sources" else "destination name"
    assert (err.line, err.col) == (3, 3)
    assert err.message == f"{what} {shown} {why}: a {what} is {ALLOWED}"


def test_a_read_token_name_no_store_can_keep_is_an_error(tmp_path: Path) -> None:
    """A read token's name is the audit log's actor: one holding a NUL is refused at load, escaped."""
    err = only_error(tmp_path, 'admin: {token: a, read_tokens: {"graf\\0ana": t}}\n')
    assert err.message == f"read token name 'graf\\x00ana' holds \\x00 (U+0000): a read token name is {ALLOWED}"


def test_names_of_printable_characters_in_any_script_load(tmp_path: Path) -> None:
    """Letters of any script, punctuation, symbols and inner spaces are names the stores keep."""
    cfg = load(tmp_path, 'sources:\n  "Kundendienst Süd / été": {kind: json}\ndestinations:\n'
                         '  "サポート.kapture": {vendor: kapture, sandbox: true}\n')
    assert list(cfg.sources) == ["Kundendienst Süd / été"] and list(cfg.destinations) == ["サポート.kapture"]


def test_names_with_no_break_spaces_and_joiners_where_a_script_needs_them_load(tmp_path: Path) -> None:
    """A no-break space (French typography's narrow one too) is a space in a name, and a zero-width non-joiner or
    joiner stands where the script needs it: between Persian letters (a mark beside it passed over), after a
    Devanagari virama."""
    persian = "\u067e\u0634\u062a\u06cc\u0628\u0627\u0646\u06cc \u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645"
    names = ["Service\u00a0client", "Réclamations\u202f: fibre", persian, "\u0645\u064b\u200c\u062e",
             "\u0915\u094d\u200d\u0937 \u0915\u094d\u200c\u0937"]
    text = "sources:\n" + "".join(f'  "{n}": {{kind: json}}\n' for n in names)
    assert list(load(tmp_path, text).sources) == names


def test_two_names_that_differ_only_in_a_no_break_space_are_an_error(tmp_path: Path) -> None:
    """Two destinations whose names differ only in a no-break space read alike: the second is refused at its line,
    naming both."""
    err = only_error(tmp_path, "destinations:\n  Service client: {vendor: kapture, sandbox: true}\n"
                               '  "Service\\u00a0client": {vendor: kapture, sandbox: true}\n')
    assert (err.line, err.path) == (3, 'destinations["Service\xa0client"]')
    assert err.message == ("destination name 'Service\\xa0client' reads as the destination name 'Service client': "
                           "they differ only in a no-break space; give them names that read apart")


def test_a_name_that_reads_as_another_by_a_trailing_no_break_space_is_an_error(tmp_path: Path) -> None:
    """YAML keeps a no-break space at the end of an unquoted key (it is no YAML white space): `support` and
    `support` with one after it read the same in the file, and would be two destinations. The second is refused
    at its line, the space named."""
    err = only_error(tmp_path, "destinations:\n  support: {vendor: kapture, sandbox: true}\n"
                               "  support\u00a0: {vendor: kapture, sandbox: true}\n")
    assert (err.line, err.path) == (3, 'destinations["support\xa0"]')
    assert err.message.startswith("destination name 'support\\xa0' ends with a no-break space (U+00A0)")


def test_two_read_token_names_that_differ_only_in_a_no_break_space_are_an_error(tmp_path: Path) -> None:
    """Read token names are the audit log's actors: two that read alike are refused, naming both."""
    err = only_error(tmp_path, 'admin: {token: a, read_tokens: {"graf ana": t, "graf\\u00a0ana": u}}\n')
    assert err.path == 'admin.read_tokens["graf\xa0ana"]'
    assert err.message == ("read token name 'graf\\xa0ana' reads as the read token name 'graf ana': they differ "
                           "only in a no-break space; give them names that read apart")


@pytest.mark.parametrize(("destination", "line", "path", "said"), [
    ("  h:\n    vendor: http\n    base_url: https://api.test\n    headers:\n      X-Api-Key: \"${KEY}\"\n",
     6, "destinations.h.headers.X-Api-Key", "ends with a newline, which no HTTP header can carry: no request could "
                                            "be sent with it (a secret file's trailing newline? remove it)"),
    ("  h:\n    vendor: http\n    base_url: https://api.test\n    auth: {bearer: \"${KEY}\"}\n",
     5, "destinations.h.auth.bearer", "ends with a newline"),
    ("  k:\n    vendor: kapture\n    base_url: https://k.test\n    token: \"${KEY}\"\n",
     5, "destinations.k.token", "ends with a newline"),
    ("  k:\n    vendor: kapture\n    base_url: https://k.test\n    token: t\n    tokens: {pull: \"a\\rb\"}\n",
     6, "destinations.k.tokens.pull", "holds a control character ('\\r'), which no HTTP header can carry"),
    ("  l:\n    vendor: leadsquared\n    base_url: https://l.test\n    org_id: o\n    access_key: a\n"
     "    secret_key: \"${KEY}\"\n", 7, "destinations.l.secret_key", "ends with a newline"),
    ("  n:\n    vendor: netgroot\n    base_url: https://n.test\n    auth: {token: \"${KEY}\"}\n",
     5, "destinations.n.auth.token", "ends with a newline"),
])
def test_a_destination_value_sent_in_a_header_may_hold_no_control_character(
        tmp_path: Path, destination: str, line: int, path: str, said: str) -> None:
    """A header value, key or token with a newline (a Kubernetes or Docker secret file's trailing newline, through
    `${VAR}`) or another control character could never be sent: refused at load, at its key and line, saying what
    is wrong and never the secret."""
    err = only_error(tmp_path, "destinations:\n" + destination, {"KEY": "s3cret-value\n"})
    assert (err.line, err.path) == (line, path), err.render()
    assert said in err.message
    assert "s3cret" not in err.render()


@pytest.mark.parametrize(
    ("text", "environ", "where", "message"),
    [
        ("destinations:\n  k: {vendor: kapture, sandbox: true, max_in_flight: four}\n", {},
         (2, "destinations.k.max_in_flight"), "got 'four', expected a whole number from 1 to 1000"),
        ("attachments:\n  max_bytes: 10MB\n", {}, (2, "attachments.max_bytes"),
         "got '10MB', expected a whole number of bytes, 0 or more (such as 10485760 for 10 MiB: units such as MB "
         "are not read)"),
        ("server:\n  port: ${PORT}\n", {"PORT": "12x"}, (2, "server.port"),
         "got text of 3 characters from ${PORT}, expected a whole number from 0 to 65535"),
        ("server:\n  port: 99999\n", {}, (2, "server.port"), "got 99999, expected a whole number from 0 to 65535"),
        ("server:\n  shutdown_grace_seconds: 10s\n", {}, (2, "server.shutdown_grace_seconds"),
         "got '10s', expected a number of seconds, 0 or more (such as 30 or 0.5: units such as s are not read)"),
        ("destinations:\n  k: {vendor: kapture, sandbox: true, rate_limit: [1, 2]}\n", {},
         (2, "destinations.k.rate_limit"), "got a list, expected a table of keys or null"),
        ("server:\n  port: '" + "9" * 100 + "'\n", {}, (2, "server.port"),
         f"got {'9' * 60!r}…, expected a whole number from 0 to 65535"),
    ],
)
def test_a_value_of_the_wrong_type_or_range_is_quoted_with_what_the_key_takes(
        tmp_path: Path, text: str, environ: dict[str, str], where: tuple[int, str], message: str) -> None:
    """A bad value is named as written (cut short when long, with the variable it came from) beside what the key
    takes: its type in words, its unit and its bounds."""
    err = only_error(tmp_path, text, environ)
    assert (err.line, err.path) == where
    assert err.message == message


@pytest.mark.parametrize(
    ("text", "environ", "message"),
    [
        ("admin: {token: 123456789012}\n", {}, "got a number (not shown: a secret), expected text"),
        ("sources:\n  p: {kind: json, auth: {basic: {username: u, password: [hunter2-hunter2]}}}\n", {},
         "got a list (not shown: a secret), expected text"),
        ("destinations:\n  k: {vendor: kapture, base_url: 'https://x.example', token: 123456789012}\n", {},
         "got a number (not shown: a secret), expected text"),
        ("server:\n  port: ${API_TOKEN}\n", {"API_TOKEN": "tok-123456789012"},
         "got text from ${API_TOKEN} (not shown: a secret), expected a whole number from 0 to 65535"),
    ],
)
def test_a_secret_of_the_wrong_type_is_not_quoted(tmp_path: Path, text: str, environ: dict[str, str],
                                                  message: str) -> None:
    """The value of a key named like a credential, or one written with a variable so named, is described by its
    kind, never shown."""
    err = only_error(tmp_path, text, environ)
    assert err.message == message
    assert "123456789012" not in err.render() and "hunter2" not in err.render()


@pytest.mark.parametrize(
    ("text", "environ", "message"),
    [
        ("server:\n  port: ${DATABASE_URL}\n", {"DATABASE_URL": "postgresql://app:S3cretPw@db.internal/tickets"},
         "got text of 45 characters from ${DATABASE_URL}, expected a whole number from 0 to 65535"),
        ("destinations:\n  k: {vendor: kapture, sandbox: true, max_in_flight: '${SLACK_HOOK}'}\n",
         {"SLACK_HOOK": "https://hooks.slack.com/services/T0/B0/sEcReTpAtH"},
         "got text of 49 characters from ${SLACK_HOOK}, expected a whole number from 1 to 1000"),
        ("server:\n  port: ${KAPTURE_PASS}\n", {"KAPTURE_PASS": "hunter2"},
         "got text of 7 characters from ${KAPTURE_PASS}, expected a whole number from 0 to 65535"),
        ("server:\n  port: ${PORT:-8080}\n", {"PORT": "S3cretPw"},
         "got text of 8 characters from ${PORT}, expected a whole number from 0 to 65535"),
        ("server:\n  port: '80${SUFFIX}'\n", {"SUFFIX": "S3cretPw"},
         "got text of 10 characters from ${SUFFIX} (written 80${SUFFIX}), expected a whole number from 0 to 65535"),
    ],
)
def test_a_value_from_an_environment_variable_is_never_quoted(tmp_path: Path, text: str, environ: dict[str, str],
                                                               message: str) -> None:
    """A variable holds credentials under plain names (DATABASE_URL, SLACK_HOOK): a bad value that came from one is
    described by its kind and length, with the variable's name, whatever that name is."""
    err = only_error(tmp_path, text, environ)
    assert err.message == message
    for value in environ.values():
        assert value not in err.render()


@pytest.mark.parametrize(
    ("text", "path", "close"),
    [
        ("destinations:\n  k: {vendor: kapture, sandbox: true, timeout_secs: 3}\n", "destinations.k.timeout_secs",
         "timeout_seconds"),
        ("sources:\n  c: {kind: form, honeypott: website}\n", "sources.c.honeypott", "honeypot"),
        ("sever:\n  port: 80\n", "sever", "server"),
    ],
)
def test_an_unknown_key_gets_the_nearest_known_one_and_the_keys_its_table_takes(
        tmp_path: Path, text: str, path: str, close: str) -> None:
    """A misspelt key is answered with the key it likely meant and every key its table takes."""
    err = only_error(tmp_path, text)
    assert err.path == path
    key = path.rsplit(".", 1)[-1]
    assert err.message.startswith(f"unknown key {key!r} (did you mean {close!r}?); it takes ")
    assert close in err.message.split("; it takes ", 1)[1].split(", ")


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_a_bad_value_written_in_the_file_is_quoted(tmp_path: Path, case: BadValue) -> None:
    """Each check that refuses a value at load names its key and line and quotes the value as written (a URL's
    password cut, a credential's value not shown)."""
    err = only_error(tmp_path, case.text(env=False))
    assert (err.line, err.path, err.message) == (case.line, case.path, case.written)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_a_bad_value_from_an_environment_variable_is_never_shown(tmp_path: Path, case: BadValue) -> None:
    """The same checks with the value taken from a variable of a plain name (DATABASE_URL, SLACK_HOOK hold
    credentials): the error says its kind, length and variable, never the value, nor what is worked out from it."""
    err = only_error(tmp_path, case.text(env=True), {VARIABLE: case.value})
    assert (err.line, err.path, err.message) == (case.line, case.path, case.env_message)
    said = err.render().replace(str(err.file), "")
    assert [secret for secret in case.hidden if secret in said] == []


def test_sender_domain_aliases_are_taken_on_any_source(tmp_path: Path) -> None:
    """A source names the domains whose mailboxes are another domain's, for the thread's sender check."""
    config = load(tmp_path, """\
        sources:
          mail: {kind: json, sender_domain_aliases: {contoso.onmicrosoft.com: contoso.com, contoso.de: contoso.com}}
          ses: {kind: ses, topic_arns: ["arn:aws:sns:eu-west-1:123456789012:inbound"]}
        """)
    assert config.sources["mail"].sender_domain_aliases == {"contoso.onmicrosoft.com": "contoso.com",
                                                            "contoso.de": "contoso.com"}
    assert config.sources["ses"].sender_domain_aliases == {}


ALIASES_AT = "sources.mail.sender_domain_aliases"


@pytest.mark.parametrize(("aliases", "path", "message"), [
    ("{Contoso.onmicrosoft.com: contoso.com}", f'{ALIASES_AT}["Contoso.onmicrosoft.com"]',
     "the alias 'Contoso.onmicrosoft.com' is not a domain name in lower case, such as contoso.onmicrosoft.com: "
     "contoso.com"),
    ("{contoso.onmicrosoft.com: '@contoso.com'}", f'{ALIASES_AT}["contoso.onmicrosoft.com"]',
     "the domain '@contoso.com' is not a domain name in lower case"),
    ("{contoso: contoso.com}", f"{ALIASES_AT}.contoso", "the alias 'contoso' is not a domain"),
    ("{contoso.com: contoso.com}", f'{ALIASES_AT}["contoso.com"]', "'contoso.com' is an alias of itself"),
    ("{a.onmicrosoft.com: contoso.de, contoso.de: contoso.com}", f'{ALIASES_AT}["a.onmicrosoft.com"]',
     "'a.onmicrosoft.com' is an alias of 'contoso.de', itself an alias (of 'contoso.com'): name the domain they all "
     "stand for"),
])
def test_bad_sender_domain_aliases_are_named(tmp_path: Path, aliases: str, path: str, message: str) -> None:
    """An alias or domain that is no lower-case domain name, a domain its own alias, or an alias of an alias is
    refused at load, naming the source's key and the value."""
    err = only_error(tmp_path, f"sources:\n  mail: {{kind: json, sender_domain_aliases: {aliases}}}\n")
    assert err.path == path
    assert message in err.message
