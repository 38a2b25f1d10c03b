"""Inspection records (执法检查) for the enforcement system: photos with suggested findings, and the
inspector's decision on each finding. Business rules: :mod:`hazardlens.labeling.inspections`.

Record numbers such as ``鄂应急检〔2026〕3号`` go in the path URL-encoded (UTF-8 percent-encoding).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, File, Form, Header, Path, Query, Request, Response, UploadFile
from pydantic import BaseModel, ConfigDict, Field

from hazardlens.auth import Principal
from hazardlens.contracts.common import SECTOR_SCHEMA
from hazardlens.contracts.webhooks import SubmissionPublic
from hazardlens.detector import DEFAULT_CONF, detection_taxonomy
from hazardlens.labeling import inspections
from hazardlens.serving.deps import CtxDep, require
from hazardlens.serving.runtime import ModelsDep, read_upload
from hazardlens.serving.schemas import Box, InspectionResponse, PhotoResponse, ReviewResponse, errors

router = APIRouter(tags=["inspections"])

#: What ``labeling.inspections.check_record_no`` accepts (invalid_record_no): no '/' or control characters,
#: something besides spaces.
RECORD_NO_PATTERN = r"^[^/\x00-\x1f\x7f]*[^/\x00-\x1f\x7f\s][^/\x00-\x1f\x7f]*$"
RecordNo = Annotated[
    str,
    Path(
        min_length=1,
        max_length=200,
        description="inspection record number, e.g. 鄂应急检〔2026〕3号 (URL-encoded)",
        json_schema_extra={"pattern": RECORD_NO_PATTERN},
    ),
]


@router.post(
    "/v1/inspections/{record_no}/photos",
    status_code=201,
    response_model=PhotoResponse,
    summary="Add a photo to an inspection record and get suggested findings (疑似隐患)",
    responses={
        202: {"model": SubmissionPublic, "description": "async=true: queued; the findings go to the webhooks"},
        **errors(401, 403, 408, 413, 415, 422, 503, 504),
    },
)
def record_photo(
    record_no: RecordNo,
    request: Request,
    response: Response,
    ctx: CtxDep,
    models: ModelsDep,
    principal: Annotated[Principal, Depends(require("inspections:write"))],
    file: Annotated[UploadFile, File(description="the site photo", json_schema_extra={"minLength": 1})],
    enterprise_id: Annotated[str, Form(min_length=1, max_length=100)],
    sector: Annotated[str, Form(min_length=1, max_length=40, json_schema_extra=SECTOR_SCHEMA)],
    inspector_id: Annotated[str | None, Form(max_length=100)] = None,
    captured_at: Annotated[datetime | None, Form(description="ISO 8601; EXIF time if absent")] = None,
    item_codes: Annotated[
        str | None, Form(max_length=2000, description="comma-separated item codes, e.g. FC-06")
    ] = None,
    conf: Annotated[float | None, Form(ge=0.0, le=1.0)] = None,
    tiles: Annotated[
        bool, Form(description="sliced inference for a wide, high-resolution photo (see POST /v1/detect)")
    ] = False,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            max_length=200,
            description="retry-safe: the same key returns the stored answer and stores nothing twice",
        ),
    ] = None,
    async_: Annotated[
        bool,
        Query(
            alias="async",
            description="answer 202 at once and send the findings to the organisation's webhooks "
            "(GET /v1/inspection-submissions/{id} tells the state)",
        ),
    ] = False,
) -> Any:
    data = read_upload(ctx, file)
    meta = inspections.PhotoMeta(
        enterprise_id=enterprise_id,
        sector=sector,
        inspector_id=inspector_id,
        captured_at=captured_at,
        original_name=file.filename,
        item_codes=[c for c in (item_codes or "").split(",") if c.strip()],
    )
    if async_:
        from hazardlens.serving.routes.webhooks import accept_async

        return accept_async(request, ctx, principal, record_no, data, meta, idempotency_key, conf=conf, tiles=tiles)
    with ctx.db.session() as session:  # committed before the answer goes out
        out = inspections.record_photo(
            ctx,
            session,
            principal,
            record_no,
            data,
            meta,
            idempotency_key,
            models,
            conf=DEFAULT_CONF if conf is None else conf,
            timeout=ctx.settings.request_timeout_s,
            tiles=(ctx.settings.tile_window, ctx.settings.tile_overlap) if tiles else None,
        )
    if out.get("replayed"):
        response.headers["Idempotent-Replayed"] = "true"
    return out


@router.get(
    "/v1/inspections/{record_no}",
    response_model=InspectionResponse,
    summary="Photos and findings of an inspection record (own organisation only)",
    responses=errors(401, 403, 404, 422),
)
def get_inspection(
    record_no: RecordNo, ctx: CtxDep, principal: Annotated[Principal, Depends(require("inspections:read"))]
) -> Any:
    with ctx.db.read_session() as session:
        return inspections.get_inspection(session, principal, record_no, taxonomy=detection_taxonomy(ctx, session))


class ReviewRequest(BaseModel):
    # A rejection takes no correction (invalid_review): said in the document as the two shapes.
    model_config = ConfigDict(
        json_schema_extra={
            "oneOf": [
                {"properties": {"decision": {"const": "confirmed"}}},
                {
                    "properties": {
                        "decision": {"const": "rejected"},
                        "box": {"type": "null"},
                        "class_key": {"type": "null"},
                    }
                },
            ]
        }
    )

    decision: Literal["confirmed", "rejected"]
    box: Box | None = Field(None, description="corrected box in original pixels (confirmed only)")
    class_key: str | None = Field(None, max_length=80, description="corrected class (confirmed only)")
    reason: str | None = Field(
        None,
        max_length=inspections.MAX_REASON,
        description="why it is rejected (or what a correction fixed), kept in the finding's review",
    )


@router.post(
    "/v1/findings/{finding_id}/review",
    response_model=ReviewResponse,
    summary="The inspector confirms or rejects a suggested finding",
    responses=errors(401, 403, 404, 409, 422),
)
def review_finding(
    finding_id: Annotated[int, Path(ge=1, le=2**31 - 1)],
    body: ReviewRequest,
    ctx: CtxDep,
    principal: Annotated[Principal, Depends(require("findings:review"))],
) -> Any:
    with ctx.db.session() as session:
        return inspections.review_finding(
            ctx,
            session,
            principal,
            finding_id,
            body.decision,
            box=body.box.model_dump() if body.box is not None else None,
            class_key=body.class_key,
            reason=body.reason,
        )
