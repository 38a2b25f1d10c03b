"""Labelled datasets into the library: a foreign export (COCO, YOLO, VOC, Label Studio) becomes
samples plus one annotation revision each.

The order of work is the point of this module:

1. read the source with the format reader (which repairs what has one meaning and refuses the rest);
2. check the class map against the names found and against the taxonomy, and stop with the full
   list BEFORE anything is written: a half-imported set under guessed classes is worse than none;
3. only then, per image and in one short transaction each, ingest the bytes through the library
   (dedup included) and save the labels as a revision with source ``import``. One bad image is
   refused with its reason and never stops the rest.

Re-importing the same export adds nothing: the bytes dedup to the same sample, and a revision is
only added when the sample's current labels differ from the ones in the file.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any

from sqlalchemy.orm import Session

from hazardlens.audit import record as audit
from hazardlens.auth import Principal
from hazardlens.context import Context
from hazardlens.datasets.bulk import Refusal
from hazardlens.datasets.ingest import IngestMeta, Prepared, normalise_tags, prepare
from hazardlens.datasets.ingest import record as record_sample
from hazardlens.detections import Box
from hazardlens.errors import Forbidden, HazardError, Invalid, TooLarge
from hazardlens.formats import (
    ClassMap,
    ImportRecord,
    ImportReport,
)
from hazardlens.labeling.annotations import save_revision
from hazardlens.labeling.class_maps import check_class_map, compile_regex, resolve_class_map
from hazardlens.labeling.import_sources import (
    FORMATS,
    ImportFormat,
    library_bytes,
    locate_dataset,
    read_source,
    safe_extract_zip,
)
from hazardlens.orm import SCOPES, AnnotationRevision
from hazardlens.readahead import read_ahead

log = logging.getLogger("hazardlens.import")


#: progress(done, total, file name, outcome); outcome is stored | deduplicated | refused.
Progress = Callable[[int, int, str, str], None]

# An uploaded dataset may be this many maximum-size images (and unpack to no more than that).
ARCHIVE_FACTOR = 40

# Boxes are compared after rounding, because a JSON round trip or a re-export may move a corner by
# a float ulp and that must not count as "the labels changed".
_BOX_DECIMALS = 2


@dataclass
class ImportSummary:
    """What an import did, for the curator: every refusal and repair has a reason."""

    format: str
    source: str
    org_code: str
    sector: str
    status: str  # the state the revisions were saved in: submitted | approved
    images_read: int = 0  # images the reader accepted
    stored: int = 0  # new samples
    deduplicated: int = 0  # images the library already held (same bytes)
    refused: list[Refusal] = field(default_factory=list)  # images not imported, with the reason
    revisions: int = 0  # revisions written
    unchanged: int = 0  # already-held samples whose current labels were exactly these (any review state)
    unlabeled: int = 0  # stored without a revision: every box refused or ignored, so not a negative
    not_relabelled: list[Refusal] = field(default_factory=list)  # shared samples of another organisation
    transcoded: list[Refusal] = field(default_factory=list)  # GIF/BMP/TIFF stored as PNG
    # Files with the same bytes as an earlier file of the same source: one sample, first labels kept.
    duplicates: list[Refusal] = field(default_factory=list)
    boxes: int = 0  # boxes in the revisions written
    negatives: int = 0  # verified negatives (a revision without boxes) written
    ignored_boxes: int = 0  # boxes the class map maps to 'ignore'
    near_duplicates: int = 0  # new samples linked to near-duplicates
    tag: str | None = None  # the tag (e.g. the source set's name) every imported sample carries
    tagged: int = 0  # samples already held that the tag was added to (new samples are created with it)
    class_counts: Counter[str] = field(default_factory=Counter)  # boxes written, per taxonomy key
    camera_ids: int = 0  # distinct camera ids among the imported images
    elapsed_s: float = 0.0
    sample_ids: list[int] = field(default_factory=list)
    report: ImportReport | None = None  # the reader's full report (repairs, refused boxes, warnings)

    def count(self, rec: ImportRecord, outcome: _Outcome, converted: str | None) -> str:
        """Count one imported image; returns its progress outcome: stored | deduplicated."""
        if outcome.duplicate_of is not None:
            first = outcome.duplicate_of
            same = _box_key(first.boxes) == _box_key(rec.boxes)
            self.duplicates.append(
                Refusal(
                    rec.file_name,
                    "duplicate_in_source",
                    f"same image bytes as {first.file_name}, with {'the same' if same else 'different'} labels; "
                    f"one sample, the labels of {first.file_name} kept",
                )
            )
            return "deduplicated"
        self.sample_ids.append(outcome.sample_id)
        if converted:
            self.transcoded.append(Refusal(rec.file_name, "transcoded", converted))
        self.deduplicated += outcome.deduplicated
        self.stored += not outcome.deduplicated
        self.near_duplicates += outcome.near
        self.unlabeled += outcome.unlabeled
        self.unchanged += outcome.unchanged
        self.tagged += outcome.tagged
        if outcome.foreign_org:
            self.not_relabelled.append(
                Refusal(
                    rec.file_name,
                    "shared_sample",
                    f"already in the library as a shared sample of organisation "
                    f"{outcome.foreign_org}; its labels were left as they are",
                )
            )
        if outcome.written is not None:
            self.revisions += 1
            self.boxes += len(outcome.written.boxes)
            self.negatives += not outcome.written.boxes
            self.class_counts.update(b["class_key"] for b in outcome.written.boxes)
        return "deduplicated" if outcome.deduplicated else "stored"

    @property
    def repairs(self) -> dict[str, int]:
        """Repairs the reader made, per kind (e.g. ``string_bbox``: 26)."""
        return dict(Counter(i.kind for i in self.report.repaired)) if self.report else {}

    @property
    def refused_boxes(self) -> dict[str, int]:
        return dict(Counter(i.kind for i in self.report.refused_boxes)) if self.report else {}

    @property
    def unused_categories(self) -> list[str]:
        return list(self.report.unused_categories) if self.report else []

    def as_dict(self, examples: int = 5) -> dict[str, Any]:
        return {
            "format": self.format,
            "source": self.source,
            "org_code": self.org_code,
            "sector": self.sector,
            "status": self.status,
            "images_read": self.images_read,
            "stored": self.stored,
            "deduplicated": self.deduplicated,
            "refused": [r.to_dict() for r in self.refused],
            "revisions": self.revisions,
            "unchanged": self.unchanged,
            "unlabeled": self.unlabeled,
            "not_relabelled": [r.to_dict() for r in self.not_relabelled],
            "transcoded": [r.to_dict() for r in self.transcoded],
            "duplicates": [r.to_dict() for r in self.duplicates],
            "boxes": self.boxes,
            "negatives": self.negatives,
            "ignored_boxes": self.ignored_boxes,
            "near_duplicates": self.near_duplicates,
            "tag": self.tag,
            "tagged": self.tagged,
            "class_counts": dict(sorted(self.class_counts.items())),
            "camera_ids": self.camera_ids,
            "repairs": self.repairs,
            "refused_boxes": self.refused_boxes,
            "unused_categories": self.unused_categories,
            "elapsed_s": round(self.elapsed_s, 3),
            "sample_ids": list(self.sample_ids),
            "reader": self.report.as_dict(examples) if self.report else None,
        }


# --- the import -----------------------------------------------------------------------------------


def _box_key(boxes: list[Box] | list[dict[str, Any]]) -> Counter[tuple[str, float, float, float, float]]:
    out: Counter[tuple[str, float, float, float, float]] = Counter()
    for b in boxes:
        d = b.as_dict() if isinstance(b, Box) else b
        out[(str(d["class_key"]), *(round(float(d[k]), _BOX_DECIMALS) for k in ("x1", "y1", "x2", "y2")))] += 1
    return out


def _one_tag(tag: str | None) -> str | None:
    tags = normalise_tags(tag)
    if len(tags) > 1:
        raise Invalid(f"one import tag, not {len(tags)}", code="invalid_meta")
    return tags[0] if tags else None


def _with_regexes(cmap: ClassMap, camera_regex: str | None, site_regex: str | None) -> ClassMap:
    """``cmap`` with the import's camera/site regexes in place of its own (when given)."""
    overrides: dict[str, Any] = {}
    if (cam := compile_regex(camera_regex, "camera regex")) is not None:
        overrides["camera_regex"] = cam
    if (site := compile_regex(site_regex, "site regex")) is not None:
        overrides["site_regex"] = site
    return replace(cmap, **overrides) if overrides else cmap


def _refusal(rec: ImportRecord, exc: Exception) -> Refusal:
    if isinstance(exc, HazardError):
        return Refusal(rec.file_name, exc.code, exc.message)
    if isinstance(exc, OSError):
        return Refusal(rec.file_name, "unreadable", f"cannot read the file ({exc})")
    log.warning("import of %s failed", rec.file_name, exc_info=exc)  # the log keeps the trace
    return Refusal(rec.file_name, "error", f"{type(exc).__name__}: {exc}")


def _check_caller(principal: Principal, org: str | None, approved: bool) -> str:
    principal.require("labeling:import")
    if approved and principal.role != "admin":
        # Importing as approved skips review entirely, so it is an administrator's decision.
        raise Forbidden(
            "only an administrator may import labels as approved; import them as submitted "
            "and let a reviewer approve them",
            code="forbidden",
        )
    org = (org or principal.org_code).strip()
    if org != principal.org_code:
        raise Forbidden(
            f"samples are imported into the caller's organisation ({principal.org_code}), not {org}", code="forbidden"
        )
    return org


@dataclass
class _Outcome:
    sample_id: int
    deduplicated: bool
    near: bool
    written: AnnotationRevision | None = None
    unchanged: bool = False
    unlabeled: bool = False
    tagged: bool = False
    foreign_org: str | None = None
    duplicate_of: ImportRecord | None = None


def _label(
    ctx: Context,
    session: Session,
    principal: Principal,
    prepared: Prepared,
    rec: ImportRecord,
    status: str,
    note: str,
    seen: dict[int, ImportRecord],
    unlabeled_classes: tuple[str, ...] = (),
    tag: str | None = None,
) -> _Outcome:
    """Record the sample and its labels in the caller's transaction (both or neither)."""
    result = record_sample(ctx, session, principal, prepared)
    sample = result.sample
    out = _Outcome(sample.id, result.deduplicated, bool(result.near_duplicates) and not result.deduplicated)
    if sample.id in seen:
        # The source holds these bytes twice. Applying both label sets would leave whichever came
        # last, and make every re-import flip between them; the first file decides.
        out.duplicate_of = seen[sample.id]
        return out
    seen[sample.id] = rec
    if (sample.width, sample.height) != (rec.width, rec.height):
        raise Invalid(
            f"the library reads the image as {sample.width}x{sample.height} but the labels were "
            f"checked against {rec.width}x{rec.height}",
            code="size_mismatch",
        )
    if sample.org_code != principal.org_code:
        # Same bytes already shared by another organisation: their labels are theirs to change.
        out.foreign_org = sample.org_code
        return out
    if tag and tag not in (sample.tags or []):
        # A sample held before this import (or before tags were given) gets the source's tag too.
        tags_before = list(sample.tags or [])
        sample.tags = normalise_tags([*tags_before, tag])
        audit(
            session,
            principal,
            "sample.tag",
            "sample",
            sample.id,
            sample_id=sample.id,
            before={"tags": tags_before},
            after={"tags": list(sample.tags), "import": note},
        )
        out.tagged = True
    if not rec.boxes and not rec.is_negative:
        out.unlabeled = True  # every box refused or ignored: "nothing here" would be a false statement
        return out
    if sample.current_revision_id is not None:
        current = session.get(AnnotationRevision, sample.current_revision_id)
        if (
            current is not None
            and _box_key(list(current.boxes)) == _box_key(rec.boxes)
            and tuple(current.unlabeled_classes or ()) == unlabeled_classes
        ):
            out.unchanged = True
            return out
    out.written = save_revision(
        ctx,
        session,
        principal,
        sample.id,
        rec.boxes,
        source="import",
        status=status,
        note=note,
        unlabeled_classes=list(unlabeled_classes),
    )
    return out


def import_dataset(
    ctx: Context,
    principal: Principal,
    fmt: ImportFormat | str,
    source: Path | str,
    class_map: ClassMap | str | Path,
    *,
    images: Path | str | None = None,
    org: str | None = None,
    sector: str,
    scope: str = "private",
    approved: bool = False,
    camera_regex: str | None = None,
    site_regex: str | None = None,
    progress: Progress | None = None,
    workers: int | None = None,
    tag: str | None = None,
) -> ImportSummary:
    """Import a labelled dataset into the caller's organisation; see the module docstring.

    ``camera_regex``/``site_regex`` override the class map's (capture groups are joined by ``.``).
    ``tag`` (e.g. the source set's name) is added to every imported sample's tags, also to samples
    the library already held (audited as ``sample.tag``), so evaluations can tell sources apart.
    Raises before writing anything for: a bad caller, sector, scope, source, regex or class map.
    """
    started = time.perf_counter()
    if fmt not in FORMATS:
        raise Invalid(f"unknown import format {fmt!r}; one of {', '.join(FORMATS)}", code="invalid_format")
    org_code = _check_caller(principal, org, approved)
    taxonomy = ctx.taxonomy()
    if sector not in taxonomy.sectors:
        raise Invalid(f"unknown sector {sector!r}; sectors are {', '.join(taxonomy.sectors)}", code="unknown_sector")
    if scope not in SCOPES:
        raise Invalid(f"scope must be one of {', '.join(SCOPES)}, not {scope!r}", code="invalid_scope")
    cmap = resolve_class_map(class_map)
    tag = _one_tag(tag)
    cmap = _with_regexes(cmap, camera_regex, site_regex)

    raw, report = read_source(fmt, source, images)
    check_class_map(ctx, cmap, raw)
    records = cmap.apply(raw)

    status = "approved" if approved else "submitted"
    summary = ImportSummary(
        format=fmt,
        source=str(source),
        org_code=org_code,
        sector=sector,
        status=status,
        images_read=len(records),
        report=report,
        tag=tag,
    )
    summary.refused.extend(Refusal(i.where, i.kind, i.message) for i in report.refused_images)
    summary.refused.extend(
        Refusal(m, "missing_file", "listed in the source but not found") for m in report.missing_files
    )
    summary.ignored_boxes = sum(r.ignored_boxes for r in records)
    summary.camera_ids = len({r.camera_id for r in records if r.camera_id})
    note = f"imported from {fmt} {Path(source).name}"
    base_meta = IngestMeta(sector=sector, scope=scope, source="import", tags=(tag,) if tag else ())
    total = len(records)
    done = 0
    seen: dict[int, ImportRecord] = {}

    def tick(name: str, outcome: str) -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total, name, outcome)

    def work(rec: ImportRecord) -> tuple[Prepared, str | None]:
        meta = replace(base_meta, original_name=rec.file_name, camera_id=rec.camera_id, site_id=rec.site_id)
        data, converted = library_bytes(rec.image_path.read_bytes(), ctx.settings.max_pixels)
        return prepare(ctx, data, meta), converted

    # Decoding and hashing run in worker threads (PIL releases the GIL) while this thread writes the
    # catalogue; the read-ahead window bounds memory whatever the dataset size.
    workers = workers or min(4, os.cpu_count() or 1)
    with read_ahead(records, work, workers=workers, window=workers * 2, name="import") as queue:
        for rec, fut in queue:
            assert fut is not None
            try:
                prepared, converted = fut.result()
                with ctx.db.session() as session:
                    outcome = _label(
                        ctx, session, principal, prepared, rec, status, note, seen, cmap.unlabeled_classes, tag
                    )
            except Exception as exc:  # one bad image never stops the rest
                summary.refused.append(_refusal(rec, exc))
                tick(rec.file_name, "refused")
                continue
            tick(rec.file_name, summary.count(rec, outcome, converted))

    summary.elapsed_s = time.perf_counter() - started
    with ctx.db.session() as session:
        # Long lists (thousands of refusals) would bloat an append-only table: counts plus the first few.
        after = {
            k: {"count": len(v), "first": v[:20]} if isinstance(v, list) and len(v) > 20 else v
            for k, v in summary.as_dict(examples=3).items()
            if k not in ("sample_ids", "reader")
        }
        audit(session, principal, "labeling.import", "import", Path(source).name, after=after)
    return summary


def import_zip(
    ctx: Context,
    principal: Principal,
    fmt: str,
    fileobj: IO[bytes],
    class_map: str | ClassMap,
    *,
    sector: str,
    scope: str = "private",
    approved: bool = False,
    camera_regex: str | None = None,
    site_regex: str | None = None,
    name: str = "upload.zip",
    tag: str | None = None,
) -> ImportSummary:
    """Import a dataset uploaded as a zip (what the API receives). Everything the caller supplied
    is checked before the archive is unpacked, and the unpacked copy is removed afterwards."""
    if fmt not in FORMATS:
        raise Invalid(f"unknown import format {fmt!r}; one of {', '.join(FORMATS)}", code="invalid_format")
    _check_caller(principal, None, approved)
    cmap = resolve_class_map(class_map)
    limit = max(ctx.settings.max_upload_bytes * ARCHIVE_FACTOR, 1 << 30)
    if fileobj.seekable():
        size = fileobj.seek(0, os.SEEK_END)
        fileobj.seek(0)
        if size > limit:
            raise TooLarge(f"archive is {size:,} bytes; the limit is {limit:,}", code="file_too_large")
    work = Path(tempfile.mkdtemp(prefix="hl-import-"))
    try:
        safe_extract_zip(fileobj, work, max_bytes=limit)
        source, images = locate_dataset(fmt, work)
        summary = import_dataset(
            ctx,
            principal,
            fmt,
            source,
            cmap,
            images=images,
            sector=sector,
            scope=scope,
            approved=approved,
            camera_regex=camera_regex,
            site_regex=site_regex,
            tag=tag,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    # Paths of a temporary folder mean nothing to the caller; name the upload instead.
    summary.source = f"{name}!{source.relative_to(work).as_posix() or '.'}"
    return summary


__all__ = [
    "FORMATS",
    "ImportFormat",
    "ImportSummary",
    "Progress",
    "check_class_map",
    "import_dataset",
    "import_zip",
    "locate_dataset",
    "read_source",
    "resolve_class_map",
    "safe_extract_zip",
]
