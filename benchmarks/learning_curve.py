"""How many labelled images does a new class need? AP50 of a class the model does not yet find,
against the number of images a curator labelled, and what the old classes lose meanwhile.

    .venv/bin/python benchmarks/learning_curve.py --export DIR [--weights models/baseline/baseline.pt]
        [--counts 25 50 100 200] [--replay 120] [--config configs/train/add_class_branch.yaml]
        [--new-split test] [--old-split val] [--out var/learning_curve] [--png docs/learning-curve-head-branch.png]

``DIR`` is the product's materialised YOLO export of the dataset version ``combined`` (the folder
``hazardlens train`` writes under ``<home>/cache/datasets/``; its ``unlabeled_classes.json`` marks the
hardhat-workers images, whose ``person`` is unlabelled).

The simulation: the shipped stage-3 model finds none of the hardhat-workers heads without a helmet
(AP50 0.000 on their held-out photos) although ``head`` is in its class list, so for that photo
source ``head`` is, in effect, a new class. For each count N, a curator "labels heads only" on N
hardhat-workers training photos: only their ``head`` boxes are kept and every other class is declared
unlabelled on them (training masks those, training/partial_labels.py, as for any partially labelled
source). They are mixed with a fixed replay of R photos of the old sources (sfchd-ppe, fire-smoke)
with their full labels, and the production model is fine-tuned for E epochs with the product's own
trainer (HazardTrainer), the recipe of ``--config``: its epochs, ``close_mosaic`` and ``ultralytics``
arguments (``configs/train/add_class.yaml``: a fine-tune with the backbone frozen), and with
``train_only_classes`` in it (``configs/train/add_class_exact.yaml``) only the new class's rows of the
classification layer train, so the old classes stay exactly as they were (training/keep_classes.py);
with ``keep_old_outputs`` (``configs/train/add_class_keep.yaml``) every class but ``head`` is held to
the start model's outputs while everything trains (training/distill.py), and with ``hold_batchnorm``
the BatchNorm statistics stay the start model's; with ``branch_classes``
(``configs/train/add_class_branch.yaml``) the fine-tune is grafted onto the start model as a branch
answering for ``head`` only (training/branch.py), and the grafted model is what is scored.
Reported per N: head AP50 on held-out hardhat-workers photos (``--new-split``: ``val`` to choose a
recipe, ``test`` to report it), and the old classes' AP50 on held-out photos of the old sources
(``--old-split``), beside the starting model's, measured in the same run.
Subsets are nested (the 25 are among the 50, ...) and drawn with a fixed seed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any

import yaml

from hazardlens.training.evaluate import label_path

ROOT = Path(__file__).resolve().parents[1]
OLD_CLASSES = ("person", "helmet", "safety_clothes", "fire", "smoke")


def _read_labels(image: Path) -> list[list[str]]:
    path = label_path(image)
    if not path.is_file():
        return []
    return [line.split() for line in path.read_text().splitlines() if line.strip()]


def _link(image: Path, folder: Path, lines: list[list[str]]) -> None:
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "labels").mkdir(parents=True, exist_ok=True)
    target = folder / "images" / image.name
    if not target.exists():
        target.symlink_to(image.resolve())
    (folder / "labels" / (image.stem + ".txt")).write_text("".join(" ".join(x) + "\n" for x in lines))


def _split_images(export: Path, split: str) -> list[Path]:
    return sorted(p for p in (export / "images" / split).iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})


def _write_eval_set(out: Path, name: str, images: list[Path], names: list[str]) -> Path:
    folder = out / f"eval-{name}"
    shutil.rmtree(folder, ignore_errors=True)
    for image in images:
        _link(image, folder, _read_labels(image))
    data = out / f"eval-{name}.yaml"
    data.write_text(
        yaml.safe_dump({"path": str(folder), "train": "images", "val": "images", "names": dict(enumerate(names))})
    )
    return data


def _evaluate(weights: Path, data: Path, imgsz: int) -> dict[str, float]:
    from ultralytics import YOLO

    metrics = YOLO(str(weights)).val(
        data=str(data), split="val", imgsz=imgsz, batch=16, conf=0.001, plots=False, verbose=False, workers=0
    )
    names = metrics.names
    return {names[int(c)]: round(float(metrics.box.ap50[i]), 4) for i, c in enumerate(metrics.box.ap_class_index)}


def _train(weights: Path, folder: Path, names: list[str], args: argparse.Namespace) -> Path:
    from hazardlens.training.trainer import trainer_class

    data = folder / "data.yaml"
    data.write_text(
        yaml.safe_dump({"path": str(folder), "train": "images", "val": "images", "names": dict(enumerate(names))})
    )
    overrides = {
        "model": str(weights),
        "data": str(data),
        "imgsz": args.imgsz,
        "epochs": args.recipe.epochs,
        "batch": 16,
        "seed": args.seed,
        "deterministic": True,
        "workers": 2,
        "cache": "ram",
        "device": "cpu",
        "amp": False,
        "val": False,
        "plots": False,
        "close_mosaic": args.recipe.close_mosaic,
        "project": str(folder),
        "name": "run",
        "save_dir": str(folder / "run"),
        "exist_ok": True,
        "verbose": False,
    }
    overrides.update(args.recipe.ultralytics)  # freeze, warm-up, optimizer and lr of the recipe
    trainer = trainer_class()(overrides=overrides)
    if args.recipe.train_only_classes:
        # the new class's rows alone (training/keep_classes.py): the old classes stay exact
        trainer.hl_train_only = [names.index("head")]
    trainer.hl_hold_batchnorm = args.recipe.hold_batchnorm
    if args.recipe.keep_old_outputs:
        # every class but the simulated new one held to the start model's outputs (training/distill.py)
        held = [i for i, n in enumerate(names) if n != "head"]
        trainer.hl_keep_old = (weights, held, float(args.recipe.keep_old_outputs))

    def threads(_: Any) -> None:
        import torch

        torch.set_num_threads(os.cpu_count() or 1)

    for event in ("on_pretrain_routine_start", "on_pretrain_routine_end", "on_train_start"):
        trainer.add_callback(event, threads)
    threads(None)
    trainer.train()
    last = folder / "run" / "weights" / "last.pt"
    if args.recipe.branch_classes:
        from hazardlens.training.branch import graft, trunk_size

        # the fine-tune grafted onto the start model, answering for the simulated new class only
        return graft(weights, last, ["head"], trunk_size(args.recipe.ultralytics), folder / "branched.pt")
    return last


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--export", type=Path, required=True)
    parser.add_argument("--weights", type=Path, default=ROOT / "models" / "baseline" / "baseline.pt")
    parser.add_argument("--counts", type=int, nargs="+", default=[25, 50, 100, 200])
    parser.add_argument("--replay", type=int, default=120)
    parser.add_argument(
        "--config",
        type=Path,
        default=ROOT / "configs" / "train" / "add_class_branch.yaml",
        help="the recipe (epochs, close_mosaic, ultralytics arguments, train_only_classes)",
    )
    parser.add_argument(
        "--new-split",
        default="test",
        choices=("val", "test"),
        help="hardhat-workers photos the new class is scored on (val to choose a recipe, test to report)",
    )
    parser.add_argument(
        "--old-split", default="val", choices=("val", "test"), help="old sources' photos the old classes are scored on"
    )
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "var" / "learning_curve")
    parser.add_argument("--png", type=Path, default=ROOT / "docs" / "learning-curve-head-branch.png")
    args = parser.parse_args()
    from hazardlens.training.config import load_config

    args.recipe = load_config(args.config)

    from hazardlens.models.ultralytics_env import prepare_ultralytics

    args.out.mkdir(parents=True, exist_ok=True)
    prepare_ultralytics(args.out / "home")
    export = args.export.resolve()
    names = [str(n) for n in yaml.safe_load((export / "data.yaml").read_text())["names"].values()]
    head = names.index("head")
    partial = set(json.loads((export / "unlabeled_classes.json").read_text()))  # hardhat-workers images

    train = _split_images(export, "train")
    new_pool = [p for p in train if p.name in partial and any(int(x[0]) == head for x in _read_labels(p))]
    old_pool = [p for p in train if p.name not in partial]
    rng = random.Random(args.seed)
    rng.shuffle(new_pool)
    rng.shuffle(old_pool)
    replay = old_pool[: args.replay]

    new_test = _write_eval_set(
        args.out, "new", [p for p in _split_images(export, args.new_split) if p.name in partial], names
    )
    old_val = _write_eval_set(
        args.out, "old", [p for p in _split_images(export, args.old_split) if p.name not in partial], names
    )

    results_path = args.out / "results.json"
    results: dict[str, Any] = json.loads(results_path.read_text()) if results_path.is_file() else {}
    results["setup"] = {
        "export": str(export),
        "weights": str(args.weights),
        "replay": args.replay,
        "config": str(args.config),
        "epochs": args.recipe.epochs,
        "ultralytics": args.recipe.ultralytics,
        "train_only_classes": args.recipe.train_only_classes,
        "keep_old_outputs": args.recipe.keep_old_outputs,
        "hold_batchnorm": args.recipe.hold_batchnorm,
        "branch_classes": args.recipe.branch_classes,
        "imgsz": args.imgsz,
        "seed": args.seed,
        "new_pool": len(new_pool),
        "new_split": args.new_split,
        "old_split": args.old_split,
    }
    if "0" not in results:
        results["0"] = {
            "new": _evaluate(args.weights, new_test, args.imgsz),
            "old": _evaluate(args.weights, old_val, args.imgsz),
        }
        results_path.write_text(json.dumps(results, indent=2))
    others = [n for n in names if n != "head"]
    for count in args.counts:
        if str(count) in results:
            continue  # resumable: a finished count is not trained again
        folder = args.out / f"n{count}"
        shutil.rmtree(folder, ignore_errors=True)
        unlabeled = {}
        for image in new_pool[:count]:
            _link(image, folder, [x for x in _read_labels(image) if int(x[0]) == head])
            unlabeled[image.name] = others
        for image in replay:
            _link(image, folder, _read_labels(image))
        (folder / "unlabeled_classes.json").write_text(json.dumps(unlabeled))
        started = time.time()
        weights = _train(args.weights, folder, names, args)
        results[str(count)] = {
            "new": _evaluate(weights, new_test, args.imgsz),
            "old": _evaluate(weights, old_val, args.imgsz),
            "train_s": round(time.time() - started, 1),
        }
        results_path.write_text(json.dumps(results, indent=2))
        print(count, results[str(count)], flush=True)
    _report(results, args)


def _report(results: dict[str, Any], args: argparse.Namespace) -> None:
    counts = sorted(int(k) for k in results if k.isdigit())
    base_old = results["0"]["old"]
    new_split = results["setup"].get("new_split", "test")
    old_split = results["setup"].get("old_split", "val")
    print(f"| labelled images | head AP50 (hardhat {new_split}) | old classes mean AP50 ({old_split}) | change |")
    print("|---|---|---|---|")
    rows = []
    for n in counts:
        head = results[str(n)]["new"].get("head", 0.0)
        old = [results[str(n)]["old"].get(c, 0.0) for c in OLD_CLASSES if c in base_old]
        mean_old = sum(old) / max(len(old), 1)
        base = sum(base_old[c] for c in OLD_CLASSES if c in base_old) / max(len(old), 1)
        rows.append((n, head, mean_old))
        print(f"| {n} | {head:.3f} | {mean_old:.3f} | {mean_old - base:+.3f} |")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    xs = [r[0] for r in rows if r[0] > 0]
    ax.plot(xs, [r[1] for r in rows if r[0] > 0], "o-", label=f"new class: head AP50 (hardhat {new_split} photos)")
    ax.plot(xs, [r[2] for r in rows if r[0] > 0], "s--", label=f"old classes: mean AP50 (old sources' {old_split})")
    ax.axhline(rows[0][2], color="grey", lw=0.8, ls=":", label="old classes before fine-tuning")
    ax.set_xscale("log")
    ax.minorticks_off()
    ax.set_xticks(xs)
    ax.set_xticklabels([str(x) for x in xs])
    ax.set_xlabel("images labelled with the new class")
    ax.set_ylabel("AP50")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    how = "new class's rows only" if args.recipe.train_only_classes else "fine-tune"
    if args.recipe.keep_old_outputs:
        how = f"fine-tune, old outputs held x{args.recipe.keep_old_outputs:g}"
    if args.recipe.branch_classes:
        how = "fine-tune grafted as a branch"
    ax.set_title(
        f"Adding a class ({how}): {args.recipe.epochs} epochs from production, replay {args.replay}", fontsize=9
    )
    fig.tight_layout()
    args.png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.png)
    print(f"plot: {args.png}")


if __name__ == "__main__":
    main()
