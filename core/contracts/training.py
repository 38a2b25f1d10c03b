"""The training config (``configs/train/*.yaml``) as a contract: what a run is asked to do.

Checked without the filesystem or Ultralytics (the training part resolves the model and augment files
and Ultralytics' argument names as a second step), table-driven: one check per key, each with the
message a person fixing the file needs. Every problem is reported at once, unknown keys are refused
(a misspelt ``epoch`` must not silently train with the default), and so are the Ultralytics arguments
hazardlens decides itself.

:meth:`TrainConfig.sha256` identifies a config in run records and model cards (resume finds a run by
it), so it must never change for the same values.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError

#: Ultralytics arguments hazardlens decides itself (paths, device, AMP, resume); a config may not set
#: them under ``ultralytics:``.
RESERVED_ULTRALYTICS = frozenset(
    {
        "data",
        "model",
        "project",
        "name",
        "save_dir",
        "exist_ok",
        "resume",
        "device",
        "amp",
        "mode",
        "task",
        "cfg",
        "pretrained",
    }
)
#: Upper bound of a train_repeat factor: beyond it a handful of images dominate every epoch (overfitting).
MAX_REPEAT = 20
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _class_counts(value: object, low: int, high: int | None) -> bool:
    """A mapping of class keys to whole numbers in [low, high] (train_caps, train_repeat)."""
    return isinstance(value, dict) and all(
        isinstance(k, str) and _whole(v) and v >= low and (high is None or v <= high) for k, v in value.items()
    )


def _check(test: Callable[[Any], bool], message: str, convert: Callable[[Any], Any] = lambda v: v) -> BeforeValidator:
    """A field check: ``message`` (formatted with the value as ``v``) when ``test`` fails, else the
    converted value."""

    def check(value: Any) -> Any:
        if not test(value):
            raise ValueError(message.format(v=value))
        return convert(value)

    return BeforeValidator(check)


def _positive(key: str) -> BeforeValidator:
    return _check(lambda v: _whole(v) and v >= 1, f"'{key}' must be a positive integer, not {{v!r}}")


def _non_negative(key: str) -> BeforeValidator:
    return _check(lambda v: _whole(v) and v >= 0, f"'{key}' must be a non-negative integer, not {{v!r}}")


def _class_keys_or_added(key: str) -> BeforeValidator:
    """A list of distinct class keys, or ``added`` (the classes ``train --from`` adds)."""
    return _check(
        lambda v: (
            v is None
            or v == "added"
            or (isinstance(v, list) and bool(v) and all(isinstance(c, str) and c for c in v) and len(set(v)) == len(v))
        ),
        f"'{key}' is a list of distinct class keys, e.g. [explosion_vent], or 'added' "
        "(the classes `train --from` adds), not {v!r}",
    )


def _imgsz(value: Any) -> Any:
    if _whole(value) and value % 32:
        raise ValueError(f"'imgsz' must be a multiple of 32 (the model's stride), not {value}")
    return value


def _ultralytics(value: Any) -> dict[str, Any]:
    extra = value or {}
    if not isinstance(extra, dict):
        raise ValueError("'ultralytics' must be a mapping of Ultralytics train arguments")
    reserved = sorted(set(extra) & RESERVED_ULTRALYTICS)
    if reserved:
        raise ValueError(f"'ultralytics' may not set {', '.join(reserved)}: hazardlens decides these")
    return dict(extra)


class TrainConfig(BaseModel):
    """One training config, checked; ``model`` and ``augment`` are resolved paths once the training
    part has built it (:func:`hazardlens.training.config.load_config`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: Annotated[
        str,
        _check(
            lambda v: isinstance(v, str) and bool(v.strip()),
            "'model' is required: an architecture YAML such as yolo11n.yaml or a local .pt path",
        ),
    ]
    imgsz: Annotated[int, _positive("imgsz"), BeforeValidator(_imgsz)] = 640
    epochs: Annotated[int, _positive("epochs")] = 100
    time: Annotated[
        float | None,
        _check(
            lambda v: v is None or (isinstance(v, int | float) and not isinstance(v, bool) and v > 0),
            "'time' is a number of hours > 0, not {v!r}",
            lambda v: float(v) if v is not None else None,
        ),
    ] = None
    batch: Annotated[int, _positive("batch")] = 16
    seed: Annotated[int, _non_negative("seed")] = 0
    patience: Annotated[int, _non_negative("patience")] = 100
    close_mosaic: Annotated[int, _non_negative("close_mosaic")] = 10
    augment: Annotated[Path | None, BeforeValidator(lambda v: Path(str(v)) if v else None)] = None
    train_caps: Annotated[
        dict[str, int] | None,
        _check(
            lambda v: v is None or _class_counts(v, 0, None),
            "'train_caps' maps class keys to non-negative image counts, e.g. {{fire: 150}}",
            lambda v: dict(v) if v else None,
        ),
    ] = None
    #: class key -> how many times each train image holding that class is listed per epoch: the way
    #: to give a rare class (heads without helmets: 2% of the boxes) more gradient steps, since
    #: Ultralytics' detection loss has no class weights.
    train_repeat: Annotated[
        dict[str, int] | None,
        _check(
            lambda v: v is None or _class_counts(v, 1, MAX_REPEAT),
            f"'train_repeat' maps class keys to whole numbers from 1 to {MAX_REPEAT}, e.g. {{{{head: 4}}}}",
            lambda v: dict(v) if v else None,
        ),
    ] = None
    #: Train only these classes' rows of the final classification layer; every other weight stays the
    #: start model's, so its other classes score exactly as before (training/keep_classes.py). A list of
    #: class keys, or ``added``: the classes ``train --from`` added to the model.
    train_only_classes: Annotated[list[str] | str | None, _class_keys_or_added("train_only_classes")] = None
    #: Graft the fine-tune onto the start model as a branch of its own (training/branch.py,
    #: models/branched.py): the start model keeps answering for the classes it had, exactly, and the
    #: fine-tuned layers after the frozen trunk (``ultralytics.freeze``) answer for these classes. A
    #: list of class keys, or ``added``: the classes ``train --from`` added. Needs ``train --from``.
    branch_classes: Annotated[list[str] | str | None, _class_keys_or_added("branch_classes")] = None
    #: Learning without forgetting (training/distill.py): with ``train --from``, the classes the start
    #: model already had are held to its outputs on every training image (their scores everywhere,
    #: the box distributions where it is confident of them), with this weight beside the detection
    #: loss; the added classes learn freely. 0 or unset: off.
    keep_old_outputs: Annotated[
        float | None,
        _check(
            lambda v: v is None or (isinstance(v, int | float) and not isinstance(v, bool) and 0 <= v <= 100),
            "'keep_old_outputs' is a weight from 0 to 100 (1 is the detection loss's own scale), not {v!r}",
            lambda v: float(v) if v else None,
        ),
    ] = None
    #: BatchNorm running statistics stay the start model's for the whole run (every BatchNorm layer in
    #: inference mode; its scale and shift still train). The statistics are shared by every class, and
    #: re-estimating them on a few dozen new (mosaic-augmented) photos moves the old classes without a
    #: single gradient step; the usual practice when fine-tuning a detector on little data.
    hold_batchnorm: Annotated[
        bool,
        _check(lambda v: isinstance(v, bool), "'hold_batchnorm' is true or false, not {v!r}"),
    ] = False
    device: Annotated[
        str,
        _check(
            lambda v: str(v).lower() in ("auto", "cpu", "cuda"),
            "'device' must be auto, cpu or cuda, not {v!r}",
            lambda v: str(v).lower(),
        ),
    ] = "auto"
    workers: Annotated[int, _non_negative("workers")] = 2
    cache: Annotated[
        bool | str, _check(lambda v: v in (True, False, "ram", "disk"), "'cache' must be false, ram or disk, not {v!r}")
    ] = False
    ultralytics: Annotated[dict[str, Any], BeforeValidator(_ultralytics)] = {}
    name: Annotated[
        str | None,
        _check(
            lambda v: v is None or (isinstance(v, str) and bool(_NAME.fullmatch(v))),
            "'name' (registry model name) must be letters, digits, '_', '.', '-', not {v!r}",
        ),
    ] = None  # registry model name; default hazardlens
    source: Path | None = None  # the file it was read from (not a key of the file)

    def to_dict(self) -> dict[str, Any]:
        d = self.model_dump()
        d["augment"] = str(self.augment) if self.augment else None
        d["source"] = str(self.source) if self.source else None
        return d

    def sha256(self) -> str:
        # train_repeat, train_only_classes, branch_classes, keep_old_outputs and hold_batchnorm joined the
        # config later: leaving them out when unset keeps earlier runs' hashes
        later = ("train_repeat", "train_only_classes", "branch_classes", "keep_old_outputs", "hold_batchnorm")
        body = {k: v for k, v in self.to_dict().items() if k != "source" and not (k in later and v in (None, False))}
        return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


#: Keys of configs/train/*.yaml; anything else is refused.
CONFIG_KEYS = frozenset(TrainConfig.model_fields) - {"source"}


def config_problems(raw: Mapping[str, Any]) -> list[str]:
    """Every problem of a config's keys and values (no filesystem, no Ultralytics); empty when it is
    a valid :class:`TrainConfig`."""
    problems: list[str] = []
    unknown = sorted(set(raw) - CONFIG_KEYS)
    if unknown:
        problems.append(f"unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(CONFIG_KEYS))}")
    try:
        TrainConfig.model_validate({k: v for k, v in raw.items() if k in CONFIG_KEYS})
    except ValidationError as exc:
        problems += [_message(e) for e in exc.errors()]
    caps, repeat = raw.get("train_caps"), raw.get("train_repeat")
    if isinstance(caps, dict) and isinstance(repeat, dict) and set(caps) & set(repeat):
        problems.append(f"a class is either capped or repeated, not both: {', '.join(sorted(set(caps) & set(repeat)))}")
    return problems


def _message(error: Any) -> str:
    cause = (error.get("ctx") or {}).get("error")
    if isinstance(cause, ValueError):
        return str(cause)
    where = ".".join(str(p) for p in error.get("loc", ()))  # a type the field checks let through
    return f"'{where}': {error.get('msg', 'invalid')}"


__all__ = ["CONFIG_KEYS", "MAX_REPEAT", "RESERVED_ULTRALYTICS", "TrainConfig", "config_problems"]
