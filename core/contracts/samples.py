"""Samples of the library as the API, the console, the CLI and the client see them."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from hazardlens.contracts.common import Public

#: ISO 8601 text in UTC, as every timestamp hazardlens answers (``datetime.isoformat``).
Timestamp = Annotated[str, Field(json_schema_extra={"format": "date-time"}, description="ISO 8601, UTC")]
ImageFormat = Literal["jpeg", "png", "webp", "heic"]


class Gps(Public):
    lat: float
    lon: float


class SamplePublic(Public):
    """One image of the library: content, provenance, place and labelling state."""

    id: int
    sha256: str = Field(description="SHA-256 of the stored bytes (deduplication key per organisation)")
    width: int = Field(description="pixels of the EXIF-oriented image; boxes are in these pixels")
    height: int
    format: ImageFormat
    content_type: str
    size_bytes: int
    original_name: str | None
    org_code: str = Field(description="the owning organisation; only it changes the sample and its labels")
    sector: str
    scope: Literal["private", "shared"] = Field(description="shared: readable (not writable) by other organisations")
    source: Literal["inspection", "import", "feedback"]
    site_id: str | None
    enterprise_id: str | None
    camera_id: str | None
    inspection_record: str | None
    tags: list[str]
    captured_at: Timestamp | None
    gps: Gps | None
    dup_group: int | None = Field(description="near-duplicate group id")
    annotation_status: Literal["unlabeled", "in_progress", "submitted", "approved", "rejected"]
    class_keys: list[str] = Field(description="classes in the current revision")
    created_at: Timestamp | None
    uploader: str | None
    uploader_id: int | None
    deleted_at: Timestamp | None


class SampleCreated(SamplePublic):
    """An upload's answer: the sample, and whether the bytes were already in the library."""

    deduplicated: bool = Field(description="true: the same bytes were already held; nothing new was stored")
    near_duplicates: list[int] = Field(description="visible samples this image was linked to as near-duplicates")


class SamplePage(Public):
    items: list[SamplePublic]
    next_cursor: str | None = Field(description="pass as ?cursor= for the next page; null on the last")


class NearDuplicate(SamplePublic):
    distance: int = Field(description="Hamming distance of the perceptual hashes (0-64)")


class NearDuplicates(Public):
    items: list[NearDuplicate]


class RefusalPublic(Public):
    name: str
    code: str
    message: str


class IngestSummaryPublic(Public):
    """What a bulk upload (zip, folder) did, file by file where it refused something."""

    stored: int
    deduplicated: int
    near_duplicates: int
    refused: list[RefusalPublic]
    skipped: list[RefusalPublic] = Field(description="entries that are not images (notes, metadata)")
    sample_ids: list[int] = Field(description="stored or found samples, in input order")


class AuditEventPublic(Public):
    """One archived change (存档留痕)."""

    id: int
    at: Timestamp | None
    actor: str
    org_code: str | None
    action: str
    entity: str
    entity_id: str
    sample_id: int | None
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    request_id: str | None


class AuditEvents(Public):
    items: list[AuditEventPublic]


#: ``json_schema_extra`` of a file part the server refuses empty (empty_file).
NON_EMPTY_FILE: dict[str, int] = {"minLength": 1}
#: ``next_cursor`` as ``datasets.search.encode_cursor`` writes it: ``s1:<id>`` in unpadded URL-safe
#: base64 (``czE6`` is ``s1:``), every 3 digits of the id 4 characters, 1-18 digits.
_DIGITS3 = "(?:M[DTjz]|N[DTjz]|O[DT])[AEIMQUYcgk][w-z0-5]"
CURSOR_PATTERN = (
    f"^(?:czE6(?:{_DIGITS3}){{0,5}}(?:{_DIGITS3}|(?:M[AQgw]|N[AQgw]|O[AQ])"
    f"|(?:M[DTjz]|N[DTjz]|O[DT])[AEIMQUYcgk]))?$"
)  # empty: the first page
#: Comma-separated tags as ``datasets.ingest.normalise_tags`` takes them: at most 50, each at most 50 characters.
TAGS_PATTERN = "^[^,]{0,50}(?:,[^,]{0,50}){0,49}$"

__all__ = [
    "CURSOR_PATTERN",
    "NON_EMPTY_FILE",
    "TAGS_PATTERN",
    "AuditEventPublic",
    "AuditEvents",
    "Gps",
    "ImageFormat",
    "IngestSummaryPublic",
    "NearDuplicate",
    "NearDuplicates",
    "RefusalPublic",
    "SampleCreated",
    "SamplePage",
    "SamplePublic",
    "Timestamp",
]
