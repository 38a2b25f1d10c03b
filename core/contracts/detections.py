"""What the detection and inspection APIs answer: detections, rule findings, inspection findings.

Every answer that shows a detection builds it with :func:`detection_public` (class names, inspection
items, legal basis, severity, ``is_hazard``, rounding), and every rule finding with
:func:`rule_finding_public`, so ``POST /v1/detect``, its batch, inspection photos and stored
inspection answers describe a detection the same way. Boxes are in pixels of the EXIF-oriented
image (:class:`hazardlens.detections.Box`).

The class names below are the component names of the OpenAPI document that provincial systems and
the enforcement system build against (``Detection``, ``Finding``, ``DerivedFinding``...), so they stay
as they were; ``DetectionPublic``, ``FindingPublic``, ``RuleFindingPublic`` and ``BoxOut`` name the
same classes in the contract layer's naming. Answers drop unknown keys rather than refuse them
(``extra="ignore"``): an inspection photo's answer is stored and replayed (Idempotency-Key) or read
back later, and may be older than the current shape.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from pydantic import ConfigDict, Field

from hazardlens.contracts.common import ErrorBody, Public
from hazardlens.detections import Box as DetectedBox
from hazardlens.detections import Detections

if TYPE_CHECKING:
    from hazardlens.rules import RuleFinding
    from hazardlens.taxonomy import Taxonomy


class Answer(Public):
    """Base of the detection answers: documented field by field; unknown keys are dropped (see above)."""

    model_config = ConfigDict(extra="ignore", from_attributes=True)


class Box(Answer):
    x1: float
    y1: float
    x2: float
    y2: float


class ModelRef(Answer):
    name: str
    version: str


class ImageSize(Answer):
    width: int = Field(description="pixels of the EXIF-oriented image; boxes are in these pixels")
    height: int


class Detection(Answer):
    class_key: str
    name_zh: str
    name_en: str
    confidence: float
    box: Box
    inspection_items: list[str] = Field(description="key inspection items (重点检查事项) this class supports")
    legal_basis: list[str]
    severity: str | None
    is_hazard: bool = Field(description="false for context classes (person, worn helmet, ...)")


class Timing(Answer):
    decode: float
    inference: float
    total: float


class RuleInput(Answer):
    class_key: str
    confidence: float
    box: Box


class DerivedFinding(Answer):
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


class DetectResponse(Answer):
    model: ModelRef
    image: ImageSize
    detections: list[Detection]
    findings: list[DerivedFinding] = Field(
        default_factory=list, description=("rule findings derived from the detections (same conf and sector filters)")
    )
    timing_ms: Timing


class BatchItem(Answer):
    index: int
    filename: str | None = None
    image: ImageSize | None = None
    detections: list[Detection] | None = None
    findings: list[DerivedFinding] | None = None
    timing_ms: Timing | None = None
    error: ErrorBody | None = Field(None, description="set instead of detections when this file failed")


class BatchResponse(Answer):
    model: ModelRef
    results: list[BatchItem]
    timing_ms: dict[str, float]


class Finding(Answer):
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
    rule: str | None = Field(
        None, description="the rule (configs/rules.yaml) that derived it; null for a class the model detected directly"
    )
    model_version: str
    status: str = Field(description="suggested | confirmed | rejected")
    review: dict[str, Any] | None = None
    revision_id: int | None = None
    reviewed_at: str | None = None


class PhotoResponse(Answer):
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
    replayed: bool = Field(
        description="true when this is the stored answer to an earlier call with the same Idempotency-Key"
    )


class InspectionPhoto(Answer):
    photo_id: int
    sample_id: int
    sector: str | None = Field(None, description="sector of the photo's sample")
    enterprise_id: str | None
    inspector_id: str | None
    item_codes: list[str]
    captured_at: str | None
    created_at: str | None
    model: ModelRef | None
    image: ImageSize | None
    findings: list[Finding]
    detections: list[Detection]


class InspectionResponse(Answer):
    record_no: str
    photos: list[InspectionPhoto]
    summary: dict[str, int]


class RevisionRef(Answer):
    id: int
    number: int
    status: str


class ReviewResponse(Finding):
    record_no: str
    revision: RevisionRef | None = Field(description="the annotation revision a confirmation created")


# The contract layer's names for the same classes (the OpenAPI component names above stay).
BoxOut = Box
DetectionPublic = Detection
FindingPublic = Finding
RuleFindingPublic = DerivedFinding


# --- building the answers --------------------------------------------------------------------


def box_public(box: DetectedBox) -> Box:
    """A box as answered: pixels rounded to 0.1."""
    return Box(
        x1=round(float(box.x1), 1), y1=round(float(box.y1), 1), x2=round(float(box.x2), 1), y2=round(float(box.y2), 1)
    )


def class_text(taxonomy: Taxonomy, class_key: str) -> dict[str, Any]:
    """What the taxonomy says about a class for an answer: names, items, legal basis, severity,
    is_hazard (the key itself as its name, and nothing else, for a class the taxonomy lacks)."""
    cls = taxonomy.classes.get(class_key)
    if cls is None:
        return {
            "name_zh": class_key,
            "name_en": class_key,
            "inspection_items": [],
            "legal_basis": [],
            "severity": None,
            "is_hazard": False,
        }
    return {
        "name_zh": cls.name_zh,
        "name_en": cls.name_en,
        "inspection_items": list(cls.inspection_items),
        "legal_basis": list(cls.legal_basis),
        "severity": cls.severity,
        "is_hazard": bool(cls.is_hazard),
    }


def detection_public(taxonomy: Taxonomy, box: DetectedBox) -> Detection:
    """The one public form of a detection: pixels, plus what an inspector needs to act on it."""
    return Detection(
        class_key=box.class_key,
        confidence=round(float(box.confidence or 0.0), 4),
        box=box_public(box),
        **class_text(taxonomy, box.class_key),
    )


def detections_public(taxonomy: Taxonomy, detections: Detections | Iterable[DetectedBox]) -> list[Detection]:
    """:func:`detection_public` of each box, in the order given."""
    return [detection_public(taxonomy, box) for box in detections]


def rule_finding_public(finding: RuleFinding, boxes: Sequence[DetectedBox]) -> DerivedFinding:
    """A rule's finding as answered: the rule's text, items and basis, and its input detections
    themselves (class, confidence, box) rather than indices into a list a sector filter changes.
    ``boxes`` are the detections the rules were applied to, in that order."""
    inputs = [
        RuleInput(
            class_key=boxes[i].class_key,
            confidence=round(float(boxes[i].confidence or 0.0), 4),
            box=box_public(boxes[i]),
        )
        for i in finding.inputs
    ]
    return DerivedFinding(
        rule=finding.rule,
        evidence_class=finding.evidence_class,
        confidence=round(finding.confidence, 4),
        box=Box.model_validate(finding.box_dict()),
        finding_zh=finding.finding_zh,
        finding_en=finding.finding_en,
        inspection_items=list(finding.inspection_items),
        legal_basis=list(finding.legal_basis),
        severity=finding.severity,
        inputs=inputs,
    )


def rule_findings_public(findings: Iterable[RuleFinding], detections: Detections) -> list[DerivedFinding]:
    """:func:`rule_finding_public` of each finding of rules applied to ``detections``."""
    boxes = detections.to_boxes()
    return [rule_finding_public(f, boxes) for f in findings]


__all__ = [
    "Answer",
    "BatchItem",
    "BatchResponse",
    "Box",
    "BoxOut",
    "DerivedFinding",
    "DetectResponse",
    "Detection",
    "DetectionPublic",
    "Finding",
    "FindingPublic",
    "ImageSize",
    "InspectionPhoto",
    "InspectionResponse",
    "ModelRef",
    "PhotoResponse",
    "ReviewResponse",
    "RevisionRef",
    "RuleFindingPublic",
    "RuleInput",
    "Timing",
    "box_public",
    "class_text",
    "detection_public",
    "detections_public",
    "rule_finding_public",
    "rule_findings_public",
]
