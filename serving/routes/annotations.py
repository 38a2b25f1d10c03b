"""Labeling API: annotations and their review, work queues, agreement, model suggestions.

Thin: every rule (states, own-work, tenancy, box checks) lives in ``hazardlens.labeling``.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Query
from pydantic import BaseModel, ConfigDict, Field

from hazardlens.auth import Principal
from hazardlens.contracts import Key, SampleFilter
from hazardlens.contracts.annotations import (
    AcceptedSuggestion,
    AgreementPublic,
    AnnotationStatePublic,
    Assigned,
    BoxIn,
    Queue,
    QueueNext,
    ReviewQueue,
    RevisionHistory,
    SuggestionPublic,
    Suggestions,
)
from hazardlens.labeling import agreement as agreement_mod
from hazardlens.labeling import annotations as annotation_ops
from hazardlens.labeling import queues, suggestions
from hazardlens.labeling.annotations import MAX_BOXES, MAX_REASON
from hazardlens.serving.deps import CtxDep, PrincipalDep, ReadSessionDep, SessionDep, require
from hazardlens.serving.schemas import errors

router = APIRouter(tags=["labeling"])


class AnnotationsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    boxes: Annotated[
        list[BoxIn], Field(max_length=MAX_BOXES, description="the full set of boxes; [] marks a verified negative")
    ]
    note: Annotated[str | None, Field(max_length=10_000)] = None
    unlabeled_classes: Annotated[
        list[Key] | None,
        Field(
            max_length=100,
            description=(
                "classes this revision does not label (their absence is not a negative); omit to keep the current "
                "revision's, [] to declare it complete"
            ),
        ),
    ] = None


class RejectIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # Blank is refused by the domain (reason_required); the document says so.
    reason: Annotated[
        str,
        Field(
            max_length=MAX_REASON,
            description="what the curator must fix (退回修改意见)",
            json_schema_extra={"minLength": 1, "pattern": r"\S"},
        ),
    ]


class AssignIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    filters: SampleFilter = Field(default_factory=SampleFilter)
    assignee: Annotated[int | str, Field(description="user id, or user name in filters.org (default: yours)")]
    limit: Annotated[int, Field(ge=1, le=queues.MAX_ASSIGN)] = 100


class AcceptIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    boxes: Annotated[
        list[BoxIn] | None, Field(max_length=MAX_BOXES, description="edited boxes; omit to accept as suggested")
    ] = None


Writer = Annotated[Principal, Depends(require("annotations:write"))]
Reviewer = Annotated[Principal, Depends(require("annotations:review"))]
Reader = Annotated[Principal, Depends(require("samples:read"))]
Limit = Annotated[int, Query(ge=1, le=1000)]


@router.get(
    "/v1/samples/{sample_id}/annotations", response_model=AnnotationStatePublic, responses=errors(401, 403, 404, 422)
)
def get_annotations(sample_id: int, session: ReadSessionDep, principal: Reader) -> dict[str, Any]:
    return annotation_ops.current(session, principal, sample_id)


@router.put(
    "/v1/samples/{sample_id}/annotations",
    response_model=AnnotationStatePublic,
    responses=errors(401, 403, 404, 409, 422),
)
def put_annotations(
    sample_id: int, body: AnnotationsIn, ctx: CtxDep, session: SessionDep, principal: Writer
) -> dict[str, Any]:
    return annotation_ops.put_annotations(
        ctx,
        session,
        principal,
        sample_id,
        [b.model_dump() for b in body.boxes],
        note=body.note,
        unlabeled_classes=body.unlabeled_classes,
    )


@router.get(
    "/v1/samples/{sample_id}/annotations/history", response_model=RevisionHistory, responses=errors(401, 403, 404, 422)
)
def get_history(sample_id: int, session: ReadSessionDep, principal: Reader) -> dict[str, Any]:
    return {"sample_id": sample_id, "revisions": annotation_ops.history(session, principal, sample_id)}


@router.post(
    "/v1/samples/{sample_id}/annotations/submit",
    response_model=AnnotationStatePublic,
    responses=errors(401, 403, 404, 409, 422),
)
def submit(sample_id: int, session: SessionDep, principal: Writer) -> dict[str, Any]:
    return annotation_ops.submit(session, principal, sample_id)


@router.post(
    "/v1/samples/{sample_id}/annotations/approve",
    response_model=AnnotationStatePublic,
    responses=errors(401, 403, 404, 409, 422),
)
def approve(sample_id: int, session: SessionDep, principal: Reviewer) -> dict[str, Any]:
    return annotation_ops.approve(session, principal, sample_id)


@router.post(
    "/v1/samples/{sample_id}/annotations/reject",
    response_model=AnnotationStatePublic,
    responses=errors(401, 403, 404, 409, 422),
)
def reject(sample_id: int, body: RejectIn, session: SessionDep, principal: Reviewer) -> dict[str, Any]:
    return annotation_ops.reject(session, principal, sample_id, body.reason)


@router.get(
    "/v1/samples/{sample_id}/annotations/agreement",
    response_model=AgreementPublic,
    responses=errors(401, 403, 404, 422),
)
def get_agreement(sample_id: int, session: ReadSessionDep, principal: PrincipalDep) -> dict[str, Any]:
    return agreement_mod.agreement(session, principal, sample_id)


@router.get("/v1/review/queue", response_model=ReviewQueue, responses=errors(401, 403, 422))
def review_queue(session: ReadSessionDep, principal: Reviewer, limit: Limit = 50) -> dict[str, Any]:
    return {"items": agreement_mod.review_queue(session, principal, limit)}


@router.post("/v1/labeling/assign", response_model=Assigned, responses=errors(401, 403, 404, 422))
def assign(
    body: AssignIn, session: SessionDep, principal: Annotated[Principal, Depends(require("labeling:assign"))]
) -> dict[str, Any]:
    count = queues.assign(session, principal, body.filters, body.assignee, body.limit)
    return {"assigned": count, "assignee": body.assignee}


@router.get("/v1/labeling/queue", response_model=Queue, responses=errors(401, 403, 422))
def my_queue(
    session: ReadSessionDep, principal: Writer, limit: Limit = 50, include_done: bool = False
) -> dict[str, Any]:
    return {"items": queues.my_queue(session, principal, limit, include_done)}


@router.get("/v1/labeling/queue/next", response_model=QueueNext, responses=errors(401, 403))
def next_in_queue(session: ReadSessionDep, principal: Writer) -> dict[str, Any]:
    return {"item": queues.next_in_queue(session, principal)}


@router.get("/v1/samples/{sample_id}/suggestions", response_model=Suggestions, responses=errors(401, 403, 404, 422))
def list_suggestions(
    sample_id: int, session: ReadSessionDep, principal: Reader, include_closed: bool = False
) -> dict[str, Any]:
    return {"items": suggestions.list_suggestions(session, principal, sample_id, include_closed)}


@router.post(
    "/v1/suggestions/{suggestion_id}/accept",
    response_model=AcceptedSuggestion,
    responses=errors(401, 403, 404, 409, 422),
)
def accept_suggestion(
    suggestion_id: int,
    ctx: CtxDep,
    session: SessionDep,
    principal: Writer,
    body: Annotated[AcceptIn | None, Body()] = None,
) -> dict[str, Any]:
    boxes = [b.model_dump() for b in body.boxes] if body is not None and body.boxes is not None else None
    return {"revision": suggestions.accept(ctx, session, principal, suggestion_id, boxes)}


@router.post(
    "/v1/suggestions/{suggestion_id}/dismiss",
    response_model=SuggestionPublic,
    responses=errors(401, 403, 404, 409, 422),
)
def dismiss_suggestion(suggestion_id: int, session: SessionDep, principal: Writer) -> dict[str, Any]:
    return suggestions.dismiss(session, principal, suggestion_id)
