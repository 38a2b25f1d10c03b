"""Partially labelled sources: a class a source does not label is masked in training, not learnt as
"nothing here", and the declaration travels from the class map to the trainer.

The chain: class map ``unlabeled_classes`` -> annotation revision -> dataset-version item ->
``unlabeled_classes.json`` beside the YOLO export -> ignore regions in the training labels ->
:class:`MaskedDetectionLoss`, which gives the declared class no negative gradient inside them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hazardlens.context import Context
from hazardlens.errors import Invalid
from hazardlens.formats.classmap import ClassMap
from hazardlens.models.ultralytics_env import prepare_ultralytics
from hazardlens.training import partial_labels
from hazardlens.training.train import materialise, resolve_dataset
from tests.fixtures.dataset_versions import add_sample, admin_principal, box
from tests.fixtures.training import scene


def test_class_map_declares_unlabeled_classes() -> None:
    cmap = ClassMap.from_dict({"mapping": {"head": "head", "person": "person"}, "unlabeled_classes": ["person"]})
    assert cmap.unlabeled_classes == ("person",)
    assert "person" in cmap.taxonomy_keys  # checked against the taxonomy before anything is written
    with pytest.raises(Invalid, match="unlabeled_classes"):
        ClassMap.from_dict({"mapping": {"head": "head"}, "unlabeled_classes": "person"})


def test_ignore_regions_are_appended_as_whole_image_boxes() -> None:
    label = {
        "im_file": "/x/images/train/00000007_abc.jpg",
        "cls": np.array([[1.0]], np.float32),
        "bboxes": np.array([[0.3, 0.3, 0.1, 0.1]], np.float32),
        "segments": [],
    }
    out = partial_labels.add_ignore_regions(label, {"00000007_abc.jpg": [0, 2]}, nc=3)
    assert out["cls"].reshape(-1).tolist() == [1.0, 3.0, 5.0]  # nc + class
    assert out["bboxes"][1:].tolist() == [[0.5, 0.5, 1.0, 1.0]] * 2
    other = {
        "im_file": "/x/images/train/other.jpg",
        "cls": np.zeros((0, 1), np.float32),
        "bboxes": np.zeros((0, 4), np.float32),
    }
    assert len(partial_labels.add_ignore_regions(other, {"00000007_abc.jpg": [0]}, nc=3)["cls"]) == 0


def test_region_mask_marks_anchors_inside_each_region_for_its_class() -> None:
    import torch

    points = torch.tensor([[4.0, 4.0], [12.0, 4.0], [4.0, 12.0], [12.0, 12.0]])
    regions = torch.tensor([[0.0, 0.0, 8.0, 16.0], [8.0, 8.0, 16.0, 16.0]])  # left half; bottom-right
    mask = partial_labels.region_mask(points, torch.tensor([0, 1]), torch.tensor([2, 0]), regions, batch_size=2, nc=3)
    assert mask.shape == (2, 4, 3)
    assert mask[0, :, 2].tolist() == [True, False, True, False] and not mask[0, :, :2].any()
    assert mask[1, :, 0].tolist() == [False, False, False, True] and not mask[1, :, 1:].any()


def _loss_and_model():  # type: ignore[no-untyped-def]
    prepare_ultralytics()
    import torch
    from ultralytics.cfg import get_cfg
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(0)
    model = DetectionModel("yolo11n.yaml", nc=3, verbose=False)
    model.args = get_cfg()
    model.train()
    return partial_labels.masked_loss_class()(model), model


def test_masked_loss_gives_the_unlabelled_class_no_negative_gradient_inside_its_region() -> None:
    import torch

    loss_fn, model = _loss_and_model()
    img = torch.rand(2, 3, 64, 64)
    # Image 0: one real box of class 1 and an ignore region for class 0 ("person not labelled here").
    # Image 1: one real box of class 0; nothing declared.
    batch = {
        "batch_idx": torch.tensor([0.0, 0.0, 1.0]),
        "cls": torch.tensor([[1.0], [3.0 + 0.0], [0.0]]),
        "bboxes": torch.tensor([[0.5, 0.5, 0.4, 0.4], [0.5, 0.5, 1.0, 1.0], [0.3, 0.3, 0.3, 0.3]]),
    }
    preds = model(img)
    preds["scores"].retain_grad()
    total, items = loss_fn(preds, batch)
    total.sum().backward()
    grad = preds["scores"].grad  # (batch, nc, anchors)
    assert grad is not None
    assert torch.count_nonzero(grad[0, 0]) == 0  # class 0 on image 0: masked everywhere (whole-image region)
    assert torch.count_nonzero(grad[0, 1]) > 0 and torch.count_nonzero(grad[0, 2]) > 0  # others still learn
    assert torch.count_nonzero(grad[1, 0]) > 0  # image 1 declares nothing: class 0 learns there
    assert set(items) == {"box_loss", "cls_loss", "dfl_loss"}

    # Without the region, class 0 on image 0 gets the usual "not here" gradient.
    plain = {k: v[[0, 2]] for k, v in batch.items()}
    preds2 = model(img)
    preds2["scores"].retain_grad()
    loss_fn(preds2, plain)[0].sum().backward()
    assert torch.count_nonzero(preds2["scores"].grad[0, 0]) > 0


def test_positive_boxes_of_an_unlabelled_class_still_teach() -> None:
    """A source that boxes a few of its people: those boxes are true, so they stay positives."""
    import torch

    loss_fn, model = _loss_and_model()
    img = torch.rand(1, 3, 64, 64)
    batch = {
        "batch_idx": torch.tensor([0.0, 0.0]),
        "cls": torch.tensor([[0.0], [3.0]]),
        "bboxes": torch.tensor([[0.5, 0.5, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]]),
    }
    preds = model(img)
    preds["scores"].retain_grad()
    loss_fn(preds, batch)[0].sum().backward()
    grad0 = preds["scores"].grad[0, 0]
    # Only the anchors assigned to the person box carry a gradient for class 0; the rest are masked.
    assert 0 < int(torch.count_nonzero(grad0)) < grad0.numel() // 4


def test_declaration_travels_from_revision_to_the_yolo_export(ctx: Context) -> None:
    from hazardlens.datasets.versions import create_version, load_manifest
    from hazardlens.labeling.annotations import save_revision

    principal = admin_principal(ctx)
    ids = []
    for i in range(8):
        data, boxes = scene(2000 + i)
        ids.append(add_sample(ctx, principal, seed=i, data=data, boxes=boxes, camera=f"cam-{i}", sector="general"))
    with ctx.db.session() as s:
        # Re-import the first four as a source that does not label accumulated dust (a new revision).
        for sid in ids[:4]:
            data, boxes = scene(2000 + ids.index(sid))
            save_revision(
                ctx,
                s,
                principal,
                sid,
                [b for b in boxes if b["class_key"] == "fire"],
                source="import",
                status="approved",
                unlabeled_classes=["accumulated_dust"],
            )
        with pytest.raises(Invalid, match="unknown classes"):
            save_revision(ctx, s, principal, ids[5], [box("fire", 1, 1, 9, 9)], unlabeled_classes=["hardhat"])
    with ctx.db.session() as s:
        dv = create_version(ctx, s, principal, "partial", group_by="camera", ratios=(0.5, 0.25, 0.25), seed=0)
    manifest = load_manifest(ctx, dv)
    declared = {it["sample_id"]: it.get("unlabeled_classes") for it in manifest["items"]}
    assert {sid for sid, v in declared.items() if v} == set(ids[:4])
    assert all(v == ["accumulated_dust"] for v in declared.values() if v)

    version, _ = resolve_dataset(ctx, f"partial@{dv.id[:12]}", principal)
    data_yaml = materialise(ctx, version)
    sidecar = json.loads((data_yaml.parent / partial_labels.UNLABELED_FILE).read_text())
    assert len(sidecar) == 4 and all(v == ["accumulated_dust"] for v in sidecar.values())
    names = ["fire", "accumulated_dust"]
    by_id = partial_labels.read_unlabeled(Path(data_yaml), names)
    assert len(by_id) == 4 and all(v == [1] for v in by_id.values())


@pytest.mark.slow
def test_tiny_training_with_a_declared_unlabelled_class(tmp_path: Path) -> None:
    """The product's own training path on a version where half the images do not label one class:
    the trainer installs the ignore regions and the masked loss, and the run completes and registers."""
    from hazardlens.datasets.versions import create_version
    from hazardlens.labeling.annotations import save_revision
    from hazardlens.settings import Settings
    from hazardlens.training.train import train
    from tests.fixtures.training import no_network, write_config

    ctx = Context(Settings(home=tmp_path / "home"))
    ctx.init()
    principal = admin_principal(ctx)
    for i in range(12):
        data, boxes = scene(3000 + i)
        sid = add_sample(ctx, principal, seed=i, data=data, boxes=boxes, camera=f"cam-{i}", sector="general")
        if i % 2:
            with ctx.db.session() as s:
                save_revision(
                    ctx,
                    s,
                    principal,
                    sid,
                    [b for b in boxes if b["class_key"] == "fire"],
                    source="import",
                    status="approved",
                    unlabeled_classes=["accumulated_dust"],
                )
    with ctx.db.session() as s:
        dv = create_version(ctx, s, principal, "tinypartial", group_by="camera", ratios=(0.5, 0.25, 0.25), seed=0)
    seen: dict[str, object] = {}
    original = partial_labels.use_masked_loss

    def spy(trainer):  # type: ignore[no-untyped-def]
        original(trainer)
        seen["criterion"] = type(trainer.model.criterion).__name__
        seen["declared"] = len(trainer.hl_unlabeled or {})

    with pytest.MonkeyPatch.context() as mp, no_network():
        mp.setattr(partial_labels, "use_masked_loss", spy)
        result = train(
            ctx, f"tinypartial@{dv.id[:12]}", write_config(tmp_path / "one.yaml", epochs=1), principal=principal
        )
    ctx.close()
    assert result.status == "completed" and result.model is not None
    assert seen == {"criterion": "MaskedDetectionLoss", "declared": 6}
