"""Work queues: a reviewer assigns samples to a curator, the curator works through them.

An assignment is done when its assignee submits the sample (labeling.annotations closes it) and is
reopened when that submission is sent back, so a curator's queue is exactly what still needs them.
Only samples that BOTH the assigner and the assignee can see (the library's tenancy rule, applied
to each) are assigned: handing a curator a sample they would get a 404 for is pointless.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from hazardlens.audit import record
from hazardlens.auth import Principal, principal_of
from hazardlens.contracts.filters import SampleFilter
from hazardlens.datasets.search import apply_filters
from hazardlens.datasets.tenancy import visibility, visible_samples
from hazardlens.dates import iso
from hazardlens.errors import Invalid, NotFound
from hazardlens.orm import Assignment, Sample, User

MAX_ASSIGN = 10_000
FILTER_FIELDS = tuple(SampleFilter.model_fields)


def as_filter(filters: SampleFilter | Mapping[str, Any] | None) -> SampleFilter:
    """The one sample filter (SampleFilter.parse). Unknown names are refused, because a misspelt
    filter would otherwise assign the whole library."""
    return SampleFilter.parse(filters)


def resolve_user(session: Session, principal: Principal, who: int | str, org_code: str | None = None) -> User:
    """A user of the caller's own organisation, by id or by name (names are only unique per
    organisation; ``org_code``, when given, must be the caller's). A user of another organisation is
    answered exactly like one that does not exist (404 ``unknown_user``): an assigner must neither
    learn another organisation's users and roles nor push work into their queues (issue 13, item 8)."""
    org = principal.org_code
    if isinstance(who, int) and not isinstance(who, bool):
        user = session.get(User, who)
        if user is None or user.org_code != org:
            raise NotFound(f"no user with id {who} in your organisation", code="unknown_user")
        return user
    user = (
        session.scalar(select(User).where(User.org_code == org, User.name == who)) if org_code in (None, org) else None
    )
    if user is None:
        raise NotFound(f"no user named {who!r} in your organisation", code="unknown_user")
    return user


def assign(
    session: Session,
    principal: Principal,
    filters: SampleFilter | Mapping[str, Any] | None,
    assignee: int | str,
    limit: int = 100,
) -> int:
    """Assign up to ``limit`` matching samples (oldest first) to ``assignee``, a user of the caller's
    organisation; returns how many were newly assigned. ``filters`` is the library's SampleFilter
    (or a mapping of its fields). Only samples whose labels the assignee may write (their own
    organisation's: another's shared sample would only answer 403 ``not_owner``) are assigned.
    Samples already assigned to that user are skipped, done or not."""
    principal.require("labeling:assign")
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_ASSIGN:
        raise Invalid(f"limit must be between 1 and {MAX_ASSIGN}", code="invalid_limit")
    f = as_filter(filters)
    user = resolve_user(session, principal, assignee, f.org)
    target = principal_of(user)
    if not target.can("annotations:write"):
        raise Invalid(
            f"user {user.name!r} has role {user.role!r}, which cannot label; assign a curator", code="invalid_assignee"
        )
    already = select(Assignment.sample_id).where(Assignment.assignee_id == user.id)
    query = apply_filters(session, visible_samples(principal), f)
    query = (
        query.where(visibility(target), Sample.org_code == target.org_code, Sample.id.not_in(already))
        .with_only_columns(Sample.id)
        .order_by(Sample.id)
        .limit(limit)
    )
    ids = list(session.scalars(query))
    session.add_all(Assignment(sample_id=i, assignee_id=user.id, assigned_by=principal.user_id) for i in ids)
    record(
        session,
        principal,
        "labeling.assign",
        "user",
        user.id,
        after={
            "assignee": user.name,
            "assignee_org": user.org_code,
            "count": len(ids),
            "filters": f.params(),
            "limit": limit,
            "sample_ids": ids,
        },
    )
    session.flush()
    return len(ids)


def _queue_query(principal: Principal, include_done: bool) -> Select[Assignment, Sample]:
    query = (
        select(Assignment, Sample)
        .join(Sample, Sample.id == Assignment.sample_id)
        .where(Assignment.assignee_id == principal.user_id, visibility(principal))
    )
    if not include_done:
        query = query.where(Assignment.done_at.is_(None))
    return query.order_by(Assignment.done_at.is_not(None), Assignment.id)


def _item(a: Assignment, s: Sample) -> dict[str, Any]:
    return {
        "assignment_id": a.id,
        "sample_id": s.id,
        "assigned_at": iso(a.created_at),
        "assigned_by": a.assigned_by,
        "done_at": iso(a.done_at),
        "status": s.annotation_status,
        "sector": s.sector,
        "org_code": s.org_code,
        "width": s.width,
        "height": s.height,
        "original_name": s.original_name,
    }


def my_queue(
    session: Session, principal: Principal, limit: int = 50, include_done: bool = False
) -> list[dict[str, Any]]:
    """The caller's assignments, open ones first in the order they were assigned."""
    if principal.user_id is None:
        return []
    limit = max(1, min(int(limit), 1000))
    rows = session.execute(_queue_query(principal, include_done).limit(limit)).tuples().all()
    return [_item(a, s) for a, s in rows]


def next_in_queue(session: Session, principal: Principal) -> dict[str, Any] | None:
    """The caller's next open assignment, or None when the queue is empty."""
    items = my_queue(session, principal, limit=1)
    return items[0] if items else None


__all__ = ["FILTER_FIELDS", "as_filter", "assign", "my_queue", "next_in_queue", "resolve_user"]
