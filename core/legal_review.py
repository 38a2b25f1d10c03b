"""Provincial inspection items and classes under legal review (法制审核).

A province may add an inspection item or a hazard class only on a mandatory clause of a law,
regulation or standard, and only after its legal reviewers approved it. So: an organisation's admin
proposes (the clause is required: text and citation), a ``legal`` reviewer of the same organisation
approves or rejects with a reason, and only then does the addition become active, and only in that
organisation (``Context.taxonomy(org_code=...)``). The ministry (the system organisation) sees every
organisation's additions, to adopt them nationally. Every step is audited in its transaction.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from hazardlens.audit import record, snapshot
from hazardlens.auth import Principal, is_system
from hazardlens.context import Context
from hazardlens.contracts.legal_review import AdditionPublic
from hazardlens.dates import iso
from hazardlens.errors import Conflict, Invalid, NotFound
from hazardlens.orm import TaxonomyAddition, User, utcnow
from hazardlens.taxonomy import ADDITION_KINDS, validate_addition

MAX_CLAUSE = 5000
MAX_CITATION = 500
MAX_REASON = 2000
_AUDITED = ["kind", "key", "org_code", "status", "legal_citation", "review_reason", "reviewed_by"]


def _clause(text: str | None, citation: str | None) -> tuple[str, str]:
    text, citation = (text or "").strip(), (citation or "").strip()
    if not text or not citation:
        raise Invalid(
            "a provincial item or class needs its mandatory legal clause: the clause's text and its citation "
            "(law, regulation or standard and article)",
            code="missing_legal_clause",
        )
    if len(text) > MAX_CLAUSE or len(citation) > MAX_CITATION:
        raise Invalid(
            f"legal clause text is limited to {MAX_CLAUSE} characters, its citation to {MAX_CITATION}",
            code="missing_legal_clause",
        )
    return text, citation


def propose(
    ctx: Context,
    session: Session,
    principal: Principal,
    kind: str,
    definition: dict[str, Any],
    legal_text: str | None,
    legal_citation: str | None,
) -> TaxonomyAddition:
    """Store a pending addition of ``principal``'s organisation after checking it against that
    organisation's taxonomy (so it can cite the organisation's own items, never another's)."""
    principal.require("taxonomy:propose")
    text, citation = _clause(legal_text, legal_citation)
    if kind not in ADDITION_KINDS:
        raise Invalid(f"kind must be one of {', '.join(ADDITION_KINDS)}, not {kind!r}", code="invalid_taxonomy")
    if not isinstance(definition, dict):
        raise Invalid("the definition must be a mapping", code="invalid_taxonomy")
    payload = dict(definition)
    basis = payload.get("legal_basis") or []
    basis = [basis] if isinstance(basis, str) else list(basis) if isinstance(basis, list) else basis
    if isinstance(basis, list) and citation not in basis:
        basis.append(citation)
    payload["legal_basis"] = basis
    key = str(payload.get("code" if kind == "item" else "key") or "")
    if session.scalar(select(TaxonomyAddition).where(TaxonomyAddition.kind == kind, TaxonomyAddition.key == key)):
        raise Conflict(f"an addition {kind} {key!r} was already proposed", code="duplicate_addition")
    addition = {"kind": kind, "org_code": principal.org_code, "status": "pending", "payload": payload}
    validate_addition(ctx.taxonomy(session, org_code=principal.org_code, max_age_s=0), addition)
    row = TaxonomyAddition(
        kind=kind,
        key=key,
        org_code=principal.org_code,
        payload=payload,
        status="pending",
        created_by=principal.user_id,
        legal_text=text,
        legal_citation=citation,
    )
    session.add(row)
    session.flush()
    record(session, principal, "taxonomy.propose", "taxonomy_addition", row.id, after=snapshot(row, _AUDITED))
    ctx.invalidate_taxonomy()
    return row


def _visible(session: Session, principal: Principal, addition_id: int) -> TaxonomyAddition:
    row = session.get(TaxonomyAddition, addition_id) if 0 < addition_id < 2**31 else None
    if row is None or not (row.org_code == principal.org_code or is_system(principal)):
        raise NotFound(f"no taxonomy addition {addition_id}")
    return row


def review(
    ctx: Context, session: Session, principal: Principal, addition_id: int, decision: str, reason: str | None
) -> TaxonomyAddition:
    """A legal reviewer of the proposing organisation approves or rejects (with a reason) a pending
    addition; decided once. Approval activates it in that organisation at once."""
    principal.require("taxonomy:review")
    row = _visible(session, principal, addition_id)
    if row.org_code != principal.org_code:  # the ministry sees it, but only the province's reviewers decide
        raise NotFound(f"no taxonomy addition {addition_id}")
    if decision not in ("approve", "reject"):
        raise Invalid(f"decision must be approve or reject, not {decision!r}", code="invalid_decision")
    text = (reason or "").strip()
    if len(text) > MAX_REASON:
        raise Invalid(f"reason is longer than {MAX_REASON} characters", code="reason_too_long")
    if decision == "reject" and not text:
        raise Invalid("a rejection needs its reason", code="reason_required")
    if row.status != "pending":
        raise Conflict(f"taxonomy addition {addition_id} was already {row.status}", code="already_reviewed")
    before = snapshot(row, _AUDITED)
    row.status = "approved" if decision == "approve" else "rejected"
    row.review_reason = text or None
    row.reviewed_by = principal.user_id
    row.reviewed_at = utcnow()
    session.flush()
    record(
        session,
        principal,
        f"taxonomy.{decision}",
        "taxonomy_addition",
        row.id,
        before=before,
        after=snapshot(row, _AUDITED),
    )
    ctx.invalidate_taxonomy()
    return row


def list_additions(session: Session, principal: Principal, status: str | None = None) -> list[TaxonomyAddition]:
    """The caller's organisation's additions; the ministry's (system organisation) see every
    organisation's, for national adoption."""
    principal.require("taxonomy:read_additions")
    query = select(TaxonomyAddition).order_by(TaxonomyAddition.id)
    if not is_system(principal):
        query = query.where(TaxonomyAddition.org_code == principal.org_code)
    if status is not None:
        query = query.where(TaxonomyAddition.status == status)
    return list(session.scalars(query.limit(10_000)))


def get_addition(session: Session, principal: Principal, addition_id: int) -> TaxonomyAddition:
    principal.require("taxonomy:read_additions")
    return _visible(session, principal, addition_id)


def addition_public(session: Session, row: TaxonomyAddition) -> AdditionPublic:
    def name(user_id: int | None) -> str | None:
        user = session.get(User, user_id) if user_id is not None else None
        return user.name if user is not None else None

    return AdditionPublic(
        id=row.id,
        kind=row.kind,
        key=row.key,
        org_code=row.org_code,
        status=row.status,
        definition=dict(row.payload or {}),
        legal_text=row.legal_text,
        legal_citation=row.legal_citation,
        proposed_by=name(row.created_by),
        reviewed_by=name(row.reviewed_by),
        review_reason=row.review_reason,
        created_at=iso(row.created_at) or "",
        reviewed_at=iso(row.reviewed_at),
    )
