"""Labelled datasets in and out of the library: the import summary and the export request."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import ConfigDict, Field, StringConstraints, WithJsonSchema

from hazardlens.contracts.common import Contract, Public
from hazardlens.contracts.filters import SampleFilter
from hazardlens.contracts.samples import RefusalPublic as RefusalOut

IMPORT_FORMATS = ("coco", "yolo", "voc", "labelstudio", "cvat")
EXPORT_FORMATS = ("yolo", "coco", "labelstudio", "cvat", "voc")
EXPORT_STATUSES = ("approved", "submitted")

# Strings the server accepts only as one of a few values, documented as that enum, but checked by the
# domain function so that a wrong value keeps its stable error code (``invalid_format``,
# ``invalid_scope``...) rather than the generic ``invalid`` of a request validation error.
_SHORT = StringConstraints(min_length=1, max_length=40)
ImportFormat = Annotated[str, _SHORT, WithJsonSchema({"type": "string", "enum": list(IMPORT_FORMATS)})]
ExportFormat = Annotated[str, _SHORT, WithJsonSchema({"type": "string", "enum": list(EXPORT_FORMATS)})]
ExportStatus = Annotated[str, _SHORT, WithJsonSchema({"type": "string", "enum": list(EXPORT_STATUSES)})]
ImportScope = Annotated[str, _SHORT, WithJsonSchema({"type": "string", "enum": ["private", "shared"]})]
RevisionState = Literal["submitted", "approved"]


class IssueGroup(Public):
    """Issues of one kind: how many, and a few examples (``where: message``)."""

    count: int
    examples: list[str]


class MissingFiles(Public):
    count: int
    examples: list[str]


class ReaderReport(Public):
    """What the format reader did with the source: counts per reason, never a silent drop."""

    model_config = ConfigDict(extra="allow")

    format: str
    source: str
    images: int
    boxes: int
    negatives: int
    class_counts: dict[str, int]
    repaired: dict[str, IssueGroup] = Field(description="kind (e.g. string_bbox, clipped) -> repairs")
    refused_boxes: dict[str, IssueGroup]
    refused_images: dict[str, IssueGroup]
    warnings: dict[str, IssueGroup]
    missing_files: MissingFiles
    unused_categories: list[str] = Field(description="source categories no box used")


class ImportSummaryPublic(Public):
    """What an import did, for the curator: every refusal and repair has a reason."""

    model_config = ConfigDict(extra="allow")

    format: Literal["coco", "yolo", "voc", "labelstudio", "cvat"]
    source: str = Field(description="the upload's name and the folder inside it the dataset was found in")
    org_code: str
    sector: str
    status: RevisionState = Field(description="the state the revisions were saved in")
    images_read: int = Field(description="images the reader accepted")
    stored: int = Field(description="new samples")
    deduplicated: int = Field(description="images the library already held (same bytes)")
    refused: list[RefusalOut] = Field(description="images not imported, with the reason")
    revisions: int = Field(description="revisions written")
    unchanged: int = Field(description="already-held samples whose current labels were exactly these")
    unlabeled: int = Field(description="stored without a revision: every box refused or ignored")
    not_relabelled: list[RefusalOut] = Field(description="shared samples of another organisation, left as they were")
    transcoded: list[RefusalOut] = Field(description="GIF/BMP/TIFF stored as PNG")
    duplicates: list[RefusalOut] = Field(description="files with the same bytes as an earlier file of the source")
    boxes: int = Field(description="boxes in the revisions written")
    negatives: int = Field(description="verified negatives (a revision without boxes) written")
    ignored_boxes: int = Field(description="boxes the class map maps to 'ignore'")
    near_duplicates: int = Field(description="new samples linked to near-duplicates")
    tag: str | None = Field(None, description="the tag every imported sample carries")
    tagged: int = Field(0, description="samples already held that the tag was added to")
    class_counts: dict[str, int] = Field(description="boxes written, per taxonomy class key")
    camera_ids: int = Field(description="distinct camera ids among the imported images")
    repairs: dict[str, int] = Field(description="repairs the reader made, per kind")
    refused_boxes: dict[str, int] = Field(description="boxes the reader refused, per kind")
    unused_categories: list[str]
    elapsed_s: float
    sample_ids: list[int] = Field(description="the imported samples (new and already held)")
    reader: ReaderReport | None


class ExportIn(Contract):
    """``POST /v1/exports``: which labelled samples, in which format."""

    format: ExportFormat
    status: ExportStatus = Field("approved", description="export the approved labels, or the submitted ones")
    filters: SampleFilter = Field(
        default_factory=SampleFilter, description="which samples (their exported labels for class_key)"
    )


__all__ = [
    "EXPORT_FORMATS",
    "EXPORT_STATUSES",
    "IMPORT_FORMATS",
    "ExportFormat",
    "ExportIn",
    "ExportStatus",
    "ImportFormat",
    "ImportScope",
    "ImportSummaryPublic",
    "IssueGroup",
    "MissingFiles",
    "ReaderReport",
    "RevisionState",
]
