"""The inspector's workbench: finding inspection records, and how the console prepares a photo.

Records. A record is the photos an organisation recorded under one record number
(:class:`hazardlens.orm.InspectionPhoto`); this module lists them, newest first, with what an
inspector needs to pick one: enterprises, inspectors, sectors, photo times and how many findings
still await a decision. Records belong to the organisation that made them: another organisation's
record is never listed (as :func:`hazardlens.labeling.inspections.get_inspection` never finds it).
Pages are keyset pages over the id of a record's first matching photo (``id < last``), so a page
neither repeats nor skips a record while photos are being added: a new photo only ever has a larger
id, so it never moves an existing record to another page.

Capture settings. On a weak network a 12-megapixel phone photo is 4-6 MB, while the detector reads a
photo at its input size (``imgsz``, e.g. 640 or 1280 pixels on the long side) and throws the rest
away. So the console downscales on the device to what detection reads, unless the organisation asks
for the originals (``keep_original_photos``: evidence kept at full size, EXIF included), or sets its
own long side (``photo_max_side``: e.g. to keep more detail for later training). The settings live
in ``organisations.settings``; only the organisation's administrator changes them, audited.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import Select, and_, exists, func, select
from sqlalchemy.orm import Session

from hazardlens.audit import record as audit
from hazardlens.auth import Principal, ensure_org
from hazardlens.contracts.inspections import MIN_SIDE, CaptureSettings, CaptureSettingsUpdate, RecordFilter
from hazardlens.datasets.search import decode_cursor, encode_cursor
from hazardlens.dates import iso
from hazardlens.errors import Invalid
from hazardlens.orm import Finding, InspectionPhoto, ModelVersion, Sample

DEFAULT_LIMIT = 50
MAX_LIMIT = 200
#: What the console downscales to when no production model says its input size.
DEFAULT_DETECT_SIDE = 1280
#: The registry name whose production version answers detections (hazardlens.models.registry).
MODEL_NAME = "hazardlens"


# --- records -------------------------------------------------------------------------------------


def _photo_time() -> Any:
    """When a photo was taken, else when it was received: the date an inspector filters by."""
    return func.coalesce(InspectionPhoto.captured_at, InspectionPhoto.created_at)


def _like(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _matching(org_code: str, f: RecordFilter) -> Select[str, int]:
    """(record_no, id of its first matching photo) for the organisation's records that match."""
    first = func.min(InspectionPhoto.id).label("first_id")
    query = (
        select(InspectionPhoto.record_no, first)
        .join(Sample, Sample.id == InspectionPhoto.sample_id)
        .where(InspectionPhoto.org_code == org_code)
    )
    if f.record is not None:
        query = query.where(InspectionPhoto.record_no.like(_like(f.record), escape="\\"))
    if f.enterprise is not None:
        query = query.where(InspectionPhoto.enterprise_id == f.enterprise)
    if f.inspector is not None:
        query = query.where(InspectionPhoto.inspector_id == f.inspector)
    if f.sector is not None:
        query = query.where(Sample.sector == f.sector)
    if f.date_from is not None:
        query = query.where(_photo_time() >= f.date_from)
    if f.date_to is not None:
        query = query.where(_photo_time() <= f.date_to)
    if f.open is not None:
        other = InspectionPhoto.__table__.alias("other_photo")
        pending = exists(
            select(Finding.id)
            .join(other, other.c.id == Finding.photo_id)
            .where(
                other.c.org_code == org_code,
                other.c.record_no == InspectionPhoto.record_no,
                Finding.status == "suggested",
            )
        )
        query = query.where(pending if f.open else ~pending)
    return query.group_by(InspectionPhoto.record_no)


def list_records(
    session: Session,
    principal: Principal,
    filters: RecordFilter | None = None,
    limit: int = DEFAULT_LIMIT,
    cursor: str | None = None,
) -> tuple[list[dict[str, Any]], str | None]:
    """The organisation's records that match, newest first (by first photo), one page at a time."""
    principal.require("inspections:read")
    if not 1 <= limit <= MAX_LIMIT:
        raise Invalid(f"limit must be between 1 and {MAX_LIMIT}", code="invalid_limit")
    query = _matching(principal.org_code, filters or RecordFilter())
    if cursor:
        query = query.having(func.min(InspectionPhoto.id) < decode_cursor(cursor))
    rows = session.execute(query.order_by(func.min(InspectionPhoto.id).desc()).limit(limit + 1)).all()
    page = rows[:limit]
    summaries = _summaries(session, principal.org_code, [r.record_no for r in page])
    items = [summaries[r.record_no] for r in page]
    return items, encode_cursor(int(page[-1].first_id)) if len(rows) > limit else None


def _distinct(values: Iterable[str | None]) -> list[str]:
    out: list[str] = []
    for v in values:
        if v and v not in out:
            out.append(v)
    return out


def _summaries(session: Session, org_code: str, record_nos: list[str]) -> dict[str, dict[str, Any]]:
    """Every photo and finding count of these records (all photos, not only the matching ones)."""
    if not record_nos:
        return {}
    photos = session.execute(
        select(InspectionPhoto, Sample.sector)
        .join(Sample, Sample.id == InspectionPhoto.sample_id)
        .where(InspectionPhoto.org_code == org_code, InspectionPhoto.record_no.in_(record_nos))
        .order_by(InspectionPhoto.id)
    ).all()
    counts: dict[tuple[str, str], int] = {}
    for record_no, status, n in session.execute(
        select(InspectionPhoto.record_no, Finding.status, func.count(Finding.id))
        .join(InspectionPhoto, InspectionPhoto.id == Finding.photo_id)
        .where(InspectionPhoto.org_code == org_code, InspectionPhoto.record_no.in_(record_nos))
        .group_by(InspectionPhoto.record_no, Finding.status)
    ):
        counts[(record_no, status)] = int(n)
    by_record: dict[str, list[tuple[InspectionPhoto, str]]] = {}
    for photo, sector in photos:
        by_record.setdefault(photo.record_no, []).append((photo, sector))
    out: dict[str, dict[str, Any]] = {}
    for record_no, rows in by_record.items():
        times = sorted(iso(p.captured_at or p.created_at) or "" for p, _ in rows)
        first = rows[0][0]
        out[record_no] = {
            "record_no": record_no,
            "photos": len(rows),
            "enterprise_ids": _distinct(p.enterprise_id for p, _ in rows),
            "inspector_ids": _distinct(p.inspector_id for p, _ in rows),
            "sectors": _distinct(s for _, s in rows),
            "first_at": times[0] or None,
            "last_at": times[-1] or None,
            "created_at": iso(first.created_at),
            "cover_sample_id": first.sample_id,
            "findings": {s: counts.get((record_no, s), 0) for s in ("suggested", "confirmed", "rejected")},
        }
    return out


# --- capture settings ----------------------------------------------------------------------------


def detect_side(session: Session) -> int:
    """The input size of the production model (the side a photo is read at), else the default."""
    side = session.scalar(
        select(ModelVersion.imgsz)
        .where(and_(ModelVersion.name == MODEL_NAME, ModelVersion.stage == "production"))
        .order_by(ModelVersion.id.desc())
        .limit(1)
    )
    return int(side) if side else DEFAULT_DETECT_SIDE


def capture_settings(session: Session, principal: Principal) -> dict[str, Any]:
    """The caller's organisation's capture settings, with what the console should downscale to."""
    org = ensure_org(session, principal.org_code)
    stored = dict(org.settings or {})
    keep = bool(stored.get("keep_original_photos", False))
    own = stored.get("photo_max_side")
    own = int(own) if isinstance(own, int) and not isinstance(own, bool) else None
    side = detect_side(session)
    return CaptureSettings(
        org_code=org.code,
        keep_original_photos=keep,
        photo_max_side=own,
        detect_side=side,
        # Never below MIN_SIDE, whatever a (test-sized) model reads: the photo is also the library's.
        upload_max_side=None if keep else (own or max(side, MIN_SIDE)),
    ).model_dump()


def set_capture_settings(session: Session, principal: Principal, change: CaptureSettingsUpdate) -> dict[str, Any]:
    """An administrator changes their own organisation's settings (audited, same transaction)."""
    principal.require("organisation:settings")
    org = ensure_org(session, principal.org_code)
    before = dict(org.settings or {})
    after = dict(before)
    if change.keep_original_photos is not None:
        after["keep_original_photos"] = change.keep_original_photos
    if "photo_max_side" in change.model_fields_set:  # null: back to the model's side
        if change.photo_max_side is None:
            after.pop("photo_max_side", None)
        else:
            after["photo_max_side"] = change.photo_max_side
    if after != before:
        org.settings = after
        audit(session, principal, "organisation.settings", "organisation", org.code, before=before, after=after)
        session.flush()
    return capture_settings(session, principal)


__all__ = [
    "DEFAULT_DETECT_SIDE",
    "DEFAULT_LIMIT",
    "MAX_LIMIT",
    "capture_settings",
    "detect_side",
    "list_records",
    "set_capture_settings",
]
