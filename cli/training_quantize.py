"""``hazardlens models quantize NAME VERSION``: an INT8 variant, evaluated against FP32, recorded.

The registry step joins three parts, so it lives here (the CLI may import every part): the models
part calibrates and quantises (:mod:`hazardlens.models.quantize`) and records the result, the
training part's evaluation (``hazardlens.training.evaluate``, the same code as ``hazardlens
evaluate``) scores the FP32 export and the variant on the same dataset version and split.

Registered on the ``models`` group made by ``cli/training.py``; this module's name sorts after it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
import yaml
from rich.table import Table

from hazardlens.cli.common import ORG_HELP, cli_principal, console, context, friendly_errors
from hazardlens.context import Context
from hazardlens.errors import Invalid

SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}


def _train_images(ctx: Context, dataset: str, principal: Any) -> list[Path]:
    """The dataset version's train images, materialised as training reads them."""
    from hazardlens.training.dataset import materialise, resolve_dataset

    dv, _ = resolve_dataset(ctx, dataset, principal)
    data_yaml = materialise(ctx, dv)
    data = yaml.safe_load(data_yaml.read_text(encoding="utf-8")) or {}
    root = Path(data.get("path") or data_yaml.parent)
    root = root if root.is_absolute() else (data_yaml.parent / root).resolve()
    entries = data.get("train") or []
    images: list[Path] = []
    for entry in entries if isinstance(entries, list) else [entries]:
        folder = Path(entry) if Path(entry).is_absolute() else root / entry
        if folder.is_dir():
            images += sorted(p for p in folder.rglob("*") if p.suffix.lower() in SUFFIXES)
    return images


def _default_dataset(card: dict[str, Any]) -> str:
    """The version the model was trained on, as NAME@ID-prefix (its val split was held out)."""
    dv = card.get("dataset_version")
    name = (card.get("training_data") or {}).get("name")
    if not dv or not name:
        raise Invalid("the model's card names no dataset version; give --dataset NAME@VERSION", code="invalid")
    return f"{name}@{dv[:12]}"


def quantize_command(
    name: str = typer.Argument(..., help="model name"),
    version: str = typer.Argument(..., help="model version"),
    engine: str = typer.Option("openvino-int8", "--engine", help="openvino-int8, onnx-int8 or all"),
    dataset: str = typer.Option(None, "--dataset", help="evaluate on NAME@VERSION (default: the model's own)"),
    split: str = typer.Option("val", "--split", help="split scored for the accuracy check"),
    calibration: int = typer.Option(300, "--calibration", min=8, max=2000, help="calibration images at most"),
    calibrate_on: str = typer.Option(
        "library", "--calibrate-on", help="library (approved samples) or dataset (its train images)"
    ),
    max_loss: float = typer.Option(
        None, "--max-loss", help="mAP50 the variant may lose (default HAZARDLENS_QUANTIZE_MAX_LOSS, 0.01)"
    ),
    org: str = typer.Option("000000", "--org", help=ORG_HELP),
) -> None:
    """Quantise a registered version to INT8 (NNCF post-training), evaluate it against the FP32 model on
    a dataset version, and record it in the registry: accepted (served by HAZARDLENS_ENGINE=openvino-int8 /
    onnx-int8 / auto) or refused when it loses more than the allowed mAP50 (exit code 2)."""
    from hazardlens.auth import require_system
    from hazardlens.models.manager import cached_onnx
    from hazardlens.models.quantize import (
        MIN_CALIBRATION,
        QuantizationRejected,
        approved_sample_bytes,
        calibration_tensors,
        check_calibration,
        check_kind,
        judge,
        quantize_onnx,
        record_variant,
        scratch,
    )
    from hazardlens.models.registry import get_model
    from hazardlens.training.evaluate import evaluate

    kinds = ["openvino-int8", "onnx-int8"] if engine.strip().lower() == "all" else [check_kind(engine)]
    if calibrate_on not in ("library", "dataset"):
        raise Invalid("--calibrate-on is library or dataset", code="invalid")
    ctx = context()
    ctx.init()
    principal = cli_principal(ctx, org)
    require_system(principal, "adding a quantised variant to a model")
    allowed = ctx.settings.quantize_max_loss if max_loss is None else float(max_loss)
    with ctx.db.session() as s:
        mv = get_model(s, name, version)
    dataset = dataset or _default_dataset(mv.card or {})
    imgsz = int(mv.imgsz)
    fp32 = cached_onnx(ctx, mv)

    images: list[bytes | Path] = []
    source = calibrate_on
    if calibrate_on == "library":
        images = list(approved_sample_bytes(ctx, calibration))
    if len(images) < MIN_CALIBRATION:  # too few approved samples: the dataset's train images instead
        source = f"dataset {dataset} train"
        paths = _train_images(ctx, dataset, principal)
        step = max(1, len(paths) // calibration)
        images = list(paths[::step][:calibration])
    console.print(f"calibrating on {len(images)} image(s) from {source}...")
    tensors = calibration_tensors(images, imgsz)
    check_calibration(tensors)  # before minutes of evaluation

    rejected: list[str] = []
    with scratch(ctx) as work:
        console.print(f"evaluating FP32 {name} {version} on {dataset} ({split})...")
        base = evaluate(
            ctx, str(fp32), dataset, split, imgsz, out_dir=work / "eval-fp32", principal=principal, rules=False
        )
        table = Table("variant", "mAP50", "mAP50-95", "loss", "allowed", "verdict", title=f"{name} {version}")
        table.add_row("fp32", f"{base.overall['map50']:.4f}", f"{base.overall['map50_95']:.4f}", "", "", "")
        for kind in kinds:
            console.print(f"quantising {kind}...")
            target, files = quantize_onnx(fp32, kind, tensors, work / kind)
            console.print(f"evaluating {kind}...")
            report = evaluate(
                ctx, str(target), dataset, split, imgsz, out_dir=work / f"eval-{kind}", principal=principal, rules=False
            )
            loss, ok = judge(base.overall["map50"], report.overall["map50"], allowed)
            entry = record_variant(
                ctx,
                principal,
                name,
                version,
                kind,
                files,
                {
                    "dataset": dataset,
                    "split": split,
                    "map50_fp32": round(float(base.overall["map50"]), 5),
                    "map50": round(float(report.overall["map50"]), 5),
                    "map50_95_fp32": round(float(base.overall["map50_95"]), 5),
                    "map50_95": round(float(report.overall["map50_95"]), 5),
                    "loss": loss,
                    "allowed_loss": allowed,
                    "calibration": {"source": source, "images": len(tensors)},
                },
                ok,
            )
            table.add_row(
                kind,
                f"{entry['map50']:.4f}",
                f"{entry['map50_95']:.4f}",
                f"{loss:+.4f}",
                f"{allowed:.4f}",
                "accepted" if ok else "refused",
            )
            print(json.dumps(entry, ensure_ascii=False))
            if not ok:
                rejected.append(f"{kind} loses {loss:.4f} mAP50 (allowed {allowed:.4f})")
    console.print(table)
    if rejected:
        raise QuantizationRejected(
            f"{name} {version}: " + "; ".join(rejected) + "; recorded as refused, not served",
        )


def register(app: typer.Typer) -> None:
    models = next((g.typer_instance for g in app.registered_groups if g.name == "models"), None)
    if models is None:  # pragma: no cover - cli/training.py defines the group
        return
    models.command("quantize")(friendly_errors(quantize_command))
