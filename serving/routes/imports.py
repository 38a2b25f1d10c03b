"""/v1/imports and /v1/exports: labelled datasets in and out of the library, as zip files.

Thin: unpacking, locating the dataset, class-map checks and the import itself live in
``hazardlens.labeling.importers``; the export in ``hazardlens.labeling.exporters``.
"""

from __future__ import annotations

import shutil
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, UploadFile
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.background import BackgroundTask

from hazardlens.auth import Principal
from hazardlens.contracts import SampleFilter
from hazardlens.labeling.exporters import EXPORT_FORMATS, EXPORT_STATUSES, export_zip
from hazardlens.labeling.importers import FORMATS, import_zip
from hazardlens.serving.deps import CtxDep, SessionDep, require

router = APIRouter(tags=["labeling"])

Importer = Annotated[Principal, Depends(require("labeling:import"))]
Exporter = Annotated[Principal, Depends(require("labeling:export"))]


@router.post("/v1/imports", summary="Import a labelled dataset (zip) into the library; answers a summary")
def create_import(
    ctx: CtxDep, principal: Importer,
    file: Annotated[UploadFile, File(description="zip of the export: COCO json + images, a YOLO folder "
                                                 "(images/, labels/, classes.txt or data.yaml), VOC, or "
                                                 "Label Studio tasks json + images")],
    format: Annotated[str, Form(description=" | ".join(FORMATS))],
    class_map: Annotated[str, Form(description="name of a shipped class map (configs/class_maps) or its "
                                               "YAML text")],
    sector: Annotated[str, Form()],
    approved: Annotated[bool, Form(description="save labels as approved (administrators only)")] = False,
    scope: Annotated[str, Form()] = "private",
    camera_regex: Annotated[str | None, Form()] = None,
    site_regex: Annotated[str | None, Form()] = None,
) -> dict[str, Any]:
    summary = import_zip(ctx, principal, format, file.file, class_map, sector=sector, scope=scope,
                         approved=approved, camera_regex=camera_regex, site_regex=site_regex,
                         name=file.filename or "upload.zip")
    return summary.as_dict()


class ExportIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format: str = Field(description=" | ".join(EXPORT_FORMATS))
    status: str = Field("approved", description=" | ".join(EXPORT_STATUSES))
    filters: SampleFilter = Field(default_factory=SampleFilter, description="which samples (their exported "
                                                                                 "labels for class_key)")


@router.post("/v1/exports", summary="Export labelled samples as a zip (YOLO, COCO or Label Studio)",
             response_class=FileResponse, responses={200: {"content": {"application/zip": {}}}})
def create_export(body: ExportIn, ctx: CtxDep, session: SessionDep, principal: Exporter) -> FileResponse:
    path, result = export_zip(ctx, session, principal, body.format, status=body.status,
                              filters=body.filters)
    headers = {"X-Export-Images": str(result.images), "X-Export-Boxes": str(result.boxes),
               "X-Export-Negatives": str(result.negatives), "X-Export-Classes": ",".join(result.classes)}
    return FileResponse(path, media_type="application/zip", filename=path.name, headers=headers,
                        background=BackgroundTask(shutil.rmtree, path.parent, ignore_errors=True))
