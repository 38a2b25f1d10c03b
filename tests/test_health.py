"""/healthz, /readyz (with the readiness hook other parts use) and /v1/taxonomy."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hazardlens.context import Context
from hazardlens.serving.routes.health import add_readiness_check
from tests.fixtures.core import auth


def test_healthz_needs_no_key(client: Any) -> None:
    resp = client.get("/healthz")
    assert resp.status_code == 200 and resp.json()["status"] == "ok"


def test_readyz_and_registered_checks(client: Any, ctx: Context) -> None:
    resp = client.get("/readyz")
    assert resp.status_code == 200, resp.json()  # other parts may have registered checks of their own
    assert resp.json()["status"] == "ready"
    assert {k: resp.json()["checks"][k] for k in ("catalogue", "store")} == {"catalogue": "ok", "store": "ok"}
    state = {"loaded": False}

    def model_loaded() -> bool:
        return state["loaded"]

    def takes_app(app: Any) -> None:
        assert app is client.app

    add_readiness_check(client.app, model_loaded)
    add_readiness_check(client.app, takes_app)
    resp = client.get("/readyz")
    assert resp.status_code == 503
    checks = resp.json()["checks"]
    assert (checks["model_loaded"], checks["takes_app"], resp.json()["status"]) == ("failed", "ok", "not_ready")
    state["loaded"] = True
    assert client.get("/readyz").status_code == 200


def test_readyz_fails_when_the_store_is_unusable(client: Any, ctx: Context) -> None:
    """A store root that is no folder any more (a lost mount) makes the service not ready."""
    import shutil

    root = ctx.settings.store_root
    shutil.rmtree(root, ignore_errors=True)
    root.write_bytes(b"not a folder")
    try:
        resp = client.get("/readyz")
        assert resp.status_code == 503 and resp.json()["checks"]["store"] == "failed"
        assert resp.json()["checks"]["catalogue"] == "ok"
    finally:
        root.unlink()


def test_taxonomy_needs_a_key(client: Any, make_key: Callable[..., str]) -> None:
    assert client.get("/v1/taxonomy").status_code == 401
    body = client.get("/v1/taxonomy", headers=auth(make_key(role="inspector"))).json()
    assert "general" in {s["key"] for s in body["sectors"]}
