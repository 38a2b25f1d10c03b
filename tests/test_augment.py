"""Augmentation pipelines from YAML, the contact-sheet preview, and the Ultralytics integration."""

from __future__ import annotations

from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import pytest
from PIL import Image

from hazardlens.datasets.augment import (
    UltralyticsAlbumentations,
    apply,
    install_in_dataset,
    load_pipeline,
    pipeline_from_dict,
    preview,
    sheet_shape,
)
from hazardlens.detections import Box
from hazardlens.errors import Invalid
from hazardlens.settings import shipped_configs

CONFIG_DIR = shipped_configs() / "augment"


def _names(compose: A.BaseCompose) -> set[str]:
    out: set[str] = set()
    for t in compose.transforms:
        out.add(type(t).__name__)
        if isinstance(t, A.BaseCompose):
            out |= _names(t)
    return out


def _find(compose: A.BaseCompose, name: str):  # type: ignore[no-untyped-def]
    for t in compose.transforms:
        if type(t).__name__ == name:
            return t
        if isinstance(t, A.BaseCompose) and (found := _find(t, name)) is not None:
            return found
    return None


@pytest.mark.parametrize("name", ["default", "inspection"])
def test_shipped_pipelines_load(name: str) -> None:
    pipeline = load_pipeline(CONFIG_DIR / f"{name}.yaml")
    params = pipeline.processors["bboxes"].params
    assert params.format == "pascal_voc" and params.min_visibility == pytest.approx(0.3)
    assert {"HorizontalFlip", "Affine"} <= _names(pipeline)


def test_inspection_pipeline_models_site_conditions() -> None:
    pipeline = load_pipeline(CONFIG_DIR / "inspection.yaml")
    assert {
        "MotionBlur",
        "ImageCompression",
        "RandomBrightnessContrast",
        "RandomGamma",
        "RandomFog",
        "RandomSunFlare",
    } <= _names(pipeline)
    lo, hi = _find(pipeline, "ImageCompression").quality_range
    assert 10 <= lo < hi <= 40
    assert min(_find(pipeline, "RandomGamma").gamma_limit) > 100  # gamma above 1 darkens
    assert max(_find(pipeline, "RandomBrightnessContrast").brightness_limit) < 0


def test_bad_configs_are_refused_with_a_reason() -> None:
    with pytest.raises(Invalid, match="MotionBlur"):
        pipeline_from_dict({"transforms": [{"name": "MotionBlurr", "p": 0.5}]})
    with pytest.raises(Invalid, match="blur_limt"):
        pipeline_from_dict({"transforms": [{"name": "MotionBlur", "params": {"blur_limt": 5}}]})
    with pytest.raises(Invalid, match="p must be"):
        pipeline_from_dict({"transforms": [{"name": "HorizontalFlip", "p": 2}]})
    with pytest.raises(Invalid, match="bbox format"):
        pipeline_from_dict({"bbox": {"format": "coco"}, "transforms": []})
    with pytest.raises(Invalid, match="params"):
        pipeline_from_dict({"transforms": [{"name": "MotionBlur", "blur_limit": 5}]})


def _scene() -> tuple[np.ndarray, list[Box]]:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)
    return image, [Box("fire", 10, 20, 50, 60), Box("smoke", 100, 5, 159, 100), Box("person", 0, 0, 30, 30)]


@pytest.mark.parametrize("name", ["default", "inspection"])
def test_boxes_stay_inside_the_image(name: str) -> None:
    pipeline = load_pipeline(CONFIG_DIR / f"{name}.yaml")
    pipeline.set_random_seed(1)
    image, boxes = _scene()
    for _ in range(25):
        out, new = apply(pipeline, image, boxes)
        h, w = out.shape[:2]
        assert out.dtype == np.uint8 and out.shape[2] == 3
        for b in new:
            assert 0 <= b.x1 < b.x2 <= w and 0 <= b.y1 < b.y2 <= h
            assert b.class_key in {"fire", "smoke", "person"}


@pytest.mark.parametrize("fmt", ["pascal_voc", "yolo"])
def test_boxes_follow_a_horizontal_flip(fmt: str) -> None:
    pipeline = pipeline_from_dict({"bbox": {"format": fmt}, "transforms": [{"name": "HorizontalFlip", "p": 1}]})
    image, boxes = _scene()
    out, new = apply(pipeline, image, boxes)
    assert np.array_equal(out, image[:, ::-1])
    assert [b.class_key for b in new] == [b.class_key for b in boxes]
    for got, was in zip(new, boxes, strict=True):
        assert (got.x1, got.y1, got.x2, got.y2) == pytest.approx((160 - was.x2, was.y1, 160 - was.x1, was.y2), abs=1e-3)


def test_preview_writes_a_contact_sheet(tmp_path: Path) -> None:
    pipeline = load_pipeline(CONFIG_DIR / "inspection.yaml")
    image, boxes = _scene()
    file = tmp_path / "img.png"
    Image.fromarray(image).save(file)
    out = preview([(image, boxes), (file, boxes[:1])], pipeline, tmp_path / "sheet" / "p.png", n=5, seed=3, tile=96)
    with Image.open(out) as sheet:
        assert sheet.size == sheet_shape(5, 96) == (3 * 96, 2 * 96)
    again = preview([(image, boxes), (file, boxes[:1])], pipeline, tmp_path / "p2.png", n=5, seed=3, tile=96)
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(again)))  # same seed, same sheet


def test_preview_from_a_dataset_version(ctx, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from hazardlens.datasets.versions import create_version
    from tests.fixtures.dataset_versions import add_sample, admin_principal, box

    admin = admin_principal(ctx)
    for i in range(3):
        add_sample(ctx, admin, seed=i, camera=f"c{i}", boxes=[box("fire", 5, 5, 40, 40)])
    with ctx.db.session() as s:
        create_version(ctx, s, admin, "pv")
    flip = pipeline_from_dict({"transforms": [{"name": "HorizontalFlip", "p": 1}]})
    out = preview(ctx, flip, tmp_path / "pv.png", n=4, dataset="pv@latest", tile=64)
    sheet = np.asarray(Image.open(out).convert("RGB"))
    assert sheet.shape == (128, 128, 3)
    # Box outlines are drawn: the first class colour appears on the sheet.
    assert (np.abs(sheet.astype(int) - (230, 25, 75)).sum(axis=2) == 0).any()


# --- Ultralytics -----------------------------------------------------------------------------------


@pytest.fixture
def yolo_folder(tmp_path: Path) -> Path:
    """One 96x64 image (BGR on disk): a green object at x 10-40, y 10-30, labelled as class 0."""
    (tmp_path / "images" / "train").mkdir(parents=True)
    (tmp_path / "labels" / "train").mkdir(parents=True)
    img = np.full((64, 96, 3), 90, np.uint8)
    img[:, :12] = (0, 0, 200)
    img[10:30, 10:40] = (0, 255, 0)
    cv2.imwrite(str(tmp_path / "images" / "train" / "a.png"), img)
    (tmp_path / "labels" / "train" / "a.txt").write_text(f"0 {25 / 96:.6f} {20 / 64:.6f} {30 / 96:.6f} {20 / 64:.6f}\n")
    return tmp_path


def _dataset(folder: Path):  # type: ignore[no-untyped-def]
    from ultralytics.cfg import get_cfg
    from ultralytics.data.build import build_yolo_dataset
    from ultralytics.utils import DEFAULT_CFG

    # Every random Ultralytics augmentation off, so only ours can change what __getitem__ returns.
    off = dict(
        mosaic=0.0,
        mixup=0.0,
        cutmix=0.0,
        copy_paste=0.0,
        fliplr=0.0,
        flipud=0.0,
        hsv_h=0.0,
        hsv_s=0.0,
        hsv_v=0.0,
        degrees=0.0,
        translate=0.0,
        scale=0.0,
        shear=0.0,
        perspective=0.0,
    )
    cfg = get_cfg(DEFAULT_CFG, overrides=dict(imgsz=96, workers=0, **off))
    return cfg, build_yolo_dataset(
        cfg, str(folder / "images" / "train"), 1, {"names": {0: "fire"}, "nc": 1, "channels": 3}, mode="train"
    )


def test_ultralytics_dataset_really_applies_our_pipeline(ultralytics_ready: Path, yolo_folder: Path) -> None:
    from ultralytics.data.augment import Albumentations

    cfg, plain = _dataset(yolo_folder)
    install_in_dataset(plain, pipeline_from_dict({"transforms": [{"name": "NoOp", "p": 1}]}))
    cfg, flipped = _dataset(yolo_folder)
    ours = install_in_dataset(flipped, pipeline_from_dict({"transforms": [{"name": "HorizontalFlip", "p": 1}]}))
    steps = flipped.transforms.transforms
    assert ours in steps and not any(isinstance(t, Albumentations) for t in steps)

    a, b = plain[0], flipped[0]
    assert a["img"].shape == b["img"].shape
    assert np.array_equal(a["img"].numpy()[:, :, ::-1], b["img"].numpy())  # pixels mirrored
    (cx, cy, w, h), (fx, fy, fw, fh) = a["bboxes"][0].tolist(), b["bboxes"][0].tolist()
    assert (fx, fy, fw, fh) == pytest.approx((1 - cx, cy, w, h), abs=1e-4)  # and the box with them
    assert b["cls"].tolist() == [[0.0]]
    # The box still sits on the green object in the returned (RGB, CHW) image.
    img = b["img"].numpy().transpose(1, 2, 0)
    size = img.shape[1]
    x1, x2 = round((fx - fw / 2) * size), round((fx + fw / 2) * size)
    y1, y2 = round((fy - fh / 2) * size), round((fy + fh / 2) * size)
    patch = img[y1 + 2 : y2 - 2, x1 + 2 : x2 - 2].reshape(-1, 3).mean(0)
    assert patch[1] > 200 and patch[0] < 50

    # Ultralytics rebuilds the transforms when it closes mosaic: ours must survive that.
    flipped.close_mosaic(cfg)
    assert ours in flipped.transforms.transforms


def test_colour_transforms_see_rgb(ultralytics_ready: Path, yolo_folder: Path) -> None:
    _, plain = _dataset(yolo_folder)
    install_in_dataset(plain, pipeline_from_dict({"transforms": [{"name": "NoOp", "p": 1}]}))
    _, shifted = _dataset(yolo_folder)
    red = {
        "name": "RGBShift",
        "p": 1,
        "params": {"r_shift_limit": [40, 40], "g_shift_limit": [0, 0], "b_shift_limit": [0, 0]},
    }
    install_in_dataset(shifted, pipeline_from_dict({"transforms": [red]}))
    a = plain[0]["img"].numpy().astype(int)  # Format hands out RGB
    b = shifted[0]["img"].numpy().astype(int)
    grey = (slice(40, 60), slice(60, 90))  # a plain grey (90) area
    assert (b[0][grey] - a[0][grey]).mean() == pytest.approx(40, abs=1)  # red went up
    assert (b[2][grey] - a[2][grey]).mean() == pytest.approx(0, abs=1)  # blue did not


def test_wrapper_drops_boxes_pushed_out_and_keeps_classes_aligned(ultralytics_ready: Path) -> None:
    from ultralytics.utils.instance import Instances

    crop = pipeline_from_dict(
        {
            "bbox": {"min_visibility": 0.5},
            "transforms": [{"name": "Crop", "p": 1, "params": {"x_min": 0, "y_min": 0, "x_max": 50, "y_max": 64}}],
        }
    )
    step = UltralyticsAlbumentations(crop)
    boxes = np.array([[10, 10, 30, 30], [60, 10, 90, 30], [40, 40, 70, 60]], np.float32)  # xyxy pixels
    labels = {
        "img": np.zeros((64, 100, 3), np.uint8),
        "cls": np.array([[0.0], [1.0], [2.0]]),
        "instances": Instances(
            boxes, segments=np.zeros((0, 1000, 2), np.float32), bbox_format="xyxy", normalized=False
        ),
    }
    out = step(labels)
    assert out["img"].shape == (64, 50, 3)
    assert out["cls"].tolist() == [[0.0]]  # box 1 is outside, box 2 is 1/3 visible (< 0.5)
    inst = out["instances"]
    assert inst.normalized and inst._bboxes.format == "xywh"
    assert inst.bboxes[0].tolist() == pytest.approx([20 / 50, 20 / 64, 20 / 50, 20 / 64], abs=1e-5)


def test_validation_datasets_are_refused(ultralytics_ready: Path, yolo_folder: Path) -> None:
    from ultralytics.cfg import get_cfg
    from ultralytics.data.build import build_yolo_dataset
    from ultralytics.utils import DEFAULT_CFG

    cfg = get_cfg(DEFAULT_CFG, overrides={"imgsz": 96, "workers": 0})
    val = build_yolo_dataset(
        cfg, str(yolo_folder / "images" / "train"), 1, {"names": {0: "fire"}, "nc": 1, "channels": 3}, mode="val"
    )
    with pytest.raises(Invalid, match="albumentations step"):
        install_in_dataset(val, load_pipeline(CONFIG_DIR / "default.yaml"))
