"""Provincial inspection items and classes under legal review (法制审核), over HTTP; the rules live in
:mod:`hazardlens.legal_review`."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query

from hazardlens import legal_review
from hazardlens.auth import Principal
from hazardlens.contracts.legal_review import (
    AdditionDecision,
    AdditionProposal,
    AdditionPublic,
    AdditionsResponse,
    AdditionStatus,
)
from hazardlens.serving.deps import CtxDep, require
from hazardlens.serving.schemas import errors

router = APIRouter(tags=["taxonomy"])

AdditionId = Annotated[int, Path(ge=1, le=2**31 - 1)]


@router.get(
    "/v1/taxonomy/additions",
    response_model=AdditionsResponse,
    summary="Provincial items and classes and their legal review (the ministry sees every organisation's)",
    responses=errors(401, 403, 422),
)
def list_additions(
    ctx: CtxDep,
    principal: Annotated[Principal, Depends(require("taxonomy:read_additions"))],
    status: Annotated[AdditionStatus | None, Query()] = None,
) -> AdditionsResponse:
    with ctx.db.read_session() as session:
        rows = legal_review.list_additions(session, principal, status)
        return AdditionsResponse(additions=[legal_review.addition_public(session, r) for r in rows])


@router.post(
    "/v1/taxonomy/additions",
    response_model=AdditionPublic,
    status_code=201,
    summary="Propose an item or class with its mandatory legal clause (organisation admins)",
    description="422 missing_legal_clause without the clause's text and citation; 409 duplicate_addition.",
    responses=errors(401, 403, 409, 422),
)
def propose(
    body: AdditionProposal, ctx: CtxDep, principal: Annotated[Principal, Depends(require("taxonomy:propose"))]
) -> AdditionPublic:
    clause = body.legal_clause
    with ctx.db.session() as session:
        row = legal_review.propose(
            ctx,
            session,
            principal,
            body.kind,
            body.definition,
            clause.text if clause else None,
            clause.citation if clause else None,
        )
        return legal_review.addition_public(session, row)


@router.get(
    "/v1/taxonomy/additions/{addition_id}",
    response_model=AdditionPublic,
    summary="One provincial addition and its review",
    responses=errors(401, 403, 404, 422),
)
def get_addition(
    addition_id: AdditionId,
    ctx: CtxDep,
    principal: Annotated[Principal, Depends(require("taxonomy:read_additions"))],
) -> AdditionPublic:
    with ctx.db.read_session() as session:
        return legal_review.addition_public(session, legal_review.get_addition(session, principal, addition_id))


@router.post(
    "/v1/taxonomy/additions/{addition_id}/review",
    response_model=AdditionPublic,
    summary="Approve or reject a pending addition (legal reviewers of the proposing organisation)",
    description="422 missing_reason for a rejection without its reason; 409 already_reviewed.",
    responses=errors(401, 403, 404, 409, 422),
)
def review(
    addition_id: AdditionId,
    body: AdditionDecision,
    ctx: CtxDep,
    principal: Annotated[Principal, Depends(require("taxonomy:review"))],
) -> AdditionPublic:
    with ctx.db.session() as session:
        row = legal_review.review(ctx, session, principal, addition_id, body.decision, body.reason)
        return legal_review.addition_public(session, row)
