"""The one way every part asks for detections: the :class:`Detector` protocol and its :class:`DetectResult`.

An engine wrapper implements ``Detector`` (the serving worker's
:class:`hazardlens.models.manager.ModelManager` does: decode once, EXIF-orient, micro-batch, hot swap);
every caller that needs detections on a photo takes a ``Detector``: ``POST /v1/detect`` and its batch,
suggestions for curators, the Label Studio ML backend and inspection photos. The labeling part may not
import ``hazardlens.models``, so serving hands it the manager itself, typed as this protocol, and tests
hand it a fake.

Which classes an answer may hold is decided here too, once: :func:`detection_taxonomy` is the taxonomy
every detection answer is filtered and named with (the shipped one plus approved provincial additions,
the same one ``POST /v1/detect`` has always used), and :func:`relevant` is the filter.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Protocol

import numpy as np

from hazardlens.detections import Detections
from hazardlens.errors import HazardError

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from hazardlens.context import Context
    from hazardlens.taxonomy import Taxonomy

#: Sliced inference: (window in original pixels, overlap as a fraction of a window).
Tiling = tuple[int, float]

DEFAULT_CONF = 0.25
DEFAULT_IOU = 0.45


@dataclass
class DetectResult:
    """One image's detections in the pixels of the EXIF-oriented original."""

    model: dict[str, str]  # {"name", "version"} of the model that answered
    image_size: tuple[int, int]  # (width, height) of the oriented original
    detections: Detections
    timing_ms: dict[str, float]
    image: np.ndarray | None = None  # the decoded (possibly reduced) BGR image, when asked for
    image_scale: float = 1.0  # decoded pixels per original pixel
    classes: tuple[str, ...] | None = None  # the answering model's classes, when the detector knows them

    @property
    def version(self) -> str:
        return str(self.model.get("version", ""))


class Detector(Protocol):
    """Detections on encoded photos (JPEG, PNG, WebP, HEIC bytes), boxes in original pixels.

    ``version`` pins a model version (default: the one in production); ``conf`` is the confidence
    threshold; ``max_pixels`` refuses decompression bombs (TooLarge); ``timeout`` bounds the wait for
    the model; ``keep_image_side`` keeps a decode of at least that long side in the result (for an
    evidence image); ``tiles`` asks for sliced inference. Errors are ``HazardError``s.
    """

    def detect(
        self,
        data: bytes,
        *,
        version: str | None = None,
        conf: float = DEFAULT_CONF,
        iou: float = DEFAULT_IOU,
        max_pixels: int | None = None,
        timeout: float | None = None,
        keep_image_side: int | None = None,
        tiles: Tiling | None = None,
    ) -> DetectResult: ...

    def detect_many(
        self,
        images: Sequence[bytes],
        *,
        version: str | None = None,
        conf: float = DEFAULT_CONF,
        iou: float = DEFAULT_IOU,
        max_pixels: int | None = None,
        timeout: float | None = None,
    ) -> tuple[dict[str, str], list[DetectResult | HazardError]]:
        """Several images on one model version: the model used, and per image (in input order) its
        result or the error that image alone ran into."""
        ...


def detection_taxonomy(ctx: Context, session: Session | None = None, org_code: str | None = None) -> Taxonomy:
    """The taxonomy every detection answer is filtered and named with: the shipped taxonomy plus the
    provincial additions, of which only approved ones are active (``Context.taxonomy``). Detection,
    suggestions, the Label Studio backend and inspections all read it here, so they agree on classes.
    With ``org_code``, only that organisation's additions (an approved addition is usable by the
    organisation that proposed it only)."""
    return ctx.taxonomy(session, org_code=org_code)


def relevant(taxonomy: Taxonomy, detections: Detections, sector: str | None = None) -> Detections:
    """Only active taxonomy classes (an unapproved addition is never suggested), and with ``sector``
    only those relevant to it (``Invalid`` for an unknown sector)."""
    keys = {c.key for c in taxonomy.active_classes(sector)}
    return detections.filter_classes(keys)


def detect_relevant(
    ctx: Context,
    detector: Detector,
    data: bytes,
    *,
    sector: str | None = None,
    version: str | None = None,
    conf: float = DEFAULT_CONF,
    timeout: float | None = None,
    tiles: Tiling | None = None,
) -> DetectResult:
    """``detector.detect`` on one photo (``max_pixels`` from the settings), its detections kept to the
    :func:`relevant` classes of :func:`detection_taxonomy` (and of ``sector``, when given): what the
    pre-labelling callers (suggestions, the Label Studio backend) show."""
    result = detector.detect(
        data, version=version, conf=conf, max_pixels=ctx.settings.max_pixels, timeout=timeout, tiles=tiles
    )
    return replace(result, detections=relevant(detection_taxonomy(ctx), result.detections, sector))


__all__ = [
    "DEFAULT_CONF",
    "DEFAULT_IOU",
    "DetectResult",
    "Detector",
    "Tiling",
    "detect_relevant",
    "detection_taxonomy",
    "relevant",
]
