"""Add a class without forgetting the old ones: hold the old classes' outputs to the start model's.

Fine-tuning the production model on a few dozen images of a new class moves the layers every class
shares, and the old classes drift: up to 0.07 AP50 with 200 new images (README, "How many images
does a new class need?"), against a goal of 0.02. Freezing those layers keeps the old classes but
the new one then does not learn (keep_classes.py: AP50 about 0.02 for heads). This module is the
middle way continual-learning detectors use ("learning without forgetting"): everything trains, but
beside the detection loss the student pays for moving away from what the start model (the teacher,
frozen) says about the classes it already knew, on every training image:

- **scores**: at every anchor, the Bernoulli KL divergence between the teacher's probability for
  each old class and the student's (the soft-target cross entropy minus the teacher's own entropy, so
  the term is exactly 0 while the student still agrees), summed and divided by the teacher's total
  probability mass (how many detections the teacher expects: the same role ``target_scores_sum``
  plays in Ultralytics' classification loss, so weight 1 is on the detection loss's scale);
- **boxes**: where the teacher is confident of an old class, the KL divergence of the student's box
  side distributions (DFL bins) from the teacher's, weighted by that confidence; the box regression is
  shared by every class, so this keeps the old classes' boxes where they were.

On a new-class image the old classes are usually declared unlabelled (partial_labels.py masks their
detection loss), so there the teacher's scores are their only signal: the start model, in effect,
labels the old classes on the curator's new photos. The added classes are not held (the teacher has
no opinion on them). The weight is ``keep_old_outputs`` in the training config.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: anchors whose teacher confidence (best old class) is below this carry no box term: background
#: anchors' box outputs are never used, and skipping them keeps the term cheap
BOX_MIN_CONFIDENCE = 0.1


def distill_terms(
    student_scores: Any,
    student_boxes: Any,
    teacher_scores: Any,
    teacher_boxes: Any,
    class_ids: Sequence[int],
    reg_max: int,
) -> tuple[Any, Any]:
    """(score term, box term) for raw Detect outputs: scores (batch, classes, anchors) logits, boxes
    (batch, 4 * reg_max, anchors) DFL logits; ``class_ids`` index the held classes in both. Pure
    tensor maths: both are 0 when the student's outputs equal the teacher's."""
    import torch
    import torch.nn.functional as F

    ids = torch.as_tensor(list(class_ids), dtype=torch.long, device=student_scores.device)
    s = student_scores.index_select(1, ids).float()
    t = teacher_scores.index_select(1, ids).float()
    p = t.sigmoid()
    kl = F.binary_cross_entropy_with_logits(s, p, reduction="none") - F.binary_cross_entropy_with_logits(
        t, p, reduction="none"
    )
    score_term = kl.sum() / p.sum().clamp(min=1.0)

    confidence = p.max(dim=1).values  # (batch, anchors)
    weight = torch.where(confidence >= BOX_MIN_CONFIDENCE, confidence, torch.zeros_like(confidence))
    if reg_max <= 1 or not bool((weight > 0).any()):
        return score_term, student_boxes.sum() * 0.0  # keeps the graph (and the device) uniform
    b, _, a = student_boxes.shape
    log_s = F.log_softmax(student_boxes.float().view(b, 4, reg_max, a), dim=2)
    log_t = F.log_softmax(teacher_boxes.float().view(b, 4, reg_max, a), dim=2)
    box_kl = (log_t.exp() * (log_t - log_s)).sum(dim=2).sum(dim=1)  # (batch, anchors)
    box_term = (box_kl * weight).sum() / weight.sum().clamp(min=1e-6)
    return score_term, box_term


def teacher_outputs(teacher: Any, images: Any) -> dict[str, Any]:
    """The teacher's raw Detect outputs (scores and box logits) for a batch, in inference mode."""
    import torch

    with torch.no_grad():
        out = teacher(images)
    return out[1] if isinstance(out, tuple) else out


def load_teacher(weights: Path | str, device: Any) -> Any:
    """The start model, frozen, in inference mode (BatchNorm uses its learnt statistics)."""
    from ultralytics.nn.tasks import load_checkpoint

    model = load_checkpoint(str(weights))[0].float().to(device).eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return model


class KeepOldOutputs:
    """A detection criterion plus the two distillation terms (module docstring), scaled like the
    classification and DFL losses they join, so Ultralytics' loss items still read box/cls/dfl."""

    def __init__(self, criterion: Any, teacher: Any, class_ids: Sequence[int], weight: float) -> None:
        self.criterion = criterion
        self.teacher = teacher
        self.class_ids = [int(i) for i in class_ids]
        self.weight = float(weight)

    def __getattr__(self, name: str) -> Any:  # the wrapped criterion's attributes (hyp, nc, ...)
        if name == "criterion":
            raise AttributeError(name)
        return getattr(self.criterion, name)

    def __call__(self, preds: Any, batch: dict[str, Any]) -> tuple[Any, Any]:
        import torch

        loss, items = self.criterion(preds, batch)
        if not torch.is_grad_enabled() or self.weight <= 0:
            return loss, items  # validation losses stay the plain detection loss
        student = self.criterion.parse_output(preds)  # the training dict, as the detection loss reads it
        teacher = teacher_outputs(self.teacher, batch["img"])
        score_term, box_term = distill_terms(
            student["scores"],
            student["boxes"],
            teacher["scores"],
            teacher["boxes"],
            self.class_ids,
            int(self.criterion.reg_max),
        )
        hyp = self.criterion.hyp
        extra = torch.zeros_like(loss)
        extra[1] = score_term * self.weight * float(hyp.cls)
        extra[2] = box_term * self.weight * float(hyp.dfl)
        batch_size = student["scores"].shape[0]
        loss = loss + extra * batch_size
        if isinstance(items, dict):  # box, cls, dfl: the logged cls and dfl include their terms
            items = {k: v + extra[i].detach() if i in (1, 2) else v for i, (k, v) in enumerate(items.items())}
        return loss, items


def install(trainer: Any) -> None:
    """on_train_start callback: wrap the criterion of the model being trained (set after the EMA copy
    exists, like partial_labels.use_masked_loss, which runs first when the dataset has partial labels)."""
    from ultralytics.utils import LOGGER
    from ultralytics.utils.torch_utils import unwrap_model

    weights, class_ids, weight = trainer.hl_keep_old
    model: Any = unwrap_model(trainer.model)
    criterion = getattr(model, "criterion", None) or model.init_criterion()
    if isinstance(criterion, KeepOldOutputs):
        return
    teacher = load_teacher(weights, next(model.parameters()).device)
    model.criterion = KeepOldOutputs(criterion, teacher, class_ids, weight)
    LOGGER.info("keep_old_outputs: %d classes held to %s (weight %s)", len(class_ids), Path(weights).name, weight)


__all__ = ["BOX_MIN_CONFIDENCE", "KeepOldOutputs", "distill_terms", "install", "load_teacher", "teacher_outputs"]
