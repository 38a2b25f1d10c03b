"""Sliced inference (``/v1/detect?tiles=true``, models/tiling.py) against the plain whole-photo pass.

    .venv/bin/python benchmarks/tiling_bench.py [--weights models/baseline/baseline.pt] [--grid 1 2 3]

A wide, high-resolution site photo shows many workers small. No labelled set of such photos exists
here, so the benchmark builds them from the baseline's held-out cameras (192.168.2.209 and
192.168.2.43 of ../shared/data/sfchd-ppe, never trained on): a ``g`` x ``g`` grid of 1280x704 frames
is one 1280g x 704g "photo" whose people are 1/g of their size relative to the frame. For each
grid size, the same model (ONNX Runtime engine, the service's) runs plain and sliced (windows of
1280 original pixels, overlap 0.25) at conf 0.001; mAP50 and mAP50-95 per class come from
Ultralytics' ``ap_per_class`` with its matching rule. Printed: per-class mAP50, the mean over
person / helmet / safety_clothes, the ratio sliced / plain, and milliseconds per photo.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("HAZARDLENS_SHARED_DATA", ROOT.parent / "shared" / "data"))
TEST_CAMERAS = {"192.168.2.209", "192.168.2.43"}
GOAL_CLASSES = ["person", "helmet", "safety_clothes"]
IOUV = np.linspace(0.5, 0.95, 10)


def held_out_frames() -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(BGR image, xyxy boxes, class keys) of every frame of the held-out cameras."""
    root = DATA / "sfchd-ppe"
    coco = json.loads((root / "annotations.coco.json").read_text(encoding="utf-8"))
    mapping = yaml.safe_load((ROOT / "configs" / "class_maps" / "sfchd.yaml").read_text(encoding="utf-8"))
    camera = re.compile(mapping["camera_regex"])
    names = {c["id"]: mapping["mapping"].get(c["name"], "ignore") for c in coco["categories"]}
    boxes: dict[int, list[tuple[list[float], str]]] = defaultdict(list)
    for a in coco["annotations"]:
        key = names[a["category_id"]]
        if key != "ignore":
            x, y, w, h = (float(v) for v in a["bbox"])
            boxes[a["image_id"]].append(([x, y, x + w, y + h], key))
    frames = []
    for im in sorted(coco["images"], key=lambda i: i["file_name"]):
        m = camera.search(im["file_name"])
        if not m or ".".join(m.groups()) not in TEST_CAMERAS:
            continue
        image = cv2.imread(str(root / "images" / im["file_name"]))
        rows = boxes.get(im["id"], [])
        frames.append(
            (image, np.array([r[0] for r in rows], np.float32).reshape(-1, 4), np.array([r[1] for r in rows], object))
        )
    if not frames:
        sys.exit(f"no frames of cameras {sorted(TEST_CAMERAS)} under {root}")
    return frames


def grids(frames: list, g: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Non-overlapping g x g mosaics of consecutive frames (all resized to the first frame's size)."""
    h, w = frames[0][0].shape[:2]
    out = []
    for start in range(0, len(frames) - g * g + 1, g * g):
        canvas = np.zeros((h * g, w * g, 3), np.uint8)
        xyxy, keys = [], []
        for i, (image, b, k) in enumerate(frames[start : start + g * g]):
            sy, sx = h / image.shape[0], w / image.shape[1]
            r, c = divmod(i, g)
            canvas[r * h : (r + 1) * h, c * w : (c + 1) * w] = (
                cv2.resize(image, (w, h)) if (sx, sy) != (1, 1) else image
            )
            xyxy.append(b * np.array([sx, sy, sx, sy], np.float32) + np.array([c * w, r * h] * 2, np.float32))
            keys.append(k)
        out.append((canvas, np.concatenate(xyxy), np.concatenate(keys)))
    return out


def correct_matrix(
    pred_xyxy: np.ndarray, pred_keys: np.ndarray, true_xyxy: np.ndarray, true_keys: np.ndarray
) -> np.ndarray:
    """Ultralytics' DetectionValidator.match_predictions: greedy one-to-one by IoU at each threshold."""
    from hazardlens.detections import box_iou

    correct = np.zeros((len(pred_xyxy), len(IOUV)), bool)
    if not len(pred_xyxy) or not len(true_xyxy):
        return correct
    iou = box_iou(true_xyxy, pred_xyxy) * (true_keys[:, None] == pred_keys[None, :])
    for i, t in enumerate(IOUV):
        matches = np.array(np.nonzero(iou >= t)).T
        if matches.shape[0]:
            if matches.shape[0] > 1:
                matches = matches[iou[matches[:, 0], matches[:, 1]].argsort()[::-1]]
                matches = matches[np.unique(matches[:, 1], return_index=True)[1]]
                matches = matches[np.unique(matches[:, 0], return_index=True)[1]]
            correct[matches[:, 1], i] = True
    return correct


def score(results: list, classes: list[str]) -> dict[str, tuple[float, float, int]]:
    from ultralytics.utils.metrics import ap_per_class

    index = {k: i for i, k in enumerate(classes)}
    tp, conf, pcls, tcls = [], [], [], []
    for dets, true_xyxy, true_keys in results:
        tp.append(correct_matrix(dets.xyxy, dets.class_keys, true_xyxy, true_keys))
        conf.append(dets.confidence)
        pcls.append(np.array([index[k] for k in dets.class_keys], np.int64))
        tcls.append(np.array([index[k] for k in true_keys], np.int64))
    t = np.concatenate(tcls)
    out = ap_per_class(np.concatenate(tp), np.concatenate(conf), np.concatenate(pcls), t)
    ap, unique = out[5], out[6]
    return {classes[int(c)]: (float(ap[i, 0]), float(ap[i].mean()), int((t == c).sum())) for i, c in enumerate(unique)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", type=Path, default=ROOT / "models" / "baseline" / "baseline.pt")
    ap.add_argument("--grid", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--window", type=int, default=1280)
    ap.add_argument("--overlap", type=float, default=0.25)
    args = ap.parse_args()

    from hazardlens.models.engines import load_engine
    from hazardlens.models.tiling import predict_tiled, tile_scale
    from hazardlens.models.ultralytics_env import prepare_ultralytics

    prepare_ultralytics()
    card = json.loads((args.weights.parent / "card.json").read_text(encoding="utf-8"))
    classes = card["classes"]
    imgsz = int(card.get("imgsz") or 640)
    cache = ROOT / "var" / "cache"  # the ONNX file derived from the weights, kept between runs
    engine = load_engine("onnx", args.weights, classes, imgsz, cache, device="cpu")
    try:
        frames = held_out_frames()
        print(
            f"model {args.weights.name} ({len(classes)} classes, imgsz {imgsz}); "
            f"{len(frames)} held-out frames; windows {args.window} px, overlap {args.overlap}"
        )
        for g in args.grid:
            photos = grids(frames, g)
            runs: dict[str, list] = {"plain": [], "sliced": []}
            ms: dict[str, float] = {}
            for mode in runs:
                start = time.perf_counter()
                for image, true_xyxy, true_keys in photos:
                    if mode == "plain":
                        dets = engine.predict([image], conf=0.001, iou=0.7)[0]
                    else:
                        s = tile_scale(max(image.shape[:2]), imgsz, args.window)
                        small = (
                            cv2.resize(
                                image,
                                (round(image.shape[1] * s), round(image.shape[0] * s)),
                                interpolation=cv2.INTER_AREA,
                            )
                            if s < 1
                            else image
                        )
                        dets = predict_tiled(
                            lambda crops: engine.predict(crops, conf=0.001, iou=0.7),
                            small,
                            imgsz,
                            overlap=args.overlap,
                            iou=0.7,
                        )
                        dets.xyxy /= s
                    runs[mode].append((dets, true_xyxy, true_keys))
                ms[mode] = (time.perf_counter() - start) * 1000 / len(photos)
            scores = {mode: score(r, classes) for mode, r in runs.items()}
            h, w = photos[0][0].shape[:2]
            print(f"\ngrid {g}x{g}: {len(photos)} photos of {w}x{h}")
            print(
                f"{'class':16s} {'inst':>5s} {'plain AP50':>11s} {'sliced AP50':>12s} "
                f"{'plain AP50-95':>14s} {'sliced AP50-95':>15s}"
            )
            for key in classes:
                if key in scores["plain"]:
                    p, s_ = scores["plain"][key], scores["sliced"].get(key, (0.0, 0.0, 0))
                    print(f"{key:16s} {p[2]:5d} {p[0]:11.3f} {s_[0]:12.3f} {p[1]:14.3f} {s_[1]:15.3f}")
            mean = {m: float(np.mean([scores[m].get(k, (0.0,))[0] for k in GOAL_CLASSES])) for m in scores}
            ratio = mean["sliced"] / mean["plain"] if mean["plain"] else float("inf")
            print(
                f"mean AP50 person/helmet/safety_clothes: plain {mean['plain']:.3f}, sliced {mean['sliced']:.3f}, "
                f"ratio sliced/plain {ratio:.2f}; ms/photo plain {ms['plain']:.0f}, sliced {ms['sliced']:.0f}"
            )
    finally:
        engine.close()


if __name__ == "__main__":
    main()
