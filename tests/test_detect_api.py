"""POST /v1/detect and /v1/detect/batch against a tiny registered model (random weights, imgsz 64)."""

from __future__ import annotations

import io
import json
import logging

from PIL import Image

from hazardlens.audit import reset_request_id, set_request_id
from tests.fixtures.core import auth
from tests.fixtures.serving import photo


def _post(api, key, data=None, params=None, form=None, headers=None, name="site.jpg"):  # type: ignore[no-untyped-def]
    return api.post(
        "/v1/detect",
        params=params or {},
        data=form or {},
        files={"file": (name, data if data is not None else photo(seed=1), "image/jpeg")},
        headers={**auth(key), **(headers or {})},
    )


def test_detect_answers_the_documented_shape_in_oriented_pixels(api, make_key) -> None:
    key = make_key("420000", "service")
    r = _post(api, key)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == {"name": "hazardlens", "version": "1"}
    assert body["image"] == {"width": 160, "height": 120}
    assert set(body["timing_ms"]) == {"decode", "inference", "total"}
    assert body["detections"], "the tiny model finds boxes on textured photos"
    for d in body["detections"]:
        assert d["class_key"] in {"head", "person"}
        assert set(d) >= {
            "class_key",
            "name_zh",
            "name_en",
            "confidence",
            "box",
            "inspection_items",
            "legal_basis",
            "severity",
        }
        b = d["box"]
        assert 0 <= b["x1"] < b["x2"] <= 160 and 0 <= b["y1"] < b["y2"] <= 120
    head = next(d for d in body["detections"] if d["class_key"] == "head")
    assert head["name_zh"] == "未戴安全帽的头部" and head["inspection_items"] and head["legal_basis"]
    assert r.headers["x-request-id"]


def test_exif_rotated_photo_is_answered_in_the_rotated_frame(api, make_key) -> None:
    key = make_key("420000", "service")
    # Stored 160x120 with orientation 6 (rotate 90): a person sees, and boxes are in, 120x160.
    r = _post(api, key, photo(160, 120, seed=2, exif_orientation=6))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["image"] == {"width": 120, "height": 160}
    assert body["detections"]
    for d in body["detections"]:
        assert d["box"]["x2"] <= 120 and d["box"]["y2"] <= 160
    tall = [d for d in body["detections"] if d["box"]["y2"] - d["box"]["y1"] > 120]
    assert tall, "some box spans more than the unrotated height, so boxes really are in the rotated frame"


def test_sector_filters_classes_form_or_query(api, make_key) -> None:
    key = make_key("420000", "service")
    everything = {d["class_key"] for d in _post(api, key).json()["detections"]}
    assert everything == {"head", "person"}
    confined = _post(api, key, form={"sector": "confined_space"}).json()["detections"]
    assert {d["class_key"] for d in confined} == {"head"}  # a person is no confined-space class
    assert _post(api, key, params={"sector": "dust"}).json()["detections"] == []
    bad = _post(api, key, form={"sector": "mining"})
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "unknown_sector"


def test_conf_threshold_form_or_query(api, make_key) -> None:
    key = make_key("420000", "service")
    assert _post(api, key, params={"conf": "1.0"}).json()["detections"] == []
    assert _post(api, key, form={"conf": "1.0"}).json()["detections"] == []
    low = _post(api, key, params={"conf": "0.01"}).json()["detections"]
    assert len(low) >= len(_post(api, key).json()["detections"]) > 0
    out_of_range = _post(api, key, form={"conf": "1.5"})
    assert out_of_range.status_code == 422 and out_of_range.json()["error"]["code"] == "invalid"


def test_pinned_and_unknown_model_versions(api, make_key) -> None:
    key = make_key("420000", "service")
    assert _post(api, key, form={"model": "1"}).json()["model"]["version"] == "1"
    missing = _post(api, key, params={"model": "99"})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"


def test_annotated_evidence_image(api, make_key) -> None:
    key = make_key("420000", "service")
    for kwargs in ({"params": {"annotated": "true"}}, {"headers": {"Accept": "image/jpeg"}}):
        r = _post(api, key, photo(160, 120, seed=3, exif_orientation=6), **kwargs)
        assert r.status_code == 200
        assert r.headers["content-type"] == "image/jpeg"
        assert r.headers["x-model-version"] == "hazardlens:1" and int(r.headers["x-detections"]) > 0
        img = Image.open(io.BytesIO(r.content))
        assert img.size == (120, 160)  # drawn on the oriented photo
        plain = Image.open(io.BytesIO(photo(160, 120, seed=3))).transpose(Image.Transpose.ROTATE_270)
        assert img.convert("RGB").tobytes() != plain.convert("RGB").tobytes()  # something was drawn


def test_cjk_labels_render_with_real_glyphs() -> None:
    """The bundled font has the glyphs: a Chinese label is not drawn as identical 'tofu' boxes."""
    from PIL import ImageDraw, ImageFont

    from hazardlens.models.ultralytics_env import cjk_font_path

    font = ImageFont.truetype(str(cjk_font_path()), 32)
    shots = []
    for ch in "隐患灭":
        canvas = Image.new("L", (40, 40))
        ImageDraw.Draw(canvas).text((2, 2), ch, font=font, fill=255)
        shots.append(canvas.tobytes())
    assert len(set(shots)) == 3 and all(any(s) for s in shots)


def test_batch_answers_each_file_in_its_slot(api, make_key) -> None:
    key = make_key("420000", "service")
    files = [
        ("files", ("a.jpg", photo(seed=4), "image/jpeg")),
        ("files", ("notes.txt", b"not an image at all", "text/plain")),
        ("files", ("c.png", photo(seed=5, fmt="PNG"), "image/png")),
    ]
    r = api.post("/v1/detect/batch", files=files, data={"sector": "general"}, headers=auth(key))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"]["version"] == "1"
    results = body["results"]
    assert [x["index"] for x in results] == [0, 1, 2]
    assert results[0]["detections"] and results[2]["detections"]
    assert results[1]["error"]["code"] == "unsupported_media_type" and results[1].get("detections") is None
    models = api.get("/v1/models", headers=auth(key)).json()["loaded"]
    assert models[0]["images_run"] >= 2


def test_batch_over_sixteen_files_is_refused(api, make_key) -> None:
    key = make_key("420000", "service")
    one = photo(32, 32, seed=6)
    r = api.post(
        "/v1/detect/batch", files=[("files", (f"{i}.jpg", one, "image/jpeg")) for i in range(17)], headers=auth(key)
    )
    assert r.status_code == 422
    assert r.json()["error"]["code"] == "too_many_files"


def test_metrics_after_traffic(api, make_key) -> None:
    key = make_key("420000", "service")
    assert _post(api, key).status_code == 200
    assert api.get("/metrics").status_code == 401
    r = api.get("/metrics", headers=auth(key))
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert 'hazardlens_http_request_duration_seconds_count{method="POST",route="/v1/detect",status="200"}' in text
    assert 'hazardlens_inference_duration_seconds_count{model="hazardlens",version="1"}' in text
    assert 'hazardlens_model_requests_total{model="hazardlens",version="1"}' in text
    assert 'hazardlens_batch_queue_depth{model="hazardlens",version="1"} 0.0' in text
    # An unauthorised call is counted under its route template too (never per raw path).
    assert 'route="/metrics",status="401"' in text


def test_json_logs_carry_the_request_id() -> None:
    from hazardlens.serving.logging import JsonFormatter

    record = logging.LogRecord("hazardlens.http", logging.INFO, __file__, 1, "记录 %s", ("鄂应急检〔2026〕3号",), None)
    record.status = 201
    token = set_request_id("rid-123")
    try:
        line = JsonFormatter().format(record)
    finally:
        reset_request_id(token)
    data = json.loads(line)
    assert data["request_id"] == "rid-123" and data["status"] == 201
    assert data["message"] == "记录 鄂应急检〔2026〕3号" and data["level"] == "info"


def test_openapi_is_served_and_written(api, tmp_path) -> None:
    spec = api.get("/openapi.json").json()
    for path in (
        "/v1/detect",
        "/v1/detect/batch",
        "/v1/inspections/{record_no}/photos",
        "/v1/models",
        "/v1/findings/{finding_id}/review",
        "/metrics",
    ):
        assert path in spec["paths"]
    from hazardlens.serving.openapi import main

    out = main([str(tmp_path / "openapi.json")])
    written = json.loads(out.read_text(encoding="utf-8"))
    assert written["paths"].keys() == spec["paths"].keys()
