"""The printable inspection record: ``GET /v1/inspections/{record_no}/report.pdf``. What goes on paper
and why: :mod:`hazardlens.labeling.inspection_report`."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Depends, Response

from hazardlens.auth import Principal
from hazardlens.labeling.inspection_report import record_pdf
from hazardlens.serving.deps import CtxDep, require
from hazardlens.serving.routes.inspections import RecordNo
from hazardlens.serving.schemas import errors

router = APIRouter(tags=["inspections"])


@router.get(
    "/v1/inspections/{record_no}/report.pdf",
    summary="The inspection record as a printable PDF in Chinese (confirmed findings only)",
    response_class=Response,
    responses={
        200: {
            "content": {"application/pdf": {"schema": {"type": "string", "format": "binary"}}},
            "description": "the record: photos with their confirmed findings drawn, items and legal basis",
        },
        **errors(401, 403, 404, 422, 503),
    },
)
def inspection_report(
    record_no: RecordNo, ctx: CtxDep, principal: Annotated[Principal, Depends(require("inspections:read"))]
) -> Response:
    with ctx.db.read_session() as session:
        stored_no, pdf = record_pdf(ctx, session, principal, record_no)
    # An ASCII fallback name plus the UTF-8 one (RFC 6266): record numbers are Chinese.
    name = quote(f"{stored_no}.pdf", safe="")
    headers = {
        "Content-Disposition": f"inline; filename=\"inspection-record.pdf\"; filename*=UTF-8''{name}",
        "Cache-Control": "private, no-store",
    }
    return Response(pdf, media_type="application/pdf", headers=headers)
