"""Scoring rule findings against labelled evidence boxes.

A rule (``hazardlens.rules``) turns a model's detections into findings: "a head without a helmet
here", with a box, a confidence and the evidence class whose labelled boxes say whether the finding
is right (``head`` for a missing helmet). A finding's box is often not the evidence box itself (a
rule may box the whole person, or a helmet-less head grown by a margin), so a finding matches a
labelled box of its evidence class when

- their IoU is at least ``iou`` (0.3 by default: looser than detection's 0.5, because a rule's box
  is drawn for an inspector, not fitted to the label), or
- the labelled box's centre lies inside the finding's box.

Matching is greedy by confidence over the whole set (the most confident finding first, as in
detection AP): each finding takes the unmatched labelled box of its image with the highest IoU among
those it matches, and each labelled box is matched at most once (a second finding on the same head is
a false positive). Pure Python and numpy: no model, no catalogue.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["evaluate_rule_findings", "match_findings"]


def _box_of(obj: Any) -> tuple[float, float, float, float]:
    """(x1, y1, x2, y2) of a finding or a labelled box: an object with ``box`` (a 4-sequence or a
    Box), an object or mapping with x1..y2, or a plain 4-sequence."""
    box = obj.get("box") if isinstance(obj, Mapping) else getattr(obj, "box", None)
    if box is None:
        box = obj
    if isinstance(box, Mapping):
        return float(box["x1"]), float(box["y1"]), float(box["x2"]), float(box["y2"])
    if hasattr(box, "x1"):
        return float(box.x1), float(box.y1), float(box.x2), float(box.y2)
    x1, y1, x2, y2 = (float(v) for v in box)
    return x1, y1, x2, y2


def _field(obj: Any, *names: str) -> Any:
    for name in names:
        value = obj.get(name) if isinstance(obj, Mapping) else getattr(obj, name, None)
        if value is not None:
            return value
    return None


def _gt_class(obj: Any) -> str | None:
    if isinstance(obj, Sequence) and not isinstance(obj, str) and len(obj) == 5:
        return str(obj[0])  # (class_key, x1, y1, x2, y2)
    value = _field(obj, "class_key", "cls", "class_name")
    return None if value is None else str(value)


def _gt_box(obj: Any) -> tuple[float, float, float, float]:
    if isinstance(obj, Sequence) and not isinstance(obj, str) and len(obj) == 5:
        return _box_of(obj[1:])
    return _box_of(obj)


def _iou(box: tuple[float, float, float, float], others: np.ndarray) -> np.ndarray:
    if not len(others):
        return np.zeros(0)
    x1 = np.maximum(box[0], others[:, 0])
    y1 = np.maximum(box[1], others[:, 1])
    x2 = np.minimum(box[2], others[:, 2])
    y2 = np.minimum(box[3], others[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = max(box[2] - box[0], 0.0) * max(box[3] - box[1], 0.0)
    areas = np.clip(others[:, 2] - others[:, 0], 0, None) * np.clip(others[:, 3] - others[:, 1], 0, None)
    union = area + areas - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def match_findings(
    findings_per_image: Mapping[Hashable, Iterable[Any]],
    gt_per_image: Mapping[Hashable, Iterable[Any]],
    evidence_class: str,
    iou: float = 0.3,
) -> tuple[np.ndarray, np.ndarray, int]:
    """(confidence, is_true_positive) of every finding of ``evidence_class``, most confident first,
    and the number of labelled boxes of that class. Findings that name another evidence class are
    left out; findings without one are taken to be about ``evidence_class``."""
    gts: dict[Hashable, np.ndarray] = {}
    for image, boxes in gt_per_image.items():
        mine = [_gt_box(b) for b in boxes if _gt_class(b) == evidence_class]
        gts[image] = np.asarray(mine, dtype=np.float64).reshape(-1, 4)
    flat: list[tuple[float, int, Hashable, tuple[float, float, float, float]]] = []
    order = 0
    for image, findings in findings_per_image.items():
        for f in findings:
            cls = _field(f, "evidence_class")
            if cls is not None and str(cls) != evidence_class:
                continue
            conf = _field(f, "confidence", "conf", "score")
            flat.append((float(conf if conf is not None else 1.0), order, image, _box_of(f)))
            order += 1
    flat.sort(key=lambda t: (-t[0], t[1]))  # stable: equal confidences keep their given order
    matched = {image: np.zeros(len(b), dtype=bool) for image, b in gts.items()}
    conf_out = np.zeros(len(flat))
    tp_out = np.zeros(len(flat), dtype=bool)
    for n, (conf, _, image, box) in enumerate(flat):
        conf_out[n] = conf
        boxes = gts.get(image)
        if boxes is None or not len(boxes):
            continue
        ious = _iou(box, boxes)
        cx = (boxes[:, 0] + boxes[:, 2]) / 2
        cy = (boxes[:, 1] + boxes[:, 3]) / 2
        inside = (cx >= box[0]) & (cx <= box[2]) & (cy >= box[1]) & (cy <= box[3])
        ok = ((ious >= iou) | inside) & ~matched[image]
        if not ok.any():
            continue
        # the best-overlapping candidate; among equal IoU (e.g. 0 for centre-only matches) the nearest centre
        fx, fy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        dist = (cx - fx) ** 2 + (cy - fy) ** 2
        candidates = np.flatnonzero(ok)
        best = candidates[np.lexsort((dist[candidates], -ious[candidates]))[0]]
        matched[image][best] = True
        tp_out[n] = True
    n_gt = int(sum(len(b) for b in gts.values()))
    return conf_out, tp_out, n_gt


def _average_precision(tp: np.ndarray, n_gt: int) -> float:
    """Area under the precision-recall curve over confidence (all-point interpolation: precision made
    monotone from the right, integrated over the recall steps), with ``tp`` sorted by confidence."""
    if n_gt == 0 or not len(tp):
        return 0.0
    ctp = np.cumsum(tp)
    cfp = np.cumsum(~tp)
    recall = ctp / n_gt
    precision = ctp / (ctp + cfp)
    mrec = np.concatenate(([0.0], recall))
    mpre = np.concatenate(([1.0], precision))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    return float(np.sum((mrec[1:] - mrec[:-1]) * mpre[1:]))


def evaluate_rule_findings(
    findings_per_image: Mapping[Hashable, Iterable[Any]],
    gt_per_image: Mapping[Hashable, Iterable[Any]],
    evidence_class: str,
    iou: float = 0.3,
    conf: float = 0.0,
) -> dict[str, Any]:
    """Precision, recall and AP of one rule's findings against the labelled ``evidence_class`` boxes.

    ``findings_per_image``: image key -> findings (objects or mappings with ``box`` (x1, y1, x2, y2
    pixels), ``confidence`` and optionally ``evidence_class``). ``gt_per_image``: image key -> labelled
    boxes of any class (``hazardlens.detections.Box``, mappings with class_key/x1..y2, or
    ``(class_key, x1, y1, x2, y2)``); only ``evidence_class`` boxes count. An image labelled but
    without findings contributes its boxes as misses; findings on an image missing from
    ``gt_per_image`` are false positives (the caller leaves out images whose labels do not cover the
    evidence class).

    ``precision``/``recall``/``tp``/``fp``/``fn`` count the findings at or above ``conf``; ``ap`` (the
    "AP50-like" figure, at this module's matching rule rather than IoU 0.5) integrates precision over
    recall across every confidence, like detection AP.
    """
    confs, tp, n_gt = match_findings(findings_per_image, gt_per_image, evidence_class, iou)
    keep = confs >= conf
    n_tp = int(tp[keep].sum())
    n_fp = int((~tp[keep]).sum())
    precision = n_tp / (n_tp + n_fp) if n_tp + n_fp else 0.0
    recall = n_tp / n_gt if n_gt else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "evidence_class": evidence_class,
        "iou": iou,
        "conf": conf,
        "precision": round(precision, 5),
        "recall": round(recall, 5),
        "f1": round(f1, 5),
        "ap": round(_average_precision(tp, n_gt), 5),
        "tp": n_tp,
        "fp": n_fp,
        "fn": n_gt - n_tp,
        "n_gt": n_gt,
        "findings": int(keep.sum()),
    }
