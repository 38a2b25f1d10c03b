"""The one box/detections type that engines, evaluation, labeling, export and serving share.

Boxes are ``x1, y1, x2, y2`` in pixels of the EXIF-oriented image. Classes are taxonomy keys
(strings), never model-specific indices, so that a box means the same thing everywhere.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True, slots=True)
class Box:
    class_key: str
    x1: float
    y1: float
    x2: float
    y2: float
    confidence: float | None = None

    @property
    def width(self) -> float:
        return self.x2 - self.x1

    @property
    def height(self) -> float:
        return self.y2 - self.y1

    @property
    def area(self) -> float:
        return max(0.0, self.width) * max(0.0, self.height)

    def as_dict(self) -> dict[str, float | str | None]:
        d: dict[str, float | str | None] = {
            "class_key": self.class_key,
            "x1": self.x1,
            "y1": self.y1,
            "x2": self.x2,
            "y2": self.y2,
        }
        if self.confidence is not None:
            d["confidence"] = self.confidence
        return d


@dataclass(slots=True)
class Detections:
    """A set of boxes as arrays (fast to filter and match) with string class keys."""

    xyxy: np.ndarray  # (N, 4) float32
    class_keys: np.ndarray  # (N,) object (str)
    confidence: np.ndarray | None = None  # (N,) float32; None for ground truth

    def __post_init__(self) -> None:
        self.xyxy = np.asarray(self.xyxy, dtype=np.float32).reshape(-1, 4)
        self.class_keys = np.asarray(list(self.class_keys), dtype=object).reshape(-1)
        if self.confidence is not None:
            self.confidence = np.asarray(self.confidence, dtype=np.float32).reshape(-1)
            if len(self.confidence) != len(self.xyxy):
                raise ValueError("confidence and boxes differ in length")
        if len(self.class_keys) != len(self.xyxy):
            raise ValueError("class_keys and boxes differ in length")

    @classmethod
    def empty(cls, with_confidence: bool = False) -> Detections:
        return cls(
            np.zeros((0, 4), np.float32),
            np.zeros((0,), object),
            np.zeros((0,), np.float32) if with_confidence else None,
        )

    @classmethod
    def from_boxes(cls, boxes: Iterable[Box]) -> Detections:
        boxes = list(boxes)
        if not boxes:
            return cls.empty()
        conf = None
        if all(b.confidence is not None for b in boxes):
            conf = np.array([b.confidence for b in boxes], np.float32)
        return cls(
            np.array([[b.x1, b.y1, b.x2, b.y2] for b in boxes], np.float32),
            np.array([b.class_key for b in boxes], object),
            conf,
        )

    def __len__(self) -> int:
        return len(self.xyxy)

    def __iter__(self) -> Iterator[Box]:
        for i in range(len(self)):
            x1, y1, x2, y2 = (float(v) for v in self.xyxy[i])
            conf = float(self.confidence[i]) if self.confidence is not None else None
            yield Box(str(self.class_keys[i]), x1, y1, x2, y2, conf)

    def to_boxes(self) -> list[Box]:
        return list(self)

    def __getitem__(self, index: np.ndarray | slice | Sequence[int]) -> Detections:
        return Detections(
            self.xyxy[index], self.class_keys[index], None if self.confidence is None else self.confidence[index]
        )

    def filter_confidence(self, threshold: float) -> Detections:
        if self.confidence is None:
            return self
        return self[self.confidence >= threshold]

    def filter_classes(self, keys: Iterable[str]) -> Detections:
        wanted = set(keys)
        return self[np.array([k in wanted for k in self.class_keys], dtype=bool)]

    def clip(self, width: float, height: float) -> Detections:
        xyxy = self.xyxy.copy()
        xyxy[:, [0, 2]] = xyxy[:, [0, 2]].clip(0, width)
        xyxy[:, [1, 3]] = xyxy[:, [1, 3]].clip(0, height)
        return Detections(xyxy, self.class_keys.copy(), None if self.confidence is None else self.confidence.copy())

    @property
    def area(self) -> np.ndarray:
        return np.asarray((self.xyxy[:, 2] - self.xyxy[:, 0]).clip(0) * (self.xyxy[:, 3] - self.xyxy[:, 1]).clip(0))


def box_iou(a: npt.ArrayLike, b: npt.ArrayLike) -> np.ndarray:
    """Pairwise IoU of two (N,4)/(M,4) xyxy arrays (or nested lists)."""
    aa = np.asarray(a, np.float32).reshape(-1, 4)
    bb = np.asarray(b, np.float32).reshape(-1, 4)
    if len(aa) == 0 or len(bb) == 0:
        return np.zeros((len(aa), len(bb)), np.float32)
    tl = np.maximum(aa[:, None, :2], bb[None, :, :2])
    br = np.minimum(aa[:, None, 2:], bb[None, :, 2:])
    inter = (br - tl).clip(0).prod(axis=2)
    area_a = (aa[:, 2:] - aa[:, :2]).clip(0).prod(axis=1)
    area_b = (bb[:, 2:] - bb[:, :2]).clip(0).prod(axis=1)
    return np.asarray(inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9))
