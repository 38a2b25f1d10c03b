"""Add a class while the old ones stay exactly as they were: train only the new classes' rows.

Fine-tuning a widened model (training/expand.py) on a few dozen images of a new class moves every
weight, so the classes the production model already had drift: up to 0.07 AP50 on the chemical-plant
classes with 200 new images (README, "How many images does a new class need?"), against a goal of at
most 0.02. With ``train_only_classes`` in the training config, a run instead trains the new classes'
rows of the final classification convolutions and nothing else:

- every layer before the Detect head is frozen the Ultralytics way (``freeze``: no gradients, so the
  backward pass stops at the head, and BatchNorm statistics stay put);
- inside the head, every parameter but the final classification convolutions is frozen too, and of
  those only the rows (output channels) of the trained classes receive gradients;
- the optimizer's weight decay still shrinks the old rows on each step, so they are written back
  right after it (an optimizer step hook), and the EMA copy Ultralytics saves is written back to the
  start weights after each batch, everything except the trained rows.

The old classes therefore score bit for bit as the start model scored them (tested), the box
regression is the start model's (it is shared by every class, so a new class reuses it), and the
new class learns a linear read-out of the features the model already has: a probe, cheap to train,
whose ceiling is lower than a full fine-tune's. ``benchmarks/learning_curve.py --config
configs/train/add_class_exact.yaml`` measured how much lower on heads without helmets (README): AP50
about 0.02 with 25-200 images against the fine-tune's 0.75-0.78, so it suits only a class the model's
features already separate; the exactness is what it guarantees.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hazardlens.training.expand import cls_heads


def freeze_before_head(trainer: Any) -> None:
    """Freeze every layer before the Detect head (Ultralytics' own ``freeze``); call once the
    trainer's model exists and before Ultralytics applies ``freeze`` (``set_model_attributes``)."""
    from ultralytics.utils.torch_utils import unwrap_model

    model: Any = unwrap_model(trainer.model)
    layers = len(model.model)
    trainer.args.freeze = list(range(layers - 1))


class KeepOldClasses:
    """Installed on a trainer right after its set-up (optimizer and EMA exist, training has not
    started): see the module."""

    def __init__(self, trainer: Any, class_ids: Sequence[int]) -> None:
        import torch
        from ultralytics.utils.torch_utils import unwrap_model

        model: Any = unwrap_model(trainer.model)
        detect = model.model[-1]
        nc = int(detect.nc)
        self.ids = sorted({int(i) for i in class_ids})
        if not self.ids or self.ids[0] < 0 or self.ids[-1] >= nc:
            raise ValueError(f"classes to train {self.ids} are not among the model's {nc}")
        self.old = torch.tensor([i for i in range(nc) if i not in self.ids], dtype=torch.long)
        # The Detect layer's BatchNorm statistics stay as they are (Ultralytics sets BN of frozen layers
        # to eval at each epoch's start, by these names).
        head_prefix = f"model.{len(model.model) - 1}."
        trainer.freeze_layer_names = [*getattr(trainer, "freeze_layer_names", []), head_prefix]
        rows = {id(seq[-1].weight) for heads in cls_heads(detect) for seq in heads}
        rows |= {id(seq[-1].bias) for heads in cls_heads(detect) for seq in heads}
        self.start = {k: v.detach().clone() for k, v in model.state_dict().items() if v.dtype.is_floating_point}
        self.trained: dict[str, Any] = {}  # state-dict key -> the trained parameter
        for name, param in model.named_parameters():
            if id(param) in rows:
                param.requires_grad_(True)
                param.register_hook(self._mask)
                self.trained[name] = param
            elif name.startswith(head_prefix):
                param.requires_grad_(False)
        trainer.optimizer.register_step_post_hook(lambda *_: self.restore_rows())
        self.trainer = trainer
        trainer.add_callback("on_train_batch_end", lambda t: self.restore_ema())

    def _mask(self, grad: Any) -> Any:
        grad = grad.clone()
        grad[self.old] = 0
        return grad

    def restore_rows(self) -> None:
        """The old classes' rows back to their start values (weight decay moved them)."""
        import torch

        with torch.no_grad():
            for key, param in self.trained.items():
                param[self.old] = self.start[key][self.old]

    def restore_ema(self) -> None:
        """The EMA copy (what Ultralytics saves) back to the start weights except the trained rows."""
        import torch

        ema = getattr(self.trainer, "ema", None)
        if ema is None:
            return
        with torch.no_grad():
            for key, value in ema.ema.state_dict().items():
                start = self.start.get(key)
                if start is None:
                    continue
                if key in self.trained:
                    value[self.old] = start[self.old].to(value.dtype)
                else:
                    value.copy_(start)


def class_ids(names: Sequence[str], wanted: Sequence[str]) -> list[int]:
    """Indices of ``wanted`` in the dataset's class list; a class it lacks is an error."""
    from hazardlens.errors import Invalid

    missing = [c for c in wanted if c not in names]
    if missing:
        raise Invalid(
            f"train_only_classes names {', '.join(missing)}, not among the dataset's classes ({', '.join(names)})",
            code="invalid_config",
        )
    return [list(names).index(c) for c in wanted]
