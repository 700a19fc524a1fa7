"""The app the admin console's tests run: an admin token and a read-only one (`grafana`), one JSON source
delivering to Kapture's sandbox, a failed send retried at once."""

from __future__ import annotations

ADMIN = {"Authorization": "Bearer admin-secret"}
READ = {"Authorization": "Bearer grafana-secret"}
NO_ID_CONFIG = """
store: {url: "sqlite:///var/bridge.db"}
admin: {token: admin-secret, read_tokens: {grafana: grafana-secret}}
sources:
  events: {kind: json}
destinations:
  api: {vendor: http, sandbox: true, path: /tickets, ticket_id_path: data.reference}
"""
"""The console's app with a JSON source `events` delivering to the http sandbox, which answers each create
`{"data": {"id": ...}}`: read at `data.reference`, it names no ticket (set-ticket's case)."""


def console_app(source: str = "partner") -> tuple[str, dict[str, str]]:
    """The config and mappings, `source` taking `{"title": ...}` bodies and making a ticket of each."""
    config = f"""
store: {{url: "sqlite:///var/bridge.db"}}
admin: {{token: admin-secret, read_tokens: {{grafana: grafana-secret}}}}
sources:
  {source}: {{kind: json}}
destinations:
  kapture:
    vendor: kapture
    sandbox: true
    retry: {{schedule: ["0s"]}}
"""
    mapping = f"""
source: {source}
destination: kapture
action: create_ticket
fields:
  title: "{{{{ payload.title }}}}"
"""
    return config, {source: mapping}


def threaded_mapping(source: str = "partner") -> str:
    """A mapping of `source`'s `{"text": ...}` bodies to Kapture that threads them: a conversation's first message
    makes a ticket, each next one comments on it (`sub_status: P`)."""
    return f"""
source: {source}
destination: kapture
action: create_ticket
fields:
  title: "{{{{ payload.text }}}}"
follow_up:
  action: update_ticket
  fields:
    sub_status: P
    comment: "{{{{ payload.text }}}}"
"""
