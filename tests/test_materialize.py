"""Exporting dataset versions: YOLO and COCO from the object store, the local blob cache, EXIF
orientation, train caps and stats.json."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from PIL import Image

from hazardlens.context import Context
from hazardlens.datasets.materialize import apply_train_caps, export_version
from hazardlens.datasets.versions import create_version, load_manifest
from hazardlens.orm import DatasetVersion
from hazardlens.store.filesystem import FilesystemStore
from tests.fixtures.dataset_versions import add_sample, admin_principal, box, oriented_test_image


class CountingStore(FilesystemStore):
    """The real filesystem store, counting reads of image blobs."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.blob_reads = 0

    def open(self, key: str):  # type: ignore[no-untyped-def]
        if key.startswith("blobs/"):
            self.blob_reads += 1
        return super().open(key)

    def get(self, key: str) -> bytes:
        if key.startswith("blobs/"):
            self.blob_reads += 1
        return super().get(key)


@pytest.fixture
def counting_ctx(ctx: Context) -> Context:
    ctx.__dict__["store"] = CountingStore(ctx.settings.store_root)
    return ctx


def _version(ctx: Context, n: int = 6) -> DatasetVersion:
    admin = admin_principal(ctx)
    for i in range(n):
        cls = "fire" if i % 2 else "smoke"
        add_sample(ctx, admin, seed=i, camera=f"cam{i}", boxes=[box(cls, 10, 8, 50, 40)])
    add_sample(ctx, admin, seed=100, camera="camN", boxes=[])  # a verified negative
    with ctx.db.session() as s:
        return create_version(ctx, s, admin, "fs", ratios=(0.5, 0.25, 0.25))


def test_yolo_export_matches_the_manifest(ctx: Context, tmp_path: Path) -> None:
    dv = _version(ctx)
    result = export_version(ctx, dv, "yolo", tmp_path / "yolo")
    manifest = load_manifest(ctx, dv)
    data = yaml.safe_load((tmp_path / "yolo" / "data.yaml").read_text())
    assert data["names"] == {0: "fire", 1: "smoke"} and data["nc"] == 2
    assert result.images == len(manifest["items"]) == 7 and result.boxes == 6 and result.negatives == 1
    for it in manifest["items"]:
        stem = f"{it['sample_id']:08d}_{it['sha256'][:12]}"
        image = tmp_path / "yolo" / "images" / it["split"] / f"{stem}.jpg"
        assert Image.open(image).size == (it["width"], it["height"])
        lines = (tmp_path / "yolo" / "labels" / it["split"] / f"{stem}.txt").read_text().split("\n")
        lines = [ln for ln in lines if ln]
        assert len(lines) == len(it["boxes"])
        for line, b in zip(lines, it["boxes"], strict=True):
            cls, cx, cy, w, h = line.split()
            assert data["names"][int(cls)] == b["class_key"]
            assert float(cx) * it["width"] == pytest.approx((b["x1"] + b["x2"]) / 2, abs=1e-3)
            assert float(w) * it["width"] == pytest.approx(b["x2"] - b["x1"], abs=1e-3)
            assert float(h) * it["height"] == pytest.approx(b["y2"] - b["y1"], abs=1e-3)


def test_coco_export_one_file_per_split(ctx: Context, tmp_path: Path) -> None:
    dv = _version(ctx)
    result = export_version(ctx, dv, "coco", tmp_path / "coco")
    manifest = load_manifest(ctx, dv)
    by_split: dict[str, list[dict]] = {}
    for it in manifest["items"]:
        by_split.setdefault(it["split"], []).append(it)
    assert {p.name for p in result.paths} == {f"{s}.json" for s in by_split} | {"stats.json"}
    for split, items in by_split.items():
        doc = json.loads((tmp_path / "coco" / f"{split}.json").read_text())
        assert [c["name"] for c in doc["categories"]] == ["fire", "smoke"]
        assert len(doc["images"]) == len(items)
        names = {c["id"]: c["name"] for c in doc["categories"]}
        got = sorted((names[a["category_id"]], *a["bbox"]) for a in doc["annotations"])
        want = sorted(
            (b["class_key"], b["x1"], b["y1"], b["x2"] - b["x1"], b["y2"] - b["y1"])
            for it in items
            for b in it["boxes"]
        )
        assert got == want
        for img in doc["images"]:
            assert (tmp_path / "coco" / "images" / img["file_name"]).is_file()


def test_second_export_reads_nothing_from_the_store(counting_ctx: Context, tmp_path: Path) -> None:
    ctx = counting_ctx
    dv = _version(ctx)
    store = ctx.store
    assert isinstance(store, CountingStore)
    store.blob_reads = 0
    first = export_version(ctx, dv, "yolo", tmp_path / "a")
    assert store.blob_reads == 7 == first.store_reads
    second = export_version(ctx, dv, "coco", tmp_path / "b")
    third = export_version(ctx, dv, "yolo", tmp_path / "a")  # re-export over the first
    assert store.blob_reads == 7  # nothing more was read
    assert second.store_reads == third.store_reads == 0 and second.cache_hits == 7
    assert second.linked + second.copied == 7
    # Hard links: the exported file IS the cached one, so no bytes were copied.
    some = next((tmp_path / "b" / "images").iterdir())
    sha = load_manifest(ctx, dv)["items"][0]["sha256"]
    cached = ctx.settings.cache_dir / "blobs" / sha[:2] / sha
    assert cached.is_file() and not os.access(cached, os.W_OK) or os.geteuid() == 0
    if second.linked:
        inodes = {p.stat().st_ino for p in (ctx.settings.cache_dir / "blobs").rglob("*") if p.is_file()}
        assert some.stat().st_ino in inodes


def test_exif_rotated_sample_is_exported_as_oriented_pixels(ctx: Context, tmp_path: Path) -> None:
    admin = admin_principal(ctx)
    data, patch = oriented_test_image(6)
    sid = add_sample(ctx, admin, seed=0, data=data, camera="phone", boxes=[box("fire", *patch)])
    with ctx.db.session() as s:
        dv = create_version(ctx, s, admin, "rot", ratios=(1.0, 0.0, 0.0))
    item = load_manifest(ctx, dv)["items"][0]
    assert (item["sample_id"], item["width"], item["height"]) == (sid, 48, 64)

    result = export_version(ctx, dv, "yolo", tmp_path / "y")
    assert result.reencoded == 1
    image = next((tmp_path / "y" / "images" / "train").iterdir())
    label = (tmp_path / "y" / "labels" / "train" / image.name).with_suffix(".txt").read_text().split()
    cx, cy, w, h = (float(v) for v in label[1:])

    with Image.open(image) as im:
        assert im.getexif().get(0x0112) in (None, 1)  # no tag left to apply twice
        raw = np.asarray(im.convert("RGB"))  # PIL without exif_transpose: the pixels as stored
    from hazardlens.models.ultralytics_env import prepare_ultralytics

    prepare_ultralytics(ctx.settings.home)
    from ultralytics.data.utils import exif_size
    from ultralytics.utils.patches import imread

    bgr = imread(str(image))  # what Ultralytics trains on
    with Image.open(image) as im:
        assert exif_size(im) == (48, 64)  # the size Ultralytics checks labels against
    for pixels in (raw, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)):
        assert pixels.shape[:2] == (64, 48)
        x1, x2 = round((cx - w / 2) * 48), round((cx + w / 2) * 48)
        y1, y2 = round((cy - h / 2) * 64), round((cy + h / 2) * 64)
        inside = pixels[y1 + 2 : y2 - 2, x1 + 2 : x2 - 2].reshape(-1, 3).mean(0)
        assert inside[0] > 200 and inside[2] < 80, inside  # the red patch is where the box says

    coco = export_version(ctx, dv, "coco", tmp_path / "c")  # re-encoded once, then cached
    assert coco.reencoded == 0
    doc = json.loads((tmp_path / "c" / "train.json").read_text())
    assert (doc["images"][0]["width"], doc["images"][0]["height"]) == (48, 64)


def test_stats_json_and_train_caps(ctx: Context, tmp_path: Path) -> None:
    admin = admin_principal(ctx)
    for i in range(8):
        add_sample(ctx, admin, seed=i, camera=f"cam{i}", boxes=[box("fire", 10, 8, 50, 40)])
    for i in range(3):
        add_sample(
            ctx, admin, seed=20 + i, camera=f"mix{i}", boxes=[box("fire", 1, 1, 9, 9), box("person", 20, 10, 60, 60)]
        )
    with ctx.db.session() as s:
        dv = create_version(ctx, s, admin, "caps", ratios=(1.0, 0.0, 0.0))
    result = export_version(ctx, dv, "yolo", tmp_path / "y", train_caps={"fire": 3})
    # Fire-only train images are capped at 3; the images that also hold a person all stay.
    assert result.capped_images == 5 and result.images == 6
    stats = json.loads((tmp_path / "y" / "stats.json").read_text())
    assert stats == result.stats
    assert stats["names"] == ["person", "fire"] and stats["capped_images"] == 5
    assert stats["splits"]["train"]["images"] == 6
    fire = stats["classes"]["fire"]["train"]
    assert fire["images"] == 6 and fire["instances"] == 6 and fire["small"] == 3
    assert fire["box_px"]["p10"] == pytest.approx(8.0, abs=0.1)
    assert fire["box_px"]["p90"] == pytest.approx(35.8, abs=0.1)
    assert stats["classes"]["person"]["train"]["instances"] == 3
    assert len(list((tmp_path / "y" / "images" / "train").iterdir())) == 6


def test_train_caps_leave_val_and_test_alone() -> None:
    items = [
        {"sample_id": i, "sha256": f"{i:064x}", "split": split, "boxes": [{"class_key": "fire"}]}
        for i, split in enumerate(["train"] * 5 + ["val"] * 3 + ["test"] * 3)
    ]
    items.append({"sample_id": 99, "sha256": "f" * 64, "split": "train", "boxes": []})
    kept, dropped = apply_train_caps(items, {"fire": 2})
    assert dropped == 3
    assert [it["sample_id"] for it in kept if it["split"] == "train"] == [0, 1, 99]
    assert sum(it["split"] != "train" for it in kept) == 6
    assert apply_train_caps(items, {}) == (items, 0)
