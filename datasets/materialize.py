"""Write a dataset version to disk (YOLO or COCO) for training and evaluation.

Images come from the object store, through a local cache (``<cache_dir>/blobs``) that export
hard-links from: a second export of the same images (the next training run, another format) reads
nothing from the store and copies no bytes. Cached files are made read-only because a hard link
shares them with every export folder.

Orientation: boxes everywhere in hazardlens are in pixels of the EXIF-oriented image. Ultralytics
happens to agree (it reads with ``cv2.imdecode``, which applies the EXIF orientation, and sizes
labels with ``exif_size``), but COCO tools, PIL without ``exif_transpose`` and older OpenCV builds
do not. So an image whose orientation tag is not 1 is written as oriented pixels with no
orientation tag (re-encoded once, cached under ``<cache_dir>/oriented``): every reader sees the
pixels the boxes were drawn on. HEIC is re-encoded too, since training readers cannot rely on a
HEIF decoder.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from PIL import Image, ImageOps

import hazardlens.images  # noqa: F401 - registers the HEIF opener with PIL
from hazardlens.context import Context
from hazardlens.detections import Box
from hazardlens.errors import Conflict, Invalid
from hazardlens.formats import ExportItem, write_coco, write_yolo
from hazardlens.orm import DatasetVersion
from hazardlens.store import blob_key

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

from hazardlens.datasets.splits import SPLITS
from hazardlens.datasets.versions import load_manifest

FORMATS = ("yolo", "coco")
_EXT = {"jpeg": ".jpg", "png": ".png", "webp": ".webp"}
_ORIENTATION_TAG = 0x0112
_CHUNK = 1024 * 1024
SMALL_PX = 32  # COCO's "small object": sqrt(area) below 32 px


@dataclass
class ExportStats:
    """What an export did. ``store_reads`` / ``cache_hits`` show whether the cache worked."""

    version_id: str
    name: str
    format: str
    out_dir: Path
    paths: list[Path]
    images: int = 0
    boxes: int = 0
    negatives: int = 0
    dropped_boxes: int = 0
    capped_images: int = 0
    reencoded: int = 0
    store_reads: int = 0
    cache_hits: int = 0
    linked: int = 0
    copied: int = 0
    seconds: float = 0.0
    stats: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["out_dir"] = str(self.out_dir)
        d["paths"] = [str(p) for p in self.paths]
        return d


# --- the blob cache ------------------------------------------------------------------------------


def _cache_path(ctx: Context, sha256: str) -> Path:
    return ctx.settings.cache_dir / "blobs" / sha256[:2] / sha256


def _oriented_path(ctx: Context, sha256: str, ext: str) -> Path:
    return ctx.settings.cache_dir / "oriented" / sha256[:2] / f"{sha256}{ext}"


def _publish(tmp: Path, dest: Path) -> None:
    os.chmod(tmp, 0o444)
    os.replace(tmp, dest)


def cached_blob(ctx: Context, sha256: str, counters: Counter[str] | None = None) -> Path:
    """The original bytes of ``sha256`` as a local read-only file, fetched once from the store and
    checked against their hash on the way in (a corrupt cache file would poison every export)."""
    path = _cache_path(ctx, sha256)
    if path.is_file():
        if counters is not None:
            counters["cache_hits"] += 1
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out, ctx.store.open(blob_key(sha256)) as src:
            while chunk := src.read(_CHUNK):
                digest.update(chunk)
                out.write(chunk)
        if counters is not None:
            counters["store_reads"] += 1
        if digest.hexdigest() != sha256:
            raise Conflict(
                f"stored blob {sha256} does not match its hash; the object store copy is corrupt", code="blob_corrupt"
            )
        _publish(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return path


def _orientation(im: Image.Image) -> int:
    try:
        value = int(im.getexif().get(_ORIENTATION_TAG, 1))
    except Exception:
        return 1
    return value if 1 <= value <= 8 else 1


def prepared_image(ctx: Context, item: Mapping[str, Any], counters: Counter[str] | None = None) -> Path:
    """A local file whose pixels, as any reader decodes them, are the oriented image the item's
    boxes refer to: the cached original when it needs no orientation, else a re-encoded copy."""
    sha, fmt = item["sha256"], item.get("format", "jpeg")
    original = cached_blob(ctx, sha, counters)
    with Image.open(original) as im:
        orientation = _orientation(im)
        raw_size = im.size
    if orientation == 1 and fmt in _EXT:
        if raw_size != (item["width"], item["height"]):
            raise Conflict(
                f"sample {item['sample_id']}: image is {raw_size[0]}x{raw_size[1]} but the manifest says "
                f"{item['width']}x{item['height']}",
                code="size_mismatch",
            )
        return original
    ext = ".png" if fmt == "png" else ".jpg"  # lossless stays lossless; the rest becomes JPEG
    target = _oriented_path(ctx, sha, ext)
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(original) as im:
        oriented = ImageOps.exif_transpose(im) or im
        if oriented.size != (item["width"], item["height"]):
            raise Conflict(
                f"sample {item['sample_id']}: oriented image is {oriented.size[0]}x{oriented.size[1]} but "
                f"the manifest says {item['width']}x{item['height']}",
                code="size_mismatch",
            )
        fd, tmp_name = tempfile.mkstemp(prefix=".tmp-", suffix=ext, dir=target.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            if ext == ".png":
                oriented.save(tmp, format="PNG")
            else:  # no exif= argument: the re-encoded file carries no orientation tag to apply twice
                oriented.convert("RGB").save(tmp, format="JPEG", quality=95)
            _publish(tmp, target)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
    if counters is not None:
        counters["reencoded"] += 1
    return target


def oriented_image_path(ctx: Context, item: Mapping[str, Any]) -> Path:
    """For previews and evaluation: a readable local file of a manifest item's oriented image."""
    return prepared_image(ctx, item)


def _place(source: Path, dest: Path, counters: Counter[str]) -> None:
    """Hard-link when the cache and the export share a file system, else copy."""
    with contextlib.suppress(FileNotFoundError):
        dest.unlink()
    try:
        os.link(source, dest)
        counters["linked"] += 1
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EACCES):
            raise
        shutil.copyfile(source, dest)
        counters["copied"] += 1


# --- selection and statistics ---------------------------------------------------------------------


def apply_train_caps(
    items: Sequence[Mapping[str, Any]], caps: Mapping[str, int]
) -> tuple[list[Mapping[str, Any]], int]:
    """Keep at most about ``caps[c]`` TRAIN images for each capped class ``c`` among the images
    whose classes are all capped; images with any other class, negatives, and val/test stay.
    Images are taken in order of their SHA-256 (content, not upload order, which follows cameras),
    so a cap selects the same images on every machine."""
    if not caps:
        return list(items), 0
    for cls, n in caps.items():
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise Invalid(f"train cap for {cls!r} must be a non-negative integer, not {n!r}", code="invalid_caps")
    capped = set(caps)
    taken: Counter[str] = Counter()
    drop: set[int] = set()
    candidates = [
        it for it in items if it["split"] == "train" and it["boxes"] and {b["class_key"] for b in it["boxes"]} <= capped
    ]
    for it in sorted(candidates, key=lambda it: (it["sha256"], it["sample_id"])):
        classes = {b["class_key"] for b in it["boxes"]}
        if any(taken[c] < caps[c] for c in classes):
            taken.update(classes)
        else:
            drop.add(it["sample_id"])
    return [it for it in items if it["sample_id"] not in drop], len(drop)


def _percentiles(values: list[float], digits: int = 1) -> dict[str, float] | None:
    if not values:
        return None
    p = np.percentile(np.asarray(values, np.float64), [10, 50, 90])
    return {"p10": round(float(p[0]), digits), "p50": round(float(p[1]), digits), "p90": round(float(p[2]), digits)}


def export_stats(items: Sequence[Mapping[str, Any]], classes: Sequence[str]) -> dict[str, Any]:
    """Class balance and box sizes per split and class, to judge a dataset before spending hours
    training on it: images, instances, share of instances, and box size percentiles (sqrt of area,
    in pixels and as a fraction of the image's sqrt area) plus the count of COCO-small boxes."""
    splits: dict[str, dict[str, Any]] = {}
    px: dict[tuple[str, str], list[float]] = defaultdict(list)
    rel: dict[tuple[str, str], list[float]] = defaultdict(list)
    imgs: Counter[tuple[str, str]] = Counter()
    widths: dict[str, list[int]] = defaultdict(list)
    heights: dict[str, list[int]] = defaultdict(list)
    for it in items:
        split = it["split"]
        s = splits.setdefault(split, {"images": 0, "instances": 0, "negatives": 0})
        s["images"] += 1
        s["instances"] += len(it["boxes"])
        s["negatives"] += not it["boxes"]
        widths[split].append(int(it["width"]))
        heights[split].append(int(it["height"]))
        diag = float(np.sqrt(it["width"] * it["height"]))
        for cls in {b["class_key"] for b in it["boxes"]}:
            imgs[(cls, split)] += 1
        for b in it["boxes"]:
            size = float(np.sqrt(max(0.0, b["x2"] - b["x1"]) * max(0.0, b["y2"] - b["y1"])))
            px[(b["class_key"], split)].append(size)
            rel[(b["class_key"], split)].append(size / diag if diag else 0.0)
    for split, s in splits.items():
        s["image_width"] = _percentiles([float(w) for w in widths[split]])
        s["image_height"] = _percentiles([float(h) for h in heights[split]])
    per_class: dict[str, dict[str, Any]] = {}
    for cls in classes:
        entry: dict[str, Any] = {}
        for split in [s for s in SPLITS if s in splits]:
            sizes = px.get((cls, split), [])
            total = splits[split]["instances"]
            entry[split] = {
                "images": imgs[(cls, split)],
                "instances": len(sizes),
                "share": round(len(sizes) / total, 4) if total else 0.0,
                "box_px": _percentiles(sizes),
                "box_rel": _percentiles(rel.get((cls, split), []), digits=4),
                "small": sum(1 for v in sizes if v < SMALL_PX),
            }
        per_class[cls] = entry
    return {"splits": {s: splits[s] for s in SPLITS if s in splits}, "classes": per_class}


def stats_table(stats: Mapping[str, Any], title: str = "dataset") -> Table:
    from rich.table import Table

    table = Table(title=title)
    for col in ("class", "split", "images", "instances", "share", "box px p10/p50/p90", "small"):
        table.add_column(col, justify="left" if col in ("class", "split") else "right")
    for cls, per_split in stats["classes"].items():
        for split, v in per_split.items():
            p = v["box_px"]
            sizes = f"{p['p10']:.0f}/{p['p50']:.0f}/{p['p90']:.0f}" if p else "-"
            table.add_row(
                cls, split, str(v["images"]), str(v["instances"]), f"{v['share']:.1%}", sizes, str(v["small"])
            )
    for split, v in stats["splits"].items():
        table.add_row("[b]all[/b]", split, str(v["images"]), str(v["instances"]), "", "", f"{v['negatives']} neg")
    return table


# --- export ----------------------------------------------------------------------------------------


#: Beside data.yaml: image file name -> classes its labels leave out (see versions.make_version).
UNLABELED_FILE = "unlabeled_classes.json"


def _file_name(item: Mapping[str, Any], path: Path) -> str:
    """Traceable (sample id, hash prefix) and with the suffix readers pick images by; cached
    originals have none, re-encoded images carry theirs."""
    suffix = path.suffix or _EXT.get(item.get("format", "jpeg"), ".jpg")
    return f"{int(item['sample_id']):08d}_{item['sha256'][:12]}{suffix}"


def export_version(
    ctx: Context,
    dv: DatasetVersion,
    fmt: Literal["yolo", "coco"] | str,
    out_dir: str | Path,
    *,
    train_caps: Mapping[str, int] | None = None,
    overwrite: bool = True,
    console: Console | None = None,
    workers: int = 4,
) -> ExportStats:
    """Write ``dv`` as YOLO (``images/<split>``, ``labels/<split>``, ``data.yaml``) or COCO (one
    ``<split>.json`` per split, images in ``images/``), plus ``stats.json``. ``train_caps`` (class
    key -> max images) trims train images that hold only capped classes (see apply_train_caps)."""
    if fmt not in FORMATS:
        raise Invalid(f"format must be one of {', '.join(FORMATS)}, not {fmt!r}", code="invalid_format")
    start = time.perf_counter()
    manifest = load_manifest(ctx, dv)
    classes: list[str] = list(manifest["classes"])
    if train_caps:
        unknown = set(train_caps) - set(classes)
        if unknown:
            raise Invalid(
                f"train_caps name classes not in this dataset: {', '.join(sorted(unknown))}", code="invalid_caps"
            )
    items, capped = apply_train_caps(manifest["items"], train_caps or {})
    counters: Counter[str] = Counter()

    # Fetch and orient in parallel (store reads are I/O bound); keep manifest order for the output.
    def prepare(it: Mapping[str, Any]) -> tuple[Path, Counter[str]]:
        local: Counter[str] = Counter()
        return prepared_image(ctx, it, local), local

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        prepared = list(pool.map(prepare, items))
    for _, local in prepared:
        counters.update(local)

    def placer(source: Path) -> Callable[[Path], None]:
        return lambda dest: _place(source, dest, counters)

    export_items = [
        ExportItem(
            _file_name(it, path),
            placer(path),
            int(it["width"]),
            int(it["height"]),
            [Box(b["class_key"], b["x1"], b["y1"], b["x2"], b["y2"]) for b in it["boxes"]],
            it["split"],
        )
        for it, (path, _) in zip(items, prepared, strict=True)
    ]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = ExportStats(dv.id, dv.name, fmt, out, [], capped_images=capped)
    if fmt == "yolo":
        r = write_yolo(export_items, out, classes, overwrite=overwrite)
        result.paths.append(r.path)
        unlabeled = {
            e.file_name: list(it["unlabeled_classes"])
            for e, it in zip(export_items, items, strict=True)
            if it.get("unlabeled_classes")
        }
        if unlabeled:
            # Not part of the YOLO format: hazardlens' trainer reads it to mask these classes' loss
            # on these images (absent boxes there mean "not labelled", not "nothing here").
            (out / UNLABELED_FILE).write_text(json.dumps(unlabeled, ensure_ascii=False, indent=0), encoding="utf-8")
            result.paths.append(out / UNLABELED_FILE)
        result.images, result.boxes, result.negatives, result.dropped_boxes = (
            r.images,
            r.boxes,
            r.negatives,
            r.dropped_boxes,
        )
    else:
        stale = [out / "images", *(out / f"{s}.json" for s in SPLITS)]
        if any(p.exists() for p in stale):
            if not overwrite:
                raise Conflict(f"{out} already holds a COCO export; pass overwrite=True to replace it")
            for p in stale:
                if p.is_dir():
                    shutil.rmtree(p)
                elif p.exists():
                    p.unlink()
        for split in SPLITS:
            chunk = [e for e in export_items if e.split == split]
            if not chunk:
                continue
            r = write_coco(chunk, out / f"{split}.json", classes)
            result.paths.append(r.path)
            result.images += r.images
            result.boxes += r.boxes
            result.negatives += r.negatives
            result.dropped_boxes += r.dropped_boxes
    result.store_reads = counters["store_reads"]
    result.cache_hits = counters["cache_hits"]
    result.reencoded = counters["reencoded"]
    result.linked = counters["linked"]
    result.copied = counters["copied"]
    result.stats = {
        "version_id": dv.id,
        "name": dv.name,
        "format": fmt,
        "names": classes,
        "taxonomy_version": manifest["taxonomy_version"],
        "train_caps": dict(train_caps or {}),
        "capped_images": capped,
        **export_stats(items, classes),
    }
    (out / "stats.json").write_text(json.dumps(result.stats, ensure_ascii=False, indent=1), encoding="utf-8")
    result.paths.append(out / "stats.json")
    result.seconds = round(time.perf_counter() - start, 3)
    if console is not None:
        console.print(stats_table(result.stats, title=f"{dv.name}@{dv.id[:12]} ({fmt})"))
    return result


__all__ = [
    "FORMATS",
    "UNLABELED_FILE",
    "ExportStats",
    "apply_train_caps",
    "cached_blob",
    "export_stats",
    "export_version",
    "oriented_image_path",
    "prepared_image",
    "stats_table",
]
