"""The Ultralytics trainer hazardlens drives: a :class:`DetectionTrainer` subclass so that (1) our
albumentations pipeline is what the training dataset really applies, (2) the vendor's cloud/analytics
callbacks never run, and (3) the AMP self-test, which loads ``yolo26n.pt`` and would download it, is
replaced by an offline check; and the reporter that turns its callbacks into progress and metrics.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hazardlens.contracts.training import TrainConfig
from hazardlens.training.dataset import yaml_names
from hazardlens.training.runs import read_epochs, write_json

log = logging.getLogger(__name__)

Progress = Callable[[float, str], None]

#: Callbacks Ultralytics adds for its cloud platform and usage analytics: never run (air-gapped hosts).
_VENDOR_CALLBACK_MODULES = (
    "ultralytics.utils.callbacks.platform",
    "ultralytics.utils.callbacks.hub",
    "ultralytics.utils.events",
)
#: GPUs on which Ultralytics' own AMP check always disables AMP (NaN losses); copied so that our offline
#: check makes the same decision without loading a downloaded model.
_AMP_BAD_GPUS = re.compile(
    r"(nvidia|geforce|quadro|tesla).*?(1660|1650|1630|t400|t550|t600|t1000|t1200|t2000|k40m)", re.IGNORECASE
)


def _offline_check_amp(model: Any) -> bool:
    """Stand-in for ultralytics.utils.checks.check_amp, which runs yolo26n.pt (downloading it) to
    compare FP32 and AMP outputs. We keep its weight-free part: no AMP on CPU/MPS or on the GPUs it
    knows to produce NaN losses; AMP on every other CUDA device."""
    import torch

    device = next(model.parameters()).device
    if device.type != "cuda":
        return False
    gpu = torch.cuda.get_device_name(device)
    if _AMP_BAD_GPUS.search(gpu):
        log.warning("AMP disabled on %s (known to give NaN losses)", gpu)
        return False
    return True


_TRAINER_CLASS: type | None = None


def trainer_class() -> type:
    """Built on first use: importing ultralytics must wait for prepare_ultralytics()."""
    global _TRAINER_CLASS
    if _TRAINER_CLASS is not None:
        return _TRAINER_CLASS
    import ultralytics.engine.trainer as engine_trainer
    from ultralytics.models.yolo.detect import DetectionTrainer

    class HazardTrainer(DetectionTrainer):
        """DetectionTrainer with our augmentation pipeline, no vendor callbacks and an offline AMP check."""

        hl_pipeline: Any = None
        hl_unlabeled: dict[str, list[int]] | None = None
        #: class ids whose classification rows alone train (``train_only_classes``; keep_classes.py)
        hl_train_only: list[int] | None = None
        #: (teacher weights, class ids held to it, weight): ``keep_old_outputs`` (training/distill.py)
        hl_keep_old: tuple[Path, list[int], float] | None = None
        #: every BatchNorm layer keeps the start model's statistics (``hold_batchnorm``)
        hl_hold_batchnorm: bool = False

        def build_dataset(self, img_path: str, mode: str = "train", batch: int | None = None) -> Any:
            dataset = super().build_dataset(img_path, mode, batch)
            if mode == "train" and self.hl_pipeline is not None:
                from hazardlens.datasets.augment import install_in_dataset

                # Also survives close_mosaic, which rebuilds the transforms (install_in_dataset wraps that).
                install_in_dataset(dataset, self.hl_pipeline)
            if mode == "train":
                from hazardlens.training import partial_labels

                names = yaml_names(self.data)
                unlabeled = partial_labels.read_unlabeled(Path(str(self.args.data)), names)
                if unlabeled:
                    # Partially labelled sources: mask what their labels leave out (partial_labels.py).
                    partial_labels.install_in_dataset(dataset, unlabeled, len(names))
                    self.hl_unlabeled = unlabeled
                    if partial_labels.use_masked_loss not in self.callbacks["on_train_start"]:
                        self.add_callback("on_train_start", partial_labels.use_masked_loss)
            return dataset

        def run_callbacks(self, event: str) -> None:
            for callback in self.callbacks.get(event, []):
                if getattr(callback, "__module__", "").startswith(_VENDOR_CALLBACK_MODULES):
                    continue
                callback(self)

        def set_model_attributes(self) -> None:
            super().set_model_attributes()
            if self.hl_train_only:
                from hazardlens.training.keep_classes import freeze_before_head

                freeze_before_head(self)  # before Ultralytics applies ``freeze``, right after this

        def _model_train(self) -> None:
            super()._model_train()  # train mode, BatchNorm of frozen layers in inference mode
            if self.hl_hold_batchnorm:
                import torch.nn as nn

                model: Any = self.model  # a path until set-up builds it; a module here
                for module in model.modules():
                    if isinstance(module, nn.modules.batchnorm._BatchNorm):
                        module.eval()

        def _setup_train(self) -> None:
            original = engine_trainer.check_amp
            engine_trainer.check_amp = _offline_check_amp
            try:
                super()._setup_train()
            finally:
                engine_trainer.check_amp = original
            if self.hl_train_only:
                from hazardlens.training.keep_classes import KeepOldClasses

                KeepOldClasses(self, self.hl_train_only)
            if self.hl_keep_old is not None:
                from hazardlens.training import distill

                # after the masked loss (registered while the dataset was built) has replaced the criterion
                if distill.install not in self.callbacks["on_train_start"]:
                    self.add_callback("on_train_start", distill.install)

    _TRAINER_CLASS = HazardTrainer
    return HazardTrainer


class Reporter:
    """Turns trainer callbacks into progress(fraction, message) calls and per-epoch records."""

    def __init__(self, run_dir: Path, progress: Progress | None, cpu: bool) -> None:
        self.run_dir = run_dir
        self.progress = progress
        self.cpu = cpu
        self.batch = 0
        self.last_batch_report = 0.0
        self.final = False

    def _emit(self, fraction: float, message: str) -> None:
        if self.progress is not None:
            self.progress(max(0.0, min(1.0, fraction)), message)

    def threads(self, _: Any) -> None:
        # Ultralytics pins torch to cpu_count-1 threads on every device selection; on a small CPU-only
        # host that leaves a core idle (measured 1.9x faster with 2 threads than 1 on 2 cores).
        if self.cpu:
            import torch

            torch.set_num_threads(os.cpu_count() or 1)

    def _fraction(self, trainer: Any, epoch_progress: float) -> float:
        epochs = max(int(getattr(trainer, "epochs", 1) or 1), 1)
        fraction = epoch_progress / epochs
        budget = getattr(trainer.args, "time", None)
        if budget:
            fraction = max(fraction, (time.time() - trainer.train_time_start) / (float(budget) * 3600))
        return min(fraction, 0.99)  # 1.0 only once the run is recorded and registered

    def epoch_start(self, trainer: Any) -> None:
        self.threads(trainer)
        self.batch = 0

    def batch_end(self, trainer: Any) -> None:
        self.batch += 1
        now = time.monotonic()
        if now - self.last_batch_report < 2.0:
            return
        self.last_batch_report = now
        nb = max(len(trainer.train_loader), 1)
        self._emit(
            self._fraction(trainer, trainer.epoch + self.batch / nb),
            f"epoch {trainer.epoch + 1}/{trainer.epochs}: batch {self.batch}/{nb}",
        )

    def fit_epoch_end(self, trainer: Any) -> None:
        epochs = read_epochs(Path(trainer.csv))
        write_json(self.run_dir / "metrics.json", {"epochs": epochs})
        if self.final or (epochs and trainer.epoch + 1 > epochs[-1].get("epoch", 0)):
            return  # final_eval re-runs this callback for best.pt; reported at train end
        m = trainer.metrics or {}
        summary = ", ".join(f"{k.split('/')[-1]}={float(v):.4f}" for k, v in m.items() if "mAP" in k)
        self._emit(
            self._fraction(trainer, trainer.epoch + 1),
            f"epoch {trainer.epoch + 1}/{trainer.epochs} done" + (f": {summary}" if summary else ""),
        )

    def train_end(self, trainer: Any) -> None:
        self.final = True
        self._emit(0.99, "training finished; validated best.pt")


def ultralytics_args(cfg: TrainConfig, data_yaml: Path, run_dir: Path, device: str) -> dict[str, Any]:
    args: dict[str, Any] = {
        "model": cfg.model,
        "data": str(data_yaml),
        "imgsz": cfg.imgsz,
        "epochs": cfg.epochs,
        "batch": cfg.batch,
        "seed": cfg.seed,
        "deterministic": True,
        "patience": cfg.patience,
        "close_mosaic": cfg.close_mosaic,
        "workers": cfg.workers,
        "cache": cfg.cache,
        "device": device,
        "project": str(run_dir.parent),
        "name": run_dir.name,
        "save_dir": str(run_dir),
        "exist_ok": True,
        "verbose": False,
        # CPU: AMP does nothing useful. CUDA: AMP stays on; HazardTrainer swaps the downloading self-test.
        "amp": device != "cpu",
    }
    if cfg.time:
        args["time"] = cfg.time
    args.update(cfg.ultralytics)
    return args
