"""Train a detector on a dataset version: offline, seeded, recorded, resumable, registered.

A run is reproducible from what it records: ``<home>/runs/<run_id>/`` holds the config as read,
the dataset version it trained on, per-epoch metrics and Ultralytics' own artifacts (weights,
results.csv, plots), so a model card can always point back to how its weights were made.

This module is the entry point (:func:`train`) and the registration of the result; the parts it
puts together are :mod:`~hazardlens.training.config` (the config, checked), :mod:`~hazardlens.training.dataset`
(the version and its YOLO materialisation), :mod:`~hazardlens.training.runs` (run folders and records)
and :mod:`~hazardlens.training.trainer` (the Ultralytics trainer hazardlens drives: our augmentation,
no vendor callbacks, an offline AMP check).
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

import yaml

from hazardlens.auth import SYSTEM, Principal
from hazardlens.context import Context
from hazardlens.contracts.training import TrainConfig
from hazardlens.dates import now_iso
from hazardlens.errors import Conflict, Invalid
from hazardlens.orm import DatasetVersion
from hazardlens.training.config import load_config, resolve_device
from hazardlens.training.dataset import data_names, export_summary, materialise, resolve_dataset
from hazardlens.training.keep_classes import class_ids
from hazardlens.training.runs import (
    RUN_ID,
    TrainResult,
    clean_metrics,
    find_resumable,
    new_run_id,
    read_epochs,
    read_json,
    runs_root,
    write_json,
)
from hazardlens.training.trainer import Progress, Reporter, trainer_class, ultralytics_args

log = logging.getLogger(__name__)


def train(
    ctx: Context,
    dataset_ref: str,
    config_path: Path | str,
    *,
    progress: Progress | None = None,
    resume: bool = False,
    register: bool = True,
    principal: Principal = SYSTEM,
    run_id: str | None = None,
    start_from: str | None = None,
) -> TrainResult:
    """Train on ``dataset_ref`` ('NAME@VERSION') with ``config_path``; register best.pt as a candidate.

    ``resume=True`` continues the newest unfinished run of the same dataset version and config (or
    ``run_id``) from its last.pt. ``progress(fraction, message)`` is called from the training thread;
    an exception it raises stops the run (it stays resumable).

    ``start_from`` (``production``, ``NAME:VERSION`` or a .pt path) starts from a registered model
    instead of the config's ``model``: the routine way to add a class to the production model. When
    the dataset has classes the model lacks, the head is expanded first (training/expand.py), so every
    class the model knows starts from what it learnt; the run records where it started.
    """
    from hazardlens.models.ultralytics_env import prepare_ultralytics

    if run_id is not None and not RUN_ID.fullmatch(run_id):
        raise Invalid(f"run id {run_id!r} must be letters, digits, '_', '.', '-'", code="invalid_run_id")
    prepare_ultralytics(ctx.settings.home)
    cfg = load_config(config_path)
    dv, provenance = resolve_dataset(ctx, dataset_ref, principal)
    if progress:
        progress(0.0, f"materialising {dv.name} as YOLO")
    data_yaml = materialise(ctx, dv, cfg.train_caps, cfg.train_repeat)
    classes = data_names(data_yaml)
    if not classes:
        raise Invalid(f"dataset {dataset_ref} has no classes", code="empty_dataset")
    splits = yaml.safe_load(data_yaml.read_text(encoding="utf-8")) or {}
    missing = [s for s in ("train", "val") if not splits.get(s)]
    if missing:
        raise Invalid(
            f"dataset {dataset_ref} has no {' and no '.join(missing)} images; training needs both "
            f"(recreate the version with other split ratios)",
            code="empty_split",
        )
    device = resolve_device(cfg.device)
    _check_train_only(cfg, classes, start_from)
    _check_branch(cfg, classes, start_from, resume)
    if cfg.keep_old_outputs and start_from is None and not resume:
        raise Invalid(_KEEP_NEEDS_FROM, code="invalid_config")

    if resume:
        run_dir = find_resumable(ctx, dv, cfg, run_id)
        info = read_json(run_dir / "run.json")
        info.update(status="running", resumed_at=now_iso(), device=device)
    else:
        run_dir = runs_root(ctx) / (run_id or new_run_id(dv.name))
        if run_dir.exists():
            raise Conflict(f"run {run_dir.name} already exists", code="run_exists")
        run_dir.mkdir(parents=True)
        if cfg.source:
            shutil.copyfile(cfg.source, run_dir / "config.source.yaml")
        (run_dir / "config.yaml").write_text(
            yaml.safe_dump(cfg.to_dict(), allow_unicode=True, sort_keys=False), encoding="utf-8"
        )
        write_json(
            run_dir / "dataset.json",
            {
                **provenance,
                "ref": dataset_ref,
                "train_caps": cfg.train_caps,
                "train_repeat": cfg.train_repeat,
                "data_yaml": str(data_yaml),
                "materialised_classes": classes,
                "materialised": export_summary(data_yaml),
            },
        )
        info = {
            "run_id": run_dir.name,
            "status": "running",
            "started_at": now_iso(),
            "device": device,
            "dataset": {"name": dv.name, "id": dv.id, "ref": dataset_ref},
            "config_sha256": cfg.sha256(),
            "config": str(cfg.source) if cfg.source else None,
        }
        if start_from is not None:
            start, info["started_from"] = _start_weights(ctx, start_from, classes, run_dir)
            if cfg.branch_classes:
                _branch_owned(cfg, info["started_from"])  # before hours of training, not after
            cfg = cfg.model_copy(update={"model": str(start)})
    write_json(run_dir / "run.json", info)

    pipeline = None
    if cfg.augment is not None:
        from hazardlens.datasets.augment import load_pipeline

        pipeline = load_pipeline(cfg.augment)

    args = ultralytics_args(cfg, data_yaml, run_dir, device)
    if resume:
        args = {
            "data": str(data_yaml),
            "device": device,
            "resume": str(run_dir / "weights" / "last.pt"),
            "workers": cfg.workers,
            "cache": cfg.cache,
            "save_dir": str(run_dir),
        }
    reporter = Reporter(run_dir, progress, cpu=device == "cpu")
    trainer = trainer_class()(overrides=args)
    trainer.hl_pipeline = pipeline
    trainer.hl_train_only = _train_only_ids(cfg, classes, info.get("started_from"))
    trainer.hl_keep_old = _keep_old(cfg, classes, info.get("started_from"), run_dir)
    trainer.hl_hold_batchnorm = cfg.hold_batchnorm
    for event in ("on_pretrain_routine_start", "on_pretrain_routine_end", "on_val_start"):
        trainer.add_callback(event, reporter.threads)
    trainer.add_callback("on_train_epoch_start", reporter.epoch_start)
    trainer.add_callback("on_train_batch_end", reporter.batch_end)
    trainer.add_callback("on_fit_epoch_end", reporter.fit_epoch_end)
    trainer.add_callback("on_train_end", reporter.train_end)
    reporter.threads(trainer)  # the trainer selected its device in __init__, before callbacks existed
    started = time.time()
    if progress:
        progress(0.0, f"training {Path(cfg.model).name} on {dv.name} ({device}), run {run_dir.name}")
    try:
        trainer.train()
    except BaseException as exc:
        info.update(
            status="interrupted" if isinstance(exc, KeyboardInterrupt) else "failed",
            finished_at=now_iso(),
            error=f"{type(exc).__name__}: {exc}",
        )
        write_json(run_dir / "run.json", info)
        raise

    epochs = read_epochs(run_dir / "results.csv")
    write_json(run_dir / "metrics.json", {"epochs": epochs})
    final = clean_metrics(trainer.metrics or {})
    best = run_dir / "weights" / "best.pt"
    last = run_dir / "weights" / "last.pt"
    if cfg.branch_classes and best.is_file():
        if progress:
            progress(0.99, "grafting the fine-tune onto the start model as a branch")
        best, final, info["branch"] = _graft(cfg, classes, info.get("started_from"), best, data_yaml, final)
    info.update(
        status="completed",
        finished_at=now_iso(),
        duration_s=round(time.time() - started, 1),
        epochs_completed=len(epochs),
        final_metrics=final,
    )
    write_json(run_dir / "run.json", info)

    model = None
    if register and best.is_file():
        model = _register(
            ctx,
            principal,
            cfg,
            dv,
            provenance,
            dataset_ref,
            run_dir,
            best,
            classes,
            epochs,
            final,
            device,
            bool(resume),
        )
        info["model"] = {"name": model["name"], "version": model["version"]}
        write_json(run_dir / "run.json", info)
    if progress:
        done = f"registered {model['name']} {model['version']} as candidate" if model else "done"
        progress(1.0, done)
    return TrainResult(
        run_id=run_dir.name,
        run_dir=run_dir,
        status="completed",
        dataset=info["dataset"],
        device=device,
        epochs=epochs,
        metrics=final,
        best=best if best.is_file() else None,
        last=last if last.is_file() else None,
        model=model,
        resumed=bool(resume),
    )


def _check_train_only(cfg: TrainConfig, classes: list[str], start_from: str | None) -> None:
    """``train_only_classes`` names classes of this dataset, and ``added`` needs ``--from``: refused
    before a run folder exists."""
    wanted = cfg.train_only_classes
    if wanted == "added" and start_from is None:
        raise Invalid(
            "train_only_classes: added trains the classes `train --from MODEL` adds; this run has no --from",
            code="invalid_config",
        )
    if isinstance(wanted, list):
        class_ids(classes, wanted)


def _train_only_ids(cfg: TrainConfig, classes: list[str], started_from: dict[str, Any] | None) -> list[int] | None:
    """The class ids whose rows alone train (training/keep_classes.py), or None for a normal run."""
    wanted = cfg.train_only_classes
    if wanted is None:
        return None
    if wanted == "added":
        wanted = list((started_from or {}).get("added_classes") or [])
        if not wanted:
            raise Invalid(
                "train_only_classes: added, but the dataset has no class the model lacks: nothing would train",
                code="invalid_config",
            )
    return class_ids(classes, list(wanted))


def _check_branch(cfg: TrainConfig, classes: list[str], start_from: str | None, resume: bool) -> None:
    """``branch_classes`` needs ``--from`` (the model to graft onto), a frozen trunk and classes of this
    dataset: refused before a run folder exists."""
    if not cfg.branch_classes:
        return
    from hazardlens.training.branch import trunk_size

    if start_from is None and not resume:
        raise Invalid(
            "branch_classes grafts the fine-tune onto the model it started from: it needs `train --from MODEL`",
            code="invalid_config",
        )
    trunk_size(cfg.ultralytics)
    if isinstance(cfg.branch_classes, list):
        class_ids(classes, cfg.branch_classes)


def _graft(
    cfg: TrainConfig,
    classes: list[str],
    started_from: dict[str, Any] | None,
    best: Path,
    data_yaml: Path,
    student_metrics: dict[str, float],
) -> tuple[Path, dict[str, float], dict[str, Any]]:
    """The run's result as a branch of the model it started from (training/branch.py), validated on the
    dataset's validation split like best.pt was: (weights, their metrics, what the run records)."""
    from hazardlens.training.branch import graft, trunk_size

    if not started_from:
        raise Invalid("branch_classes: the run did not start from a model (`train --from`)", code="invalid_config")
    owned = _branch_owned(cfg, started_from)
    trunk = trunk_size(cfg.ultralytics)
    grafted = graft(started_from["weights"], best, owned, trunk, best.with_name("branched.pt"))
    metrics = _validate(grafted, data_yaml, cfg)
    return grafted, metrics, {"classes": owned, "trunk": trunk, "student": str(best), "student_val": student_metrics}


def _branch_owned(cfg: TrainConfig, started_from: dict[str, Any] | None) -> list[str]:
    """The classes the branch answers for: the config's list, or the classes ``--from`` added."""
    if isinstance(cfg.branch_classes, list):
        return list(cfg.branch_classes)
    owned = [str(c) for c in (started_from or {}).get("added_classes") or []]
    if not owned:
        raise Invalid(
            "branch_classes: added, but the dataset has no class the model lacks: the branch would answer for nothing",
            code="invalid_config",
        )
    return owned


def _validate(weights: Path, data_yaml: Path, cfg: TrainConfig) -> dict[str, float]:
    """Ultralytics' validation of ``weights`` on the dataset's validation split, as the trainer reports it."""
    from ultralytics import YOLO

    result = YOLO(str(weights)).val(
        data=str(data_yaml), split="val", imgsz=cfg.imgsz, batch=cfg.batch, plots=False, verbose=False, workers=0
    )
    return clean_metrics(dict(result.results_dict))


_KEEP_NEEDS_FROM = (
    "keep_old_outputs holds the classes the start model knew to its outputs: it needs `train --from MODEL`"
)


def _keep_old(
    cfg: TrainConfig, classes: list[str], started_from: dict[str, Any] | None, run_dir: Path
) -> tuple[Path, list[int], float] | None:
    """For ``keep_old_outputs`` (training/distill.py): the teacher (the run's start weights, widened
    to the dataset's classes like the student, so the indices agree), the classes it held (those the
    start model knew) and the weight; None for a run without it."""
    if not cfg.keep_old_outputs:
        return None
    if not started_from:
        raise Invalid(_KEEP_NEEDS_FROM, code="invalid_config")
    known = [c for c in started_from.get("model_classes") or [] if c in classes]
    if not known:
        raise Invalid("keep_old_outputs: the start model knows none of the dataset's classes", code="invalid_config")
    return run_dir / "start.pt", [classes.index(c) for c in known], float(cfg.keep_old_outputs)


def _start_weights(ctx: Context, ref: str, classes: list[str], run_dir: Path) -> tuple[Path, dict[str, Any]]:
    """The weights a ``--from`` run starts from: the model itself, or its expansion to the dataset's
    classes (old classes keep their weights; see training/expand.py)."""
    from hazardlens.training.branch import branched
    from hazardlens.training.evaluate import resolve_model
    from hazardlens.training.expand import expand_classes, model_classes

    weights, info, _ = resolve_model(ctx, ref)
    known = list(info.get("classes") or model_classes(weights))
    added = [c for c in classes if c not in known]
    start = run_dir / "start.pt"
    if added or known != classes or branched(weights):  # a branched model trains from its base layers
        expand_classes(weights, classes, start)
    else:
        shutil.copyfile(weights, start)
    return start, {
        "ref": ref,
        "weights": str(weights),
        "weights_sha256": info.get("weights_sha256"),
        "model_classes": known,
        "added_classes": added,
    }


def _register(
    ctx: Context,
    principal: Principal,
    cfg: TrainConfig,
    dv: DatasetVersion,
    provenance: dict[str, Any],
    dataset_ref: str,
    run_dir: Path,
    best: Path,
    classes: list[str],
    epochs: list[dict[str, Any]],
    final: dict[str, float],
    device: str,
    resumed: bool,
) -> dict[str, Any]:
    import torch
    import ultralytics

    from hazardlens.models.registry import DEFAULT_NAME, model_dict, register_model, sha256_file

    info = read_json(run_dir / "run.json")
    card = {
        "kind": "yolo-detect",
        "architecture": Path(cfg.model).name,
        "framework": {"ultralytics": ultralytics.__version__, "torch": torch.__version__},
        "taxonomy_version": dv.taxonomy_version,
        "dataset_version": dv.id,
        "training_data": {
            **provenance,
            "ref": dataset_ref,
            "train_caps": cfg.train_caps,
            "train_repeat": cfg.train_repeat,
            "materialised": read_json(run_dir / "dataset.json").get("materialised"),
        },
        "metrics": {"val": final, "epochs": len(epochs)},
        "config": cfg.to_dict(),
        "hashes": {
            "config_sha256": cfg.sha256(),
            "dataset_version": dv.id,
            "last_sha256": sha256_file(run_dir / "weights" / "last.pt")
            if (run_dir / "weights" / "last.pt").is_file()
            else None,
        },
        "training": {
            "run_id": run_dir.name,
            "device": device,
            "started_at": info.get("started_at"),
            "finished_at": info.get("finished_at"),
            "duration_s": info.get("duration_s"),
            "seed": cfg.seed,
            "resumed": resumed,
            "started_from": info.get("started_from"),
            "branch": info.get("branch"),
        },
    }
    with ctx.db.session() as session:
        mv = register_model(
            ctx,
            session,
            principal,
            best,
            classes=classes,
            imgsz=cfg.imgsz,
            card=card,
            name=cfg.name or DEFAULT_NAME,
            dataset_version_id=dv.id,
            stage="candidate",
        )
        return model_dict(mv)
