"""The inspector's workbench: the list of inspection records (``GET /v1/inspections``) and the
organisation's capture settings (``/v1/organisation/capture``). Rules live in
:mod:`hazardlens.labeling.inspection_records`; one record is ``GET /v1/inspections/{record_no}``
(routes/inspections.py)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query

from hazardlens.auth import Principal
from hazardlens.contracts import Key, Text100, Text200
from hazardlens.contracts.common import WHEN_SCHEMA
from hazardlens.contracts.inspections import CaptureSettings, CaptureSettingsUpdate, RecordFilter, RecordPage
from hazardlens.contracts.samples import CURSOR_PATTERN
from hazardlens.labeling import inspection_records
from hazardlens.serving.deps import SessionDep, require
from hazardlens.serving.schemas import errors

router = APIRouter(tags=["inspections"])

WhenQuery = Annotated[
    str | None,
    Query(max_length=40, description="ISO date or date-time, inclusive", json_schema_extra=WHEN_SCHEMA),
]


@router.get(
    "/v1/inspections",
    response_model=RecordPage,
    summary="The organisation's inspection records, newest first (filter by enterprise, sector, inspector, date)",
    responses=errors(401, 403, 422),
)
def list_records(
    session: SessionDep,
    principal: Annotated[Principal, Depends(require("inspections:read"))],
    limit: Annotated[int, Query(ge=1, le=inspection_records.MAX_LIMIT)] = inspection_records.DEFAULT_LIMIT,
    cursor: Annotated[
        str | None,
        Query(
            max_length=64, description="next_cursor of the previous page", json_schema_extra={"pattern": CURSOR_PATTERN}
        ),
    ] = None,
    record: Annotated[Text200 | None, Query(description="part of the record number")] = None,
    enterprise: Annotated[Text100 | None, Query(description="enterprise id, exact")] = None,
    sector: Annotated[Key | None, Query()] = None,
    inspector: Annotated[Text100 | None, Query(description="inspector id, exact")] = None,
    date_from: WhenQuery = None,
    date_to: WhenQuery = None,
    open: Annotated[
        bool | None, Query(description="true: with findings awaiting a decision; false: all decided")
    ] = None,
) -> dict[str, Any]:
    # A malformed date is the domain's invalid_date (parse_when raises it inside the model).
    filters = RecordFilter.model_validate(
        {
            "record": record,
            "enterprise": enterprise,
            "sector": sector,
            "inspector": inspector,
            "date_from": date_from,
            "date_to": date_to,
            "open": open,
        }
    )
    items, next_cursor = inspection_records.list_records(session, principal, filters, limit, cursor or None)
    return {"items": items, "next_cursor": next_cursor}


@router.get(
    "/v1/organisation/capture",
    response_model=CaptureSettings,
    summary="How the console prepares a site photo for the caller's organisation (downscale or keep the original)",
    responses=errors(401, 403),
)
def get_capture(
    session: SessionDep, principal: Annotated[Principal, Depends(require("inspections:read"))]
) -> dict[str, Any]:
    return inspection_records.capture_settings(session, principal)


@router.put(
    "/v1/organisation/capture",
    response_model=CaptureSettings,
    summary="Change the organisation's capture settings (its administrator only; audited)",
    responses=errors(401, 403, 422),
)
def put_capture(
    body: CaptureSettingsUpdate,
    session: SessionDep,
    principal: Annotated[Principal, Depends(require("organisation:settings"))],
) -> dict[str, Any]:
    return inspection_records.set_capture_settings(session, principal, body)
