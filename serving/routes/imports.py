"""/v1/imports and /v1/exports: labelled datasets in and out of the library, as zip files.

Thin: unpacking, locating the dataset, class-map checks and the import itself live in
``hazardlens.labeling.importers``; the export in ``hazardlens.labeling.exporters``.
"""

from __future__ import annotations

import shutil
from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, UploadFile
from fastapi.responses import FileResponse
from starlette.background import BackgroundTask

from hazardlens.auth import Principal
from hazardlens.contracts.common import Key
from hazardlens.contracts.imports import (
    EXPORT_FORMATS,
    EXPORT_STATUSES,
    IMPORT_FORMATS,
    ExportIn,
    ImportFormat,
    ImportScope,
    ImportSummaryPublic,
)
from hazardlens.labeling.exporters import export_zip
from hazardlens.labeling.importers import import_zip
from hazardlens.serving.deps import CtxDep, require
from hazardlens.serving.schemas import errors

router = APIRouter(tags=["labeling"])

Importer = Annotated[Principal, Depends(require("labeling:import"))]
Exporter = Annotated[Principal, Depends(require("labeling:export"))]
Regex = Annotated[
    str | None,
    Form(
        max_length=200,
        description=(
            "regular expression searched in each file name; its capture groups joined by '.' (or the whole match) are "
            "the id; overrides the class map's"
        ),
    ),
]


@router.post(
    "/v1/imports",
    response_model=ImportSummaryPublic,
    summary="Import a labelled dataset (zip) into the library; answers a summary",
    responses=errors(400, 401, 403, 404, 408, 413, 422),
)
def create_import(
    ctx: CtxDep,
    principal: Importer,
    file: Annotated[
        UploadFile,
        File(
            description="zip of the export: COCO json + images, a YOLO folder "
            "(images/, labels/, classes.txt or data.yaml), VOC, "
            "Label Studio tasks json + images, or CVAT for images 1.1 "
            "annotations.xml + images/",
            json_schema_extra={"minLength": 1},
        ),
    ],
    format: Annotated[ImportFormat, Form(description=" | ".join(IMPORT_FORMATS))],
    class_map: Annotated[
        str,
        Form(
            min_length=1,
            max_length=200_000,
            description="name of a shipped class map (configs/class_maps) or its YAML text; an unknown name is a 404",
        ),
    ],
    sector: Annotated[Key, Form(description="sector key of every imported sample (GET /v1/taxonomy)")],
    approved: Annotated[bool, Form(description="save labels as approved (administrators only)")] = False,
    scope: Annotated[ImportScope, Form(description="private | shared")] = "private",
    camera_regex: Regex = None,
    site_regex: Regex = None,
) -> ImportSummaryPublic:
    summary = import_zip(
        ctx,
        principal,
        format,
        file.file,
        class_map,
        sector=sector,
        scope=scope,
        approved=approved,
        camera_regex=camera_regex,
        site_regex=site_regex,
        name=file.filename or "upload.zip",
    )
    return ImportSummaryPublic.model_validate(summary.as_dict())


_EXPORT_HEADERS = {
    "X-Export-Images": {"description": "images in the zip", "schema": {"type": "integer"}},
    "X-Export-Boxes": {"description": "boxes in the zip", "schema": {"type": "integer"}},
    "X-Export-Negatives": {"description": "images without a box (verified negatives)", "schema": {"type": "integer"}},
    "X-Export-Classes": {
        "description": "class keys in their exported order, comma-separated",
        "schema": {"type": "string"},
    },
}


@router.post(
    "/v1/exports",
    summary="Export labelled samples as a zip (YOLO, COCO, Label Studio or CVAT)",
    description=f"format: {' | '.join(EXPORT_FORMATS)}; status: {' | '.join(EXPORT_STATUSES)}. "
    "Nothing matching is a 422 (nothing_to_export).",
    response_class=FileResponse,
    responses={
        200: {
            "description": "the export as a zip file",
            "content": {"application/zip": {"schema": {"type": "string", "format": "binary"}}},
            "headers": _EXPORT_HEADERS,
        },
        **errors(401, 403, 413, 422),
    },
)
def create_export(body: ExportIn, ctx: CtxDep, principal: Exporter) -> FileResponse:
    path, result = export_zip(ctx, principal, body.format, status=body.status, filters=body.filters)
    headers = {
        "X-Export-Images": str(result.images),
        "X-Export-Boxes": str(result.boxes),
        "X-Export-Negatives": str(result.negatives),
        "X-Export-Classes": ",".join(result.classes),
    }
    return FileResponse(
        path,
        media_type="application/zip",
        filename=path.name,
        headers=headers,
        background=BackgroundTask(shutil.rmtree, path.parent, ignore_errors=True),
    )
