"""YOLO txt labels (``class cx cy w h``, normalised to the image), the Ultralytics layout.

Layouts read: ``images/`` + ``labels/`` (optionally ``images/train`` etc.), Roboflow's
``train/images`` + ``train/labels``, and flat folders with the ``.txt`` beside each image. The label
of an image is found with the Ultralytics rule (the last ``images`` folder becomes ``labels``), so
what this reader sees is what training will see. An image without a label file is a negative (the
YOLO convention); an unreadable label file is not.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml

from hazardlens.errors import Invalid, NotFound
from hazardlens.safeyaml import MAX_NAME_CHARS, load_user_yaml_file, short_scalar

from ._util import (
    SPLIT_ALIASES,
    check_export,
    checked_box,
    clear_previous_export,
    clip_for_export,
    dedupe,
    list_images,
    normalise_split,
    readable_size,
    safe_relative,
    write_image,
)
from .records import ExportItem, ExportResult, ImportRecord, ImportReport, ReadResult

_NAME_FILES = ("data.yaml", "dataset.yaml", "data.yml")


def _short_names(values: Iterable[object], path: Path) -> list[str]:
    names = [short_scalar(v) for v in values]
    if any(n is None for n in names):
        raise Invalid(
            f"{path.name}: class names must be scalars of at most {MAX_NAME_CHARS} characters; nothing was imported",
            code="invalid_yaml",
        )
    return [n for n in names if n is not None]


def _names_from_yaml(path: Path, report: ImportReport) -> list[str] | None:
    # The file comes from an uploaded zip: bounded, aliases refused (hazardlens.safeyaml); an
    # unsafe file stops the import (Invalid) instead of being skipped.
    try:
        data = load_user_yaml_file(path)
    except Invalid as e:
        if (e.details or {}).get("reason") != "syntax":
            raise
        report.warn("bad_names_file", path.name, f"{e.message}; ignored")
        return None
    if not isinstance(data, dict) or "names" not in data:
        return None
    names = data["names"]
    if isinstance(names, list):
        return _short_names(names, path)
    if isinstance(names, dict):
        _short_names(names.values(), path)
        try:
            indexed = {int(k): str(v).strip() for k, v in names.items()}
        except (TypeError, ValueError):
            report.warn("bad_names_file", path.name, "names keys are not class indices; ignored")
            return None
        if sorted(indexed) != list(range(len(indexed))):
            report.warn("bad_names_file", path.name, "class indices in names are not 0..n-1")
        return [indexed.get(i, str(i)) for i in range(max(indexed, default=-1) + 1)]
    report.warn("bad_names_file", path.name, "names is neither a list nor a mapping; ignored")
    return None


def _class_names(root: Path, report: ImportReport) -> list[str] | None:
    from_yaml: list[str] | None = None
    candidates = [root / n for n in _NAME_FILES] + sorted(p for p in root.glob("*.y*ml") if p.name not in _NAME_FILES)
    for path in candidates:
        if path.is_file() and (from_yaml := _names_from_yaml(path, report)) is not None:
            break
    from_txt: list[str] | None = None
    for path in (root / "classes.txt", root / "labels" / "classes.txt"):
        if path.is_file():
            try:
                from_txt = [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
            except (OSError, UnicodeDecodeError) as e:
                report.warn("bad_names_file", path.name, f"not readable ({e}); ignored")
            break
    if from_yaml is not None and from_txt is not None and from_yaml != from_txt:
        report.warn("names_disagree", "classes.txt", "classes.txt and data.yaml disagree; data.yaml used")
    names = from_yaml if from_yaml is not None else from_txt
    if names is None:
        report.warn("no_class_names", str(root), "no data.yaml or classes.txt; class indices used as names")
    return names


def _locate(root: Path, image: Path) -> tuple[Path, str, str | None]:
    """(label path, file name, split) of an image, by the Ultralytics images->labels rule."""
    parts = image.relative_to(root).parts
    folders = parts[:-1]
    split: str | None = None
    if "images" in folders:
        k = len(folders) - 1 - folders[::-1].index("images")
        label = root.joinpath(*parts[:k], "labels", *parts[k + 1 :]).with_suffix(".txt")
        inner = list(parts[k + 1 :])
        if k > 0 and parts[k - 1].lower() in SPLIT_ALIASES:  # train/images/x.jpg
            split = parts[k - 1]
        elif len(inner) > 1 and inner[0].lower() in SPLIT_ALIASES:  # images/train/x.jpg
            split = inner.pop(0)
    else:
        label = image.with_suffix(".txt")
        inner = list(parts)
        if len(inner) > 1 and inner[0].lower() in SPLIT_ALIASES:
            split = inner.pop(0)
    return label, "/".join(inner), normalise_split(split)


def read_yolo(directory: Path | str, class_names: Sequence[str] | None = None) -> ReadResult:
    """Read a YOLO dataset folder. ``class_names`` overrides data.yaml/classes.txt."""
    root = Path(directory)
    if not root.is_dir():
        raise NotFound(f"{root}: folder not found")
    report = ImportReport(format="yolo", source=str(root))
    names = list(class_names) if class_names is not None else _class_names(root, report)
    used_index: set[int] = set()
    used_labels: set[Path] = set()
    records: list[ImportRecord] = []
    file_names: set[str] = set()

    images = [p for p in list_images(root) if "labels" not in p.relative_to(root).parts[:-1]]
    for image in images:
        label, file_name, split = _locate(root, image)
        rel_image = image.relative_to(root).as_posix()
        if file_name in file_names:
            report.warn(
                "duplicate_file_name", rel_image, f"{file_name!r} occurs in several folders; full path used as its name"
            )
            file_name = rel_image
        file_names.add(file_name)
        size = readable_size(report, image, rel_image, None)
        if size is None:
            continue
        width, height = size
        record = ImportRecord(image, file_name, width, height, split=split)
        if label.is_file():
            used_labels.add(label)
            try:
                text = label.read_text(encoding="utf-8-sig")
            except (OSError, UnicodeDecodeError) as e:
                # Not a negative: the labels exist, we just cannot read them.
                report.refuse_image("unreadable_label", rel_image, f"label file not readable ({e})")
                continue
            _parse_lines(report, record, text, label.relative_to(root).as_posix(), names, used_index)
        records.append(record)

    for txt in sorted(root.rglob("*.txt")):
        if "labels" in txt.relative_to(root).parts[:-1] and txt not in used_labels and txt.name != "classes.txt":
            report.missing_files.append(f"{txt.relative_to(root).as_posix()} (label without image)")

    if names is not None:
        for i, name in enumerate(names):
            if i not in used_index:
                report.unused_categories.append(name)
                report.warn("unused_category", f"class {i}", f"{name!r} is never used by any label")
    for record in records:
        dedupe(report, record)
    report.finish(records)
    return ReadResult(records, report)


def _parse_lines(
    report: ImportReport, record: ImportRecord, text: str, label_rel: str, names: list[str] | None, used_index: set[int]
) -> None:
    assert record.width is not None and record.height is not None
    for n, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        where = f"{label_rel}:{n}"

        def refuse(kind: str, message: str, where: str = where) -> None:
            report.refuse_box(kind, where, message)
            record.refused_boxes += 1

        try:
            values = [float(f) for f in fields]
        except ValueError:
            refuse("malformed_line", f"line {n}: not all values are numbers: {line.strip()[:60]!r}")
            continue
        count = len(values)
        if count == 6:
            refuse("malformed_line", f"line {n}: 6 values looks like a prediction with a score, not a label")
            continue
        if count < 5 or (count > 5 and (count - 1) % 2):
            refuse("malformed_line", f"line {n}: expected 'class cx cy w h', got {count} values")
            continue
        cls = values[0]
        if not cls.is_integer() or cls < 0:
            refuse("unknown_class", f"line {n}: class {fields[0]!r} is not a class index")
            continue
        index = int(cls)
        if names is not None and index >= len(names):
            refuse("unknown_class", f"line {n}: class {index} is not among the {len(names)} class names")
            continue
        coords = values[1:]
        if count > 5:  # segmentation polygon: Ultralytics trains detection on its bounding box
            xs, ys = coords[0::2], coords[1::2]
            cx, cy = (min(xs) + max(xs)) / 2, (min(ys) + max(ys)) / 2
            w, h = max(xs) - min(xs), max(ys) - min(ys)
            report.repair("polygon_to_box", where, f"line {n}: polygon replaced by its bounding box")
        else:
            cx, cy, w, h = coords
        if max(abs(cx), abs(cy), abs(w), abs(h)) > 1.5:
            refuse("not_normalised", f"line {n}: values above 1 look like pixels, not normalised coordinates")
            continue
        if fields[0] != str(index):
            report.repair("float_class", where, f"line {n}: class {fields[0]!r} read as {index}")
        name = names[index] if names is not None else str(index)
        used_index.add(index)
        box = checked_box(
            report,
            record,
            name,
            (cx - w / 2) * record.width,
            (cy - h / 2) * record.height,
            (cx + w / 2) * record.width,
            (cy + h / 2) * record.height,
            record.width,
            record.height,
            where,
        )
        if box is not None:
            record.boxes.append(box)


#: Names the dataset file may take: Ultralytics reads any (``data=...``), FiftyOne's YOLOv5 reader
#: looks for ``dataset.yaml`` unless told otherwise.
YAML_NAMES = ("data.yaml", "dataset.yaml")

_NO_VAL_NOTE = (
    "# No held-out split: 'val' names the training images so that Ultralytics trains on this\n"
    "# export as is. Its validation scores measure fit, not generalisation; for held-out\n"
    "# numbers build a dataset version (hazardlens datasets create/export) instead.\n"
)


def write_yolo(
    items: Iterable[ExportItem],
    out_dir: Path | str,
    class_names: list[str],
    *,
    overwrite: bool = False,
    yaml_name: str = "data.yaml",
) -> ExportResult:
    """Write the Ultralytics layout ``images/<split>/``, ``labels/<split>/``, ``data.yaml``.

    Items without a split go to ``train``. Negatives get an empty label file, so that "no object"
    is stated rather than implied by a missing file. ``data.yaml`` lists the splits present; when
    there is no ``val`` split (a library export has no splits) ``val`` names the training images,
    with a comment saying so, because Ultralytics refuses a dataset file without ``val``.
    ``yaml_name`` ``dataset.yaml`` is the name FiftyOne's YOLOv5 reader looks for.
    """
    if yaml_name not in YAML_NAMES:
        raise Invalid(
            f"the dataset file is named one of {', '.join(YAML_NAMES)}, not {yaml_name!r}", code="invalid_request"
        )
    items = check_export(items, class_names, need_images=True)
    out = Path(out_dir)
    clear_previous_export(out, [out / "images", out / "labels", *(out / n for n in YAML_NAMES)], "YOLO", overwrite)
    index = {name: i for i, name in enumerate(class_names)}
    splits: list[str] = []
    boxes = negatives = dropped = 0
    for item in items:
        if item.boxes is None:
            raise Invalid(f"{item.file_name}: not labelled; YOLO would read it as a negative")
        split = normalise_split(item.split) or "train"
        if split not in splits:
            splits.append(split)
        rel = safe_relative(item.file_name)
        assert rel is not None
        write_image(item.image_bytes_path, out / "images" / split / rel)
        lines = []
        for box in item.boxes:
            clipped = clip_for_export(box, item.width, item.height)
            if clipped is None:
                dropped += 1
                continue
            cx = (clipped.x1 + clipped.x2) / 2 / item.width
            cy = (clipped.y1 + clipped.y2) / 2 / item.height
            w = (clipped.x2 - clipped.x1) / item.width
            h = (clipped.y2 - clipped.y1) / item.height
            lines.append(f"{index[clipped.class_key]} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}\n")
        label = (out / "labels" / split / rel).with_suffix(".txt")
        label.parent.mkdir(parents=True, exist_ok=True)
        label.write_text("".join(lines), encoding="utf-8")
        boxes += len(lines)
        negatives += not item.boxes
    data: dict[str, Any] = {"path": str(out.resolve())}
    for split in sorted(splits, key=lambda s: (["train", "val", "test"] + [s]).index(s)):
        data[split] = f"images/{split}"
    note = ""
    if "val" not in data and "train" in data:
        data["val"] = data["train"]
        note = _NO_VAL_NOTE
    data["nc"] = len(class_names)
    data["names"] = dict(enumerate(class_names))
    out.mkdir(parents=True, exist_ok=True)
    (out / yaml_name).write_text(note + yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return ExportResult(out / yaml_name, len(items), boxes, negatives, dropped)
