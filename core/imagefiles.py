"""Which file names are images, and the HEIF opener: the two facts every part that opens photo
files needs, written once (no PIL import here, so light callers stay light).

Two suffix sets, because two questions are asked:

- :data:`UPLOAD_SUFFIXES`: files bulk ingest takes from a folder or archive, i.e. the formats the
  sample library keeps (JPEG, PNG, WebP, HEIC) under the names cameras and phones give them;
- :data:`DATASET_SUFFIXES`: image files a labelled dataset may hold (readers of COCO, YOLO, VOC and
  Label Studio, evaluation folders); the importer converts the ones the library does not keep.
  Every one of them is also an image format Ultralytics reads.
"""

from __future__ import annotations

import threading

UPLOAD_SUFFIXES = frozenset({".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".heic", ".heif"})
DATASET_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".heic", ".heif", ".mpo", ".dng"}
)
ARCHIVE_SUFFIXES = frozenset({".zip"})

_heif_lock = threading.Lock()
_heif_state: bool | None = None  # None: not tried yet; then whether the opener is registered


def register_heif() -> bool:
    """Register pillow-heif's opener with PIL once per process (phones save HEIC; without it PIL
    cannot even read their size). Thread-safe; True when HEIF can be opened."""
    global _heif_state
    with _heif_lock:
        if _heif_state is None:
            try:
                import pillow_heif

                pillow_heif.register_heif_opener()
                _heif_state = True
            except ImportError:  # pragma: no cover - the dependency is declared; a broken install stays usable
                _heif_state = False
        return _heif_state


__all__ = ["ARCHIVE_SUFFIXES", "DATASET_SUFFIXES", "UPLOAD_SUFFIXES", "register_heif"]
