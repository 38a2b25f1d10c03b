"""Training runs on disk: ``<home>/runs/<run_id>/`` holds the config as read, the dataset version,
per-epoch metrics and Ultralytics' own artifacts; its ``run.json`` says how far the run got, so that a
crashed run can be found and resumed.
"""

from __future__ import annotations

import csv
import json
import os
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hazardlens.context import Context
from hazardlens.contracts.training import TrainConfig
from hazardlens.errors import Conflict, NotFound
from hazardlens.orm import DatasetVersion

RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")


@dataclass
class TrainResult:
    run_id: str
    run_dir: Path
    status: str
    dataset: dict[str, Any]
    device: str
    epochs: list[dict[str, Any]]
    metrics: dict[str, float]
    best: Path | None
    last: Path | None
    model: dict[str, Any] | None = None  # the registered candidate (registry.model_dict)
    resumed: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "run_dir": str(self.run_dir),
            "status": self.status,
            "dataset": self.dataset,
            "device": self.device,
            "epochs": self.epochs,
            "metrics": self.metrics,
            "best": str(self.best) if self.best else None,
            "last": str(self.last) if self.last else None,
            "model": self.model,
            "resumed": self.resumed,
        }


def runs_root(ctx: Context) -> Path:
    return ctx.settings.home / "runs"


def write_json(path: Path, data: Any) -> None:
    """Atomic, so that a reader (the jobs API, a resume) never sees half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, ensure_ascii=False, indent=2, default=str), encoding="utf-8")
    os.replace(tmp, path)


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def new_run_id(dataset_name: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", dataset_name).strip("-")[:40] or "dataset"
    return f"{datetime.now(UTC):%Y%m%d-%H%M%S}-{slug}-{secrets.token_hex(3)}"


def find_resumable(ctx: Context, dv: DatasetVersion, cfg: TrainConfig, run_id: str | None) -> Path:
    root = runs_root(ctx)
    if run_id:
        run_dir = root / run_id
        if not (run_dir / "run.json").is_file():
            raise NotFound(f"no training run {run_id!r} under {root}", code="run_not_found")
        candidates = [run_dir]
    else:
        # Newest unfinished run of the same dataset version and config: "train --resume" after a crash.
        candidates = sorted((p for p in root.glob("*/run.json")), key=lambda p: p.stat().st_mtime, reverse=True)
        candidates = [p.parent for p in candidates]
        candidates = [
            d
            for d in candidates
            if (info := read_json(d / "run.json")).get("dataset", {}).get("id") == dv.id
            and info.get("config_sha256") == cfg.sha256()
            and info.get("status") != "completed"
        ]
        if not candidates:
            raise Conflict(f"no unfinished run of {dv.name} with this config to resume", code="nothing_to_resume")
    run_dir = candidates[0]
    info = read_json(run_dir / "run.json")
    if info.get("status") == "completed":
        raise Conflict(f"run {run_dir.name} already finished; start a new one", code="run_finished")
    if not (run_dir / "weights" / "last.pt").is_file():
        raise Conflict(
            f"run {run_dir.name} saved no checkpoint (it stopped in its first epoch); start a new one",
            code="no_checkpoint",
        )
    return run_dir


def read_epochs(results_csv: Path) -> list[dict[str, Any]]:
    """Ultralytics' results.csv as a list of {column: number} (one row per epoch)."""
    if not results_csv.is_file():
        return []
    with results_csv.open(newline="", encoding="utf-8") as f:
        rows = []
        for row in csv.DictReader(f):
            parsed: dict[str, Any] = {}
            for k, v in row.items():
                if k is None:
                    continue
                try:
                    num = float(v)
                    parsed[k.strip()] = int(num) if k.strip() == "epoch" else num
                except (TypeError, ValueError):
                    parsed[k.strip()] = v
            rows.append(parsed)
    return rows


_METRIC_NAMES = {
    "metrics/precision(B)": "precision",
    "metrics/recall(B)": "recall",
    "metrics/mAP50(B)": "map50",
    "metrics/mAP50-95(B)": "map50_95",
}


def clean_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """Ultralytics' metric keys ('metrics/mAP50-95(B)') as the names evaluation reports use."""
    out: dict[str, float] = {}
    for k, v in metrics.items():
        try:
            out[_METRIC_NAMES.get(k, k)] = round(float(v), 5)
        except (TypeError, ValueError):
            continue
    return out
