"""The importers and exporters on the real data in ../shared/data (skipped where it is absent):
SFCHD-PPE (Roboflow COCO, 656 CCTV frames of 20 cameras) and fire-smoke (YOLO, 1000 web photos)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from hazardlens.auth import Principal, ensure_user
from hazardlens.context import Context
from hazardlens.formats import read_coco, read_yolo
from hazardlens.labeling.exporters import export_library
from hazardlens.labeling.importers import import_dataset
from hazardlens.orm import AnnotationRevision, Sample
from tests.fixtures.core import shared_data

SHARED = shared_data()
pytestmark = pytest.mark.skipif(SHARED is None, reason="../shared/data is not present")
MAPS = Path(__file__).resolve().parents[1] / "configs" / "class_maps"


def _admin(ctx: Context) -> Principal:
    with ctx.db.session() as s:
        user = ensure_user(s, "420000", "cli-420000", "admin")
        return Principal(user.id, user.name, user.org_code, user.role)


def test_real_datasets_import_and_export(ctx: Context, tmp_path: Path) -> None:
    assert SHARED is not None
    admin = _admin(ctx)
    sfchd = SHARED / "sfchd-ppe"

    started = time.perf_counter()
    ppe = import_dataset(
        ctx,
        admin,
        "coco",
        sfchd / "annotations.coco.json",
        MAPS / "sfchd.yaml",
        images=sfchd / "images",
        sector="general",
        approved=True,
    )
    seconds = time.perf_counter() - started
    print(
        f"\nsfchd-ppe import: {ppe.stored} images, {ppe.boxes} boxes in {seconds:.1f} s "
        f"({ppe.stored / seconds:.1f} images/s)"
    )
    assert (ppe.images_read, ppe.stored, len(ppe.refused)) == (656, 656, 0)
    assert ppe.boxes == 2779 - 52 - 46  # blur_head and blur_clothes mapped to 'ignore'
    assert ppe.ignored_boxes == 52 + 46 and ppe.camera_ids == 20
    assert ppe.repairs == {"string_bbox": 26} and ppe.unused_categories == ["objects"]
    with ctx.db.session() as s:
        assert s.scalar(select(func.count(func.distinct(Sample.camera_id)))) == 20
        assert (
            s.scalar(
                select(func.count()).select_from(AnnotationRevision).where(AnnotationRevision.status == "approved")
            )
            == ppe.revisions
        )

    fire = import_dataset(
        ctx, admin, "yolo", SHARED / "fire-smoke", MAPS / "fire_smoke.yaml", sector="dust", approved=True
    )

    def lines(name: str) -> int:
        path = (SHARED / "fire-smoke/labels" / name).with_suffix(".txt")
        return sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip()) if path.is_file() else 0

    label_lines = sum(lines(p.name) for p in (SHARED / "fire-smoke/labels").glob("*.txt"))
    print(
        f"fire-smoke import: {fire.stored} images ({len(fire.transcoded)} GIF/BMP converted to PNG, "
        f"{len(fire.duplicates)} byte-identical copies), {fire.boxes} boxes in {fire.elapsed_s:.1f} s"
    )
    # Two pairs of files are byte-identical (with different labels): one sample each, first labels kept.
    assert sorted(d.name for d in fire.duplicates) == ["fire-image_251.jpg", "fire-image_582.jpg"]
    assert (fire.stored + len(fire.duplicates), fire.negatives, len(fire.refused)) == (1000, 9, 0)
    assert len(fire.transcoded) == 8  # GIFs named .jpg
    assert fire.boxes == label_lines - sum(lines(d.name) for d in fire.duplicates)
    assert set(fire.class_counts) == {"fire", "smoke"}

    for name, summary, sector in (("sfchd", ppe, "general"), ("fire", fire, "dust")):
        with ctx.db.session() as s:
            yolo = export_library(ctx, s, admin, "yolo", tmp_path / f"{name}-yolo", filters={"sector": sector})
            coco = export_library(ctx, s, admin, "coco", tmp_path / f"{name}-coco", filters={"sector": sector})
        negatives = summary.negatives
        for result in (yolo, coco):
            assert (result.images, result.boxes, result.negatives, result.dropped_boxes) == (
                summary.stored,
                summary.boxes,
                negatives,
                0,
            ), (name, result.format)
        back_yolo = read_yolo(tmp_path / f"{name}-yolo").report
        back_coco = read_coco(coco.path, tmp_path / f"{name}-coco/images").report
        for report in (back_yolo, back_coco):
            assert (report.images, report.boxes, report.negatives) == (summary.stored, summary.boxes, negatives)
            assert not report.refused_boxes and not report.refused_images and not report.missing_files
        doc = json.loads(coco.path.read_text(encoding="utf-8"))
        assert [im["id"] for im in doc["images"]] == list(range(1, summary.stored + 1))
