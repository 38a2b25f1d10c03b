"""Response shapes of the detection, inspection and model APIs, for the OpenAPI document that
provincial systems and the enforcement system build against. Routes return plain dicts built by the
owning part; these models only document and check them."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class ErrorBody(BaseModel):
    code: str = Field(description="stable machine-readable code, e.g. too_large, model_unavailable")
    message: str
    details: Any | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` entries for the error statuses a route can answer, all in the one shape."""
    text = {400: "bad request", 401: "missing or invalid API key", 403: "the key's role may not do this",
            404: "not found (or not visible to the caller's organisation)", 408: "request body stalled",
            409: "conflict with the current state", 413: "file, body or image too large",
            415: "not a supported image", 422: "invalid request", 503: "no model loaded", 504: "timed out"}
    return {s: {"model": ErrorResponse, "description": text.get(s, "error")} for s in statuses}


class Box(BaseModel):
    x1: float
    y1: float
    x2: float
    y2: float


class ModelRef(BaseModel):
    name: str
    version: str


class ImageSize(BaseModel):
    width: int = Field(description="pixels of the EXIF-oriented image; boxes are in these pixels")
    height: int


class Detection(BaseModel):
    class_key: str
    name_zh: str
    name_en: str
    confidence: float
    box: Box
    inspection_items: list[str] = Field(description="key inspection items (重点检查事项) this class supports")
    legal_basis: list[str]
    severity: str | None
    is_hazard: bool = Field(description="false for context classes (person, worn helmet, ...)")


class Timing(BaseModel):
    decode: float
    inference: float
    total: float


class RuleInput(BaseModel):
    class_key: str
    confidence: float
    box: Box


class DerivedFinding(BaseModel):
    """A finding derived by a rule of configs/rules.yaml from several detections (an absence or a
    relation: a worker whose head has no helmet), with its own text, items and legal basis."""

    rule: str = Field(description="rule key, e.g. person_without_helmet (listed by GET /v1/taxonomy)")
    evidence_class: str | None = Field(description="the labelled class it corresponds to (e.g. head), if any")
    confidence: float = Field(description="derived from the inputs' confidences (see the rule)")
    box: Box = Field(description="the evidence box (e.g. the bare head) or the region the rule looked at")
    finding_zh: str
    finding_en: str
    inspection_items: list[str]
    legal_basis: list[str]
    severity: str | None
    inputs: list[RuleInput] = Field(description="the detections it was derived from, evidence or subject first")


class DetectResponse(BaseModel):
    model: ModelRef
    image: ImageSize
    detections: list[Detection]
    findings: list[DerivedFinding] = Field(default_factory=list, description=(
        "rule findings derived from the detections (same conf and sector filters)"))
    timing_ms: Timing


class BatchItem(BaseModel):
    index: int
    filename: str | None = None
    image: ImageSize | None = None
    detections: list[Detection] | None = None
    findings: list[DerivedFinding] | None = None
    timing_ms: Timing | None = None
    error: ErrorBody | None = Field(None, description="set instead of detections when this file failed")


class BatchResponse(BaseModel):
    model: ModelRef
    results: list[BatchItem]
    timing_ms: dict[str, float]


class Finding(BaseModel):
    id: int
    photo_id: int
    sample_id: int
    class_key: str
    name_zh: str
    name_en: str
    confidence: float
    box: Box
    inspection_items: list[str]
    legal_basis: list[str]
    severity: str | None
    finding: str = Field(description="the finding text an inspector would write (疑似隐患 until confirmed)")
    finding_en: str | None = None
    rule: str | None = Field(None, description="the rule (configs/rules.yaml) that derived it; null for a class "
                                               "the model detected directly")
    model_version: str
    status: str = Field(description="suggested | confirmed | rejected")
    review: dict[str, Any] | None = None
    revision_id: int | None = None
    reviewed_at: str | None = None


class PhotoResponse(BaseModel):
    record_no: str
    photo_id: int
    sample_id: int
    deduplicated: bool
    enterprise_id: str
    inspector_id: str | None
    item_codes: list[str]
    captured_at: str | None
    created_at: str
    model: ModelRef
    image: ImageSize
    findings: list[Finding] = Field(description="suggested findings (hazard classes only)")
    detections: list[Detection] = Field(description="everything detected that is relevant to the sector")
    replayed: bool = Field(description="true when this is the stored answer to an earlier call with the same "
                                       "Idempotency-Key")


class InspectionPhoto(BaseModel):
    photo_id: int
    sample_id: int
    enterprise_id: str | None
    inspector_id: str | None
    item_codes: list[str]
    captured_at: str | None
    created_at: str | None
    model: ModelRef | None
    image: ImageSize | None
    findings: list[Finding]
    detections: list[Detection]


class InspectionResponse(BaseModel):
    record_no: str
    photos: list[InspectionPhoto]
    summary: dict[str, int]


class RevisionRef(BaseModel):
    id: int
    number: int
    status: str


class ReviewResponse(Finding):
    record_no: str
    revision: RevisionRef | None = Field(description="the annotation revision a confirmation created")


# ModelsResponse moved to the contract layer: hazardlens.contracts.models.ModelsResponse.
