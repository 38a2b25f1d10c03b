"""The web console (``/console``) and ``GET /v1/me``, the endpoint it starts from.

The console is a small single-page app in plain JavaScript under ``serving/console/``. Everything it
needs (scripts, styles, icons) is served from here, because deployments sit on intranets with no
internet access. Files are served through a route rather than a ``StaticFiles`` mount, because the
app mounts routers (``include_router``), which do not carry mounts over.

The API key never appears in a URL: the page keeps it in ``sessionStorage`` and sends it as a
bearer header, so it is neither logged by proxies nor kept in browser history. A strict
Content-Security-Policy keeps the page from loading anything from elsewhere, even by accident.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter
from fastapi.responses import FileResponse, RedirectResponse, Response

from hazardlens.auth import PERMISSIONS, is_system
from hazardlens.contracts.service import Me
from hazardlens.errors import NotFound
from hazardlens.serving.deps import CtxDep, PrincipalDep
from hazardlens.serving.schemas import errors

CONSOLE_DIR = Path(__file__).resolve().parent.parent / "console"

_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".json": "application/json",
}

# 'self' only: no CDN, no web fonts, no beacons. blob: for images fetched with the bearer header,
# data: for the tiny inline favicon.
_CSP = (
    "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
    "form-action 'self'"
)
_HEADERS = {
    "Content-Security-Policy": _CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

router = APIRouter(tags=["console"])


@router.get(
    "/v1/me",
    summary="Who the API key belongs to: name, organisation, role and permissions",
    response_model=Me,
    responses=errors(401),
)
def me(ctx: CtxDep, principal: PrincipalDep) -> dict[str, Any]:
    return {
        "name": principal.name,
        "org_code": principal.org_code,
        "role": principal.role,
        "permissions": sorted(p for p in PERMISSIONS if principal.can(p)),
        "system": is_system(principal, ctx.settings.system_org),
    }


@router.get("/console", include_in_schema=False)
def console_root() -> Response:
    # Relative asset URLs in index.html resolve against /console/, so the bare path redirects.
    return RedirectResponse("/console/", status_code=308)


@router.get("/console/{path:path}", include_in_schema=False)
def console_file(path: str) -> Response:
    target = _resolve(path or "index.html")
    media_type = _TYPES.get(target.suffix.lower(), "application/octet-stream")
    return FileResponse(target, media_type=media_type, headers=_HEADERS)


def _resolve(path: str) -> Path:
    """The file under CONSOLE_DIR for ``path``; anything outside it (``..``, absolute paths, hidden
    files, Python sources) is a 404 like any missing file."""
    root = CONSOLE_DIR.resolve()
    target = (root / path).resolve()
    if (
        not target.is_relative_to(root)
        or not target.is_file()
        or target.suffix not in _TYPES
        or any(part.startswith(".") for part in target.relative_to(root).parts)
    ):
        raise NotFound(f"no console file {path!r}")
    return target
