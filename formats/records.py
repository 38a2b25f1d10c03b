"""The neutral records every reader produces and every writer consumes.

Readers never write to the library: they turn one foreign format into :class:`ImportRecord` objects
plus an :class:`ImportReport`, so that the importer can show a curator exactly what was repaired or
refused, and stop before writing anything if the class map is incomplete.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from hazardlens.detections import Box

#: Where a writer gets the image bytes: a file to copy, or a function that writes the image to the
#: path it is given (the library streams from its object store that way), or None (no image files).
ImageSource = Path | Callable[[Path], None] | None


@dataclass(frozen=True, slots=True)
class Issue:
    """One thing a curator should know about. ``kind`` is a stable key so that issues can be
    counted and filtered (``string_bbox``, ``clipped``, ``zero_area``...); ``where`` points a human
    at the spot in the source (file, line, annotation id)."""

    kind: str
    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}" if self.where else self.message


@dataclass(slots=True)
class ImportRecord:
    """One source image and its boxes. ``boxes`` carry the SOURCE class name until a
    :class:`~hazardlens.formats.classmap.ClassMap` turns them into taxonomy keys."""

    image_path: Path
    file_name: str
    width: int | None
    height: int | None
    boxes: list[Box] = field(default_factory=list)
    site_id: str | None = None
    camera_id: str | None = None
    problems: list[str] = field(default_factory=list)
    split: str | None = None
    # Boxes of this image that were refused or dropped by the class map: an image whose boxes were
    # all thrown away is NOT a verified negative and must not be imported as one.
    refused_boxes: int = 0
    ignored_boxes: int = 0

    @property
    def is_negative(self) -> bool:
        return not self.boxes and self.refused_boxes == 0 and self.ignored_boxes == 0


@dataclass(slots=True)
class ImportReport:
    """What a reader did with a source. Nothing is dropped silently: every refused box or image
    and every repair has an :class:`Issue` with a reason."""

    format: str
    source: str
    images: int = 0
    boxes: int = 0
    negatives: int = 0
    repaired: list[Issue] = field(default_factory=list)
    refused_boxes: list[Issue] = field(default_factory=list)
    refused_images: list[Issue] = field(default_factory=list)
    missing_files: list[str] = field(default_factory=list)
    unused_categories: list[str] = field(default_factory=list)
    warnings: list[Issue] = field(default_factory=list)
    class_counts: Counter[str] = field(default_factory=Counter)

    # -- recording (used by the readers) ------------------------------------------------------
    def repair(self, kind: str, where: str, message: str) -> None:
        self.repaired.append(Issue(kind, where, message))

    def refuse_box(self, kind: str, where: str, message: str) -> None:
        self.refused_boxes.append(Issue(kind, where, message))

    def refuse_image(self, kind: str, where: str, message: str) -> None:
        self.refused_images.append(Issue(kind, where, message))

    def warn(self, kind: str, where: str, message: str) -> None:
        self.warnings.append(Issue(kind, where, message))

    def finish(self, records: Iterable[ImportRecord]) -> None:
        """Counts come from the records actually returned, so they cannot drift from them."""
        records = list(records)
        self.images = len(records)
        self.boxes = sum(len(r.boxes) for r in records)
        self.negatives = sum(1 for r in records if r.is_negative)
        self.class_counts = Counter(b.class_key for r in records for b in r.boxes)

    # -- reading (used by the importer, CLI and API) ------------------------------------------
    def all_issues(self) -> list[Issue]:
        return [*self.repaired, *self.refused_boxes, *self.refused_images, *self.warnings]

    def count(self, kind: str) -> int:
        return sum(1 for i in self.all_issues() if i.kind == kind)

    def as_dict(self, examples: int = 5) -> dict[str, Any]:
        """A JSON-ready summary: counts per reason plus a few examples each, because a 10,000-line
        list of identical repairs helps nobody."""

        def group(issues: list[Issue]) -> dict[str, dict[str, Any]]:
            out: dict[str, dict[str, Any]] = {}
            for issue in issues:
                entry = out.setdefault(issue.kind, {"count": 0, "examples": []})
                entry["count"] += 1
                if len(entry["examples"]) < examples:
                    entry["examples"].append(str(issue))
            return out

        return {
            "format": self.format,
            "source": self.source,
            "images": self.images,
            "boxes": self.boxes,
            "negatives": self.negatives,
            "class_counts": dict(sorted(self.class_counts.items())),
            "repaired": group(self.repaired),
            "refused_boxes": group(self.refused_boxes),
            "refused_images": group(self.refused_images),
            "warnings": group(self.warnings),
            "missing_files": {"count": len(self.missing_files), "examples": self.missing_files[:examples]},
            "unused_categories": list(self.unused_categories),
        }


class ReadResult(NamedTuple):
    """What every reader returns; unpacks as ``records, report = read_x(...)``."""

    records: list[ImportRecord]
    report: ImportReport


@dataclass(slots=True)
class ExportItem:
    """One image to write out. ``boxes`` are taxonomy keys in pixels; ``None`` means "not
    labelled yet" (only Label Studio can express that; an empty list is a verified negative)."""

    file_name: str
    image_bytes_path: ImageSource
    width: int
    height: int
    boxes: list[Box] | None
    split: str | None = None
    predictions: list[Box] | None = None
    #: Label Studio only: the image URL (default: the writer's prefix + file name) and extra task
    #: data (e.g. ``sample_id``) the task carries beside it.
    image_url: str | None = None
    data: dict[str, Any] | None = None

    @classmethod
    def from_record(cls, record: ImportRecord, split: str | None = None) -> ExportItem:
        if record.width is None or record.height is None:
            raise ValueError(f"{record.file_name}: image size unknown")
        return cls(
            record.file_name,
            record.image_path,
            record.width,
            record.height,
            list(record.boxes),
            split if split is not None else record.split,
        )


@dataclass(frozen=True, slots=True)
class ExportResult:
    path: Path  # data.yaml, the COCO json or the Label Studio tasks json
    images: int
    boxes: int
    negatives: int
    # Boxes that lay entirely outside their image after clipping; written nowhere, counted here.
    dropped_boxes: int = 0
