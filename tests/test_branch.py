"""Adding a class as a branch of its own (training/branch.py, models/branched.py): the start model keeps
answering for its classes exactly, the fine-tune's layers after the trunk answer for the added ones."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from hazardlens.contracts.training import config_problems
from hazardlens.errors import Invalid
from tests.fixtures.engines import TINY_CLASS_KEYS, TINY_IMGSZ, textured_image

TRUNK = 10


def _student(start: Path, out: Path, added: str, seed: int, trunk: int = TRUNK, shift_trunk: bool = False) -> Path:
    """``start`` widened by ``added`` (training/expand.py) with every layer from ``trunk`` on moved, as a
    fine-tune with the trunk frozen leaves it; ``shift_trunk`` moves a trunk layer too."""
    from hazardlens.training.expand import expand_classes, model_classes

    expand_classes(start, [*model_classes(start), added], out)
    ckpt = torch.load(out, weights_only=False)
    model = ckpt["model"].float()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.model[trunk:].parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
        if shift_trunk:
            for p in model.model[3].parameters():
                p.add_(0.1)
    ckpt["model"] = model.half()
    torch.save(ckpt, out)
    return out


def _outputs(weights: Path) -> torch.Tensor:
    """Decoded predictions (batch, 4 + classes, anchors) on four textured photos."""
    from ultralytics.nn.tasks import load_checkpoint

    batch = np.stack([textured_image(TINY_IMGSZ, TINY_IMGSZ, seed) for seed in range(4)])
    x = torch.from_numpy(np.ascontiguousarray(batch[..., ::-1].transpose(0, 3, 1, 2))).float() / 255
    model = load_checkpoint(str(weights))[0].float().eval()
    with torch.no_grad():
        out = model(x)
    return out[0] if isinstance(out, tuple) else out


def test_graft_keeps_old_classes_exact_and_takes_the_new_one_from_the_branch(
    tiny_yolo_pt: Path, tmp_path: Path
) -> None:
    from hazardlens.models.branched import is_branched
    from hazardlens.training.branch import graft
    from hazardlens.training.expand import model_classes

    student = _student(tiny_yolo_pt, tmp_path / "student.pt", "ladle", seed=1)
    grafted = graft(tiny_yolo_pt, student, ["ladle"], TRUNK, tmp_path / "branched.pt")
    assert model_classes(grafted) == [*TINY_CLASS_KEYS, "ladle"]

    base, fine, both = _outputs(tiny_yolo_pt), _outputs(student), _outputs(grafted)
    anchors = base.shape[2]
    assert both.shape == (4, 4 + 3, 2 * anchors)  # the base head's anchors, then the branch's
    assert torch.equal(both[:, :6, :anchors], base)  # old classes: the start model's boxes and scores
    assert float(both[:, 6, :anchors].abs().max()) == 0.0  # the base head says nothing of ladle
    assert torch.equal(both[:, :4, anchors:], fine[:, :4])  # the branch's boxes are the fine-tune's
    assert torch.equal(both[:, 6, anchors:], fine[:, 6])  # ... and so is its ladle score
    assert float(both[:, 4:6, anchors:].abs().max()) == 0.0  # ... and it says nothing of the old classes
    assert not torch.equal(fine[:, 4:6], base[:, 4:6])  # the fine-tune had moved them: the graft undid that

    from ultralytics.nn.tasks import load_checkpoint

    assert is_branched(load_checkpoint(str(grafted))[0])


def test_a_branched_model_runs_in_ultralytics_and_exports_to_onnx(tiny_yolo_pt: Path, tmp_path: Path) -> None:
    """What serving does with a registered model: Ultralytics' predictor on the .pt, the ONNX export
    and the ONNX engine's decoding; the export computes what the PyTorch model does."""
    import onnxruntime as ort
    from ultralytics import YOLO

    from hazardlens.models.engines import OnnxEngine, OpenVinoEngine, export_onnx
    from hazardlens.training.branch import graft

    student = _student(tiny_yolo_pt, tmp_path / "student.pt", "ladle", seed=2)
    grafted = graft(tiny_yolo_pt, student, ["ladle"], TRUNK, tmp_path / "branched.pt")
    image = textured_image(TINY_IMGSZ, TINY_IMGSZ, 0)
    result = YOLO(str(grafted)).predict(image, imgsz=TINY_IMGSZ, conf=0.01, verbose=False)[0]
    assert len(result.boxes) > 0 and set(result.names.values()) == {*TINY_CLASS_KEYS, "ladle"}

    onnx = export_onnx(grafted, tmp_path / "branched.onnx", TINY_IMGSZ)
    session = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
    x = torch.from_numpy(np.ascontiguousarray(image[None, ..., ::-1].transpose(0, 3, 1, 2))).float() / 255
    exported = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    from ultralytics.nn.tasks import load_checkpoint

    with torch.no_grad():
        expected = load_checkpoint(str(grafted))[0].float().eval()(x)[0].numpy()
    assert exported.shape == expected.shape
    # the export folds BatchNorm into the convolutions: pixel coordinates agree to a hundredth, scores closer
    assert np.allclose(exported[:, :4], expected[:, :4], rtol=1e-3, atol=1e-2)
    assert np.allclose(exported[:, 4:], expected[:, 4:], atol=1e-4)

    found = []
    for engine in (
        OnnxEngine(onnx, [*TINY_CLASS_KEYS, "ladle"], TINY_IMGSZ, device="cpu"),
        OpenVinoEngine(onnx, [*TINY_CLASS_KEYS, "ladle"], TINY_IMGSZ),
    ):
        try:
            found.append(engine.predict([image], conf=0.01)[0])
        finally:
            engine.close()
    assert all(len(d) > 0 for d in found)
    assert len(found[0]) == len(found[1])  # both runtimes decode the same boxes from the export


def test_a_second_branch_keeps_the_first(tiny_yolo_pt: Path, tmp_path: Path) -> None:
    """A branched model is the start of the next addition: the fine-tune starts from its base layers
    (expand_classes unbranches it), and the graft adds a branch beside the first, which keeps its class."""
    from hazardlens.training.branch import graft
    from hazardlens.training.expand import expand_classes, model_classes

    first = graft(
        tiny_yolo_pt, _student(tiny_yolo_pt, tmp_path / "s1.pt", "ladle", 3), ["ladle"], TRUNK, tmp_path / "b1.pt"
    )
    start = expand_classes(first, [*TINY_CLASS_KEYS, "ladle", "vent"], tmp_path / "start.pt")
    # the expanded start is the base model plus two fresh classes: the old classes score as in the base
    assert torch.allclose(_outputs(start)[:, :6], _outputs(tiny_yolo_pt), atol=1e-6)
    student = tmp_path / "s2.pt"
    ckpt = torch.load(start, weights_only=False)
    model = ckpt["model"].float()
    with torch.no_grad():
        for p in model.model[TRUNK:].parameters():
            p.add_(0.01)
    ckpt["model"] = model.half()
    torch.save(ckpt, student)
    second = graft(first, student, ["vent"], TRUNK, tmp_path / "b2.pt")
    assert model_classes(second) == [*TINY_CLASS_KEYS, "ladle", "vent"]

    base, one, two, fine = _outputs(tiny_yolo_pt), _outputs(first), _outputs(second), _outputs(student)
    a = base.shape[2]
    assert two.shape[2] == 3 * a
    assert torch.equal(two[:, :6, :a], base)  # base head: old classes
    assert torch.equal(two[:, 6, a : 2 * a], one[:, 6, a:])  # first branch: ladle as before
    assert float(two[:, 7, : 2 * a].abs().max()) == 0.0  # vent only from the new branch
    assert torch.equal(two[:, 7, 2 * a :], fine[:, 7])
    assert float(two[:, 4:7, 2 * a :].abs().max()) == 0.0


def test_graft_refuses_a_fine_tune_that_moved_the_trunk(tiny_yolo_pt: Path, tmp_path: Path) -> None:
    from hazardlens.training.branch import graft

    student = _student(tiny_yolo_pt, tmp_path / "student.pt", "ladle", seed=4, shift_trunk=True)
    with pytest.raises(Invalid) as err:
        graft(tiny_yolo_pt, student, ["ladle"], TRUNK, tmp_path / "branched.pt")
    assert err.value.code == "not_a_branch" and "model.3." in err.value.message
    assert not (tmp_path / "branched.pt").exists()
    fine = _student(tiny_yolo_pt, tmp_path / "s.pt", "ladle", 5)
    with pytest.raises(Invalid):
        graft(tiny_yolo_pt, fine, ["vent"], TRUNK, tmp_path / "x.pt")  # a class the fine-tune does not have
    with pytest.raises(Invalid) as err:
        graft(tiny_yolo_pt, fine, ["ladle"], 30, tmp_path / "x.pt")  # nothing left after the trunk
    assert err.value.code == "not_a_branch" and "no neck" in err.value.message
    assert not (tmp_path / "x.pt").exists()


def test_a_branched_model_refuses_to_train(tiny_yolo_pt: Path, tmp_path: Path) -> None:
    from ultralytics.nn.tasks import load_checkpoint

    from hazardlens.training.branch import graft

    grafted = graft(
        tiny_yolo_pt, _student(tiny_yolo_pt, tmp_path / "s.pt", "ladle", 6), ["ladle"], TRUNK, tmp_path / "b.pt"
    )
    model = load_checkpoint(str(grafted))[0].float().train()
    with pytest.raises(RuntimeError, match="branch_classes"):
        model(torch.zeros(1, 3, TINY_IMGSZ, TINY_IMGSZ))


def test_config_checks_branch_classes() -> None:
    assert config_problems({"model": "yolo11n.yaml", "branch_classes": "added"}) == []
    assert config_problems({"model": "yolo11n.yaml", "branch_classes": ["ladle"]}) == []
    for bad in ("some", [], ["a", "a"], [1], True):
        problems = config_problems({"model": "yolo11n.yaml", "branch_classes": bad})
        assert problems and "branch_classes" in problems[0], bad


def _library(tmp_path: Path) -> tuple[Any, Any]:
    from hazardlens.context import Context
    from hazardlens.settings import Settings
    from tests.fixtures.training import make_tiny_dataset

    ctx = Context(Settings(home=tmp_path / "home"))
    ctx.init()
    return ctx, make_tiny_dataset(ctx)


@pytest.mark.parametrize(
    ("changes", "start", "says"),
    [
        ({"branch_classes": "added", "ultralytics": {"freeze": 10}}, False, "--from"),
        ({"branch_classes": "added"}, True, "freeze"),
        ({"branch_classes": ["ladle"], "ultralytics": {"freeze": 10}}, True, "ladle"),
    ],
)
def test_branch_runs_are_refused_before_a_run_exists(
    tmp_path: Path, changes: dict[str, object], start: bool, says: str
) -> None:
    """No start model, no frozen trunk, or a class the dataset lacks: refused before training."""
    from hazardlens.training.runs import runs_root
    from hazardlens.training.train import train
    from tests.fixtures.training import write_config

    ctx, tiny = _library(tmp_path)
    weights = tmp_path / "start.pt"
    if start:
        weights.write_bytes(b"not reached")
    with pytest.raises(Invalid) as err:
        train(
            ctx,
            tiny.ref,
            write_config(tmp_path / "c.yaml", **changes),
            principal=tiny.principal,
            start_from=str(weights) if start else None,
        )
    assert says in err.value.message
    assert not runs_root(ctx).exists() or not any(runs_root(ctx).iterdir())
    ctx.close()


def test_branch_of_added_classes_is_refused_before_training_when_nothing_is_added(tmp_path: Path) -> None:
    """`branch_classes: added` from a model that already has every class of the dataset: the branch would
    answer for nothing; refused right after the start weights are resolved, before any epoch."""
    from ultralytics.nn.tasks import DetectionModel

    from hazardlens.models.ultralytics_env import prepare_ultralytics
    from hazardlens.training.runs import runs_root
    from hazardlens.training.train import train
    from tests.fixtures.training import write_config

    prepare_ultralytics()
    ctx, tiny = _library(tmp_path)
    model = DetectionModel("yolo11n.yaml", nc=2, verbose=False)
    model.names = {0: "accumulated_dust", 1: "fire"}
    torch.save({"model": model.half(), "train_args": {"imgsz": 64}}, tmp_path / "both.pt")
    config = write_config(tmp_path / "c.yaml", branch_classes="added", ultralytics={"freeze": TRUNK})
    with pytest.raises(Invalid) as err:
        train(ctx, tiny.ref, config, principal=tiny.principal, start_from=str(tmp_path / "both.pt"), run_id="none")
    assert err.value.code == "invalid_config" and "answer for nothing" in err.value.message
    assert (runs_root(ctx) / "none").is_dir()  # the run folder was made (the start weights live there) ...
    assert not (runs_root(ctx) / "none" / "weights").exists()  # ... but no epoch ran
    ctx.close()


@pytest.mark.slow
def test_train_from_with_branch_classes_registers_a_graft(tmp_path: Path) -> None:
    """`train --from` a registered model with branch_classes: added: the registered candidate is the
    start model with a branch, its old class scores exactly as the start model's, the added class comes
    from the fine-tune (which had moved the old class), and the card records the branch."""
    from hazardlens.training.train import train
    from tests.fixtures.training import fire_only_model, no_network, write_config

    ctx, tiny = _library(tmp_path)
    ref = fire_only_model(ctx, tiny, tmp_path)
    config = write_config(
        tmp_path / "branch.yaml",
        epochs=2,
        branch_classes="added",
        ultralytics={"plots": False, "freeze": TRUNK, "nbs": 2, "lr0": 0.05, "warmup_epochs": 0, "optimizer": "SGD"},
    )
    with no_network():
        result = train(ctx, tiny.ref, config, principal=tiny.principal, start_from=ref, run_id="branch")
    assert result.best is not None and result.best.name == "branched.pt" and result.model is not None
    start, student = result.run_dir / "start.pt", result.run_dir / "weights" / "best.pt"
    base, fine, both = _outputs(start), _outputs(student), _outputs(result.best)
    classes = result.model["classes"]
    fire, dust = classes.index("fire"), classes.index("accumulated_dust")
    a = base.shape[2]
    # the base head is the registered model's own (one class); start.pt is it widened: same scores
    assert torch.allclose(both[:, 4 + fire, :a], base[:, 4 + fire], atol=1e-6)
    assert torch.equal(both[:, 4 + dust, a:], fine[:, 4 + dust])
    assert not torch.equal(fine[:, 4 + fire], base[:, 4 + fire])
    card = result.model["card"]
    assert card["training"]["branch"]["classes"] == ["accumulated_dust"]
    assert "map50" in card["metrics"]["val"] and "map50" in card["training"]["branch"]["student_val"]
    ctx.close()
