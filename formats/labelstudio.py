"""Label Studio tasks json (``rectanglelabels`` results, coordinates in percent of the image).

A task with an annotation whose result is empty is a verified negative; a task with no (or only
cancelled) annotations was never labelled and is refused, never imported as a negative.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple
from urllib.parse import parse_qs, quote, unquote, urlparse

from hazardlens.detections import Box
from hazardlens.errors import Invalid, NotFound
from hazardlens.safejson import load_user_json_file

from ._util import (
    IMAGE_SUFFIXES,
    check_export,
    check_size,
    checked_box,
    clip_for_export,
    dedupe,
    readable_size,
    to_number,
)
from .records import ExportItem, ExportResult, ImportRecord, ImportReport, ReadResult

_UPLOAD_PREFIX = re.compile(r"^[0-9a-f]{8}-(.+)$")  # Label Studio renames uploads to "<8 hex>-name"


def _image_ref(data: dict[str, Any], image_key: str) -> str | None:
    value = data.get(image_key)
    if isinstance(value, str) and value.strip():
        return value.strip()
    for v in data.values():  # a project that called its image field something else
        if isinstance(v, str) and PurePosixPath(urlparse(v).path).suffix.lower() in IMAGE_SUFFIXES:
            return v.strip()
    return None


def _resolve(root: Path, ref: str) -> Path | None:
    """Map an image URL (upload, local-files ``?d=``, http, s3) onto a file under ``root``: try the
    full path, then ever shorter tails of it, then the name without the upload prefix."""
    parsed = urlparse(ref)
    d = parse_qs(parsed.query).get("d")
    raw = d[0] if d else unquote(parsed.path)
    parts = [p for p in raw.replace("\\", "/").split("/") if p not in ("", ".", "..")]
    root_resolved = root.resolve()
    for i in range(len(parts)):
        cand = root.joinpath(*parts[i:])
        if cand.is_file() and cand.resolve().is_relative_to(root_resolved):
            return cand
    if parts and (m := _UPLOAD_PREFIX.match(parts[-1])) and (root / m.group(1)).is_file():
        return root / m.group(1)
    return None


def _pick_annotation(task: dict[str, Any], report: ImportReport, where: str) -> dict[str, Any] | None:
    raw = task.get("annotations")
    if raw is None:
        raw = task.get("completions")  # Label Studio < 1.0
    anns = [a for a in (raw if isinstance(raw, list) else []) if isinstance(a, dict) and not a.get("was_cancelled")]
    if not anns:
        return None
    if len(anns) > 1:
        report.warn("several_annotations", where, f"{len(anns)} annotations; the latest is used")
        anns.sort(key=lambda a: str(a.get("updated_at") or a.get("created_at") or ""))
    return anns[-1]


class _Geometry(NamedTuple):
    label: str | None
    corners: tuple[float, float, float, float] | None  # pixels; None when refused
    note: str | None  # refusal reason, or the repair made (polygon/rotation -> box)
    note_kind: str | None = None


def _result_box(item: dict[str, Any], width: int, height: int) -> _Geometry:
    kind = item.get("type")
    value = item.get("value")
    if not isinstance(value, dict):
        return _Geometry(None, None, "result has no value")
    labels = value.get(kind) if isinstance(kind, str) else None
    if not isinstance(labels, list) or not labels:
        return _Geometry(None, None, f"{kind} result has no label")
    if len(labels) > 1:
        return _Geometry(None, None, f"result carries several labels {labels!r}; which one is meant is unknown")
    label = labels[0] if isinstance(labels[0], str) else None
    if kind == "rectanglelabels":
        nums = [to_number(value.get(k))[0] for k in ("x", "y", "width", "height")]
        if any(n is None for n in nums):
            return _Geometry(label, None, "rectangle lacks numeric x/y/width/height")
        px, py, pw, ph = (n / 100.0 for n in nums if n is not None)
        x, y, w, h = px * width, py * height, pw * width, ph * height
        rotation = to_number(value.get("rotation", 0))[0] or 0.0
        if not rotation % 360:
            return _Geometry(label, (x, y, x + w, y + h), None)
        # Rotation is clockwise around the top-left corner; keep the axis-aligned hull.
        a = math.radians(rotation)
        cos, sin = math.cos(a), math.sin(a)
        pts = [(x + dx * cos - dy * sin, y + dx * sin + dy * cos) for dx, dy in ((0, 0), (w, 0), (w, h), (0, h))]
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        return _Geometry(
            label,
            (min(xs), min(ys), max(xs), max(ys)),
            f"rectangle rotated {rotation:g} degrees replaced by its axis-aligned hull",
            "rotated_box",
        )
    if kind == "polygonlabels":
        points = value.get("points")
        if not isinstance(points, list) or len(points) < 3:
            return _Geometry(label, None, "polygon has fewer than 3 points")
        try:
            xs = [float(p[0]) / 100.0 * width for p in points]
            ys = [float(p[1]) / 100.0 * height for p in points]
        except (TypeError, ValueError, IndexError):
            return _Geometry(label, None, "polygon points are not numbers")
        return _Geometry(
            label, (min(xs), min(ys), max(xs), max(ys)), "polygon replaced by its bounding box", "polygon_to_box"
        )
    return _Geometry(label, None, f"result type {kind!r} is not a box")


def result_boxes(
    results: object, width: int, height: int
) -> tuple[list[tuple[str, tuple[float, float, float, float]]], list[str]]:
    """One annotation's ``result`` list as ``(label, pixel corners)`` pairs, and a message per result
    that is not a box (non-box results such as choices are skipped silently). What the Label Studio
    webhook stores; the same geometry rules as :func:`read_labelstudio`."""
    if not isinstance(results, list):
        return [], ["annotation result is not a list"]
    boxes: list[tuple[str, tuple[float, float, float, float]]] = []
    problems: list[str] = []
    for j, item in enumerate(results, start=1):
        if not isinstance(item, dict):
            problems.append(f"result {j}: not an object")
            continue
        if item.get("type") in ("choices", "textarea", "rating", "taxonomy", "relation"):
            continue
        geometry = _result_box(item, width, height)
        if geometry.corners is None or not geometry.label:
            problems.append(f"result {j}: {geometry.note or 'no label'}")
            continue
        boxes.append((geometry.label, geometry.corners))
    return boxes, problems


def read_labelstudio(tasks_json: Path | str, images_dir: Path | str, *, image_key: str = "image") -> ReadResult:
    path = Path(tasks_json)
    root = Path(images_dir)
    if not root.is_dir():
        raise NotFound(f"{root}: images folder not found")
    data = load_user_json_file(path)  # bounded; deep nesting refused, not a RecursionError
    if isinstance(data, dict):
        data = data.get("tasks", [data])
    if not isinstance(data, list):
        raise Invalid(f"{path}: expected a list of Label Studio tasks")
    report = ImportReport(format="labelstudio", source=str(path))
    records: list[ImportRecord] = []
    seen: dict[Path, str] = {}
    for i, task in enumerate(data):
        where = f"task {task.get('id')}" if isinstance(task, dict) and task.get("id") is not None else f"tasks[{i}]"
        if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
            report.refuse_image("bad_task", where, "task has no data object")
            continue
        ref = _image_ref(task["data"], image_key)
        if ref is None:
            report.refuse_image("no_image", where, f"task data has no {image_key!r} image reference")
            continue
        annotation = _pick_annotation(task, report, where)
        if annotation is None:
            report.refuse_image("not_annotated", where, "no completed annotation; unlabelled, not a negative")
            continue
        image = _resolve(root, ref)
        if image is None:
            report.missing_files.append(ref)
            continue
        if image in seen:
            report.refuse_image("duplicate_file_name", where, f"{image.name} already imported from {seen[image]}")
            continue
        seen[image] = where
        size = readable_size(report, image, where, image.name)
        if size is None:
            continue
        width, height = size
        record = ImportRecord(image, image.relative_to(root).as_posix(), width, height)
        results = annotation.get("result") or []
        if not isinstance(results, list):
            report.refuse_image("bad_task", where, "annotation result is not a list")
            continue
        size_checked = False
        for j, item in enumerate(results, start=1):
            rwhere = f"{where} result {j}"
            if not isinstance(item, dict):
                report.refuse_box("bad_result", rwhere, "result is not an object")
                record.refused_boxes += 1
                continue
            if item.get("type") in ("choices", "textarea", "rating", "taxonomy", "relation"):
                report.warn("ignored_result", rwhere, f"{item.get('type')} result is not a box; ignored")
                continue
            if not size_checked and ("original_width" in item or "original_height" in item):
                check_size(report, record, item.get("original_width"), item.get("original_height"), where)
                size_checked = True
            geometry = _result_box(item, width, height)
            if geometry.corners is None:
                report.refuse_box("bad_result", rwhere, geometry.note or "not a box")
                record.refused_boxes += 1
                continue
            if geometry.note and geometry.note_kind:
                report.repair(geometry.note_kind, rwhere, geometry.note)
            box = checked_box(report, record, geometry.label or "", *geometry.corners, width, height, rwhere)
            if box is not None:
                record.boxes.append(box)
        dedupe(report, record)
        records.append(record)
    report.finish(records)
    return ReadResult(records, report)


def labelstudio_results(
    boxes: list[Box], width: int, height: int, from_name: str = "label", to_name: str = "image", prefix: str = "r"
) -> tuple[list[dict[str, Any]], int]:
    """Boxes as Label Studio ``rectanglelabels`` results (percent coordinates); also what the ML
    backend's /predict answers. Returns the results and how many boxes fell outside the image."""
    out: list[dict[str, Any]] = []
    dropped = 0
    for box in boxes:
        clipped = clip_for_export(box, width, height)
        if clipped is None:
            dropped += 1
            continue
        result: dict[str, Any] = {
            "id": f"{prefix}{len(out) + 1}",
            "type": "rectanglelabels",
            "from_name": from_name,
            "to_name": to_name,
            "original_width": width,
            "original_height": height,
            "image_rotation": 0,
            "value": {
                "x": clipped.x1 / width * 100.0,
                "y": clipped.y1 / height * 100.0,
                "width": (clipped.x2 - clipped.x1) / width * 100.0,
                "height": (clipped.y2 - clipped.y1) / height * 100.0,
                "rotation": 0,
                "rectanglelabels": [clipped.class_key],
            },
        }
        if clipped.confidence is not None:
            result["score"] = float(clipped.confidence)
        out.append(result)
    return out, dropped


def write_labelstudio(
    items: Iterable[ExportItem],
    out_path: Path | str,
    image_url_prefix: str,
    *,
    model_version: str = "hazardlens",
    from_name: str = "label",
    to_name: str = "image",
) -> ExportResult:
    """Write a tasks json for import into Label Studio. Images are not copied: Label Studio loads
    them from ``image_url_prefix + file_name`` (e.g. ``/data/local-files/?d=samples/``)."""
    items = check_export(items, None, need_images=False)
    tasks: list[dict[str, Any]] = []
    boxes = negatives = dropped = 0
    for item in items:
        url = item.image_url if item.image_url is not None else image_url_prefix + quote(item.file_name, safe="/")
        task: dict[str, Any] = {"data": {**(item.data or {}), to_name: url}}
        if item.boxes is not None:
            result, lost = labelstudio_results(item.boxes, item.width, item.height, from_name, to_name, "a")
            task["annotations"] = [{"result": result}]
            boxes += len(result)
            dropped += lost
            negatives += not item.boxes
        if item.predictions is not None:
            result, _ = labelstudio_results(item.predictions, item.width, item.height, from_name, to_name, "p")
            scores = [r["score"] for r in result if "score" in r]
            prediction: dict[str, Any] = {"model_version": model_version, "result": result}
            if scores:
                prediction["score"] = sum(scores) / len(scores)
            task["predictions"] = [prediction]
        tasks.append(task)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(tasks, ensure_ascii=False, indent=1), encoding="utf-8")
    return ExportResult(out, len(tasks), boxes, negatives, dropped)
