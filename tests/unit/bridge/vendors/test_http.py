"""The generic http vendor: a request configured by the destination, and answers judged by its rules."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import msgspec
import pytest
from aiohttp import web

from bridge.config import load_config
from bridge.delivery.sender import send_once
from bridge.errors import ErrorList, MappingError
from bridge.registries import REGISTRIES
from bridge.store.base import Claimed
from bridge.vendors.base import Outcome
from bridge.vendors.files import parse_multipart
from bridge.vendors.http import HttpAdapter, HttpOptions, body_path, placeholders
from bridge.vendors.registry import adapter_class
from handlers.attachments import attachment, save_attachments

BASE = "https://api.partner.example"


def adapter(**kwargs: Any) -> HttpAdapter:
    opts = msgspec.convert({"vendor": "http", "base_url": BASE, **kwargs}, HttpOptions)
    return HttpAdapter("partner", opts, BASE)


def classify(status: int, body: Any, **kwargs: Any) -> Outcome:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return adapter(**kwargs).classify("create_ticket", status, {}, raw)


def test_registry_knows_http() -> None:
    """`http` names the generic adapter, which creates and updates tickets."""
    assert adapter_class("http") is HttpAdapter
    assert HttpAdapter.actions == frozenset({"create_ticket", "update_ticket"})


def test_request_is_the_fields_as_json_with_the_configured_method_path_and_headers() -> None:
    """The body is the rendered fields as one JSON object, sent as configured, JSON declared unless overridden."""
    made = adapter(method="PUT", path="/v1/tickets", headers={"Authorization": "Bearer s3cret"})
    request = made.build_request("create_ticket", {"title": "Réseau", "n": 1}, {})
    assert (request.method, request.url) == ("PUT", BASE + "/v1/tickets")
    assert request.headers == {"Content-Type": "application/json", "Authorization": "Bearer s3cret"}
    assert json.loads(request.body) == {"title": "Réseau", "n": 1}


def test_headers_take_secrets_from_the_environment(tmp_path: Any) -> None:
    """A header written `${VAR}` in bridge.yaml carries the environment's value."""
    (tmp_path / "bridge.yaml").write_text(
        'destinations:\n  partner: {vendor: http, base_url: "https://x.example", headers: {X-Api-Key: "${KEY}"}}\n')
    config = load_config(tmp_path / "bridge.yaml", {"KEY": "from-env"}, registries=REGISTRIES)
    dest = config.destinations["partner"]
    assert isinstance(dest, HttpOptions)
    assert dest.headers == {"X-Api-Key": "from-env"}


def test_path_placeholders_are_filled_from_fields_and_quoted() -> None:
    """`{name}` in the path takes the rendered field, URL-quoted, and the field stays in the body."""
    request = adapter(path="/tickets/{ticket_id}/notes").build_request(
        "update_ticket", {"ticket_id": "A/B 1", "note": "x"}, {})
    assert request.url == BASE + "/tickets/A%2FB%201/notes"
    assert json.loads(request.body) == {"ticket_id": "A/B 1", "note": "x"}


def test_mapping_options_override_method_and_path() -> None:
    """A mapping's options may set method and path, so one destination serves create and update."""
    request = adapter().build_request("update_ticket", {"id": 7}, {"method": "PATCH", "path": "/t/{id}"})
    assert (request.method, request.url) == ("PATCH", BASE + "/t/7")


@pytest.mark.parametrize("value", [None, "", {"a": 1}, True])
def test_a_placeholder_without_a_usable_field_is_a_mapping_error(value: Any) -> None:
    """A path placeholder whose field is missing, empty or not text is refused before sending, naming it."""
    fields = {} if value is None else {"ticket_id": value}
    with pytest.raises(MappingError) as info:
        adapter(path="/t/{ticket_id}").build_request("update_ticket", fields, {})
    assert info.value.path == "ticket_id"


@pytest.mark.parametrize(("table", "message"), [
    ({"path": "tickets"}, "`path` 'tickets' must start with /"),
    ({"path": "/t/{a.b}"}, "bad placeholder in path '/t/{a.b}'"),
    ({"path": "/t/{id!r}"}, "bad placeholder"),
    ({"path": "/t/{"}, "bad path template"),
    ({"method": "GET"}, "method"),
    ({"success_path": "data..id"}, "`success_path`: bad body path 'data..id'"),
    ({"ticket_id_path": ""}, "`ticket_id_path`: bad body path ''"),
    ({"success_statuses": []}, "`success_statuses` [] must list HTTP statuses"),
    ({"success_statuses": [20]}, "must list HTTP statuses"),
    ({"success_statuses": [200, 101]}, "`success_statuses` lists 101: an interim status (1xx) is no answer"),
    ({"headers": {"accept-encoding": "gzip, deflate, br, zstd"}}, "`headers.accept-encoding` offers 'zstd', which a "
     "vendor's answer is not read in: offer only gzip, deflate, br or identity, or leave the header out (every "
     "request offers gzip, deflate, br)"),
    ({"headers": {"Accept-Encoding": "*;q=0.5, x-foo"}}, "`headers.Accept-Encoding` offers '*', 'x-foo', which"),
])
def test_options_are_checked_with_a_clear_error(table: dict[str, Any], message: str) -> None:
    """A bad path, method, body path or status list is refused when the config loads, saying what is wrong."""
    with pytest.raises(msgspec.ValidationError) as info:
        msgspec.convert({"vendor": "http", "base_url": BASE, **table}, HttpOptions)
    assert message in str(info.value)


@pytest.mark.parametrize("offer", ["gzip", "GZip, x-gzip, deflate, br, identity", "br;q=1.0, zstd;q=0, *;q=0.000",
                                   "identity;q=1, *;Q=0"])
def test_an_accept_encoding_of_codings_read_is_taken(offer: str) -> None:
    """A configured Accept-Encoding (it replaces the one every request makes) may offer the codings a send's answer
    is read in, and refuse any other with q=0."""
    options = msgspec.convert({"vendor": "http", "base_url": BASE, "headers": {"Accept-Encoding": offer}}, HttpOptions)
    assert options.headers == {"Accept-Encoding": offer}


def test_config_errors_name_the_file_and_key(tmp_path: Any) -> None:
    """A bad http destination is reported with the file and the destination's key path."""
    (tmp_path / "bridge.yaml").write_text('destinations:\n  partner: {vendor: http, base_url: "https://x", '
                                          'path: "nope"}\n')
    with pytest.raises(ErrorList, match=r"bridge.yaml:2:.*destinations.partner.*must start with /"):
        load_config(tmp_path / "bridge.yaml", {}, registries=REGISTRIES)


@pytest.mark.parametrize(("fields", "options", "problems"), [
    (["id"], {"path": "/t/{id}", "method": "PATCH"}, []),
    (["title"], {"path": "/t/{id}"}, ["options.path: placeholder {id} is not a field of this mapping "
                                         "(nor {ticket.id} / {ticket.key})"]),
    (["title"], {"verb": "POST"}, ["options.verb: unknown http option; a mapping may set: method, path"]),
    (["title"], {"method": "DELETE"}, ["options.method: 'DELETE' is not one of POST, PUT, PATCH"]),
    (["title"], {"path": "t"}, ["options.path: `path` 't' must start with /, e.g. /api/tickets"]),
])
def test_static_check(fields: list[str], options: dict[str, Any], problems: list[str]) -> None:
    """Mapping options are checked when the mappings load: known keys, a method, placeholders that are fields."""
    assert HttpAdapter.static_check("create_ticket", fields, options) == problems


def test_body_paths() -> None:
    """Body paths are dotted with indexes, relative to the answer; placeholders are listed in order."""
    assert body_path("data.items[1].id").get({"body": {"data": {"items": [{}, {"id": 5}]}}}) == 5
    assert body_path("[0].id").get({"body": [{"id": "x"}]}) == "x"
    assert placeholders("/a/{x}/b/{y}") == ["x", "y"]


def test_any_success_status_is_a_success_with_the_ticket_id_from_its_path() -> None:
    """A success status is a success; the ticket id is read from ticket_id_path as text."""
    outcome = classify(201, {"data": {"ticket": {"id": 42}}}, ticket_id_path="data.ticket.id")
    assert outcome == Outcome(classification="success", ticket_id="42")
    assert classify(204, b"") == Outcome(classification="success", ticket_id=None)


def test_success_path_must_hold_the_value() -> None:
    """With success_path, a success status whose body does not hold success_value there is permanent."""
    rules = {"success_path": "ok", "success_value": "yes", "error_path": "error.message"}
    assert classify(200, {"ok": "yes"}, **rules).classification == "success"
    outcome = classify(200, {"ok": "no", "error": {"message": "duplicate"}}, **rules)
    assert outcome == Outcome(classification="permanent", error="http: HTTP 200 but ok is 'no', not 'yes': duplicate")
    missing = classify(200, b"[]", success_path="ok")
    assert missing.error == "http: HTTP 200 but ok is nothing, not True: []"


@pytest.mark.parametrize("rules", [{"success_path": "ok"}, {"ticket_id_path": "id"}])
@pytest.mark.parametrize("body", [b"<html>", b'{"id": "T-777", "title": "Caf\xe9"', b"{'id': 'T-777'}"])
def test_a_success_status_whose_answer_cannot_be_read_is_unknown(rules: dict[str, str], body: bytes) -> None:
    """With `success_path` or `ticket_id_path`, a success status whose answer is not JSON (even read leniently) is
    in doubt: the vendor may have made a ticket that cannot be named. Not a quiet success without the id (a thread's
    next message would be sent as a second create), nor a permanent failure (a replay would make one)."""
    outcome = classify(201, body, **rules)
    assert outcome == Outcome(classification="unknown",
                              error="http: HTTP 201 but the answer is not JSON, so no ticket "
                                    f"is named: {body.decode('utf-8', 'replace')}")


@pytest.mark.parametrize("body", [b'{"id": "T-777", "title": "Caf\xe9"}', b'{"id": "T-777", "title": "\\ud83d"}'])
def test_a_success_msgspec_cannot_decode_is_read_leniently(body: bytes) -> None:
    """A success echoing a Latin-1 byte or a title cut inside an emoji still gives its ticket id."""
    assert classify(201, body, ticket_id_path="id") == Outcome(classification="success", ticket_id="T-777")


@pytest.mark.parametrize("body", [b"null", b" null\r\n", b"[]"])
def test_a_json_null_is_read_as_json(body: bytes) -> None:
    """A success answering JSON `null` is JSON, read as `[]` is: it names no ticket (`ticket_id_path`: a success
    without an id) and says nothing at `success_path` (permanent, saying so), never "the answer is not JSON"."""
    assert classify(200, body, ticket_id_path="id") == Outcome(classification="success", ticket_id=None)
    outcome = classify(200, body, success_path="ok")
    assert outcome.classification == "permanent"
    assert (outcome.error or "").startswith("http: HTTP 200 but ok is nothing, not True: ")


def test_a_success_without_a_body_is_a_success_without_an_id() -> None:
    """An empty answer (204) is read: it names no ticket (counted as such), and is no doubt."""
    assert classify(204, b"", ticket_id_path="id") == Outcome(classification="success", ticket_id=None)


@pytest.mark.parametrize(("status", "classification"), [(401, "auth"), (403, "auth"), (429, "retry"),
                                                        (500, "retry"), (408, "retry"), (400, "permanent"),
                                                        (404, "permanent"), (307, "retry"), (302, "unknown")])
def test_other_statuses(status: int, classification: str) -> None:
    """Statuses outside the success list: 401/403 auth, 408/429/5xx and a redirect asking for the same request
    elsewhere retry, a 302 after a send (Post/Redirect/Get) unknown, anything else permanent."""
    outcome = classify(status, {"error": "nope"}, error_path="error")
    assert outcome.classification == classification
    assert outcome.error is not None
    assert outcome.error.endswith("nope")


@pytest.mark.parametrize(("status", "error"), [
    (301, "http: HTTP 301 redirect to 'https://moved.example/t' (not followed): the destination's URL is not where "
          "the API answers; fix its base_url or path"),
    (500, "http: HTTP 500"), (404, "http: HTTP 404")])
def test_an_empty_failure_s_error_ends_with_what_it_says(status: int, error: str) -> None:
    """A failure with an empty body is named without a dangling `: `."""
    made = adapter()
    outcome = made.classify("create_ticket", status, {"Location": "https://moved.example/t?sig=1"}, b"")
    assert outcome.error == error


def test_success_statuses_can_be_narrowed() -> None:
    """With success_statuses [201], a 200 is not a success."""
    assert classify(200, {}, success_statuses=[201]).classification == "permanent"


# -- follow-ups and multipart ------------------------------------------------------------------------

TICKET = {"id": "T-7", "key": "#7", "destination": "partner", "created_at": "2026-11-26T10:00:00Z", "messages": 2,
          "last_message_at": "2026-11-26T10:00:00Z"}


def test_path_names_the_follow_ups_ticket() -> None:
    """`{ticket.id}` and `{ticket.key}` in a path are the follow-up's ticket, URL-quoted."""
    request = adapter().build_request("update_ticket", {"comment": "again"},
                                      {"method": "PATCH", "path": "/tickets/{ticket.id}/notes/{ticket.key}"},
                                      ticket=TICKET)
    assert (request.method, request.url) == ("PATCH", BASE + "/tickets/T-7/notes/%237")
    assert json.loads(request.body) == {"comment": "again"}


def test_a_ticket_path_without_a_ticket_is_a_mapping_error() -> None:
    """A first message has no ticket: a path naming one is refused, saying so."""
    with pytest.raises(MappingError, match="names the follow-up's ticket, but this message has no ticket yet"):
        adapter(path="/tickets/{ticket.id}").build_request("update_ticket", {"c": 1}, {})


@pytest.mark.parametrize(("acct", "segment"), [("..", ".."), (".", "."), ("x", None), ("...", None),
                                              ("%2E%2E", None), ("../tickets", None)])
def test_a_sender_s_dot_segment_in_a_path_is_refused(acct: str, segment: str | None) -> None:
    """A field filling a whole path segment with `.` or `..` would move the request to another path of the API
    (`/accounts/../tickets` is `/tickets`), with the destination's credentials: a mapping error naming the field
    and its value. Anything else is one segment, percent-encoded whole (`/` and `%` too)."""
    made = adapter(path="/accounts/{acct}/tickets")
    if segment is None:
        request = made.build_request("create_ticket", {"acct": acct}, {})
        assert request.url == BASE + "/accounts/" + quote(acct, safe="") + "/tickets"
        return
    with pytest.raises(MappingError) as info:
        made.build_request("create_ticket", {"acct": acct}, {})
    assert info.value.path == "acct"
    assert str(info.value) == (f"acct: the path '/accounts/{{acct}}/tickets' would read the segment {segment!r} from "
                               f"this field's value {acct!r}: a dot segment would send the request to another path "
                               "of the API; give a value that is not `.` or `..`")


def test_a_dot_segment_made_with_the_template_s_text_is_refused() -> None:
    """A value that makes `..` with the literal text beside it (`/a/.{x}`) is refused too, naming the field."""
    said = "would read the segment '..' from this field's value '.'"
    with pytest.raises(MappingError, match=re.escape(said)) as info:
        adapter(path="/a/.{x}/t").build_request("create_ticket", {"x": "."}, {})
    assert info.value.path == "x"
    with pytest.raises(MappingError, match="holds the dot segment '%2E'") as info:
        adapter().build_request("create_ticket", {"x": "y"}, {"path": "/a/%2E/{x}"})
    assert info.value.path == "options.path"


@pytest.mark.parametrize(("path", "said"), [
    ("/v1/./tickets/../tickets", "holds the dot segment '.'"),
    ("/v1/tickets/..", "holds the dot segment '..'"),
    ("/a/%2e%2E/{x}", "holds the dot segment '%2e%2E'"),
    ("/a/%zz/{x}", "holds a `%` that starts no percent-escape"),
    ("/a/100%", "holds a `%` that starts no percent-escape"),
    ("/a/x%{x}", "holds a `%` that starts no percent-escape"),
])
def test_a_path_every_delivery_would_refuse_is_refused_at_load(path: str, said: str) -> None:
    """A literal `.` or `..` segment (which every send refuses, the whole backlog dying) or a `%` that starts no
    percent-escape (which would go out raw) is refused when the config loads: the destination's `path`, a
    look-up's, and a mapping's `options.path` (by `ticketbridge check`), naming the field and the value."""
    with pytest.raises(ValueError, match=re.escape(said)) as info:
        adapter(path=path)
    assert "path" in str(info.value) and path in str(info.value)
    with pytest.raises(ValueError, match=re.escape(said)):
        adapter(lookup={"path": path + "?ref={x}", "ticket_id_path": "id"})
    [problem] = HttpAdapter.static_check("create_ticket", ["x"], {"path": path})
    assert problem.startswith("options.path: ") and said in problem and repr(path) in problem


def test_a_dotted_name_and_an_escape_are_no_dot_segment_nor_stray_percent() -> None:
    """A segment that only holds dots beside other text (`v1.2`, `...`, `{x}.json`) and a whole escape
    (`%7E`, `%25`) pass."""
    for path in ("/v1.2/tickets", "/a/.../b", "/t/{x}.json", "/%7Eme/%25/{x}", "/t?a=.."):
        adapter(path=path)
        assert HttpAdapter.static_check("create_ticket", ["x"], {"path": path}) == []


@pytest.mark.parametrize("ticket_id", ["..", "."])
def test_a_vendor_s_dot_ticket_id_in_a_follow_up_path_is_refused(ticket_id: str) -> None:
    """A ticket id the vendor gave that is `.` or `..` is not sent in a follow-up's path: the attempt fails,
    naming the ticket's id, nothing sent."""
    with pytest.raises(MappingError) as info:
        adapter(path="/tickets/{ticket.id}/comments").build_request("update_ticket", {"c": 1}, {},
                                                                    ticket={**TICKET, "id": ticket_id})
    assert str(info.value) == (f"options.path: the path '/tickets/{{ticket.id}}/comments' would read the segment "
                               f"{ticket_id!r} from {{ticket.id}} (the vendor's ticket id) {ticket_id!r}: a dot "
                               "segment would send the request to another path of the API, so it is not sent")


async def test_the_url_is_sent_as_written(aiohttp_server: Any) -> None:
    """The URL goes out as the adapter wrote it: not normalised nor requoted by yarl (which would decode the
    template's `%7E` and drop dot segments), each value percent-encoded whole."""
    seen: list[str] = []
    app = web.Application()

    async def tickets(request: web.Request) -> web.Response:
        seen.append(request.raw_path)
        return web.json_response({"id": "T-1"}, status=201)

    app.router.add_post("/{tail:.*}", tickets)
    base = str((await aiohttp_server(app)).make_url("")).rstrip("/")
    opts = msgspec.convert({"vendor": "http", "base_url": base, "path": "/accounts/%7E{acct}/tickets"}, HttpOptions)
    made = HttpAdapter("partner", opts, base)
    item = Claimed(id="dlv_1", event_id="evt_1", mapping="m", destination="partner", action="create_ticket",
                   body={"acct": "a b/..?#%2E"}, options={}, tries=0, attempts=0)
    async with aiohttp.ClientSession() as session:
        sent = await send_once(session, made, item, 5.0)
    assert sent.outcome.classification == "success"
    assert seen == ["/accounts/%7Ea%20b%2F..%3F%23%252E/tickets"]


def test_ticket_placeholders_pass_the_static_check() -> None:
    """{ticket.id}/{ticket.key} are not fields but are known; other dotted names are still refused."""
    assert HttpAdapter.static_check("update_ticket", ["c"], {"path": "/t/{ticket.id}"}) == []
    assert HttpAdapter.static_check("update_ticket", ["c"], {"path": "/t/{ticket.owner}"})[0].startswith(
        "options.path: bad placeholder")


async def test_multipart_mode_sends_json_fields_and_files_parts(tmp_path: Path) -> None:
    """With body: multipart, the fields go as JSON in the `data` part and each file as a `files` part."""
    item = attachment("r.jpg", "image/jpeg", b"\xff\xd8jpeg")
    save_attachments([item], tmp_path, 1000)
    opts = msgspec.convert({"vendor": "http", "base_url": BASE, "body": "multipart"}, HttpOptions)
    made = HttpAdapter("partner", opts, BASE, attachments_dir=tmp_path)
    fields = await made.prepare("create_ticket", {"title": "t", "files": [item.meta]}, no_fetch)
    request = made.build_request("create_ticket", fields, {})
    data, photo = parse_multipart(request.body, request.headers["Content-Type"])
    assert (data.name, data.content_type, json.loads(data.content)) == ("data", "application/json", {"title": "t"})
    assert (photo.name, photo.filename, photo.content) == ("files", "r.jpg", b"\xff\xd8jpeg")


async def test_multipart_mode_names_files_left_out(tmp_path: Path) -> None:
    """A file missing from disk is named in the configured note field of the JSON part."""
    meta = {"name": "gone.pdf", "size": 10, "sha256": "d" * 64, "stored": True}
    opts = msgspec.convert({"vendor": "http", "base_url": BASE, "body": "multipart",
                            "attachments": {"note_field": "description"}}, HttpOptions)
    made = HttpAdapter("partner", opts, BASE, attachments_dir=tmp_path)
    fields = await made.prepare("create_ticket", {"description": "d", "files": [meta]}, no_fetch)
    request = made.build_request("create_ticket", fields, {})
    (data,) = parse_multipart(request.body, request.headers["Content-Type"])
    assert json.loads(data.content) == {"description": "d\n\nAttachments not sent:\n- gone.pdf (10 B): no longer on "
                                                       "disk (purged)"}


async def test_json_mode_sends_the_files_metadata_as_a_field() -> None:
    """Without multipart, `files` is an ordinary field: the attachments' metadata, nothing read from disk."""
    meta = {"name": "a.pdf", "size": 3, "sha256": "e" * 64}
    fields = await adapter().prepare("create_ticket", {"files": [meta]}, no_fetch)
    assert json.loads(adapter().build_request("create_ticket", fields, {}).body) == {"files": [meta]}


async def no_fetch(url: str, headers: dict[str, str]) -> tuple[int, bytes]:
    raise AssertionError("no look-up expected")


def test_a_jinja_style_path_is_refused_with_the_single_brace_form() -> None:
    """`{{ ticket.id }}` in a path is a load error pointing to `{ticket.id}`, not a literal brace in the URL."""
    assert HttpAdapter.static_check("update_ticket", ["c"], {"path": "/t/{{ ticket.id }}"}) == [
        "options.path: `path` '/t/{{ ticket.id }}' holds a template: path placeholders take single braces, "
        "e.g. /tickets/{ticket.id} or /tickets/{ticket_ref}"]
    with pytest.raises(msgspec.ValidationError, match="single braces"):
        msgspec.convert({"vendor": "http", "base_url": BASE, "path": "/t/{{ticket.id}}"}, HttpOptions)


@pytest.mark.parametrize(("base_url", "shown"), [
    ("hooks.example.com/services/T01/B02/SECRETSECRET", "`base_url` 'hooks.example.com'/… (the rest not shown"),
    ("SECRETSECRET", "`base_url` (not shown: url_secret) must start with http:// or https://"),
])
def test_a_secret_base_url_without_a_scheme_is_refused_without_showing_it(tmp_path: Path, base_url: str,
                                                                         shown: str) -> None:
    """With `url_secret`, a base URL missing its scheme is refused naming the file, the key and its host at most:
    the path, which is the credential, is not in the error. (One from an environment variable is never shown.)"""
    (tmp_path / "bridge.yaml").write_text(f'destinations:\n  hook: {{vendor: http, base_url: "{base_url}", '
                                          'url_secret: true}\n')
    with pytest.raises(ErrorList) as info:
        load_config(tmp_path / "bridge.yaml", {}, registries=REGISTRIES)
    said = str(info.value) + "".join(e.render() for e in info.value.errors)
    assert "bridge.yaml:2:" in said and "destinations.hook" in said and shown in said
    assert "SECRET" not in said


HOOK_TOKEN = "XXXXXXXXXXXXXXXX"
HOOK_PATH = f"/services/T0001ABCD/B0002EFGH/{HOOK_TOKEN}"


def test_with_url_secret_the_parts_of_each_configured_path_are_secrets() -> None:
    """With `url_secret`, the `path` (a webhook's secret may be written there rather than in `base_url`) is a
    secret whole and by its ids and tokens, as the base URL's path is; so are those of `doctor.path` and
    `lookup.path`. A templated path's literal parts are, those long enough to be secrets; placeholders (the
    event's fields) and the API's words are not. Without `url_secret` no path is a secret."""
    opts = adapter(path=HOOK_PATH, url_secret=True, doctor={"path": "/api/test/9f8e7d6c5b4a"},
                   lookup={"path": "/s/{ref}/Q0003IJKL?x={ref}", "ticket_id_path": "id"}).options
    assert opts.secret_values() == {
        "path": HOOK_PATH, "path[1]": "T0001ABCD", "path[2]": "B0002EFGH", "path[3]": HOOK_TOKEN,
        "doctor.path": "/api/test/9f8e7d6c5b4a", "doctor.path[2]": "9f8e7d6c5b4a",
        "lookup.path.1": "/Q0003IJKL?x=", "lookup.path.1[0]": "Q0003IJKL"}
    templated = adapter(path="/services/{team}/B0002EFGH/{hook}/tickets", url_secret=True).options
    assert templated.secret_values() == {"path.1": "/B0002EFGH", "path.1[0]": "B0002EFGH"}
    assert adapter(path=HOOK_PATH).options.secret_values() == {}
    braces = adapter(url_secret=True, doctor={"path": "/x/{y}/9f8e7d6c5b4a"}).options  # the doctor's: no template
    assert braces.secret_values() == {"doctor.path": "/x/{y}/9f8e7d6c5b4a", "doctor.path[2]": "9f8e7d6c5b4a"}


def test_with_url_secret_a_mapping_s_path_is_redacted_from_its_attempts() -> None:
    """A mapping's `options.path` holding the secret: its parts are redacted by the attempt's matcher (worked out
    from the attempt's options, beside the destination's); without `url_secret`, and for another mapping's path,
    they are not."""
    secret = adapter(url_secret=True)
    said = f"no_service: {HOOK_PATH} (token {HOOK_TOKEN})"
    assert secret.redaction({"path": HOOK_PATH}).text(said) == "no_service: [redacted] (token [redacted])"
    assert secret.redaction({"path": "/other/{id}"}).text(said) == said
    assert secret.redaction().text(said) == said
    assert adapter().redaction({"path": HOOK_PATH}).text(said) == said
    assert secret.redaction({"path": "/t/{{x}}"}).text(said) == said  # a malformed path: none of it


@pytest.mark.parametrize(("path", "shown"), [
    ("services/T0001ABCD/SECRETSECRET", "`path` (not shown: url_secret) must start with /, e.g. /api/tickets"),
    ("/services/{{hook}}/SECRETSECRET", "`path` (not shown: url_secret) holds a template"),
])
def test_with_url_secret_a_bad_path_is_refused_without_showing_it(path: str, shown: str) -> None:
    """With `url_secret`, a `path` that cannot be used is refused saying why, without the path (the credential)."""
    with pytest.raises(msgspec.ValidationError) as info:
        msgspec.convert({"vendor": "http", "base_url": BASE, "path": path, "url_secret": True}, HttpOptions)
    assert shown in str(info.value) and "SECRET" not in str(info.value)
    with pytest.raises(msgspec.ValidationError, match="SECRETSECRET"):
        msgspec.convert({"vendor": "http", "base_url": BASE, "path": path}, HttpOptions)


@pytest.mark.parametrize(("lines", "key", "shown"), [
    ("    doctor:\n      path: '${P}'\n", "doctor.path",
     "`path` (not shown: url_secret) must start with /, e.g. /api/me"),
    ("    on_unknown: reconcile\n    lookup:\n      ticket_id_path: id\n      path: '${P}'\n", "lookup.path",
     "`path` (not shown: url_secret) must start with /, e.g. /api/tickets"),
], ids=["doctor", "lookup"])
@pytest.mark.parametrize("value", ["services/T0001ABCD/SECRETSECRET", "services/T0001ABCD/SECRETSECRET?k=SECRET"],
                         ids=["path", "query"])
def test_with_url_secret_a_bad_doctor_or_lookup_path_is_refused_without_showing_it(tmp_path: Path, lines: str,
                                                                                  key: str, shown: str,
                                                                                  value: str) -> None:
    """With `url_secret`, a `doctor.path` or `lookup.path` that cannot be used is refused at its key and line,
    saying why without the path, as `path` is; without `url_secret` the path written in the file is shown."""
    config = ("destinations:\n  hook:\n    vendor: http\n    base_url: https://hooks.example.com\n"
              "    url_secret: SECRET_URL\n" + lines.replace("${P}", value))
    (tmp_path / "bridge.yaml").write_text(config.replace("SECRET_URL", "true"))
    with pytest.raises(ErrorList) as info:
        load_config(tmp_path / "bridge.yaml", {}, registries=REGISTRIES)
    said = "".join(e.render() for e in info.value.errors)
    line = 1 + config.splitlines().index(f"      path: '{value}'")
    assert f"bridge.yaml:{line}:" in said and f"destinations.hook.{key}: {shown}" in said, said
    assert "SECRET" not in said
    (tmp_path / "bridge.yaml").write_text(config.replace("SECRET_URL", "false"))
    with pytest.raises(ErrorList, match="SECRETSECRET"):
        load_config(tmp_path / "bridge.yaml", {}, registries=REGISTRIES)


@pytest.mark.parametrize("path", ["/services/{{hook}}/SECRETSECRET", "/services/{hook!r}/SECRETSECRET?q={ref}"])
def test_with_url_secret_a_malformed_lookup_template_is_refused_without_showing_it(path: str) -> None:
    """A `lookup.path` whose template cannot be read is refused without it too (a placeholder's fault said)."""
    with pytest.raises(msgspec.ValidationError) as info:
        msgspec.convert({"vendor": "http", "base_url": BASE, "url_secret": True,
                         "lookup": {"path": path, "ticket_id_path": "id"}}, HttpOptions)
    assert "(not shown: url_secret)" in str(info.value) and "SECRET" not in str(info.value)
