"""CVAT for images 1.1 XML (``annotations.xml`` beside ``images/``), the format CVAT exports and
imports as "CVAT for images 1.1".

Boxes are ``<box label xtl ytl xbr ybr>`` in 0-based pixels of the image as CVAT shows it (EXIF
orientation applied, like hazardlens' boxes). A ``<polygon>`` or ``<polyline>`` becomes its bounding
box (reported); ``<points>``, ``<mask>``, ``<ellipse>``, ``<cuboid>`` and ``<skeleton>`` are not boxes and
are refused one by one. An ``<image>`` element with no shapes is a verified negative (CVAT lists every
image of the task; an image it does not list is reported as unlisted). Boxes whose label the
``<meta>`` does not declare are read under their label and reported (``unknown_label``), so the
class map decides about them like about any other source name.

The file comes from users: it is parsed with defusedxml (no entities, no DTDs, no external
references) after a size check, and the number of images and shapes is bounded.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring

from hazardlens.errors import Invalid, NotFound, TooLarge

from ._util import (
    check_export,
    check_size,
    checked_box,
    clip_for_export,
    dedupe,
    list_images,
    readable_size,
    safe_relative,
    to_number,
    write_image,
)
from .records import ExportItem, ExportResult, ImportRecord, ImportReport, ReadResult

#: Far above a real CVAT task (a 10,000-image task with 50 boxes each is ~60 MB of XML).
MAX_XML_BYTES = 256 << 20
MAX_IMAGES = 200_000
MAX_SHAPES_PER_IMAGE = 2000  # as many boxes as one revision may hold
_NOT_BOXES = ("points", "mask", "ellipse", "cuboid", "skeleton", "tag")


def _parse(path: Path) -> ET.Element:
    try:
        size = path.stat().st_size
    except FileNotFoundError as e:
        raise NotFound(f"{path}: no such file") from e
    if size > MAX_XML_BYTES:
        raise TooLarge(
            f"{path.name} is {size:,} bytes; a CVAT file may hold at most {MAX_XML_BYTES:,}", code="file_too_large"
        )
    try:
        top = fromstring(path.read_bytes(), forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except (ET.ParseError, DefusedXmlException, OSError, ValueError) as e:
        raise Invalid(f"{path.name}: not readable CVAT XML ({e})", code="invalid_format") from e
    if top.tag != "annotations":
        raise Invalid(
            f"{path.name}: root element is <{top.tag}>, not <annotations>; not CVAT for images XML",
            code="invalid_format",
        )
    return top


def _declared_labels(top: ET.Element) -> set[str] | None:
    """Label names of the task or project meta; None when the file declares none."""
    names = {(el.text or "").strip() for el in top.iterfind("meta/*/labels/label/name")}
    names.discard("")
    return names or None


def _find_image(images_dir: Path, name: str) -> Path | None:
    rel = safe_relative(name)
    if rel is None:  # an absolute path from the labeller's PC: keep the base name
        rel = safe_relative(PurePosixPath(name.replace("\\", "/")).name)
    if rel is None:
        return None
    root = images_dir.resolve()
    for cand in (images_dir / rel, images_dir / PurePosixPath(rel).name):
        if cand.is_file() and cand.resolve().is_relative_to(root):
            return cand
    return None


def _shape_corners(shape: ET.Element) -> tuple[tuple[float, float, float, float] | None, str | None]:
    """(pixel corners, refusal or repair note)."""
    if shape.tag == "box":
        values = [to_number(shape.get(k))[0] for k in ("xtl", "ytl", "xbr", "ybr")]
        if any(v is None for v in values):
            return None, "box lacks numeric xtl/ytl/xbr/ybr"
        x1, y1, x2, y2 = (v for v in values if v is not None)
        return (x1, y1, x2, y2), None
    points = (shape.get("points") or "").strip()
    try:
        pairs = [tuple(float(c) for c in p.split(",")) for p in points.split(";") if p.strip()]
    except ValueError:
        return None, f"{shape.tag} points are not numbers"
    if len(pairs) < 2 or any(len(p) != 2 for p in pairs):
        return None, f"{shape.tag} has fewer than 2 points"
    xs, ys = [p[0] for p in pairs], [p[1] for p in pairs]
    return (min(xs), min(ys), max(xs), max(ys)), f"{shape.tag} replaced by its bounding box"


def read_cvat(annotations_xml: Path | str, images_dir: Path | str | None = None) -> ReadResult:
    """Read a CVAT for images 1.1 file; images default to ``images/`` beside it (CVAT's export
    layout), else the file's folder."""
    path = Path(annotations_xml)
    if images_dir is None:
        images_dir = path.parent / "images" if (path.parent / "images").is_dir() else path.parent
    root = Path(images_dir)
    if not root.is_dir():
        raise NotFound(f"{root}: images folder not found")
    top = _parse(path)
    declared = _declared_labels(top)
    report = ImportReport(format="cvat", source=str(path))
    records: list[ImportRecord] = []
    used: set[Path] = set()
    elements = top.findall("image")
    if len(elements) > MAX_IMAGES:
        raise TooLarge(
            f"{path.name} lists {len(elements):,} images; at most {MAX_IMAGES:,} per file", code="file_too_large"
        )
    used_labels: set[str] = set()
    for el in elements:
        name = (el.get("name") or "").strip()
        where = f"image {el.get('id', '?')} ({name})"
        if not name:
            report.refuse_image("no_image", where, "<image> has no name")
            continue
        image = _find_image(root, name)
        if image is None:
            report.missing_files.append(name)
            continue
        if image in used:
            report.refuse_image("duplicate_file_name", where, f"{image.name} is listed twice; skipped")
            continue
        used.add(image)
        size = readable_size(report, image, where, image.name)
        if size is None:
            continue
        width, height = size
        record = ImportRecord(image, image.relative_to(root).as_posix(), width, height)
        check_size(report, record, el.get("width"), el.get("height"), where)
        shapes = list(el)
        if len(shapes) > MAX_SHAPES_PER_IMAGE:
            report.refuse_image("too_many_boxes", where, f"{len(shapes)} shapes; at most {MAX_SHAPES_PER_IMAGE}")
            continue
        for j, shape in enumerate(shapes, start=1):
            swhere = f"{where} {shape.tag} {j}"
            label = (shape.get("label") or "").strip()
            if shape.tag in _NOT_BOXES:
                report.refuse_box("bad_result", swhere, f"<{shape.tag}> is not a box")
                record.refused_boxes += 1
                continue
            if shape.tag not in ("box", "polygon", "polyline"):
                report.warn("ignored_element", swhere, f"<{shape.tag}> is not a shape; ignored")
                continue
            corners, note = _shape_corners(shape)
            if corners is None:
                report.refuse_box("bad_bbox", swhere, note or "not a box")
                record.refused_boxes += 1
                continue
            if note:
                report.repair("polygon_to_box", swhere, note)
            if declared is not None and label and label not in declared:
                report.warn("unknown_label", swhere, f"label {label!r} is not declared in the file's <meta>")
            box = checked_box(report, record, label, *corners, width, height, swhere)
            if box is not None:
                used_labels.add(box.class_key)
                record.boxes.append(box)
        dedupe(report, record)
        records.append(record)
    for name in sorted((declared or set()) - used_labels):
        report.unused_categories.append(name)
        report.warn("unused_category", name, f"label {name!r} is never used by any box")
    for image in list_images(root):
        if image not in used:
            report.warn(
                "unlisted_file",
                image.relative_to(root).as_posix(),
                "image is not listed in the CVAT file; not imported",
            )
    report.finish(records)
    return ReadResult(records, report)


def _fmt(value: float) -> str:
    return f"{value:.2f}"


def write_cvat(
    items: Iterable[ExportItem], out_dir: Path | str, class_names: list[str], *, task_name: str = "hazardlens export"
) -> ExportResult:
    """Write ``annotations.xml`` (CVAT for images 1.1) and ``images/``: zip the folder and import it
    into a CVAT task as "CVAT 1.1", or create the task from ``images/`` and upload the XML."""
    items = check_export(items, class_names, need_images=True)
    out = Path(out_dir)
    top = ET.Element("annotations")
    ET.SubElement(top, "version").text = "1.1"
    task = ET.SubElement(ET.SubElement(top, "meta"), "task")
    ET.SubElement(task, "name").text = task_name
    ET.SubElement(task, "size").text = str(len(items))
    ET.SubElement(task, "mode").text = "annotation"
    labels = ET.SubElement(task, "labels")
    for name in class_names:
        label = ET.SubElement(labels, "label")
        ET.SubElement(label, "name").text = name
        ET.SubElement(label, "type").text = "rectangle"
        ET.SubElement(label, "attributes")
    boxes = negatives = dropped = 0
    for i, item in enumerate(items):
        if item.boxes is None:
            raise Invalid(f"{item.file_name}: not labelled; CVAT would read it as a negative")
        rel = safe_relative(item.file_name)
        assert rel is not None
        write_image(item.image_bytes_path, out / "images" / rel)
        image = ET.SubElement(top, "image", id=str(i), name=rel, width=str(item.width), height=str(item.height))
        for box in item.boxes:
            clipped = clip_for_export(box, item.width, item.height)
            if clipped is None:
                dropped += 1
                continue
            ET.SubElement(
                image,
                "box",
                label=clipped.class_key,
                source="manual",
                occluded="0",
                xtl=_fmt(clipped.x1),
                ytl=_fmt(clipped.y1),
                xbr=_fmt(clipped.x2),
                ybr=_fmt(clipped.y2),
                z_order="0",
            )
            boxes += 1
        negatives += not item.boxes
    ET.indent(top)
    out.mkdir(parents=True, exist_ok=True)
    xml_path = out / "annotations.xml"
    xml_path.write_bytes(ET.tostring(top, encoding="utf-8", xml_declaration=True))
    return ExportResult(xml_path, len(items), boxes, negatives, dropped)
