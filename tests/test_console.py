"""The console's server side, without a browser: /v1/me, the static files and their headers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hazardlens.auth import PERMISSIONS
from tests.fixtures.core import auth


def test_me_reports_name_org_role_and_permissions(client: Any, make_key: Callable[..., str]) -> None:
    key = make_key("420000", "reviewer", "审核员甲")
    body = client.get("/v1/me", headers=auth(key)).json()
    assert body["name"] == "审核员甲" and body["org_code"] == "420000" and body["role"] == "reviewer"
    assert "annotations:review" in body["permissions"] and "models:promote" not in body["permissions"]
    assert set(body["permissions"]) == {p for p, roles in PERMISSIONS.items() if "reviewer" in roles}
    assert body["system"] is False


def test_me_says_who_is_the_system_organisations_admin(ctx: Any, client: Any, make_key: Callable[..., str]) -> None:
    """The console asks the API (not a hard-coded 000000) whether to offer every organisation's figures."""
    assert client.get("/v1/me", headers=auth(make_key("000000", "admin"))).json()["system"] is True
    assert client.get("/v1/me", headers=auth(make_key("000000", "reviewer"))).json()["system"] is False
    ctx.settings = ctx.settings.with_(system_org="990000")  # a deployment naming its own system organisation
    assert client.get("/v1/me", headers=auth(make_key("990000", "admin"))).json()["system"] is True
    assert client.get("/v1/me", headers=auth(make_key("000000", "admin"))).json()["system"] is False


def test_me_refuses_a_wrong_key_with_the_api_error_shape(client: Any) -> None:
    response = client.get("/v1/me", headers=auth("hl_000000000000_nope"))
    assert response.status_code == 401
    assert response.json() == {"error": {"code": "invalid_key", "message": "invalid API key"}}


def test_console_is_served_offline_ready(client: Any) -> None:
    assert client.get("/console", follow_redirects=False).headers["location"] == "/console/"
    page = client.get("/console/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "http" not in csp  # nothing may load from elsewhere
    assert 'src="app.js"' in page.text and "//" not in page.text.replace("://www.w3.org", "")
    js = client.get("/console/app.js")
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
    assert client.get("/console/pages/annotate.js").status_code == 200


def test_console_files_stay_inside_the_console_folder(client: Any) -> None:
    for path in (
        "/console/../routes/console.py",
        "/console/%2e%2e/app.py",
        "/console/nothing.js",
        "/console/pages/../../deps.py",
    ):
        response = client.get(path)
        assert response.status_code == 404, path
        assert response.json()["error"]["code"] == "not_found"


def test_every_string_exists_in_both_languages() -> None:
    import re
    from pathlib import Path

    from hazardlens.serving.routes.console import CONSOLE_DIR

    text = (CONSOLE_DIR / "i18n.js").read_text(encoding="utf-8")
    zh = set(re.findall(r'^\s*"([^"]+)":', text[text.index("const zh") : text.index("const en")], re.M))
    en = set(re.findall(r'^\s*"([^"]+)":', text[text.index("const en") : text.index("export const messages")], re.M))
    assert zh == en
    used: set[str] = set()
    for path in Path(CONSOLE_DIR).rglob("*.js"):
        used |= set(re.findall(r'\bt\(\s*"([a-z_]+\.[a-z_.]+)"', path.read_text(encoding="utf-8")))
    assert used - zh == set()
