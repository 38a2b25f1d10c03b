"""Annotation formats in and out (COCO, YOLO, Pascal VOC, Label Studio, CVAT), at file level only.

Readers turn a foreign dataset into neutral :class:`ImportRecord` objects plus an
:class:`ImportReport` that names every repair and refusal; a :class:`ClassMap` turns source class
names into taxonomy keys; writers turn :class:`ExportItem` objects into files. Nothing here
touches the database, so the importer can check everything before it writes anything.
"""

from __future__ import annotations

from ._util import image_size
from .classmap import IGNORE, ClassMap, class_names, extract_group
from .coco import read_coco, write_coco
from .cvat import read_cvat, write_cvat
from .labelstudio import labelstudio_results, read_labelstudio, write_labelstudio
from .records import ExportItem, ExportResult, ImageSource, ImportRecord, ImportReport, Issue, ReadResult
from .voc import read_voc, write_voc
from .yolo import read_yolo, write_yolo

__all__ = [
    "labelstudio_results",
    "IGNORE",
    "ClassMap",
    "ExportItem",
    "ExportResult",
    "ImageSource",
    "ImportRecord",
    "ImportReport",
    "Issue",
    "ReadResult",
    "class_names",
    "extract_group",
    "image_size",
    "read_coco",
    "read_cvat",
    "read_labelstudio",
    "read_voc",
    "read_yolo",
    "write_coco",
    "write_cvat",
    "write_labelstudio",
    "write_voc",
    "write_yolo",
]
