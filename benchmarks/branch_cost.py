"""What a branch costs at inference: the production model against itself with one (or more) branches.

    .venv/bin/python benchmarks/branch_cost.py [--weights models/baseline/baseline.pt] [--student PATH]
        [--branches 1 2] [--trunk 10] [--imgsz 640] [--count 60] [--engines onnx,openvino]

A class added with ``branch_classes`` (configs/train/add_class_branch.yaml, training/branch.py) runs
one more neck and head beside the production model's. This measures what that costs, per engine, on
the same photos in the same run: the anchor is the production model itself (``--weights``), and each
branched model is reported as p50 latency and as a ratio to it. ``--student`` grafts a real fine-tune
(a run's ``weights/best.pt``); without it a stand-in is made from the production model (widened by a
class, every layer after the trunk perturbed): time depends on the layers, not on what they learnt.
Photos: ``--count`` from ../shared/data/sfchd-ppe/images, else generated ones of the same size. One
photo at a time (a lone inspector's request), after warm-up, the models taking turns photo by photo;
the figures swing on a busy machine, the ratios much less.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ROOT.parent / "shared" / "data" / "sfchd-ppe" / "images"


def _photos(count: int) -> list[np.ndarray]:
    import cv2

    files = sorted(PHOTOS.glob("*.jpg"))[:count] if PHOTOS.is_dir() else []
    if files:
        return [cv2.imread(str(f)) for f in files]
    rng = np.random.default_rng(0)
    return [cv2.resize(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8), (1280, 960)) for _ in range(count)]


def _stand_in(weights: Path, out: Path, trunk: int, added: str, seed: int) -> Path:
    import torch

    from hazardlens.training.expand import expand_classes, model_classes

    expand_classes(weights, [*model_classes(weights), added], out)
    ckpt = torch.load(out, weights_only=False)
    model = ckpt["model"].float()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.model[trunk:].parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.01)
    ckpt["model"] = model.half()
    torch.save(ckpt, out)
    return out


def _interleaved_p50(engines: dict[str, object], photos: list[np.ndarray]) -> dict[str, float]:
    """p50 latency per engine, the engines taking turns photo by photo (so that a busy moment of the
    machine falls on all of them alike, not on whichever was being timed)."""
    for engine in engines.values():
        for photo in photos[:5]:
            engine.predict([photo])  # type: ignore[attr-defined]
    times: dict[str, list[float]] = {label: [] for label in engines}
    for i, photo in enumerate(photos):
        order = list(engines.items())
        for label, engine in order[i % len(order) :] + order[: i % len(order)]:
            started = time.perf_counter()
            engine.predict([photo])  # type: ignore[attr-defined]
            times[label].append((time.perf_counter() - started) * 1000)
    return {label: statistics.median(t) for label, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path, default=ROOT / "models" / "baseline" / "baseline.pt")
    parser.add_argument("--student", type=Path, help="a fine-tune of --weights with the trunk frozen")
    parser.add_argument("--branches", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--trunk", type=int, default=10)
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--count", type=int, default=60)
    parser.add_argument("--engines", default="onnx,openvino")
    args = parser.parse_args()

    from hazardlens.models.engines import OnnxEngine, OpenVinoEngine, export_onnx, plan_streams
    from hazardlens.models.ultralytics_env import prepare_ultralytics
    from hazardlens.training.branch import graft
    from hazardlens.training.expand import model_classes

    work = Path(tempfile.mkdtemp(prefix="branch-cost-"))
    prepare_ultralytics(work / "home")
    models = {"production (anchor)": args.weights}
    start = args.weights
    for n in range(1, max(args.branches) + 1):
        added = f"added_{n}"
        if args.student is not None and n == 1:
            student, owned = args.student, [c for c in model_classes(args.student) if c not in model_classes(start)]
            owned = owned or model_classes(args.student)[-1:]
        else:
            student = _stand_in(start, work / f"student{n}.pt", args.trunk, added, n)
            owned = [added]
        start = graft(start, student, owned, args.trunk, work / f"branched{n}.pt")
        if n in args.branches:
            models[f"{n} branch{'es' if n > 1 else ''}"] = start

    photos = _photos(args.count)
    streams, threads = plan_streams()
    print(f"{len(photos)} photos, imgsz {args.imgsz}, one at a time; {streams} streams x {threads} threads")
    results: dict[str, dict[str, float]] = {label: {} for label in models}
    exports = {label: export_onnx(w, work / f"{w.stem}.onnx", args.imgsz) for label, w in models.items()}
    for kind in args.engines.split(","):
        engines = {
            label: (
                OnnxEngine(onnx, model_classes(models[label]), args.imgsz, device="cpu")
                if kind == "onnx"
                else OpenVinoEngine(onnx, model_classes(models[label]), args.imgsz)
            )
            for label, onnx in exports.items()
        }
        try:
            for label, p50 in _interleaved_p50(engines, photos).items():
                results[label][kind] = p50
        finally:
            for engine in engines.values():
                engine.close()
    anchor = results["production (anchor)"]
    print("| model | " + " | ".join(f"{k} p50 ms | x production" for k in args.engines.split(",")) + " |")
    print("|---|" + "---|---|" * len(args.engines.split(",")))
    for label, row in results.items():
        cells = " | ".join(f"{row[k]:.1f} | {row[k] / anchor[k]:.2f}" for k in args.engines.split(","))
        print(f"| {label} | {cells} |")


if __name__ == "__main__":
    main()
