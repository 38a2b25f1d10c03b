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

import io
import logging
import os
import re
import shutil
import stat
import tempfile
import time
import warnings
import zipfile
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any, Literal

import yaml
from PIL import Image, ImageOps
from sqlalchemy.orm import Session

from hazardlens.audit import record as audit
from hazardlens.auth import Principal
from hazardlens.context import Context
from hazardlens.datasets.library import IngestMeta, Prepared, Refusal, normalise_tags, prepare
from hazardlens.datasets.library import record as record_sample
from hazardlens.detections import Box
from hazardlens.errors import Forbidden, HazardError, Invalid, NotFound, TooLarge
from hazardlens.formats import (
    ClassMap,
    ImportRecord,
    ImportReport,
    class_names,
    read_coco,
    read_labelstudio,
    read_voc,
    read_yolo,
)
from hazardlens.formats._util import safe_relative
from hazardlens.images import sniff_format
from hazardlens.labeling.annotations import save_revision
from hazardlens.orm import SCOPES, AnnotationRevision
from hazardlens.settings import config_files, find_config_file

log = logging.getLogger("hazardlens.import")

ImportFormat = Literal["coco", "yolo", "voc", "labelstudio"]
FORMATS: tuple[str, ...] = ("coco", "yolo", "voc", "labelstudio")

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
            "format": self.format, "source": self.source, "org_code": self.org_code, "sector": self.sector,
            "status": self.status, "images_read": self.images_read, "stored": self.stored,
            "deduplicated": self.deduplicated, "refused": [r.to_dict() for r in self.refused],
            "revisions": self.revisions, "unchanged": self.unchanged, "unlabeled": self.unlabeled,
            "not_relabelled": [r.to_dict() for r in self.not_relabelled],
            "transcoded": [r.to_dict() for r in self.transcoded],
            "duplicates": [r.to_dict() for r in self.duplicates], "boxes": self.boxes,
            "negatives": self.negatives, "ignored_boxes": self.ignored_boxes,
            "near_duplicates": self.near_duplicates, "tag": self.tag, "tagged": self.tagged,
            "class_counts": dict(sorted(self.class_counts.items())),
            "camera_ids": self.camera_ids, "repairs": self.repairs, "refused_boxes": self.refused_boxes,
            "unused_categories": self.unused_categories, "elapsed_s": round(self.elapsed_s, 3),
            "sample_ids": list(self.sample_ids),
            "reader": self.report.as_dict(examples) if self.report else None,
        }


# --- class maps ---------------------------------------------------------------------------------


_MAP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def resolve_class_map(spec: str | Path | ClassMap) -> ClassMap:
    """A class map from a :class:`ClassMap`, a file path (``configs/class_maps/sfchd.yaml`` also works
    outside the repository: see :func:`~hazardlens.settings.find_config_file`), the name of a map in
    ``configs/class_maps`` (``sfchd`` or ``sfchd.yaml``; ``HAZARDLENS_CONFIG_DIR/class_maps`` wins), or
    the YAML text itself (the API form field accepts the last two, so a name can never reach outside
    that folder)."""
    if isinstance(spec, ClassMap):
        return spec
    if isinstance(spec, Path):
        found = find_config_file(spec)
        if found is not None or len(spec.parts) != 1:
            return ClassMap.load(found or spec)  # a missing path is reported by load
        spec = str(spec)  # a bare name on the command line: a shipped map
    text = spec.strip()
    if "\n" in text or ":" in text:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise Invalid(f"class map is not valid YAML ({exc})", code="invalid_class_map") from exc
        return ClassMap.from_dict(data, source="class map text")
    if not _MAP_NAME.match(text) or ".." in text:
        raise Invalid(f"class map {text!r} is neither YAML text nor the name of a shipped class map",
                      code="invalid_class_map")
    maps = config_files("class_maps")
    stem = text.removesuffix(".yaml").removesuffix(".yml")
    if stem in maps:
        return ClassMap.load(maps[stem])
    raise NotFound(f"no shipped class map {text!r}; shipped: {', '.join(maps) or 'none'}",
                   code="unknown_class_map")


def _compile(value: str | None, what: str) -> re.Pattern[str] | None:
    if value is None or not value.strip():
        return None
    try:
        return re.compile(value)
    except re.error as exc:
        raise Invalid(f"{what} is not a valid regular expression ({exc})", code="invalid_regex") from exc


def check_class_map(ctx: Context, class_map: ClassMap, records: list[ImportRecord]) -> None:
    """Stop before anything is written when a source name has no mapping or a mapping names a class
    the taxonomy does not have (or has, but not yet approved in legal review)."""
    missing = class_map.unmapped(class_names(records))
    if missing:
        raise Invalid(f"{len(missing)} class name(s) in the source have no mapping in "
                      f"{class_map.source or 'the class map'}: {', '.join(missing)}; nothing was imported",
                      code="unmapped_classes", details={"unmapped": missing})
    taxonomy = ctx.taxonomy()
    bad: dict[str, str] = {}
    for key in sorted(class_map.taxonomy_keys):
        try:
            taxonomy.get_class(key)
        except Invalid as exc:
            bad[key] = exc.message
    if bad:
        raise Invalid(f"the class map names {len(bad)} class(es) the taxonomy cannot use: "
                      f"{'; '.join(bad.values())}; nothing was imported",
                      code="unknown_classes", details={"classes": bad})


# --- reading ------------------------------------------------------------------------------------


def read_source(fmt: str, source: Path | str, images: Path | str | None = None) -> tuple[list[ImportRecord],
                                                                                        ImportReport]:
    """Run the format's reader. COCO and Label Studio take a json plus an images folder (COCO
    defaults to the json's folder); YOLO and VOC take the dataset folder."""
    if fmt == "coco":
        return read_coco(source, images)
    if fmt == "labelstudio":
        if images is None:
            raise Invalid("a Label Studio import needs the images folder", code="images_required")
        return read_labelstudio(source, images)
    if fmt == "yolo":
        return read_yolo(source)
    if fmt == "voc":
        return read_voc(source)
    raise Invalid(f"unknown import format {fmt!r}; one of {', '.join(FORMATS)}", code="invalid_format")


# --- the import -----------------------------------------------------------------------------------


def _box_key(boxes: list[Box] | list[dict[str, Any]]) -> Counter[tuple[str, float, float, float, float]]:
    out: Counter[tuple[str, float, float, float, float]] = Counter()
    for b in boxes:
        d = b.as_dict() if isinstance(b, Box) else b
        out[(str(d["class_key"]), *(round(float(d[k]), _BOX_DECIMALS) for k in ("x1", "y1", "x2", "y2")))] += 1
    return out


def library_bytes(data: bytes, max_pixels: int) -> tuple[bytes, str | None]:
    """The bytes to store, and a note when they had to be converted. Datasets carry formats the
    library does not keep (GIFs named .jpg, BMP, TIFF) whose labels are still good: those are
    converted losslessly to PNG, upright, so the pixels are the ones the labels were drawn on. Data
    the library can judge itself (its own formats, even when broken, and non-images) passes as is."""
    if sniff_format(data) is not None:
        return data, None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                fmt = im.format or "unknown"
                if im.size[0] * im.size[1] > max_pixels:
                    return data, None  # the library refuses it with its own message
                im.seek(0)
                im.load()
                upright = ImageOps.exif_transpose(im) or im
                if upright.mode not in ("1", "L", "LA", "P", "RGB", "RGBA"):
                    upright = upright.convert("RGBA" if "A" in upright.getbands() else "RGB")
                buf = io.BytesIO()
                upright.save(buf, format="PNG")
    except Exception:
        return data, None  # not an image PIL can read either: the library says why
    return buf.getvalue(), f"{fmt} converted to PNG (the library keeps JPEG, PNG, WebP and HEIC)"


def _check_caller(principal: Principal, org: str | None, approved: bool) -> str:
    principal.require("labeling:import")
    if approved and principal.role != "admin":
        # Importing as approved skips review entirely, so it is an administrator's decision.
        raise Forbidden("only an administrator may import labels as approved; import them as submitted "
                        "and let a reviewer approve them", code="forbidden")
    org = (org or principal.org_code).strip()
    if org != principal.org_code:
        raise Forbidden(f"samples are imported into the caller's organisation ({principal.org_code}), "
                        f"not {org}", code="forbidden")
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


def _label(ctx: Context, session: Session, principal: Principal, prepared: Prepared, rec: ImportRecord,
           status: str, note: str, seen: dict[int, ImportRecord], unlabeled_classes: tuple[str, ...] = (),
           tag: str | None = None) -> _Outcome:
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
        raise Invalid(f"the library reads the image as {sample.width}x{sample.height} but the labels were "
                      f"checked against {rec.width}x{rec.height}", code="size_mismatch")
    if sample.org_code != principal.org_code:
        # Same bytes already shared by another organisation: their labels are theirs to change.
        out.foreign_org = sample.org_code
        return out
    if tag and tag not in (sample.tags or []):
        # A sample held before this import (or before tags were given) gets the source's tag too.
        tags_before = list(sample.tags or [])
        sample.tags = normalise_tags([*tags_before, tag])
        audit(session, principal, "sample.tag", "sample", sample.id, sample_id=sample.id,
              before={"tags": tags_before}, after={"tags": list(sample.tags), "import": note})
        out.tagged = True
    if not rec.boxes and not rec.is_negative:
        out.unlabeled = True  # every box refused or ignored: "nothing here" would be a false statement
        return out
    if sample.current_revision_id is not None:
        current = session.get(AnnotationRevision, sample.current_revision_id)
        if (current is not None and _box_key(list(current.boxes)) == _box_key(rec.boxes)
                and tuple(current.unlabeled_classes or ()) == unlabeled_classes):
            out.unchanged = True
            return out
    out.written = save_revision(ctx, session, principal, sample.id, rec.boxes, source="import", status=status,
                                note=note, unlabeled_classes=list(unlabeled_classes))
    return out


def import_dataset(ctx: Context, principal: Principal, fmt: ImportFormat | str, source: Path | str,
                   class_map: ClassMap | str | Path, *, images: Path | str | None = None, org: str | None = None,
                   sector: str, scope: str = "private", approved: bool = False, camera_regex: str | None = None,
                   site_regex: str | None = None, progress: Progress | None = None,
                   workers: int | None = None, tag: str | None = None) -> ImportSummary:
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
        raise Invalid(f"unknown sector {sector!r}; sectors are {', '.join(taxonomy.sectors)}",
                      code="unknown_sector")
    if scope not in SCOPES:
        raise Invalid(f"scope must be one of {', '.join(SCOPES)}, not {scope!r}", code="invalid_scope")
    cmap = resolve_class_map(class_map)
    tags = normalise_tags(tag)
    if len(tags) > 1:
        raise Invalid(f"one import tag, not {len(tags)}", code="invalid_meta")
    tag = tags[0] if tags else None
    overrides: dict[str, Any] = {}
    if (cam := _compile(camera_regex, "camera regex")) is not None:
        overrides["camera_regex"] = cam
    if (site := _compile(site_regex, "site regex")) is not None:
        overrides["site_regex"] = site
    if overrides:
        cmap = replace(cmap, **overrides)

    raw, report = read_source(fmt, source, images)
    check_class_map(ctx, cmap, raw)
    records = cmap.apply(raw)

    status = "approved" if approved else "submitted"
    summary = ImportSummary(format=fmt, source=str(source), org_code=org_code, sector=sector, status=status,
                            images_read=len(records), report=report, tag=tag)
    summary.refused.extend(Refusal(i.where, i.kind, i.message) for i in report.refused_images)
    summary.refused.extend(Refusal(m, "missing_file", "listed in the source but not found")
                           for m in report.missing_files)
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
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="import") as pool:
        pending: list[tuple[ImportRecord, Future[tuple[Prepared, str | None]]]] = []
        queue = iter(records)

        def fill() -> None:
            while len(pending) < workers * 2 and (rec := next(queue, None)) is not None:
                pending.append((rec, pool.submit(work, rec)))

        fill()
        while pending:
            rec, fut = pending.pop(0)
            fill()
            try:
                prepared, converted = fut.result()
                with ctx.db.session() as session:
                    outcome = _label(ctx, session, principal, prepared, rec, status, note, seen,
                                     cmap.unlabeled_classes, tag)
            except HazardError as exc:
                summary.refused.append(Refusal(rec.file_name, exc.code, exc.message))
                tick(rec.file_name, "refused")
                continue
            except OSError as exc:
                summary.refused.append(Refusal(rec.file_name, "unreadable", f"cannot read the file ({exc})"))
                tick(rec.file_name, "refused")
                continue
            except Exception as exc:  # one bad image never stops the rest; the log keeps the trace
                log.warning("import of %s failed", rec.file_name, exc_info=exc)
                summary.refused.append(Refusal(rec.file_name, "error", f"{type(exc).__name__}: {exc}"))
                tick(rec.file_name, "refused")
                continue
            if outcome.duplicate_of is not None:
                first = outcome.duplicate_of
                same = _box_key(first.boxes) == _box_key(rec.boxes)
                summary.duplicates.append(Refusal(
                    rec.file_name, "duplicate_in_source",
                    f"same image bytes as {first.file_name}, with {'the same' if same else 'different'} labels; "
                    f"one sample, the labels of {first.file_name} kept"))
                tick(rec.file_name, "deduplicated")
                continue
            summary.sample_ids.append(outcome.sample_id)
            if converted:
                summary.transcoded.append(Refusal(rec.file_name, "transcoded", converted))
            summary.deduplicated += outcome.deduplicated
            summary.stored += not outcome.deduplicated
            summary.near_duplicates += outcome.near
            summary.unlabeled += outcome.unlabeled
            summary.unchanged += outcome.unchanged
            summary.tagged += outcome.tagged
            if outcome.foreign_org:
                summary.not_relabelled.append(Refusal(rec.file_name, "shared_sample",
                                                      f"already in the library as a shared sample of "
                                                      f"organisation {outcome.foreign_org}; its labels were "
                                                      f"left as they are"))
            if outcome.written is not None:
                summary.revisions += 1
                summary.boxes += len(outcome.written.boxes)
                summary.negatives += not outcome.written.boxes
                summary.class_counts.update(b["class_key"] for b in outcome.written.boxes)
            tick(rec.file_name, "deduplicated" if outcome.deduplicated else "stored")

    summary.elapsed_s = time.perf_counter() - started
    with ctx.db.session() as session:
        # Long lists (thousands of refusals) would bloat an append-only table: counts plus the first few.
        after = {k: {"count": len(v), "first": v[:20]} if isinstance(v, list) and len(v) > 20 else v
                 for k, v in summary.as_dict(examples=3).items() if k not in ("sample_ids", "reader")}
        audit(session, principal, "labeling.import", "import", Path(source).name, after=after)
    return summary


# --- zip uploads (API) -----------------------------------------------------------------------------


def safe_extract_zip(fileobj: IO[bytes], dest: Path, *, max_bytes: int, max_entries: int = 200_000) -> None:
    """Extract an uploaded zip into ``dest``. The whole upload is refused when an entry would land
    outside ``dest`` (absolute path, ``..``, a drive letter, a symlink) or when it unpacks to more
    than ``max_bytes``, counted on the bytes actually written because headers can lie."""
    try:
        zf = zipfile.ZipFile(fileobj)
    except (zipfile.BadZipFile, OSError) as exc:
        raise Invalid(f"not a readable zip archive ({exc})", code="bad_archive") from exc
    root = dest.resolve()
    with zf:
        infos = zf.infolist()
        if len(infos) > max_entries:
            raise TooLarge(f"archive holds {len(infos):,} entries; the limit is {max_entries:,}",
                           code="archive_too_large")
        planned: list[tuple[zipfile.ZipInfo, Path]] = []
        for info in infos:
            if info.is_dir() and info.filename.replace("\\", "/").strip("/") in ("", "."):
                continue  # the archive's own root folder ("./"), written by some zip tools
            rel = safe_relative(info.filename)
            mode = info.external_attr >> 16
            if rel is None or (info.create_system == 3 and stat.S_ISLNK(mode)):
                raise Invalid(f"archive entry {info.filename!r} escapes the archive folder; nothing was imported",
                              code="unsafe_path")
            target = (root / rel).resolve()
            if not target.is_relative_to(root):
                raise Invalid(f"archive entry {info.filename!r} escapes the archive folder; nothing was imported",
                              code="unsafe_path")
            if info.flag_bits & 0x1:
                raise Invalid(f"archive entry {info.filename!r} is encrypted", code="encrypted")
            planned.append((info, target))
        written = 0
        for info, target in planned:
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, target.open("wb") as dst:
                while chunk := src.read(1 << 20):
                    written += len(chunk)
                    if written > max_bytes:
                        raise TooLarge(f"archive unpacks to more than {max_bytes:,} bytes", code="archive_too_large")
                    dst.write(chunk)


def _unwrap(root: Path) -> Path:
    """Descend through a single wrapping folder (``export/`` around the dataset), as zips made by
    compressing a folder have; stop at dataset folders themselves."""
    while True:
        entries = [p for p in root.iterdir() if not p.name.startswith(".") and p.name != "__MACOSX"]
        if len(entries) == 1 and entries[0].is_dir() and entries[0].name.lower() not in (
                "images", "labels", "annotations", "jpegimages", "train", "val", "valid", "test"):
            root = entries[0]
            continue
        return root


def locate_dataset(fmt: str, folder: Path) -> tuple[Path, Path | None]:
    """(source, images) of a dataset unpacked into ``folder``: the json and its images folder for
    COCO and Label Studio (the ``images/`` beside the json when there is one), the dataset folder
    for YOLO and VOC."""
    root = _unwrap(folder)
    if fmt in ("yolo", "voc"):
        return root, None
    if fmt not in FORMATS:
        raise Invalid(f"unknown import format {fmt!r}; one of {', '.join(FORMATS)}", code="invalid_format")
    jsons = sorted((p for p in root.rglob("*.json") if "__MACOSX" not in p.parts and not p.name.startswith(".")),
                   key=lambda p: (len(p.relative_to(root).parts), p.as_posix()))
    if not jsons:
        raise Invalid(f"the archive holds no {fmt} json file", code="no_annotations")
    top = [p for p in jsons if len(p.parts) == len(jsons[0].parts)]
    if len(top) > 1:
        names = ", ".join(p.relative_to(root).as_posix() for p in top)
        raise Invalid(f"the archive holds several json files ({names}); upload one dataset at a time",
                      code="ambiguous_annotations")
    ann = top[0]
    images = ann.parent / "images"
    return ann, images if images.is_dir() else ann.parent


def import_zip(ctx: Context, principal: Principal, fmt: str, fileobj: IO[bytes], class_map: str | ClassMap, *,
               sector: str, scope: str = "private", approved: bool = False, camera_regex: str | None = None,
               site_regex: str | None = None, name: str = "upload.zip", tag: str | None = None) -> ImportSummary:
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
        summary = import_dataset(ctx, principal, fmt, source, cmap, images=images, sector=sector, scope=scope,
                                 approved=approved, camera_regex=camera_regex, site_regex=site_regex, tag=tag)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    # Paths of a temporary folder mean nothing to the caller; name the upload instead.
    summary.source = f"{name}!{source.relative_to(work).as_posix() or '.'}"
    return summary


__all__ = ["FORMATS", "ImportFormat", "ImportSummary", "Progress", "check_class_map", "import_dataset",
           "import_zip", "locate_dataset", "read_source", "resolve_class_map", "safe_extract_zip"]
