"""Pascal VOC xml (``Annotations/*.xml`` beside ``JPEGImages/`` or ``images/``), as LabelImg and
many Chinese labelling vendors deliver it.

VOC corners are 1-based pixel indices; like Ultralytics' VOC converter we subtract 1 to get
0-based pixel coordinates. Images with no xml are NOT taken as negatives (LabelImg writes no xml
for skipped images, so absence means "not looked at"); they are listed as unlisted files.
Ignored fields: ``pose``, ``truncated``, ``difficult`` (kept as ordinary boxes), ``segmented``.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path, PurePosixPath

from hazardlens.errors import NotFound

from ._util import IMAGE_SUFFIXES, check_size, checked_box, dedupe, list_images, readable_size, safe_relative, to_number
from .records import ImportRecord, ImportReport, ReadResult


def _text(el: ET.Element | None, tag: str) -> str | None:
    if el is None:
        return None
    child = el.find(tag)
    if child is None or child.text is None:
        return None
    return child.text.strip() or None


def _find_image(image_dirs: list[Path], filename: str | None, xml_stem: str) -> tuple[Path, Path] | None:
    """(folder, file) for the xml's image: its ``filename`` first, then the xml's own stem, because
    hand-edited xmls often keep a stale filename."""
    rel = safe_relative(filename) if filename else None
    if filename and rel is None:  # absolute path from the labeller's PC: keep the base name
        rel = safe_relative(PurePosixPath(filename.replace("\\", "/")).name)
    for folder in image_dirs:
        if rel:
            for cand in (folder / rel, folder / PurePosixPath(rel).name):
                if cand.is_file():
                    return folder, cand
        for suffix in sorted(IMAGE_SUFFIXES):
            for cand in (folder / f"{xml_stem}{suffix}", folder / f"{xml_stem}{suffix.upper()}"):
                if cand.is_file():
                    return folder, cand
    return None


def read_voc(directory: Path | str) -> ReadResult:
    root = Path(directory)
    if not root.is_dir():
        raise NotFound(f"{root}: folder not found")
    ann_dir = next((root / n for n in ("Annotations", "annotations") if (root / n).is_dir()), root)
    image_dirs = [d for d in (root / "JPEGImages", root / "images") if d.is_dir()] + [root]
    report = ImportReport(format="voc", source=str(root))
    records: list[ImportRecord] = []
    used: set[Path] = set()
    for xml_path in sorted(ann_dir.rglob("*.xml")):
        where = xml_path.relative_to(root).as_posix()
        try:
            top = ET.parse(xml_path).getroot()
        except (ET.ParseError, OSError) as e:
            report.refuse_image("bad_xml", where, f"not readable xml ({e})")
            continue
        if top.tag != "annotation":
            report.refuse_image("bad_xml", where, f"root element is <{top.tag}>, not <annotation>")
            continue
        filename = _text(top, "filename")
        found = _find_image(image_dirs, filename, xml_path.stem)
        if found is None:
            report.missing_files.append(filename or f"{xml_path.stem}.*")
            continue
        folder, image = found
        if image in used:
            report.refuse_image("duplicate_file_name", where, f"{image.name} already has an xml; skipped")
            continue
        used.add(image)
        if filename and PurePosixPath(filename.replace("\\", "/")).name != image.name:
            report.repair("file_name", where, f"filename {filename!r} not found; used {image.name}")
        dims = readable_size(report, image, where, image.name)
        if dims is None:
            continue
        width, height = dims
        record = ImportRecord(image, image.relative_to(folder).as_posix(), width, height)
        size = top.find("size")
        check_size(report, record, _text(size, "width"), _text(size, "height"), where)
        for j, obj in enumerate(top.findall("object"), start=1):
            owhere = f"{where} object {j}"
            name = _text(obj, "name")
            bndbox = obj.find("bndbox")
            corners = [to_number(_text(bndbox, k))[0] for k in ("xmin", "ymin", "xmax", "ymax")]
            if bndbox is None or any(c is None for c in corners):
                report.refuse_box("bad_bbox", owhere, "object has no complete numeric <bndbox>")
                record.refused_boxes += 1
                continue
            xmin, ymin, xmax, ymax = (c for c in corners if c is not None)
            box = checked_box(report, record, name or "", xmin - 1, ymin - 1, xmax - 1, ymax - 1, width, height, owhere)
            if box is not None:
                record.boxes.append(box)
        dedupe(report, record)
        records.append(record)

    for folder in image_dirs[:-1] or image_dirs:
        for path in list_images(folder):
            if path not in used:
                report.warn(
                    "unlisted_file",
                    path.relative_to(root).as_posix(),
                    "image has no xml; not imported (absence of an xml is not a negative)",
                )
    report.finish(records)
    return ReadResult(records, report)
