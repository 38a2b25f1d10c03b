"""Pascal VOC xml (``Annotations/*.xml`` beside ``JPEGImages/`` or ``images/``), as LabelImg and
many Chinese labelling vendors deliver it, in and out.

VOC corners are 1-based pixel indices; like Ultralytics' VOC converter we subtract 1 to get
0-based pixel coordinates. Images with no xml are NOT taken as negatives (LabelImg writes no xml
for skipped images, so absence means "not looked at"); they are listed as unlisted files.
Ignored fields: ``pose``, ``truncated``, ``difficult`` (kept as ordinary boxes), ``segmented``.

The files come from users: each xml is size-checked and parsed with defusedxml (no DTD, entities or
external references), and the numbers of files and of objects per file are bounded.

The writer lays an export out like the VOC devkit (``Annotations/``, ``JPEGImages/``,
``ImageSets/Main/<split>.txt``), because VOC readers (torchvision's ``VOCDetection``, MMDetection,
Detectron2) find images as ``JPEGImages/<id>.jpg`` and read integer corners: so every image is
written as ``<id>.jpg`` (PNG/WebP re-encoded as JPEG) and corners are 1-based integer pixels.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring
from PIL import Image

from hazardlens.errors import Invalid, NotFound

from ._util import (
    IMAGE_SUFFIXES,
    check_export,
    check_size,
    checked_box,
    clear_previous_export,
    clip_for_export,
    dedupe,
    list_images,
    normalise_split,
    readable_size,
    safe_relative,
    to_number,
    write_image,
)
from .records import ExportItem, ExportResult, ImportRecord, ImportReport, ReadResult

#: One image's xml is a few kB; far above any real one.
MAX_XML_BYTES = 4 << 20
MAX_FILES = 200_000
MAX_OBJECTS = 2000  # as many boxes as one revision may hold


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
    xml_paths = sorted(ann_dir.rglob("*.xml"))
    if len(xml_paths) > MAX_FILES:
        raise Invalid(
            f"{root.name} holds {len(xml_paths):,} xml files; a VOC import may hold at most {MAX_FILES:,}",
            code="too_many_files",
        )
    for xml_path in xml_paths:
        where = xml_path.relative_to(root).as_posix()
        try:
            if xml_path.stat().st_size > MAX_XML_BYTES:
                report.refuse_image("bad_xml", where, f"larger than {MAX_XML_BYTES:,} bytes")
                continue
            top = fromstring(xml_path.read_bytes(), forbid_dtd=True, forbid_entities=True, forbid_external=True)
        except (ET.ParseError, DefusedXmlException, OSError, ValueError) as e:
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
        objects = top.findall("object")
        if len(objects) > MAX_OBJECTS:
            report.refuse_image("too_many_boxes", where, f"{len(objects):,} objects; at most {MAX_OBJECTS:,}")
            continue
        for j, obj in enumerate(objects, start=1):
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


# --- export --------------------------------------------------------------------------------------

#: The image sets a VOC devkit holds; ``trainval`` is train + val, as in the devkit.
_SETS = ("train", "val", "test")


def _voc_id(file_name: str) -> str:
    """The image id: the file's relative path without suffix, folders joined by ``__`` (VOC is flat:
    readers open ``JPEGImages/<id>.jpg`` and ``Annotations/<id>.xml``)."""
    rel = safe_relative(file_name)
    assert rel is not None  # check_export refused unsafe names
    return str(PurePosixPath(rel).with_suffix("")).replace("/", "__")


def _corner(value: float, limit: int) -> int:
    """A 0-based pixel coordinate as VOC's 1-based integer index, kept inside the image."""
    return min(max(round(value) + 1, 1), limit)


def _as_jpeg(path: Path, dest: Path) -> tuple[int, bool]:
    """Move the written image to ``dest`` (``<id>.jpg``), re-encoding it as JPEG when it is not one;
    (depth, re-encoded)."""
    with Image.open(path) as im:
        if im.format == "JPEG":
            depth = len(im.getbands())
            reencoded = False
        else:
            im.load()
            rgb = im.convert("RGB") if im.mode not in ("RGB", "L") else im
            depth = len(rgb.getbands())
            rgb.save(dest.with_suffix(".tmp"), format="JPEG", quality=95)
            reencoded = True
    if reencoded:
        path.unlink()
        dest.with_suffix(".tmp").replace(dest)
    elif path != dest:
        path.replace(dest)
    return depth, reencoded


def write_voc(
    items: Iterable[ExportItem], out_dir: Path | str, class_names: list[str], *, overwrite: bool = False
) -> ExportResult:
    """Write the VOC devkit layout: ``Annotations/<id>.xml``, ``JPEGImages/<id>.jpg`` and
    ``ImageSets/Main/{train,val,test,trainval}.txt``, plus ``labels.txt`` (the class names in
    order, one a line: VOC itself has no class list).

    Items without a split go to ``train`` (and ``trainval``). Corners are written as VOC's 1-based
    integer pixel indices (0-based ``x`` becomes ``round(x) + 1``, inside ``1..width``), so a box
    comes back from :func:`read_voc` within a pixel. A negative gets an xml with no ``<object>``:
    for this reader, an xml is what says an image was looked at."""
    items = check_export(items, class_names, need_images=True)
    ids = [_voc_id(item.file_name) for item in items]
    seen: set[str] = set()
    for voc_id in ids:
        if voc_id.lower() in seen:
            raise Invalid(f"cannot export: image id {voc_id!r} used twice (VOC ids are file names without suffix)")
        seen.add(voc_id.lower())
    out = Path(out_dir)
    clear_previous_export(
        out, [out / "Annotations", out / "JPEGImages", out / "ImageSets", out / "labels.txt"], "VOC", overwrite
    )
    sets: dict[str, list[str]] = {}
    boxes = negatives = dropped = 0
    for item, voc_id in zip(items, ids, strict=True):
        if item.boxes is None:
            raise Invalid(f"{item.file_name}: not labelled; VOC would read it as a negative")
        split = normalise_split(item.split) or "train"
        sets.setdefault(split, []).append(voc_id)
        image = out / "JPEGImages" / f"{voc_id}.jpg"
        written = image.with_name(f"{voc_id}.part{PurePosixPath(item.file_name).suffix.lower()}")
        write_image(item.image_bytes_path, written)
        depth, _ = _as_jpeg(written, image)
        top = ET.Element("annotation")
        ET.SubElement(top, "folder").text = "JPEGImages"
        ET.SubElement(top, "filename").text = image.name
        ET.SubElement(ET.SubElement(top, "source"), "database").text = "hazardlens"
        size = ET.SubElement(top, "size")
        ET.SubElement(size, "width").text = str(item.width)
        ET.SubElement(size, "height").text = str(item.height)
        ET.SubElement(size, "depth").text = str(depth)
        ET.SubElement(top, "segmented").text = "0"
        for box in item.boxes:
            clipped = clip_for_export(box, item.width, item.height)
            if clipped is None:
                dropped += 1
                continue
            obj = ET.SubElement(top, "object")
            ET.SubElement(obj, "name").text = clipped.class_key
            ET.SubElement(obj, "pose").text = "Unspecified"
            ET.SubElement(obj, "truncated").text = "0"
            ET.SubElement(obj, "difficult").text = "0"
            bndbox = ET.SubElement(obj, "bndbox")
            xmin, ymin = _corner(clipped.x1, item.width), _corner(clipped.y1, item.height)
            xmax = max(_corner(clipped.x2, item.width), min(xmin + 1, item.width))
            ymax = max(_corner(clipped.y2, item.height), min(ymin + 1, item.height))
            for tag, value in (("xmin", xmin), ("ymin", ymin), ("xmax", xmax), ("ymax", ymax)):
                ET.SubElement(bndbox, tag).text = str(value)
            boxes += 1
        negatives += not item.boxes
        ET.indent(top)
        xml_path = out / "Annotations" / f"{voc_id}.xml"
        xml_path.parent.mkdir(parents=True, exist_ok=True)
        xml_path.write_bytes(ET.tostring(top, encoding="utf-8", xml_declaration=True))
    main = out / "ImageSets" / "Main"
    main.mkdir(parents=True, exist_ok=True)
    if "train" in sets or "val" in sets:
        sets["trainval"] = sets.get("train", []) + sets.get("val", [])
    for name, members in sets.items():
        (main / f"{name}.txt").write_text("".join(f"{m}\n" for m in members), encoding="utf-8")
    (out / "labels.txt").write_text("".join(f"{n}\n" for n in class_names), encoding="utf-8")
    return ExportResult(out / "Annotations", len(items), boxes, negatives, dropped)
