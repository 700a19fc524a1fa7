"""The admin API against its own OpenAPI document: schemathesis generates requests for every route from
/admin/openapi.json and sends them to the running app with the admin token; no answer is a 5xx and every
answer conforms to the document."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.acceptance.console_app import ADMIN, console_app
from tests.acceptance.threaded import serve_in_thread

EXAMPLES = 100  # per route with inputs; routes without any have few distinct cases, and Hypothesis stops early


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serve_in_thread(tmp_path_factory.mktemp("openapi"), *console_app()) as url:
        for i in range(3):  # something to read: deliveries and their event
            requests.post(f"{url}/hooks/partner", json={"title": f"t{i}"}, timeout=10).raise_for_status()
        yield url


def test_generated_requests_never_fail_the_server_and_every_answer_conforms(server: str) -> None:
    """At least 1,000 generated requests over every admin route: no 5xx, every answer as the spec says."""
    doc = requests.get(f"{server}/admin/openapi.json", headers=ADMIN, timeout=10).json()
    schema = schemathesis.openapi.from_dict(doc)
    total = 0
    routes = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        routes += 1
        calls = 0

        @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def check(case: schemathesis.Case) -> None:
            nonlocal calls
            calls += 1
            case.call_and_validate(base_url=server, headers=ADMIN)

        check()
        total += calls
    assert routes == sum(len(methods) for methods in doc["paths"].values())
    print(f"schemathesis: {total} cases over {routes} routes")
    assert total >= 1000, total
