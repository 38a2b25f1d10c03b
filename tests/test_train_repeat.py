"""Oversampling rare classes (``train_repeat``): the train list repeats the right images, Ultralytics
really trains on the repeats, and configs that cannot mean anything are refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from PIL import Image

from hazardlens.context import Context
from hazardlens.errors import Invalid
from hazardlens.training.config import config_from_dict
from hazardlens.training.dataset import export_summary, materialise, resolve_dataset, write_train_list
from tests.fixtures.training import make_tiny_dataset

NAMES = {0: "person", 1: "helmet", 2: "head", 3: "self_clothes"}


def _folder(tmp_path: Path, labels: dict[str, list[int]]) -> Path:
    """A YOLO export's train side: one 8x8 image per entry, its label file holding those class ids."""
    (tmp_path / "images" / "train").mkdir(parents=True)
    (tmp_path / "labels" / "train").mkdir(parents=True)
    for stem, classes in labels.items():
        Image.new("RGB", (8, 8)).save(tmp_path / "images" / "train" / f"{stem}.jpg")
        rows = [f"{c} 0.5 0.5 0.2 0.2" for c in classes]
        (tmp_path / "labels" / "train" / f"{stem}.txt").write_text("\n".join(rows), encoding="utf-8")
    return tmp_path


def test_each_image_is_listed_as_often_as_its_rarest_boosted_class_asks(tmp_path: Path) -> None:
    folder = _folder(tmp_path, {"a": [0, 1], "b": [0, 2], "c": [2, 3, 3], "d": [], "e": [3]})
    assert write_train_list(folder, {"names": NAMES}, {"head": 5, "self_clothes": 3}) == "train.txt"
    lines = (folder / "train.txt").read_text(encoding="utf-8").splitlines()
    counts = {stem: lines.count(f"./images/train/{stem}.jpg") for stem in "abcde"}
    # a: no boosted class; b: head; c: head and own clothes -> the larger factor; d: a negative; e: clothes
    assert counts == {"a": 1, "b": 5, "c": 5, "d": 1, "e": 3}
    record = json.loads((folder / "train_repeat.json").read_text())
    assert record["entries"] == 15 and record["images"] == 5
    assert record["images_with_class"] == {"head": 2, "self_clothes": 2}


def test_a_class_the_dataset_lacks_is_refused(tmp_path: Path) -> None:
    folder = _folder(tmp_path, {"a": [0]})
    with pytest.raises(Invalid, match="hardhat") as err:
        write_train_list(folder, {"names": list(NAMES.values())}, {"hardhat": 2})
    assert err.value.code == "invalid_repeat"
    assert not (folder / "train.txt").exists()


def test_config_checks_repeat_factors() -> None:
    plain = config_from_dict({"model": "yolo11n.yaml"})
    same = config_from_dict({"model": "yolo11n.yaml", "train_repeat": None})
    boosted = config_from_dict({"model": "yolo11n.yaml", "train_repeat": {"head": 4}})
    assert boosted.train_repeat == {"head": 4} and plain.train_repeat is None
    # a config without the key hashes as before the key existed (resume matches runs by this hash)
    assert plain.sha256() == same.sha256() != boosted.sha256()
    for bad in ({"head": 0}, {"head": 21}, {"head": 2.5}, {"head": True}, ["head"]):
        with pytest.raises(Invalid, match="train_repeat"):
            config_from_dict({"model": "yolo11n.yaml", "train_repeat": bad})
    with pytest.raises(Invalid, match="capped or repeated"):
        config_from_dict({"model": "yolo11n.yaml", "train_caps": {"fire": 3}, "train_repeat": {"fire": 2}})


def test_ultralytics_trains_on_the_repeated_list(ctx: Context) -> None:
    """The materialised version points data.yaml's train at the list, and Ultralytics' own dataset
    class (what the trainer builds) yields one sample per listed line, repeats included."""
    from hazardlens.models.ultralytics_env import prepare_ultralytics

    prepare_ultralytics(ctx.settings.home)
    from ultralytics.data.dataset import YOLODataset

    tiny = make_tiny_dataset(ctx)
    dv, _ = resolve_dataset(ctx, tiny.ref, tiny.principal)
    plain_yaml = materialise(ctx, dv)
    data_yaml = materialise(ctx, dv, None, {"fire": 3})
    assert data_yaml != plain_yaml  # a separate cached folder per selection
    data = yaml.safe_load(data_yaml.read_text(encoding="utf-8"))
    assert data["train"] == "train.txt"
    n_images = len(list((data_yaml.parent / "images" / "train").iterdir()))
    assert n_images > 0  # every tiny image holds a fire, so each is listed three times

    dataset = YOLODataset(
        img_path=str(data_yaml.parent / data["train"]), data=data, imgsz=64, augment=False, cache=False, prefix="test: "
    )
    assert len(dataset) == 3 * n_images
    assert len(set(dataset.im_files)) == n_images
    assert all(len(label["cls"]) == 2 for label in dataset.labels)  # labels found for every repeat
    assert export_summary(data_yaml)["train_repeat"]["entries"] == 3 * n_images
    assert materialise(ctx, dv, None, {"fire": 3}) == data_yaml  # reused, not rebuilt
