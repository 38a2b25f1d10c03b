"""Add classes to a trained detector without forgetting the ones it has.

Curators label a new sector class (explosion vents, ladles, confined-space entrances) a few dozen
images at a time. Training a fresh model for each addition would throw away what the production
model knows; loading its weights into a model with more classes (Ultralytics' default transfer)
silently re-initialises the classification layer, because its shape changed, so every old class
starts from zero again.

:func:`expand_classes` instead builds the larger model and copies everything, including each old
class's row of the final classification convolutions, into the class order of the new dataset. At
the start of fine-tuning the expanded model therefore scores the old classes exactly as the
production model did (tested), and the new class starts from the usual prior (Ultralytics'
``bias_init``: about one object in a hundred anchors).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hazardlens.errors import Invalid


def cls_heads(detect: Any) -> list[Any]:
    """The classification branches of a Detect head (one-to-many, and one-to-one on end-to-end heads)."""
    heads = [detect.cv3]
    if getattr(detect, "one2one_cv3", None) is not None:
        heads.append(detect.one2one_cv3)
    return heads


def class_names(model: Any) -> list[str]:
    """An Ultralytics model's class names, in index order."""
    names = getattr(model, "names", None) or {}
    if isinstance(names, dict):
        return [str(names[k]) for k in sorted(names)]
    return [str(n) for n in names]


def model_classes(weights: Path | str) -> list[str]:
    """The class names a checkpoint was trained on, in index order."""
    from ultralytics.nn.tasks import load_checkpoint

    return class_names(load_checkpoint(str(weights))[0])


def expand_classes(weights: Path | str, new_names: Sequence[str], out: Path | str) -> Path:
    """Write to ``out`` a checkpoint of ``weights`` whose classes are ``new_names``: every class the
    model knows keeps its learnt classification weights (moved to its new index), every other class
    is initialised like a fresh head. Refuses to drop a class the model knows (that is a different
    model, not an addition) and a list with duplicates."""
    import torch
    from ultralytics.nn.tasks import load_checkpoint

    new_names = [str(n) for n in new_names]
    if len(set(new_names)) != len(new_names):
        raise Invalid("the new class list has duplicates", code="invalid_classes")
    from hazardlens.training.branch import unbranched

    model, ckpt = load_checkpoint(str(weights))
    model = unbranched(model)  # a branched model is trained from its base layers (training/branch.py)
    old_names = class_names(model)
    dropped = [n for n in old_names if n not in new_names]
    if dropped:
        raise Invalid(
            f"the dataset lacks classes the model knows ({', '.join(dropped)}); adding classes keeps "
            f"the old ones: build the dataset with --classes listing them all",
            code="classes_dropped",
        )
    detect = model.model[-1]
    nc_new = len(new_names)
    strides = [float(s) for s in detect.stride]
    for branch in cls_heads(detect):
        for i, seq in enumerate(branch):
            old = seq[-1]
            new = torch.nn.Conv2d(
                old.in_channels,
                nc_new,
                kernel_size=old.kernel_size,
                stride=old.stride,
                padding=old.padding,
                bias=old.bias is not None,
            )
            with torch.no_grad():
                torch.nn.init.normal_(new.weight, std=0.01)
                if new.bias is not None:
                    new.bias.fill_(math.log(5 / nc_new / (640 / strides[i]) ** 2))
                for j, name in enumerate(old_names):
                    k = new_names.index(name)
                    new.weight[k] = old.weight[j]
                    if new.bias is not None and old.bias is not None:
                        new.bias[k] = old.bias[j]
            seq[-1] = new.to(old.weight.device, old.weight.dtype)
    detect.nc = nc_new
    detect.no = nc_new + detect.reg_max * 4
    if isinstance(getattr(model, "yaml", None), dict):
        model.yaml["nc"] = nc_new
    model.names = dict(enumerate(new_names))
    model.nc = nc_new
    return save_checkpoint(model, ckpt, out, hazardlens_expanded_from={"weights": str(weights), "classes": old_names})


def save_checkpoint(model: Any, like: dict[str, Any], out: Path | str, **records: Any) -> Path:
    """Save ``model`` as an Ultralytics checkpoint (half precision, like its own) at ``out``, with the
    training arguments and version of the checkpoint ``like`` and what hazardlens did to it (``records``)."""
    import torch

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "model": model.half(),
            "train_args": dict(like.get("train_args") or {}),
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "version": like.get("version"),
            **records,
        },
        out,
    )
    return out


__all__ = ["class_names", "expand_classes", "model_classes", "save_checkpoint"]
