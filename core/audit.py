"""Audit log (存档留痕): every create, change and delete, with actor, time, before and after.

Written in the same transaction as the change it describes, so a change never lands without its
record, and a failed change leaves no record behind.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from hazardlens.auth import Principal
from hazardlens.dates import iso
from hazardlens.orm import AuditEvent


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [_jsonable(v) for v in value]
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value


def snapshot(row: Any, fields: list[str] | None = None) -> dict[str, Any]:
    """Column values of an ORM row, JSON-ready, for the before/after of an audit event."""
    names = fields or [c.key for c in row.__table__.columns]
    return {n: _jsonable(getattr(row, n)) for n in names}


def record(
    session: Session,
    actor: Principal | None,
    action: str,
    entity: str,
    entity_id: Any,
    *,
    sample_id: int | None = None,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
    request_id: str | None = None,
) -> AuditEvent:
    event = AuditEvent(
        actor_id=actor.user_id if actor else None,
        actor=actor.name if actor else "system",
        org_code=actor.org_code if actor else None,
        action=action,
        entity=entity,
        entity_id=str(entity_id),
        sample_id=sample_id,
        before=_jsonable(before) if before is not None else None,
        after=_jsonable(after) if after is not None else None,
        request_id=request_id or current_request_id(),
    )
    session.add(event)
    return event


def history(
    session: Session,
    *,
    sample_id: int | None = None,
    entity: str | None = None,
    entity_id: Any = None,
    limit: int = 500,
) -> list[AuditEvent]:
    q = select(AuditEvent).order_by(AuditEvent.id)
    if sample_id is not None:
        q = q.where(AuditEvent.sample_id == sample_id)
    if entity is not None:
        q = q.where(AuditEvent.entity == entity)
    if entity_id is not None:
        q = q.where(AuditEvent.entity_id == str(entity_id))
    return list(session.scalars(q.limit(limit)))


def event_dict(e: AuditEvent) -> dict[str, Any]:
    return {
        "id": e.id,
        "at": iso(e.at),
        "actor": e.actor,
        "org_code": e.org_code,
        "action": e.action,
        "entity": e.entity,
        "entity_id": e.entity_id,
        "sample_id": e.sample_id,
        "before": e.before,
        "after": e.after,
        "request_id": e.request_id,
    }


# The serving layer sets the request id of the request being handled, so audit rows carry it.
import contextvars  # noqa: E402

_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("hazardlens_request_id", default=None)


def current_request_id() -> str | None:
    return _request_id.get()


def set_request_id(value: str | None) -> contextvars.Token[str | None]:
    return _request_id.set(value)


def reset_request_id(token: contextvars.Token[str | None]) -> None:
    _request_id.reset(token)
