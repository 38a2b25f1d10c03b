"""The model registry over HTTP: what is registered, what this worker serves, promotion, rollback.

Promotion is a catalogue change; every worker follows the catalogue within ``model_poll_s``
(:mod:`hazardlens.models.manager`), and the worker that took the request is nudged to look at once.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request

from hazardlens.auth import Principal
from hazardlens.contracts.models import LoadedModel, ModelsResponse, ModelVersionPublic, PromoteRequest
from hazardlens.models import registry
from hazardlens.serving.deps import CtxDep, require
from hazardlens.serving.schemas import errors

router = APIRouter(tags=["models"])

Name = Annotated[str, Path(min_length=1, max_length=100)]
Version = Annotated[str, Path(min_length=1, max_length=40)]


def _nudge(request: Request, name: str) -> None:
    manager = getattr(request.app.state, "models", None)
    if manager is not None and manager.name == name:
        manager.poke()


# Cards are passed through as registered: the keys a card does not have are not invented as nulls.
@router.get(
    "/v1/models",
    response_model=ModelsResponse,
    response_model_exclude_unset=True,
    summary="Registered versions and what this worker serves",
    responses=errors(401, 403),
)
def list_models(
    request: Request, ctx: CtxDep, _: Annotated[Principal, Depends(require("models:read"))]
) -> ModelsResponse:
    manager = getattr(request.app.state, "models", None)
    name = manager.name if manager is not None else registry.DEFAULT_NAME
    with ctx.db.read_session() as session:
        rows = [registry.model_public(mv) for mv in registry.list_models(session)]
        production = registry.production_model(session, name)
    return ModelsResponse(
        models=rows,
        production=production.version if production is not None else None,
        loaded=[LoadedModel.model_validate(m) for m in manager.loaded()] if manager is not None else [],
        serving=manager.current_version if manager is not None else None,
    )


@router.post(
    "/v1/models/{name}/{version}/promote",
    response_model=ModelVersionPublic,
    response_model_exclude_unset=True,
    summary="Move a version to a stage (admins of the system organisation only)",
    description="403 system_only for any other caller; 409 last_production for moving the only "
    "production version out of production (promote its replacement instead).",
    responses=errors(401, 403, 404, 409, 422),
)
def promote(
    name: Name,
    version: Version,
    request: Request,
    ctx: CtxDep,
    principal: Annotated[Principal, Depends(require("models:promote"))],
    body: PromoteRequest | None = None,
) -> ModelVersionPublic:
    stage = body.stage if body is not None else "production"
    with ctx.db.session() as session:
        out = registry.model_public(registry.promote(session, principal, name, version, stage))
    _nudge(request, name)
    return out


@router.post(
    "/v1/models/{name}/rollback",
    response_model=ModelVersionPublic,
    response_model_exclude_unset=True,
    summary="Put the previous production version back (admins of the system organisation only)",
    responses=errors(401, 403, 409, 422),
)
def rollback(
    name: Name, request: Request, ctx: CtxDep, principal: Annotated[Principal, Depends(require("models:promote"))]
) -> ModelVersionPublic:
    with ctx.db.session() as session:
        out = registry.model_public(registry.rollback(session, principal, name))
    _nudge(request, name)
    return out
