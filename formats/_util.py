"""Checks every reader and writer applies the same way, so that one messy value gets one verdict
whatever the format it came in."""

from __future__ import annotations

import math
import shutil
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from PIL import Image

from hazardlens.detections import Box
from hazardlens.errors import Conflict, Invalid
from hazardlens.imagefiles import DATASET_SUFFIXES, register_heif

from .records import ExportItem, ImageSource, ImportRecord, ImportReport

IMAGE_SUFFIXES = DATASET_SUFFIXES  # the image files a labelled dataset may hold
SPLIT_ALIASES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}

# Overshoot below this many pixels is rounding in the source (0-based vs 1-based, 6-decimal YOLO
# values): clip it quietly instead of filling the report with noise.
CLIP_REPORT_PX = 1.0


def image_size(path: Path) -> tuple[int, int]:
    """Width and height of the EXIF-oriented image, read from the header only (no pixel decode),
    because boxes everywhere in hazardlens are in oriented pixels. Raises on unreadable files."""
    register_heif()  # phone photos arrive as HEIC; without the opener PIL cannot read their size
    with Image.open(path) as im:
        width, height = im.size
        try:
            orientation = im.getexif().get(0x0112)
        except Exception:
            orientation = None
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    return int(width), int(height)


def readable_size(report: ImportReport, path: Path, where: str, name: str | None) -> tuple[int, int] | None:
    """``image_size`` for a reader: an unreadable file is refused in the report (as ``name``) and
    answers None, so one broken image never stops the rest of an import."""
    try:
        return image_size(path)
    except Exception as e:
        report.refuse_image("unreadable", where, f"{name + ': ' if name else ''}not a readable image ({e})")
        return None


def to_number(value: object) -> tuple[float | None, bool]:
    """``(number or None, came_as_string)``. Booleans are refused: ``True`` is not a coordinate."""
    if isinstance(value, bool):
        return None, False
    if isinstance(value, int | float):
        f = float(value)
        return (f if math.isfinite(f) else None), False
    if isinstance(value, str):
        try:
            f = float(value.strip())
        except ValueError:
            return None, True
        return (f if math.isfinite(f) else None), True
    return None, False


def fmt_num(value: float) -> str:
    return f"{value:g}"


def safe_relative(name: str) -> str | None:
    """A relative POSIX path inside the images folder, or None when the name would escape it."""
    if not name or "\x00" in name:
        return None
    p = PurePosixPath(name.replace("\\", "/"))
    parts = [part for part in p.parts if part not in ("", ".")]
    if not parts or p.is_absolute() or ".." in parts or ":" in parts[0]:
        return None
    return "/".join(parts)


def checked_box(
    report: ImportReport,
    record: ImportRecord | None,
    name: object,
    x1: float,
    y1: float,
    x2: float,
    y2: float,
    width: int,
    height: int,
    where: str,
) -> Box | None:
    """The one place a box is accepted, clipped or refused."""

    def refuse(kind: str, message: str) -> None:
        report.refuse_box(kind, where, message)
        if record is not None:
            record.refused_boxes += 1

    class_key = str(name).strip() if isinstance(name, str | int) and not isinstance(name, bool) else ""
    if not class_key:
        refuse("no_class", "box has no class name")
        return None
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
        refuse("bad_bbox", "box coordinate is not a finite number")
        return None
    if x2 <= x1 or y2 <= y1:
        refuse("zero_area", f"box has zero or negative size ({fmt_num(x2 - x1)} x {fmt_num(y2 - y1)} px)")
        return None
    cx1, cy1 = min(max(x1, 0.0), width), min(max(y1, 0.0), height)
    cx2, cy2 = min(max(x2, 0.0), width), min(max(y2, 0.0), height)
    if cx2 <= cx1 or cy2 <= cy1:
        refuse("outside", f"box lies outside the {width}x{height} image")
        return None
    overshoot = max(-x1, -y1, x2 - width, y2 - height)
    if overshoot > CLIP_REPORT_PX:
        report.repair(
            "clipped",
            where,
            f"box clipped to image ({width}x{height}, was {fmt_num(x1)},{fmt_num(y1)},{fmt_num(x2)},{fmt_num(y2)})",
        )
    return Box(class_key, cx1, cy1, cx2, cy2)


def dedupe(report: ImportReport, record: ImportRecord) -> None:
    """Exact duplicate boxes (same class, same corners) are a copy-paste artefact that would
    double-weight one object in training."""
    seen: set[tuple[str, float, float, float, float]] = set()
    kept: list[Box] = []
    for box in record.boxes:
        key = (box.class_key, round(box.x1, 3), round(box.y1, 3), round(box.x2, 3), round(box.y2, 3))
        if key in seen:
            report.repair("duplicate_box", record.file_name, f"exact duplicate {box.class_key} box dropped")
            continue
        seen.add(key)
        kept.append(box)
    record.boxes = kept


def check_size(report: ImportReport, record: ImportRecord, declared_w: object, declared_h: object, where: str) -> None:
    """Compare the size a source declares with the real file; the file wins, because the boxes
    will be drawn on the file."""
    w, w_str = to_number(declared_w)
    h, h_str = to_number(declared_h)
    if declared_w is None and declared_h is None:
        report.repair("size_from_file", where, "image size not given; read from the file")
        return
    if w is None or h is None or w <= 0 or h <= 0:
        report.repair(
            "size_from_file", where, f"image size {declared_w!r} x {declared_h!r} is not usable; read from the file"
        )
        return
    if w_str or h_str:
        report.repair("string_value", where, "image size given as string")
    if (round(w), round(h)) != (record.width, record.height):
        msg = f"declared size {fmt_num(w)}x{fmt_num(h)} differs from the file's {record.width}x{record.height}"
        if (round(w), round(h)) == (record.height, record.width):
            msg += " (swapped: EXIF orientation? boxes may be rotated)"
        record.problems.append(msg)
        report.warn("size_mismatch", where, msg)


def list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


# --- writers ------------------------------------------------------------------------------------
def check_export(items: Iterable[ExportItem], class_names: list[str] | None, need_images: bool) -> list[ExportItem]:
    """Validate everything before the first byte is written, so a failed export leaves nothing
    half-done behind."""
    items = list(items)
    if class_names is not None and (
        len(set(class_names)) != len(class_names) or any(not str(n).strip() for n in class_names)
    ):
        raise Invalid("class_names must be unique, non-empty names")
    known = set(class_names) if class_names is not None else None
    unknown: set[str] = set()
    problems: list[str] = []
    seen: set[tuple[str | None, str]] = set()
    for item in items:
        rel = safe_relative(item.file_name)
        if rel is None:
            problems.append(f"{item.file_name!r}: not a safe relative file name")
            continue
        key = (normalise_split(item.split), rel.lower())
        if key in seen:
            problems.append(f"{rel}: file name used twice in one split")
        seen.add(key)
        if item.width <= 0 or item.height <= 0:
            problems.append(f"{rel}: image size {item.width}x{item.height}")
        if need_images and item.image_bytes_path is None:
            problems.append(f"{rel}: no image to write")
        if known is not None:
            for box in [*(item.boxes or []), *(item.predictions or [])]:
                if box.class_key not in known:
                    unknown.add(box.class_key)
    if unknown:
        problems.append("classes not in class_names: " + ", ".join(sorted(unknown)))
    if problems:
        raise Invalid(
            f"cannot export: {problems[0]}" + (f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""),
            details=problems,
        )
    return items


def normalise_split(split: str | None) -> str | None:
    if split is None:
        return None
    return SPLIT_ALIASES.get(split.strip().lower(), split.strip().lower())


def clip_for_export(box: Box, width: int, height: int) -> Box | None:
    x1, x2 = sorted((min(max(box.x1, 0.0), width), min(max(box.x2, 0.0), width)))
    y1, y2 = sorted((min(max(box.y1, 0.0), height), min(max(box.y2, 0.0), height)))
    if x2 <= x1 or y2 <= y1:
        return None
    return Box(box.class_key, x1, y1, x2, y2, box.confidence)


def write_image(source: ImageSource, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    if source is None:
        return
    if isinstance(source, Path | str):
        shutil.copyfile(source, dest)
    else:
        source(dest)


def clear_previous_export(out: Path, ours: Iterable[Path], fmt: str, overwrite: bool) -> None:
    """Remove the files and folders an earlier export of ``fmt`` wrote to ``out`` when ``overwrite``
    says so; refuse otherwise, so an export never mixes two versions' files (nothing else in ``out``
    is touched)."""
    paths = list(ours)
    if not any(p.exists() for p in paths):
        return
    if not overwrite:
        raise Conflict(f"{out} already holds a {fmt} export; pass overwrite=True to replace it")
    for p in paths:
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
