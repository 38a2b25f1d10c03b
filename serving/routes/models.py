"""The model registry over HTTP: what is registered, what this worker serves, promotion, rollback.

Promotion is a catalogue change; every worker follows the catalogue within ``model_poll_s``
(:mod:`hazardlens.models.manager`), and the worker that took the request is nudged to look at once.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request
from pydantic import BaseModel, Field

from hazardlens.auth import Principal
from hazardlens.models import registry
from hazardlens.serving.deps import CtxDep, require
from hazardlens.serving.schemas import ModelsResponse, errors

router = APIRouter(tags=["models"])

Name = Annotated[str, Path(min_length=1, max_length=100)]
Version = Annotated[str, Path(min_length=1, max_length=40)]


def _nudge(request: Request, name: str) -> None:
    manager = getattr(request.app.state, "models", None)
    if manager is not None and manager.name == name:
        manager.poke()


@router.get("/v1/models", response_model=ModelsResponse, summary="Registered versions and what this worker serves",
            responses=errors(401, 403))
def list_models(request: Request, ctx: CtxDep,
                _: Annotated[Principal, Depends(require("models:read"))]) -> Any:
    manager = getattr(request.app.state, "models", None)
    name = manager.name if manager is not None else registry.DEFAULT_NAME
    with ctx.db.session() as session:
        rows = [registry.model_dict(mv) for mv in registry.list_models(session)]
        production = registry.production_model(session, name)
    return {"models": rows, "production": production.version if production is not None else None,
            "loaded": manager.loaded() if manager is not None else [],
            "serving": manager.current_version if manager is not None else None}


class PromoteRequest(BaseModel):
    stage: str = Field("production", description="candidate | staging | production | archived")


@router.post("/v1/models/{name}/{version}/promote", summary="Move a version to a stage (admin only)",
             responses=errors(401, 403, 404, 422))
def promote(name: Name, version: Version, request: Request, ctx: CtxDep,
            principal: Annotated[Principal, Depends(require("models:promote"))],
            body: PromoteRequest | None = None) -> dict[str, Any]:
    stage = body.stage if body is not None else "production"
    with ctx.db.session() as session:
        out = registry.model_dict(registry.promote(session, principal, name, version, stage))
    _nudge(request, name)
    return out


@router.post("/v1/models/{name}/rollback", summary="Put the previous production version back (admin only)",
             responses=errors(401, 403, 404, 409))
def rollback(name: Name, request: Request, ctx: CtxDep,
             principal: Annotated[Principal, Depends(require("models:promote"))]) -> dict[str, Any]:
    with ctx.db.session() as session:
        out = registry.model_dict(registry.rollback(session, principal, name))
    _nudge(request, name)
    return out
