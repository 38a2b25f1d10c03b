"""Sliced inference (models/tiling.py): window geometry, merging, and /v1/detect?tiles=true.

The merge tests use a small real detector written for them (red squares found by connected
components after shrinking the input to a fixed size, like an engine at its imgsz): it knows
nothing of windows, and like a CNN it misses objects that shrink below a few pixels.
"""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from hazardlens.detections import Detections, box_iou
from hazardlens.errors import Invalid
from hazardlens.models.preprocess import decode_at_scale
from hazardlens.models.tiling import check_tiling, predict_tiled, tile_scale, tile_windows
from tests.fixtures.core import auth
from tests.fixtures.serving import photo

IMGSZ = 128
MIN_SIDE = 4  # the toy detector's smallest findable square, in its input pixels


def squares_detector(images: list[np.ndarray]) -> list[Detections]:
    out = []
    for image in images:
        h, w = image.shape[:2]
        r = IMGSZ / max(h, w)
        small = cv2.resize(image, (max(1, round(w * r)), max(1, round(h * r))), interpolation=cv2.INTER_AREA)
        mask = ((small[..., 2] > 150) & (small[..., 1] < 100)).astype(np.uint8)
        n, _, stats, _ = cv2.connectedComponentsWithStats(mask)
        boxes = [
            [x / r, y / r, (x + bw) / r, (y + bh) / r]
            for x, y, bw, bh, _ in stats[1:n]
            if bw >= MIN_SIDE and bh >= MIN_SIDE
        ]
        out.append(
            Detections(
                np.array(boxes, np.float32).reshape(-1, 4),
                ["helmet"] * len(boxes),
                np.full(len(boxes), 0.9, np.float32),
            )
        )
    return out


def scene(width: int, height: int, squares: list[tuple[int, int, int]]) -> np.ndarray:
    image = np.full((height, width, 3), 90, np.uint8)
    for x, y, s in squares:
        image[y : y + s, x : x + s] = (0, 0, 255)  # BGR red
    return image


@pytest.mark.parametrize(
    ("width", "height", "tile", "overlap"), [(1000, 600, 256, 0.25), (513, 257, 256, 0.0), (4000, 3000, 640, 0.2)]
)
def test_windows_cover_the_image_with_the_asked_overlap(width: int, height: int, tile: int, overlap: float) -> None:
    windows = tile_windows(width, height, tile, overlap)
    covered = np.zeros((height, width), bool)
    for x1, y1, x2, y2 in windows:
        assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
        assert x2 - x1 == min(tile, width) and y2 - y1 == min(tile, height)
        covered[y1:y2, x1:x2] = True
    assert covered.all()
    xs = sorted({w[0] for w in windows})
    for a, b in zip(xs, xs[1:], strict=False):
        assert tile - (b - a) >= int(tile * overlap) - 1  # neighbours overlap at least as asked


def test_an_image_that_fits_one_window_is_not_cut() -> None:
    assert tile_windows(640, 480, 640) == []
    assert tile_windows(700, 480, 640) == []  # within 10%: the whole-image pass sees it at scale


def test_tiling_finds_small_objects_the_whole_image_pass_misses_each_once() -> None:
    # 20 px squares in a 1024 px photo: 2.5 px at the detector's 128 px input, so the whole-image
    # pass misses them; one sits across a window boundary, one is large.
    small = [(30, 40, 20), (500, 300, 20), (250, 120, 20), (960, 940, 20), (118, 600, 20)]
    big = (600, 500, 300)
    image = scene(1024, 1024, [*small, big])
    truth = np.array([[x, y, x + s, y + s] for x, y, s in [*small, big]], np.float32)

    whole = squares_detector([image])[0]
    assert len(whole) == 1  # only the big square

    window = 256
    scale = tile_scale(1024, IMGSZ, window)
    scaled = cv2.resize(image, (round(1024 * scale), round(1024 * scale)), interpolation=cv2.INTER_AREA)
    dets = predict_tiled(squares_detector, scaled, IMGSZ, overlap=0.25, iou=0.45)
    found = dets.xyxy / scale
    assert len(found) == len(truth), found
    iou = box_iou(truth, found)
    assert (iou.max(axis=1) > 0.7).all()  # every square found, boxes in the photo's pixels
    assert (iou.max(axis=0) > 0.7).all()  # and nothing else: no cut pieces of the big square


def test_tile_settings_are_checked() -> None:
    with pytest.raises(Invalid):
        check_tiling(16, 0.25)
    with pytest.raises(Invalid):
        check_tiling(640, 0.95)


def test_decode_at_scale_answers_the_original_size() -> None:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((900, 1600, 3), np.uint8)).save(buf, format="JPEG")
    image, size = decode_at_scale(buf.getvalue(), lambda long: 400 / long)
    assert size == (1600, 900)
    assert image.shape[:2] == (225, 400)


def test_detect_with_tiles_answers_boxes_in_the_original_pixels(api, ctx, make_key) -> None:
    key = make_key("420000", "service")
    ctx.settings = ctx.settings.with_(tile_window=128)  # the tiny model runs at 64 px: 2 x 3 windows
    data = photo(320, 200, seed=4)
    plain = api.post("/v1/detect", files={"file": ("wide.jpg", data, "image/jpeg")}, headers=auth(key))
    tiled = api.post(
        "/v1/detect", params={"tiles": "true"}, files={"file": ("wide.jpg", data, "image/jpeg")}, headers=auth(key)
    )
    assert plain.status_code == tiled.status_code == 200, tiled.text
    body = tiled.json()
    assert body["image"] == {"width": 320, "height": 200}
    assert body["detections"]
    for d in body["detections"]:
        b = d["box"]
        assert 0 <= b["x1"] < b["x2"] <= 320 and 0 <= b["y1"] < b["y2"] <= 200
    as_boxes = lambda r: sorted((d["class_key"], round(d["box"]["x1"])) for d in r.json()["detections"])  # noqa: E731
    assert as_boxes(tiled) != as_boxes(plain)  # the windows saw more than the whole-image pass


def test_inspection_photo_with_tiles_stores_findings_in_original_pixels(api, ctx, make_key) -> None:
    from urllib.parse import quote

    key = make_key("420000", "service")
    ctx.settings = ctx.settings.with_(tile_window=128)
    r = api.post(
        f"/v1/inspections/{quote('鄂应急检〔2026〕9号', safe='')}/photos",
        headers=auth(key),
        data={"enterprise_id": "91420100MA4K", "sector": "general", "tiles": "true"},
        files={"file": ("wide.jpg", photo(320, 200, seed=4), "image/jpeg")},
    )
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["detections"]
    for d in body["detections"]:
        b = d["box"]
        assert 0 <= b["x1"] < b["x2"] <= 320 and 0 <= b["y1"] < b["y2"] <= 200
