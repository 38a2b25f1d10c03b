"""Annotation revisions, their review, work queues, agreement and model suggestions."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from hazardlens.contracts.common import AnnotationState, Contract, Public
from hazardlens.contracts.samples import Timestamp

Coord = Annotated[float, Field(strict=True, allow_inf_nan=False, description="pixels of the oriented image")]
RevisionSource = Literal["manual", "import", "feedback", "model"]


class BoxIn(Contract):
    """A box as a curator draws it (x1 < x2, y1 < y2 after clipping to the image)."""

    class_key: Annotated[str, Field(min_length=1, max_length=80, strict=True)]
    x1: Coord
    y1: Coord
    x2: Coord
    y2: Coord


class LabelBox(Public):
    """A stored box: taxonomy class key and pixels of the oriented image (suggestions add confidence)."""

    class_key: str
    x1: float
    y1: float
    x2: float
    y2: float
    confidence: float | None = Field(
        None, exclude_if=lambda v: v is None, description="model boxes only; absent on boxes a person drew"
    )


class RevisionPublic(Public):
    """One full set of boxes by one author; never overwritten (the label history is the archive)."""

    id: int
    sample_id: int
    number: int = Field(description="1, 2, 3... per sample")
    status: AnnotationState
    source: RevisionSource
    author_id: int | None
    author: str
    created_at: Timestamp | None
    submitted_at: Timestamp | None
    reviewed_at: Timestamp | None
    reviewer_id: int | None
    reviewer: str | None
    reason: str | None = Field(description="the reviewer's reason when sent back (退回修改意见)")
    note: str | None
    model_version: str | None
    parent_id: int | None
    boxes: list[LabelBox] = Field(description="[] is a verified negative: nothing to label")
    unlabeled_classes: list[str] = Field(
        default_factory=list,
        description=(
            "classes this revision does not label (a partially labelled source): their absence is not a negative"
        ),
    )


class AnnotationStatePublic(Public):
    """A sample's labelling state and its current revision (``revision`` is null while unlabeled)."""

    sample_id: int
    status: AnnotationState
    width: int
    height: int
    class_keys: list[str]
    approved_revision_id: int | None
    revision: RevisionPublic | None
    boxes: list[LabelBox]
    repairs: list[str] | None = Field(None, description="what was clipped or fixed when saving (after PUT)")


class RevisionHistory(Public):
    sample_id: int
    revisions: list[RevisionPublic]


class ClassAgreement(Public):
    matched: int
    only_a: int
    only_b: int
    agreement: float


class AuthorRef(Public):
    user_id: int | None
    name: str
    revision_id: int
    revision_number: int


class AgreementPair(Public):
    a: AuthorRef
    b: AuthorRef
    per_class: dict[str, ClassAgreement]
    overall: float
    matched: int
    only_a: int
    only_b: int


class AgreementPublic(Public):
    """Agreement of the latest revisions of each curator (IoU matching); the headline is the worst pair."""

    sample_id: int
    authors: list[AuthorRef]
    threshold: float
    pairs: list[AgreementPair]
    per_class: dict[str, ClassAgreement]
    overall: float | None = Field(description="null while fewer than two curators labelled the sample")
    a: AuthorRef | None = None
    b: AuthorRef | None = None


class ReviewQueueItem(Public):
    sample_id: int
    revision_id: int
    revision_number: int
    author_id: int | None
    author: str | None
    submitted_at: Timestamp | None
    agreement: float | None


class ReviewQueue(Public):
    items: list[ReviewQueueItem]


class Assigned(Public):
    assigned: int = Field(description="samples newly assigned")
    assignee: int | str


class QueueItem(Public):
    assignment_id: int
    sample_id: int
    assigned_at: Timestamp | None
    assigned_by: int | None
    done_at: Timestamp | None
    status: AnnotationState
    sector: str
    org_code: str
    width: int
    height: int
    original_name: str | None


class Queue(Public):
    items: list[QueueItem]


class QueueNext(Public):
    item: QueueItem | None


class SuggestionPublic(Public):
    """A model's boxes offered to a curator (accepted as they are, edited, or dismissed)."""

    id: int
    sample_id: int
    model_version: str
    status: Literal["open", "accepted", "dismissed"]
    boxes: list[LabelBox]
    created_by: int | None
    created_at: Timestamp | None


class Suggestions(Public):
    items: list[SuggestionPublic]


class AcceptedSuggestion(Public):
    revision: RevisionPublic


__all__ = [
    "AcceptedSuggestion",
    "AgreementPair",
    "AgreementPublic",
    "AnnotationStatePublic",
    "Assigned",
    "AuthorRef",
    "BoxIn",
    "ClassAgreement",
    "Coord",
    "LabelBox",
    "Queue",
    "QueueItem",
    "QueueNext",
    "ReviewQueue",
    "ReviewQueueItem",
    "RevisionHistory",
    "RevisionPublic",
    "RevisionSource",
    "SuggestionPublic",
    "Suggestions",
]
