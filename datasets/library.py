"""The shared sample library (设备设施样本库): ingest, catalogue queries, search, near-duplicates.

Tenancy is decided here and only here (:func:`visible_samples`): a caller sees the samples of their
own organisation plus every sample another organisation chose to share (共建共享共用). Everything
that reads samples goes through that filter, so a sample the caller may not see is simply not
found (404), never "forbidden" (which would confirm that it exists).

Identity is the SHA-256 of the bytes: the same photo uploaded twice, by the same organisation or
after another one shared it, is one sample. Near-identical photos (re-encoded, resized, the next
frame of a fixed camera) are kept but linked and grouped (``dup_group``), because a dataset split
that puts two of them on both sides measures memory, not detection.

Ingest is split in two so that bulk imports can overlap work: :func:`prepare` (decode, hash, write
the objects; no catalogue) and :func:`record` (one short catalogue transaction). The object writes
happen before the catalogue commit and are atomic, so a crash leaves at worst an unreferenced
content-addressed blob, never a row without its bytes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
import re
import threading
import time
import weakref
import zipfile
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import IO, Any

import numpy as np
from sqlalchemy import Select, and_, cast, exists, func, insert, literal, or_, select
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, object_session
from sqlalchemy.sql.elements import ColumnElement

from hazardlens.audit import record as audit
from hazardlens.audit import snapshot
from hazardlens.auth import Principal
from hazardlens.context import Context
from hazardlens.contracts.filters import SampleFilter
from hazardlens.contracts.samples import SamplePublic
from hazardlens.dates import iso, utc
from hazardlens.dates import parse_when as parse_when  # re-exported: callers parse dates through the library
from hazardlens.errors import Forbidden, HazardError, Invalid, NotFound, TooLarge
from hazardlens.images import MIME_TYPES, ImageInfo, hamming, inspect_image
from hazardlens.orm import SCOPES, SOURCES, NearDuplicate, Sample, SampleClass, User, utcnow
from hazardlens.store import blob_key

log = logging.getLogger("hazardlens.library")

MAX_LIMIT = 1000
DEFAULT_LIMIT = 50
# A fixed camera can produce thousands of frames within the distance of each other; linking each
# new frame to all of them would grow the link table quadratically. The closest ones are linked;
# the group (dup_group) still takes in the whole cluster.
MAX_NEAR_DUPLICATE_LINKS = 50
MAX_TAGS = 50
MAX_TAG_CHARS = 50
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".heic", ".heif"})
ARCHIVE_SUFFIXES = frozenset({".zip"})

_TEXT_LIMITS = {"site_id": 100, "enterprise_id": 100, "camera_id": 100, "inspection_record": 200,
                "original_name": 500}


def thumbnail_key(sha256: str) -> str:
    return f"thumbnails/{sha256}.jpg"


# -- tenancy ----------------------------------------------------------------------------------------


def visibility(principal: Principal, include_deleted: bool = False) -> ColumnElement[bool]:
    """THE tenancy rule as a WHERE clause: not deleted, and own organisation or shared.

    ``include_deleted`` is for the record (history of a deleted sample): it shows the caller's own
    deleted samples, never another organisation's, even one that was shared before deletion.
    """
    live = Sample.deleted_at.is_(None)
    if include_deleted:
        return or_(Sample.org_code == principal.org_code, and_(live, Sample.scope == "shared"))
    return and_(live, or_(Sample.org_code == principal.org_code, Sample.scope == "shared"))


def visible_samples(principal: Principal, include_deleted: bool = False) -> Select[tuple[Sample]]:
    """Samples ``principal`` may see; every read of samples starts from this query."""
    return select(Sample).where(visibility(principal, include_deleted))


def get_sample(session: Session, principal: Principal, sample_id: int, include_deleted: bool = False) -> Sample:
    if not 0 < sample_id < 2**63:  # no such id can exist; the database driver would overflow on it
        raise NotFound(f"no sample {sample_id}")
    sample = session.scalar(visible_samples(principal, include_deleted).where(Sample.id == sample_id))
    if sample is None:
        raise NotFound(f"no sample {sample_id}")
    return sample


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


_utc = utc


def validate_meta(ctx: Context, meta: IngestMeta) -> IngestMeta:
    sectors = ctx.base_taxonomy.sectors
    sector = (meta.sector or "").strip()
    if sector not in sectors:
        raise Invalid(f"unknown sector {meta.sector!r}; sectors are {', '.join(sectors)}", code="unknown_sector")
    if meta.scope not in SCOPES:
        raise Invalid(f"scope must be one of {', '.join(SCOPES)}, not {meta.scope!r}", code="invalid_scope")
    if meta.source not in SOURCES:
        raise Invalid(f"source must be one of {', '.join(SOURCES)}, not {meta.source!r}", code="invalid_source")
    return replace(
        meta, sector=sector, tags=tuple(normalise_tags(meta.tags)), captured_at=_utc(meta.captured_at),
        **{name: _clean_text(name, getattr(meta, name)) for name in _TEXT_LIMITS},
    )


# -- ingest -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Prepared:
    """An upload that passed every check and whose objects are in the store; ready to record."""

    sha256: str
    size: int
    info: ImageInfo
    meta: IngestMeta


@dataclass
class IngestResult:
    sample: Sample
    deduplicated: bool
    near_duplicates: list[int] = field(default_factory=list)
    restored: bool = False  # an own sample deleted earlier and uploaded again


def prepare(ctx: Context, data: bytes, meta: IngestMeta,
            maybe_stored: Callable[[str], bool] | None = None) -> Prepared:
    """Everything that needs no catalogue: limits, metadata, decode-check, hashes, object writes.

    Safe to run in worker threads. Nothing is written unless every check passed. ``maybe_stored``
    (bulk ingest) says whether the catalogue may already hold these bytes; when it surely does not,
    the existence checks are skipped (a round trip each on S3): writing content-addressed bytes
    again is harmless, and a new photo costs two writes instead of four requests.
    """
    settings = ctx.settings
    if len(data) > settings.max_upload_bytes:
        raise TooLarge(f"file is {len(data):,} bytes; the limit is {settings.max_upload_bytes:,}",
                       code="file_too_large")
    meta = validate_meta(ctx, meta)
    info = inspect_image(data, settings.max_pixels, settings.thumbnail_size)
    sha = hashlib.sha256(data).hexdigest()
    store = ctx.store
    key, thumb = blob_key(sha), thumbnail_key(sha)
    if (maybe_stored is not None and not maybe_stored(sha)) or not store.exists(key):
        store.put(key, data, content_type=info.mime)
        # New bytes have no thumbnail either; skip asking. A concurrent upload of the same bytes
        # writes the same thumbnail, atomically.
        store.put(thumb, info.thumbnail_jpeg, content_type="image/jpeg")
    elif not store.exists(thumb):
        store.put(thumb, info.thumbnail_jpeg, content_type="image/jpeg")
    return Prepared(sha256=sha, size=len(data), info=info, meta=meta)


class _KnownBytes:
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


def _same_bytes(session: Session, principal: Principal, sha: str, *, include_deleted_own: bool) -> Sample | None:
    """The sample with these bytes the caller already has: their own first, else a shared one."""
    # One indexed query: a photo exists at most once per organisation, so these are few rows.
    rows = session.scalars(select(Sample).where(Sample.sha256 == sha).order_by(Sample.id)).all()
    for row in rows:
        if row.org_code == principal.org_code and (row.deleted_at is None or include_deleted_own):
            return row
    return next((r for r in rows if r.scope == "shared" and r.deleted_at is None), None)


def record(ctx: Context, session: Session, principal: Principal, prepared: Prepared) -> IngestResult:
    """The catalogue half of ingest: dedup by SHA-256, insert, link near-duplicates, audit."""
    meta, info = prepared.meta, prepared.info
    existing = _same_bytes(session, principal, prepared.sha256, include_deleted_own=True)
    if existing is not None:
        if existing.deleted_at is None:
            return IngestResult(existing, True, _linked_ids(session, principal, existing.id))
        return _restore(session, principal, existing, prepared)

    sample = Sample(
        sha256=prepared.sha256, phash=info.phash, width=info.width, height=info.height, format=info.format,
        size_bytes=prepared.size, original_name=meta.original_name, org_code=principal.org_code,
        sector=meta.sector, scope=meta.scope, source=meta.source, site_id=meta.site_id,
        enterprise_id=meta.enterprise_id, camera_id=meta.camera_id, inspection_record=meta.inspection_record,
        uploader_id=principal.user_id, tags=list(meta.tags), captured_at=meta.captured_at or info.captured_at,
        gps_lat=info.gps_lat, gps_lon=info.gps_lon, created_at=utcnow(),
    )
    try:
        # A savepoint, so that losing the race on (sha256, org_code) undoes only this insert and
        # leaves the caller's transaction usable.
        with session.begin_nested():
            session.add(sample)
            session.flush()
    except IntegrityError:
        winner = _same_bytes(session, principal, prepared.sha256, include_deleted_own=False)
        if winner is None:
            raise
        return IngestResult(winner, True, _linked_ids(session, principal, winner.id))

    near = _link_near_duplicates(ctx, session, principal, sample)
    audit(session, principal, "sample.create", "sample", sample.id, sample_id=sample.id, after=snapshot(sample))
    return IngestResult(sample, False, near)


def _restore(session: Session, principal: Principal, sample: Sample, prepared: Prepared) -> IngestResult:
    """The organisation deleted these bytes before and uploads them again: bring the sample back
    with the new metadata (one row per bytes and organisation; its history stays attached)."""
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
    audit(session, principal, "sample.restore", "sample", sample.id, sample_id=sample.id, before=before,
          after=snapshot(sample))
    return IngestResult(sample, False, _linked_ids(session, principal, sample.id), restored=True)


# -- near-duplicates ------------------------------------------------------------------------------------


class _PhashIndex:
    """(id, phash, org, shared) of every live sample of one catalogue, as numpy arrays, so that a
    Hamming search over 10^5 samples is one vectorised XOR + popcount (~1 ms) instead of a table scan.

    The catalogue stays the authority: the index only proposes candidates, which are re-read through
    :func:`visible_samples` (a sample deleted or made private since is dropped there). New rows are
    picked up incrementally on every search, re-reading a window of recent ids because ids are
    handed out before concurrent transactions commit; a full reload every few minutes covers
    anything else (another process changing scope, ids committed very late).
    """

    OVERLAP_IDS = 64
    FULL_RELOAD_S = 300.0

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        self.ids = np.zeros(0, np.int64)
        self.hashes = np.zeros(0, np.uint64)
        self.orgs = np.zeros(0, np.int32)
        self.shared = np.zeros(0, bool)
        self.n = 0
        self.pos: dict[int, int] = {}
        self.org_index: dict[str, int] = {}
        self.max_id = 0
        self.loaded_at = -1e18

    def _org(self, code: str) -> int:
        return self.org_index.setdefault(code, len(self.org_index))

    def _grow(self, need: int) -> None:
        cap = len(self.ids)
        if need <= cap:
            return
        new = max(need, cap * 2, 1024)
        for name in ("ids", "hashes", "orgs", "shared"):
            old = getattr(self, name)
            arr = np.zeros(new, old.dtype)
            arr[: self.n] = old[: self.n]
            setattr(self, name, arr)

    def _upsert(self, rows: Sequence[Any]) -> None:
        self._grow(self.n + len(rows))
        for sid, phash, org, scope in rows:
            i = self.pos.get(sid)
            if i is None:
                i = self.n
                self.n += 1
                self.pos[sid] = i
            self.ids[i] = sid
            self.hashes[i] = np.int64(phash).view(np.uint64)
            self.orgs[i] = self._org(org)
            self.shared[i] = scope == "shared"
            self.max_id = max(self.max_id, sid)

    def refresh(self, session: Session) -> None:
        cols = select(Sample.id, Sample.phash, Sample.org_code, Sample.scope).where(Sample.deleted_at.is_(None))
        now = time.monotonic()
        if now - self.loaded_at > self.FULL_RELOAD_S:
            rows = session.execute(cols.order_by(Sample.id)).all()
            self._reset()
            self.loaded_at = now
        else:
            rows = session.execute(cols.where(Sample.id > self.max_id - self.OVERLAP_IDS)).all()
        self._upsert(rows)

    def candidates(self, phash: int, org_code: str, max_distance: int, exclude: int) -> list[int]:
        n = self.n
        if n == 0:
            return []
        q = np.int64(phash).view(np.uint64)
        dist = np.bitwise_count(self.hashes[:n] ^ q)
        mask = dist <= max_distance
        org = self.org_index.get(org_code, -1)
        mask &= (self.orgs[:n] == org) | self.shared[:n]
        mask &= self.ids[:n] != exclude
        hit = np.flatnonzero(mask)
        if len(hit) > 4 * MAX_NEAR_DUPLICATE_LINKS:  # keep the closest; the re-check query stays small
            hit = hit[np.argsort(dist[hit], kind="stable")[: 4 * MAX_NEAR_DUPLICATE_LINKS]]
        return [int(v) for v in self.ids[hit]]


_INDEXES: weakref.WeakKeyDictionary[Any, _PhashIndex] = weakref.WeakKeyDictionary()
_INDEXES_LOCK = threading.Lock()


def _index_for(session: Session) -> _PhashIndex:
    engine = session.get_bind()
    engine = getattr(engine, "engine", engine)  # a Connection bound session -> its Engine
    with _INDEXES_LOCK:
        index = _INDEXES.get(engine)
        if index is None:
            index = _INDEXES[engine] = _PhashIndex()
        return index


def _near_rows(ctx: Context, session: Session, principal: Principal, phash: int,
               exclude_id: int) -> list[tuple[int, int, int | None]]:
    """(id, distance, dup_group) of visible samples within the distance, closest first, at most
    MAX_NEAR_DUPLICATE_LINKS. The index proposes; the catalogue decides (one query)."""
    max_distance = ctx.settings.near_duplicate_distance
    index = _index_for(session)
    with index.lock:
        index.refresh(session)
        ids = index.candidates(phash, principal.org_code, max_distance, exclude_id)
    if not ids:
        return []
    rows = session.execute(select(Sample.id, Sample.phash, Sample.dup_group)
                           .where(visibility(principal), Sample.id.in_(ids))).all()
    found = sorted((d, sid, group) for sid, ph, group in rows if (d := hamming(ph, phash)) <= max_distance)
    return [(sid, d, group) for d, sid, group in found[:MAX_NEAR_DUPLICATE_LINKS]]


def find_near_duplicates(ctx: Context, session: Session, principal: Principal, phash: int,
                         exclude_id: int = 0) -> list[tuple[int, int]]:
    """(sample id, distance) of visible samples within ``near_duplicate_distance``, closest first."""
    return [(sid, d) for sid, d, _ in _near_rows(ctx, session, principal, phash, exclude_id)]


def _link_near_duplicates(ctx: Context, session: Session, principal: Principal, sample: Sample) -> list[int]:
    """Link ``sample`` both ways to its near-duplicates and merge their groups into one whose id is
    the smallest sample id in it (stable as the group grows, since new samples get larger ids)."""
    near = _near_rows(ctx, session, principal, sample.phash, exclude_id=sample.id)
    if not near:
        return []
    # Core executemany: up to 2 x 50 link rows per image, without the ORM's per-object bookkeeping.
    session.execute(insert(NearDuplicate), [
        row for other, distance, _ in near for row in (
            {"sample_id": sample.id, "other_id": other, "distance": distance},
            {"sample_id": other, "other_id": sample.id, "distance": distance})])
    ids = [sid for sid, _, _ in near]
    groups = {g for _, _, g in near if g is not None}
    group = min([sample.id, *ids, *groups])
    # Usually the neighbours are already in one group named by its smallest id: nothing to merge.
    if any(g != group for _, _, g in near):
        members = or_(Sample.id.in_(ids), Sample.dup_group.in_(groups)) if groups else Sample.id.in_(ids)
        changed = session.scalars(select(Sample).where(
            members, or_(Sample.dup_group.is_(None), Sample.dup_group != group)).order_by(Sample.id)).all()
        for other_sample in changed:
            audit(session, principal, "sample.dup_group", "sample", other_sample.id, sample_id=other_sample.id,
                  before={"dup_group": other_sample.dup_group}, after={"dup_group": group})
            other_sample.dup_group = group
    sample.dup_group = group
    return ids


def _linked_ids(session: Session, principal: Principal, sample_id: int) -> list[int]:
    return [sid for sid, _ in near_duplicates(session, principal, sample_id, check=False)]


def near_duplicates(session: Session, principal: Principal, sample_id: int,
                    check: bool = True) -> list[tuple[int, int]]:
    """(other id, distance) of the visible samples linked to ``sample_id``, closest first."""
    if check:
        get_sample(session, principal, sample_id)
    rows = session.execute(
        select(NearDuplicate.other_id, NearDuplicate.distance)
        .join(Sample, Sample.id == NearDuplicate.other_id)
        .where(NearDuplicate.sample_id == sample_id, visibility(principal))
        .order_by(NearDuplicate.distance, NearDuplicate.other_id)
    ).all()
    return [(int(a), int(b)) for a, b in rows]


# -- search -------------------------------------------------------------------------------------------


# The one sample filter lives in the contract layer (hazardlens.contracts.filters); re-exported here
# because every search goes through this module. Dates are parsed by hazardlens.dates.parse_when.


def _has_tag(session: Session, tag: str) -> ColumnElement[bool]:
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return cast(Sample.tags, JSONB).contains([tag])
    if dialect == "sqlite":
        each = func.json_each(Sample.tags).table_valued("value")
        return exists(select(literal(1)).select_from(each).where(each.c.value == tag))
    raise NotImplementedError(f"tag filter on {dialect}")  # pragma: no cover


def apply_filters(session: Session, query: Select[Any], f: SampleFilter) -> Select[Any]:
    eq = {Sample.sector: f.sector, Sample.annotation_status: f.status, Sample.org_code: f.org,
          Sample.scope: f.scope, Sample.site_id: f.site, Sample.camera_id: f.camera,
          Sample.enterprise_id: f.enterprise, Sample.source: f.source,
          Sample.inspection_record: f.inspection_record, Sample.dup_group: f.dup_group}
    for col, value in eq.items():
        if value is not None:
            query = query.where(col == value)
    if f.class_key is not None:
        query = query.where(Sample.id.in_(select(SampleClass.sample_id).where(SampleClass.class_key == f.class_key)))
    bounds = ((Sample.captured_at, f.captured_from, f.captured_to), (Sample.created_at, f.created_from, f.created_to))
    for col, lo, hi in bounds:
        if lo is not None:
            query = query.where(col >= _utc(lo))
        if hi is not None:
            query = query.where(col <= _utc(hi))
    if f.tag is not None:
        query = query.where(_has_tag(session, f.tag))
    return query


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


def search(session: Session, principal: Principal, filters: SampleFilter | None = None,
           limit: int = DEFAULT_LIMIT, cursor: str | None = None) -> tuple[list[Sample], str | None]:
    """Visible samples, newest first, one page at a time. Keyset pagination over id (``id < last``)
    so that pages neither repeat nor skip rows while samples are being added, and page 1000 costs
    the same as page 1."""
    if not 1 <= limit <= MAX_LIMIT:
        raise Invalid(f"limit must be between 1 and {MAX_LIMIT}", code="invalid_limit")
    query = apply_filters(session, visible_samples(principal), filters or SampleFilter())
    if cursor:
        query = query.where(Sample.id < decode_cursor(cursor))
    rows = list(session.scalars(query.order_by(Sample.id.desc()).limit(limit + 1)))
    if len(rows) > limit:
        return rows[:limit], encode_cursor(rows[limit - 1].id)
    return rows, None


# -- delete -------------------------------------------------------------------------------------------


def soft_delete(session: Session, principal: Principal, sample_id: int) -> Sample:
    """Hide a sample from every read; the row, its bytes and its history stay (存档留痕). Only the
    owning organisation may delete: a shared sample is visible to others, not theirs."""
    principal.require("samples:delete")
    sample = get_sample(session, principal, sample_id)
    if sample.org_code != principal.org_code:
        raise Forbidden(f"sample {sample_id} belongs to organisation {sample.org_code}; only it may delete it",
                        code="not_owner")
    before = snapshot(sample)
    sample.deleted_at = utcnow()
    sample.updated_at = sample.deleted_at
    session.flush()
    audit(session, principal, "sample.delete", "sample", sample.id, sample_id=sample.id, before=before,
          after=snapshot(sample))
    return sample


# -- JSON shape -----------------------------------------------------------------------------------------


_iso = iso


def sample_dict(sample: Sample) -> dict[str, Any]:
    """The sample as the API and the console show it (:class:`SamplePublic`, as plain values)."""
    return sample_public(sample).model_dump()


def sample_public(sample: Sample) -> SamplePublic:
    """The sample as the API and the console show it."""
    uploader = None
    if sample.uploader_id is not None:
        session = object_session(sample)
        user = session.get(User, sample.uploader_id) if session is not None else None
        uploader = user.name if user is not None else None
    gps = None
    if sample.gps_lat is not None and sample.gps_lon is not None:
        gps = {"lat": sample.gps_lat, "lon": sample.gps_lon}
    return SamplePublic.model_validate({
        "id": sample.id, "sha256": sample.sha256, "width": sample.width, "height": sample.height,
        "format": sample.format, "content_type": MIME_TYPES.get(sample.format, "application/octet-stream"),
        "size_bytes": sample.size_bytes, "original_name": sample.original_name, "org_code": sample.org_code,
        "sector": sample.sector, "scope": sample.scope, "source": sample.source, "site_id": sample.site_id,
        "enterprise_id": sample.enterprise_id, "camera_id": sample.camera_id,
        "inspection_record": sample.inspection_record, "tags": list(sample.tags or []),
        "captured_at": _iso(sample.captured_at), "gps": gps, "dup_group": sample.dup_group,
        "annotation_status": sample.annotation_status, "class_keys": list(sample.class_keys or []),
        "created_at": _iso(sample.created_at), "uploader": uploader, "uploader_id": sample.uploader_id,
        "deleted_at": _iso(sample.deleted_at),
    })


def result_dict(result: IngestResult) -> dict[str, Any]:
    return {**sample_dict(result.sample), "deduplicated": result.deduplicated,
            "near_duplicates": list(result.near_duplicates)}


# -- bulk ingest: files, folders, zip archives ------------------------------------------------------------


@dataclass(frozen=True)
class Refusal:
    name: str
    code: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "code": self.code, "message": self.message}


@dataclass
class IngestSummary:
    stored: int = 0
    deduplicated: int = 0
    near_duplicates: int = 0  # stored samples that were linked to near-duplicates
    refused: list[Refusal] = field(default_factory=list)
    skipped: list[Refusal] = field(default_factory=list)  # not images (notes, macOS metadata...)
    sample_ids: list[int] = field(default_factory=list)  # stored or found, in input order

    @property
    def total(self) -> int:
        return self.stored + self.deduplicated + len(self.refused)

    def to_dict(self) -> dict[str, Any]:
        return {"stored": self.stored, "deduplicated": self.deduplicated, "near_duplicates": self.near_duplicates,
                "refused": [r.to_dict() for r in self.refused], "skipped": [r.to_dict() for r in self.skipped],
                "sample_ids": list(self.sample_ids)}


#: progress(done, total, name, outcome) with outcome stored | deduplicated | refused | skipped.
Progress = Callable[[int, int, str, str], None]


@dataclass(frozen=True)
class _Source:
    name: str  # shown to the user: path, or archive!entry
    original_name: str  # kept on the sample
    read: Callable[[], bytes] | None = None
    refusal: Refusal | None = None
    skip: bool = False  # refusal is a skip (not an image at all), not a failure


def _is_hidden(name: str) -> bool:
    return name.startswith(".") or name == "__MACOSX" or name.lower() in {"thumbs.db", "desktop.ini"}


def _read_file(path: Path, limit: int) -> Callable[[], bytes]:
    def read() -> bytes:
        with path.open("rb") as fh:
            data = fh.read(limit + 1)
        if len(data) > limit:
            raise TooLarge(f"file is larger than the limit of {limit:,} bytes", code="file_too_large")
        return data

    return read


def unsafe_entry(name: str) -> str | None:
    """Why a zip entry name could write outside the folder it is extracted to (zip slip), else None.
    Entries are never extracted here, but the name is kept as the sample's original name, and
    exports write files by it."""
    norm = name.replace("\\", "/")
    if norm.startswith("/") or re.match(r"^[A-Za-z]:", norm):
        return "absolute path"
    if any(part == ".." for part in norm.split("/")):
        return "'..' in the path"
    if "\x00" in norm:
        return "NUL in the name"
    return None


def _zip_sources(zf: zipfile.ZipFile, label: str, limit: int, lock: threading.Lock) -> Iterator[_Source]:
    for info in zf.infolist():
        entry = info.filename
        if info.is_dir():
            continue
        shown = f"{label}!{entry}"
        why = unsafe_entry(entry)
        if why:
            yield _Source(shown, entry, refusal=Refusal(shown, "unsafe_path",
                                                        f"archive entry escapes the archive folder ({why})"))
            continue
        parts = PurePosixPath(entry.replace("\\", "/")).parts
        if any(_is_hidden(p) for p in parts):
            yield _Source(shown, entry, skip=True,
                          refusal=Refusal(shown, "skipped", "hidden or system metadata entry (e.g. __MACOSX)"))
            continue
        suffix = PurePosixPath(parts[-1]).suffix.lower()
        if suffix not in IMAGE_SUFFIXES:
            what = "nested archives are not opened" if suffix in ARCHIVE_SUFFIXES else "not an image file"
            yield _Source(shown, entry, skip=True, refusal=Refusal(shown, "skipped", what))
            continue
        if info.flag_bits & 0x1:
            yield _Source(shown, entry, refusal=Refusal(shown, "encrypted", "encrypted archive entries are not read"))
            continue
        if info.file_size > limit:
            yield _Source(shown, entry, refusal=Refusal(shown, "file_too_large",
                                                        f"entry is {info.file_size:,} bytes; the limit is {limit:,}"))
            continue

        def read(info: zipfile.ZipInfo = info) -> bytes:
            # Read in memory, bounded: the size in the header may lie (a zip bomb).
            with lock, zf.open(info) as fh:
                data = fh.read(limit + 1)
            if len(data) > limit:
                raise TooLarge(f"entry is larger than the limit of {limit:,} bytes", code="file_too_large")
            return data

        yield _Source(shown, "/".join(parts), read=read)


def _path_sources(paths: Iterable[Path | str], limit: int, stack: ExitStack) -> Iterator[_Source]:
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not _is_hidden(d))
                for fname in sorted(files):
                    file = Path(root) / fname
                    rel = file.relative_to(path).as_posix()
                    if _is_hidden(fname):
                        yield _Source(str(file), rel, skip=True,
                                      refusal=Refusal(str(file), "skipped", "hidden or system file"))
                    elif file.suffix.lower() in ARCHIVE_SUFFIXES:
                        yield from _archive_sources(file, limit, stack)
                    elif file.suffix.lower() not in IMAGE_SUFFIXES:
                        yield _Source(str(file), rel, skip=True,
                                      refusal=Refusal(str(file), "skipped", "not an image file"))
                    else:
                        yield _Source(str(file), rel, read=_read_file(file, limit))
        elif path.is_file():
            if path.suffix.lower() in ARCHIVE_SUFFIXES:
                yield from _archive_sources(path, limit, stack)
            else:  # named explicitly: the decoder decides, whatever the extension says
                yield _Source(str(path), path.name, read=_read_file(path, limit))
        else:
            yield _Source(str(path), path.name, refusal=Refusal(str(path), "not_found", "no such file or folder"))


def _archive_sources(path: Path, limit: int, stack: ExitStack) -> Iterator[_Source]:
    try:
        zf = stack.enter_context(zipfile.ZipFile(path))
    except (zipfile.BadZipFile, OSError) as exc:
        yield _Source(str(path), path.name, refusal=Refusal(str(path), "bad_archive", f"not a readable zip ({exc})"))
        return
    yield from _zip_sources(zf, str(path), limit, threading.Lock())


BATCH_MAX = 64  # images recorded per catalogue transaction in bulk ingest


def _ingest_sources(ctx: Context, principal: Principal, sources: Sequence[_Source], meta: IngestMeta,
                    progress: Progress | None, workers: int | None) -> IngestSummary:
    """Decode and store in worker threads (PIL and the store release the GIL) while this thread
    writes the catalogue.

    Images that are ready together are recorded in one transaction, each inside its own savepoint:
    one bad file is rolled back alone and never undoes or stops the rest, while the catalogue pays
    for one commit per batch instead of one per image (the commit, not the insert, is what costs).
    A batch only takes images whose decode already finished, so a slow folder still shows progress
    image by image.
    """
    summary = IngestSummary()
    total = len(sources)
    # Threads beyond the cores still help: much of the work is waiting on disk or network writes.
    workers = workers or min(8, 2 * (os.cpu_count() or 1))
    done = 0

    def note(name: str, outcome: str) -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total, name, outcome)

    known = _KnownBytes(ctx)

    def work(src: _Source) -> Prepared:
        assert src.read is not None
        return prepare(ctx, src.read(), replace(meta, original_name=src.original_name), maybe_stored=known)

    def refusal(src: _Source, exc: BaseException) -> Refusal:
        if isinstance(exc, HazardError):
            return Refusal(src.name, exc.code, exc.message)
        log.warning("ingest of %s failed", src.name, exc_info=exc)
        return Refusal(src.name, "error", f"{type(exc).__name__}: {exc}")

    def refuse(src: _Source, exc: BaseException) -> None:
        summary.refused.append(refusal(src, exc))
        note(src.name, "refused")

    def record_batch(batch: list[tuple[_Source, Prepared]]) -> None:
        outcomes: list[tuple[_Source, IngestResult | Refusal]] = []
        try:
            with ctx.db.session() as session:
                for src, prepared in batch:
                    try:
                        with session.begin_nested():
                            outcomes.append((src, record(ctx, session, principal, prepared)))
                    except Exception as exc:
                        outcomes.append((src, refusal(src, exc)))
        except Exception as exc:  # the commit itself failed: nothing of this batch was recorded
            for src, _ in batch:
                refuse(src, exc)
            return
        for src, outcome in outcomes:
            if isinstance(outcome, Refusal):
                summary.refused.append(outcome)
                note(src.name, "refused")
                continue
            summary.sample_ids.append(outcome.sample.id)
            if outcome.deduplicated:
                summary.deduplicated += 1
                note(src.name, "deduplicated")
            else:
                summary.stored += 1
                if outcome.near_duplicates:
                    summary.near_duplicates += 1
                note(src.name, "stored")

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ingest") as pool:
        window = workers * 3  # bounded read-ahead: memory stays a few images whatever the folder size
        pending: deque[tuple[_Source, Future[Prepared] | None]] = deque()
        it = iter(sources)

        def fill() -> None:
            while len(pending) < window:
                src = next(it, None)
                if src is None:
                    return
                pending.append((src, pool.submit(work, src) if src.read is not None else None))

        fill()
        while pending:
            batch: list[tuple[_Source, Prepared]] = []
            # Take the head (waiting for it if needed), then whatever right behind it is done too.
            while pending and len(batch) < BATCH_MAX and (not batch or pending[0][1] is None
                                                          or pending[0][1].done()):
                src, fut = pending.popleft()
                fill()
                if fut is None:
                    assert src.refusal is not None
                    (summary.skipped if src.skip else summary.refused).append(src.refusal)
                    note(src.name, "skipped" if src.skip else "refused")
                    continue
                try:
                    batch.append((src, fut.result()))
                except Exception as exc:
                    refuse(src, exc)
            if batch:
                record_batch(batch)
    return summary


def ingest_paths(ctx: Context, principal: Principal, paths: Iterable[Path | str], meta: IngestMeta,
                 progress: Progress | None = None, workers: int | None = None) -> IngestSummary:
    """Ingest files, folders (recursively) and zip archives (read in memory, never extracted)."""
    limit = ctx.settings.max_upload_bytes
    with ExitStack() as stack:
        sources = list(_path_sources(paths, limit, stack))
        return _ingest_sources(ctx, principal, sources, meta, progress, workers)


def ingest_zip(ctx: Context, principal: Principal, fileobj: IO[bytes], meta: IngestMeta, name: str = "upload.zip",
               progress: Progress | None = None, workers: int | None = None) -> IngestSummary:
    """Ingest the images of an uploaded zip archive (a file-like object; read in place)."""
    try:
        zf = zipfile.ZipFile(fileobj)
    except (zipfile.BadZipFile, OSError) as exc:
        raise Invalid(f"not a readable zip archive ({exc})", code="bad_archive") from exc
    with zf:
        sources = list(_zip_sources(zf, name, ctx.settings.max_upload_bytes, threading.Lock()))
        return _ingest_sources(ctx, principal, sources, meta, progress, workers)
