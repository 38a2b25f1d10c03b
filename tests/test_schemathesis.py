"""Property-based requests over the whole OpenAPI document against a real server: no 5xx, whatever
the client sends. Bounded: a few examples per operation.

Driven by hand (one hypothesis run per operation inside one test) because schemathesis' pytest
fixture integration does not run under pytest 9.
"""

from __future__ import annotations

from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from tests.fixtures.core import auth
from tests.fixtures.serving import register

EXAMPLES = 6


def test_no_server_errors(ctx, serving_app, model_variants, live_server, make_key) -> None:  # type: ignore[no-untyped-def]
    register(ctx, model_variants[0], "1")
    # An admin of a real organisation reaches the deepest code paths (promotion, every read).
    headers = auth(make_key("420000", "admin", "fuzz-admin"))
    failures: dict[str, str] = {}
    operations = 0
    with live_server(serving_app()) as server:
        schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
        for result in schema.get_all_operations():
            operation = result.ok()
            operations += 1

            @given(case=operation.as_strategy())
            @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                      suppress_health_check=list(HealthCheck))
            def run(case: Any) -> None:
                case.call_and_validate(base_url=server.url, headers=headers, checks=[not_a_server_error], timeout=30)

            try:
                run()
            except Exception as exc:  # collect all, so one run reports every failing operation
                failures[f"{operation.method.upper()} {operation.path}"] = str(exc)[:2000]
    assert operations >= 10
    assert not failures, "\n\n".join(f"{k}:\n{v}" for k, v in failures.items())
