"""A detector with a branch of its own for each class added later: the last layer of a branched model.

Adding a class by fine-tuning the production model moves the classes it already had: the neck the
new class needs to adapt is shared by all of them (benchmarks/learning_curve.py measured -0.05 mean
AP50 for a plain fine-tune; holding them with distillation costs the new class most of its learning).
A branched model sidesteps the trade: the fine-tune trains its neck and head freely with the backbone
frozen (the "trunk"), and instead of replacing the production model it is grafted onto it. The
production model's own layers stay as they are and keep answering for the classes they had, bit for
bit; the fine-tuned layers run beside them on the same trunk features and answer for the added
classes only. The price is inference time: one more neck and head per branch (measured in the README).

:class:`BranchedDetect` replaces the production model's last layer (its ``Detect``). It receives the
production neck's outputs (for the ``base`` head) and the trunk outputs each branch reads, runs every
branch, and returns the usual YOLO output ``(batch, 4 + classes, anchors)`` with the anchors of all
heads side by side: each head's anchors carry scores only for the classes it answers for (zeros for
the others), so class-aware NMS, Ultralytics' validator and predictor, ONNX/OpenVINO export and the
engines' decoding all work unchanged. Building one from a fine-tune is training/branch.py.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn


def selection(names: Sequence[str], source: Sequence[str], owned: Sequence[str]) -> torch.Tensor:
    """A 0/1 matrix (len(names), len(source)) that moves a head's scores for ``owned`` classes to their
    index in ``names`` and drops the rest (a matrix product exports to every runtime; fancy indexing
    and scatter do not everywhere)."""
    matrix = torch.zeros(len(names), len(source))
    for j, name in enumerate(source):
        if name in owned:
            matrix[names.index(name), j] = 1.0
    return matrix


def _decoded(output: Any) -> torch.Tensor:
    """A Detect head's decoded predictions: alone in export mode, first of a tuple otherwise."""
    return output[0] if isinstance(output, tuple) else output


class Branch(nn.Module):
    """The layers after the trunk of a model fine-tuned from the production one: its neck and its
    ``Detect`` head, each layer keeping its index (``i``) and inputs (``f``) of the model it came from."""

    def __init__(self, layers: Sequence[nn.Module], inputs: Sequence[int], names: Sequence[str]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.inputs = [int(i) for i in inputs]  # trunk layers it reads, in the order BranchedDetect passes them
        self.names = [str(n) for n in names]  # the classes of its Detect head, in index order

    def forward(self, trunk: Mapping[int, torch.Tensor]) -> Any:
        """The branch's Detect output, from the trunk outputs by layer index (those in ``inputs``)."""
        outputs: dict[int, Any] = {i: trunk[i] for i in self.inputs}
        x: Any = None
        layers: Any = self.layers
        for layer in layers:
            f, i = layer.f, int(layer.i)
            if isinstance(f, int):
                x = outputs[i - 1 if f == -1 else f]
            else:
                x = [outputs[i - 1 if j == -1 else j] for j in f]
            x = layer(x)
            outputs[i] = x
        return x


class BranchedDetect(nn.Module):
    """The production model's ``Detect`` head plus the branches of the classes added after it.

    ``names`` are the model's classes; ``base_names`` those of the base head; ``owned[k]`` the classes
    branch ``k`` answers for (a class a later branch owns is no longer scored by an earlier head).
    The layer's inputs (``f``) are the base head's inputs followed by every trunk layer a branch reads.
    """

    def __init__(
        self,
        base: Any,
        base_names: Sequence[str],
        branches: Sequence[Branch],
        owned: Sequence[Sequence[str]],
        names: Sequence[str],
    ) -> None:
        super().__init__()
        if len(branches) != len(owned) or not branches:
            raise ValueError("a branched head needs at least one branch, and the classes each one answers for")
        self.base = base
        self.branches = nn.ModuleList(branches)
        self.names = [str(n) for n in names]
        self.base_names = [str(n) for n in base_names]
        self.owned = [[str(c) for c in o] for o in owned]
        self.base_f = list(base.f) if isinstance(base.f, list) else [int(base.f)]
        self.trunk_inputs = sorted({i for b in branches for i in b.inputs})
        self.f: list[int] = [*self.base_f, *self.trunk_inputs]
        self.i: int = int(getattr(base, "i", 0))
        setattr(self, "type", f"{__name__}.BranchedDetect")  # noqa: B010  (Ultralytics' layer label; shadows Module.type)
        self.np = sum(p.numel() for p in self.parameters())
        claimed: set[str] = set()
        matrices = []
        for k in reversed(range(len(branches))):  # newest first: it answers for what it owns
            mine = [c for c in self.owned[k] if c not in claimed]
            claimed.update(mine)
            matrices.append(selection(self.names, branches[k].names, mine))
        matrices.append(selection(self.names, self.base_names, [n for n in self.base_names if n not in claimed]))
        matrices.reverse()  # base first, then the branches in order
        for k, matrix in enumerate(matrices):
            self.register_buffer(f"select{k}", matrix)
        self.nc = len(self.names)
        self.end2end = False

    @property
    def stride(self) -> torch.Tensor:
        stride: torch.Tensor = self.base.stride
        return stride

    def heads(self) -> list[Any]:
        """The ``Detect`` heads, base first."""
        branches: Any = self.branches
        return [self.base, *(b.layers[-1] for b in branches)]

    def _apply(self, fn: Any, recurse: bool = True) -> BranchedDetect:
        # Ultralytics moves its Detect head's stride/anchors (plain tensors, not buffers) in BaseModel._apply,
        # but only for the model's last layer: do it here for the heads inside.
        super()._apply(fn, recurse)
        for head in self.heads():
            for name in ("stride", "anchors", "strides"):
                value = getattr(head, name, None)
                if isinstance(value, torch.Tensor):
                    setattr(head, name, fn(value))
        return self

    def _place(self, y: torch.Tensor, k: int) -> torch.Tensor:
        matrix: torch.Tensor = getattr(self, f"select{k}")
        scores = torch.einsum("gc,bca->bga", matrix.to(y.dtype), y[:, 4:])
        return torch.cat((y[:, :4], scores), 1)

    def forward(self, x: list[torch.Tensor]) -> Any:
        if self.training:
            raise RuntimeError(
                "a branched model is not trained as a whole: fine-tune the production model with "
                "`train --from` and a config with branch_classes, which grafts the result on (training/branch.py)"
            )
        n = len(self.base_f)
        base_out = self.base(x[:n])
        trunk = dict(zip(self.trunk_inputs, x[n:], strict=True))
        parts = [self._place(_decoded(base_out), 0)]
        branches: Any = self.branches
        for k, branch in enumerate(branches, start=1):
            parts.append(self._place(_decoded(branch(trunk)), k))
        y = torch.cat(parts, 2)
        return (y, base_out[1]) if isinstance(base_out, tuple) else y


def is_branched(model: Any) -> bool:
    """Whether an Ultralytics model's last layer is a :class:`BranchedDetect`."""
    layers = getattr(model, "model", None)
    return isinstance(layers, nn.Sequential) and len(layers) > 0 and isinstance(layers[-1], BranchedDetect)


__all__ = ["Branch", "BranchedDetect", "is_branched", "selection"]
