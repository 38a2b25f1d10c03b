"""Adding a class while the old ones are held to the start model's outputs (training/distill.py,
``keep_old_outputs`` in a training config)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from hazardlens.contracts.training import config_problems
from hazardlens.errors import Invalid

REG_MAX = 16


def _outputs(seed: int, batch: int = 2, classes: int = 3, anchors: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(batch, classes, anchors, generator=g) * 3 - 2
    boxes = torch.randn(batch, 4 * REG_MAX, anchors, generator=g)
    return scores, boxes


def test_terms_are_zero_while_the_student_agrees() -> None:
    from hazardlens.training.distill import distill_terms

    scores, boxes = _outputs(0)
    score_term, box_term = distill_terms(scores, boxes, scores.clone(), boxes.clone(), [0, 1], REG_MAX)
    assert abs(float(score_term)) < 1e-6 and abs(float(box_term)) < 1e-6


def test_score_term_holds_only_the_named_classes_and_pulls_back_to_the_teacher() -> None:
    """Moving a held class's scores costs, and the gradient points back at the teacher; moving a class
    that is not held (the new one) costs nothing."""
    from hazardlens.training.distill import distill_terms

    t_scores, t_boxes = _outputs(1)
    moved_new = t_scores.clone()
    moved_new[:, 2] += 2.0
    score_term, _ = distill_terms(moved_new, t_boxes, t_scores, t_boxes, [0, 1], REG_MAX)
    assert abs(float(score_term)) < 1e-6

    student = t_scores.clone()
    student[:, 0] += 1.5
    student.requires_grad_(True)
    score_term, _ = distill_terms(student, t_boxes, t_scores, t_boxes, [0, 1], REG_MAX)
    assert float(score_term.detach()) > 0.01
    score_term.backward()
    assert student.grad is not None
    assert bool((student.grad[:, 0] > 0).all())  # a step down the gradient lowers the raised scores
    assert float(student.grad[:, 2].abs().max()) == 0.0


def test_box_term_counts_only_where_the_teacher_is_confident() -> None:
    """Box distributions are held where the teacher sees an old class (probability >= 0.1), weighted
    by that confidence; elsewhere they are free."""
    from hazardlens.training.distill import BOX_MIN_CONFIDENCE, distill_terms

    t_scores, t_boxes = _outputs(2, anchors=10)
    t_scores[:] = -8.0  # nothing anywhere ...
    t_scores[0, 1, 3] = 2.0  # ... but a confident old-class detection at anchor 3 of image 0
    t_scores[1, 2, 5] = 4.0  # a confident detection of the class not held
    moved_background = t_boxes.clone()
    moved_background[:, :, 7] += torch.randn(2, 4 * REG_MAX)
    moved_background[1, :, 5] += 3.0
    _, box_term = distill_terms(t_scores, moved_background, t_scores, t_boxes, [0, 1], REG_MAX)
    assert abs(float(box_term)) < 1e-6

    moved = t_boxes.clone()
    moved[0, :REG_MAX, 3] = torch.linspace(-4, 4, REG_MAX)
    _, box_term = distill_terms(t_scores, moved, t_scores, t_boxes, [0, 1], REG_MAX)
    assert float(box_term) > 0.01
    assert torch.sigmoid(torch.tensor(2.0)) > BOX_MIN_CONFIDENCE


def test_config_checks_keep_old_outputs() -> None:
    assert config_problems({"model": "yolo11n.yaml", "keep_old_outputs": 1}) == []
    assert config_problems({"model": "yolo11n.yaml", "keep_old_outputs": 0.5}) == []
    for bad in (-1, "lots", True, 1000, [1]):
        problems = config_problems({"model": "yolo11n.yaml", "keep_old_outputs": bad})
        assert problems and "keep_old_outputs" in problems[0], bad


def test_keep_old_outputs_needs_from(tmp_path: Path) -> None:
    """Without `--from` there is no start model to hold the classes to: refused before a run exists."""
    from hazardlens.context import Context
    from hazardlens.settings import Settings
    from hazardlens.training.runs import runs_root
    from hazardlens.training.train import train
    from tests.fixtures.training import make_tiny_dataset, write_config

    ctx = Context(Settings(home=tmp_path / "home"))
    ctx.init()
    tiny = make_tiny_dataset(ctx)
    with pytest.raises(Invalid) as err:
        train(ctx, tiny.ref, write_config(tmp_path / "c.yaml", keep_old_outputs=1.0), principal=tiny.principal)
    assert err.value.code == "invalid_config" and "--from" in err.value.message
    assert not runs_root(ctx).exists() or not any(runs_root(ctx).iterdir())
    ctx.close()


#: an optimizer step per batch, no warm-up, a large step: so that two short runs surely move weights
MOVE = {"plots": False, "nbs": 2, "warmup_epochs": 0, "lr0": 0.05, "optimizer": "SGD"}


def _runs_from_one_start(tmp_path: Path, variants: dict[str, dict[str, object]]) -> tuple[Any, Any, dict[str, Any]]:
    """A tiny library, a model trained on its ``fire`` boxes alone, and one `train --from` run per
    variant (tiny.yaml with those changes) adding ``accumulated_dust`` to it: (context, dataset, runs)."""
    from hazardlens.context import Context
    from hazardlens.settings import Settings
    from hazardlens.training.train import train
    from tests.fixtures.training import fire_only_model, make_tiny_dataset, no_network, write_config

    ctx = Context(Settings(home=tmp_path / "home"))
    ctx.init()
    tiny = make_tiny_dataset(ctx)
    ref = fire_only_model(ctx, tiny, tmp_path)
    runs = {}
    with no_network():
        for name, changes in variants.items():
            runs[name] = train(
                ctx,
                tiny.ref,
                write_config(tmp_path / f"{name}.yaml", **changes),
                principal=tiny.principal,
                start_from=ref,
                run_id=name,
            )
    return ctx, tiny, runs


@pytest.mark.slow
def test_old_class_drifts_less_when_held(tmp_path: Path) -> None:
    """The same `train --from` fine-tune adding a class, twice from the same start: with
    keep_old_outputs the old class's scores on the training photos stay closer to the start model's
    than without (half the drift or less). Whether the added class still learns is a question for real
    photos: benchmarks/learning_curve.py measures it (README)."""
    import numpy as np
    from PIL import Image
    from ultralytics.nn.tasks import load_checkpoint

    from hazardlens.datasets.materialize import export_version
    from hazardlens.orm import DatasetVersion

    ctx, tiny, runs = _runs_from_one_start(
        tmp_path,
        {
            "free": {"epochs": 3, "ultralytics": MOVE},
            "held": {"epochs": 3, "ultralytics": MOVE, "keep_old_outputs": 20.0},
        },
    )
    with ctx.db.session() as s:
        dv = s.get(DatasetVersion, tiny.version_id)
        assert dv is not None
        export_version(ctx, dv, "yolo", tmp_path / "export")
    ctx.close()
    assert "keep_old_outputs: 20.0" in (runs["held"].run_dir / "config.yaml").read_text()

    images = sorted((tmp_path / "export" / "images" / "train").iterdir())
    batch = torch.stack([torch.from_numpy(np.asarray(Image.open(p).convert("RGB").resize((64, 64)))) for p in images])
    batch = batch.permute(0, 3, 1, 2).float() / 255

    def scores(weights: Path) -> torch.Tensor:
        model = load_checkpoint(str(weights))[0].float().eval()
        with torch.no_grad():
            # (images, classes, anchors) logits of fire and accumulated_dust: a model this small scores
            # everything near 0, where probabilities hide the differences
            return torch.logit(model(batch)[0][:, 4:].double(), eps=1e-12)

    start = scores(runs["free"].run_dir / "start.pt")
    drift = {name: (scores(r.best) - start).abs() for name, r in runs.items()}
    assert float(drift["free"][:, 0].mean()) > 0  # the plain fine-tune moved fire
    assert float(drift["held"][:, 0].mean()) < 0.5 * float(drift["free"][:, 0].mean())


@pytest.mark.slow
def test_hold_batchnorm_keeps_every_running_statistic(tmp_path: Path) -> None:
    """With hold_batchnorm every BatchNorm layer's running mean and variance in the registered model
    are the start model's (the layers before `freeze` keep theirs in Ultralytics anyway; this is about
    the ones that train), while weights did move; without it the trained layers' statistics move."""
    from ultralytics.nn.tasks import load_checkpoint

    ctx, _, runs = _runs_from_one_start(
        tmp_path,
        {
            "moving": {"hold_batchnorm": False, "ultralytics": MOVE},
            "held": {"hold_batchnorm": True, "ultralytics": MOVE},
        },
    )
    ctx.close()

    def stats(weights: Path) -> dict[str, torch.Tensor]:
        model = load_checkpoint(str(weights))[0].half().float()  # the saved models are half precision
        return {k: v for k, v in model.state_dict().items() if k.endswith(("running_mean", "running_var"))}

    start = stats(runs["held"].run_dir / "start.pt")
    held, moving = stats(runs["held"].best), stats(runs["moving"].best)
    assert len(start) > 50
    assert all(torch.equal(held[k], v) for k, v in start.items())
    assert sum(not torch.equal(moving[k], v) for k, v in start.items()) > len(start) // 2
    weights = {k: v for k, v in load_checkpoint(str(runs["held"].best))[0].float().state_dict().items()}
    first = {k: v for k, v in load_checkpoint(str(runs["held"].run_dir / "start.pt"))[0].float().state_dict().items()}
    assert any(not torch.equal(weights[k], first[k].half().float()) for k in first if k.endswith(".conv.weight"))
