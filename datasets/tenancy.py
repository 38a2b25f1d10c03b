"""Tenancy of the sample library, decided here and only here: a caller sees the samples of their own
organisation plus every sample another organisation chose to share (共建共享共用).

Everything that reads samples starts from :func:`visible_samples` (or adds :func:`visibility` to a
query over samples), so a sample the caller may not see is simply not found (404), never
"forbidden" (which would confirm that it exists).
"""

from __future__ import annotations

from sqlalchemy import Select, and_, or_, select
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import BindParameter, ColumnElement

from hazardlens.auth import Principal
from hazardlens.errors import NotFound
from hazardlens.orm import Sample


def visibility(principal: Principal, include_deleted: bool = False) -> ColumnElement[bool]:
    """THE tenancy rule as a WHERE clause: not deleted, and own organisation or shared.

    ``include_deleted`` is for the record (history of a deleted sample): it shows the caller's own
    deleted samples, never another organisation's, even one that was shared before deletion.
    """
    return org_visibility(principal.org_code, include_deleted)


def org_visibility(org: str | BindParameter[str], include_deleted: bool = False) -> ColumnElement[bool]:
    """:func:`visibility` for organisation ``org``: a code, or a bound parameter for a statement built
    once and run for any caller (the near-duplicate lookup at ingest, run for every photo)."""
    live = Sample.deleted_at.is_(None)
    if include_deleted:
        return or_(Sample.org_code == org, and_(live, Sample.scope == "shared"))
    return and_(live, or_(Sample.org_code == org, Sample.scope == "shared"))


def visible_samples(principal: Principal, include_deleted: bool = False) -> Select[Sample]:
    """Samples ``principal`` may see; every read of samples starts from this query."""
    return select(Sample).where(visibility(principal, include_deleted))


def get_sample(session: Session, principal: Principal, sample_id: int, include_deleted: bool = False) -> Sample:
    if not 0 < sample_id < 2**63:  # no such id can exist; the database driver would overflow on it
        raise NotFound(f"no sample {sample_id}")
    sample = session.scalar(visible_samples(principal, include_deleted).where(Sample.id == sample_id))
    if sample is None:
        raise NotFound(f"no sample {sample_id}")
    return sample
