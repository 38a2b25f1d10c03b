"""Adding a class while the old ones stay exactly as they were (training/keep_classes.py,
``train_only_classes`` in a training config)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hazardlens.contracts.training import config_problems
from hazardlens.errors import Invalid


def test_config_checks_train_only_classes() -> None:
    """A list of distinct class keys or 'added'; anything else is refused with the key named."""
    assert config_problems({"model": "yolo11n.yaml", "train_only_classes": ["explosion_vent"]}) == []
    assert config_problems({"model": "yolo11n.yaml", "train_only_classes": "added"}) == []
    for bad in ([], ["a", "a"], "head", [3], {"head": 1}):
        problems = config_problems({"model": "yolo11n.yaml", "train_only_classes": bad})
        assert problems and "train_only_classes" in problems[0], bad


def test_class_ids_refuse_a_class_the_dataset_lacks() -> None:
    from hazardlens.training.keep_classes import class_ids

    assert class_ids(["fire", "smoke", "ladle"], ["ladle"]) == [2]
    with pytest.raises(Invalid) as err:
        class_ids(["fire", "smoke"], ["ladle"])
    assert err.value.code == "invalid_config" and "ladle" in err.value.message


#: tiny.yaml's batch of 2 against Ultralytics' nominal batch of 64 would accumulate gradients past the
#: run's few batches; an optimizer step per batch, no warm-up, so that the run surely changes weights.
STEP_EVERY_BATCH = {"plots": False, "nbs": 2, "warmup_epochs": 0}


@pytest.mark.slow
def test_train_only_the_added_class_leaves_every_other_weight_as_it_was(tmp_path: Path) -> None:
    """`train --from MODEL` with `train_only_classes: added` on a dataset with one more class: in the
    registered model every tensor but the added class's rows of the final classification layers is
    bit for bit the start model's (the old class's rows included, though weight decay and the EMA
    touch them on every step), the added rows did learn, and the old class scores exactly as before
    on an image."""
    import json

    import torch
    from ultralytics.nn.tasks import load_checkpoint

    from hazardlens.context import Context
    from hazardlens.settings import Settings
    from hazardlens.training.train import train
    from tests.fixtures.training import fire_only_model, make_tiny_dataset, no_network, write_config

    ctx = Context(Settings(home=tmp_path / "home"))
    ctx.init()
    tiny = make_tiny_dataset(ctx)
    ref = fire_only_model(ctx, tiny, tmp_path)
    with no_network():
        kept = train(
            ctx,
            tiny.ref,
            write_config(tmp_path / "keep.yaml", train_only_classes="added", ultralytics=STEP_EVERY_BATCH),
            principal=tiny.principal,
            start_from=ref,
        )
    ctx.close()
    run = json.loads((kept.run_dir / "run.json").read_text())
    assert run["started_from"]["added_classes"] == ["accumulated_dust"]
    assert kept.model is not None and kept.model["classes"] == ["fire", "accumulated_dust"]

    start = load_checkpoint(str(kept.run_dir / "start.pt"))[0].float().state_dict()
    after = load_checkpoint(str(kept.best))[0].float().state_dict()
    rows = {k for k in start if k.startswith("model.23.cv3.") and k.endswith((".2.weight", ".2.bias"))}
    assert len(rows) == 6  # three levels, weight and bias
    changed_rows = 0
    for key, value in start.items():
        if key in rows:
            assert torch.equal(after[key][0], value[0]), key  # fire (index 0) is the start model's
            changed_rows += not torch.equal(after[key][1], value[1])
        else:
            assert torch.equal(after[key], value), key
    assert changed_rows == len(rows)  # the added class learnt in every level

    image = torch.rand(1, 3, 64, 64)
    start_model = load_checkpoint(str(kept.run_dir / "start.pt"))[0].float().eval()
    kept_model = load_checkpoint(str(kept.best))[0].float().eval()
    with torch.no_grad():
        before, now = start_model(image)[0], kept_model(image)[0]
    assert torch.equal(now[:, :5], before[:, :5])  # boxes and fire's score
    assert not torch.equal(now[:, 5], before[:, 5])


def test_train_only_classes_refused_before_a_run_starts(tmp_path: Path) -> None:
    """'added' without --from, and a class the dataset lacks: refused with invalid_config before any
    run folder exists (nothing trained, nothing to clean up)."""
    from hazardlens.context import Context
    from hazardlens.settings import Settings
    from hazardlens.training.runs import runs_root
    from hazardlens.training.train import train
    from tests.fixtures.training import make_tiny_dataset, write_config

    ctx = Context(Settings(home=tmp_path / "home"))
    ctx.init()
    tiny = make_tiny_dataset(ctx)
    for value, says in (("added", "no --from"), (["ladle"], "ladle")):
        with pytest.raises(Invalid) as err:
            train(ctx, tiny.ref, write_config(tmp_path / "c.yaml", train_only_classes=value), principal=tiny.principal)
        assert err.value.code == "invalid_config" and says in err.value.message
    assert not runs_root(ctx).exists() or not any(runs_root(ctx).iterdir())
    ctx.close()
