"""Graft a fine-tune onto the model it started from, as a branch that answers for the added classes.

``branch_classes`` in a training config (with ``train --from``) makes the run a branch: the fine-tune
trains with its first ``ultralytics.freeze`` layers (the trunk) frozen, then :func:`graft` puts its
layers after the trunk beside the start model's own (models/branched.py). The start model keeps
answering for the classes it had, exactly; the branch answers for ``branch_classes``. Nothing is
averaged or approximated, so the old classes lose nothing, and the new class learns as fast as a
plain fine-tune: the trade of a shared fine-tune (benchmarks/learning_curve.py) disappears, at the
cost of a neck and head more per branch at inference.

A branched model can be the start of the next addition: the run trains from its base (the original
layers, see :func:`unbranched`) and the graft adds one more branch, the earlier branches kept.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hazardlens.errors import Invalid
from hazardlens.models.branched import Branch, BranchedDetect, is_branched
from hazardlens.training.expand import class_names, save_checkpoint


def trunk_size(ultralytics_args: dict[str, Any]) -> int:
    """The layers a branch shares with the model it grafts onto: the config's ``ultralytics.freeze``,
    which must be a whole number of leading layers (a list of layer indices leaves no clean trunk)."""
    freeze = ultralytics_args.get("freeze")
    if isinstance(freeze, bool) or not isinstance(freeze, int) or freeze < 1:
        raise Invalid(
            "branch_classes grafts the fine-tune onto the start model after a frozen trunk: set "
            "`ultralytics: {freeze: N}` (N leading layers, e.g. 10 for the YOLO11 backbone)",
            code="invalid_config",
        )
    return freeze


def unbranched(model: Any) -> Any:
    """The model with its base head back as the last layer (the original layers, without branches);
    the model itself when it is not branched. Works on a copy."""
    if not is_branched(model):
        return model
    model = copy.deepcopy(model)
    head: BranchedDetect = model.model[-1]
    base = head.base
    base.f, base.i = head.base_f if len(head.base_f) > 1 else head.base_f[0], head.i
    model.model[-1] = base
    model.names = dict(enumerate(head.base_names))
    model.nc = len(head.base_names)
    return model


def branched(weights: Path | str) -> bool:
    """Whether the checkpoint at ``weights`` is a branched model."""
    from ultralytics.nn.tasks import load_checkpoint

    return is_branched(load_checkpoint(str(weights))[0])


def _trunk_inputs(layers: Sequence[Any], trunk: int) -> list[int]:
    """The trunk layers (index < ``trunk``) that the layers after it read."""
    needed: set[int] = set()
    for layer in layers:
        sources = layer.f if isinstance(layer.f, list) else [layer.f]
        for j in sources:
            source = int(layer.i) - 1 if j == -1 else int(j)
            if source < trunk:
                needed.add(source)
    return sorted(needed)


def _check_trunk(base: Any, student: Any, trunk: int) -> None:
    """The student must have trained with the start model's trunk frozen: its first ``trunk`` layers
    equal the base's (up to half-precision rounding of the saved weights), else the branch would run
    on features it never saw."""
    import torch

    ours = base.model[:trunk].state_dict()
    theirs = student.model[:trunk].state_dict()
    if ours.keys() != theirs.keys():
        raise Invalid("the fine-tune's first layers are not the start model's architecture", code="not_a_branch")
    for key, value in ours.items():
        other = theirs[key]
        if value.shape != other.shape or not torch.allclose(
            value.float(), other.float(), rtol=2e-3, atol=1e-4, equal_nan=True
        ):
            raise Invalid(
                f"the fine-tune changed the start model's trunk (model.{key}): train it with the first {trunk} layers "
                "frozen (ultralytics.freeze) to graft it",
                code="not_a_branch",
            )


def graft(start: Path | str, student: Path | str, owned: Sequence[str], trunk: int, out: Path | str) -> Path:
    """Write to ``out`` the start model (plain or already branched) with the student's layers after
    the trunk added as a branch answering for ``owned``; the model's classes become the student's."""
    from ultralytics.nn.tasks import load_checkpoint

    base_model, _ = load_checkpoint(str(start))
    student_model, student_ckpt = load_checkpoint(str(student))
    base_model, student_model = base_model.float().eval(), student_model.float().eval()
    names = class_names(student_model)
    missing = [c for c in owned if c not in names]
    if missing or not owned:
        raise Invalid(
            f"the branch's classes are not the fine-tune's: {', '.join(missing) or 'none given'}",
            code="invalid_classes",
        )
    known = class_names(base_model)
    dropped = [c for c in known if c not in names]
    if dropped:
        raise Invalid(f"the fine-tune lacks classes the start model has: {', '.join(dropped)}", code="classes_dropped")
    # the trunk and the layer count of a branched start are its base model's: no need to unbranch it here
    layer_count = len(base_model.model)
    if not 0 < trunk < layer_count - 1:
        raise Invalid(
            f"a trunk of {trunk} layers leaves no neck and head to graft (the model has {layer_count} layers)",
            code="not_a_branch",
        )
    _check_trunk(base_model, student_model, trunk)
    layers = [copy.deepcopy(m) for m in student_model.model[trunk:]]
    branch = Branch(layers, _trunk_inputs(layers, trunk), names)
    if is_branched(base_model):
        old: BranchedDetect = base_model.model[-1]
        head = BranchedDetect(old.base, old.base_names, [*old.branches, branch], [*old.owned, list(owned)], names)
    else:
        head = BranchedDetect(base_model.model[-1], known, [branch], [list(owned)], names)
    base_model.model[-1] = head
    base_model.save = sorted(set(base_model.save) | set(head.trunk_inputs))
    base_model.names = dict(enumerate(names))
    base_model.nc = len(names)
    return save_checkpoint(
        base_model,
        student_ckpt,
        out,
        hazardlens_branched={
            "start": str(start),
            "student": str(student),
            "trunk": trunk,
            "branches": [{"classes": o} for o in head.owned],
        },
    )


__all__ = ["branched", "graft", "trunk_size", "unbranched"]
