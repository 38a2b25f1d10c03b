"""The library out to files: YOLO (Ultralytics layout), COCO, Label Studio tasks, CVAT for images 1.1,
or Pascal VOC (the devkit layout: ``Annotations/``, ``JPEGImages/``, ``ImageSets/Main/``).

Which labels leave is a review decision, so an export takes one state: ``approved`` (each sample's
latest approved revision, also when a newer correction is still under review) or ``submitted``
(the current revision of samples waiting for review). Which samples leave is the tenancy rule:
only what :func:`hazardlens.datasets.tenancy.visible_samples` lets the caller see.

Boxes are in pixels of the EXIF-oriented image, but the stored bytes keep their EXIF orientation,
and training tools disagree on whether to apply it. So an image whose orientation tag is not 1 is
written re-encoded with its pixels turned upright and the tag gone: pixels and boxes then agree
whatever reads them. HEIC, which few training tools read, is written as JPEG.
"""

from __future__ import annotations

import io
import re
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import yaml
from PIL import Image, ImageOps
from sqlalchemy import select
from sqlalchemy.orm import Session

import hazardlens.images  # noqa: F401 - registers the HEIC opener with PIL
from hazardlens.audit import record as audit
from hazardlens.auth import Principal
from hazardlens.context import Context
from hazardlens.contracts.filters import SampleFilter
from hazardlens.datasets.search import apply_filters
from hazardlens.datasets.tenancy import visible_samples
from hazardlens.detections import Box
from hazardlens.errors import Conflict, Invalid
from hazardlens.formats import ExportItem, write_coco, write_cvat, write_labelstudio, write_voc, write_yolo
from hazardlens.formats._util import write_image
from hazardlens.orm import AnnotationRevision, Sample, Suggestion
from hazardlens.store import blob_key

ExportFormat = Literal["yolo", "coco", "labelstudio", "cvat", "voc"]
EXPORT_FORMATS: tuple[str, ...] = ("yolo", "coco", "labelstudio", "cvat", "voc")
EXPORT_STATUSES: tuple[str, ...] = ("approved", "submitted")
#: Where Label Studio finds the exported images when the export folder is its local-files root.
LABELSTUDIO_PREFIX = "/data/local-files/?d=images/"

_SUFFIX = {"jpeg": ".jpg", "png": ".png", "webp": ".webp", "heic": ".jpg"}
_UNSAFE = re.compile(r"[^\w.\-]+")
_ORIENTATION_TAG = 0x0112
_URL_PREFIX = re.compile(r"(https?://[^\s\x00-\x1f]{1,490}|/[^\s\x00-\x1f]{0,499})")


@dataclass(frozen=True)
class ExportResult:
    format: str
    status: str
    out_dir: Path
    path: Path  # data.yaml, annotations.json or tasks.json
    images: int
    boxes: int
    negatives: int
    dropped_boxes: int = 0  # outside their image after clipping: written nowhere
    reoriented: int = 0  # images re-encoded upright (EXIF orientation) or from HEIC
    predictions: int = 0  # Label Studio tasks carrying a model's suggestion
    classes: list[str] = field(default_factory=list)
    sample_ids: list[int] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "status": self.status,
            "path": str(self.path),
            "images": self.images,
            "boxes": self.boxes,
            "negatives": self.negatives,
            "dropped_boxes": self.dropped_boxes,
            "reoriented": self.reoriented,
            "predictions": self.predictions,
            "classes": list(self.classes),
            "sample_ids": list(self.sample_ids),
        }


def to_filter(filters: SampleFilter | Mapping[str, Any] | None) -> SampleFilter:
    """The one sample filter (SampleFilter.parse): unknown keys are refused, because a misspelt
    filter would otherwise export the whole library."""
    return SampleFilter.parse(filters)


def _file_name(sample: Sample) -> str:
    """``<sample id>_<original base name>``: unique (the id) and still recognisable (the name)."""
    stem = PurePosixPath((sample.original_name or "").replace("\\", "/")).stem
    stem = _UNSAFE.sub("_", stem).strip("._")[:80] or sample.sha256[:12]
    return f"{sample.id}_{stem}{_SUFFIX.get(sample.format, '.jpg')}"


def _upright(data: bytes, sample: Sample) -> bytes | None:
    """Re-encoded upright bytes when the stored ones would not show the oriented image the boxes
    are drawn on (or are HEIC); None when the stored bytes can be written as they are."""
    with Image.open(io.BytesIO(data)) as im:
        try:
            orientation = int(im.getexif().get(_ORIENTATION_TAG, 1))
        except Exception:
            orientation = 1
        if orientation in (0, 1) and sample.format != "heic":
            return None
        im.load()
        # Same rule as hazardlens.images (which measured the sample): a broken EXIF block keeps the
        # stored orientation.
        try:
            upright = ImageOps.exif_transpose(im) or im
        except Exception:
            upright = im
        if upright.size != (sample.width, sample.height):
            raise Invalid(
                f"sample {sample.id}: upright image is {upright.size[0]}x{upright.size[1]}, the "
                f"catalogue says {sample.width}x{sample.height}",
                code="size_mismatch",
            )
        buf = io.BytesIO()
        if sample.format in ("jpeg", "heic"):
            if upright.mode not in ("RGB", "L", "CMYK"):
                upright = upright.convert("RGB")
            upright.save(buf, format="JPEG", quality=95)
        elif sample.format == "png":
            upright.save(buf, format="PNG")
        else:
            upright.save(buf, format="WEBP", quality=95)
        return buf.getvalue()


class _Images:
    """Writes each sample's image from the object store, turning it upright where needed."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.reoriented = 0

    def writer(self, sample: Sample) -> Callable[[Path], None]:
        def write(dest: Path) -> None:
            data = self.ctx.store.get(blob_key(sample.sha256))
            fixed = _upright(data, sample)
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(fixed if fixed is not None else data)
            self.reoriented += fixed is not None

        return write


def _boxes(raw: list[Any]) -> list[Box]:
    return [
        Box(
            str(b["class_key"]),
            float(b["x1"]),
            float(b["y1"]),
            float(b["x2"]),
            float(b["y2"]),
            float(b["confidence"]) if b.get("confidence") is not None else None,
        )
        for b in raw
    ]


def select_labelled(
    session: Session, principal: Principal, status: str, filters: SampleFilter | Mapping[str, Any] | None = None
) -> list[tuple[Sample, AnnotationRevision]]:
    """(sample, revision) pairs an export of ``status`` holds, oldest sample first. A class filter
    applies to the exported revision (not to the current one, which may be a newer draft)."""
    if status not in EXPORT_STATUSES:
        raise Invalid(f"status must be one of {', '.join(EXPORT_STATUSES)}, not {status!r}", code="invalid_status")
    f = to_filter(filters)
    class_key = f.class_key
    query = apply_filters(session, visible_samples(principal), f.model_copy(update={"class_key": None}))
    if status == "approved":
        query = query.join(AnnotationRevision, AnnotationRevision.id == Sample.approved_revision_id)
    else:
        query = query.join(AnnotationRevision, AnnotationRevision.id == Sample.current_revision_id).where(
            Sample.annotation_status == "submitted", AnnotationRevision.status == "submitted"
        )
    rows = session.execute(query.add_columns(AnnotationRevision).order_by(Sample.id)).tuples().all()
    if class_key is not None:
        rows = [(s, r) for s, r in rows if any(b.get("class_key") == class_key for b in r.boxes)]
    return list(rows)


def _class_order(ctx: Context, session: Session, present: set[str], wanted: list[str] | None) -> list[str]:
    if wanted is not None:
        return list(wanted)
    # Taxonomy order, so that the same classes get the same indices in every export; a retired
    # class still on an old revision goes last rather than being dropped.
    order = [k for k in ctx.taxonomy(session).classes if k in present]
    return order + sorted(present - set(order))


def export_library(
    ctx: Context,
    session: Session,
    principal: Principal,
    fmt: ExportFormat | str,
    out_dir: Path | str,
    *,
    status: str = "approved",
    filters: SampleFilter | Mapping[str, Any] | None = None,
    class_names: list[str] | None = None,
    image_url_prefix: str = LABELSTUDIO_PREFIX,
    sample_url_prefix: str | None = None,
    yaml_name: str = "data.yaml",
    audit_session: Callable[[], AbstractContextManager[Session]] | None = None,
) -> ExportResult:
    """Write the visible samples with a revision in ``status`` to ``out_dir`` (empty or new).

    ``class_names`` fixes the class order (YOLO indices, COCO ids); by default the taxonomy order of
    the classes present. Label Studio gets ``tasks.json`` plus ``images/``, and each task carries
    ``data.sample_id`` and the sample's newest open model suggestion as a prediction; its
    ``data.image`` is ``image_url_prefix`` + the file name (Label Studio serving the export folder as
    local files), or with ``sample_url_prefix`` (e.g. ``http://host:8000/v1/samples/``) the sample's
    image URL ``<prefix><id>/image`` on this service. ``yaml_name`` ``dataset.yaml`` names the YOLO
    dataset file as FiftyOne's YOLOv5 reader expects it. CVAT gets ``annotations.xml`` + ``images/``.

    ``audit_session`` (e.g. ``ctx.db.session``): the audit event is written in a session of its own,
    opened after the files are written, so that ``session`` may be a read session and the export's
    reads, image copies and file writes never run under the catalogue's write lock (issue 13, item 7)."""
    principal.require("labeling:export")
    if sample_url_prefix is not None and not _URL_PREFIX.fullmatch(sample_url_prefix):
        raise Invalid(
            "the image URL prefix is an http(s) URL (or a path starting with /) of at most 500 "
            f"characters, not {sample_url_prefix[:100]!r}",
            code="invalid_request",
        )
    if fmt not in EXPORT_FORMATS:
        raise Invalid(f"unknown export format {fmt!r}; one of {', '.join(EXPORT_FORMATS)}", code="invalid_format")
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise Conflict(f"{out} exists and is not an empty folder; export into a new one", code="not_empty")
    rows = select_labelled(session, principal, status, filters)
    if not rows:
        raise Invalid(
            f"no visible sample has a {status} revision matching the filters; nothing to export",
            code="nothing_to_export",
        )

    suggestions: dict[int, Suggestion] = {}
    if fmt == "labelstudio":
        ids = [s.id for s, _ in rows]
        for i in range(0, len(ids), 500):
            query = (
                select(Suggestion)
                .where(Suggestion.sample_id.in_(ids[i : i + 500]), Suggestion.status == "open")
                .order_by(Suggestion.id)
            )
            for sug in session.scalars(query):
                suggestions[sug.sample_id] = sug  # the newest wins

    images = _Images(ctx)
    items: list[ExportItem] = []
    present: set[str] = set()
    for sample, rev in rows:
        boxes = _boxes(list(rev.boxes))
        predictions = _boxes(list(suggestions[sample.id].boxes)) if sample.id in suggestions else None
        present.update(b.class_key for b in boxes)
        url = f"{sample_url_prefix}{sample.id}/image" if sample_url_prefix is not None else None
        items.append(
            ExportItem(
                _file_name(sample),
                images.writer(sample),
                sample.width,
                sample.height,
                boxes,
                predictions=predictions,
                image_url=url,
                data={"sample_id": sample.id},
            )
        )
    names = _class_order(ctx, session, present, class_names)

    out.mkdir(parents=True, exist_ok=True)
    if fmt == "yolo":
        result = write_yolo(items, out, names, yaml_name=yaml_name)
    elif fmt == "coco":
        result = write_coco(items, out, names)
    elif fmt == "cvat":
        result = write_cvat(items, out, names)
    elif fmt == "voc":
        result = write_voc(items, out, names)
    else:
        result = write_labelstudio(items, out / "tasks.json", image_url_prefix)
        for item in items:
            write_image(item.image_bytes_path, out / "images" / item.file_name)
    export = ExportResult(
        fmt,
        status,
        out,
        result.path,
        result.images,
        result.boxes,
        result.negatives,
        result.dropped_boxes,
        images.reoriented,
        len(suggestions),
        names,
        [s.id for s, _ in rows],
    )
    after = {k: v for k, v in export.as_dict().items() if k not in ("path", "sample_ids")} | {
        "filters": {k: str(v) for k, v in to_filter(filters).params().items()}
    }
    if audit_session is None:
        audit(session, principal, "labeling.export", "export", fmt, after=after)
    else:
        with audit_session() as writer:
            audit(writer, principal, "labeling.export", "export", fmt, after=after)
    return export


def _drop_yaml_path(data_yaml: Path) -> None:
    """Without ``path``, Ultralytics resolves the splits next to data.yaml: what an unpacked zip
    needs (the absolute path of a temporary folder would point nowhere)."""
    data = yaml.safe_load(data_yaml.read_text(encoding="utf-8"))
    data.pop("path", None)
    data_yaml.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")


def export_zip(
    ctx: Context,
    principal: Principal,
    fmt: ExportFormat | str,
    *,
    status: str = "approved",
    filters: SampleFilter | Mapping[str, Any] | None = None,
) -> tuple[Path, ExportResult]:
    """The export as one zip file (for the API), in a temporary folder the caller removes with
    ``shutil.rmtree(zip_path.parent)``. Paths inside are relative to the export folder, so the zip
    imports back as it is."""
    work = Path(tempfile.mkdtemp(prefix="hl-export-"))
    try:
        # Read through a read session; the one audit row is written in a short write session after.
        with ctx.db.read_session() as session:
            result = export_library(
                ctx,
                session,
                principal,
                fmt,
                work / "export",
                status=status,
                filters=filters,
                audit_session=ctx.db.session,
            )
        if fmt == "yolo":
            _drop_yaml_path(result.path)
        zip_path = work / f"hazardlens-{fmt}-{status}.zip"
        with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as zf:
            for path in sorted((work / "export").rglob("*")):
                if path.is_file():
                    # Images are compressed already; deflating them again only costs time.
                    kind = zipfile.ZIP_STORED if path.suffix.lower() in _SUFFIX.values() else zipfile.ZIP_DEFLATED
                    zf.write(path, path.relative_to(work / "export").as_posix(), compress_type=kind)
        shutil.rmtree(work / "export")
        return zip_path, result
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


__all__ = [
    "EXPORT_FORMATS",
    "EXPORT_STATUSES",
    "ExportFormat",
    "ExportResult",
    "LABELSTUDIO_PREFIX",
    "export_library",
    "export_zip",
    "select_labelled",
    "to_filter",
]
