"""Work queues: a reviewer assigns samples to a curator, the curator works through them.

An assignment is done when its assignee submits the sample (labeling.annotations closes it) and is
reopened when that submission is sent back, so a curator's queue is exactly what still needs them.
Only samples that BOTH the assigner and the assignee can see are assigned: handing a curator a
sample they would get a 404 for is a silent no-op, so it is skipped instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from hazardlens.audit import record
from hazardlens.auth import Principal
from hazardlens.datasets.library import visible_samples
from hazardlens.errors import Invalid, NotFound
from hazardlens.orm import ANNOTATION_STATES, Assignment, Sample, SampleClass, User

MAX_ASSIGN = 10_000
FILTER_KEYS = ("org_code", "sector", "status", "class_key", "scope", "source", "site_id", "enterprise_id")


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def apply_filters(query: Select[Any], filters: Mapping[str, Any] | None) -> Select[Any]:
    """Narrow a sample query by the catalogue fields a reviewer picks work by. Unknown keys are
    refused, because a misspelt filter would otherwise assign the whole library."""
    filters = {k: v for k, v in (filters or {}).items() if v is not None and v != ""}
    unknown = sorted(set(filters) - set(FILTER_KEYS))
    if unknown:
        raise Invalid(f"unknown sample filter(s) {', '.join(unknown)}; known: {', '.join(FILTER_KEYS)}",
                      code="invalid_filter")
    if "status" in filters and filters["status"] not in ANNOTATION_STATES:
        raise Invalid(f"status {filters['status']!r} is not one of {', '.join(ANNOTATION_STATES)}",
                      code="invalid_filter")
    columns = {"org_code": Sample.org_code, "sector": Sample.sector, "status": Sample.annotation_status,
               "scope": Sample.scope, "source": Sample.source, "site_id": Sample.site_id,
               "enterprise_id": Sample.enterprise_id}
    for key, column in columns.items():
        if key in filters:
            query = query.where(column == str(filters[key]))
    if "class_key" in filters:
        query = query.where(Sample.id.in_(select(SampleClass.sample_id)
                                          .where(SampleClass.class_key == str(filters["class_key"]))))
    return query


def resolve_user(session: Session, principal: Principal, who: int | str, org_code: str | None = None) -> User:
    """A user by id, or by name within ``org_code`` (default: the caller's organisation); names are
    only unique per organisation."""
    if isinstance(who, int) and not isinstance(who, bool):
        user = session.get(User, who)
        if user is None:
            raise NotFound(f"no user with id {who}", code="unknown_user")
        return user
    org = org_code or principal.org_code
    user = session.scalar(select(User).where(User.org_code == org, User.name == who))
    if user is None:
        raise NotFound(f"no user named {who!r} in organisation {org}", code="unknown_user")
    return user


def _as_principal(user: User) -> Principal:
    return Principal(user_id=user.id, name=user.name, org_code=user.org_code, role=user.role)


def assign(session: Session, principal: Principal, filters: Mapping[str, Any] | None, assignee: int | str,
           limit: int = 100) -> int:
    """Assign up to ``limit`` matching samples (oldest first) to ``assignee``; returns how many were
    newly assigned. Samples already assigned to that user are skipped, done or not."""
    principal.require("labeling:assign")
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_ASSIGN:
        raise Invalid(f"limit must be between 1 and {MAX_ASSIGN}", code="invalid_limit")
    user = resolve_user(session, principal, assignee, (filters or {}).get("org_code"))
    target = _as_principal(user)
    if not target.can("annotations:write"):
        raise Invalid(f"user {user.name!r} has role {user.role!r}, which cannot label; assign a curator",
                      code="invalid_assignee")
    theirs = visible_samples(target).order_by(None).subquery()
    already = select(Assignment.sample_id).where(Assignment.assignee_id == user.id)
    query = apply_filters(visible_samples(principal).order_by(None), filters)
    query = (query.where(Sample.id.in_(select(theirs.c.id)), Sample.id.not_in(already))
             .with_only_columns(Sample.id).order_by(Sample.id).limit(limit))
    ids = list(session.scalars(query))
    session.add_all(Assignment(sample_id=i, assignee_id=user.id, assigned_by=principal.user_id) for i in ids)
    record(session, principal, "labeling.assign", "user", user.id,
           after={"assignee": user.name, "assignee_org": user.org_code, "count": len(ids),
                  "filters": dict(filters or {}), "limit": limit, "sample_ids": ids})
    session.flush()
    return len(ids)


def _queue_query(principal: Principal, include_done: bool) -> Select[Any]:
    visible = visible_samples(principal).order_by(None).subquery()
    query = (select(Assignment, Sample)
             .join(Sample, Sample.id == Assignment.sample_id)
             .where(Assignment.assignee_id == principal.user_id, Sample.id.in_(select(visible.c.id))))
    if not include_done:
        query = query.where(Assignment.done_at.is_(None))
    return query.order_by(Assignment.done_at.is_not(None), Assignment.id)


def _item(a: Assignment, s: Sample) -> dict[str, Any]:
    return {"assignment_id": a.id, "sample_id": s.id, "assigned_at": _iso(a.created_at),
            "assigned_by": a.assigned_by, "done_at": _iso(a.done_at), "status": s.annotation_status,
            "sector": s.sector, "org_code": s.org_code, "width": s.width, "height": s.height,
            "original_name": s.original_name}


def my_queue(session: Session, principal: Principal, limit: int = 50, include_done: bool = False
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


__all__ = ["FILTER_KEYS", "apply_filters", "assign", "my_queue", "next_in_queue", "resolve_user"]
