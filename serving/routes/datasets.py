"""/v1/datasets: create, list and read dataset versions. Rules live in hazardlens.datasets.versions."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query
from fastapi.responses import JSONResponse

from hazardlens.auth import Principal
from hazardlens.contracts.datasets import DatasetCreate, DatasetPage, DatasetVersionDetail, DatasetVersionPublic
from hazardlens.datasets import versions
from hazardlens.serving.deps import CtxDep, require
from hazardlens.serving.schemas import errors

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])

Reader = Annotated[Principal, Depends(require("datasets:read"))]
Writer = Annotated[Principal, Depends(require("datasets:write"))]
#: What ``datasets.versions`` accepts: a name (invalid_name) and a version (invalid_version).
Name = Annotated[
    str, Path(min_length=1, max_length=100, json_schema_extra={"pattern": r"^[A-Za-z0-9][A-Za-z0-9._-]*$"})
]
VERSION_PATTERN = r"^(?:[Ll][Aa][Tt][Ee][Ss][Tt]|[Vv]?[0-9]{1,5}|[0-9A-Fa-f]{4,64})$"


@router.post(
    "",
    status_code=201,
    response_model=DatasetVersionPublic,
    summary="Create a dataset version (or get the identical existing one)",
    responses={
        200: {"model": DatasetVersionPublic, "description": "the same inputs made this version before; it is returned"},
        **errors(401, 403, 413, 422),
    },
)
def create(body: DatasetCreate, ctx: CtxDep, principal: Writer) -> JSONResponse:
    with ctx.db.session() as session:
        dv, created = versions.make_version(
            ctx,
            session,
            principal,
            body.name,
            filters=body.filters,
            group_by=body.group_by,
            ratios=body.ratios,
            seed=body.seed,
            classes=body.classes,
        )
        out = versions.version_public(session, dv)
    return JSONResponse(out.model_dump(mode="json"), status_code=201 if created else 200)


@router.get(
    "",
    response_model=DatasetPage,
    summary="Dataset versions of the caller's organisation",
    responses=errors(401, 403, 422),
)
def list_datasets(
    ctx: CtxDep, principal: Reader, name: Annotated[str | None, Query(max_length=100)] = None
) -> DatasetPage:
    with ctx.db.read_session() as session:
        rows = versions.list_versions(session, name, principal)
        return DatasetPage(datasets=[versions.version_public(session, dv) for dv in rows])


@router.get(
    "/{name}/{version}",
    response_model=DatasetVersionDetail,
    summary="One version: summary and statistics",
    description="``version`` is ``latest``, a number (``3`` or ``v3``) or 4+ hex digits of the id.",
    responses=errors(401, 403, 404, 409, 422),
)
def get_dataset(
    name: Name,
    version: Annotated[str, Path(min_length=1, max_length=64, json_schema_extra={"pattern": VERSION_PATTERN})],
    ctx: CtxDep,
    principal: Reader,
) -> DatasetVersionDetail:
    with ctx.db.read_session() as session:
        dv = versions.resolve(session, f"{name}@{version}", principal)
        out = versions.version_dict(session, dv)
    manifest = versions.load_manifest(ctx, dv)
    out["manifest"] = {
        "format": manifest["format"],
        "items": len(manifest["items"]),
        "groups": len({it["group"] for it in manifest["items"]}),
        "verified": True,
    }
    return DatasetVersionDetail.model_validate(out)
