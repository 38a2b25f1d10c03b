"""Training configs: read ``configs/train/*.yaml``, check it (the contract,
:class:`hazardlens.contracts.training.TrainConfig`), then resolve what needs the filesystem and
Ultralytics (model weights or architecture, augment pipeline, Ultralytics argument names). Every
problem of both steps is reported at once, with the file.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from hazardlens.contracts.training import CONFIG_KEYS, MAX_REPEAT, RESERVED_ULTRALYTICS, TrainConfig, config_problems
from hazardlens.errors import Invalid
from hazardlens.settings import find_config_file, shipped_configs


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


def _model_file(model: object, config_dir: Path, errors: list[str]) -> str | None:
    """The model as a local path (or a builtin architecture name); None after reporting a problem."""
    if not isinstance(model, str) or not model.strip():
        return None  # the contract reports it
    if model.endswith((".yaml", ".yml")) and not Path(model).parent.parts:
        from hazardlens.models.ultralytics_env import prepare_ultralytics

        prepare_ultralytics()
        local = _resolve_file(model, config_dir)
        if local is not None:
            return str(local)
        if not _builtin_architecture(model):
            errors.append(f"model architecture {model!r} is neither a local file nor shipped with ultralytics")
        return model
    local = _resolve_file(model, config_dir)
    if local is None:
        errors.append(f"model weights {model!r} not found locally (nothing is downloaded)")
        return None
    return str(local)


def _augment_file(augment: object, config_dir: Path, errors: list[str]) -> Path | None:
    if not augment:
        return None
    found = _resolve_file(str(augment), config_dir)
    if found is None:
        errors.append(f"augment pipeline {augment!r} not found")
    return found


def _ultralytics_names(extra: object, errors: list[str]) -> None:
    """Ultralytics train arguments must exist (a misspelt one would be refused only when training starts)."""
    if not extra or not isinstance(extra, dict):
        return
    from hazardlens.models.ultralytics_env import prepare_ultralytics

    prepare_ultralytics()
    from ultralytics.cfg import DEFAULT_CFG_DICT

    bad = sorted(k for k in extra if k not in DEFAULT_CFG_DICT)
    if bad:
        errors.append(f"'ultralytics' has unknown argument(s) {', '.join(bad)}")


def config_from_dict(raw: dict[str, Any], source: Path | None = None) -> TrainConfig:
    """Check ``raw`` (the contract, then files and Ultralytics names) and build the config; every
    problem is reported at once, as one :class:`~hazardlens.errors.Invalid` naming the file."""
    errors = config_problems(raw)
    config_dir = source.parent if source else Path.cwd()
    model = _model_file(raw.get("model"), config_dir, errors)
    augment = _augment_file(raw.get("augment"), config_dir, errors)
    _ultralytics_names(raw.get("ultralytics"), errors)
    if errors:
        where = str(source) if source else "training config"
        raise Invalid(f"{where}: {'; '.join(errors)}", code="invalid_config", details=errors)
    return TrainConfig.model_validate({**raw, "model": model, "augment": augment, "source": source})


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


__all__ = [
    "CONFIG_KEYS",
    "MAX_REPEAT",
    "RESERVED_ULTRALYTICS",
    "TrainConfig",
    "config_from_dict",
    "load_config",
    "resolve_device",
]
