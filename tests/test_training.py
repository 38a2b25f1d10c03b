"""Training, evaluation and the training CLI, end to end on a tiny dataset built through the library.

Tiny on purpose (a dozen 96x64 images, imgsz 64, one or two epochs): these tests prove the plumbing
(offline operation, augmentation really applied, records, registration, evaluation, resume), not
accuracy.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from hazardlens.context import Context
from hazardlens.errors import Conflict, Invalid
from hazardlens.training.config import load_config
from hazardlens.training.evaluate import ClassMetrics, EvalReport, SectorMetrics, write_report
from hazardlens.training.train import train
from tests.fixtures.training import TINY_CLASSES, TINY_CONFIG, TinyDataset, make_tiny_dataset, no_network, write_config

AUGMENT = Path(__file__).resolve().parents[1] / "configs" / "augment" / "inspection.yaml"


@dataclass
class Trained:
    """What the module's one training story left behind (see ``trained``)."""

    ctx: Context
    dataset: TinyDataset
    run_dir: Path
    model_ref: str
    attempts: list[str]
    augment_calls: int
    progress: list[tuple[float, str, int]]
    interrupted: dict[str, Any]
    report: EvalReport
    compare_dir: Path
    onnx: Path
    cli_output: str


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Trained]:
    """One story, run once for the module with every non-loopback connection refused: train two
    epochs with our augmentation, get interrupted after the first, resume with `hazardlens train
    --resume`, evaluate the candidate against its own best.pt with `hazardlens evaluate --compare`,
    export it to ONNX."""
    import torch

    from hazardlens.datasets import augment
    from hazardlens.models.engines import export_onnx
    from hazardlens.models.registry import get_model, local_weights
    from hazardlens.settings import Settings, get_settings

    tmp = tmp_path_factory.mktemp("training")
    ctx = Context(Settings(home=tmp / "home"))
    ctx.init()
    dataset = make_tiny_dataset(ctx)
    config = write_config(tmp / "two.yaml", epochs=2, augment=str(AUGMENT))
    calls = {"n": 0}
    original = augment.UltralyticsAlbumentations.__call__

    def counting(self, labels):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        return original(self, labels)

    seen: list[tuple[float, str, int]] = []

    class Stop(Exception):
        pass

    def progress(fraction: float, message: str) -> None:
        seen.append((fraction, message, torch.get_num_threads()))
        if message.startswith("epoch 1/2 done"):
            raise Stop  # as if the machine went down after the first epoch

    with pytest.MonkeyPatch.context() as mp, no_network() as attempts:
        mp.setattr(augment.UltralyticsAlbumentations, "__call__", counting)
        mp.setenv("HAZARDLENS_HOME", str(ctx.settings.home))  # the CLI reads its settings from the env
        get_settings.cache_clear()
        try:
            with pytest.raises(Stop):
                train(ctx, dataset.ref, config, principal=dataset.principal, progress=progress)
            (run_dir,) = (ctx.settings.home / "runs").iterdir()
            interrupted = {
                "run": json.loads((run_dir / "run.json").read_text()),
                "epochs": json.loads((run_dir / "metrics.json").read_text())["epochs"],
                "last": (run_dir / "weights" / "last.pt").is_file(),
            }
            res = CliRunner().invoke(
                _cli(), ["train", "--dataset", dataset.ref, "--config", str(config), "--resume", "--org", "420000"]
            )
            assert res.exit_code == 0, res.output
            model_ref = res.stdout.strip().splitlines()[-1]
            best = run_dir / "weights" / "best.pt"
            res2 = CliRunner().invoke(
                _cli(),
                [
                    "evaluate",
                    model_ref,
                    "--dataset",
                    dataset.ref,
                    "--compare",
                    str(best),
                    "--out",
                    str(tmp / "cmp"),
                    "--org",
                    "420000",
                ],
            )
            assert res2.exit_code == 0, res2.output
            name, version = model_ref.split(":")
            with ctx.db.session() as s:
                weights = local_weights(ctx, get_model(s, name, version))
            onnx = export_onnx(weights, tmp / "model.onnx", imgsz=64)
        finally:
            get_settings.cache_clear()
    report = EvalReport.from_dict(json.loads((tmp / "cmp" / "model1" / "report.json").read_text()))
    yield Trained(
        ctx,
        dataset,
        run_dir,
        model_ref,
        attempts,
        calls["n"],
        seen,
        interrupted,
        report,
        tmp / "cmp",
        onnx,
        res.output + res2.output,
    )
    ctx.close()


def _cli():  # type: ignore[no-untyped-def]
    from hazardlens.cli.main import app

    return app


@pytest.mark.slow
def test_nothing_touches_the_network(trained: Trained) -> None:
    assert trained.attempts == []


@pytest.mark.slow
def test_the_run_is_recorded_and_trains_with_our_augmentation(trained: Trained) -> None:
    run = trained.run_dir
    assert run.parent == trained.ctx.settings.home / "runs"
    for name in (
        "config.yaml",
        "config.source.yaml",
        "dataset.json",
        "run.json",
        "metrics.json",
        "results.csv",
        "weights/best.pt",
        "weights/last.pt",
    ):
        assert (run / name).is_file(), name
    assert yaml.safe_load((run / "config.yaml").read_text())["augment"] == str(AUGMENT)
    assert json.loads((run / "dataset.json").read_text())["id"] == trained.dataset.version_id
    epochs = json.loads((run / "metrics.json").read_text())["epochs"]
    assert [e["epoch"] for e in epochs] == [1, 2] and "metrics/mAP50(B)" in epochs[0]
    assert trained.augment_calls > 0, "our augmentation pipeline was not applied during training"

    # progress rose from 0 through the epoch, and training used every core (Ultralytics leaves one idle)
    fractions = [f for f, _, _ in trained.progress]
    assert fractions[0] == 0.0 and fractions == sorted(fractions) and 0 < fractions[-1] < 1
    assert any(m.startswith("epoch 1/2: batch") for _, m, _ in trained.progress)
    assert all(t == os.cpu_count() for _, m, t in trained.progress if m.startswith("epoch"))


@pytest.mark.slow
def test_an_interrupted_run_resumes_from_its_last_checkpoint(trained: Trained) -> None:
    before = trained.interrupted
    assert before["run"]["status"] == "failed" and before["last"]
    assert [e["epoch"] for e in before["epochs"]] == [1]
    info = json.loads((trained.run_dir / "run.json").read_text())
    assert info["status"] == "completed" and "resumed_at" in info and info["run_id"] == trained.run_dir.name
    assert f"{info['model']['name']}:{info['model']['version']}" == trained.model_ref
    assert len(list(trained.run_dir.parent.iterdir())) == 1  # the same run folder, not a new run
    with pytest.raises(Conflict):  # a finished run cannot be resumed again
        train(
            trained.ctx,
            trained.dataset.ref,
            trained.run_dir / "config.source.yaml",
            principal=trained.dataset.principal,
            resume=True,
        )


@pytest.mark.slow
def test_best_weights_are_registered_as_a_candidate_with_a_card(trained: Trained) -> None:
    from hazardlens.models.registry import get_model, sha256_file

    name, version = trained.model_ref.split(":")
    with trained.ctx.db.session() as s:
        mv = get_model(s, name, version)
        stage, classes, card, digest = mv.stage, mv.classes, mv.card, mv.weights_sha256
    assert stage == "candidate" and classes == list(TINY_CLASSES)
    assert digest == sha256_file(trained.run_dir / "weights" / "best.pt")
    assert card["dataset_version"] == trained.dataset.version_id
    assert card["taxonomy_version"] == trained.ctx.taxonomy().version
    data = card["training_data"]
    assert data["name"] == "tiny" and data["id"] == trained.dataset.version_id
    assert set(data["samples_per_split"]) == {"train", "val", "test"} and sum(data["samples_per_split"].values()) == 12
    assert data["source_sets"] == {"set:synthetic": 12} and data["sources"] == {"import": 12}
    assert data["materialised"]["splits"]["train"]["images"] == data["samples_per_split"]["train"]
    assert set(card["metrics"]["val"]) >= {"precision", "recall", "map50", "map50_95"}
    assert card["config"]["imgsz"] == 64 and card["config"]["epochs"] == 2 and card["hashes"]["config_sha256"]
    assert card["hashes"]["weights_sha256"] == digest and card["training"]["resumed"] is True
    assert card["framework"]["ultralytics"]


@pytest.mark.slow
def test_evaluation_reports_per_class_and_per_sector(trained: Trained) -> None:
    from hazardlens.models.registry import get_model

    report = trained.report
    assert report.split == "test" and report.label == trained.model_ref
    with trained.ctx.db.session() as s:
        card = get_model(s, *trained.model_ref.split(":")).card
    assert report.overall["images"] == card["training_data"]["samples_per_split"]["test"]
    assert {c.key: c.sector for c in report.per_class} == {"fire": "general", "accumulated_dust": "dust"}
    assert {s.sector for s in report.per_sector} == {"general", "dust"}
    assert all(c.instances > 0 for c in report.per_class)
    assert report.overall["instances"] == sum(c.instances for c in report.per_class)
    for png in ("confusion_matrix.png", "BoxPR_curve.png"):
        assert png in report.plots and Path(report.plots[png]).stat().st_size > 1000
    # a registered model evaluated on its own version's test split keeps the result in its card
    assert report.recorded_in_card
    assert card["metrics"]["test"]["map50"] == report.overall["map50"]
    assert set(card["metrics"]["test"]["per_sector"]) == {"general", "dust"}


@pytest.mark.slow
def test_cli_comparison_report(trained: Trained) -> None:
    md = (trained.compare_dir / "report.md").read_text()
    assert "## Per class" in md and "## Per sector" in md and "`fire`" in md and "Δ mAP50" in md
    assert f"`{trained.model_ref}`" in md
    assert (trained.compare_dir / "model2" / "confusion_matrix.png").is_file()
    assert "mAP50 per sector" in trained.cli_output


@pytest.mark.slow
def test_the_onnx_export_runs(trained: Trained) -> None:
    from hazardlens.models.engines import OnnxEngine

    engine = OnnxEngine(trained.onnx, list(TINY_CLASSES), imgsz=64)
    out = engine.predict([np.asarray(Image.new("RGB", (96, 64)))])
    assert len(out) == 1


def test_config_is_checked_before_anything_runs(tmp_path: Path) -> None:
    cfg = load_config(TINY_CONFIG)
    assert (cfg.model, cfg.imgsz, cfg.epochs, cfg.batch, cfg.workers) == ("yolo11n.yaml", 64, 1, 2, 0)
    baseline = load_config(TINY_CONFIG.with_name("baseline.yaml"))
    assert baseline.augment == AUGMENT.resolve() and baseline.train_caps == {"fire": 150, "smoke": 150}
    assert (baseline.time, baseline.epochs, baseline.close_mosaic, baseline.cache) == (1.6, 60, 5, "ram")

    bad = tmp_path / "bad.yaml"
    bad.write_text(
        yaml.safe_dump(
            {"model": "yolo11n.yaml", "epoch": 3, "imgsz": 50, "ultralytics": {"amp": True, "data": "x", "nonsense": 1}}
        )
    )
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
    rows = [
        ClassMetrics("fire", "general", 3, 4, 0.5, 0.5, fire, fire / 2),
        ClassMetrics("accumulated_dust", "dust", 3, 6, 0.5, 0.5, dust, dust / 2),
    ]
    name, version = label.split(":")
    return EvalReport(
        model={"name": name, "version": version},
        dataset={"ref": "d@1", "name": "d", "id": "abc"},
        split="test",
        imgsz=64,
        conf=0.001,
        overall={"images": 3, "instances": 10, "precision": 0.5, "recall": 0.5, "map50": 0.4, "map50_95": 0.2},
        per_class=rows,
        per_sector=[
            SectorMetrics("general", "通用", ["fire"], 4, 0.5, 0.5, fire, 0),
            SectorMetrics("dust", "粉尘涉爆", ["accumulated_dust"], 6, 0.5, 0.5, dust, 0),
        ],
    )


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
