"""Training, evaluation and the training CLI, end to end on a tiny dataset built through the library.

Tiny on purpose (a dozen 96x64 images, imgsz 64, one or two epochs): these tests prove the plumbing
(offline operation, augmentation really applied, records, registration, evaluation, resume), not
accuracy.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from hazardlens.context import Context
from hazardlens.errors import Conflict, Invalid
from hazardlens.training.evaluate import ClassMetrics, EvalReport, SectorMetrics, evaluate, write_report
from hazardlens.training.train import load_config, train
from tests.fixtures.training import TINY_CLASSES, TINY_CONFIG, TinyDataset, no_network, write_config

AUGMENT = Path(__file__).resolve().parents[1] / "configs" / "augment" / "inspection.yaml"


@pytest.fixture
def cli_home(ctx: Context, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """Point the CLI (which reads HAZARDLENS_* settings) at the test's home."""
    from hazardlens.settings import get_settings

    monkeypatch.setenv("HAZARDLENS_HOME", str(ctx.settings.home))
    get_settings.cache_clear()
    yield ctx.settings.home
    get_settings.cache_clear()


@pytest.mark.slow
def test_train_evaluate_export_offline(ctx: Context, tiny_dataset: TinyDataset, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch, cli_home: Path) -> None:
    import torch

    from hazardlens.datasets import augment
    from hazardlens.models.engines import OnnxEngine, export_onnx
    from hazardlens.models.registry import get_model, local_weights

    # Count the calls of our albumentations step: proof that training really applies our pipeline.
    calls = {"n": 0}
    original = augment.UltralyticsAlbumentations.__call__

    def counting(self, labels):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        return original(self, labels)

    monkeypatch.setattr(augment.UltralyticsAlbumentations, "__call__", counting)
    config = write_config(tmp_path / "tiny-aug.yaml", augment=str(AUGMENT))
    seen: list[tuple[float, str, int]] = []

    with no_network() as attempts:
        result = train(ctx, tiny_dataset.ref, config, principal=tiny_dataset.principal,
                       progress=lambda f, m: seen.append((f, m, torch.get_num_threads())))
        model_ref = f"{result.model['name']}:{result.model['version']}"
        report = evaluate(ctx, model_ref, tiny_dataset.ref, "test", principal=tiny_dataset.principal,
                          out_dir=tmp_path / "eval")
        with ctx.db.session() as s:
            weights = local_weights(ctx, get_model(s, result.model["name"], result.model["version"]))
        onnx = export_onnx(weights, tmp_path / "model.onnx", imgsz=64)
    assert attempts == []

    # the run is recorded
    assert result.status == "completed" and result.device == "cpu"
    run = result.run_dir
    assert run == ctx.settings.home / "runs" / result.run_id
    for name in ("config.yaml", "dataset.json", "run.json", "metrics.json", "results.csv", "weights/best.pt",
                 "weights/last.pt"):
        assert (run / name).is_file(), name
    assert yaml.safe_load((run / "config.yaml").read_text())["augment"] == str(AUGMENT)
    assert json.loads((run / "dataset.json").read_text())["id"] == tiny_dataset.version_id
    epochs = json.loads((run / "metrics.json").read_text())["epochs"]
    assert [e["epoch"] for e in epochs] == [1] and "metrics/mAP50(B)" in epochs[0]
    assert json.loads((run / "run.json").read_text())["status"] == "completed"
    assert calls["n"] > 0, "our augmentation pipeline was not applied during training"

    # progress went from 0 to 1 through the epoch, and training used every core
    fractions = [f for f, _, _ in seen]
    assert fractions[0] == 0.0 and fractions[-1] == 1.0 and fractions == sorted(fractions)
    assert any("epoch 1/1" in m for _, m, _ in seen)
    assert all(t == os.cpu_count() for f, m, t in seen if m.startswith("epoch"))

    # registered as a candidate with a complete card
    card = result.model["card"]
    assert result.model["stage"] == "candidate" and result.model["classes"] == list(TINY_CLASSES)
    assert card["dataset_version"] == tiny_dataset.version_id
    assert card["taxonomy_version"] == ctx.taxonomy().version
    data = card["training_data"]
    assert data["name"] == "tiny" and data["id"] == tiny_dataset.version_id
    assert sum(data["samples_per_split"].values()) == 12 and set(data["samples_per_split"]) == {"train", "val", "test"}
    assert data["source_sets"] == {"set:synthetic": 12} and data["sources"] == {"import": 12}
    assert set(card["metrics"]["val"]) >= {"precision", "recall", "map50", "map50_95"}
    assert card["config"]["imgsz"] == 64 and card["hashes"]["config_sha256"]
    assert card["hashes"]["weights_sha256"] == result.model["weights_sha256"]

    # evaluation: per class and per sector, plots, and the card's test metrics
    assert report.split == "test" and report.overall["images"] == data["samples_per_split"]["test"]
    assert {c.key for c in report.per_class} == set(TINY_CLASSES)
    assert {c.key: c.sector for c in report.per_class} == {"fire": "general", "accumulated_dust": "dust"}
    assert {s.sector for s in report.per_sector} == {"general", "dust"}
    assert all(c.instances > 0 for c in report.per_class)
    assert report.overall["instances"] == sum(c.instances for c in report.per_class)
    for png in ("confusion_matrix.png", "BoxPR_curve.png"):
        assert png in report.plots and Path(report.plots[png]).stat().st_size > 1000
    assert report.recorded_in_card
    with ctx.db.session() as s:
        mv = get_model(s, result.model["name"], result.model["version"])
        assert mv.card["metrics"]["test"]["map50"] == report.overall["map50"]
        assert set(mv.card["metrics"]["test"]["per_sector"]) == {"general", "dust"}

    # the ONNX export runs
    engine = OnnxEngine(onnx, list(TINY_CLASSES), imgsz=64)
    out = engine.predict([np.asarray(Image.new("RGB", (96, 64)))])
    assert len(out) == 1

    # the CLI compares two models (the registered one and its .pt) and writes a Markdown report
    res = CliRunner().invoke(_cli(), ["evaluate", model_ref, "--dataset", tiny_dataset.ref, "--compare",
                                      str(result.best), "--out", str(tmp_path / "cmp"), "--org", "420000"])
    assert res.exit_code == 0, res.output
    md = (tmp_path / "cmp" / "report.md").read_text()
    assert "## Per class" in md and "## Per sector" in md and "`fire`" in md and "Δ mAP50" in md
    assert (tmp_path / "cmp" / "model2" / "confusion_matrix.png").is_file()


def _cli():  # type: ignore[no-untyped-def]
    from hazardlens.cli.main import app

    return app


@pytest.mark.slow
def test_resume_after_interruption(ctx: Context, tiny_dataset: TinyDataset, tmp_path: Path, cli_home: Path) -> None:
    config = write_config(tmp_path / "two.yaml", epochs=2)

    class Stop(Exception):
        pass

    def stop_after_first_epoch(fraction: float, message: str) -> None:
        if message.startswith("epoch 1/2 done"):
            raise Stop

    with pytest.raises(Stop):
        train(ctx, tiny_dataset.ref, config, principal=tiny_dataset.principal, progress=stop_after_first_epoch)
    runs = list((ctx.settings.home / "runs").iterdir())
    assert len(runs) == 1
    info = json.loads((runs[0] / "run.json").read_text())
    assert info["status"] == "failed" and (runs[0] / "weights" / "last.pt").is_file()
    assert [e["epoch"] for e in json.loads((runs[0] / "metrics.json").read_text())["epochs"]] == [1]

    # `hazardlens train --resume` continues the same run from its last.pt (epoch 2 only)
    res = CliRunner().invoke(_cli(), ["train", "--dataset", tiny_dataset.ref, "--config", str(config), "--resume",
                                      "--org", "420000"])
    assert res.exit_code == 0, res.output
    info = json.loads((runs[0] / "run.json").read_text())
    assert info["status"] == "completed" and "resumed_at" in info
    assert [e["epoch"] for e in json.loads((runs[0] / "metrics.json").read_text())["epochs"]] == [1, 2]
    assert info["model"]["version"] == "1"
    assert list((ctx.settings.home / "runs").iterdir()) == runs

    # a finished run cannot be resumed again
    with pytest.raises(Conflict):
        train(ctx, tiny_dataset.ref, config, principal=tiny_dataset.principal, resume=True)


def test_config_is_checked_before_anything_runs(tmp_path: Path) -> None:
    cfg = load_config(TINY_CONFIG)
    assert (cfg.model, cfg.imgsz, cfg.epochs, cfg.batch, cfg.workers) == ("yolo11n.yaml", 64, 1, 2, 0)
    baseline = load_config(TINY_CONFIG.with_name("baseline.yaml"))
    assert baseline.augment == AUGMENT.resolve() and baseline.train_caps == {"fire": 150, "smoke": 150}
    assert (baseline.time, baseline.epochs, baseline.close_mosaic, baseline.cache) == (1.6, 60, 5, "ram")

    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"model": "yolo11n.yaml", "epoch": 3, "imgsz": 50,
                                   "ultralytics": {"amp": True, "data": "x", "nonsense": 1}}))
    with pytest.raises(Invalid) as err:
        load_config(bad)
    text = str(err.value.message)
    for needle in ("epoch", "imgsz", "amp", "data", "nonsense"):
        assert needle in text
    missing = tmp_path / "missing.yaml"
    missing.write_text(yaml.safe_dump({"model": "yolo11n.pt"}))  # not local: never downloaded
    with pytest.raises(Invalid, match="not found locally"):
        load_config(missing)


def _report(label: str, fire: float, dust: float) -> EvalReport:
    rows = [ClassMetrics("fire", "general", 3, 4, 0.5, 0.5, fire, fire / 2),
            ClassMetrics("accumulated_dust", "dust", 3, 6, 0.5, 0.5, dust, dust / 2)]
    name, version = label.split(":")
    return EvalReport(model={"name": name, "version": version}, dataset={"ref": "d@1", "name": "d", "id": "abc"},
                      split="test", imgsz=64, conf=0.001,
                      overall={"images": 3, "instances": 10, "precision": 0.5, "recall": 0.5, "map50": 0.4,
                               "map50_95": 0.2},
                      per_class=rows, per_sector=[SectorMetrics("general", "通用", ["fire"], 4, 0.5, 0.5, fire, 0),
                                                  SectorMetrics("dust", "粉尘涉爆", ["accumulated_dust"], 6, 0.5,
                                                                0.5, dust, 0)])


def test_write_report_shows_per_class_deltas(tmp_path: Path) -> None:
    md = write_report([_report("hazardlens:1", 0.5, 0.2), _report("hazardlens:2", 0.75, 0.1)], tmp_path).read_text()
    fire = next(line for line in md.splitlines() if line.startswith("| `fire`"))
    dust = next(line for line in md.splitlines() if line.startswith("| `accumulated_dust`"))
    assert "+0.250" in fire and "-0.100" in dust
    assert "粉尘涉爆 (dust)" in md
    other = _report("hazardlens:3", 0.1, 0.1)
    other.dataset = {"ref": "e@1", "name": "e", "id": "def"}
    with pytest.raises(Invalid):
        write_report([_report("hazardlens:1", 0.5, 0.2), other], tmp_path)
