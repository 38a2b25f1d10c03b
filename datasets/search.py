"""Catalogue search over the samples a caller may see: the one sample filter
(:class:`~hazardlens.contracts.filters.SampleFilter`, dates parsed by :func:`hazardlens.dates.parse_when`)
as a query, and keyset pagination.
"""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from hazardlens.auth import Principal
from hazardlens.contracts.filters import SampleFilter
from hazardlens.datasets.tenancy import visible_samples
from hazardlens.dates import utc
from hazardlens.errors import Invalid
from hazardlens.orm import Sample, SampleClass, SampleTag

MAX_LIMIT = 1000
DEFAULT_LIMIT = 50


def apply_filters(session: Session, query: Select[Any], f: SampleFilter, *, below_id: int | None = None) -> Select[Any]:
    """``query`` narrowed to the samples ``f`` selects; ``below_id`` (a keyset page's cursor) also
    bounds the class subquery, because the database does not carry ``samples.id < n`` over to
    ``sample_classes.sample_id`` (or ``sample_tags``) itself and would walk the index from its newest row."""
    if below_id is not None:
        query = query.where(Sample.id < below_id)
    eq = {
        Sample.sector: f.sector,
        Sample.annotation_status: f.status,
        Sample.org_code: f.org,
        Sample.scope: f.scope,
        Sample.site_id: f.site,
        Sample.camera_id: f.camera,
        Sample.enterprise_id: f.enterprise,
        Sample.source: f.source,
        Sample.inspection_record: f.inspection_record,
        Sample.dup_group: f.dup_group,
    }
    for col, value in eq.items():
        if value is not None:
            query = query.where(col == value)
    # Class and tag: the members' own (key, sample id) index, bounded by the cursor as well.
    for key, sample_id, value in (
        (SampleClass.class_key, SampleClass.sample_id, f.class_key),
        (SampleTag.tag, SampleTag.sample_id, f.tag),
    ):
        if value is not None:
            members = select(sample_id).where(key == value)
            if below_id is not None:
                members = members.where(sample_id < below_id)
            query = query.where(Sample.id.in_(members))
    bounds = ((Sample.captured_at, f.captured_from, f.captured_to), (Sample.created_at, f.created_from, f.created_to))
    for column, lo, hi in bounds:
        if lo is not None:
            query = query.where(column >= utc(lo))
        if hi is not None:
            query = query.where(column <= utc(hi))
    return query


#: A capture or upload date range at most this wide is answered from its date index (a month of a
#: million-sample library is ~17,000 rows, fetched and sorted in milliseconds), not by walking the id
#: index newest first: PostgreSQL assumes the matches are spread evenly over the ids and walks, but
#: dates follow the ids, so for a month three years back it passed 450,000 rows first (1 s).
NARROW_DATE_RANGE = timedelta(days=92)


def narrow_date_range(f: SampleFilter) -> bool:
    """Whether ``f`` bounds a capture or upload date to at most :data:`NARROW_DATE_RANGE`."""
    now = datetime.now(UTC)
    for lo, hi in ((f.captured_from, f.captured_to), (f.created_from, f.created_to)):
        start, end = utc(lo), utc(hi) or now
        if start is not None and end - start <= NARROW_DATE_RANGE:
            return True
    return False


def encode_cursor(last_id: int) -> str:
    return base64.urlsafe_b64encode(f"s1:{last_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        kind, _, value = text.partition(":")
        if kind != "s1":
            raise ValueError(kind)
        return int(value)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise Invalid("cursor is not one this service handed out", code="invalid_cursor") from None


def search(
    session: Session,
    principal: Principal,
    filters: SampleFilter | None = None,
    limit: int = DEFAULT_LIMIT,
    cursor: str | None = None,
) -> tuple[list[Sample], str | None]:
    """Visible samples, newest first, one page at a time. Keyset pagination over id (``id < last``)
    so that pages neither repeat nor skip rows while samples are being added, and page 1000 costs
    the same as page 1."""
    if not 1 <= limit <= MAX_LIMIT:
        raise Invalid(f"limit must be between 1 and {MAX_LIMIT}", code="invalid_limit")
    below = decode_cursor(cursor) if cursor else None
    f = filters or SampleFilter()
    query = apply_filters(session, visible_samples(principal), f, below_id=below)
    # "id + 0" is the same order, but no index provides it: the database takes the date index.
    newest_first = (Sample.id + 0).desc() if narrow_date_range(f) else Sample.id.desc()
    rows = list(session.scalars(query.order_by(newest_first).limit(limit + 1)))
    if len(rows) > limit:
        return rows[:limit], encode_cursor(rows[limit - 1].id)
    return rows, None
