"""/v1/datasets: create, list and read dataset versions. Rules live in hazardlens.datasets.versions."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from hazardlens.auth import Principal
from hazardlens.contracts import SampleFilter
from hazardlens.datasets import versions
from hazardlens.serving.deps import CtxDep, require
from hazardlens.serving.schemas import errors

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])

Reader = Annotated[Principal, Depends(require("datasets:read"))]
Writer = Annotated[Principal, Depends(require("datasets:write"))]
Name = Annotated[str, Path(min_length=1, max_length=100)]


class DatasetCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Annotated[str, Field(min_length=1, max_length=100, description="letters, digits, '.', '_', '-'")]
    filters: SampleFilter = Field(default_factory=SampleFilter)
    group_by: Literal["camera", "site", "enterprise"] = "camera"
    ratios: Annotated[list[float], Field(min_length=3, max_length=3)] = [0.8, 0.1, 0.1]
    seed: int = 0
    classes: list[str] | None = Field(None, description="fixed class list and order; default: the classes "
                                                        "present, in taxonomy order")


@router.post("", status_code=201, summary="Create a dataset version (or get the identical existing one)",
             responses={200: {"description": "the same inputs made this version before; it is returned"},
                        **errors(401, 403, 422)})
def create(body: DatasetCreate, ctx: CtxDep, principal: Writer) -> JSONResponse:
    filters = body.filters
    with ctx.db.session() as session:
        dv, created = versions.make_version(ctx, session, principal, body.name, filters=filters,
                                            group_by=body.group_by, ratios=body.ratios, seed=body.seed,
                                            classes=body.classes)
        out = versions.version_dict(session, dv)
    return JSONResponse(out, status_code=201 if created else 200)


@router.get("", summary="Dataset versions of the caller's organisation", responses=errors(401, 403))
def list_datasets(ctx: CtxDep, principal: Reader,
                  name: Annotated[str | None, Query(max_length=100)] = None) -> dict[str, Any]:
    with ctx.db.session() as session:
        rows = versions.list_versions(session, name, principal)
        return {"datasets": [versions.version_dict(session, dv) for dv in rows]}


@router.get("/{name}/{version}", summary="One version: summary and statistics",
            description="``version`` is ``latest``, a number (``3`` or ``v3``) or 4+ hex digits of the id.",
            responses=errors(401, 403, 404, 409))
def get_dataset(name: Name, version: Annotated[str, Path(min_length=1, max_length=64)], ctx: CtxDep,
                principal: Reader) -> dict[str, Any]:
    with ctx.db.session() as session:
        dv = versions.resolve(session, f"{name}@{version}", principal)
        out = versions.version_dict(session, dv)
    manifest = versions.load_manifest(ctx, dv)
    out["manifest"] = {"format": manifest["format"], "items": len(manifest["items"]),
                       "groups": len({it["group"] for it in manifest["items"]}),
                       "verified": True}
    return out
