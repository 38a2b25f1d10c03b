"""Training augmentation declared in YAML (albumentations), with the realities of inspection photos.

Site photos are not the clean web pictures public detectors learn from: they are shot on phones
while walking (motion blur), pushed through poor networks (heavy JPEG compression), taken in
furnace halls and confined spaces (low light), in dusty or steamy air (haze) and against lamps and
molten metal (glare). Those conditions are written as an albumentations pipeline in
``configs/augment/*.yaml`` so curators can tune them without touching code, and :func:`preview`
draws a contact sheet so a person can see that the boxes still sit on the objects.

Training uses :class:`UltralyticsAlbumentations` in place of Ultralytics' own albumentations step
(:func:`install_in_dataset`), because Ultralytics only accepts transform objects, not a config file,
and its own step feeds colour transforms BGR images.

YAML layout::

    bbox: {format: pascal_voc, min_visibility: 0.3}
    transforms:
      - {name: HorizontalFlip, p: 0.5}
      - name: OneOf
        p: 0.3
        transforms:
          - {name: MotionBlur, p: 1, params: {blur_limit: [3, 9]}}
"""

from __future__ import annotations

import copy
import difflib
import inspect
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import yaml

from hazardlens.detections import Box
from hazardlens.errors import Invalid
from hazardlens.settings import find_config_file

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # never phone home for a version check
import albumentations as A  # noqa: E402

if TYPE_CHECKING:
    from hazardlens.context import Context
    from hazardlens.orm import DatasetVersion

BBOX_FORMATS = ("pascal_voc", "yolo")
_COMPOSITIONS = {"OneOf", "SomeOf", "Sequential", "OneOrOther", "SelectiveChannelTransform"}
_ENTRY_FIELDS = {"name", "p", "params", "transforms"}
_BBOX_FIELDS = {"format", "min_visibility", "min_area", "min_width", "min_height"}

#: A preview input: an image (file path, or an RGB array) and its boxes in pixels of that image.
PreviewSample = tuple[Path | str | np.ndarray, Sequence[Box]]


# --- loading ---------------------------------------------------------------------------------


def _tuples(value: Any) -> Any:
    """YAML has no tuples, and albumentations' range parameters are validated as tuples."""
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    return value


def _transform_class(name: Any, where: str) -> type[Any]:
    cls = getattr(A, name, None) if isinstance(name, str) else None
    if not (isinstance(cls, type) and issubclass(cls, A.BasicTransform | A.BaseCompose)):
        known = [
            n
            for n in dir(A)
            if isinstance(getattr(A, n), type) and issubclass(getattr(A, n), A.BasicTransform | A.BaseCompose)
        ]
        close = difflib.get_close_matches(str(name), known, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise Invalid(f"{where}: {name!r} is not an albumentations transform{hint}", code="invalid_augment")
    return cls


def _build(entry: Any, where: str) -> Any:
    if not isinstance(entry, Mapping) or "name" not in entry:
        raise Invalid(f"{where}: expected a mapping with 'name' (and 'p', 'params')", code="invalid_augment")
    unknown = set(entry) - _ENTRY_FIELDS
    if unknown:
        raise Invalid(
            f"{where}: unknown field(s) {', '.join(sorted(unknown))}; put transform arguments under 'params'",
            code="invalid_augment",
        )
    cls = _transform_class(entry["name"], where)
    where = f"{where} ({entry['name']})"
    params = dict(_tuples(entry.get("params") or {}))
    if not isinstance(entry.get("params") or {}, Mapping):
        raise Invalid(f"{where}: 'params' must be a mapping", code="invalid_augment")
    # albumentations only warns about unknown arguments; a misspelt one would silently do nothing.
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "args", "kwargs"}
    bad = set(params) - accepted
    if bad:
        raise Invalid(
            f"{where}: unknown parameter(s) {', '.join(sorted(bad))}; accepted: {', '.join(sorted(accepted))}",
            code="invalid_augment",
        )
    if "p" in entry:
        p = entry["p"]
        if isinstance(p, bool) or not isinstance(p, int | float) or not 0 <= p <= 1:
            raise Invalid(f"{where}: p must be a number from 0 to 1, not {p!r}", code="invalid_augment")
        params["p"] = float(p)
    if entry["name"] in _COMPOSITIONS:
        children = entry.get("transforms")
        if not isinstance(children, list) or not children:
            raise Invalid(f"{where}: a composition needs a non-empty 'transforms' list", code="invalid_augment")
        params["transforms"] = [_build(c, f"{where}.transforms[{i}]") for i, c in enumerate(children)]
    elif "transforms" in entry:
        raise Invalid(
            f"{where}: only compositions (OneOf, SomeOf, Sequential) take 'transforms'", code="invalid_augment"
        )
    try:
        return cls(**params)
    except Exception as exc:  # albumentations validates ranges with pydantic: surface its message
        raise Invalid(f"{where}: {exc}", code="invalid_augment") from exc


def _compose(transforms: list[Any], bbox_params: A.BboxParams) -> A.Compose:
    """Boxes are always declared, so callers can pass them whatever the transforms; albumentations
    warns when none of them moves boxes (a colour-only pipeline), which is expected here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Got processor for bboxes, but no transform to process it")
        return A.Compose(transforms, bbox_params=bbox_params)


def pipeline_from_dict(config: Mapping[str, Any], source: str = "augment config") -> A.Compose:
    """Build the pipeline from its parsed YAML form; every transform is checked, none guessed."""
    if not isinstance(config, Mapping):
        raise Invalid(f"{source}: expected a mapping with 'transforms'", code="invalid_augment")
    unknown = set(config) - {"bbox", "transforms", "description"}
    if unknown:
        raise Invalid(f"{source}: unknown top-level field(s) {', '.join(sorted(unknown))}", code="invalid_augment")
    bbox = dict(config.get("bbox") or {})
    bad = set(bbox) - _BBOX_FIELDS
    if bad:
        raise Invalid(f"{source}: unknown bbox field(s) {', '.join(sorted(bad))}", code="invalid_augment")
    fmt = bbox.pop("format", "pascal_voc")
    if fmt not in BBOX_FORMATS:
        raise Invalid(
            f"{source}: bbox format must be one of {', '.join(BBOX_FORMATS)}, not {fmt!r}", code="invalid_augment"
        )
    entries = config.get("transforms")
    if not isinstance(entries, list):
        raise Invalid(f"{source}: 'transforms' must be a list", code="invalid_augment")
    transforms = [_build(e, f"{source}: transforms[{i}]") for i, e in enumerate(entries)]
    # clip=True: a box a pixel past the edge after rounding is clipped instead of aborting training.
    return _compose(
        transforms,
        A.BboxParams(format=fmt, label_fields=["class_labels"], clip=True, **{k: float(v) for k, v in bbox.items()}),
    )


def load_pipeline(path: str | Path) -> A.Compose:
    """Read a pipeline YAML (see the module docstring); ``configs/augment/x.yaml`` also works outside a
    checkout (:func:`~hazardlens.settings.find_config_file`)."""
    path = find_config_file(path) or Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise Invalid(f"cannot read augment config {path}: {exc}", code="invalid_augment") from exc
    except yaml.YAMLError as exc:
        raise Invalid(f"augment config {path} is not valid YAML: {exc}", code="invalid_augment") from exc
    return pipeline_from_dict(raw, source=str(path))


def _bbox_params(pipeline: A.Compose) -> Any:
    processor = pipeline.processors.get("bboxes")
    return processor.params if processor is not None else None


def bbox_format(pipeline: A.Compose) -> str:
    params = _bbox_params(pipeline)
    return params.format if params is not None else "pascal_voc"


def _is_spatial(t: Any) -> bool:
    if isinstance(t, A.BaseCompose):
        return any(_is_spatial(x) for x in t.transforms)
    return isinstance(t, A.DualTransform)


def _xyxy_pipeline(pipeline: A.Compose, extra_labels: Sequence[str] = ()) -> A.Compose:
    """The same transforms with pixel xyxy boxes, keeping the config's visibility rules, so that
    callers never convert boxes twice whatever format the YAML names. The transforms are copied
    because albumentations points each transform at the RNG of the last Compose built over it:
    sharing them would let a preview re-seed a training pipeline."""
    params = _bbox_params(pipeline)
    keep = {"min_visibility": 0.0, "min_area": 0.0, "min_width": 0.0, "min_height": 0.0}
    if params is not None:
        keep = {k: float(getattr(params, k, 0.0) or 0.0) for k in keep}
    return _compose(
        copy.deepcopy(list(pipeline.transforms)),
        A.BboxParams(format="pascal_voc", clip=True, label_fields=["class_labels", *extra_labels], **keep),
    )


def _run(transform: A.Compose, image: np.ndarray, boxes: Sequence[Box]) -> tuple[np.ndarray, list[Box]]:
    """Run a pascal_voc pipeline; boxes are clipped first because albumentations refuses a box
    even a fraction of a pixel outside the image, and a label drawn past the edge is common."""
    h, w = image.shape[:2]
    coords = np.array([[b.x1, b.y1, b.x2, b.y2] for b in boxes], np.float32).reshape(-1, 4)
    coords[:, [0, 2]] = coords[:, [0, 2]].clip(0, w)
    coords[:, [1, 3]] = coords[:, [1, 3]].clip(0, h)
    ok = (coords[:, 2] > coords[:, 0]) & (coords[:, 3] > coords[:, 1])
    keys = [b.class_key for b, k in zip(boxes, ok, strict=True) if k]
    out = transform(image=image, bboxes=coords[ok], class_labels=keys)
    new = [Box(str(c), *(float(v) for v in bb[:4])) for bb, c in zip(out["bboxes"], out["class_labels"], strict=True)]
    return np.ascontiguousarray(out["image"]), new


def apply(pipeline: A.Compose, image: np.ndarray, boxes: Sequence[Box]) -> tuple[np.ndarray, list[Box]]:
    """Augment one RGB image and its pixel boxes with the pipeline's own RNG, in whichever box
    format its YAML names; boxes pushed out (below min_visibility) are dropped."""
    if bbox_format(pipeline) == "pascal_voc":
        return _run(pipeline, image, boxes)
    h, w = image.shape[:2]
    clipped = [
        Box(b.class_key, min(max(b.x1, 0), w), min(max(b.y1, 0), h), min(max(b.x2, 0), w), min(max(b.y2, 0), h))
        for b in boxes
    ]
    clipped = [b for b in clipped if b.x2 > b.x1 and b.y2 > b.y1]
    yolo = np.array(
        [[(b.x1 + b.x2) / 2 / w, (b.y1 + b.y2) / 2 / h, b.width / w, b.height / h] for b in clipped], np.float32
    ).reshape(-1, 4)
    out = pipeline(image=image, bboxes=yolo, class_labels=[b.class_key for b in clipped])
    nh, nw = out["image"].shape[:2]
    new = [
        Box(str(c), (cx - bw / 2) * nw, (cy - bh / 2) * nh, (cx + bw / 2) * nw, (cy + bh / 2) * nh)
        for (cx, cy, bw, bh, *_), c in zip(out["bboxes"], out["class_labels"], strict=True)
    ]
    return np.ascontiguousarray(out["image"]), new


# --- contact sheet -----------------------------------------------------------------------------

_PALETTE = [
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
    (0, 128, 128),
    (170, 110, 40),
]


def _read_rgb(image: Path | str | np.ndarray) -> np.ndarray:
    if isinstance(image, np.ndarray):
        return image
    from PIL import Image, ImageOps

    with Image.open(image) as im:  # PIL + exif_transpose: boxes are in pixels of the oriented image
        return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))


def _tile(image: np.ndarray, boxes: Sequence[Box], size: int, colours: dict[str, tuple[int, int, int]]) -> np.ndarray:
    h, w = image.shape[:2]
    scale = min(size / max(w, 1), size / max(h, 1))
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    resized = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    canvas = np.full((size, size, 3), 114, np.uint8)
    ox, oy = (size - nw) // 2, (size - nh) // 2
    canvas[oy : oy + nh, ox : ox + nw] = resized[..., :3] if resized.ndim == 3 else resized[..., None]
    for box in boxes:
        colour = colours.setdefault(box.class_key, _PALETTE[len(colours) % len(_PALETTE)])
        p1 = (int(round(ox + box.x1 * scale)), int(round(oy + box.y1 * scale)))
        p2 = (int(round(ox + box.x2 * scale)), int(round(oy + box.y2 * scale)))
        cv2.rectangle(canvas, p1, p2, colour, 2)
        # Class keys are ASCII snake_case (taxonomy rule), so cv2's Hershey font can write them.
        cv2.putText(
            canvas,
            box.class_key,
            (p1[0] + 2, max(p1[1] - 3, 10)),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.35,
            colour,
            1,
            cv2.LINE_AA,
        )
    cv2.rectangle(canvas, (0, 0), (size - 1, size - 1), (255, 255, 255), 1)
    return canvas


def sheet_shape(n: int, tile: int = 256, cols: int | None = None) -> tuple[int, int]:
    """(width, height) in pixels of a contact sheet of ``n`` tiles."""
    cols = cols or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    return cols * tile, rows * tile


def _dataset_samples(ctx: Context, dataset: DatasetVersion | str, limit: int, seed: int) -> list[PreviewSample]:
    """A seeded pick of a dataset version's images, read through the export cache (oriented)."""
    from hazardlens.datasets.materialize import oriented_image_path
    from hazardlens.datasets.versions import load_manifest, resolve

    if isinstance(dataset, str):
        with ctx.db.session() as session:
            dataset = resolve(session, dataset)
    items = list(load_manifest(ctx, dataset)["items"])
    if not items:
        raise Invalid(f"dataset {dataset.name} has no images to preview", code="empty_dataset")
    rng = np.random.default_rng(seed)
    # Prefer images with boxes: a contact sheet is for checking that boxes follow the pixels.
    labelled = [it for it in items if it["boxes"]] or items
    picked = [labelled[i] for i in rng.permutation(len(labelled))[:limit]]
    return [
        (oriented_image_path(ctx, it), [Box(b["class_key"], b["x1"], b["y1"], b["x2"], b["y2"]) for b in it["boxes"]])
        for it in picked
    ]


def preview(
    source: Context | Sequence[PreviewSample],
    pipeline: A.Compose,
    out_png: str | Path,
    *,
    n: int = 16,
    seed: int = 0,
    dataset: DatasetVersion | str | None = None,
    tile: int = 256,
    cols: int | None = None,
) -> Path:
    """Write a contact sheet of ``n`` augmented samples with their boxes drawn, so a person can see
    what training will see. ``source`` is a list of (image, boxes) or a Context with ``dataset``
    (a DatasetVersion or 'NAME@VERSION'). The same seed draws the same sheet."""
    if n < 1:
        raise Invalid("n must be at least 1", code="invalid_augment")
    if not isinstance(source, Sequence):
        if dataset is None:
            raise Invalid("a dataset is needed to preview from the library", code="invalid_augment")
        samples = _dataset_samples(source, dataset, n, seed)
    else:
        samples = list(source)
        if len(samples) > n:  # a folder of thousands: decode only the images that will be drawn
            samples = [samples[i] for i in sorted(np.random.default_rng(seed).permutation(len(samples))[:n])]
    if not samples:
        raise Invalid("nothing to preview: no images given", code="invalid_augment")
    images = [(_read_rgb(img), list(boxes)) for img, boxes in samples]
    xyxy = _xyxy_pipeline(pipeline)
    xyxy.set_random_seed(seed)
    colours: dict[str, tuple[int, int, int]] = {}
    tiles = []
    for i in range(n):
        image, boxes = images[i % len(images)]
        out_image, new = _run(xyxy, image, boxes)
        tiles.append(_tile(out_image, new, tile, colours))
    width, height = sheet_shape(n, tile, cols)
    ncols = width // tile
    sheet = np.full((height, width, 3), 40, np.uint8)
    for i, t in enumerate(tiles):
        r, c = divmod(i, ncols)
        sheet[r * tile : (r + 1) * tile, c * tile : (c + 1) * tile] = t
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out_png), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR)):
        raise Invalid(f"cannot write {out_png}", code="write_failed")
    return out_png


# --- Ultralytics integration -------------------------------------------------------------------


class UltralyticsAlbumentations:
    """Drop-in replacement for ``ultralytics.data.augment.Albumentations`` running our pipeline.

    Same labels-dict contract as Ultralytics' step (``img`` BGR HxWxC, ``cls`` (N,1), ``instances``),
    and the same state on the way out (boxes xywh, normalised), so the transforms after it
    (RandomHSV, RandomFlip, Format) work unchanged. Differences, on purpose: the image is handed to
    albumentations as RGB (sun flare, fog and colour transforms assume RGB), and boxes travel as
    pixel xyxy whatever format the YAML names.
    """

    def __init__(self, pipeline: A.Compose, p: float = 1.0) -> None:
        self.pipeline = pipeline
        self.p = p
        self.transform = _xyxy_pipeline(pipeline, extra_labels=("idx",))
        self.contains_spatial = any(_is_spatial(t) for t in pipeline.transforms)
        self._seeded: int | None = None

    def __repr__(self) -> str:
        return f"UltralyticsAlbumentations({', '.join(type(t).__name__ for t in self.pipeline.transforms)})"

    def _seed(self) -> None:
        # Like Ultralytics: albumentations has its own RNG; seed it per process so that DataLoader
        # workers (forked with one state) do not all draw the same augmentations.
        try:
            import torch

            seed = int(torch.initial_seed()) % (2**32)
        except Exception:  # pragma: no cover - torch is always there when Ultralytics is
            return
        if self._seeded != seed:
            self.transform.set_random_seed(seed)
            self._seeded = seed

    def __call__(self, labels: dict[str, Any]) -> dict[str, Any]:
        import random

        if self.p < 1 and random.random() >= self.p:
            return labels
        im = labels["img"]
        if im.ndim != 3 or im.shape[2] != 3:  # grayscale/multispectral: leave to Ultralytics
            return labels
        self._seed()
        instances = labels["instances"]
        cls = np.asarray(labels["cls"]).reshape(-1)
        if self.contains_spatial and (len(instances.segments) or instances.keypoints is not None):
            raise NotImplementedError("the hazardlens augmentation step supports detection boxes only")
        h, w = im.shape[:2]
        instances.convert_bbox("xyxy")
        instances.denormalize(w, h)
        boxes = np.asarray(instances.bboxes, np.float32).reshape(-1, 4).copy()
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h)
        valid = np.nonzero((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1]))[0]
        rgb = cv2.cvtColor(im, cv2.COLOR_BGR2RGB)
        out = self.transform(image=rgb, bboxes=boxes[valid], class_labels=cls[valid], idx=valid)
        img = np.ascontiguousarray(cv2.cvtColor(np.ascontiguousarray(out["image"]), cv2.COLOR_RGB2BGR))
        keep = np.asarray(out["idx"], dtype=int).reshape(-1)
        nh, nw = img.shape[:2]
        new_instances = instances[keep]
        new_instances.update(np.asarray(out["bboxes"], np.float32).reshape(-1, 4)[:, :4])
        new_instances.convert_bbox("xywh")
        new_instances.normalize(nw, nh)
        labels["img"] = img
        labels["cls"] = np.asarray(labels["cls"]).reshape(-1, 1)[keep]
        labels["instances"] = new_instances
        return labels


def _swap(compose: Any, ours: UltralyticsAlbumentations) -> int:
    from ultralytics.data.augment import Albumentations

    steps = compose.transforms
    swapped = 0
    for i, step in enumerate(steps):
        if isinstance(step, Albumentations | UltralyticsAlbumentations):
            steps[i] = ours
            swapped += 1
    return swapped


def install_in_dataset(dataset: Any, pipeline: A.Compose) -> UltralyticsAlbumentations:
    """Put our pipeline in place of Ultralytics' albumentations step of a built (training)
    YOLODataset. Ultralytics rebuilds the transforms when it closes mosaic for the last epochs, so
    the dataset's ``build_transforms`` is wrapped too: otherwise those epochs would silently train
    without our augmentation. Raises Invalid when the dataset has no such step (a validation set)."""
    ours = UltralyticsAlbumentations(pipeline)
    if not _swap(dataset.transforms, ours):
        raise Invalid(
            "this dataset has no albumentations step (is it a validation dataset, augment=False?)",
            code="invalid_augment",
        )
    original = getattr(dataset, "_hazardlens_build_transforms", None) or dataset.build_transforms

    def build_transforms(hyp: Any) -> Any:
        transforms = original(hyp)
        _swap(transforms, ours)
        return transforms

    dataset._hazardlens_build_transforms = original
    dataset.build_transforms = build_transforms
    return ours


__all__ = [
    "BBOX_FORMATS",
    "PreviewSample",
    "UltralyticsAlbumentations",
    "apply",
    "bbox_format",
    "install_in_dataset",
    "load_pipeline",
    "pipeline_from_dict",
    "preview",
    "sheet_shape",
]
