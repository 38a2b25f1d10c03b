"""What the inspector's workbench asks and answers: the list of inspection records, and the
organisation's capture settings (how the console prepares a photo before upload).

A record (执法检查记录) is not a table of its own: it is the photos an organisation recorded under one
record number (``inspection_photos``), so a summary is an aggregate of them and of their findings.
The single record and its findings are answered by :mod:`hazardlens.contracts.detections`
(``InspectionResponse``), which the enforcement system already builds against.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import ConfigDict, Field, StrictBool, ValidationInfo, field_validator

from hazardlens.contracts.common import Contract, Key, Public, Text100, Text200
from hazardlens.contracts.filters import When
from hazardlens.dates import parse_when

#: Long sides the console may downscale a photo to: below 320 nothing is recognisable, above 8192
#: a phone uploads more than any detector reads.
MIN_SIDE, MAX_SIDE = 320, 8192


class RecordFilter(Contract):
    """Which records: a record matches when one of its photos matches every photo field (enterprise,
    sector, inspector, dates); ``open`` looks at all of the record's findings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    record: Text200 | None = Field(None, description="part of the record number, e.g. 〔2026〕")
    enterprise: Text100 | None = Field(None, description="enterprise id (统一社会信用代码), exact")
    sector: Key | None = Field(None, description="sector key of the photos' samples")
    inspector: Text100 | None = Field(None, description="inspector id (执法证号), exact")
    date_from: When = Field(None, description="photo time (captured, else received) from, ISO date or date-time")
    date_to: When = Field(None, description="photo time to, inclusive (a bare date is the whole day)")
    open: bool | None = Field(
        None, description="true: records with findings still awaiting the inspector; false: none left"
    )

    @field_validator("*", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, str) and not value.strip():
            return None
        if info.field_name in ("date_from", "date_to") and isinstance(value, str):
            return parse_when(value, end=info.field_name == "date_to", name=info.field_name)
        return value

    @field_validator("date_from", "date_to")
    @classmethod
    def _utc(cls, value: datetime | None, info: ValidationInfo) -> datetime | None:
        return parse_when(value, end=info.field_name == "date_to")


class FindingCounts(Public):
    suggested: int = Field(description="awaiting the inspector's decision (open)")
    confirmed: int
    rejected: int


class RecordSummary(Public):
    record_no: str
    photos: int
    enterprise_ids: list[str] = Field(description="the enterprises its photos name, in order of first use")
    inspector_ids: list[str]
    sectors: list[str]
    first_at: str | None = Field(description="earliest photo time (captured, else received), ISO 8601 UTC")
    last_at: str | None
    created_at: str = Field(description="when its first photo was received")
    cover_sample_id: int = Field(description="sample of its first photo (for a thumbnail)")
    findings: FindingCounts


class RecordPage(Public):
    items: list[RecordSummary]
    next_cursor: str | None = Field(description="pass as cursor for the next page; null on the last")


class CaptureSettings(Public):
    """How the console prepares a site photo before upload, for the caller's organisation."""

    org_code: str
    keep_original_photos: bool = Field(
        description="upload photos as taken (full size, EXIF kept) instead of downscaled on the device"
    )
    photo_max_side: int | None = Field(
        description="the organisation's own long-side limit for downscaled photos; null: what detection reads"
    )
    detect_side: int = Field(description="the long side the production model reads a photo at (its imgsz)")
    upload_max_side: int | None = Field(
        description="what the console downscales to (long side, pixels); null when originals are kept"
    )


class CaptureSettingsUpdate(Contract):
    """An administrator's change; fields left out stay as they are."""

    # Strict bool: JSON 0/1 is not a boolean in the schema; schemathesis sends it and expects a 422.
    keep_original_photos: StrictBool | None = Field(None, description="null or left out: unchanged")
    photo_max_side: Annotated[int, Field(ge=MIN_SIDE, le=MAX_SIDE)] | None = Field(
        None, description=f"{MIN_SIDE}-{MAX_SIDE}; null: back to what detection reads; left out: unchanged"
    )


__all__ = [
    "MAX_SIDE",
    "MIN_SIDE",
    "CaptureSettings",
    "CaptureSettingsUpdate",
    "FindingCounts",
    "RecordFilter",
    "RecordPage",
    "RecordSummary",
]
