"""Importers and exporters wired to the library: readers -> class map -> ingest -> revisions, and back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from sqlalchemy import func, select

from hazardlens.context import Context
from hazardlens.errors import Conflict, Forbidden, Invalid
from hazardlens.formats import ClassMap, ImportRecord, read_coco, read_labelstudio, read_yolo
from hazardlens.labeling import annotations as ann
from hazardlens.labeling.exporters import export_library
from hazardlens.labeling.importers import import_dataset, resolve_class_map
from hazardlens.orm import AnnotationRevision, AuditEvent, Sample, Suggestion
from tests.fixtures.formats import write_image
from tests.fixtures.labeling import Cast, make_cast

PPE = ClassMap.from_dict(
    {"mapping": {"person": "person", "helmet": "helmet", "head": "head", "objects": "ignore"}}, source="test map"
)


@pytest.fixture
def cast(ctx: Context) -> Cast:
    return make_cast(ctx)


def _count(ctx: Context, model: Any) -> int:
    with ctx.db.session() as s:
        return int(s.scalar(select(func.count()).select_from(model)) or 0)


def _samples(ctx: Context) -> dict[str, Sample]:
    with ctx.db.session() as s:
        return {x.original_name: x for x in s.scalars(select(Sample))}


def _revisions(ctx: Context, sample_id: int) -> list[AnnotationRevision]:
    with ctx.db.session() as s:
        return list(
            s.scalars(
                select(AnnotationRevision)
                .where(AnnotationRevision.sample_id == sample_id)
                .order_by(AnnotationRevision.number)
            )
        )


def _boxes_of(records: list[ImportRecord], strip_id: bool = False) -> dict[str, list[tuple[Any, ...]]]:
    """file stem -> sorted boxes; exported files are named '<sample id>_<stem>', so strip the id."""
    out = {}
    for r in records:
        stem = Path(r.file_name).stem
        out[stem.split("_", 1)[1] if strip_id else stem] = sorted(
            (b.class_key, b.x1, b.y1, b.x2, b.y2) for b in r.boxes
        )
    return out


def _assert_close(a: dict[str, list[tuple[Any, ...]]], b: dict[str, list[tuple[Any, ...]]]) -> None:
    assert sorted(a) == sorted(b)
    for name in a:
        assert len(a[name]) == len(b[name]), name
        for x, y in zip(a[name], b[name], strict=True):
            assert x[0] == y[0] and all(abs(p - q) <= 1.0 for p, q in zip(x[1:], y[1:], strict=True)), (name, x, y)


# --- generated sets -------------------------------------------------------------------------------


@pytest.fixture
def yolo_set(tmp_path: Path) -> Path:
    """A clean YOLO set: two labelled images, one negative (empty label file), one image whose
    EXIF says 'rotate 90°' (stored 60x40, seen 40x60; labels in the seen orientation), one
    camera/site encoded in the file names."""
    root = tmp_path / "yolo_clean"
    (root / "labels").mkdir(parents=True)
    (root / "classes.txt").write_text("person\nhelmet\nhead\n", encoding="utf-8")
    files = {
        "cam01_site7_a.jpg": (200, 100, None, "0 0.5 0.5 0.2 0.4\n1 0.1 0.2 0.1 0.2\n"),
        "cam02_site7_b.png": (64, 64, None, "2 0.25 0.25 0.25 0.25\n"),
        "cam01_site8_neg.jpg": (48, 32, None, ""),
        "cam03_site9_rot.jpg": (60, 40, 6, "0 0.25 0.5 0.3 0.2\n"),
    }
    for i, (name, (w, h, orient, labels)) in enumerate(files.items()):
        write_image(
            root / "images" / name,
            w,
            h,
            fmt="PNG" if name.endswith(".png") else "JPEG",
            seed=10 + i,
            exif_orientation=orient,
        )
        (root / "labels" / Path(name).with_suffix(".txt")).write_text(labels, encoding="utf-8")
    return root


@pytest.fixture
def coco_set(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "coco_clean"
    sizes = {"a.jpg": (120, 90), "b.jpg": (80, 80), "c.jpg": (50, 40)}
    for i, (name, (w, h)) in enumerate(sizes.items()):
        write_image(root / name, w, h, seed=30 + i)  # Roboflow layout: images beside the json
    doc = {
        "categories": [{"id": 0, "name": "objects"}, {"id": 1, "name": "person"}, {"id": 2, "name": "helmet"}],
        "images": [
            {"id": i + 1, "file_name": n, "width": w, "height": h} for i, (n, (w, h)) in enumerate(sizes.items())
        ],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10.5, 20, 30, 40]},
            {"id": 2, "image_id": 1, "category_id": 2, "bbox": ["12", "22", "10", "8"]},  # strings: repaired
            {"id": 3, "image_id": 2, "category_id": 1, "bbox": [0, 0, 80, 80]},
        ],
    }
    path = root / "annotations.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path, root


def _import(ctx: Context, who: Any, fmt: str, source: Any, cmap: Any = PPE, **kw: Any) -> Any:
    kw.setdefault("sector", "general")
    return import_dataset(ctx, who, fmt, source, cmap, workers=2, **kw)


# --- import -------------------------------------------------------------------------------------------


def test_import_messy_coco_as_submitted(ctx: Context, cast: Cast, fmt_coco_messy: tuple[Path, Path]) -> None:
    ann_path, images = fmt_coco_messy
    progress: list[tuple[int, int, str, str]] = []
    summary = _import(ctx, cast.curator, "coco", ann_path, images=images, progress=lambda *a: progress.append(a))
    assert (summary.images_read, summary.stored, summary.deduplicated) == (3, 3, 0)
    assert (summary.revisions, summary.boxes, summary.negatives) == (3, 3, 1)
    assert summary.status == "submitted" and summary.repairs["string_bbox"] == 1
    assert summary.unused_categories == ["objects"]
    # what the reader refused is in the summary with its reason (bad entries, missing files)
    codes = sorted(r.code for r in summary.refused)
    assert codes == ["bad_image", "duplicate_file_name", "duplicate_id", "missing_file", "missing_file"]
    assert all(r.message for r in summary.refused)
    assert summary.refused_boxes["zero_area"] == 1
    assert [p[:2] for p in progress] == [(1, 3), (2, 3), (3, 3)]
    assert json.dumps(summary.as_dict())  # JSON-ready for the API

    samples = _samples(ctx)
    assert sorted(samples) == ["a.jpg", "b.png", "c.jpg"]
    for name, sample in samples.items():
        assert (sample.source, sample.org_code, sample.sector) == ("import", "420000", "general")
        assert sample.annotation_status == "submitted" and sample.approved_revision_id is None
        (rev,) = _revisions(ctx, sample.id)
        assert (rev.status, rev.source, rev.author_id) == ("submitted", "import", cast.curator.user_id)
        assert len(rev.boxes) == {"a.jpg": 2, "b.png": 1, "c.jpg": 0}[name]
    a = samples["a.jpg"]
    assert sorted(a.class_keys) == ["helmet", "person"]
    with ctx.db.session() as s:
        actions = [e.action for e in s.scalars(select(AuditEvent).order_by(AuditEvent.id))]
    assert actions.count("sample.create") == 3 and actions.count("annotation.save") == 3
    assert actions[-1] == "labeling.import"


def test_import_messy_yolo_as_approved_and_reimport_adds_nothing(
    ctx: Context, cast: Cast, fmt_yolo_messy: Path
) -> None:
    first = _import(ctx, cast.admin, "yolo", fmt_yolo_messy, approved=True)
    assert (first.stored, first.revisions, first.boxes, first.negatives) == (4, 4, 4, 2)
    assert [r.code for r in first.refused] == ["unreadable", "missing_file"]
    assert first.repairs == {"clipped": 1, "float_class": 1, "polygon_to_box": 1}
    assert first.unused_categories == ["head"]
    for sample in _samples(ctx).values():
        (rev,) = _revisions(ctx, sample.id)
        assert rev.status == "approved" and rev.reviewer_id == cast.admin.user_id
        assert sample.annotation_status == "approved" and sample.approved_revision_id == rev.id
    samples, revisions = _count(ctx, Sample), _count(ctx, AnnotationRevision)

    again = _import(ctx, cast.admin, "yolo", fmt_yolo_messy, approved=True)
    assert (again.stored, again.deduplicated, again.unchanged, again.revisions) == (0, 4, 4, 0)
    assert (_count(ctx, Sample), _count(ctx, AnnotationRevision)) == (samples, revisions)

    # A corrected label file adds exactly one revision, on exactly that sample.
    (fmt_yolo_messy / "labels/val/b.txt").write_text("1 0.5 0.5 0.25 0.25\n", encoding="utf-8")
    fixed = _import(ctx, cast.admin, "yolo", fmt_yolo_messy)
    assert (fixed.revisions, fixed.unchanged) == (1, 3)
    b = _samples(ctx)["b.png"]
    assert [r.status for r in _revisions(ctx, b.id)] == ["approved", "submitted"]
    assert b.annotation_status == "submitted" and b.approved_revision_id == _revisions(ctx, b.id)[0].id


def test_import_voc_and_labelstudio(
    ctx: Context, cast: Cast, fmt_voc_messy: Path, fmt_labelstudio_messy: tuple[Path, Path]
) -> None:
    voc = _import(ctx, cast.curator, "voc", fmt_voc_messy, sector="dust")
    assert (voc.stored, voc.revisions, voc.boxes, voc.negatives) == (3, 3, 3, 1)
    assert sorted(r.code for r in voc.refused) == ["bad_xml", "missing_file"]
    tasks, images = fmt_labelstudio_messy
    ls = _import(ctx, cast.curator, "labelstudio", tasks, images=images, sector="steel")
    assert (ls.stored, ls.revisions, ls.boxes, ls.negatives) == (3, 3, 3, 1)
    assert sorted(r.code for r in ls.refused) == ["missing_file", "not_annotated"]
    assert ls.repairs == {"clipped": 1, "polygon_to_box": 1}
    with pytest.raises(Invalid, match="images folder"):
        _import(ctx, cast.curator, "labelstudio", tasks)


@pytest.mark.parametrize(
    "mapping, code, detail",
    [
        ({"person": "person", "objects": "ignore"}, "unmapped_classes", {"unmapped": ["helmet"]}),
        ({"person": "persn", "helmet": "helmet", "objects": "ignore"}, "unknown_classes", "persn"),
    ],
)
def test_bad_class_map_stops_before_anything_is_written(
    ctx: Context, cast: Cast, coco_set: tuple[Path, Path], mapping: dict[str, str], code: str, detail: Any
) -> None:
    with pytest.raises(Invalid) as err:
        _import(ctx, cast.admin, "coco", coco_set[0], ClassMap.from_dict({"mapping": mapping}), approved=True)
    assert err.value.code == code
    if isinstance(detail, dict):
        assert err.value.details == detail
        assert "helmet" in err.value.message
    else:
        assert detail in err.value.details["classes"]
    assert (_count(ctx, Sample), _count(ctx, AnnotationRevision)) == (0, 0)
    assert not list(ctx.store.list("blobs/"))


def test_inactive_taxonomy_class_is_refused(ctx: Context, cast: Cast, coco_set: tuple[Path, Path]) -> None:
    from hazardlens.orm import TaxonomyAddition

    with ctx.db.session() as s:
        s.add(
            TaxonomyAddition(
                kind="class",
                key="hard_hat_new",
                org_code="420000",
                status="pending",
                payload={
                    "key": "hard_hat_new",
                    "name_zh": "新安全帽",
                    "name_en": "new hard hat",
                    "sector": "general",
                    "inspection_items": [],
                    "severity": "low",
                    "finding_zh": "x",
                    "is_hazard": False,
                    "legal_basis": ["GB 2811-2019"],
                },
            )
        )
    ctx.invalidate_taxonomy()
    cmap = ClassMap.from_dict({"mapping": {"person": "person", "helmet": "hard_hat_new", "objects": "ignore"}})
    with pytest.raises(Invalid) as err:
        _import(ctx, cast.admin, "coco", coco_set[0], cmap)
    assert err.value.code == "unknown_classes" and "not active" in err.value.details["classes"]["hard_hat_new"]
    assert _count(ctx, Sample) == 0


def test_one_bad_image_never_stops_the_rest(ctx: Context, cast: Cast, yolo_set: Path) -> None:
    # A JPEG cut short after its header (the reader can measure it, the library refuses it), a GIF
    # named .jpg and a BMP (formats the library does not keep, but whose labels are good).
    whole = (yolo_set / "images/cam01_site7_a.jpg").read_bytes()
    (yolo_set / "images/zz_cut.jpg").write_bytes(whole[: len(whole) // 2])
    Image.new("RGB", (30, 20), (200, 10, 10)).save(yolo_set / "images/zz_bitmap.bmp")
    (yolo_set / "labels/zz_bitmap.txt").write_text("0 0.5 0.5 0.5 0.5\n", encoding="utf-8")
    Image.new("P", (40, 30), 3).save(yolo_set / "images/zz_gif.jpg", format="GIF")
    summary = _import(ctx, cast.curator, "yolo", yolo_set)
    assert summary.images_read == 7 and summary.stored == 6
    assert [(r.name, r.code) for r in summary.refused] == [("zz_cut.jpg", "truncated_image")]
    assert sorted((r.name, r.message.split()[0]) for r in summary.transcoded) == [
        ("zz_bitmap.bmp", "BMP"),
        ("zz_gif.jpg", "GIF"),
    ]
    samples = _samples(ctx)
    assert samples["zz_bitmap.bmp"].format == "png" and samples["zz_bitmap.bmp"].class_keys == ["person"]
    assert _count(ctx, Sample) == 6 and _count(ctx, AnnotationRevision) == 6
    again = _import(ctx, cast.curator, "yolo", yolo_set)  # conversion is deterministic: still deduplicated
    assert (again.stored, again.deduplicated, again.revisions) == (0, 6, 0)


def test_same_bytes_twice_in_source_keeps_first_labels(ctx: Context, cast: Cast, yolo_set: Path) -> None:
    img = yolo_set / "images"
    (img / "zz_copy.jpg").write_bytes((img / "cam01_site7_a.jpg").read_bytes())
    (yolo_set / "labels/zz_copy.txt").write_text("2 0.5 0.5 0.1 0.1\n", encoding="utf-8")  # other labels
    summary = _import(ctx, cast.curator, "yolo", yolo_set)
    assert (summary.stored, summary.revisions) == (4, 4)
    (dup,) = summary.duplicates
    assert dup.name == "zz_copy.jpg" and "different labels" in dup.message and "cam01_site7_a.jpg" in dup.message
    a = _samples(ctx)["cam01_site7_a.jpg"]
    assert sorted(a.class_keys) == ["helmet", "person"]
    again = _import(ctx, cast.curator, "yolo", yolo_set)  # re-import stays a no-op, no flip-flopping
    assert (again.revisions, again.unchanged, len(again.duplicates)) == (0, 4, 1)


def test_permissions_and_arguments(ctx: Context, cast: Cast, coco_set: tuple[Path, Path]) -> None:
    with pytest.raises(Forbidden):
        _import(ctx, cast.curator, "coco", coco_set[0], approved=True)  # skipping review: admins only
    with pytest.raises(Forbidden):
        _import(ctx, cast.reviewer, "coco", coco_set[0])  # reviewers review; they do not import
    with pytest.raises(Forbidden):
        _import(ctx, cast.admin, "coco", coco_set[0], org="310000")
    with pytest.raises(Invalid, match="sector"):
        _import(ctx, cast.admin, "coco", coco_set[0], sector="mining")
    with pytest.raises(Invalid, match="regular expression"):
        _import(ctx, cast.admin, "coco", coco_set[0], camera_regex="(")
    assert _count(ctx, Sample) == 0


def test_camera_and_site_from_file_names(ctx: Context, cast: Cast, yolo_set: Path) -> None:
    summary = _import(ctx, cast.curator, "yolo", yolo_set, camera_regex=r"^(cam\d+)_", site_regex=r"_(site\d+)_")
    assert summary.camera_ids == 3
    got = {n: (s.camera_id, s.site_id) for n, s in _samples(ctx).items()}
    assert got["cam01_site7_a.jpg"] == ("cam01", "site7") and got["cam03_site9_rot.jpg"] == ("cam03", "site9")


def test_class_map_by_name_or_text() -> None:
    assert resolve_class_map("sfchd").camera_regex is not None
    assert resolve_class_map("fire_smoke.yaml").taxonomy_keys == {"fire", "smoke"}
    assert resolve_class_map("mapping:\n  hat: helmet\n").mapping == {"hat": "helmet"}
    with pytest.raises(Invalid):
        resolve_class_map("../../etc/passwd")


def test_rejection_reason_shows_in_history_of_imported_sample(
    ctx: Context, cast: Cast, coco_set: tuple[Path, Path]
) -> None:
    _import(ctx, cast.curator, "coco", coco_set[0])
    sid = _samples(ctx)["a.jpg"].id
    with ctx.db.session() as s:
        ann.reject(s, cast.reviewer, sid, "helmet box misses the brim")
    with ctx.db.session() as s:
        (entry,) = ann.history(s, cast.curator, sid)
    assert (entry["source"], entry["status"], entry["author"]) == ("import", "rejected", "curator-a")
    assert entry["reason"] == "helmet box misses the brim" and entry["reviewer"] == "reviewer-a"


# --- export -------------------------------------------------------------------------------------------


def test_yolo_round_trip_with_exif_rotation(ctx: Context, cast: Cast, yolo_set: Path, tmp_path: Path) -> None:
    source, _ = read_yolo(yolo_set)
    _import(ctx, cast.admin, "yolo", yolo_set, approved=True)
    with ctx.db.session() as s:
        result = export_library(ctx, s, cast.admin, "yolo", tmp_path / "out")
    assert (result.images, result.boxes, result.negatives, result.reoriented) == (4, 4, 1, 1)
    assert result.classes == ["person", "helmet", "head"]  # taxonomy order
    back, report = read_yolo(tmp_path / "out")
    assert not report.refused_boxes and not report.repaired
    _assert_close(_boxes_of(source), _boxes_of(back, strip_id=True))
    assert {Path(r.file_name).stem.split("_", 1)[1] for r in back if r.is_negative} == {"cam01_site8_neg"}
    label = next((tmp_path / "out/labels/train").glob("*neg.txt"))
    assert label.read_text() == ""  # a negative keeps an empty label file
    rotated = next((tmp_path / "out/images/train").glob("*_rot.jpg"))
    with Image.open(rotated) as im:  # upright pixels, no orientation tag left to apply twice
        assert im.size == (40, 60) and im.getexif().get(0x0112) in (None, 1)


def test_coco_round_trip(ctx: Context, cast: Cast, coco_set: tuple[Path, Path], tmp_path: Path) -> None:
    source, _ = read_coco(*coco_set)
    _import(ctx, cast.admin, "coco", coco_set[0], images=coco_set[1], approved=True)
    with ctx.db.session() as s:
        result = export_library(ctx, s, cast.admin, "coco", tmp_path / "out")
    doc = json.loads(result.path.read_text(encoding="utf-8"))
    assert [im["id"] for im in doc["images"]] == [1, 2, 3]
    first = next(a for a in doc["annotations"] if a["category_id"] == 1 and a["image_id"] == 1)
    assert first["bbox"] == [10.5, 20, 30, 40]  # pixel x, y, w, h
    back, _ = read_coco(result.path, tmp_path / "out/images")
    _assert_close(_boxes_of(source), _boxes_of(back, strip_id=True))
    assert [r.file_name for r in back if r.is_negative] == [r.file_name for r in back if "_c." in r.file_name]


def test_export_by_status_filters_and_tenancy(
    ctx: Context, cast: Cast, yolo_set: Path, coco_set: tuple[Path, Path], tmp_path: Path
) -> None:
    _import(ctx, cast.admin, "yolo", yolo_set, approved=True)  # 4 approved
    _import(ctx, cast.curator, "coco", coco_set[0], sector="dust")  # 3 submitted
    with ctx.db.session() as s:
        assert export_library(ctx, s, cast.reviewer, "coco", tmp_path / "a").images == 4
        assert export_library(ctx, s, cast.reviewer, "coco", tmp_path / "s", status="submitted").images == 3
        dust = export_library(
            ctx,
            s,
            cast.reviewer,
            "yolo",
            tmp_path / "d",
            status="submitted",
            filters={"sector": "dust", "class_key": "helmet"},
        )
        assert dust.images == 1
        with pytest.raises(Invalid, match="nothing to export"):
            export_library(ctx, s, cast.other_reviewer, "coco", tmp_path / "o")  # another org sees none
        with pytest.raises(Invalid, match="unknown filter"):
            export_library(ctx, s, cast.reviewer, "coco", tmp_path / "x", filters={"colour": "red"})
        with pytest.raises(Conflict):
            export_library(ctx, s, cast.reviewer, "coco", tmp_path / "a")  # not an empty folder
        with pytest.raises(Forbidden):
            export_library(ctx, s, cast.inspector, "coco", tmp_path / "i")


def test_labelstudio_export_with_predictions(
    ctx: Context, cast: Cast, coco_set: tuple[Path, Path], tmp_path: Path
) -> None:
    _import(ctx, cast.admin, "coco", coco_set[0], approved=True)
    sid = _samples(ctx)["b.jpg"].id
    with ctx.db.session() as s:
        s.add(
            Suggestion(
                sample_id=sid,
                model_version="ppe-1.0",
                status="open",
                boxes=[{"class_key": "helmet", "x1": 8, "y1": 4, "x2": 40, "y2": 20, "confidence": 0.8}],
            )
        )
    with ctx.db.session() as s:
        result = export_library(ctx, s, cast.admin, "labelstudio", tmp_path / "ls")
    assert (result.images, result.predictions) == (3, 1)
    tasks = json.loads(result.path.read_text(encoding="utf-8"))
    task = next(t for t in tasks if t["data"]["image"].endswith("_b.jpg"))
    (pred,) = task["predictions"]
    value = pred["result"][0]["value"]
    assert (value["x"], value["y"], value["width"], value["height"]) == (10.0, 5.0, 40.0, 20.0)  # percent of 80x80
    assert pred["result"][0]["score"] == pytest.approx(0.8)
    assert task["annotations"][0]["result"][0]["value"]["width"] == 100.0
    back, report = read_labelstudio(result.path, tmp_path / "ls")
    assert len(back) == 3 and not report.refused_images and not report.missing_files


# --- CLI ----------------------------------------------------------------------------------------------


def test_cli_import_and_export(ctx: Context, yolo_set: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    import hazardlens.cli.labeling_io as cli_io
    from hazardlens.cli.main import app

    monkeypatch.setattr(cli_io, "context", lambda: Context(ctx.settings))
    cmap = tmp_path / "map.yaml"
    cmap.write_text("mapping:\n  person: person\n  helmet: helmet\n  head: head\n", encoding="utf-8")
    runner = CliRunner()
    args = [
        "import",
        "yolo",
        str(yolo_set),
        "--class-map",
        str(cmap),
        "--org",
        "420000",
        "--sector",
        "general",
        "--approved",
        "--camera-regex",
        r"^(cam\d+)_",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "stored (new samples)" in result.output and "camera ids" in result.output
    with ctx.db.session() as s:
        uploaders = set(s.scalars(select(Sample.uploader_id)))
        statuses = set(s.scalars(select(AnnotationRevision.status)))
    assert len(uploaders) == 1 and statuses == {"approved"}  # user cli-420000, an admin

    again = runner.invoke(app, [*args, "--json"])
    assert again.exit_code == 0 and json.loads(again.stdout.strip().splitlines()[-1])["unchanged"] == 4

    cmap.write_text("mapping:\n  person: person\n", encoding="utf-8")
    bad = runner.invoke(app, args)
    assert bad.exit_code == 2 and "unmapped_classes" in bad.output

    out = tmp_path / "export"
    result = runner.invoke(app, ["export", "--format", "coco", "--out", str(out), "--org", "420000", "--class", "head"])
    assert result.exit_code == 0, result.output
    assert "exported 1 images" in result.output and (out / "annotations.json").is_file()
