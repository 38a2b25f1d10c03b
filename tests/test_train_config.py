"""The training config contract (hazardlens.contracts.training): hashes stay those of the dataclass it
replaced (run records and model cards match configs by them), and every problem is reported at once."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from hazardlens.contracts.training import CONFIG_KEYS, TrainConfig, config_problems
from hazardlens.errors import Invalid
from hazardlens.training.config import config_from_dict

# Computed with the frozen dataclass TrainConfig of hazardlens.training.train before the move.
HASHED_BEFORE = [
    (dict(model="/abs/yolo11n.pt"), "7d365d9f4edca84776cf35d769caa812c000c8c0c817e3fa06d63747245affe1"),
    (
        dict(
            model="yolo11s.yaml",
            imgsz=960,
            epochs=50,
            time=2.5,
            batch=8,
            seed=3,
            patience=20,
            close_mosaic=5,
            augment=Path("/x/configs/augment/site.yaml"),
            train_caps={"fire": 150, "smoke": 0},
            train_repeat={"head": 4},
            device="cuda",
            workers=4,
            cache="ram",
            ultralytics={"lr0": 0.002, "mosaic": 0.5},
            name="hazard-s",
            source=Path("/x/configs/train/b.yaml"),
        ),
        "b9fb239254b3e0c3ce8655410dcdbd982fc3062aec7bf8a234047b6086d77bc1",
    ),
    (
        dict(model="/m.pt", train_caps={"fire": 1}, cache=True, source=Path("/elsewhere/c.yaml")),
        "fbfddafb9e68496fa8b0d39efd8fc8a7d4f1560031b74e02818e0d6930d9bf31",
    ),
]
# config_from_dict of these raw files, with the code before the move.
FROM_RAW_BEFORE = [
    ({"model": "yolo11n.yaml"}, "d62264ec1b3aac21cf1403f2fa76b8173eb5ff7402152251b1aafa49da5e77ef"),
    (
        {
            "model": "yolo11n.yaml",
            "imgsz": 64,
            "epochs": 1,
            "time": 1,
            "device": "CPU",
            "cache": "disk",
            "ultralytics": {"lr0": 0.01, "mosaic": 0.0},
            "train_repeat": {"head": 2},
            "train_caps": {"fire": 0},
            "name": "tiny",
        },
        "8bd6a8704e4c6fb25ff2fb3be27f025147d814478fc35bab653d125d0b71a2f8",
    ),
]


@pytest.mark.parametrize(("values", "digest"), HASHED_BEFORE)
def test_the_hash_is_the_one_the_dataclass_gave(values: dict, digest: str) -> None:
    assert TrainConfig(**values).sha256() == digest


@pytest.mark.parametrize(("raw", "digest"), FROM_RAW_BEFORE)
def test_a_raw_config_hashes_as_before(raw: dict, digest: str) -> None:
    cfg = config_from_dict(raw)
    assert cfg.sha256() == digest
    assert list(cfg.to_dict()) == [*sorted(CONFIG_KEYS, key=list(TrainConfig.model_fields).index), "source"]


def test_the_record_shape_is_unchanged() -> None:
    cfg = config_from_dict(FROM_RAW_BEFORE[1][0])
    assert cfg.to_dict() == {
        "model": "yolo11n.yaml",
        "imgsz": 64,
        "epochs": 1,
        "time": 1.0,
        "batch": 16,
        "seed": 0,
        "patience": 100,
        "close_mosaic": 10,
        "augment": None,
        "train_caps": {"fire": 0},
        "train_repeat": {"head": 2},
        "train_only_classes": None,  # added later; left out of the hash when unset (the hashes above)
        "branch_classes": None,  # likewise
        "keep_old_outputs": None,  # likewise
        "hold_batchnorm": False,  # likewise
        "device": "cpu",
        "workers": 2,
        "cache": "disk",
        "ultralytics": {"lr0": 0.01, "mosaic": 0.0},
        "name": "tiny",
        "source": None,
    }
    with pytest.raises(ValidationError):  # frozen, like the dataclass
        cfg.imgsz = 32  # type: ignore[misc]


def test_every_problem_is_reported_at_once_with_the_file(tmp_path: Path) -> None:
    raw = {
        "model": "",
        "epoch": 3,
        "source": "x",
        "imgsz": 50,
        "time": 0,
        "device": "gpu",
        "cache": "yes",
        "workers": -1,
        "batch": True,
        "name": "a b",
        "train_caps": {"fire": 3},
        "train_repeat": {"fire": 2},
        "ultralytics": {"amp": True, "data": "x"},
    }
    problems = config_problems(raw)
    for needle in (
        "unknown key(s) epoch, source",
        "'model' is required",
        "'imgsz' must be a multiple of 32",
        "'time' is a number of hours",
        "'device' must be auto",
        "'cache' must be",
        "'workers' must be",
        "'batch' must be a positive integer",
        "'name' (registry model name)",
        "capped or repeated",
        "'ultralytics' may not set amp, data",
    ):
        assert any(needle in p for p in problems), needle
    source = tmp_path / "bad.yaml"
    with pytest.raises(Invalid) as err:
        config_from_dict({**raw, "model": "missing.pt"}, source)
    assert err.value.code == "invalid_config" and str(source) in err.value.message
    assert "not found locally" in err.value.message and "'imgsz'" in err.value.message
    assert len(err.value.details) == len(problems)  # 'model' is now a missing file instead of empty


def test_a_valid_config_has_no_problems() -> None:
    assert (
        config_problems(
            {"model": "yolo11n.yaml", "imgsz": 640, "ultralytics": None, "augment": "", "train_repeat": None, "time": 2}
        )
        == []
    )
