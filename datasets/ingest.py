"""Ingest of one photo into the sample library: metadata checks, decode, hash, store, catalogue row.

Identity is the SHA-256 of the bytes: the same photo uploaded twice, by the same organisation or
after another one shared it, is one sample (an own sample deleted earlier comes back).

Ingest is split in two so that bulk imports can overlap work: :func:`prepare` (decode, hash, write
the objects; no catalogue) and :func:`record` (one short catalogue transaction). The object writes
happen before the catalogue commit and are atomic, so a crash leaves at worst an unreferenced
content-addressed blob, never a row without its bytes.

Such a leftover is what the garbage collector (:mod:`hazardlens.datasets.blob_gc`) removes, and an
upload of exactly its bytes finds them stored and does not write them again. If the collector
removes them between that check and the new row's commit, the row would name missing bytes: so a
row recorded over bytes this upload did not write has them checked again once its transaction has
committed, and written back if they are gone (:func:`_recheck_reused`). The other order (the
collector removes them after that check) is the collector's to mend: it reads the catalogue again
after each removal and puts back bytes a row named meanwhile.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import event, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, SessionTransaction

from hazardlens.audit import record as audit
from hazardlens.audit import snapshot
from hazardlens.auth import Principal
from hazardlens.context import Context
from hazardlens.datasets.near_duplicates import link_near_duplicates, linked_ids
from hazardlens.dates import utc
from hazardlens.errors import Forbidden, Invalid, TooLarge
from hazardlens.images import ImageInfo, inspect_image
from hazardlens.orm import SCOPES, SOURCES, Sample, utcnow
from hazardlens.store import blob_key
from hazardlens.textnorm import record_number

log = logging.getLogger("hazardlens.library")

MAX_TAGS = 50
MAX_TAG_CHARS = 50

_TEXT_LIMITS = {"site_id": 100, "enterprise_id": 100, "camera_id": 100, "inspection_record": 200, "original_name": 500}


def thumbnail_key(sha256: str) -> str:
    return f"thumbnails/{sha256}.jpg"


# -- metadata ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IngestMeta:
    """What the uploader tells us about a photo (the bytes tell the rest)."""

    sector: str
    scope: str = "private"
    source: str = "import"
    site_id: str | None = None
    enterprise_id: str | None = None
    camera_id: str | None = None
    inspection_record: str | None = None
    tags: Sequence[str] = ()
    captured_at: datetime | None = None  # overrides the EXIF time when given
    original_name: str | None = None


def _clean_text(name: str, value: str | None) -> str | None:
    if value is None:
        return None
    value = str(value).strip()
    if not value:
        return None
    limit = _TEXT_LIMITS[name]
    if name == "original_name":
        return value[-limit:]  # keep the file name end of a long path
    if name == "inspection_record":  # one spelling, as for inspection records (hazardlens.textnorm)
        value = record_number(value, what="inspection_record", code="invalid_meta", drop=True)
        if not value:
            return None
    if len(value) > limit:
        raise Invalid(f"{name} is longer than {limit} characters", code="invalid_meta")
    return value


def normalise_tags(tags: Iterable[str] | str | None) -> list[str]:
    """Trimmed, unique, order kept; a comma-separated string is accepted (form fields, CLI)."""
    if tags is None:
        return []
    items = tags.split(",") if isinstance(tags, str) else [t for tag in tags for t in str(tag).split(",")]
    out: list[str] = []
    for raw in items:
        tag = raw.strip()
        if not tag or tag in out:
            continue
        if len(tag) > MAX_TAG_CHARS:
            raise Invalid(f"tag {tag[:20]!r}... is longer than {MAX_TAG_CHARS} characters", code="invalid_meta")
        out.append(tag)
    if len(out) > MAX_TAGS:
        raise Invalid(f"at most {MAX_TAGS} tags per sample", code="invalid_meta")
    return out


def validate_meta(ctx: Context, meta: IngestMeta) -> IngestMeta:
    sectors = ctx.base_taxonomy.sectors
    sector = (meta.sector or "").strip()
    if sector not in sectors:
        raise Invalid(f"unknown sector {meta.sector!r}; sectors are {', '.join(sectors)}", code="unknown_sector")
    if meta.scope not in SCOPES:
        raise Invalid(f"scope must be one of {', '.join(SCOPES)}, not {meta.scope!r}", code="invalid_scope")
    if meta.source not in SOURCES:
        raise Invalid(f"source must be one of {', '.join(SOURCES)}, not {meta.source!r}", code="invalid_source")
    texts: dict[str, Any] = {name: _clean_text(name, getattr(meta, name)) for name in _TEXT_LIMITS}
    return replace(
        meta, sector=sector, tags=tuple(normalise_tags(meta.tags)), captured_at=utc(meta.captured_at), **texts
    )


# -- ingest -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Prepared:
    """An upload that passed every check and whose objects are in the store; ready to record."""

    sha256: str
    size: int
    info: ImageInfo
    meta: IngestMeta
    #: The bytes, kept only when they were found stored and not written again (an old orphan's, say):
    #: a new row over them has them checked again after its commit (:func:`_recheck_reused`).
    reused: bytes | None = field(default=None, repr=False)


@dataclass
class IngestResult:
    sample: Sample
    deduplicated: bool
    near_duplicates: list[int] = field(default_factory=list)
    restored: bool = False  # an own sample deleted earlier and uploaded again


def prepare(ctx: Context, data: bytes, meta: IngestMeta, maybe_stored: Callable[[str], bool] | None = None) -> Prepared:
    """Everything that needs no catalogue: limits, metadata, decode-check, hashes, object writes.

    Safe to run in worker threads. Nothing is written unless every check passed. ``maybe_stored``
    (bulk ingest) says whether the catalogue may already hold these bytes; when it surely does not,
    the existence checks are skipped (a round trip each on S3): writing content-addressed bytes
    again is harmless, and a new photo costs two writes instead of four requests.
    """
    settings = ctx.settings
    if len(data) > settings.max_upload_bytes:
        raise TooLarge(
            f"file is {len(data):,} bytes; the limit is {settings.max_upload_bytes:,}", code="file_too_large"
        )
    meta = validate_meta(ctx, meta)
    info = inspect_image(data, settings.max_pixels, settings.thumbnail_size)
    sha = hashlib.sha256(data).hexdigest()
    store = ctx.store
    key, thumb = blob_key(sha), thumbnail_key(sha)
    reused: bytes | None = None
    if (maybe_stored is not None and not maybe_stored(sha)) or not store.exists(key):
        store.put(key, data, content_type=info.mime)
        # New bytes have no thumbnail either; skip asking. A concurrent upload of the same bytes
        # writes the same thumbnail, atomically.
        store.put(thumb, info.thumbnail_jpeg, content_type="image/jpeg")
    else:
        reused = data
        if not store.exists(thumb):
            store.put(thumb, info.thumbnail_jpeg, content_type="image/jpeg")
    return Prepared(sha256=sha, size=len(data), info=info, meta=meta, reused=reused)


#: session.info key: (store, sha256, bytes, mime, thumbnail) of rows recorded over reused bytes.
_RECHECK = "hazardlens.ingest.recheck"


def _after_commit_recheck(session: Session, ctx: Context, prepared: Prepared) -> None:
    """Have the bytes of a row just recorded over reused bytes checked again once it commits."""
    if prepared.reused is None:
        return
    session.info.setdefault(_RECHECK, []).append(
        (ctx.store, prepared.sha256, prepared.reused, prepared.info.mime, prepared.info.thumbnail_jpeg)
    )


@event.listens_for(Session, "after_commit")
def _recheck_reused(session: Session) -> None:
    """The committed rows' reused bytes (and thumbnails) are still stored, or written back now.

    Runs after the commit, so a collector that reads the catalogue from here on sees the row and keeps
    the bytes; one that removed them before is undone here. A failure is logged, never raised: the
    row is committed and the caller's work done; the collector's own put-back and a re-upload mend it."""
    pending = session.info.pop(_RECHECK, None)
    for store, sha, data, mime, thumbnail in pending or ():
        try:
            if not store.exists(blob_key(sha)):
                store.put(blob_key(sha), data, content_type=mime)
                log.warning("ingest: stored bytes %s were removed before their row committed; written back", sha)
            if not store.exists(thumbnail_key(sha)):
                store.put(thumbnail_key(sha), thumbnail, content_type="image/jpeg")
        except Exception:
            log.exception("ingest: could not check the bytes of %s again after the commit", sha)


@event.listens_for(Session, "after_transaction_end")
def _forget_reused(session: Session, transaction: SessionTransaction) -> None:
    """The outermost transaction ended: after a commit the list was taken above; after a rollback
    nothing was recorded, so nothing is checked (and no bytes are held any longer). A savepoint's
    end (one bad file of a bulk batch) leaves the rest of the batch's list alone."""
    if transaction.parent is None:
        session.info.pop(_RECHECK, None)


class KnownBytes:
    """The first 64 bits of every SHA-256 in the catalogue, sorted: answers "may these bytes be
    stored already?" with no false negatives (a prefix collision only costs an existence check),
    in 8 bytes per sample."""

    def __init__(self, ctx: Context) -> None:
        with ctx.db.session() as session:
            shas = session.scalars(select(Sample.sha256)).all()
        self.prefixes = np.sort(np.fromiter((int(h[:16], 16) for h in shas), np.uint64, len(shas)))

    def __call__(self, sha: str) -> bool:
        q = np.uint64(int(sha[:16], 16))
        i = int(np.searchsorted(self.prefixes, q))
        return i < len(self.prefixes) and self.prefixes[i] == q


def ingest(ctx: Context, session: Session, principal: Principal, data: bytes, meta: IngestMeta) -> IngestResult:
    """Add one photo to the library (or find it there). The caller's session commits."""
    return record(ctx, session, principal, prepare(ctx, data, meta))


def _same_bytes(
    session: Session, principal: Principal, sha: str, *, include_deleted_own: bool, own_only: bool = False
) -> Sample | None:
    """The sample with these bytes the caller already has: their own first, else (unless
    ``own_only``) a shared one."""
    # One indexed query: a photo exists at most once per organisation, so these are few rows.
    rows = session.scalars(select(Sample).where(Sample.sha256 == sha).order_by(Sample.id)).all()
    for row in rows:
        if row.org_code == principal.org_code and (row.deleted_at is None or include_deleted_own):
            return row
    if own_only:
        return None
    return next((r for r in rows if r.scope == "shared" and r.deleted_at is None), None)


def record(
    ctx: Context, session: Session, principal: Principal, prepared: Prepared, *, own_only: bool = False
) -> IngestResult:
    """The catalogue half of ingest: dedup by SHA-256, insert, link near-duplicates, audit.

    ``own_only``: deduplicate only against the caller's own organisation, so that the photo gets a
    sample of its own even when another organisation shares the same bytes (inspection photos: the
    record, enterprise and idempotency key they carry must never land on another organisation's
    sample and its history)."""
    meta, info = prepared.meta, prepared.info
    existing = _same_bytes(session, principal, prepared.sha256, include_deleted_own=True, own_only=own_only)
    if existing is not None:
        if existing.deleted_at is None:
            return IngestResult(existing, True, linked_ids(session, principal, existing.id))
        return _restore(session, principal, existing, prepared)

    sample = Sample(
        sha256=prepared.sha256,
        phash=info.phash,
        width=info.width,
        height=info.height,
        format=info.format,
        size_bytes=prepared.size,
        original_name=meta.original_name,
        org_code=principal.org_code,
        sector=meta.sector,
        scope=meta.scope,
        source=meta.source,
        site_id=meta.site_id,
        enterprise_id=meta.enterprise_id,
        camera_id=meta.camera_id,
        inspection_record=meta.inspection_record,
        uploader_id=principal.user_id,
        tags=list(meta.tags),
        captured_at=meta.captured_at or info.captured_at,
        gps_lat=info.gps_lat,
        gps_lon=info.gps_lon,
        created_at=utcnow(),
    )
    try:
        # A savepoint, so that losing the race on (sha256, org_code) undoes only this insert and
        # leaves the caller's transaction usable.
        with session.begin_nested():
            session.add(sample)
            session.flush()
    except IntegrityError:
        winner = _same_bytes(session, principal, prepared.sha256, include_deleted_own=False, own_only=own_only)
        if winner is None:
            raise
        return IngestResult(winner, True, linked_ids(session, principal, winner.id))

    _after_commit_recheck(session, ctx, prepared)
    near = link_near_duplicates(ctx, session, principal, sample)
    audit(session, principal, "sample.create", "sample", sample.id, sample_id=sample.id, after=snapshot(sample))
    return IngestResult(sample, False, near)


def _restore(session: Session, principal: Principal, sample: Sample, prepared: Prepared) -> IngestResult:
    """The organisation deleted these bytes before and uploads them again: bring the sample back
    with the new metadata (one row per bytes and organisation; its history stays attached).

    Only a role that may delete samples may bring one back (issue 13, item 8): an inspector's upload
    of a deleted photo restored it and flipped it to shared, undoing a curator's decision."""
    if not principal.can("samples:delete"):
        raise Forbidden(
            f"this photo was deleted from organisation {principal.org_code}'s library (sample {sample.id}); "
            "only a curator or an admin may bring it back",
            code="forbidden",
        )
    before = snapshot(sample)
    meta = prepared.meta
    sample.deleted_at = None
    sample.sector, sample.scope, sample.source = meta.sector, meta.scope, meta.source
    for name in ("site_id", "enterprise_id", "camera_id", "inspection_record", "original_name"):
        value = getattr(meta, name)
        if value is not None:
            setattr(sample, name, value)
    if meta.tags:
        sample.tags = list(meta.tags)
    if meta.captured_at is not None:
        sample.captured_at = meta.captured_at
    sample.updated_at = utcnow()
    session.flush()
    audit(
        session,
        principal,
        "sample.restore",
        "sample",
        sample.id,
        sample_id=sample.id,
        before=before,
        after=snapshot(sample),
    )
    return IngestResult(sample, False, linked_ids(session, principal, sample.id), restored=True)
