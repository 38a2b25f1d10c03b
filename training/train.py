"""Train a detector on a dataset version: offline, seeded, recorded, resumable, registered.

A run is reproducible from what it records: ``<home>/runs/<run_id>/`` holds the config as read,
the dataset version it trained on, per-epoch metrics and Ultralytics' own artifacts (weights,
results.csv, plots), so a model card can always point back to how its weights were made.

Ultralytics is driven through a :class:`DetectionTrainer` subclass rather than ``YOLO.train`` so that
(1) our albumentations pipeline is what the training dataset really applies, (2) the vendor's
cloud/analytics callbacks never run, and (3) the AMP self-test, which loads ``yolo26n.pt`` and would
download it, is replaced by an offline check.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import func, select

from hazardlens.auth import SYSTEM, Principal
from hazardlens.context import Context
from hazardlens.errors import Conflict, Invalid, NotFound
from hazardlens.orm import DatasetItem, DatasetVersion, Sample
from hazardlens.settings import find_config_file, shipped_configs

log = logging.getLogger(__name__)

Progress = Callable[[float, str], None]

#: Keys of configs/train/*.yaml. Anything else is refused: a misspelt ``epoch`` must not silently
#: train with the default.
CONFIG_KEYS = frozenset({"model", "imgsz", "epochs", "time", "batch", "seed", "patience", "close_mosaic",
                         "augment", "train_caps", "train_repeat", "device", "workers", "cache", "ultralytics",
                         "name"})
#: Ultralytics arguments this module decides itself (paths, device, AMP, resume); a config may not
#: override them under ``ultralytics:``.
RESERVED_ULTRALYTICS = frozenset({"data", "model", "project", "name", "save_dir", "exist_ok", "resume", "device",
                                  "amp", "mode", "task", "cfg", "pretrained"})
#: Upper bound of a train_repeat factor: beyond it a handful of images dominate every epoch (overfitting).
MAX_REPEAT = 20
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
_DEFAULTS: dict[str, Any] = {"imgsz": 640, "epochs": 100, "time": None, "batch": 16, "seed": 0, "patience": 100,
                             "close_mosaic": 10, "augment": None, "train_caps": None, "train_repeat": None,
                             "device": "auto",
                             "workers": 2, "cache": False, "ultralytics": {}, "name": None}
#: Callbacks Ultralytics adds for its cloud platform and usage analytics: never run (air-gapped hosts).
_VENDOR_CALLBACK_MODULES = ("ultralytics.utils.callbacks.platform", "ultralytics.utils.callbacks.hub",
                            "ultralytics.utils.events")
#: GPUs on which Ultralytics' own AMP check always disables AMP (NaN losses); copied so that our offline
#: check makes the same decision without loading a downloaded model.
_AMP_BAD_GPUS = re.compile(r"(nvidia|geforce|quadro|tesla).*?(1660|1650|1630|t400|t550|t600|t1000|t1200|t2000|k40m)",
                           re.IGNORECASE)


# ---- configuration ------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainConfig:
    model: str
    imgsz: int = 640
    epochs: int = 100
    time: float | None = None
    batch: int = 16
    seed: int = 0
    patience: int = 100
    close_mosaic: int = 10
    augment: Path | None = None
    train_caps: dict[str, int] | None = None
    #: class key -> how many times each train image holding that class is listed per epoch: the way
    #: to give a rare class (heads without helmets: 2% of the boxes) more gradient steps, since
    #: Ultralytics' detection loss has no class weights.
    train_repeat: dict[str, int] | None = None
    device: str = "auto"
    workers: int = 2
    cache: bool | str = False
    ultralytics: dict[str, Any] = field(default_factory=dict)
    name: str | None = None  # registry model name; default hazardlens
    source: Path | None = None  # the file it was read from

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["augment"] = str(self.augment) if self.augment else None
        d["source"] = str(self.source) if self.source else None
        return d

    def sha256(self) -> str:
        # train_repeat joined the config later: leaving it out when unset keeps earlier runs' hashes
        body = {k: v for k, v in self.to_dict().items()
                if k != "source" and not (k == "train_repeat" and v is None)}
        return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def _resolve_file(value: str, config_dir: Path) -> Path | None:
    """Relative paths in a config work from the working folder, the config's folder, the code's root
    (a checkout's root: ``var/...``; installed, the package folder: ``models/baseline/...``) and, for
    ``configs/...`` names (configs name each other as ``configs/augment/...``), the configs themselves,
    ``HAZARDLENS_CONFIG_DIR`` first (:func:`~hazardlens.settings.find_config_file`)."""
    return find_config_file(value, config_dir, shipped_configs().parent)


def _builtin_architecture(name: str) -> bool:
    """A model YAML shipped inside the ultralytics package (yolo11n.yaml -> cfg/models/11/yolo11.yaml)."""
    from ultralytics.utils.checks import check_yaml

    unified = re.sub(r"(\d+)([nslmx])(.+)?$", r"\1\3", name)  # yolo11n.yaml -> yolo11.yaml + scale 'n'
    try:
        return any(Path(str(check_yaml(n, hard=False) or "")).is_file() for n in (name, unified))
    except Exception:
        return False


def load_config(path: Path | str) -> TrainConfig:
    """Read and validate a training config; every problem is reported at once."""
    path = find_config_file(path) or Path(path)  # configs/train/x.yaml also works outside a checkout
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise Invalid(f"cannot read training config {path}: {exc}", code="invalid_config") from exc
    except yaml.YAMLError as exc:
        raise Invalid(f"training config {path} is not valid YAML: {exc}", code="invalid_config") from exc
    if not isinstance(raw, dict):
        raise Invalid(f"training config {path} must be a mapping", code="invalid_config")
    return config_from_dict(raw, path)


def _class_counts(value: object, low: int, high: int | None) -> bool:
    """A mapping of class keys to whole numbers in [low, high] (train_caps, train_repeat)."""
    return isinstance(value, dict) and all(
        isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and v >= low
        and (high is None or v <= high) for k, v in value.items())


def config_from_dict(raw: dict[str, Any], source: Path | None = None) -> TrainConfig:
    errors: list[str] = []
    unknown = sorted(set(raw) - CONFIG_KEYS)
    if unknown:
        errors.append(f"unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(CONFIG_KEYS))}")
    values = {**_DEFAULTS, **{k: v for k, v in raw.items() if k in CONFIG_KEYS}}
    config_dir = source.parent if source else Path.cwd()

    model = values.get("model")
    if not isinstance(model, str) or not model.strip():
        errors.append("'model' is required: an architecture YAML such as yolo11n.yaml or a local .pt path")
        model = ""
    elif model.endswith((".yaml", ".yml")) and not Path(model).parent.parts:
        from hazardlens.models.ultralytics_env import prepare_ultralytics

        prepare_ultralytics()
        local = _resolve_file(model, config_dir)
        if local is not None:
            model = str(local)
        elif not _builtin_architecture(model):
            errors.append(f"model architecture {model!r} is neither a local file nor shipped with ultralytics")
    else:
        local = _resolve_file(model, config_dir)
        if local is None:
            errors.append(f"model weights {model!r} not found locally (nothing is downloaded)")
        else:
            model = str(local)

    for key in ("imgsz", "epochs", "batch", "patience", "close_mosaic", "workers", "seed"):
        v = values[key]
        if not isinstance(v, int) or isinstance(v, bool) or v < (1 if key in ("imgsz", "epochs", "batch") else 0):
            errors.append(f"'{key}' must be a {'positive' if key in ('imgsz', 'epochs', 'batch') else 'non-negative'} "
                          f"integer, not {v!r}")
    if isinstance(values["imgsz"], int) and values["imgsz"] % 32:
        errors.append(f"'imgsz' must be a multiple of 32 (the model's stride), not {values['imgsz']}")
    t = values["time"]
    if t is not None and (not isinstance(t, int | float) or isinstance(t, bool) or t <= 0):
        errors.append(f"'time' is a number of hours > 0, not {t!r}")
    device = str(values["device"]).lower()
    if device not in ("auto", "cpu", "cuda"):
        errors.append(f"'device' must be auto, cpu or cuda, not {values['device']!r}")
    cache = values["cache"]
    if cache not in (True, False, "ram", "disk"):
        errors.append(f"'cache' must be false, ram or disk, not {cache!r}")

    augment = None
    if values["augment"]:
        augment = _resolve_file(str(values["augment"]), config_dir)
        if augment is None:
            errors.append(f"augment pipeline {values['augment']!r} not found")
    caps = values["train_caps"]
    if caps is not None and not _class_counts(caps, 0, None):
        errors.append("'train_caps' maps class keys to non-negative image counts, e.g. {fire: 150}")
    repeat = values["train_repeat"]
    if repeat is not None and not _class_counts(repeat, 1, MAX_REPEAT):
        errors.append(f"'train_repeat' maps class keys to whole numbers from 1 to {MAX_REPEAT}, e.g. {{head: 4}}")
    if isinstance(caps, dict) and isinstance(repeat, dict) and set(caps) & set(repeat):
        errors.append(f"a class is either capped or repeated, not both: {', '.join(sorted(set(caps) & set(repeat)))}")
    extra = values["ultralytics"] or {}
    if not isinstance(extra, dict):
        errors.append("'ultralytics' must be a mapping of Ultralytics train arguments")
        extra = {}
    reserved = sorted(set(extra) & RESERVED_ULTRALYTICS)
    if reserved:
        errors.append(f"'ultralytics' may not set {', '.join(reserved)}: hazardlens decides these")
    if extra:
        from hazardlens.models.ultralytics_env import prepare_ultralytics

        prepare_ultralytics()
        from ultralytics.cfg import DEFAULT_CFG_DICT

        bad = sorted(k for k in extra if k not in DEFAULT_CFG_DICT)
        if bad:
            errors.append(f"'ultralytics' has unknown argument(s) {', '.join(bad)}")
    name = values["name"]
    if name is not None and (not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}", name)):
        errors.append(f"'name' (registry model name) must be letters, digits, '_', '.', '-', not {name!r}")
    if errors:
        where = str(source) if source else "training config"
        raise Invalid(f"{where}: {'; '.join(errors)}", code="invalid_config", details=errors)
    return TrainConfig(model=model, imgsz=values["imgsz"], epochs=values["epochs"],
                       time=float(t) if t is not None else None, batch=values["batch"], seed=values["seed"],
                       patience=values["patience"], close_mosaic=values["close_mosaic"], augment=augment,
                       train_caps=dict(caps) if caps else None, train_repeat=dict(repeat) if repeat else None,
                       device=device, workers=values["workers"],
                       cache=cache, ultralytics=dict(extra), name=name, source=source)


def resolve_device(requested: str) -> str:
    """``auto`` trains on CUDA when torch sees a GPU, else on CPU; asking for CUDA without one is an error
    (silently training for days on a CPU is worse)."""
    import torch

    requested = (requested or "auto").lower()
    if requested == "cpu":
        return "cpu"
    if torch.cuda.is_available():
        return "0"
    if requested == "cuda":
        raise Invalid("device 'cuda' requested but torch sees no GPU", code="no_gpu")
    return "cpu"


# ---- runs ---------------------------------------------------------------------------------------


@dataclass
class TrainResult:
    run_id: str
    run_dir: Path
    status: str
    dataset: dict[str, Any]
    device: str
    epochs: list[dict[str, Any]]
    metrics: dict[str, float]
    best: Path | None
    last: Path | None
    model: dict[str, Any] | None = None  # the registered candidate (registry.model_dict)
    resumed: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "run_dir": str(self.run_dir), "status": self.status, "dataset": self.dataset,
                "device": self.device, "epochs": self.epochs, "metrics": self.metrics,
                "best": str(self.best) if self.best else None, "last": str(self.last) if self.last else None,
                "model": self.model, "resumed": self.resumed}


def runs_root(ctx: Context) -> Path:
    return ctx.settings.home / "runs"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _write_json(path: Path, data: Any) -> None:
    """Atomic, so that a reader (the jobs API, a resume) never sees half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, ensure_ascii=False, indent=2, default=str), encoding="utf-8")
    os.replace(tmp, path)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _new_run_id(dataset_name: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", dataset_name).strip("-")[:40] or "dataset"
    return f"{datetime.now(UTC):%Y%m%d-%H%M%S}-{slug}-{secrets.token_hex(3)}"


def _find_resumable(ctx: Context, dv: DatasetVersion, cfg: TrainConfig, run_id: str | None) -> Path:
    root = runs_root(ctx)
    if run_id:
        run_dir = root / run_id
        if not (run_dir / "run.json").is_file():
            raise NotFound(f"no training run {run_id!r} under {root}", code="run_not_found")
        candidates = [run_dir]
    else:
        # Newest unfinished run of the same dataset version and config: "train --resume" after a crash.
        candidates = sorted((p for p in root.glob("*/run.json")), key=lambda p: p.stat().st_mtime, reverse=True)
        candidates = [p.parent for p in candidates]
        candidates = [d for d in candidates
                      if (info := _read_json(d / "run.json")).get("dataset", {}).get("id") == dv.id
                      and info.get("config_sha256") == cfg.sha256() and info.get("status") != "completed"]
        if not candidates:
            raise Conflict(f"no unfinished run of {dv.name} with this config to resume", code="nothing_to_resume")
    run_dir = candidates[0]
    info = _read_json(run_dir / "run.json")
    if info.get("status") == "completed":
        raise Conflict(f"run {run_dir.name} already finished; start a new one", code="run_finished")
    if not (run_dir / "weights" / "last.pt").is_file():
        raise Conflict(f"run {run_dir.name} saved no checkpoint (it stopped in its first epoch); start a new one",
                       code="no_checkpoint")
    return run_dir


def read_epochs(results_csv: Path) -> list[dict[str, Any]]:
    """Ultralytics' results.csv as a list of {column: number} (one row per epoch)."""
    if not results_csv.is_file():
        return []
    with results_csv.open(newline="", encoding="utf-8") as f:
        rows = []
        for row in csv.DictReader(f):
            parsed: dict[str, Any] = {}
            for k, v in row.items():
                if k is None:
                    continue
                try:
                    num = float(v)
                    parsed[k.strip()] = int(num) if k.strip() == "epoch" else num
                except (TypeError, ValueError):
                    parsed[k.strip()] = v
            rows.append(parsed)
    return rows


_METRIC_NAMES = {"metrics/precision(B)": "precision", "metrics/recall(B)": "recall", "metrics/mAP50(B)": "map50",
                 "metrics/mAP50-95(B)": "map50_95"}


def clean_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """Ultralytics' metric keys ('metrics/mAP50-95(B)') as the names evaluation reports use."""
    out: dict[str, float] = {}
    for k, v in metrics.items():
        try:
            out[_METRIC_NAMES.get(k, k)] = round(float(v), 5)
        except (TypeError, ValueError):
            continue
    return out


# ---- dataset ------------------------------------------------------------------------------------


def dataset_provenance(session: Any, dv: DatasetVersion) -> dict[str, Any]:
    """What a model card says about the data: which version, how many samples per split, and where
    the samples came from (source sets and organisations), so a reviewer can tell what a model has seen."""
    splits = dict(session.execute(select(DatasetItem.split, func.count()).where(DatasetItem.version_id == dv.id)
                                  .group_by(DatasetItem.split)).all())
    sources: Counter[str] = Counter()
    orgs: Counter[str] = Counter()
    sectors: Counter[str] = Counter()
    tags: Counter[str] = Counter()
    rows = session.execute(select(Sample.source, Sample.org_code, Sample.sector, Sample.tags).join(
        DatasetItem, DatasetItem.sample_id == Sample.id).where(DatasetItem.version_id == dv.id))
    for source, org, sector, sample_tags in rows:
        sources[source or "unknown"] += 1
        orgs[org] += 1
        sectors[sector] += 1
        tags.update(t for t in sample_tags or [] if isinstance(t, str))
    # Curators mark where imported photos came from with tags (e.g. the public set's name); the 50
    # commonest are enough to tell the sets apart without copying every tag into every card.
    return {"name": dv.name, "id": dv.id, "taxonomy_version": dv.taxonomy_version, "classes": list(dv.classes),
            "samples_per_split": {k: int(v) for k, v in sorted(splits.items())},
            "sources": dict(sources), "source_sets": dict(tags.most_common(50)), "organisations": dict(orgs),
            "sectors": dict(sectors),
            "params": dv.params, "manifest_key": dv.manifest_key,
            "created_at": dv.created_at.isoformat() if dv.created_at else None}


def resolve_dataset(ctx: Context, dataset_ref: str,
                    principal: Principal | None = None) -> tuple[DatasetVersion, dict[str, Any]]:
    """The version and its provenance. A user principal sees only its organisation's versions
    (the datasets' tenancy rule); the system principal sees all."""
    from hazardlens.datasets.versions import resolve

    with ctx.db.session() as session:
        who = principal if principal is not None and principal.user_id is not None else None
        dv = resolve(session, dataset_ref, who)
        return dv, dataset_provenance(session, dv)


def materialise(ctx: Context, dv: DatasetVersion, train_caps: dict[str, int] | None = None,
                train_repeat: dict[str, int] | None = None) -> Path:
    """The version as a YOLO folder under ``<cache>/datasets``; returns its data.yaml.

    A version is immutable, so a folder once complete is reused as is (images are hard links into
    the materializer's blob cache, so even a first export copies little). It is built in a temporary
    folder and renamed into place, so that a training or evaluation reading it never sees an export
    being rewritten under it."""
    from hazardlens.datasets.materialize import export_version

    selection: Any = train_caps or {}
    if train_repeat:
        selection = {"caps": train_caps or {}, "repeat": train_repeat}
    tag = hashlib.sha256(json.dumps(selection, sort_keys=True).encode()).hexdigest()[:8]
    final = ctx.settings.cache_dir / "datasets" / f"{dv.id[:16]}-yolo-{tag}"
    marker = final / ".complete"
    if marker.is_file() and (final / "data.yaml").is_file():
        return final / "data.yaml"
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.{os.getpid()}.{secrets.token_hex(3)}")
    try:
        export_version(ctx, dv, "yolo", tmp, train_caps=train_caps)
        data_yaml = tmp / "data.yaml"
        if not data_yaml.is_file():
            raise Invalid(f"materialising {dv.name} as YOLO produced no data.yaml", code="materialise_failed")
        data = yaml.safe_load(data_yaml.read_text(encoding="utf-8")) or {}
        data["path"] = str(final.resolve())
        if train_repeat:
            data["train"] = write_train_list(tmp, data, train_repeat)
        data_yaml.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
        _write_json(tmp / ".complete", {"version_id": dv.id, "train_caps": train_caps or {},
                                        "train_repeat": train_repeat or {}, "at": _now()})
        if final.exists():  # an unfinished folder from a crash, or another process just won the race
            if (final / ".complete").is_file():
                return final / "data.yaml"
            shutil.rmtree(final)
        try:
            os.replace(tmp, final)
        except OSError:
            if not (final / ".complete").is_file():  # anything but "another process finished first"
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final / "data.yaml"


def write_train_list(folder: Path, data: dict[str, Any], repeat: dict[str, int]) -> str:
    """Write ``train.txt`` listing each train image once, or ``max(repeat[c])`` times over the classes
    ``c`` in its labels; returns the name for data.yaml's ``train``. Ultralytics keeps repeated lines
    (each is one more sample per epoch, augmented afresh), so this oversamples without copying files.
    Paths are ``./``-relative, which Ultralytics resolves against the list's folder wherever it moves."""
    key_of = _names(data)
    unknown = sorted(set(repeat) - set(key_of))
    if unknown:
        raise Invalid(f"train_repeat names classes not in this dataset: {', '.join(unknown)}", code="invalid_repeat")
    lines: list[str] = []
    repeated: Counter[str] = Counter()
    for image in sorted((folder / "images" / "train").glob("*")):
        label = folder / "labels" / "train" / f"{image.stem}.txt"
        rows = label.read_text(encoding="utf-8").splitlines() if label.is_file() else []
        boosted = {key_of[int(r.split()[0])] for r in rows if r.strip()} & set(repeat)
        times = max((repeat[c] for c in boosted), default=1)
        if times > 1:
            repeated.update(boosted)
        lines += [f"./images/train/{image.name}"] * times
    (folder / "train.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    _write_json(folder / "train_repeat.json", {"repeat": repeat, "entries": len(lines),
                                                "images": len(set(lines)), "images_with_class": dict(repeated)})
    return "train.txt"


def export_summary(data_yaml: Path) -> dict[str, Any]:
    """Images/instances per split as materialised (after train caps), from the export's stats.json:
    what training really saw, next to what the version holds."""
    stats = _read_json(data_yaml.parent / "stats.json")
    splits = {k: {f: v.get(f) for f in ("images", "instances", "negatives")}
              for k, v in (stats.get("splits") or {}).items() if isinstance(v, dict)}
    summary = {"splits": splits, "capped_images": stats.get("capped_images", 0)}
    repeat = data_yaml.parent / "train_repeat.json"
    if repeat.is_file():
        summary["train_repeat"] = _read_json(repeat)
    return summary


def data_names(data_yaml: Path) -> list[str]:
    return _names(yaml.safe_load(data_yaml.read_text(encoding="utf-8")) or {})


def _names(data: dict[str, Any]) -> list[str]:
    """Class keys in class-id order; data.yaml's ``names`` is a list or an id -> name mapping."""
    names = data.get("names")
    if isinstance(names, dict):
        return [str(names[k]) for k in sorted(names, key=int)]
    return [str(n) for n in names or []]


# ---- the trainer --------------------------------------------------------------------------------


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

        def build_dataset(self, img_path: str, mode: str = "train", batch: int | None = None) -> Any:
            dataset = super().build_dataset(img_path, mode, batch)
            if mode == "train" and self.hl_pipeline is not None:
                from hazardlens.datasets.augment import install_in_dataset

                # Also survives close_mosaic, which rebuilds the transforms (install_in_dataset wraps that).
                install_in_dataset(dataset, self.hl_pipeline)
            if mode == "train":
                from hazardlens.training import partial_labels

                names = _names(self.data)
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

        def _setup_train(self) -> None:
            original = engine_trainer.check_amp
            engine_trainer.check_amp = _offline_check_amp
            try:
                super()._setup_train()
            finally:
                engine_trainer.check_amp = original

    _TRAINER_CLASS = HazardTrainer
    return HazardTrainer


class _Reporter:
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
        self._emit(self._fraction(trainer, trainer.epoch + self.batch / nb),
                   f"epoch {trainer.epoch + 1}/{trainer.epochs}: batch {self.batch}/{nb}")

    def fit_epoch_end(self, trainer: Any) -> None:
        epochs = read_epochs(Path(trainer.csv))
        _write_json(self.run_dir / "metrics.json", {"epochs": epochs})
        if self.final or (epochs and trainer.epoch + 1 > epochs[-1].get("epoch", 0)):
            return  # final_eval re-runs this callback for best.pt; reported at train end
        m = trainer.metrics or {}
        summary = ", ".join(f"{k.split('/')[-1]}={float(v):.4f}" for k, v in m.items() if "mAP" in k)
        self._emit(self._fraction(trainer, trainer.epoch + 1),
                   f"epoch {trainer.epoch + 1}/{trainer.epochs} done" + (f": {summary}" if summary else ""))

    def train_end(self, trainer: Any) -> None:
        self.final = True
        self._emit(0.99, "training finished; validated best.pt")


# ---- entry point --------------------------------------------------------------------------------


def _ultralytics_args(cfg: TrainConfig, data_yaml: Path, run_dir: Path, device: str) -> dict[str, Any]:
    args: dict[str, Any] = {
        "model": cfg.model, "data": str(data_yaml), "imgsz": cfg.imgsz, "epochs": cfg.epochs, "batch": cfg.batch,
        "seed": cfg.seed, "deterministic": True, "patience": cfg.patience, "close_mosaic": cfg.close_mosaic,
        "workers": cfg.workers, "cache": cfg.cache, "device": device, "project": str(run_dir.parent),
        "name": run_dir.name, "save_dir": str(run_dir), "exist_ok": True, "verbose": False,
        # CPU: AMP does nothing useful. CUDA: AMP stays on; HazardTrainer swaps the downloading self-test.
        "amp": device != "cpu",
    }
    if cfg.time:
        args["time"] = cfg.time
    args.update(cfg.ultralytics)
    return args


def train(ctx: Context, dataset_ref: str, config_path: Path | str, *, progress: Progress | None = None,
          resume: bool = False, register: bool = True, principal: Principal = SYSTEM,
          run_id: str | None = None) -> TrainResult:
    """Train on ``dataset_ref`` ('NAME@VERSION') with ``config_path``; register best.pt as a candidate.

    ``resume=True`` continues the newest unfinished run of the same dataset version and config (or
    ``run_id``) from its last.pt. ``progress(fraction, message)`` is called from the training thread;
    an exception it raises stops the run (it stays resumable).
    """
    from hazardlens.models.ultralytics_env import prepare_ultralytics

    if run_id is not None and not _RUN_ID.fullmatch(run_id):
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
        raise Invalid(f"dataset {dataset_ref} has no {' and no '.join(missing)} images; training needs both "
                      f"(recreate the version with other split ratios)", code="empty_split")
    device = resolve_device(cfg.device)

    if resume:
        run_dir = _find_resumable(ctx, dv, cfg, run_id)
        info = _read_json(run_dir / "run.json")
        info.update(status="running", resumed_at=_now(), device=device)
    else:
        run_dir = runs_root(ctx) / (run_id or _new_run_id(dv.name))
        if run_dir.exists():
            raise Conflict(f"run {run_dir.name} already exists", code="run_exists")
        run_dir.mkdir(parents=True)
        if cfg.source:
            shutil.copyfile(cfg.source, run_dir / "config.source.yaml")
        (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), allow_unicode=True, sort_keys=False),
                                             encoding="utf-8")
        _write_json(run_dir / "dataset.json", {**provenance, "ref": dataset_ref, "train_caps": cfg.train_caps,
                                               "train_repeat": cfg.train_repeat, "data_yaml": str(data_yaml),
                                               "materialised_classes": classes,
                                               "materialised": export_summary(data_yaml)})
        info = {"run_id": run_dir.name, "status": "running", "started_at": _now(), "device": device,
                "dataset": {"name": dv.name, "id": dv.id, "ref": dataset_ref}, "config_sha256": cfg.sha256(),
                "config": str(cfg.source) if cfg.source else None}
    _write_json(run_dir / "run.json", info)

    pipeline = None
    if cfg.augment is not None:
        from hazardlens.datasets.augment import load_pipeline

        pipeline = load_pipeline(cfg.augment)

    args = _ultralytics_args(cfg, data_yaml, run_dir, device)
    if resume:
        args = {"data": str(data_yaml), "device": device, "resume": str(run_dir / "weights" / "last.pt"),
                "workers": cfg.workers, "cache": cfg.cache, "save_dir": str(run_dir)}
    reporter = _Reporter(run_dir, progress, cpu=device == "cpu")
    trainer = trainer_class()(overrides=args)
    trainer.hl_pipeline = pipeline
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
        info.update(status="interrupted" if isinstance(exc, KeyboardInterrupt) else "failed", finished_at=_now(),
                    error=f"{type(exc).__name__}: {exc}")
        _write_json(run_dir / "run.json", info)
        raise

    epochs = read_epochs(run_dir / "results.csv")
    _write_json(run_dir / "metrics.json", {"epochs": epochs})
    final = clean_metrics(trainer.metrics or {})
    best = run_dir / "weights" / "best.pt"
    last = run_dir / "weights" / "last.pt"
    info.update(status="completed", finished_at=_now(), duration_s=round(time.time() - started, 1),
                epochs_completed=len(epochs), final_metrics=final)
    _write_json(run_dir / "run.json", info)

    model = None
    if register and best.is_file():
        model = _register(ctx, principal, cfg, dv, provenance, dataset_ref, run_dir, best, classes, epochs,
                          final, device, bool(resume))
        info["model"] = {"name": model["name"], "version": model["version"]}
        _write_json(run_dir / "run.json", info)
    if progress:
        done = f"registered {model['name']} {model['version']} as candidate" if model else "done"
        progress(1.0, done)
    return TrainResult(run_id=run_dir.name, run_dir=run_dir, status="completed", dataset=info["dataset"],
                       device=device, epochs=epochs, metrics=final, best=best if best.is_file() else None,
                       last=last if last.is_file() else None, model=model, resumed=bool(resume))


def _register(ctx: Context, principal: Principal, cfg: TrainConfig, dv: DatasetVersion, provenance: dict[str, Any],
              dataset_ref: str, run_dir: Path, best: Path, classes: list[str], epochs: list[dict[str, Any]],
              final: dict[str, float], device: str, resumed: bool) -> dict[str, Any]:
    import torch
    import ultralytics

    from hazardlens.models.registry import DEFAULT_NAME, model_dict, register_model, sha256_file

    info = _read_json(run_dir / "run.json")
    card = {
        "kind": "yolo-detect",
        "architecture": Path(cfg.model).name,
        "framework": {"ultralytics": ultralytics.__version__, "torch": torch.__version__},
        "taxonomy_version": dv.taxonomy_version,
        "dataset_version": dv.id,
        "training_data": {**provenance, "ref": dataset_ref, "train_caps": cfg.train_caps,
                          "train_repeat": cfg.train_repeat,
                          "materialised": _read_json(run_dir / "dataset.json").get("materialised")},
        "metrics": {"val": final, "epochs": len(epochs)},
        "config": cfg.to_dict(),
        "hashes": {"config_sha256": cfg.sha256(), "dataset_version": dv.id,
                   "last_sha256": sha256_file(run_dir / "weights" / "last.pt")
                   if (run_dir / "weights" / "last.pt").is_file() else None},
        "training": {"run_id": run_dir.name, "device": device, "started_at": info.get("started_at"),
                     "finished_at": info.get("finished_at"), "duration_s": info.get("duration_s"),
                     "seed": cfg.seed, "resumed": resumed},
    }
    with ctx.db.session() as session:
        mv = register_model(ctx, session, principal, best, classes=classes, imgsz=cfg.imgsz, card=card,
                            name=cfg.name or DEFAULT_NAME, dataset_version_id=dv.id, stage="candidate")
        return model_dict(mv)
