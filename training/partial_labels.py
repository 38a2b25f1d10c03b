"""Training on partially labelled sources: classes an image's labels leave out are masked, not learnt.

A source that boxes heads and helmets but only a few of the people (hardhat-workers) cannot be
trained on as is: every unboxed person would teach the detector "no person here". Dropping the
source loses its heads. hazardlens keeps both by masking: the dataset version records, per image,
the classes its revision declares unlabelled (``unlabeled_classes.json`` beside data.yaml), and

1. the training dataset adds one *ignore region* per such class to the image's labels: a box over
   the whole image with class id ``nc + c``. It rides through Ultralytics' own mosaic, affine and flip
   transforms like any box, so after a mosaic it covers exactly the quarter that came from that image;
2. :class:`MaskedDetectionLoss` takes those regions out of the targets before the assigner sees them,
   and zeroes the classification loss of class ``c`` at every anchor inside a region, except where
   that anchor is a positive for ``c`` (the person boxes the source does have still teach).

Box regression and every other class train normally on these images. Nothing else in Ultralytics
changes, so the same weights, checkpoints and resume work as for any run.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hazardlens.datasets.materialize import UNLABELED_FILE


def read_unlabeled(data_yaml: Path, names: Sequence[str]) -> dict[str, list[int]]:
    """Image file name -> class ids its labels leave out, for the classes this dataset trains."""
    path = Path(data_yaml).parent / UNLABELED_FILE
    if not path.is_file():
        return {}
    raw = json.loads(path.read_text(encoding="utf-8"))
    index = {n: i for i, n in enumerate(names)}
    out = {}
    for name, keys in raw.items():
        ids = sorted({index[k] for k in keys if k in index})
        if ids:
            out[str(name)] = ids
    return out


def add_ignore_regions(label: dict[str, Any], unlabeled: Mapping[str, list[int]], nc: int) -> dict[str, Any]:
    """Append a whole-image ignore region (class ``nc + c``) per unlabelled class ``c`` of this image.

    Called on Ultralytics' raw label dict (normalised xywh ``bboxes``, ``cls`` of shape (n, 1)) before
    it becomes Instances, so every later transform moves the regions with the image."""
    ids = unlabeled.get(Path(str(label.get("im_file", ""))).name)
    if not ids:
        return label
    if len(label.get("segments") or []):
        return label  # polygon labels would need a polygon per region; hazardlens exports boxes only
    regions = np.tile(np.array([[0.5, 0.5, 1.0, 1.0]], dtype=np.float32), (len(ids), 1))
    label["bboxes"] = np.concatenate([np.asarray(label["bboxes"], dtype=np.float32).reshape(-1, 4), regions])
    label["cls"] = np.concatenate(
        [np.asarray(label["cls"], dtype=np.float32).reshape(-1, 1), np.array([[nc + c] for c in ids], dtype=np.float32)]
    )
    return label


def install_in_dataset(dataset: Any, unlabeled: Mapping[str, list[int]], nc: int) -> None:
    """Make a YOLODataset add ignore regions to every label it builds (mosaic partners included)."""
    original = dataset.update_labels_info

    def update_labels_info(label: dict[str, Any]) -> dict[str, Any]:
        return original(add_ignore_regions(label, unlabeled, nc))

    dataset.update_labels_info = update_labels_info
    dataset.hl_unlabeled = dict(unlabeled)


def region_mask(points: Any, batch_idx: Any, classes: Any, boxes_xyxy: Any, batch_size: int, nc: int) -> Any:
    """Boolean (batch, anchors, nc): True where an anchor point lies inside an ignore region of its
    image for that class. ``points`` (anchors, 2) and ``boxes_xyxy`` (regions, 4) in pixels."""
    import torch

    mask = torch.zeros(batch_size, points.shape[0], nc, dtype=torch.bool, device=points.device)
    if boxes_xyxy.shape[0] == 0:
        return mask
    x, y = points[:, 0][None], points[:, 1][None]  # (1, anchors)
    inside = (
        (x >= boxes_xyxy[:, 0:1]) & (x <= boxes_xyxy[:, 2:3]) & (y >= boxes_xyxy[:, 1:2]) & (y <= boxes_xyxy[:, 3:4])
    )  # (regions, anchors)
    for r in range(boxes_xyxy.shape[0]):
        mask[int(batch_idx[r]), :, int(classes[r])] |= inside[r]
    return mask


_LOSS_CLASS: type | None = None


def masked_loss_class() -> type:
    """Built on first use (importing ultralytics waits for prepare_ultralytics)."""
    global _LOSS_CLASS
    if _LOSS_CLASS is not None:
        return _LOSS_CLASS
    import torch
    import torch.nn.functional as F
    from ultralytics.utils.loss import v8DetectionLoss
    from ultralytics.utils.ops import xywh2xyxy
    from ultralytics.utils.tal import make_anchors

    class MaskedDetectionLoss(v8DetectionLoss):
        """v8DetectionLoss that honours ignore regions (class ids >= nc) in the batch's targets."""

        def __init__(self, model: Any, **kwargs: Any) -> None:
            super().__init__(model, **kwargs)
            self._ignore: torch.Tensor | None = None
            self.bce = self._masked_bce  # type: ignore[assignment]  # called as bce(pred, target); a function will do

        def _masked_bce(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            loss = F.binary_cross_entropy_with_logits(pred, target, reduction="none")
            if self._ignore is not None:
                loss = loss.masked_fill(self._ignore & (target <= 0), 0.0)
            return loss

        def loss(self, preds: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> Any:
            cls = batch["cls"].view(-1)
            regions = cls >= self.nc
            self._ignore = None
            if bool(regions.any()):
                feats = preds["feats"]
                anchors, strides = make_anchors(feats, self.stride, 0.5)
                stride = float(self.stride[0])  # type: ignore[index]  # a Tensor; torch types Module attributes loosely
                h, w = (int(feats[0].shape[2] * stride), int(feats[0].shape[3] * stride))
                scale = torch.tensor([w, h, w, h], device=self.device, dtype=torch.float32)
                boxes = xywh2xyxy(batch["bboxes"][regions].to(self.device).float() * scale)
                self._ignore = region_mask(
                    anchors * strides,
                    batch["batch_idx"].view(-1)[regions].long(),
                    (cls[regions] - self.nc).long(),
                    boxes,
                    preds["boxes"].shape[0],
                    self.nc,
                )
                keep = ~regions
                batch = {
                    **batch,
                    "cls": batch["cls"][keep],
                    "bboxes": batch["bboxes"][keep],
                    "batch_idx": batch["batch_idx"][keep],
                }
            try:
                return super().loss(preds, batch)
            finally:
                self._ignore = None

    _LOSS_CLASS = MaskedDetectionLoss
    return MaskedDetectionLoss


def use_masked_loss(trainer: Any) -> None:
    """on_train_start callback: the model being trained computes its loss with ignore regions (set
    after the EMA copy and checkpoint state exist, so neither carries the criterion)."""
    from ultralytics.utils import LOGGER
    from ultralytics.utils.torch_utils import unwrap_model

    model = unwrap_model(trainer.model)
    model.criterion = masked_loss_class()(model)
    LOGGER.info(
        "partial labels: %d training images mask classes they do not label",
        len(getattr(trainer, "hl_unlabeled", {}) or {}),
    )


__all__ = [
    "UNLABELED_FILE",
    "add_ignore_regions",
    "install_in_dataset",
    "masked_loss_class",
    "read_unlabeled",
    "region_mask",
    "use_masked_loss",
]
