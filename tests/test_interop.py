"""Issue 14: our exports open as is in the tools curators and engineers use (Ultralytics, pycocotools,
FiftyOne's layout, CVAT, Pascal VOC through torchvision), and Label Studio works both ways (ML
backend and webhook). Here its payloads are written by hand after its documentation; the real Label
Studio server is started in tests/test_labelstudio_live.py (slow)."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from hazardlens.context import Context
from hazardlens.detections import Box
from hazardlens.errors import Invalid
from hazardlens.formats import ExportItem, read_cvat, write_cvat
from hazardlens.labeling.exporters import export_library
from tests.fixtures.core import auth
from tests.fixtures.dataset_versions import add_sample, admin_principal
from tests.fixtures.formats import write_image
from tests.fixtures.training import no_network, scene


def _library(ctx: Context, n: int = 6) -> list[int]:
    principal = admin_principal(ctx)
    ids = []
    for i in range(n):
        data, boxes = scene(2000 + i)
        ids.append(add_sample(ctx, principal, seed=i, data=data, boxes=boxes))
    return ids


def _export(ctx: Context, fmt: str, out: Path, **kwargs: Any) -> Any:
    with ctx.db.session() as s:
        return export_library(ctx, s, admin_principal(ctx), fmt, out, **kwargs)


# --- YOLO: Ultralytics and FiftyOne ---------------------------------------------------------------


def test_a_library_yolo_export_names_val_and_says_it_is_not_held_out(ctx: Context, tmp_path: Path) -> None:
    _library(ctx, 3)
    result = _export(ctx, "yolo", tmp_path / "y")
    text = result.path.read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    assert result.path.name == "data.yaml"
    assert data["train"] == "images/train" and data["val"] == "images/train"
    assert "No held-out split" in text
    assert data["names"] == {0: "fire", 1: "accumulated_dust"}


def test_fiftyone_layout_is_a_flag(ctx: Context, tmp_path: Path) -> None:
    """FiftyOne's YOLOv5 reader opens ``<dir>/dataset.yaml`` and the ``val`` split by default; the
    images of a split under ``images/<split>`` and labels under ``labels/<split>``."""
    _library(ctx, 2)
    result = _export(ctx, "yolo", tmp_path / "fo", yaml_name="dataset.yaml")
    assert result.path == tmp_path / "fo" / "dataset.yaml" and not (tmp_path / "fo" / "data.yaml").exists()
    data = yaml.safe_load(result.path.read_text(encoding="utf-8"))
    images = sorted((tmp_path / "fo" / data["val"]).iterdir())
    assert len(images) == 2
    for image in images:
        assert (tmp_path / "fo" / "labels" / "train" / image.name).with_suffix(".txt").is_file()
    with pytest.raises(Invalid):
        _export(ctx, "yolo", tmp_path / "bad", yaml_name="../x.yaml")


@pytest.mark.slow
def test_ultralytics_trains_on_the_yolo_export_as_is(ctx: Context, tmp_path: Path) -> None:
    """`yolo detect train data=<export>/data.yaml`, one epoch, offline."""
    from hazardlens.models.ultralytics_env import prepare_ultralytics

    prepare_ultralytics()
    from ultralytics import YOLO

    _library(ctx, 6)
    result = _export(ctx, "yolo", tmp_path / "export")
    with no_network() as attempts:
        model = YOLO("yolo11n.yaml")
        model.train(
            data=str(result.path),
            epochs=1,
            imgsz=64,
            batch=2,
            workers=0,
            device="cpu",
            plots=False,
            project=str(tmp_path / "runs"),
            name="one",
            exist_ok=True,
            amp=False,
            verbose=False,
        )
    assert attempts == []
    assert (tmp_path / "runs" / "one" / "weights" / "last.pt").is_file()
    assert model.trainer is not None and model.trainer.validator is not None  # val ran on the export


# --- COCO: pycocotools -----------------------------------------------------------------------------


def test_pycocotools_reads_and_scores_our_coco_export(ctx: Context, tmp_path: Path) -> None:
    pytest.importorskip("pycocotools")
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    ids = _library(ctx, 4)
    result = _export(ctx, "coco", tmp_path / "c")
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(result.path))
    assert len(gt.getImgIds()) == len(ids) and len(gt.getAnnIds()) == 2 * len(ids)
    for img in gt.loadImgs(gt.getImgIds()):
        assert (result.path.parent / "images" / img["file_name"]).is_file() or (
            result.path.parent / img["file_name"]
        ).is_file()
    anns = gt.loadAnns(gt.getAnnIds())

    def ap(dets: list[dict[str, Any]]) -> float:
        with contextlib.redirect_stdout(io.StringIO()):
            ev = COCOeval(gt, gt.loadRes(dets), "bbox")
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        return float(ev.stats[0])

    perfect = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": list(a["bbox"]), "score": 0.9}
        for a in anns
    ]
    assert ap(perfect) == pytest.approx(1.0)
    # One fire box of four moved right by its whole width: that box becomes a false positive and its
    # object a miss at every IoU threshold. Fire: 3 of 4 found, the wrong one ranked last -> AP
    # 0.75 under COCO's 101-point interpolation; dust stays 1.0; mean over the two classes 0.875.
    moved = [dict(d, bbox=list(d["bbox"])) for d in perfect]
    fire = gt.getCatIds(catNms=["fire"])[0]
    first = next(d for d in moved if d["category_id"] == fire)
    first["bbox"][0] += first["bbox"][2] + 1
    first["score"] = 0.5
    assert ap(moved) == pytest.approx(0.8762, abs=0.01)


# --- CVAT for images 1.1 ---------------------------------------------------------------------------


def _items(tmp_path: Path) -> list[ExportItem]:
    a = write_image(tmp_path / "src" / "a.jpg", 120, 80, seed=1)
    b = write_image(tmp_path / "src" / "b.jpg", 64, 48, seed=2)
    return [
        ExportItem("a.jpg", a, 120, 80, [Box("fire", 10.25, 5.5, 60.75, 40.125), Box("smoke", 0, 0, 119.5, 80)]),
        ExportItem("b.jpg", b, 64, 48, []),
    ]


def test_cvat_round_trip_within_one_pixel(tmp_path: Path) -> None:
    items = _items(tmp_path)
    result = write_cvat(items, tmp_path / "cvat", ["fire", "smoke"])
    assert result.path.name == "annotations.xml" and result.images == 2 and result.boxes == 2
    text = result.path.read_text(encoding="utf-8")
    assert "<version>1.1</version>" in text and '<image id="0" name="a.jpg" width="120" height="80">' in text
    records, report = read_cvat(result.path)
    assert not report.refused_images and not report.refused_boxes
    by_name = {r.file_name: r for r in records}
    assert by_name["b.jpg"].boxes == [] and by_name["b.jpg"].is_negative
    for want, got in zip(items[0].boxes or [], by_name["a.jpg"].boxes, strict=True):
        assert got.class_key == want.class_key
        assert max(abs(getattr(got, k) - getattr(want, k)) for k in ("x1", "y1", "x2", "y2")) <= 1.0


def test_cvat_reader_reports_what_it_cannot_take(tmp_path: Path) -> None:
    write_image(tmp_path / "images" / "sub" / "p.jpg", 100, 50, seed=3)
    write_image(tmp_path / "images" / "unlisted.jpg", 10, 10, seed=4)
    (tmp_path / "annotations.xml").write_text(
        """<?xml version="1.0" encoding="utf-8"?>
<annotations><version>1.1</version>
 <meta><task><labels><label><name>fire</name></label><label><name>smoke</name></label></labels></task></meta>
 <image id="0" name="sub/p.jpg" width="100" height="50">
  <box label="fire" xtl="1" ytl="2" xbr="30" ybr="40" occluded="0"/>
  <box label="banana" xtl="5" ytl="5" xbr="9" ybr="9"/>
  <polygon label="fire" points="50,10;70,10;60,30"/>
  <points label="fire" points="1,1"/>
  <box label="fire" xtl="x" ytl="2" xbr="30" ybr="40"/>
 </image>
 <image id="1" name="missing.jpg" width="1" height="1"/>
</annotations>""",
        encoding="utf-8",
    )
    records, report = read_cvat(tmp_path / "annotations.xml")
    [rec] = records
    assert rec.file_name == "sub/p.jpg"
    assert [b.class_key for b in rec.boxes] == ["fire", "banana", "fire"]
    assert (rec.boxes[2].x1, rec.boxes[2].y1, rec.boxes[2].x2, rec.boxes[2].y2) == (50, 10, 70, 30)
    assert [i.kind for i in report.warnings if i.kind == "unknown_label"] == ["unknown_label"]
    assert "smoke" in report.unused_categories
    assert {i.kind for i in report.refused_boxes} == {"bad_result", "bad_bbox"}
    assert report.missing_files == ["missing.jpg"]
    assert any(i.kind == "unlisted_file" for i in report.warnings)


def test_cvat_reader_refuses_entities_and_foreign_roots(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.xml"
    bomb.write_text(
        '<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x "xxxxxxxxxx"><!ENTITY y "&x;&x;&x;">]>'
        "<annotations>&y;</annotations>",
        encoding="utf-8",
    )
    with pytest.raises(Invalid):
        read_cvat(bomb, tmp_path)
    other = tmp_path / "voc.xml"
    other.write_text("<annotation/>", encoding="utf-8")
    with pytest.raises(Invalid, match="not <annotations>"):
        read_cvat(other, tmp_path)


def test_cvat_export_and_import_through_the_library(ctx: Context, tmp_path: Path) -> None:
    from hazardlens.labeling.importers import import_dataset

    _library(ctx, 2)
    result = _export(ctx, "cvat", tmp_path / "cv")
    assert result.path.name == "annotations.xml" and result.images == 2
    principal = admin_principal(ctx, org="310000", name="cvat-admin")
    cmap = tmp_path / "map.yaml"
    cmap.write_text("mapping:\n  fire: fire\n  accumulated_dust: accumulated_dust\n", encoding="utf-8")
    summary = import_dataset(ctx, principal, "cvat", result.path, cmap, sector="general")
    assert summary.images_read == 2 and not summary.refused and summary.boxes == 4


# --- Pascal VOC ------------------------------------------------------------------------------------


def test_voc_export_opens_in_torchvision_and_reads_back_within_one_pixel(ctx: Context, tmp_path: Path) -> None:
    """The devkit layout torchvision's ``VOCDetection`` (a real third-party VOC reader) opens as is;
    a PNG sample is re-encoded, because VOC readers open ``JPEGImages/<id>.jpg``; our reader gets
    every box back within a pixel; a negative is an xml with no object."""
    import io
    import xml.etree.ElementTree as ET

    from PIL import Image
    from torchvision.datasets import VOCDetection

    from hazardlens.formats import read_voc

    principal = admin_principal(ctx)
    ids = _library(ctx, 2)
    png = io.BytesIO()
    Image.new("RGB", (50, 40), (200, 30, 30)).save(png, format="PNG")
    ids.append(add_sample(ctx, principal, seed=90, data=png.getvalue(), boxes=[]))  # a verified negative
    data, _ = scene(77)
    edge = [{"class_key": "fire", "x1": 10.4, "y1": 0.0, "x2": 96.0, "y2": 63.6}]  # touches two borders
    ids.append(add_sample(ctx, principal, seed=91, data=data, boxes=edge))
    result = _export(ctx, "voc", tmp_path / "voc")
    out = tmp_path / "voc"
    assert (result.images, result.boxes, result.negatives) == (4, 5, 1)
    assert (out / "labels.txt").read_text(encoding="utf-8").split() == ["fire", "accumulated_dust"]
    members = (out / "ImageSets" / "Main" / "train.txt").read_text(encoding="utf-8").split()
    assert members == (out / "ImageSets" / "Main" / "trainval.txt").read_text(encoding="utf-8").split()
    assert [int(m.split("_")[0]) for m in members] == ids
    assert sorted(p.suffix for p in (out / "JPEGImages").iterdir()) == [".jpg"] * 4

    # The schema, element by element: integer 1-based corners inside the image.
    for xml in sorted((out / "Annotations").glob("*.xml")):
        top = ET.parse(xml).getroot()
        assert top.tag == "annotation" and top.findtext("filename") == f"{xml.stem}.jpg"
        width, height = int(top.findtext("size/width") or 0), int(top.findtext("size/height") or 0)
        with Image.open(out / "JPEGImages" / f"{xml.stem}.jpg") as im:
            assert im.format == "JPEG" and im.size == (width, height) and top.findtext("size/depth") == "3"
        for obj in top.findall("object"):
            corners = [int(obj.findtext(f"bndbox/{k}") or "") for k in ("xmin", "ymin", "xmax", "ymax")]
            assert 1 <= corners[0] < corners[2] <= width and 1 <= corners[1] < corners[3] <= height
            assert obj.findtext("difficult") == "0" and obj.findtext("name") in ("fire", "accumulated_dust")

    # torchvision's reader: root/VOCdevkit/VOC2012 is the devkit of one year.
    (tmp_path / "tv" / "VOCdevkit").mkdir(parents=True)
    (tmp_path / "tv" / "VOCdevkit" / "VOC2012").symlink_to(out, target_is_directory=True)
    voc = VOCDetection(str(tmp_path / "tv"), year="2012", image_set="train", download=False)
    assert len(voc) == 4
    by_id: dict[int, Any] = {}
    for i in range(len(voc)):
        image, target = voc[i]
        ann = target["annotation"]
        assert image.size == (int(ann["size"]["width"]), int(ann["size"]["height"]))
        objects = ann.get("object", [])
        by_id[int(ann["filename"].split("_")[0])] = objects if isinstance(objects, list) else [objects]
    assert by_id[ids[2]] == []
    [edge_obj] = by_id[ids[3]]
    assert edge_obj["bndbox"] == {"xmin": "11", "ymin": "1", "xmax": "96", "ymax": "64"}

    # Our reader: the same boxes within a pixel, the PNG as a negative.
    records, report = read_voc(out)
    assert not report.refused_images and not report.refused_boxes and not report.missing_files
    got = {int(r.file_name.split("_")[0]): r for r in records}
    assert got[ids[2]].is_negative
    from hazardlens.orm import AnnotationRevision, Sample

    with ctx.db.session() as s:
        for sid in ids:
            rev = s.get(AnnotationRevision, s.get(Sample, sid).current_revision_id)
            want = sorted((b["class_key"], b["x1"], b["y1"], b["x2"], b["y2"]) for b in rev.boxes)
            have = sorted((b.class_key, b.x1, b.y1, b.x2, b.y2) for b in got[sid].boxes)
            assert len(want) == len(have)
            for w, h in zip(want, have, strict=True):
                assert w[0] == h[0] and max(abs(a - b) for a, b in zip(w[1:], h[1:], strict=True)) <= 1.0


def test_voc_reader_refuses_entities_and_oversized_files(tmp_path: Path) -> None:
    from hazardlens.formats import read_voc

    write_image(tmp_path / "JPEGImages" / "a.jpg", 20, 20, seed=1)
    write_image(tmp_path / "JPEGImages" / "b.jpg", 20, 20, seed=2)
    (tmp_path / "Annotations").mkdir()
    (tmp_path / "Annotations" / "a.xml").write_text(
        '<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x "xxxxxxxxxx"><!ENTITY y "&x;&x;&x;">]>'
        "<annotation><filename>a.jpg</filename><object><name>&y;</name></object></annotation>",
        encoding="utf-8",
    )
    (tmp_path / "Annotations" / "b.xml").write_bytes(
        b"<annotation><filename>b.jpg</filename>" + b" " * (4 << 20) + b"</annotation>"
    )
    records, report = read_voc(tmp_path)
    assert records == []
    refused = {i.where: i.message for i in report.refused_images}
    assert set(refused) == {"Annotations/a.xml", "Annotations/b.xml"}
    assert "larger than" in refused["Annotations/b.xml"]


# --- Label Studio: the export points at our images ---------------------------------------------------


def test_labelstudio_export_carries_sample_ids_and_our_image_urls(ctx: Context, tmp_path: Path) -> None:
    ids = _library(ctx, 2)
    local = _export(ctx, "labelstudio", tmp_path / "ls1")
    tasks = json.loads(local.path.read_text(encoding="utf-8"))
    assert [t["data"]["sample_id"] for t in tasks] == ids
    assert all(t["data"]["image"].startswith("/data/local-files/?d=images/") for t in tasks)
    ours = _export(ctx, "labelstudio", tmp_path / "ls2", sample_url_prefix="http://host:8000/v1/samples/")
    tasks = json.loads(ours.path.read_text(encoding="utf-8"))
    assert [t["data"]["image"] for t in tasks] == [f"http://host:8000/v1/samples/{i}/image" for i in ids]
    with pytest.raises(Invalid):
        _export(ctx, "labelstudio", tmp_path / "ls3", sample_url_prefix="javascript:alert(1)")


# --- Label Studio: ML backend and webhook over HTTP --------------------------------------------------

CONFIG = """<View>
  <Image name="photo" value="$picture" zoom="true"/>
  <RectangleLabels name="hazards" toName="photo">
    <Label value="person" background="red"/>
    <Label value="Head" background="blue"/>
    <Label value="安全帽（已佩戴）"/>
    <Label value="banana"/>
  </RectangleLabels>
</View>"""


def _basic(key: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"labelstudio:{key}".encode()).decode()}


def _photo_sample(ctx: Context, org: str = "420000", seed: int = 3, scope: str = "private") -> int:
    from hazardlens.auth import Principal, ensure_user
    from hazardlens.datasets.library import IngestMeta, ingest
    from tests.fixtures.serving import photo

    with ctx.db.session() as s:
        user = ensure_user(s, org, f"uploader-{org}", "curator")
        who = Principal(user.id, user.name, org, "curator")
        return ingest(ctx, s, who, photo(seed=seed), IngestMeta(sector="general", scope=scope)).sample.id


def test_backend_honours_the_label_config_and_any_number_of_tasks(api, ctx, make_key) -> None:  # type: ignore[no-untyped-def]
    basic = _basic(make_key("420000", "curator", "ls-cfg"))
    sample = _photo_sample(ctx)
    setup = api.post("/labelstudio/setup", json={"project": 7, "schema": CONFIG}, headers=basic)
    assert setup.status_code == 200, setup.text
    cfg = setup.json()["label_config"]
    assert (cfg["from_name"], cfg["to_name"], cfg["image_key"]) == ("hazards", "photo", "picture")
    assert cfg["labels"] == {"person": "person", "head": "Head", "helmet": "安全帽（已佩戴）"}
    assert cfg["unknown_labels"] == ["banana"]

    kinds = [
        {"sample_id": sample},
        {"picture": f"http://hl:8000/v1/samples/{sample}/image"},
        {"picture": f"http://ls:8080/data/local-files/?d=images/{sample}_site_photo.jpg"},
    ]
    tasks = [{"id": i, "data": kinds[i % 3]} for i in range(130)]  # more than one chunk of 64
    r = api.post("/labelstudio/predict", json={"tasks": tasks, "label_config": CONFIG}, headers=basic)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert len(results) == 130
    assert results[0]["result"], "the tiny model finds people in the test photo at the default threshold"
    assert all(p["result"] == results[0]["result"] for p in results)
    for res in results[0]["result"]:
        assert res["from_name"] == "hazards" and res["to_name"] == "photo"
        assert res["value"]["rectanglelabels"][0] in {"person", "Head"}

    # Without a config: the old names and class keys.
    plain = api.post("/labelstudio/predict", json={"tasks": tasks[:1]}, headers=basic).json()["results"][0]
    assert {(x["from_name"], x["to_name"]) for x in plain["result"]} <= {("label", "image")}


def _event(
    sample: int | None,
    results: list[dict[str, Any]],
    action: str = "ANNOTATION_CREATED",
    data: dict[str, Any] | None = None,
    config: str | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "action": action,
        "annotation": {"id": 41, "result": results, "was_cancelled": False},
        "task": {"id": 9, "data": data if data is not None else {"sample_id": sample}},
    }
    if config is not None:
        body["project"] = {"id": 7, "label_config": config}
    return body


def _rect(label: str, x: float, y: float, w: float, h: float) -> dict[str, Any]:
    return {
        "id": "a1",
        "type": "rectanglelabels",
        "from_name": "hazards",
        "to_name": "photo",
        "original_width": 160,
        "original_height": 120,
        "image_rotation": 0,
        "value": {"x": x, "y": y, "width": w, "height": h, "rotation": 0, "rectanglelabels": [label]},
    }


def test_webhook_stores_annotations_as_submitted_revisions(api, ctx, make_key) -> None:  # type: ignore[no-untyped-def]
    key = make_key("420000", "curator", "ls-hook")
    sample = _photo_sample(ctx, seed=11)
    body = _event(sample, [_rect("Head", 10, 20, 25, 50), _rect("安全帽（已佩戴）", 50, 0, 10, 10)], config=CONFIG)
    r = api.post("/labelstudio/webhook", json=body, headers=auth(key))
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "stored" and r.json()["sample_id"] == sample
    state = api.get(f"/v1/samples/{sample}/annotations", headers=auth(key)).json()
    assert state["status"] == "submitted"
    assert state["revision"]["author"] == "ls-hook" and state["revision"]["source"] == "manual"
    boxes = sorted(state["boxes"], key=lambda b: b["class_key"])
    assert [b["class_key"] for b in boxes] == ["head", "helmet"]
    assert (boxes[0]["x1"], boxes[0]["y1"], boxes[0]["x2"], boxes[0]["y2"]) == pytest.approx((16, 24, 56, 84))

    again = api.post("/labelstudio/webhook", json=dict(body, action="ANNOTATION_UPDATED"), headers=auth(key))
    assert again.json()["status"] == "unchanged"
    # By our image URL, no config: labels are class keys or names.
    moved = _event(
        None,
        [_rect("fire", 0, 0, 50, 50)],
        "ANNOTATION_UPDATED",
        data={"image": f"http://hl:8000/v1/samples/{sample}/image"},
    )
    r = api.post("/labelstudio/webhook", json=moved, headers=auth(key))
    assert r.json()["status"] == "stored" and r.json()["revision_number"] == 2

    unknown = api.post(
        "/labelstudio/webhook", json=_event(sample, [_rect("banana", 0, 0, 5, 5)], config=CONFIG), headers=auth(key)
    )
    assert unknown.status_code == 422 and unknown.json()["error"]["code"] == "unknown_class"
    assert "banana" in unknown.json()["error"]["message"]
    ignored = api.post(
        "/labelstudio/webhook", json={"action": "PROJECT_UPDATED", "project": {"id": 7}}, headers=auth(key)
    )
    assert ignored.status_code == 200 and ignored.json()["status"] == "ignored"
    skipped = _event(sample, [])
    skipped["annotation"]["was_cancelled"] = True
    assert api.post("/labelstudio/webhook", json=skipped, headers=auth(key)).json()["status"] == "ignored"


def test_webhook_follows_the_label_write_rules(api, ctx, make_key) -> None:  # type: ignore[no-untyped-def]
    curator = make_key("420000", "curator", "ls-hook-2")
    theirs_private = _photo_sample(ctx, org="310000", seed=12)
    theirs_shared = _photo_sample(ctx, org="310000", seed=13, scope="shared")
    body = _event(theirs_private, [_rect("fire", 0, 0, 5, 5)])
    assert api.post("/labelstudio/webhook", json=body, headers=auth(curator)).status_code == 404
    r = api.post("/labelstudio/webhook", json=_event(theirs_shared, [_rect("fire", 0, 0, 5, 5)]), headers=auth(curator))
    assert r.status_code == 403 and r.json()["error"]["code"] == "not_owner"
    inspector = make_key("420000", "inspector", "ls-hook-insp")
    assert api.post("/labelstudio/webhook", json=body, headers=auth(inspector)).status_code == 403
    assert api.post("/labelstudio/webhook", json=body).status_code == 401
    own = _photo_sample(ctx, seed=14)
    r = api.post(
        "/labelstudio/webhook", json=_event(own, [], data={"image": "http://elsewhere/x.jpg"}), headers=auth(curator)
    )
    assert r.status_code == 422 and r.json()["error"]["code"] == "unresolvable_image"


def test_label_config_is_parsed_safely(ctx: Context) -> None:
    from hazardlens.labeling.ml_backend import parse_label_config

    taxonomy = ctx.taxonomy()
    bomb = '<!DOCTYPE v [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;">]><View>&b;</View>'
    with pytest.raises(Invalid):
        parse_label_config(bomb, taxonomy)
    with pytest.raises(Invalid):
        parse_label_config("<View><Image", taxonomy)
    none = parse_label_config("<View><Text name='t' value='$t'/></View>", taxonomy)
    assert (none.from_name, none.to_name, none.labels) == ("label", "image", None) and none.problems
    assert parse_label_config(None, taxonomy).labels is None


# --- Label Studio: files that live in Label Studio ------------------------------------------------------


def test_label_studio_files_are_fetched_from_the_configured_origin_only() -> None:
    """What a task may make the backend fetch: Label Studio's upload and local-files paths on the
    configured origin, nothing else (the real fetch is in tests/test_labelstudio_live.py)."""
    from hazardlens.labeling.ls_images import LabelStudioImages, _jwt_expiry

    ls = LabelStudioImages("http://ls.local:8080", "legacy-token", 1000)
    assert ls.path_of("/data/upload/3/0c1d-photo.jpg") == "/data/upload/3/0c1d-photo.jpg"
    assert ls.path_of("http://ls.local:8080/data/upload/3/a.jpg") == "/data/upload/3/a.jpg"
    assert ls.path_of("/data/local-files/?d=site/cam1/a.jpg") == "/data/local-files/?d=site/cam1/a.jpg"
    for refused in (
        "http://elsewhere:8080/data/upload/3/a.jpg",  # another host
        "https://ls.local:8080/data/upload/3/a.jpg",  # another scheme
        "http://ls.local:9090/data/upload/3/a.jpg",  # another port
        "//elsewhere/data/upload/3/a.jpg",
        "/data/upload/../../api/users/",
        "/api/projects/",
        "/data/local-files/",
        "file:///etc/passwd",
        "/data/upload/3/a.jpg\r\nX-Injected: 1",
        None,
        42,
    ):
        assert ls.path_of(refused) is None, refused
    under = LabelStudioImages("https://tools.example/labelstudio/", "t", 1000)
    assert under.path_of("/labelstudio/data/upload/1/a.png") == "/data/upload/1/a.png"
    assert under.path_of("https://tools.example:443/labelstudio/data/upload/1/a.png") == "/data/upload/1/a.png"
    payload = base64.urlsafe_b64encode(json.dumps({"exp": 1893456000}).encode()).decode().rstrip("=")
    assert _jwt_expiry(f"eyJhbGciOiJIUzI1NiJ9.{payload}.sig") == 1893456000
    assert _jwt_expiry("0123456789abcdef") is None
    with pytest.raises(ValueError):
        LabelStudioImages("ftp://ls.local", "t", 1000)


def test_an_uploaded_file_needs_label_studio_configured(api, ctx, make_key) -> None:  # type: ignore[no-untyped-def]
    basic = _basic(make_key("420000", "curator", "ls-upload"))
    task = {"id": 5, "data": {"image": "/data/upload/3/0c1d-photo.jpg"}}
    r = api.post("/labelstudio/predict", json={"tasks": [task]}, headers=basic)
    assert r.status_code == 422 and r.json()["error"]["code"] == "unresolvable_image"
    assert "HAZARDLENS_LABEL_STUDIO_URL" in r.json()["error"]["message"]
    hook = _event(None, [_rect("fire", 0, 0, 5, 5)], data=task["data"])
    r = api.post("/labelstudio/webhook", json=hook, headers=auth(make_key("420000", "curator", "ls-upload-2")))
    assert r.status_code == 422 and "not one" in r.json()["error"]["message"]
