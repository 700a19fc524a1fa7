"""docs/google-forms.md, as written: its source and mapping load, and what its script posts becomes a ticket."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import AppClient, ConfigFactory, eventually, runtime
from tests.fixtures.providers import compact, google_forms_signature, load

DOC = Path(__file__).resolve().parents[2] / "docs" / "google-forms.md"
SECRET = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0"


def yaml_blocks() -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", DOC.read_text(), flags=re.DOTALL)


async def test_the_documented_recipe_makes_a_ticket(write_config: ConfigFactory, bridge_client: AppClient) -> None:
    """The doc's source and mapping, unchanged, turn a signed post of the script's body into one ticket, and a
    re-sent response into a duplicate."""
    source_block, mapping_block = yaml_blocks()
    sources = yaml.safe_load(source_block)["sources"]
    config = textwrap.dedent("""
        store: {url: "sqlite:///var/bridge.db"}
        destinations:
          kapture-support: {vendor: kapture, sandbox: true}
        """) + yaml.safe_dump({"sources": sources})
    client: Any = await bridge_client(write_config(config, {"google-form": mapping_block},
                                                   {"GOOGLE_FORMS_SECRET": SECRET}))
    body = compact(load("google_forms/response.json"))
    headers = {"Content-Type": "application/json", "X-Signature": google_forms_signature(SECRET, body)}
    first = await client.post("/hooks/google-forms", data=body, headers=headers)
    again = await client.post("/hooks/google-forms", data=body, headers=headers)
    assert (first.status, again.status) == (202, 200)
    sim = runtime(client).simulators["kapture"]
    await eventually(lambda: len(sim.tickets) == 1)
    assert sim.tickets[0]["fields"] == {"title": "Web form: No internet since this morning.",
                                        "email_id": "asha.rao@example.com", "customer_name": "Asha Rao",
                                        "source_ref": "ACYDBNj2e5F8kQ1x7v3R9mZ4"}


async def test_a_post_signed_with_another_secret_is_refused(write_config: ConfigFactory,
                                                            bridge_client: AppClient) -> None:
    """A post whose signature was made with another secret is a 401 from the hmac check."""
    sources = yaml.safe_load(yaml_blocks()[0])["sources"]
    client: Any = await bridge_client(write_config(yaml.safe_dump({"sources": sources}), {},
                                                   {"GOOGLE_FORMS_SECRET": SECRET}))
    body = compact(load("google_forms/response.json"))
    resp = await client.post("/hooks/google-forms", data=body, headers={
        "Content-Type": "application/json", "X-Signature": google_forms_signature("not-the-secret", body)})
    assert resp.status == 401
    assert (await resp.json())["check"] == "hmac"
