"""Figures for the dashboard and for reports upward: findings by sector, item, class or rule,
enterprise and month, and each model version's field precision. What is counted and who sees what:
:mod:`hazardlens.labeling.stats`. ``?format=csv`` answers the same figures as a CSV file."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Response

from hazardlens.auth import Principal
from hazardlens.contracts.common import WHEN_SCHEMA
from hazardlens.contracts.stats import FindingStats, ModelStats
from hazardlens.detector import detection_taxonomy
from hazardlens.labeling import stats
from hazardlens.rules import default_rules
from hazardlens.serving.deps import CtxDep, require
from hazardlens.serving.schemas import errors

router = APIRouter(prefix="/v1/stats", tags=["stats"])

_DIM = "(sector|item|class|rule|enterprise|month|org)"
Reader = Annotated[Principal, Depends(require("inspections:read"))]
DateFrom = Annotated[
    str | None,
    Query(
        alias="from",
        max_length=40,
        description="start of the period: ISO date (a Beijing-time day) or date-time",
        json_schema_extra=WHEN_SCHEMA,
    ),
]
DateTo = Annotated[
    str | None,
    Query(
        alias="to",
        max_length=40,
        description="end of the period, inclusive: ISO date (the whole Beijing-time day) or date-time",
        json_schema_extra=WHEN_SCHEMA,
    ),
]
Org = Annotated[
    str | None,
    Query(
        max_length=12,
        pattern=r"^[A-Za-z0-9_-]*$",
        description="one organisation (the system organisation only; others see their own)",
    ),
]
Format = Annotated[Literal["json", "csv"], Query(description="csv: the same figures as a CSV file (UTF-8)")]


def _csv(body: bytes, name: str) -> Response:
    return Response(
        body,
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{name}"', "Cache-Control": "private, no-store"},
    )


_CSV = {"content": {"text/csv": {"schema": {"type": "string"}}}, "description": "the figures (format=json or csv)"}


@router.get(
    "/findings",
    response_model=FindingStats,
    summary="Inspection findings counted by sector, item, class, rule, enterprise, month or organisation",
    responses={200: _CSV, **errors(401, 403, 422)},
)
def finding_stats(
    ctx: CtxDep,
    principal: Reader,
    group_by: Annotated[
        str,
        Query(
            min_length=1,
            max_length=100,
            description="1-3 comma-separated dimensions: sector, item, class, rule, enterprise, month, org",
            json_schema_extra={"pattern": rf"^{_DIM}(,{_DIM}){{0,2}}$"},
        ),
    ] = "class",
    date_from: DateFrom = None,
    date_to: DateTo = None,
    org: Org = None,
    format: Format = "json",
) -> Any:
    with ctx.db.read_session() as session:
        figures = stats.finding_stats(
            session,
            principal,
            detection_taxonomy(ctx, session),
            default_rules(ctx),
            group_by=group_by,
            date_from=date_from,
            date_to=date_to,
            org=org,
        )
    if format == "csv":
        return _csv(stats.finding_stats_csv(figures), "findings.csv")
    return figures


@router.get(
    "/models",
    response_model=ModelStats,
    summary="Field precision: per model version and class, the share of its suggestions inspectors confirmed, "
    "corrected or rejected",
    responses={200: _CSV, **errors(401, 403, 422)},
)
def model_stats(
    ctx: CtxDep,
    principal: Reader,
    date_from: DateFrom = None,
    date_to: DateTo = None,
    org: Org = None,
    format: Format = "json",
) -> Any:
    with ctx.db.read_session() as session:
        figures = stats.model_stats(
            session,
            principal,
            detection_taxonomy(ctx, session),
            default_rules(ctx),
            date_from=date_from,
            date_to=date_to,
            org=org,
        )
    if format == "csv":
        return _csv(stats.model_stats_csv(figures), "model-precision.csv")
    return figures
