"""Sliced inference for photos that show far more scene than the frames a model was trained on.

The shipped baseline learned from 1280x704 CCTV frames shrunk to 640 px, where a helmet is 10-25 px.
An inspector's 12-MP phone photo of a whole workshop, shrunk the same way to 640 px, leaves that
helmet at 3-5 px: below anything the model can find. Cutting the photo into overlapping windows of
about the training frame's size (``window`` original pixels) and running each at the model's image
size restores the scale it learned. A pass over the whole photo still finds objects larger than a
window. Detections of all passes are merged by class-aware NMS; a window's box that touches a cut
edge (not an edge of the photo) is dropped, because the neighbouring window, which overlaps by more
than such an object, sees it whole.

Everything here works in the pixels of the image given: callers decode the photo at
``imgsz / window`` of its size (:func:`tile_scale`), so every window is exactly ``imgsz`` pixels and
is fed to the model unresized.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from hazardlens.detections import Detections
from hazardlens.detector import Tiling as Tiling  # (window, overlap); defined in the core for the Detector protocol
from hazardlens.errors import Invalid

#: A window's box this close (pixels) to a cut edge counts as cut.
EDGE_MARGIN = 2.0

Predict = Callable[[Sequence[np.ndarray]], list[Detections]]


def check_tiling(window: int, overlap: float) -> None:
    if not isinstance(window, int) or isinstance(window, bool) or window < 64:
        raise Invalid(f"tile window must be an integer of at least 64 pixels, not {window!r}", code="invalid_tiles")
    if not 0.0 <= overlap < 0.9:
        raise Invalid(f"tile overlap must be in [0, 0.9), not {overlap!r}", code="invalid_tiles")


def tile_scale(long_side: int, imgsz: int, window: int) -> float:
    """Decoded pixels per original pixel for sliced inference: a ``window``-pixel stretch of the photo
    becomes ``imgsz`` pixels (never enlarged)."""
    return min(1.0, imgsz / window) if long_side > 0 else 1.0


def _starts(length: int, tile: int, overlap: float) -> list[int]:
    if length <= tile:
        return [0]
    step = max(1, int(tile * (1.0 - overlap)))
    count = math.ceil((length - tile) / step) + 1
    # spread evenly so the last window ends exactly at the border (no sliver windows)
    return [round(i * (length - tile) / (count - 1)) for i in range(count)]


def tile_windows(width: int, height: int, tile: int, overlap: float = 0.25) -> list[tuple[int, int, int, int]]:
    """Overlapping ``tile``-pixel windows ``(x1, y1, x2, y2)`` covering a ``width`` x ``height`` image.

    Empty when the image fits in one window (plus 10%): the whole-image pass already sees it at scale.
    """
    if max(width, height) <= tile * 1.1:
        return []
    return [
        (x, y, min(x + tile, width), min(y + tile, height))
        for y in _starts(height, tile, overlap)
        for x in _starts(width, tile, overlap)
    ]


def _uncut(dets: Detections, window: tuple[int, int, int, int], width: int, height: int) -> np.ndarray:
    """Mask of the boxes (window pixels) that do not touch one of the window's cut edges."""
    x1, y1, x2, y2 = window
    box = dets.xyxy
    keep = np.ones(len(box), dtype=bool)
    if x1 > 0:
        keep &= box[:, 0] > EDGE_MARGIN
    if y1 > 0:
        keep &= box[:, 1] > EDGE_MARGIN
    if x2 < width:
        keep &= box[:, 2] < (x2 - x1) - EDGE_MARGIN
    if y2 < height:
        keep &= box[:, 3] < (y2 - y1) - EDGE_MARGIN
    return keep


def merge(parts: Sequence[Detections], iou: float, max_det: int) -> Detections:
    """Class-aware NMS over detections of several passes (already in one image's pixels)."""
    from hazardlens.models.engines import nms_per_class

    parts = [p for p in parts if len(p)]
    if not parts:
        return Detections.empty(with_confidence=True)
    xyxy = np.concatenate([p.xyxy for p in parts])
    keys = np.concatenate([p.class_keys for p in parts])
    conf = np.concatenate([p.confidence if p.confidence is not None else np.ones(len(p), np.float32) for p in parts])
    solid = (xyxy[:, 2] > xyxy[:, 0]) & (xyxy[:, 3] > xyxy[:, 1])  # clipping can leave flat boxes
    xyxy, keys, conf = xyxy[solid], keys[solid], conf[solid]
    if not len(xyxy):
        return Detections.empty(with_confidence=True)
    _, classes = np.unique(keys.astype(str), return_inverse=True)
    keep = nms_per_class(xyxy, conf, classes.reshape(-1), iou, max_det)
    return Detections(xyxy[keep], keys[keep], conf[keep])


def predict_tiled(
    predict: Predict,
    image: np.ndarray,
    tile: int,
    *,
    overlap: float = 0.25,
    iou: float = 0.45,
    max_det: int = 300,
    whole: bool = True,
) -> Detections:
    """Detections on ``image`` (BGR, already at tile scale) from the whole image plus its windows.

    ``predict`` answers one :class:`Detections` per image given, in that image's pixels (an engine's
    ``predict`` with thresholds bound, or a model lease's). All passes go to it in one call, so a
    batching back-end runs them as one batch.
    """
    height, width = image.shape[:2]
    windows = tile_windows(width, height, tile, overlap)
    crops = ([image] if whole or not windows else []) + [image[y1:y2, x1:x2] for x1, y1, x2, y2 in windows]
    answers = predict(crops)
    if len(answers) != len(crops):
        raise RuntimeError(f"predict answered {len(answers)} results for {len(crops)} images")
    parts = list(answers[: len(crops) - len(windows)])
    for (x1, y1, x2, y2), dets in zip(windows, answers[len(crops) - len(windows) :], strict=True):
        dets = dets[_uncut(dets, (x1, y1, x2, y2), width, height)]
        parts.append(Detections(dets.xyxy + np.array([x1, y1, x1, y1], np.float32), dets.class_keys, dets.confidence))
    return merge(parts, iou, max_det)
