"""Liveness, readiness and the taxonomy: what load balancers, operators and clients ask first.

``/healthz`` says the process answers; ``/readyz`` says it can do its work (catalogue and object
store reachable, plus whatever other parts registered, e.g. a model being loaded). Other parts add
their own readiness checks with :func:`add_readiness_check`; a check is a callable taking no
argument or the app, and it is ready when it returns anything but ``False`` without raising.
"""

from __future__ import annotations

import inspect
import logging
import shutil
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse

from hazardlens import __version__
from hazardlens.auth import Principal, is_system
from hazardlens.context import Context
from hazardlens.contracts.service import Health, Readiness, TaxonomyPublic
from hazardlens.rules import default_rules
from hazardlens.serving.deps import CtxDep, get_principal
from hazardlens.serving.schemas import errors

router = APIRouter(tags=["health"])
log = logging.getLogger("hazardlens.health")

ReadinessCheck = Callable[..., Any]


def readiness_checks(app: FastAPI) -> list[ReadinessCheck]:
    """The app's list of extra checks, created on first use so the app factory needs no change."""
    checks = getattr(app.state, "readiness_checks", None)
    if checks is None:
        checks = []
        app.state.readiness_checks = checks
    return checks


def add_readiness_check(app: FastAPI, check: ReadinessCheck) -> None:
    readiness_checks(app).append(check)


def _run(check: ReadinessCheck, app: FastAPI) -> tuple[bool, str]:
    try:
        takes_app = bool(inspect.signature(check).parameters)
    except (TypeError, ValueError):
        takes_app = False
    try:
        result = check(app) if takes_app else check()
    except Exception as exc:  # a check that cannot tell is not ready
        return False, f"{type(exc).__name__}: {exc}"
    if result is False:
        return False, "not ready"
    return True, result if isinstance(result, str) else "ok"


def disk_space(ctx: Context) -> str:
    """Enough free space on the home's disk (``HAZARDLENS_MIN_FREE_MB``, default 256): below it every
    upload and catalogue write is about to fail, so a load balancer should stop sending work here
    before it does (issue 13, item 8). Raises (not ready) below the threshold."""
    need = ctx.settings.min_free_bytes
    if need <= 0:
        return "not checked"
    where = ctx.settings.home
    while not where.exists() and where != where.parent:
        where = where.parent
    free = shutil.disk_usage(where).free
    if free < need:
        raise OSError(f"{free:,} bytes free under {ctx.settings.home}; HAZARDLENS_MIN_FREE_MB asks for {need:,}")
    return f"{free:,} bytes free"


@router.get("/healthz", summary="The process is alive (no checks, no auth)", response_model=Health)
def healthz() -> dict[str, str]:
    return {"status": "ok", "version": __version__}


@router.get(
    "/readyz",
    summary="Catalogue, object store and registered parts are ready (200) or not (503)",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "not ready: the failed checks are named"}},
)
def readyz(request: Request, ctx: CtxDep) -> JSONResponse:
    app: FastAPI = request.app
    checks: dict[str, tuple[bool, str]] = {
        "catalogue": _run(ctx.db.ping, app),
        "store": _run(ctx.store.ping, app),
        "disk": _run(lambda: disk_space(ctx), app),
    }
    for i, check in enumerate(list(readiness_checks(app))):
        name = getattr(check, "readiness_name", None) or getattr(check, "__name__", None) or f"check_{i}"
        if name in checks:
            name = f"{name}_{i}"
        checks[name] = _run(check, app)
    ready = all(ok for ok, _ in checks.values())
    for name, (ok, detail) in checks.items():
        if not ok:
            log.warning("not ready: %s: %s", name, detail)
    # Unauthenticated: say which part failed, not why (messages can name intranet hosts); the log has it.
    body = {
        "status": "ready" if ready else "not_ready",
        "checks": {name: "ok" if ok else "failed" for name, (ok, _) in checks.items()},
    }
    return JSONResponse(body, status_code=200 if ready else 503)


@router.get(
    "/v1/taxonomy",
    summary="Sectors, key inspection items, hazard classes and derived-finding rules in force",
    response_model=TaxonomyPublic,
    responses=errors(401),
)
def taxonomy(ctx: CtxDep, principal: Annotated[Principal, Depends(get_principal)]) -> dict[str, Any]:
    rules = default_rules(ctx)
    # An organisation sees its own provincial additions; the ministry (system organisation) every one.
    org = None if is_system(principal, ctx.settings.system_org) else principal.org_code
    return {**ctx.taxonomy(org_code=org).to_dict(), "rules": rules.describe(), "rules_version": rules.version}
