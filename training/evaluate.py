"""Evaluate a model on a dataset version's split, per class and per sector, and compare versions.

Inspectors work by sector (a dust-explosion check, a confined-space check), so besides the usual
per-class table a report says how well the model does for each sector's classes: that is what
decides whether a model is good enough to help with a given inspection.

Per-sector numbers aggregate the per-class results of one validation run, weighted by each class's
instance count in the split (a class with 300 boxes counts 300 times one with a single box). They
are not the AP of the pooled detections; a class belongs to the sector the taxonomy gives it.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from hazardlens.audit import record
from hazardlens.auth import SYSTEM, Principal
from hazardlens.context import Context
from hazardlens.errors import Invalid, NotFound
from hazardlens.orm import ModelVersion
from hazardlens.training.train import data_names, materialise, resolve_dataset, resolve_device

log = logging.getLogger(__name__)

_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
_METRICS = ("precision", "recall", "map50", "map50_95")


@dataclass
class ClassMetrics:
    key: str
    sector: str
    images: int
    instances: int
    precision: float
    recall: float
    map50: float
    map50_95: float


@dataclass
class SectorMetrics:
    sector: str
    name: str
    classes: list[str]
    instances: int
    precision: float
    recall: float
    map50: float
    map50_95: float


@dataclass
class EvalReport:
    model: dict[str, Any]
    dataset: dict[str, Any]
    split: str
    imgsz: int
    conf: float
    overall: dict[str, float]
    per_class: list[ClassMetrics]
    per_sector: list[SectorMetrics]
    skipped_classes: list[str] = field(default_factory=list)  # in the split but unknown to the model
    plots: dict[str, str] = field(default_factory=dict)
    out_dir: str = ""
    created_at: str = ""
    recorded_in_card: bool = False

    @property
    def label(self) -> str:
        m = self.model
        return f"{m['name']}:{m['version']}" if m.get("name") and m.get("version") else str(m.get("ref"))

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "dataset": self.dataset, "split": self.split, "imgsz": self.imgsz,
                "conf": self.conf, "overall": self.overall, "per_class": [vars(c) for c in self.per_class],
                "per_sector": [vars(s) for s in self.per_sector], "skipped_classes": self.skipped_classes,
                "plots": self.plots, "out_dir": self.out_dir, "created_at": self.created_at,
                "recorded_in_card": self.recorded_in_card}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EvalReport:
        return cls(model=d["model"], dataset=d["dataset"], split=d["split"], imgsz=d["imgsz"], conf=d["conf"],
                   overall=d["overall"], per_class=[ClassMetrics(**c) for c in d["per_class"]],
                   per_sector=[SectorMetrics(**s) for s in d["per_sector"]],
                   skipped_classes=d.get("skipped_classes", []), plots=d.get("plots", {}),
                   out_dir=d.get("out_dir", ""), created_at=d.get("created_at", ""),
                   recorded_in_card=d.get("recorded_in_card", False))


# ---- model references ---------------------------------------------------------------------------


def resolve_model(ctx: Context, ref: str) -> tuple[Path, dict[str, Any], int | None]:
    """'NAME:VERSION', 'production' / 'NAME:production' (the registry), or a local .pt path.
    Returns the weights path, a description for the report, and the registry row id if any."""
    from hazardlens.models.registry import DEFAULT_NAME, get_model, local_weights, production_model

    ref = (ref or "").strip()
    path = Path(ref).expanduser()
    if ref.endswith(".pt") or path.is_file():
        if not path.is_file():
            raise NotFound(f"weights file {ref} not found", code="model_not_found")
        from hazardlens.models.registry import sha256_file

        return path.resolve(), {"ref": ref, "path": str(path.resolve()), "weights_sha256": sha256_file(path)}, None
    name, _, version = ref.rpartition(":")
    if ref == "production":
        name, version = DEFAULT_NAME, "production"
    if not name or not version:
        raise Invalid(f"model reference {ref!r} must be NAME:VERSION, 'production', NAME:production or a .pt path",
                      code="invalid_model_ref")
    with ctx.db.session() as session:
        if version == "production":
            mv = production_model(session, name)
            if mv is None:
                raise NotFound(f"no production version of {name}", code="model_not_found")
        else:
            mv = get_model(session, name, version)
        weights = local_weights(ctx, mv)
        info = {"ref": ref, "name": mv.name, "version": mv.version, "stage": mv.stage,
                "weights_sha256": mv.weights_sha256, "dataset_version": mv.dataset_version_id, "imgsz": mv.imgsz,
                "classes": list(mv.classes)}
        return weights, info, mv.id


# ---- data alignment -----------------------------------------------------------------------------


def _split_images(data_yaml: Path, split: str) -> tuple[dict[str, Any], list[Path]]:
    data = yaml.safe_load(data_yaml.read_text(encoding="utf-8")) or {}
    if split not in data or not data[split]:
        raise Invalid(f"the dataset has no {split!r} split", code="unknown_split")
    root = Path(data.get("path") or data_yaml.parent)
    if not root.is_absolute():
        root = (data_yaml.parent / root).resolve()
    entries = data[split] if isinstance(data[split], list) else [data[split]]
    images: list[Path] = []
    for entry in entries:
        p = Path(entry) if Path(entry).is_absolute() else root / entry
        if p.is_dir():
            images += sorted(f for f in p.rglob("*") if f.suffix.lower() in _IMAGE_SUFFIXES)
        elif p.suffix == ".txt" and p.is_file():
            for line in p.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    q = Path(line.strip())
                    images.append(q if q.is_absolute() else (root / q))
    return data, images


def _label_path(image: Path) -> Path:
    parts = list(image.parts)
    idx = len(parts) - 1 - parts[::-1].index("images")  # Ultralytics: the last /images/ becomes /labels/
    parts[idx] = "labels"
    return Path(*parts).with_suffix(".txt")


def _aligned_data(data_yaml: Path, split: str, model_classes: list[str], work: Path) -> tuple[Path, list[str]]:
    """Ultralytics compares class indices, so a model whose class list differs from the dataset's
    (another order, fewer or more classes) is evaluated on a copy of the split whose labels are
    renumbered to the model's classes; boxes of classes the model does not know are left out and
    reported as skipped."""
    ds_classes = data_names(data_yaml)
    if ds_classes == model_classes:
        return data_yaml, []
    index = {name: i for i, name in enumerate(model_classes)}
    _, images = _split_images(data_yaml, split)
    img_dir, lbl_dir = work / "images" / split, work / "labels" / split
    img_dir.mkdir(parents=True, exist_ok=True)
    lbl_dir.mkdir(parents=True, exist_ok=True)
    skipped: set[str] = set()
    for n, image in enumerate(images):
        target = img_dir / f"{n:06d}{image.suffix.lower()}"
        if not target.exists():
            try:
                target.symlink_to(image.resolve())
            except OSError:
                shutil.copyfile(image, target)
        lines = []
        label = _label_path(image)
        if label.is_file():
            for line in label.read_text(encoding="utf-8").splitlines():
                parts = line.split()
                if not parts:
                    continue
                name = ds_classes[int(float(parts[0]))]
                if name in index:
                    lines.append(" ".join([str(index[name]), *parts[1:]]))
                else:
                    skipped.add(name)
        (lbl_dir / f"{n:06d}.txt").write_text("\n".join(lines) + ("\n" if lines else ""), encoding="utf-8")
    aligned = work / "data.yaml"
    rel = f"images/{split}"
    aligned.write_text(yaml.safe_dump({"path": str(work), "train": rel, "val": rel, split: rel,
                                       "names": dict(enumerate(model_classes))}, allow_unicode=True),
                       encoding="utf-8")
    return aligned, sorted(skipped)


# ---- evaluation ---------------------------------------------------------------------------------


def _weighted(rows: list[ClassMetrics], attr: str) -> float:
    total = sum(r.instances for r in rows)
    return float(sum(getattr(r, attr) * r.instances for r in rows) / total) if total else 0.0


def per_sector(ctx: Context, rows: list[ClassMetrics]) -> list[SectorMetrics]:
    tax = ctx.taxonomy()
    out = []
    for key, sector in tax.sectors.items():
        members = [r for r in rows if r.sector == key and r.instances > 0]
        if not members:
            continue
        out.append(SectorMetrics(sector=key, name=sector.name_zh, classes=[r.key for r in members],
                                 instances=sum(r.instances for r in members),
                                 **{m: round(_weighted(members, m), 5) for m in _METRICS}))
    return out


def evaluate(ctx: Context, model_ref: str, dataset_ref: str, split: str = "test", imgsz: int | None = None,
             conf: float = 0.001, *, out_dir: Path | None = None, principal: Principal = SYSTEM,
             record_in_card: bool = True, device: str | None = None) -> EvalReport:
    """Run Ultralytics' validation of ``model_ref`` on ``dataset_ref``'s ``split`` and report per class
    and per sector, with confusion-matrix and PR-curve plots in ``out_dir`` (default
    ``<home>/evals/<id>``). A registered model evaluated on its own dataset version's test split has
    the result written into its model card."""
    from hazardlens.models.ultralytics_env import prepare_ultralytics

    prepare_ultralytics(ctx.settings.home)
    if split not in ("train", "val", "test"):
        raise Invalid(f"split must be train, val or test, not {split!r}", code="unknown_split")
    weights, model_info, model_id = resolve_model(ctx, model_ref)
    dv, provenance = resolve_dataset(ctx, dataset_ref, principal)
    data_yaml = materialise(ctx, dv, None)

    from ultralytics import YOLO

    model = YOLO(str(weights), task="detect")
    names = model.names
    model_classes = [str(names[i]) for i in sorted(names)] if isinstance(names, dict) else [str(n) for n in names]
    imgsz = int(imgsz or model_info.get("imgsz") or (getattr(model, "ckpt", None) or {}).get("train_args", {})
                .get("imgsz") or 640)
    eid = f"{datetime.now(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"
    out = Path(out_dir) if out_dir else ctx.settings.home / "evals" / eid
    out.mkdir(parents=True, exist_ok=True)
    data, skipped = _aligned_data(data_yaml, split, model_classes, out / "data")
    _, split_images = _split_images(data, split)

    dev = resolve_device(device or ctx.settings.device)
    if dev == "cpu":
        def _threads(_: Any) -> None:  # Ultralytics pins cpu_count-1 on device selection
            import torch

            torch.set_num_threads(os.cpu_count() or 1)

        model.add_callback("on_val_start", _threads)
    metrics = model.val(data=str(data), split=split, imgsz=imgsz, conf=conf, batch=16, device=dev,
                        workers=0 if dev == "cpu" else 2, plots=True, save_json=False, verbose=False,
                        save_dir=str(out), project=str(out.parent), name=out.name, exist_ok=True)

    tax = ctx.taxonomy()
    rows: list[ClassMetrics] = []
    nt_class = metrics.nt_per_class if metrics.nt_per_class is not None else [0] * len(model_classes)
    nt_image = metrics.nt_per_image if metrics.nt_per_image is not None else [0] * len(model_classes)
    for i, c in enumerate(metrics.ap_class_index):
        c = int(c)
        key = model_classes[c]
        p, r, ap50, ap = metrics.class_result(i)
        hc = tax.classes.get(key)
        rows.append(ClassMetrics(key=key, sector=hc.sector if hc else "unknown", images=int(nt_image[c]),
                                 instances=int(nt_class[c]), precision=round(float(p), 5), recall=round(float(r), 5),
                                 map50=round(float(ap50), 5), map50_95=round(float(ap), 5)))
    mp, mr, map50, map_ = (float(v) for v in metrics.mean_results())
    overall = {"images": len(split_images), "instances": int(sum(int(n) for n in nt_class)),
               "precision": round(mp, 5), "recall": round(mr, 5), "map50": round(map50, 5), "map50_95": round(map_, 5)}
    plots = {p.name: str(p) for p in sorted(out.iterdir()) if p.suffix.lower() in (".png", ".jpg")}
    report = EvalReport(model=model_info, dataset={"ref": dataset_ref, "name": dv.name, "id": dv.id,
                                                   "taxonomy_version": dv.taxonomy_version,
                                                   "samples_per_split": provenance.get("samples_per_split")},
                        split=split, imgsz=imgsz, conf=conf, overall=overall, per_class=rows,
                        per_sector=per_sector(ctx, rows), skipped_classes=skipped, plots=plots, out_dir=str(out),
                        created_at=datetime.now(UTC).isoformat(timespec="seconds"))
    if record_in_card and model_id is not None and split == "test" and model_info.get("dataset_version") == dv.id:
        _record_in_card(ctx, principal, model_id, report)
        report.recorded_in_card = True
    (out / "report.json").write_text(json.dumps(report.to_dict(), ensure_ascii=False, indent=2), encoding="utf-8")
    return report


def _record_in_card(ctx: Context, principal: Principal, model_id: int, report: EvalReport) -> None:
    """The card keeps the test result of the model on the data it was made with; the card copy in the
    object store is rewritten too, so an exported model carries it."""
    summary = {"split": report.split, "dataset_version": report.dataset["id"], "imgsz": report.imgsz,
               "conf": report.conf, **report.overall,
               "per_class": {c.key: {m: getattr(c, m) for m in ("instances", *_METRICS)} for c in report.per_class},
               "per_sector": {s.sector: {m: getattr(s, m) for m in ("instances", *_METRICS)}
                              for s in report.per_sector},
               "evaluated_at": report.created_at}
    with ctx.db.session() as session:
        mv = session.get(ModelVersion, model_id)
        if mv is None:
            return
        before = (mv.card or {}).get("metrics", {}).get("test")
        card = dict(mv.card or {})
        card["metrics"] = {**card.get("metrics", {}), "test": summary}
        mv.card = card
        ctx.store.put(f"models/{mv.name}/{mv.version}/card.json",
                      json.dumps(card, ensure_ascii=False, indent=2).encode(), "application/json")
        record(session, principal, "model.evaluate", "model", mv.id, before={"test": before},
               after={"test": {k: v for k, v in summary.items() if k not in ("per_class", "per_sector")}})


# ---- comparison report --------------------------------------------------------------------------


def _fmt(v: float | None) -> str:
    return "–" if v is None else f"{v:.3f}"


def _delta(a: float | None, b: float | None) -> str:
    if a is None or b is None:
        return "–"
    d = b - a
    return f"{d:+.3f}" if abs(d) >= 0.0005 else "±0"


def write_report(reports: list[EvalReport], out: Path) -> Path:
    """A Markdown comparison of model versions on the same dataset split: overall, per sector and per
    class, with each later report's change against the first (the baseline). ``out`` is a .md file
    or a folder (report.md in it)."""
    if not reports:
        raise Invalid("no evaluation reports to write", code="empty_report")
    base = reports[0]
    for r in reports[1:]:
        if (r.dataset.get("id"), r.split) != (base.dataset.get("id"), base.split):
            raise Invalid(f"{r.label} was evaluated on {r.dataset.get('ref')} {r.split}, the baseline on "
                          f"{base.dataset.get('ref')} {base.split}: only results on the same split compare",
                          code="incomparable_reports")
    out = Path(out)
    if out.suffix.lower() != ".md":
        out = out / "report.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    labels = [r.label for r in reports]
    lines = [f"# Evaluation: {base.dataset.get('name')} ({base.split})", "",
             f"- dataset version: `{base.dataset.get('ref')}` (id `{str(base.dataset.get('id'))[:16]}`)",
             f"- images: {base.overall['images']}, instances: {base.overall['instances']}, "
             f"imgsz {base.imgsz}, conf {base.conf}",
             f"- models: {', '.join(f'`{lab}`' for lab in labels)}"
             + (f" (Δ against `{labels[0]}`)" if len(reports) > 1 else ""),
             "- sector rows average the per-class results weighted by instance count", ""]

    def table(title: str, keys: list[str], get: Any, first_cols: list[str], first: Any) -> None:
        lines.extend([f"## {title}", ""])
        header = list(first_cols)
        for i, lab in enumerate(labels):
            header += [f"{lab} mAP50", f"{lab} mAP50-95"]
            if i:
                header += ["Δ mAP50", "Δ mAP50-95"]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "---|" * len(header))
        for key in keys:
            cells = first(key)
            base_row = get(reports[0], key)
            for i, r in enumerate(reports):
                row = get(r, key)
                cells += [_fmt(row and row["map50"]), _fmt(row and row["map50_95"])]
                if i:
                    cells += [_delta(base_row and base_row["map50"], row and row["map50"]),
                              _delta(base_row and base_row["map50_95"], row and row["map50_95"])]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")

    lines.extend(["## Overall", "", "| model | precision | recall | mAP50 | mAP50-95 | Δ mAP50 | Δ mAP50-95 |",
                  "|---|---|---|---|---|---|---|"])
    for i, r in enumerate(reports):
        o = r.overall
        lines.append(f"| `{r.label}` | {_fmt(o['precision'])} | {_fmt(o['recall'])} | {_fmt(o['map50'])} | "
                     f"{_fmt(o['map50_95'])} | {_delta(base.overall['map50'], o['map50']) if i else ''} | "
                     f"{_delta(base.overall['map50_95'], o['map50_95']) if i else ''} |")
    lines.append("")

    sectors: dict[str, SectorMetrics] = {}
    for r in reports:
        for s in r.per_sector:
            sectors.setdefault(s.sector, s)

    def sector_row(r: EvalReport, key: str) -> dict[str, float] | None:
        s = next((s for s in r.per_sector if s.sector == key), None)
        return vars(s) if s else None

    table("Per sector", list(sectors), sector_row, ["sector", "instances"],
          lambda k: [f"{sectors[k].name} ({k})", str(sectors[k].instances)])

    classes: dict[str, ClassMetrics] = {}
    for r in reports:
        for c in r.per_class:
            classes.setdefault(c.key, c)

    def class_row(r: EvalReport, key: str) -> dict[str, float] | None:
        c = next((c for c in r.per_class if c.key == key), None)
        return vars(c) if c else None

    table("Per class", sorted(classes, key=lambda k: (classes[k].sector, k)), class_row,
          ["class", "sector", "instances"], lambda k: [f"`{k}`", classes[k].sector, str(classes[k].instances)])
    skipped = sorted({s for r in reports for s in r.skipped_classes})
    if skipped:
        lines.extend([f"Classes in the split that a model does not know (not scored): {', '.join(skipped)}", ""])
    plots = [(r.label, name, path) for r in reports for name, path in r.plots.items()
             if name in ("confusion_matrix_normalized.png", "BoxPR_curve.png")]
    if plots:
        lines.extend(["## Plots", ""])
        for lab, name, path in plots:
            rel = os.path.relpath(path, out.parent)
            lines.append(f"- `{lab}` {name}: [{rel}]({rel})")
        lines.append("")
    out.write_text("\n".join(lines), encoding="utf-8")
    return out
