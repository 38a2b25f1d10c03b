"""COCO detection json (``images``, ``annotations``, ``categories``; boxes ``[x, y, w, h]`` pixels).

Exports in the wild (Roboflow, CVAT, home-made scripts) bend the format: numbers as strings, ids as
strings, a parent category no box uses, sizes that disagree with the file. The reader repairs what
has one sensible meaning and refuses the rest, each with a reason in the report.
Ignored fields: ``area`` (derived from the box), ``license``, ``date_captured``, ``extra``, urls.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from hazardlens.detections import Box
from hazardlens.errors import Invalid, NotFound
from hazardlens.safejson import load_user_json_file

from ._util import (
    check_export,
    check_size,
    checked_box,
    clip_for_export,
    dedupe,
    fmt_num,
    list_images,
    readable_size,
    safe_relative,
    to_number,
    write_image,
)
from .records import ExportItem, ExportResult, ImportRecord, ImportReport, ReadResult

IdKey = int | str


def _id(value: object) -> tuple[IdKey | None, bool]:
    """Ids are compared after normalising, so ``"12"`` and ``12`` name the same image."""
    if isinstance(value, bool):
        return None, False
    if isinstance(value, int):
        return value, False
    if isinstance(value, float):
        return (int(value), False) if value.is_integer() else (None, False)
    if isinstance(value, str) and value.strip():
        s = value.strip()
        try:
            return int(s), True
        except ValueError:
            return s, False
    return None, False


def _load(path: Path) -> dict[str, Any]:
    data = load_user_json_file(path)  # bounded; deep nesting refused, not a RecursionError
    if not isinstance(data, dict):
        raise Invalid(f"{path}: expected a COCO object with images/annotations/categories")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            # Without annotations every image would come in as a verified negative: refuse instead.
            raise Invalid(f"{path}: no '{key}' list; not a COCO detection file")
    return data


def _bbox_from_segmentation(seg: object) -> list[float] | None:
    if not isinstance(seg, list) or not seg:
        return None
    polys = seg if isinstance(seg[0], list) else [seg]
    xs: list[float] = []
    ys: list[float] = []
    for poly in polys:
        if not isinstance(poly, list) or len(poly) < 6 or len(poly) % 2:
            return None
        nums = [to_number(v)[0] for v in poly]
        if any(n is None for n in nums):
            return None
        xs += [n for n in nums[0::2] if n is not None]
        ys += [n for n in nums[1::2] if n is not None]
    return [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]


def _read_categories(data: dict[str, Any], report: ImportReport) -> dict[IdKey, str]:
    categories: dict[IdKey, str] = {}
    for i, cat in enumerate(data["categories"]):
        where = f"categories[{i}]"
        if not isinstance(cat, dict):
            report.warn("bad_category", where, "category is not an object; skipped")
            continue
        cid, _ = _id(cat.get("id"))
        name = cat.get("name")
        if isinstance(name, int | float) and not isinstance(name, bool):
            report.repair("string_value", where, f"category name {name!r} given as a number")
            name = fmt_num(float(name))
        if cid is None or not isinstance(name, str) or not name.strip():
            report.warn("bad_category", where, f"category without usable id/name ({cat!r:.80}); skipped")
            continue
        if cid in categories:
            report.warn("duplicate_category", where, f"category id {cid} defined twice; first kept")
            continue
        categories[cid] = name.strip()
    return categories


class _Images:
    """The images of the file as read: records by id, ids refused, file names seen (to refuse repeats)."""

    def __init__(self, root: Path, report: ImportReport) -> None:
        self.root = root
        self.report = report
        self.records: dict[IdKey, ImportRecord] = {}
        self.refused_ids: set[IdKey] = set()
        self.names_seen: dict[str, IdKey] = {}

    def read(self, entries: list[Any]) -> None:
        for i, im in enumerate(entries):
            where = f"images[{i}]"
            if not isinstance(im, dict):
                self.report.refuse_image("bad_image", where, "image entry is not an object")
                continue
            iid, id_was_str = _id(im.get("id"))
            if iid is None:
                self.report.refuse_image("bad_id", where, f"image id {im.get('id')!r} is not usable")
                continue
            where = f"image {iid}"
            if id_was_str:
                self.report.repair("string_id", where, f"image id {im.get('id')!r} given as string")
            if iid in self.records or iid in self.refused_ids:
                self.report.refuse_image(
                    "duplicate_id", where, f"image id {iid} appears again ({im.get('file_name')!r}); first entry kept"
                )
                continue
            record = self._record(im, iid, where)
            if record is None:
                self.refused_ids.add(iid)
            else:
                self.records[iid] = record

    def _record(self, im: dict[str, Any], iid: IdKey, where: str) -> ImportRecord | None:
        """The image's record, or None after reporting why it is refused (or missing)."""
        report = self.report
        rel = self._file_name(im.get("file_name"), where)
        if rel is None:
            return None
        if rel in self.names_seen:
            report.refuse_image(
                "duplicate_file_name",
                where,
                f"file {rel!r} already listed as image {self.names_seen[rel]}; its boxes refused",
            )
            return None
        self.names_seen[rel] = iid
        path = self.root / rel
        if not path.is_file() and (self.root / PurePosixPath(rel).name).is_file():
            path = self.root / PurePosixPath(rel).name
        if not path.is_file():
            report.missing_files.append(rel)
            return None
        size = readable_size(report, path, where, rel)
        if size is None:
            return None
        width, height = size
        record = ImportRecord(path, rel, width, height)
        check_size(report, record, im.get("width"), im.get("height"), where)
        return record

    def _file_name(self, raw_name: object, where: str) -> str | None:
        """The image's path relative to the images folder (a path outside it reduced to its name)."""
        if not isinstance(raw_name, str) or not raw_name.strip():
            self.report.refuse_image("bad_file_name", where, f"file_name {raw_name!r} is not usable")
            return None
        rel = safe_relative(raw_name.strip())
        if rel is None:
            base = PurePosixPath(raw_name.strip().replace("\\", "/")).name
            rel = safe_relative(base)
            if rel is None:
                self.report.refuse_image("unsafe_path", where, f"file_name {raw_name!r} points outside the folder")
                return None
            self.report.repair("path_stripped", where, f"file_name {raw_name!r} reduced to {rel!r}")
        return rel


def _bbox(ann: dict[str, Any], where: str, report: ImportReport) -> tuple[float, float, float, float] | None:
    """The annotation's [x, y, w, h] as numbers (repaired when it can be), or None after refusing it."""
    bbox = ann.get("bbox")
    if not (isinstance(bbox, list | tuple) and len(bbox) == 4):
        derived = _bbox_from_segmentation(ann.get("segmentation"))
        if derived is None:
            report.refuse_box("bad_bbox", where, f"bbox {bbox!r:.60} is not [x, y, w, h]")
            return None
        report.repair("bbox_from_segmentation", where, "bbox missing; taken from the segmentation polygon")
        bbox = derived
    parsed = [to_number(v) for v in bbox]
    if any(n is None for n, _ in parsed):
        report.refuse_box("bad_bbox", where, f"bbox {list(bbox)!r:.60} holds a value that is not a number")
        return None
    strings = [v for v, (_, s) in zip(bbox, parsed, strict=True) if s]
    if strings:
        shown = ", ".join(f'"{v}"' for v in strings)
        report.repair(
            "string_bbox",
            where,
            f"bbox value{'s' if len(strings) > 1 else ''} {shown} given as string{'s' if len(strings) > 1 else ''}",
        )
    x, y, w, h = (n for n, _ in parsed)
    assert x is not None and y is not None and w is not None and h is not None
    return x, y, w, h


def _read_annotations(
    data: dict[str, Any], categories: dict[IdKey, str], images: _Images, report: ImportReport
) -> set[IdKey]:
    """Add each annotation's box to its image's record; returns the category ids used."""
    used_categories: set[IdKey] = set()
    ann_ids: set[IdKey] = set()
    for i, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict):
            report.refuse_box("bad_annotation", f"annotations[{i}]", "annotation is not an object")
            continue
        aid, _ = _id(ann.get("id"))
        where = f"annotation {aid}" if aid is not None else f"annotations[{i}]"
        if aid is not None:
            if aid in ann_ids:
                report.warn("duplicate_annotation_id", where, f"annotation id {aid} used twice")
            ann_ids.add(aid)
        cid, _ = _id(ann.get("category_id"))
        if cid in categories:
            used_categories.add(cid)
        iid, _ = _id(ann.get("image_id"))
        record = images.records.get(iid) if iid is not None else None
        if record is None:
            if iid in images.refused_ids:
                report.refuse_box("image_refused", where, f"its image {iid} was refused or is missing")
            else:
                report.refuse_box("missing_image", where, f"image id {ann.get('image_id')!r} is not in images")
            continue
        box = _annotation_box(ann, cid, categories, record, where, report)
        if box is not None:
            record.boxes.append(box)
    return used_categories


def _annotation_box(
    ann: dict[str, Any],
    cid: IdKey | None,
    categories: dict[IdKey, str],
    record: ImportRecord,
    where: str,
    report: ImportReport,
) -> Box | None:
    """The annotation's box, checked; None when it is refused (reported, and counted on the record)."""
    if cid is None or cid not in categories:
        report.refuse_box("unknown_category", where, f"category id {ann.get('category_id')!r} is not defined")
    elif to_number(ann.get("iscrowd", 0))[0] == 1:
        report.refuse_box("crowd", where, "iscrowd=1 marks a crowd region, not one object")
    elif (xywh := _bbox(ann, where, report)) is not None:
        x, y, w, h = xywh
        assert record.width is not None and record.height is not None
        # checked_box reports (and counts) what it refuses itself
        return checked_box(
            report,
            record,
            categories[cid],
            x,
            y,
            x + w,
            y + h,
            record.width,
            record.height,
            f"{where} ({record.file_name})",
        )
    record.refused_boxes += 1
    return None


def read_coco(annotations_json: Path | str, images_dir: Path | str | None = None) -> ReadResult:
    """Read a COCO detection file; ``images_dir`` defaults to the json's folder (Roboflow layout)."""
    ann_path = Path(annotations_json)
    root = Path(images_dir) if images_dir is not None else ann_path.parent
    if not root.is_dir():
        raise NotFound(f"{root}: images folder not found")
    data = _load(ann_path)
    report = ImportReport(format="coco", source=str(ann_path))
    categories = _read_categories(data, report)
    images = _Images(root, report)
    images.read(data["images"])
    used_categories = _read_annotations(data, categories, images, report)

    for cid, name in categories.items():
        if cid not in used_categories:
            report.unused_categories.append(name)
            report.warn("unused_category", f"category {cid}", f"{name!r} is never used by any annotation")

    listed = {r.image_path.resolve() for r in images.records.values()}
    for path in list_images(root):
        if path.resolve() not in listed and path.relative_to(root).as_posix() not in images.names_seen:
            report.warn("unlisted_file", path.relative_to(root).as_posix(), "image file not listed in the json")

    out = list(images.records.values())
    for record in out:
        dedupe(report, record)
    report.finish(out)
    return ReadResult(out, report)


def write_coco(
    items: Iterable[ExportItem], out_path_or_dir: Path | str, class_names: list[str], *, write_images: bool = True
) -> ExportResult:
    """Write one COCO json. A folder gets ``annotations.json`` plus ``images/``; a ``.json`` path
    gets its images in ``images/`` beside it. Category ids run from 1 in ``class_names`` order
    (0 is the conventional background/unused id)."""
    items = check_export(items, class_names, need_images=write_images)
    out = Path(out_path_or_dir)
    json_path = out if out.suffix.lower() == ".json" else out / "annotations.json"
    images_dir = json_path.parent / "images"
    cat_ids = {name: i + 1 for i, name in enumerate(class_names)}
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    negatives = dropped = 0
    for image_id, item in enumerate(items, start=1):
        rel = safe_relative(item.file_name)
        assert rel is not None  # check_export made sure
        if item.boxes is None:
            raise Invalid(f"{rel}: not labelled; COCO cannot tell unlabelled from negative")
        images.append({"id": image_id, "file_name": rel, "width": int(item.width), "height": int(item.height)})
        for box in item.boxes:
            clipped = clip_for_export(box, item.width, item.height)
            if clipped is None:
                dropped += 1
                continue
            w, h = clipped.x2 - clipped.x1, clipped.y2 - clipped.y1
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": cat_ids[clipped.class_key],
                    "bbox": [round(clipped.x1, 2), round(clipped.y1, 2), round(w, 2), round(h, 2)],
                    "area": round(w * h, 2),
                    "iscrowd": 0,
                    "segmentation": [],
                }
            )
        negatives += not item.boxes
        if write_images:
            write_image(item.image_bytes_path, images_dir / rel)
    doc = {
        "info": {"description": "hazardlens export", "date_created": datetime.now(UTC).isoformat()},
        "licenses": [],
        "categories": [{"id": i, "name": n, "supercategory": "none"} for n, i in cat_ids.items()],
        "images": images,
        "annotations": annotations,
    }
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(doc, ensure_ascii=False, indent=1), encoding="utf-8")
    return ExportResult(json_path, len(images), len(annotations), negatives, dropped)
