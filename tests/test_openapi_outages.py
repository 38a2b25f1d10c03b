"""The OpenAPI document declares the outage answers (503, 507) on the routes that can give them, in
the one error shape with their codes (issue 13), and a route the document says can meet a store
outage really answers it so when the store is down."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from hazardlens.context import Context
from hazardlens.error_codes import ERROR_CODES
from hazardlens.serving.app import create_app
from hazardlens.serving.deps import get_principal
from hazardlens.serving.document import JOB_ROUTES, MODEL_ROUTES, STORE_ROUTES, api_routes
from hazardlens.settings import Settings
from tests.fixtures.core import auth, make_image

ERROR_REF = "#/components/schemas/ErrorResponse"
WRITES = {"POST", "PUT", "PATCH", "DELETE"}


@pytest.fixture(scope="module")
def app() -> Any:
    return create_app(start_background=False)


def _needs_key(route: Any) -> bool:
    pending = [route.dependant]
    while pending:
        dependant = pending.pop()
        if dependant.call is get_principal:
            return True
        pending.extend(dependant.dependencies)
    return False


def test_outages_are_declared_where_they_can_happen(app: Any) -> None:
    doc = app.openapi()
    problems: list[str] = []
    seen: set[tuple[str, str]] = set()
    for route in (r for r in api_routes(app) if r.include_in_schema):
        for method in route.methods:
            op = doc["paths"][route.path_format][method.lower()]
            where = (method.lower(), route.path_format)
            seen.add(where)
            responses = op["responses"]
            want_503 = set()
            if _needs_key(route):  # the key is looked up in the catalogue
                want_503.add("catalogue_unavailable")
                if method in WRITES:
                    full = responses.get("507", {})
                    if full.get("x-error-codes") != ["insufficient_storage"]:
                        problems.append(f"{where}: a keyed write without 507 insufficient_storage")
            if where in STORE_ROUTES:
                want_503.add("store_unavailable")
            if where in JOB_ROUTES:
                want_503.add("broker_unavailable")
            if where in MODEL_ROUTES:
                want_503.add("overloaded")
                if "Retry-After" not in responses.get("503", {}).get("headers", {}):
                    problems.append(f"{where}: overloaded without a Retry-After header")
            if want_503:
                answer = responses.get("503", {})
                missing = want_503 - set(answer.get("x-error-codes", []))
                if missing:
                    problems.append(f"{where}: 503 does not declare {sorted(missing)}")
                for code in want_503:
                    if f"`{code}`" not in answer.get("description", ""):
                        problems.append(f"{where}: 503's description does not name {code}")
            for status in ("503", "507"):
                answer = responses.get(status)
                if answer is None:
                    continue
                ref = answer.get("content", {}).get("application/json", {}).get("schema", {}).get("$ref")
                if ref != ERROR_REF and route.path_format != "/readyz":
                    problems.append(f"{where}: {status} is not in the error shape")
                for code in answer.get("x-error-codes", []):
                    if int(status) not in ERROR_CODES[code].statuses:
                        problems.append(
                            f"{where}: {code} is registered as {ERROR_CODES[code].statuses}, declared {status}"
                        )
    # the tables name real operations (a renamed route would otherwise lose its declarations silently)
    stale = (STORE_ROUTES | JOB_ROUTES | MODEL_ROUTES) - seen
    assert not stale, f"outage tables name operations the app does not have: {sorted(stale)}"
    assert not problems, "\n".join(problems)


def test_published_document_declares_them(app: Any) -> None:
    """docs/openapi.json (``make openapi``) is what clients build against: it says the same."""
    published = json.loads((Path(__file__).resolve().parent.parent / "docs" / "openapi.json").read_text())
    upload = published["paths"]["/v1/samples"]["post"]["responses"]
    assert set(upload["503"]["x-error-codes"]) >= {"catalogue_unavailable", "store_unavailable"}
    assert upload["507"]["x-error-codes"] == ["insufficient_storage"]
    detect = published["paths"]["/v1/detect"]["post"]["responses"]["503"]
    assert "overloaded" in detect["x-error-codes"] and "Retry-After" in detect["headers"]
    assert "broker_unavailable" in published["paths"]["/v1/jobs"]["post"]["responses"]["503"]["x-error-codes"]


def test_a_declared_store_outage_is_what_the_route_answers(tmp_path: Path) -> None:
    """With S3 stopped (a moto server of this test's own, its port closed after start-up), an upload
    (a store route) answers 503 store_unavailable in the error shape, as its document says; the
    sample list (no store) still answers 200."""
    from fastapi.testclient import TestClient
    from moto.server import ThreadedMotoServer

    from hazardlens.auth import create_key
    from tests.fixtures.s3 import S3_ACCESS_KEY, S3_SECRET_KEY, _free_port

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    settings = Settings(
        home=tmp_path / "home",
        store="minio",
        minio_endpoint=f"127.0.0.1:{port}",
        minio_access_key=S3_ACCESS_KEY,
        minio_secret_key=S3_SECRET_KEY,
        minio_bucket="outage",
    )
    ctx = Context(settings)
    try:
        ctx.init()
        with ctx.db.session() as s:
            key, _ = create_key(s, "420000", "curator", None)
        app = create_app(ctx, start_background=False)
        declared = app.openapi()["paths"]["/v1/samples"]["post"]["responses"]["503"]["x-error-codes"]
        with TestClient(app) as client:
            server.stop()
            r = client.post(
                "/v1/samples",
                files={"file": ("a.jpg", make_image(seed=1), "image/jpeg")},
                data={"sector": "dust"},
                headers=auth(key),
            )
            assert r.status_code == 503, r.text
            assert r.json()["error"]["code"] == "store_unavailable" and r.json()["error"]["code"] in declared
            assert client.get("/v1/samples", headers=auth(key)).status_code == 200
    finally:
        server.stop()
        ctx.close()
