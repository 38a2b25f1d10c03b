"""Annotation format readers, class maps and writers (hazardlens.formats)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml
from PIL import Image

from hazardlens.detections import Box
from hazardlens.errors import Conflict, Invalid
from hazardlens.formats import (
    IGNORE,
    ClassMap,
    ExportItem,
    ImportRecord,
    Issue,
    class_names,
    extract_group,
    image_size,
    read_coco,
    read_labelstudio,
    read_voc,
    read_yolo,
    write_coco,
    write_labelstudio,
    write_yolo,
)
from tests.fixtures.formats import write_image

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "class_maps"


def _shared_data() -> Path | None:
    env = os.environ.get("HAZARDLENS_SHARED_DATA")
    path = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"
    return path if path.is_dir() else None


SHARED = _shared_data()
needs_shared = pytest.mark.skipif(SHARED is None, reason="shared/data not present")


def _by_name(records: list[ImportRecord]) -> dict[str, ImportRecord]:
    return {r.file_name: r for r in records}


def _corners(record: ImportRecord) -> list[tuple[str, float, float, float, float]]:
    """Sorted boxes, rounded so that float noise from percent/normalised maths compares equal."""
    return sorted((b.class_key, round(b.x1, 3), round(b.y1, 3), round(b.x2, 3), round(b.y2, 3)) for b in record.boxes)


def _kinds(issues: list[Issue]) -> list[str]:
    return sorted(i.kind for i in issues)


def _assert_same_boxes(a: list[ImportRecord], b: list[ImportRecord], tol: float = 1.0) -> None:
    ra, rb = _by_name(a), _by_name(b)
    assert sorted(ra) == sorted(rb)
    for name, rec in ra.items():
        ca, cb = _corners(rec), _corners(rb[name])
        assert len(ca) == len(cb), name
        for x, y in zip(ca, cb, strict=True):
            assert x[0] == y[0]
            assert all(abs(p - q) <= tol for p, q in zip(x[1:], y[1:], strict=True)), (name, x, y)
    assert {n for n, r in ra.items() if r.is_negative} == {n for n, r in rb.items() if r.is_negative}


# --- COCO ------------------------------------------------------------------------------------
def test_coco_reader_repairs_and_refuses_messy_file(fmt_coco_messy: tuple[Path, Path]) -> None:
    records, report = read_coco(*fmt_coco_messy)
    recs = _by_name(records)
    assert sorted(recs) == ["a.jpg", "b.png", "c.jpg"]
    assert _corners(recs["a.jpg"]) == [("helmet", 90, 70, 100, 80), ("person", 10, 20, 40, 60)]
    assert _corners(recs["b.png"]) == [("helmet", 10, 10, 30, 30)]
    assert (recs["b.png"].width, recs["b.png"].height) == (64, 48)  # the file wins over the json
    assert any("60x48" in p for p in recs["b.png"].problems)
    assert recs["c.jpg"].is_negative and not recs["a.jpg"].is_negative
    assert (report.images, report.boxes, report.negatives) == (3, 3, 1)

    assert report.count("string_bbox") == 1
    assert any('"30", "40" given as strings' in i.message for i in report.repaired if i.kind == "string_bbox")
    assert report.count("clipped") == 1 and report.count("string_id") == 1
    assert report.count("duplicate_box") == 1 and report.count("path_stripped") == 1
    assert _kinds(report.refused_boxes) == sorted(
        [
            "zero_area",
            "missing_image",
            "image_refused",
            "unknown_category",
            "bad_bbox",
            "crowd",
            "outside",
            "image_refused",
        ]
    )
    assert _kinds(report.refused_images) == ["bad_image", "duplicate_file_name", "duplicate_id"]
    assert sorted(report.missing_files) == ["missing.jpg", "passwd"]
    assert report.unused_categories == ["objects"]
    assert sorted(i.where for i in report.warnings if i.kind == "unlisted_file") == ["unlisted.jpg"]
    assert report.count("size_mismatch") == 1 and report.count("bad_category") == 1
    summary = report.as_dict()
    json.dumps(summary)  # JSON-ready for the API
    assert summary["refused_boxes"]["image_refused"]["count"] == 2


def test_coco_reader_refuses_non_coco_files(tmp_path: Path) -> None:
    (tmp_path / "x.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(Invalid):
        read_coco(tmp_path / "x.json", tmp_path)
    (tmp_path / "y.json").write_text(json.dumps({"images": [], "categories": []}), encoding="utf-8")
    with pytest.raises(Invalid, match="annotations"):
        read_coco(tmp_path / "y.json", tmp_path)


def test_coco_round_trip(fmt_coco_messy: tuple[Path, Path], tmp_path: Path) -> None:
    records, _ = read_coco(*fmt_coco_messy)
    result = write_coco([ExportItem.from_record(r) for r in records], tmp_path / "out", ["person", "helmet"])
    doc = json.loads(result.path.read_text(encoding="utf-8"))
    assert [im["id"] for im in doc["images"]] == [1, 2, 3]
    assert doc["categories"][:2] == [
        {"id": 1, "name": "person", "supercategory": "none"},
        {"id": 2, "name": "helmet", "supercategory": "none"},
    ]
    ann = next(a for a in doc["annotations"] if a["category_id"] == 1)
    assert ann["bbox"] == [10, 20, 30, 40] and ann["area"] == 1200 and ann["iscrowd"] == 0
    assert (result.images, result.boxes, result.negatives) == (3, 3, 1)
    again, report = read_coco(result.path, tmp_path / "out" / "images")
    assert not report.refused_boxes and not report.repaired and not report.missing_files
    _assert_same_boxes(records, again)


# --- YOLO ------------------------------------------------------------------------------------
def test_yolo_reader_messy_dataset(fmt_yolo_messy: Path) -> None:
    records, report = read_yolo(fmt_yolo_messy)
    recs = _by_name(records)
    assert sorted(recs) == ["a.jpg", "b.png", "empty.jpg", "neg.jpg"]
    assert _corners(recs["a.jpg"]) == [
        ("helmet", 20, 10, 60, 30),
        ("helmet", 170, 40, 200, 60),
        ("person", 80, 30, 120, 70),
    ]
    assert _corners(recs["b.png"]) == [("helmet", 16, 16, 48, 48)]
    assert recs["a.jpg"].split == "train" and recs["b.png"].split == "val"
    assert recs["neg.jpg"].is_negative and recs["empty.jpg"].is_negative
    assert (report.images, report.boxes, report.negatives) == (4, 4, 2)
    refused = {i.where: i.kind for i in report.refused_boxes}
    assert refused == {
        "labels/train/a.txt:2": "malformed_line",
        "labels/train/a.txt:3": "unknown_class",
        "labels/train/a.txt:6": "zero_area",
        "labels/train/a.txt:7": "malformed_line",
        "labels/train/a.txt:9": "not_normalised",
    }
    for issue in report.refused_boxes:  # a curator can find each refused line by its number
        if issue.kind != "zero_area":
            assert issue.message.startswith(f"line {issue.where.rsplit(':', 1)[1]}:")
    assert recs["a.jpg"].refused_boxes == 5
    assert _kinds(report.repaired) == ["clipped", "float_class", "polygon_to_box"]
    assert _kinds(report.refused_images) == ["unreadable"]
    assert report.missing_files == ["labels/train/orphan.txt (label without image)"]
    assert report.unused_categories == ["head"]


def test_yolo_names_from_classes_txt_and_flat_layout(tmp_path: Path) -> None:
    write_image(tmp_path / "x.jpg", 100, 50)
    (tmp_path / "x.txt").write_text("1 0.5 0.5 0.5 0.5\n", encoding="utf-8")
    (tmp_path / "classes.txt").write_text("fire\nsmoke\n", encoding="utf-8")
    records, report = read_yolo(tmp_path)
    assert [(r.file_name, _corners(r)) for r in records] == [("x.jpg", [("smoke", 25, 12.5, 75, 37.5)])]
    assert report.unused_categories == ["fire"]


def test_yolo_uses_exif_oriented_size(tmp_path: Path) -> None:
    # Stored 80x40, EXIF orientation 6 (rotate 90): the oriented image is 40x80, as Ultralytics sees it.
    write_image(tmp_path / "images/r.jpg", 80, 40, exif_orientation=6)
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels/r.txt").write_text("0 0.5 0.5 1 1\n", encoding="utf-8")
    assert image_size(tmp_path / "images/r.jpg") == (40, 80)
    records, _ = read_yolo(tmp_path, class_names=["person"])
    assert _corners(records[0]) == [("person", 0, 0, 40, 80)]


def test_yolo_round_trip(fmt_yolo_messy: Path, tmp_path: Path) -> None:
    records, _ = read_yolo(fmt_yolo_messy)
    out = tmp_path / "export"
    result = write_yolo([ExportItem.from_record(r) for r in records], out, ["person", "helmet", "head"])
    data = yaml.safe_load((out / "data.yaml").read_text(encoding="utf-8"))
    assert data["path"] == str(out.resolve())
    assert (data["train"], data["val"]) == ("images/train", "images/val") and "test" not in data
    assert data["names"] == {0: "person", 1: "helmet", 2: "head"}
    assert (out / "labels/val/empty.txt").read_text() == "" and (out / "labels/train/neg.txt").read_text() == ""
    assert (out / "labels/val/b.txt").read_text() == "1 0.500000 0.500000 0.500000 0.500000\n"
    assert (out / "images/val/b.png").read_bytes() == (fmt_yolo_messy / "images/val/b.png").read_bytes()
    assert (result.images, result.boxes, result.negatives) == (4, 4, 2)
    again, report = read_yolo(out)
    assert not report.refused_boxes and not report.repaired
    _assert_same_boxes(records, again)
    assert {r.file_name: r.split for r in again} == {r.file_name: r.split for r in records}
    with pytest.raises(Conflict):
        write_yolo([ExportItem.from_record(r) for r in records], out, ["person", "helmet", "head"])


def test_writers_validate_before_writing(tmp_path: Path) -> None:
    src = write_image(tmp_path / "a.jpg", 20, 20)
    item = ExportItem("a.jpg", src, 20, 20, [Box("ladle", 1, 1, 5, 5)])
    with pytest.raises(Invalid, match="ladle"):
        write_yolo([item], tmp_path / "y", ["person"])
    with pytest.raises(Invalid, match="ladle"):
        write_coco([item], tmp_path / "c", ["person"])
    assert not (tmp_path / "y").exists() and not (tmp_path / "c").exists()
    with pytest.raises(Invalid, match="safe"):
        write_yolo([ExportItem("../a.jpg", src, 20, 20, [])], tmp_path / "y", ["person"])

    def render(dest: Path) -> None:  # the library streams images from its store this way
        Image.new("RGB", (20, 20)).save(dest)

    write_yolo([ExportItem("cam/b.jpg", render, 20, 20, [], split="valid")], tmp_path / "y", ["person"])
    assert (tmp_path / "y/images/val/cam/b.jpg").is_file() and (tmp_path / "y/labels/val/cam/b.txt").is_file()


# --- VOC -------------------------------------------------------------------------------------
def test_voc_reader_messy_dataset(fmt_voc_messy: Path) -> None:
    records, report = read_voc(fmt_voc_messy)
    recs = _by_name(records)
    assert sorted(recs) == ["a.jpg", "b.jpg", "c.jpg"]
    assert _corners(recs["a.jpg"]) == [("helmet", 90, 70, 100, 80), ("person", 10, 20, 40, 60)]
    assert _corners(recs["c.jpg"]) == [("person", 0.5, 0.5, 10.5, 20.5)]
    assert recs["b.jpg"].is_negative and (report.images, report.boxes, report.negatives) == (3, 3, 1)
    assert _kinds(report.refused_boxes) == ["bad_bbox", "zero_area"]
    assert _kinds(report.refused_images) == ["bad_xml"]
    assert report.missing_files == ["e.jpg"]
    assert report.count("size_from_file") == 1 and report.count("file_name") == 1
    assert report.count("size_mismatch") == 1 and report.count("clipped") == 1
    assert [i.where for i in report.warnings if i.kind == "unlisted_file"] == ["JPEGImages/f.jpg"]


# --- Label Studio ----------------------------------------------------------------------------
def test_labelstudio_reader_messy_tasks(fmt_labelstudio_messy: tuple[Path, Path]) -> None:
    records, report = read_labelstudio(*fmt_labelstudio_messy)
    recs = _by_name(records)
    assert sorted(recs) == ["a.jpg", "c.jpg", "imgs/b.jpg"]
    assert _corners(recs["a.jpg"]) == [("helmet", 180, 90, 200, 100), ("person", 20, 20, 80, 60)]
    assert _corners(recs["c.jpg"]) == [("helmet", 10, 10, 30, 50)]
    assert recs["imgs/b.jpg"].is_negative and report.negatives == 1
    assert _kinds(report.refused_boxes) == ["bad_result", "bad_result"]
    assert _kinds(report.refused_images) == ["not_annotated"]
    assert report.missing_files == ["/data/upload/1/missing.jpg"]
    assert _kinds(report.repaired) == ["clipped", "polygon_to_box"]
    assert report.count("size_mismatch") == 1 and report.count("ignored_result") == 1


def test_labelstudio_writer_percent_coordinates(tmp_path: Path) -> None:
    images = tmp_path / "img"
    write_image(images / "cam 1/a.jpg", 200, 100)
    write_image(images / "n.jpg", 50, 50)
    write_image(images / "u.jpg", 50, 50)
    items = [
        ExportItem(
            "cam 1/a.jpg",
            None,
            200,
            100,
            [Box("helmet", 20, 10, 70, 60)],
            predictions=[Box("helmet", 22, 12, 72, 62, 0.9), Box("head", 0, 0, 10, 10, 0.5)],
        ),
        ExportItem("n.jpg", None, 50, 50, []),  # verified negative
        ExportItem("u.jpg", None, 50, 50, None, predictions=[]),  # not labelled yet
    ]
    out = tmp_path / "tasks.json"
    result = write_labelstudio(items, out, "/data/local-files/?d=", model_version="yolo-v3")
    tasks = json.loads(out.read_text(encoding="utf-8"))
    assert tasks[0]["data"]["image"] == "/data/local-files/?d=cam%201/a.jpg"
    (res,) = tasks[0]["annotations"][0]["result"]
    assert res["type"] == "rectanglelabels" and (res["original_width"], res["original_height"]) == (200, 100)
    assert res["value"]["rectanglelabels"] == ["helmet"]
    assert [res["value"][k] for k in ("x", "y", "width", "height")] == pytest.approx([10, 10, 25, 50])
    (pred,) = tasks[0]["predictions"]
    assert pred["model_version"] == "yolo-v3" and pred["score"] == pytest.approx(0.7)
    assert [r["score"] for r in pred["result"]] == pytest.approx([0.9, 0.5])
    assert tasks[1]["annotations"] == [{"result": []}]
    assert "annotations" not in tasks[2]
    assert (result.images, result.boxes, result.negatives) == (3, 1, 1)
    # Label Studio can hand the same file back: the labelled task reads as it was written.
    records, report = read_labelstudio(out, images)
    assert sorted(r.file_name for r in records) == ["cam 1/a.jpg", "n.jpg"]
    assert _corners(_by_name(records)["cam 1/a.jpg"]) == [("helmet", 20, 10, 70, 60)]
    assert _kinds(report.refused_images) == ["not_annotated"]


# --- class maps ------------------------------------------------------------------------------
def test_class_map_unmapped_and_apply(tmp_path: Path) -> None:
    path = tmp_path / "map.yaml"
    path.write_text(
        "mapping:\n  hat: helmet\n  blur: ignore\n  0: fire\n"
        "camera_regex: 'cam(\\d+)-(\\d+)'\nsite_regex: '^([a-z]+)/'\n",
        encoding="utf-8",
    )
    cmap = ClassMap.load(path)
    records = [
        ImportRecord(Path("x"), "plant/cam3-7_001.jpg", 10, 10, [Box("hat", 0, 0, 5, 5), Box("blur", 1, 1, 2, 2)]),
        ImportRecord(Path("y"), "plant/other.jpg", 10, 10, [Box("blur", 1, 1, 2, 2)]),
        ImportRecord(Path("z"), "z.jpg", 10, 10, [Box("person", 1, 1, 2, 2), Box("0", 1, 1, 2, 2)]),
    ]
    assert cmap.unmapped(class_names(records)) == ["person"]
    assert cmap.taxonomy_keys == {"helmet", "fire"}
    with pytest.raises(Invalid) as err:
        cmap.apply(records)
    assert err.value.details == {"unmapped": ["person"]}
    mapped = cmap.apply(records[:2])
    assert [b.class_key for b in mapped[0].boxes] == ["helmet"] and mapped[0].ignored_boxes == 1
    assert (mapped[0].camera_id, mapped[0].site_id) == ("3.7", "plant")
    assert mapped[1].camera_id is None and not mapped[1].boxes and not mapped[1].is_negative
    assert records[0].boxes[0].class_key == "hat"  # inputs untouched


def test_class_map_load_errors(tmp_path: Path) -> None:
    for text in (
        "mapping: [a, b]\n",
        "mapping:\n  a: helmet\ncamera_regex: '('\n",
        "mapping:\n  a: helmet\ncolour: red\n",
        "mapping:\n  a: 3\n",
    ):
        (tmp_path / "m.yaml").write_text(text, encoding="utf-8")
        with pytest.raises(Invalid):
            ClassMap.load(tmp_path / "m.yaml")


def test_extract_group_sfchd_camera() -> None:
    regex = ClassMap.load(CONFIGS / "sfchd.yaml").camera_regex
    name = "192_168_2_22_caiji_1_22_jpg.rf.Lw97d12QDxn2mPOkH1Sd.jpg"
    assert extract_group(name, regex) == "192.168.2.22"
    assert extract_group(f"train/{name}", regex) == "192.168.2.22"
    assert extract_group("fire-image_105.jpg", regex) is None
    assert extract_group("site-A_cam.jpg", r"site-[A-Z]") == "site-A"  # no groups: whole match


def test_shipped_class_maps_target_the_taxonomy(taxonomy) -> None:  # type: ignore[no-untyped-def]
    sfchd = ClassMap.load(CONFIGS / "sfchd.yaml")
    fire = ClassMap.load(CONFIGS / "fire_smoke.yaml")
    assert sfchd.mapping["objects"] == IGNORE and sfchd.mapping["blur_head"] == IGNORE
    assert sfchd.taxonomy_keys == {"person", "helmet", "head", "safety_clothes", "self_clothes"}
    assert fire.taxonomy_keys == {"fire", "smoke"}
    assert (sfchd.taxonomy_keys | fire.taxonomy_keys) <= set(taxonomy.class_keys())


# --- real data -------------------------------------------------------------------------------
@needs_shared
def test_real_sfchd_ppe() -> None:
    assert SHARED is not None
    root = SHARED / "sfchd-ppe"
    records, report = read_coco(root / "annotations.coco.json", root / "images")
    assert (report.images, report.boxes, report.negatives) == (656, 2779, 0)
    assert report.count("string_bbox") == 26 and len(report.repaired) == 26
    assert not report.refused_boxes and not report.refused_images and not report.missing_files
    assert report.unused_categories == ["objects"]
    cmap = ClassMap.load(CONFIGS / "sfchd.yaml")
    assert cmap.unmapped(class_names(records)) == []
    mapped = cmap.apply(records)
    assert len({r.camera_id for r in mapped}) == 20 and all(r.camera_id for r in mapped)
    assert {b.class_key for r in mapped for b in r.boxes} == cmap.taxonomy_keys
    assert sum(len(r.boxes) for r in mapped) == 2779 - 52 - 46  # blur_head, blur_clothes dropped


@needs_shared
def test_real_fire_smoke() -> None:
    assert SHARED is not None
    records, report = read_yolo(SHARED / "fire-smoke")
    assert (report.images, report.negatives) == (1000, 9)
    assert not report.refused_boxes and not report.refused_images and not report.missing_files
    assert set(report.class_counts) == {"fire", "smoke"}
    assert ClassMap.load(CONFIGS / "fire_smoke.yaml").unmapped(class_names(records)) == []


GARBAGE: list[object] = [None, "", "x", -1, 0, [], {}, True, "NaN", [1, 2], {"a": 1}, 1e300]


def test_readers_never_crash_on_garbage_values(tmp_path: Path) -> None:
    """Every field of every format replaced by junk: the readers answer with a report, not a traceback."""
    write_image(tmp_path / "a.jpg", 40, 30)
    image = {"id": 1, "file_name": "a.jpg", "width": 40, "height": 30}
    ann = {"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 10, 10], "iscrowd": 0}
    cat = {"id": 1, "name": "person"}
    for entry in (image, ann, cat):
        for key in list(entry):
            for junk in GARBAGE:
                doc = {"images": [dict(image)], "annotations": [dict(ann)], "categories": [dict(cat)]}
                target = {id(image): doc["images"][0], id(ann): doc["annotations"][0], id(cat): doc["categories"][0]}
                target[id(entry)][key] = junk
                (tmp_path / "c.json").write_text(json.dumps(doc), encoding="utf-8")
                _, report = read_coco(tmp_path / "c.json", tmp_path)
                assert report.boxes + len(report.refused_boxes) == 1, (key, junk)  # never dropped silently
    (tmp_path / "a.txt").write_text(
        "\n".join(
            [
                "0 nan 0.5 0.1 0.1",
                "0 inf 0.5 0.1 0.1",
                "-1 0.5 0.5 0.1 0.1",
                "1e9 0.5 0.5 0.1 0.1",
                "0 0.5 0.5 0.1 0.1 0.9",
                "0 1 2 3 4 5 6",
                "\x00\x01",
                "0 0.5 0.5 -0.1 0.1",
                "0 0.5 0.5 0.1 0.1",
            ]
        ),
        encoding="utf-8",
    )
    records, report = read_yolo(tmp_path, class_names=["person"])
    assert report.boxes == 1 and records[0].refused_boxes == 8
    rect = {
        "type": "rectanglelabels",
        "original_width": 40,
        "original_height": 30,
        "value": {"x": 1, "y": 1, "width": 10, "height": 10, "rotation": 0, "rectanglelabels": ["person"]},
    }
    for key in ["type", "original_width", "value"]:
        for junk in GARBAGE:
            for where in ("result", "value"):
                item = json.loads(json.dumps(rect))
                if where == "value" and isinstance(item["value"], dict):
                    item["value"]["x"] = junk
                else:
                    item[key] = junk
                tasks = [
                    {"data": {"image": "a.jpg"}, "annotations": [{"result": [item]}]},
                    {"data": junk, "annotations": junk},
                    junk,
                ]
                (tmp_path / "t.json").write_text(json.dumps(tasks), encoding="utf-8")
                read_labelstudio(tmp_path / "t.json", tmp_path)
