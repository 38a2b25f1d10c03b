"""Every route says what it answers: a response model for JSON, the content type otherwise, and the
error statuses it can answer (tests/test_schemathesis.py checks the server keeps to them)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from fastapi.responses import JSONResponse
from hypothesis import given, settings
from hypothesis import strategies as st

from hazardlens.contracts.samples import CURSOR_PATTERN
from hazardlens.serving.app import create_app
from hazardlens.serving.deps import get_principal
from hazardlens.serving.document import api_routes

#: Path parameters that name something the route makes or acts on without looking it up first.
NO_LOOKUP = {
    "POST /v1/inspections/{record_no}/photos": "the first photo opens the record",
    "POST /v1/models/{name}/rollback": "an unknown model has nothing to roll back to (409)",
}


@pytest.fixture(scope="module")
def app() -> Any:
    return create_app(start_background=False)


def _calls(route: Any) -> list[Any]:
    out, pending = [], [route.dependant]
    while pending:
        dependant = pending.pop()
        out.append(dependant.call)
        pending.extend(dependant.dependencies)
    return out


def _takes_input(route: Any) -> bool:
    d = route.dependant
    pending, seen = [d], False
    while pending:
        x = pending.pop()
        seen = seen or bool(x.path_params or x.query_params or x.header_params or x.body_params)
        pending.extend(x.dependencies)
    return seen


def test_every_route_is_typed_and_documents_its_errors(app: Any) -> None:
    document = app.openapi()
    problems: list[str] = []
    routes = [r for r in api_routes(app) if r.include_in_schema]
    assert len(routes) >= 40
    for route in routes:
        for method in route.methods:
            where = f"{method} {route.path_format}"
            operation = document["paths"][route.path_format][method.lower()]
            documented = set(operation["responses"])
            ok = str(route.status_code or 200)
            json_route = (
                route.response_class is None
                or getattr(route.response_class, "value", route.response_class) in (JSONResponse,)
                or route.response_class.__class__.__name__ == "DefaultPlaceholder"
            )
            if route.response_model is None:
                content = operation["responses"].get(ok, {}).get("content", {})
                if json_route or not content or "application/json" in content:
                    problems.append(f"{where}: answers an untyped object (no response_model)")
            calls = _calls(route)
            if get_principal in calls and "401" not in documented:
                problems.append(f"{where}: needs a key but does not document 401")
            if any(getattr(c, "__name__", "").startswith("require_") for c in calls) and "403" not in documented:
                problems.append(f"{where}: needs a permission but does not document 403")
            if route.param_convertors and "404" not in documented and where not in NO_LOOKUP:
                problems.append(f"{where}: has path ids but does not document 404")
            if _takes_input(route) and "422" not in documented:
                problems.append(f"{where}: takes input but does not document 422")
            for status, response in operation["responses"].items():
                if status.startswith(("4", "5")):
                    ref = response.get("content", {}).get("application/json", {}).get("schema", {}).get("$ref", "")
                    if not ref.endswith("/ErrorResponse") and not (route.path_format == "/readyz" and status == "503"):
                        problems.append(f"{where}: {status} is not in the error shape")
    assert not problems, "\n".join(problems)


def test_unsupported_methods_answer_405_with_every_allowed_method(app: Any) -> None:
    from fastapi.testclient import TestClient

    with TestClient(app) as client:
        for method, path, allowed in (
            ("OPTIONS", "/v1/samples", "GET, POST"),
            ("PATCH", "/v1/samples/1", "DELETE, GET"),
            ("DELETE", "/v1/jobs", "GET, POST"),
            ("POST", "/healthz", "GET"),
        ):
            answer = client.request(method, path)
            assert answer.status_code == 405, (method, path)
            assert answer.headers["allow"] == allowed
            assert answer.json()["error"]["code"] == "method_not_allowed"


def test_nothing_null_where_null_cannot_be_sent(app: Any) -> None:
    document = app.openapi()
    for path, item in document["paths"].items():
        for method, operation in item.items():
            for parameter in operation.get("parameters", []):
                assert {"type": "null"} not in parameter["schema"].get("anyOf", []), (method, path, parameter["name"])
    forms = [s for name, s in document["components"]["schemas"].items() if name.startswith("Body_")]
    assert forms
    for form in forms:
        for name, prop in form["properties"].items():
            assert {"type": "null"} not in prop.get("anyOf", []), (form["title"], name)


@settings(max_examples=60, deadline=None)
@given(st.from_regex(re.compile(CURSOR_PATTERN), fullmatch=True))
def test_every_cursor_the_document_allows_is_one_the_server_reads(cursor: str) -> None:
    from hazardlens.datasets.search import decode_cursor, encode_cursor

    if cursor:  # reads as an id the catalogue can hold (leading zeros allowed)
        assert 0 <= decode_cursor(cursor) < 2**63
    assert re.fullmatch(CURSOR_PATTERN, encode_cursor(10**18 - 1))
