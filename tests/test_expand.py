"""Adding a class to a trained detector keeps what it knows (training/expand.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hazardlens.errors import Invalid
from hazardlens.models.ultralytics_env import prepare_ultralytics


def _trained_like(tmp_path: Path) -> Path:
    """A small YOLO11n checkpoint for two classes, its head perturbed as training would leave it."""
    prepare_ultralytics()
    import torch
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(0)
    model = DetectionModel("yolo11n.yaml", nc=2, verbose=False)
    model.names = {0: "fire", 1: "smoke"}
    with torch.no_grad():
        for seq in model.model[-1].cv3:
            seq[-1].weight.normal_(std=0.2)
            seq[-1].bias.normal_(std=1.0)
    path = tmp_path / "two.pt"
    torch.save({"model": model.half(), "train_args": {"imgsz": 64}}, path)
    return path


def _scores(weights: Path, image):  # type: ignore[no-untyped-def]
    from ultralytics.nn.tasks import load_checkpoint

    model, _ = load_checkpoint(str(weights))
    model.eval()
    out = model(image)
    return (out[0] if isinstance(out, tuple | list) else out), model


def test_old_classes_score_exactly_as_before_and_the_new_one_starts_from_the_prior(tmp_path: Path) -> None:
    import torch

    from hazardlens.training.expand import expand_classes

    old = _trained_like(tmp_path)
    new = expand_classes(old, ["smoke", "ladle", "fire"], tmp_path / "three.pt")
    image = torch.rand(1, 3, 64, 64)
    before, _ = _scores(old, image)
    after, model = _scores(new, image)
    assert model.names == {0: "smoke", 1: "ladle", 2: "fire"}
    assert before.shape[1] == 4 + 2 and after.shape[1] == 4 + 3
    torch.testing.assert_close(after[:, :4], before[:, :4])  # boxes untouched
    torch.testing.assert_close(after[:, 4 + 2], before[:, 4 + 0], atol=1e-3, rtol=1e-3)  # fire moved to index 2
    torch.testing.assert_close(after[:, 4 + 0], before[:, 4 + 1], atol=1e-3, rtol=1e-3)  # smoke to index 0
    assert float(after[:, 4 + 1].detach().max()) < 0.05  # the new class starts near "about one in a hundred"


def test_dropping_a_known_class_is_refused(tmp_path: Path) -> None:
    from hazardlens.training.expand import expand_classes

    old = _trained_like(tmp_path)
    with pytest.raises(Invalid) as err:
        expand_classes(old, ["fire", "ladle"], tmp_path / "x.pt")
    assert err.value.code == "classes_dropped"
    with pytest.raises(Invalid):
        expand_classes(old, ["fire", "smoke", "fire"], tmp_path / "y.pt")


@pytest.mark.slow
def test_train_from_a_registered_model_adds_a_class(tmp_path: Path) -> None:
    """`hazardlens train --from MODEL` on a dataset with one more class: the run starts from the
    expanded model, records it, and registers a candidate that knows both classes."""
    import json

    from hazardlens.context import Context
    from hazardlens.settings import Settings
    from hazardlens.training.train import train
    from tests.fixtures.training import fire_only_model, make_tiny_dataset, no_network, write_config

    ctx = Context(Settings(home=tmp_path / "home"))
    ctx.init()
    tiny = make_tiny_dataset(ctx)
    ref = fire_only_model(ctx, tiny, tmp_path)
    config = write_config(tmp_path / "one.yaml", epochs=1)
    with no_network():
        second = train(ctx, tiny.ref, config, principal=tiny.principal, start_from=ref)
    ctx.close()
    run = json.loads((second.run_dir / "run.json").read_text())
    assert run["started_from"]["ref"] == ref
    assert run["started_from"]["added_classes"] == ["accumulated_dust"]
    assert second.model is not None and second.model["classes"] == ["fire", "accumulated_dust"]
