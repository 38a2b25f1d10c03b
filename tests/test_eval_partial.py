"""Honest evaluation of partially labelled images, per-source figures and rule scoring in `hazardlens evaluate`.

The validator is checked on hand-made batches (fast), then end to end with the shipped baseline detector
(models/baseline/baseline.pt, skipped where absent) on cartoon workers drawn for it: one source labels
everything, the other declares ``person`` unlabelled.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image, ImageDraw

from hazardlens.context import Context
from hazardlens.training.evaluate import EvalReport, score_rules, validator_class, write_report

BASELINE = Path(__file__).resolve().parents[1] / "models" / "baseline" / "baseline.pt"
MODEL_CLASSES = ["person", "helmet", "head", "safety_clothes", "self_clothes", "fire", "smoke"]


# ---- the validator on hand-made batches --------------------------------------------------------


def _validator(tmp: Path, unlabeled: dict[str, list[int]] | None, plain: bool = False) -> Any:
    import torch
    from ultralytics.models.yolo.detect import DetectionValidator

    args = {"conf": 0.001, "plots": False, "save_json": False, "save_txt": False}
    cls = DetectionValidator if plain else validator_class()
    v = cls(save_dir=tmp, args=args) if plain else cls(save_dir=tmp, args=args, hl_unlabeled=unlabeled)
    v.device = torch.device("cpu")
    v.names = {i: n for i, n in enumerate(MODEL_CLASSES)}
    v.nc = len(MODEL_CLASSES)
    v.metrics.names = v.names
    v.seen, v.jdict, v.is_custom_json, v.build_gdict = 0, [], False, False
    return v


def _batch(drop_person_of_b: bool = False) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Two 100x100 images (no letterbox). a.jpg: a person and a helmet, both found. b.jpg: a person
    box (one of the few its source labels), a helmet; the model finds both, plus a confident person
    nobody boxed."""
    import torch

    def xywhn(x1: float, y1: float, x2: float, y2: float) -> list[float]:
        return [(x1 + x2) / 200, (y1 + y2) / 200, (x2 - x1) / 100, (y2 - y1) / 100]

    labels = [
        (0, 0, (10, 10, 40, 90)),
        (0, 1, (15, 5, 35, 20)),  # (image, class, box)
        (1, 0, (50, 10, 80, 90)),
        (1, 1, (55, 5, 75, 20)),
    ]
    preds = [
        [((11, 11, 40, 89), 0.9, 0), ((15, 6, 35, 20), 0.8, 1)],
        [((2, 2, 30, 60), 0.95, 0), ((50, 12, 80, 88), 0.7, 0), ((55, 5, 74, 21), 0.6, 1)],
    ]
    if drop_person_of_b:
        labels = [lab for lab in labels if not (lab[0] == 1 and lab[1] == 0)]
        preds[1] = [p for p in preds[1] if p[2] != 0]
    batch = {
        "img": torch.zeros(2, 3, 100, 100),
        "im_file": ["/x/a.jpg", "/x/b.jpg"],
        "ori_shape": [(100, 100), (100, 100)],
        "ratio_pad": [((1.0, 1.0), (0.0, 0.0))] * 2,
        "batch_idx": torch.tensor([float(i) for i, _, _ in labels]),
        "cls": torch.tensor([[float(c)] for _, c, _ in labels]),
        "bboxes": torch.tensor([xywhn(*b) for _, _, b in labels]).reshape(-1, 4),
    }
    out = []
    for image in preds:
        out.append(
            {
                "bboxes": torch.tensor([p[0] for p in image], dtype=torch.float32).reshape(-1, 4),
                "conf": torch.tensor([p[1] for p in image]),
                "cls": torch.tensor([float(p[2]) for p in image]),
                "extra": torch.zeros(len(image), 0),
            }
        )
    return out, batch


def _figures(v: Any) -> dict[str, Any]:
    v.metrics.process(plot=False)
    m = v.metrics
    return {
        "nt": m.nt_per_class.tolist(),
        "classes": list(m.ap_class_index),
        "per_class": [tuple(round(float(x), 6) for x in m.class_result(i)) for i in range(len(m.ap_class_index))],
        "mean": [round(float(x), 6) for x in m.mean_results()],
    }


def test_the_validator_drops_declared_classes_per_image(tmp_path: Path) -> None:
    ours = _validator(tmp_path, {"b.jpg": [0]})
    preds, batch = _batch()
    ours.update_metrics(preds, batch)
    assert ours.hl_dropped == {"images": 1, "predictions": 2, "labels": 1}
    a, b = ours.hl_records
    assert a["im_name"] == "a.jpg" and b["im_name"] == "b.jpg"
    assert 0 in a["pred_cls"] and 0 in a["target_cls"]
    assert 0 not in b["pred_cls"] and 0 not in b["target_cls"] and list(b["target_cls"]) == [1]

    # the same as if the person labels and predictions of b.jpg had never existed
    by_hand = _validator(tmp_path, None, plain=True)
    by_hand.update_metrics(*_batch(drop_person_of_b=True))
    figures = _figures(ours)
    assert figures == _figures(by_hand)
    person = figures["per_class"][figures["classes"].index(0)]
    assert person[2] > 0.99  # AP50: the one labelled person in a.jpg, found with the top person score

    # plain Ultralytics counts b.jpg's unboxed person (0.95) as a false positive ranked first
    plain = _validator(tmp_path, None, plain=True)
    plain.update_metrics(*_batch())
    plain_figures = _figures(plain)
    assert plain_figures["nt"][0] == 2 and figures["nt"][0] == 1
    assert plain_figures["per_class"][plain_figures["classes"].index(0)][2] < person[2]


def test_nothing_declared_means_ultralytics_own_figures(tmp_path: Path) -> None:
    ours = _validator(tmp_path, {})
    ours.update_metrics(*_batch())
    plain = _validator(tmp_path, None, plain=True)
    plain.update_metrics(*_batch())
    assert ours.hl_dropped == {"images": 0, "predictions": 0, "labels": 0}
    for key in ("tp", "conf", "pred_cls", "target_cls", "target_img"):
        for x, y in zip(ours.metrics.stats[key], plain.metrics.stats[key], strict=True):
            assert np.array_equal(x, y)
    assert _figures(ours) == _figures(plain)


# ---- rules on predictions (a stand-in rule set with hazardlens.rules' interface) -----------------


@dataclass
class _Rule:
    key: str
    evidence_class: str | None
    min_confidence: float


@dataclass
class _Finding:
    rule: str
    box: tuple[float, float, float, float]
    confidence: float
    evidence_class: str


class _HeadRules:
    """Every detected head is a finding of 'no_helmet'; every fire one of 'fire_rule' (not labelled)."""

    rules = [_Rule("no_helmet", "head", 0.3), _Rule("fire_rule", "fire", 0.1)]

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def apply(
        self, dets: Any, sector: Any = None, conf: float = 0.0, *, image_size: Any = None, model_classes: Any = None
    ) -> list[_Finding]:
        self.calls.append((len(dets), sector, image_size, tuple(model_classes or ())))
        out = []
        for box in dets:
            if box.class_key == "head" and (box.confidence or 0) >= 0.3:
                out.append(_Finding("no_helmet", (box.x1, box.y1, box.x2, box.y2), float(box.confidence), "head"))
        return out


def test_rules_are_scored_per_rule_and_per_source() -> None:
    head = MODEL_CLASSES.index("head")
    person = MODEL_CLASSES.index("person")
    predictions = {
        # a: one head found (0.9), one missed; a low-confidence head below the detection threshold
        "a.jpg": {
            "xyxy": np.array([[10, 10, 20, 20], [50, 50, 60, 60], [80, 80, 90, 90]], np.float32),
            "conf": np.array([0.9, 0.1, 0.5], np.float32),
            "cls": np.array([head, head, person]),
        },
        # b: a false head (0.8)
        "b.jpg": {
            "xyxy": np.array([[0, 0, 5, 5]], np.float32),
            "conf": np.array([0.8], np.float32),
            "cls": np.array([head]),
        },
        # c: declares heads unlabelled: its head finding is not scored
        "c.jpg": {
            "xyxy": np.array([[0, 0, 5, 5]], np.float32),
            "conf": np.array([0.8], np.float32),
            "cls": np.array([head]),
        },
    }

    def item(boxes: list[tuple[str, int, int, int, int]], unlabeled: list[str] | None = None) -> dict[str, Any]:
        it: dict[str, Any] = {
            "width": 100,
            "height": 100,
            "boxes": [{"class_key": k, "x1": x1, "y1": y1, "x2": x2, "y2": y2} for k, x1, y1, x2, y2 in boxes],
        }
        if unlabeled:
            it["unlabeled_classes"] = unlabeled
        return it

    items = {
        "a.jpg": item([("head", 11, 11, 21, 21), ("head", 50, 50, 60, 60)]),
        "b.jpg": item([]),
        "c.jpg": item([("helmet", 0, 0, 5, 5)], ["head"]),
    }
    rules = _HeadRules()
    rows = score_rules(rules, predictions, items, MODEL_CLASSES, {"src-a": ["a.jpg"], "src-b": ["b.jpg", "c.jpg"]})
    # the rule set saw only detections >= 0.25, with the image size and the model's classes
    assert sorted(c[0] for c in rules.calls) == [1, 1, 2]
    assert all(c[2] == (100, 100) and c[3] == tuple(MODEL_CLASSES) for c in rules.calls)
    by = {(r["rule"], r["tag"]): r for r in rows}
    assert set(by) == {("no_helmet", None), ("no_helmet", "src-a"), ("no_helmet", "src-b")}  # fire: not labelled
    everything = by[("no_helmet", None)]
    assert (everything["images"], everything["n_gt"], everything["tp"], everything["fp"], everything["fn"]) == (
        2,
        2,
        1,
        1,
        1,
    )
    assert everything["precision"] == 0.5 and everything["recall"] == 0.5 and everything["min_confidence"] == 0.3
    assert (by[("no_helmet", "src-a")]["tp"], by[("no_helmet", "src-a")]["fp"]) == (1, 0)
    assert (
        by[("no_helmet", "src-b")]["images"],
        by[("no_helmet", "src-b")]["fp"],
        by[("no_helmet", "src-b")]["n_gt"],
    ) == (1, 1, 0)


# ---- end to end with the shipped detector ------------------------------------------------------


def cartoon(seed: int, helmet: bool, person_labelled: bool = True) -> tuple[bytes, list[dict[str, Any]]]:
    """A blue worker with a yellow helmet (or a bare skin-coloured head) and an orange fire patch, drawn
    at seeded places on a dark 160x120 photo; the boxes of what was drawn."""
    from tests.fixtures.dataset_versions import box

    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 60, (120, 160, 3), dtype=np.uint8))
    d = ImageDraw.Draw(img)
    x, y = int(rng.integers(5, 50)), int(rng.integers(18, 26))
    d.rectangle([x, y, x + 40, y + 90], fill=(40, 60, 160))
    d.ellipse([x + 10, y - 12, x + 30, y + 8], fill=(255, 220, 0) if helmet else (230, 180, 150))
    fx = int(rng.integers(95, 115))
    d.rectangle([fx, 40, fx + 40, 90], fill=(255, 120, 0))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=92)
    boxes = [box("helmet" if helmet else "head", x + 10, y - 12, x + 31, y + 9), box("fire", fx, 40, fx + 41, 91)]
    if person_labelled:
        boxes.append(box("person", x, y, x + 41, y + 91))
    return buf.getvalue(), boxes


@dataclass
class Story:
    ctx: Context
    principal: Any
    ref_all: str
    ref_a: str
    tmp: Path


@pytest.fixture(scope="module")
def story(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """16 cartoons: src-a labels everything; src-b boxes the person on 2 of 8 images and declares
    ``person`` unlabelled on all 8. Version ``all`` holds both, ``only_a`` src-a; every image in test."""
    if not BASELINE.is_file():
        pytest.skip("the shipped baseline detector is not in this checkout")
    from hazardlens.contracts import SampleFilter
    from hazardlens.datasets.library import IngestMeta, ingest
    from hazardlens.datasets.versions import create_version
    from hazardlens.labeling.annotations import save_revision
    from hazardlens.settings import Settings
    from tests.fixtures.dataset_versions import admin_principal

    tmp = tmp_path_factory.mktemp("eval_partial")
    ctx = Context(Settings(home=tmp / "home"))
    ctx.init()
    principal = admin_principal(ctx)
    for i in range(16):
        source = "src-a" if i < 8 else "src-b"
        data, boxes = cartoon(500 + i, helmet=i % 3 != 0, person_labelled=source == "src-a" or i in (8, 9))
        with ctx.db.session() as s:
            sample = ingest(
                ctx, s, principal, data, IngestMeta(sector="general", camera_id=f"cam-{i}", tags=(source,))
            ).sample
            save_revision(
                ctx,
                s,
                principal,
                sample.id,
                boxes,
                status="approved",
                unlabeled_classes=["person"] if source == "src-b" else None,
            )
    with ctx.db.session() as s:
        dv_all = create_version(ctx, s, principal, "all", ratios=(0, 0, 1), classes=list(MODEL_CLASSES))
        dv_a = create_version(
            ctx,
            s,
            principal,
            "only_a",
            ratios=(0, 0, 1),
            classes=list(MODEL_CLASSES),
            filters=SampleFilter(tag="src-a"),
        )
        refs = f"all@{dv_all.id[:12]}", f"only_a@{dv_a.id[:12]}"
    yield Story(ctx, principal, refs[0], refs[1], tmp)
    ctx.close()


def _evaluate(story: Story, ref: str, name: str, **kw: Any) -> EvalReport:
    from hazardlens.training.evaluate import evaluate

    return evaluate(
        story.ctx,
        str(BASELINE),
        ref,
        "test",
        imgsz=320,
        out_dir=story.tmp / name,
        principal=story.principal,
        device="cpu",
        **kw,
    )


def _plain_val(story: Story, ref: str, name: str) -> Any:
    """Ultralytics' own validation of the materialised version, as evaluate runs it, minus our validator."""
    import torch
    from ultralytics import YOLO

    from hazardlens.training.dataset import materialise, resolve_dataset

    dv, _ = resolve_dataset(story.ctx, ref, story.principal)
    spec = yaml.safe_load(materialise(story.ctx, dv, None).read_text(encoding="utf-8"))
    data = story.tmp / f"{name}.yaml"  # a test-only version: Ultralytics wants train and val keys too
    data.write_text(yaml.safe_dump({**spec, "train": spec["test"], "val": spec["test"]}), encoding="utf-8")
    model = YOLO(str(BASELINE), task="detect")
    model.add_callback("on_val_start", lambda _: torch.set_num_threads(os.cpu_count() or 1))
    return model.val(
        data=str(data),
        split="test",
        imgsz=320,
        conf=0.001,
        batch=16,
        device="cpu",
        workers=0,
        plots=False,
        save_json=False,
        verbose=False,
        project=str(story.tmp),
        name=name,
        exist_ok=True,
    )


def _rows(metrics: Any) -> dict[str, tuple[float, ...]]:
    return {
        MODEL_CLASSES[int(c)]: tuple(round(float(x), 5) for x in metrics.class_result(i))
        for i, c in enumerate(metrics.ap_class_index)
    }


def _report_rows(rows: Any) -> dict[str, tuple[float, ...]]:
    return {c.key: (c.precision, c.recall, c.map50, c.map50_95) for c in rows}


@pytest.mark.slow
def test_same_figures_as_plain_val_when_no_image_declares_anything(story: Story) -> None:
    report = _evaluate(story, story.ref_a, "eval_a", by_tag=True)
    plain = _plain_val(story, story.ref_a, "plain_a")
    assert report.partial_labels == {}
    assert _report_rows(report.per_class) == _rows(plain)
    mp, mr, m50, m = (round(float(v), 5) for v in plain.mean_results())
    assert (
        report.overall["precision"],
        report.overall["recall"],
        report.overall["map50"],
        report.overall["map50_95"],
    ) == (mp, mr, m50, m)
    assert {c.key: c.instances for c in report.per_class} == {
        MODEL_CLASSES[i]: int(n) for i, n in enumerate(plain.nt_per_class) if n
    }
    # the one source holding every image: its group is the whole
    (group,) = report.per_tag
    assert group.tag == "src-a" and group.overall == report.overall
    assert _report_rows(group.per_class) == _report_rows(report.per_class)


@pytest.mark.slow
def test_declared_classes_are_not_scored_and_sources_are_reported_apart(story: Story) -> None:
    whole = _evaluate(story, story.ref_all, "eval_all", by_tag=True)
    only_a = _evaluate(story, story.ref_a, "eval_a2")
    plain = _plain_val(story, story.ref_all, "plain_all")

    partial = whole.partial_labels
    assert partial["images"] == 8 and partial["classes"] == {"person": 8}
    assert partial["not_scored"]["images"] == 8 and partial["not_scored"]["labels"] == 2
    assert partial["not_scored"]["predictions"] > 0  # the model does see the unboxed workers

    ours, theirs, a = _report_rows(whole.per_class), _rows(plain), _report_rows(only_a.per_class)
    # person is scored on src-a's images only: exactly the figures of a version without src-b ...
    assert next(c for c in whole.per_class if c.key == "person").instances == 8
    assert int(plain.nt_per_class[0]) == 10  # (plain val counts src-b's two boxes, and its unboxed people)
    assert ours["person"][2:] == pytest.approx(a["person"][2:], abs=2e-5)
    # ... while every other class keeps plain val's AP (matching is per class)
    for key in ours:
        if key != "person":
            assert ours[key][2:] == theirs[key][2:], key

    groups = {g.tag: g for g in whole.per_tag}
    assert set(groups) == {"src-a", "src-b"}
    assert groups["src-a"].overall["images"] == groups["src-b"].overall["images"] == 8
    # src-a scored alone equals the version holding only src-a (same images, same predictions)
    group_a = _report_rows(groups["src-a"].per_class)
    assert set(group_a) == set(a) and all(group_a[k] == pytest.approx(a[k], abs=2e-5) for k in a)
    assert "person" not in {c.key for c in groups["src-b"].per_class}
    assert {c.key for c in groups["src-b"].per_class} >= {"fire"}

    saved = EvalReport.from_dict(json.loads((story.tmp / "eval_all" / "report.json").read_text()))
    assert [g.to_dict() for g in saved.per_tag] == [g.to_dict() for g in whole.per_tag]
    assert saved.partial_labels == partial
    md = write_report([whole, whole], story.tmp / "cmp.md").read_text()  # two columns, as --compare writes
    assert "## Per source" in md and "### Source `src-a`" in md and "### Source `src-b`" in md
    assert "## Partially labelled images" in md and "`person` (8 images)" in md

    try:
        import hazardlens.rules  # noqa: F401
    except ImportError:
        assert whole.rules == []
        return
    helmet_rows = [r for r in whole.rules if r["rule"] == "person_without_helmet"]
    assert {r["tag"] for r in helmet_rows} == {None, "src-a", "src-b"}
    heads = {None: 6, "src-a": 3, "src-b": 3}  # a bare head on every third cartoon: 500, 503, 506 / 509, 512, 515
    for r in helmet_rows:
        assert r["evidence_class"] == "head" and r["n_gt"] == heads[r["tag"]] and r["tp"] + r["fn"] == r["n_gt"]
    assert "## Rules" in md


@pytest.mark.slow
def test_cli_by_tag(story: Story, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from hazardlens.cli.main import app
    from hazardlens.settings import get_settings

    monkeypatch.setenv("HAZARDLENS_HOME", str(story.ctx.settings.home))
    monkeypatch.chdir(story.tmp)  # a relative --out, as people type it
    get_settings.cache_clear()
    try:
        res = CliRunner().invoke(
            app,
            [
                "evaluate",
                str(BASELINE),
                "--dataset",
                story.ref_all,
                "--split",
                "test",
                "--imgsz",
                "320",
                "--by-tag",
                "--tags",
                "src-b",
                "--out",
                "cli",
                "--org",
                "420000",
            ],
        )
    finally:
        get_settings.cache_clear()
    assert res.exit_code == 0, res.output
    assert "on source src-b" in res.output and "on source src-a" not in res.output
    assert "partially labelled: 8 image(s)" in res.output
    report = json.loads((story.tmp / "cli" / "model1" / "report.json").read_text())
    assert [g["tag"] for g in report["per_tag"]] == ["src-b"]
    assert "### Source `src-b`" in (story.tmp / "cli" / "report.md").read_text()
