"""Evaluate a model on a dataset version's split, per class and per sector, and compare versions.

Inspectors work by sector (a dust-explosion check, a confined-space check), so besides the usual
per-class table a report says how well the model does for each sector's classes: that is what
decides whether a model is good enough to help with a given inspection.

Per-sector numbers aggregate the per-class results of one validation run, weighted by each class's
instance count in the split (a class with 300 boxes counts 300 times one with a single box). They
are not the AP of the pooled detections; a class belongs to the sector the taxonomy gives it.

Partially labelled images: an item of the dataset version may declare ``unlabeled_classes`` (a source
that boxes heads but only a few of the people). On such an image a model's ``person`` detections are
not false positives, and its few person boxes are not a complete answer, so predictions and labels
of those classes are dropped for that image before matching (:func:`validator_class`, a
DetectionValidator whose per-image update filters first). Images that declare nothing go through
Ultralytics' own code unchanged, so their figures are exactly plain ``model.val``'s.

Per source: with ``by_tag`` the same run's per-image statistics are regrouped by the samples'
catalogue tags (e.g. ``sfchd-ppe``, ``hardhat-workers``) and each group gets Ultralytics' per-class
AP computed on its images alone (``per_tag``). Precision and recall of a group are taken, like
Ultralytics does for a whole run, at the confidence that maximises that group's mean F1.
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

import numpy as np
import yaml

from hazardlens.audit import record
from hazardlens.auth import SYSTEM, Principal
from hazardlens.context import Context
from hazardlens.dates import now_iso
from hazardlens.errors import Invalid, NotFound
from hazardlens.imagefiles import DATASET_SUFFIXES
from hazardlens.orm import DatasetItem, ModelVersion, Sample
from hazardlens.training.config import resolve_device
from hazardlens.training.dataset import data_names, materialise, resolve_dataset

log = logging.getLogger(__name__)

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
class GroupMetrics:
    """One source (catalogue tag) of the evaluated split: its images alone, same predictions."""

    tag: str
    overall: dict[str, float]
    per_class: list[ClassMetrics]

    def to_dict(self) -> dict[str, Any]:
        return {"tag": self.tag, "overall": self.overall, "per_class": [vars(c) for c in self.per_class]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GroupMetrics:
        return cls(tag=d["tag"], overall=d["overall"], per_class=[ClassMetrics(**c) for c in d["per_class"]])


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
    # images whose labels leave classes out: how many, which classes, what was not scored there
    partial_labels: dict[str, Any] = field(default_factory=dict)
    per_tag: list[GroupMetrics] = field(default_factory=list)  # with by_tag: per source
    rules: list[dict[str, Any]] = field(default_factory=list)  # rule findings scored (rule_eval), when run

    @property
    def label(self) -> str:
        m = self.model
        return f"{m['name']}:{m['version']}" if m.get("name") and m.get("version") else str(m.get("ref"))

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "dataset": self.dataset,
            "split": self.split,
            "imgsz": self.imgsz,
            "conf": self.conf,
            "overall": self.overall,
            "per_class": [vars(c) for c in self.per_class],
            "per_sector": [vars(s) for s in self.per_sector],
            "skipped_classes": self.skipped_classes,
            "plots": self.plots,
            "out_dir": self.out_dir,
            "created_at": self.created_at,
            "recorded_in_card": self.recorded_in_card,
            "partial_labels": self.partial_labels,
            "per_tag": [g.to_dict() for g in self.per_tag],
            "rules": self.rules,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EvalReport:
        return cls(
            model=d["model"],
            dataset=d["dataset"],
            split=d["split"],
            imgsz=d["imgsz"],
            conf=d["conf"],
            overall=d["overall"],
            per_class=[ClassMetrics(**c) for c in d["per_class"]],
            per_sector=[SectorMetrics(**s) for s in d["per_sector"]],
            skipped_classes=d.get("skipped_classes", []),
            plots=d.get("plots", {}),
            out_dir=d.get("out_dir", ""),
            created_at=d.get("created_at", ""),
            recorded_in_card=d.get("recorded_in_card", False),
            partial_labels=d.get("partial_labels", {}),
            per_tag=[GroupMetrics.from_dict(g) for g in d.get("per_tag", [])],
            rules=d.get("rules", []),
        )


# ---- model references ---------------------------------------------------------------------------


def split_model_ref(ref: str, accepted: str = "NAME:VERSION, 'production' or NAME:production") -> tuple[str, str]:
    """A registry reference ('NAME:VERSION', 'production', 'NAME:production') as (name, version);
    ``accepted`` says in the error what the caller takes instead."""
    from hazardlens.models.registry import DEFAULT_NAME

    ref = (ref or "").strip()
    name, _, version = ref.rpartition(":")
    if ref == "production":
        name, version = DEFAULT_NAME, "production"
    if not name or not version:
        raise Invalid(f"model reference {ref!r} must be {accepted}", code="invalid_model_ref")
    return name, version


def registered_version(session: Any, name: str, version: str) -> Any:
    """The registry row of ``version`` of ``name``, or of its production version for 'production'
    (NotFound ``model_not_found`` when there is none)."""
    from hazardlens.models.registry import get_model, production_model

    if version != "production":
        return get_model(session, name, version)
    mv = production_model(session, name)
    if mv is None:
        raise NotFound(f"no production version of {name}", code="model_not_found")
    return mv


def resolve_model(ctx: Context, ref: str) -> tuple[Path, dict[str, Any], int | None]:
    """'NAME:VERSION', 'production' / 'NAME:production' (the registry), or a local .pt path.
    Returns the weights path, a description for the report, and the registry row id if any."""
    from hazardlens.models.registry import local_weights

    ref = (ref or "").strip()
    path = Path(ref).expanduser()
    if ref.endswith(".pt") or path.is_file():
        if not path.is_file():
            raise NotFound(f"weights file {ref} not found", code="model_not_found")
        from hazardlens.models.registry import sha256_file

        return path.resolve(), {"ref": ref, "path": str(path.resolve()), "weights_sha256": sha256_file(path)}, None
    name, version = split_model_ref(ref, "NAME:VERSION, 'production', NAME:production or a .pt path")
    with ctx.db.session() as session:
        mv = registered_version(session, name, version)
        weights = local_weights(ctx, mv)
        info = {
            "ref": ref,
            "name": mv.name,
            "version": mv.version,
            "stage": mv.stage,
            "weights_sha256": mv.weights_sha256,
            "dataset_version": mv.dataset_version_id,
            "imgsz": mv.imgsz,
            "classes": list(mv.classes),
        }
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
            images += sorted(f for f in p.rglob("*") if f.suffix.lower() in DATASET_SUFFIXES)
        elif p.suffix == ".txt" and p.is_file():
            for line in p.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    q = Path(line.strip())
                    images.append(q if q.is_absolute() else (root / q))
    return data, images


def label_path(image: Path) -> Path:
    """Where Ultralytics looks for an image's label file (the benchmarks read them the same way)."""
    parts = list(image.parts)
    idx = len(parts) - 1 - parts[::-1].index("images")  # Ultralytics: the last /images/ becomes /labels/
    parts[idx] = "labels"
    return Path(*parts).with_suffix(".txt")


def _aligned_data(
    data_yaml: Path, split: str, model_classes: list[str], work: Path, private: bool = False
) -> tuple[Path, list[str], dict[str, str]]:
    """Ultralytics compares class indices, so a model whose class list differs from the dataset's
    (another order, fewer or more classes) is evaluated on a copy of the split whose labels are
    renumbered to the model's classes; boxes of classes the model does not know are left out and
    reported as skipped. The third value maps the copy's image file names to the originals'.

    ``private`` makes the copy (linked images, copied labels) even when the classes agree: Ultralytics
    writes a labels cache beside the labels it reads, and the materialised version is shared with
    training runs and other evaluations, so an evaluation writes only in its own folder."""
    ds_classes = data_names(data_yaml)
    renamed: dict[str, str] = {}
    if ds_classes == model_classes and not private:
        return data_yaml, [], renamed
    index = {name: i for i, name in enumerate(model_classes)}
    _, images = _split_images(data_yaml, split)
    img_dir, lbl_dir = work / "images" / split, work / "labels" / split
    img_dir.mkdir(parents=True, exist_ok=True)
    lbl_dir.mkdir(parents=True, exist_ok=True)
    skipped: set[str] = set()
    for n, image in enumerate(images):
        target = img_dir / f"{n:06d}{image.suffix.lower()}"
        renamed[target.name] = image.name
        if not target.exists():
            try:
                target.symlink_to(image.resolve())
            except OSError:
                shutil.copyfile(image, target)
        lines = []
        label = label_path(image)
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
    aligned.write_text(
        yaml.safe_dump(
            {"path": str(work), "train": rel, "val": rel, split: rel, "names": dict(enumerate(model_classes))},
            allow_unicode=True,
        ),
        encoding="utf-8",
    )
    return aligned, sorted(skipped), renamed


# ---- partially labelled images, per-image statistics ----------------------------------------------


_VALIDATOR: type | None = None


def validator_class() -> type:
    """A DetectionValidator that, per image, first drops the predictions and labels of the classes
    that image's labels leave out (``hl_unlabeled``: image file name -> model class ids), then runs
    Ultralytics' own update; it keeps every image's statistics (``hl_records``, for per-source
    figures) and, with ``hl_keep_predictions``, every image's predictions in original pixels (for
    rules). Built on first use: importing ultralytics waits for prepare_ultralytics."""
    global _VALIDATOR
    if _VALIDATOR is not None:
        return _VALIDATOR
    import torch
    from ultralytics.models.yolo.detect import DetectionValidator

    class PartialLabelValidator(DetectionValidator):  # type: ignore[misc]
        def __init__(
            self,
            *args: Any,
            hl_unlabeled: dict[str, list[int]] | None = None,
            hl_keep_predictions: bool = False,
            **kwargs: Any,
        ) -> None:
            super().__init__(*args, **kwargs)
            self.hl_unlabeled = {str(k): sorted({int(c) for c in v}) for k, v in (hl_unlabeled or {}).items() if v}
            self.hl_keep_predictions = hl_keep_predictions
            self.hl_records: list[dict[str, Any]] = []
            self.hl_predictions: dict[str, dict[str, np.ndarray]] = {}
            self.hl_dropped = {"images": 0, "predictions": 0, "labels": 0}

        def postprocess(self, preds: torch.Tensor) -> list[dict[str, torch.Tensor]]:
            """Ultralytics' NMS, without its wall-clock limit: under load (a training beside the
            evaluation) the limit silently drops the rest of a batch's predictions, and a report's
            figures must not depend on how busy the machine was."""
            from ultralytics.utils import nms

            outputs = nms.non_max_suppression(
                preds,
                self.args.conf,
                self.args.iou,
                nc=0,
                multi_label=True,
                agnostic=self.args.single_cls or self.args.agnostic_nms,
                max_det=self.args.max_det,
                end2end=self.end2end,
                max_time_img=3600.0,
            )
            return [{"bboxes": x[:, :4], "conf": x[:, 4], "cls": x[:, 5], "extra": x[:, 6:]} for x in outputs]

        def update_metrics(self, preds: list[dict[str, Any]], batch: dict[str, Any]) -> None:
            if self.hl_keep_predictions:
                self._hl_keep(preds, batch)
            if self.hl_unlabeled:
                self._hl_drop(preds, batch)
            start = len(self.metrics.stats["tp"])
            super().update_metrics(preds, batch)
            for si in range(len(preds)):  # Ultralytics appends one entry per image, in batch order
                rec = {k: v[start + si] for k, v in self.metrics.stats.items()}
                rec["im_name"] = Path(batch["im_file"][si]).name
                self.hl_records.append(rec)

        def _hl_keep(self, preds: list[dict[str, Any]], batch: dict[str, Any]) -> None:
            for si, pred in enumerate(preds):
                scaled = self.scale_preds(pred, self._prepare_batch(si, batch))
                self.hl_predictions[Path(batch["im_file"][si]).name] = {
                    "xyxy": scaled["bboxes"].detach().cpu().numpy().astype(np.float32),
                    "conf": pred["conf"].detach().cpu().numpy().astype(np.float32),
                    "cls": pred["cls"].detach().cpu().numpy().astype(int),
                }

        def _hl_drop(self, preds: list[dict[str, Any]], batch: dict[str, Any]) -> None:
            """In place, so that the confusion matrix and the plotted batches agree with the figures."""
            gt_cls = batch["cls"].view(-1).long()
            gt_img = batch["batch_idx"].view(-1).long()
            keep_gt = torch.ones_like(gt_cls, dtype=torch.bool)
            for si, file in enumerate(batch["im_file"]):
                ids = self.hl_unlabeled.get(Path(file).name)
                if not ids:
                    continue
                self.hl_dropped["images"] += 1
                pred = preds[si]
                drop = torch.isin(pred["cls"].long(), torch.tensor(ids, device=pred["cls"].device))
                if bool(drop.any()):
                    self.hl_dropped["predictions"] += int(drop.sum())
                    preds[si] = {
                        k: v[~drop] if isinstance(v, torch.Tensor) and v.shape[:1] == drop.shape else v
                        for k, v in pred.items()
                    }
                keep_gt &= ~((gt_img == si) & torch.isin(gt_cls, torch.tensor(ids, device=gt_cls.device)))
            if not bool(keep_gt.all()):
                self.hl_dropped["labels"] += int((~keep_gt).sum())
                for key in ("cls", "bboxes", "batch_idx"):
                    batch[key] = batch[key][keep_gt]

    _VALIDATOR = PartialLabelValidator
    return PartialLabelValidator


def _class_rows(metrics: Any, model_classes: list[str], tax: Any) -> list[ClassMetrics]:
    rows: list[ClassMetrics] = []
    nt_class = metrics.nt_per_class if metrics.nt_per_class is not None else [0] * len(model_classes)
    nt_image = metrics.nt_per_image if metrics.nt_per_image is not None else [0] * len(model_classes)
    for i, c in enumerate(metrics.ap_class_index):
        c = int(c)
        key = model_classes[c]
        p, r, ap50, ap = metrics.class_result(i)
        hc = tax.classes.get(key)
        rows.append(
            ClassMetrics(
                key=key,
                sector=hc.sector if hc else "unknown",
                images=int(nt_image[c]),
                instances=int(nt_class[c]),
                precision=round(float(p), 5),
                recall=round(float(r), 5),
                map50=round(float(ap50), 5),
                map50_95=round(float(ap), 5),
            )
        )
    return rows


def _overall(metrics: Any, images: int) -> dict[str, float]:
    nt_class = metrics.nt_per_class if metrics.nt_per_class is not None else []
    mp, mr, map50, map_ = (float(v) for v in metrics.mean_results())
    return {
        "images": images,
        "instances": int(sum(int(n) for n in nt_class)),
        "precision": round(mp, 5),
        "recall": round(mr, 5),
        "map50": round(map50, 5),
        "map50_95": round(map_, 5),
    }


def group_metrics(records: list[dict[str, Any]], names: dict[int, str]) -> Any:
    """Ultralytics' DetMetrics over the given images' statistics only (the validator's per-image
    records): the same ap_per_class, so a group holding every image gives the run's figures."""
    from ultralytics.utils.metrics import DetMetrics

    metrics = DetMetrics(names=dict(names))
    for rec in records:
        metrics.update_stats(rec)
    if records:
        metrics.process(plot=False)
    return metrics


UNTAGGED = "(untagged)"


def _split_items(ctx: Context, dv: Any, split: str) -> dict[str, dict[str, Any]]:
    """The split's manifest items by exported image stem (materialize._file_name: sample id, hash)."""
    from hazardlens.datasets.versions import load_manifest

    return {
        f"{int(it['sample_id']):08d}_{str(it['sha256'])[:12]}": it
        for it in load_manifest(ctx, dv)["items"]
        if it.get("split") == split
    }


def _sample_tags(ctx: Context, dv: Any) -> dict[int, list[str]]:
    """Catalogue tags of the version's samples (tags are not part of a version: they may be added later)."""
    from sqlalchemy import select

    with ctx.db.session() as s:
        rows = s.execute(
            select(Sample.id, Sample.tags)
            .join(DatasetItem, DatasetItem.sample_id == Sample.id)
            .where(DatasetItem.version_id == dv.id)
        )
        return {int(i): [str(t) for t in tags or [] if isinstance(t, str)] for i, tags in rows}


# ---- rules -----------------------------------------------------------------------------------------

#: Detections below this confidence are not given to the rules: the API's default threshold, so the
#: findings scored are the ones an inspector would be shown.
RULE_DETECTION_CONF = 0.25


def _rule_set(ctx: Context) -> Any:
    """The configured rules (``hazardlens.rules``), or None where this installation has none."""
    try:
        from hazardlens.rules import default_rules
    except ImportError:
        return None
    return default_rules(ctx)


def score_rules(
    ruleset: Any,
    predictions: dict[str, dict[str, np.ndarray]],
    items: dict[str, dict[str, Any] | None],
    model_classes: list[str],
    groups: dict[str, list[str]] | None = None,
    det_conf: float = RULE_DETECTION_CONF,
) -> list[dict[str, Any]]:
    """Each rule's findings on the model's predictions (image name -> ``xyxy``/``conf``/``cls`` in
    original pixels), scored against the labelled boxes of the rule's evidence class in ``items``
    (image name -> manifest item) by :func:`hazardlens.training.rule_eval.evaluate_rule_findings`:
    precision and recall at the rule's own ``min_confidence`` (findings below it are never made),
    AP over the findings' confidences. One row per rule for all images (``tag`` ``None``) and one per
    group of ``groups`` (tag -> image names). Images whose item declares the evidence class
    unlabelled are left out for that rule; rules whose evidence class the dataset does not label
    are not scored."""
    from hazardlens.detections import Detections
    from hazardlens.training.rule_eval import evaluate_rule_findings

    labelled = {str(b["class_key"]) for it in items.values() if it for b in it.get("boxes", [])}
    labelled |= {k for it in items.values() if it for k in it.get("unlabeled_classes") or []}
    findings_of: dict[str, list[Any]] = {}
    for name, pred in predictions.items():
        keep = pred["conf"] >= det_conf
        dets = Detections(
            xyxy=pred["xyxy"][keep].reshape(-1, 4).astype(np.float32),
            class_keys=np.array([model_classes[int(c)] for c in pred["cls"][keep]], dtype=object),
            confidence=pred["conf"][keep].astype(np.float32),
        )
        it = items.get(name) or {}
        size = (int(it["width"]), int(it["height"])) if it.get("width") and it.get("height") else None
        findings_of[name] = ruleset.apply(dets, None, 0.0, image_size=size, model_classes=model_classes)
    rows: list[dict[str, Any]] = []
    for rule in ruleset.rules:
        evidence = rule.evidence_class
        if evidence is None or evidence not in labelled:
            continue
        usable = [n for n in predictions if evidence not in ((items.get(n) or {}).get("unlabeled_classes") or [])]
        scopes: list[tuple[str | None, list[str]]] = [(None, usable)]
        scopes += [(tag, [n for n in names if n in set(usable)]) for tag, names in (groups or {}).items()]
        for tag, names in scopes:
            found = {n: [f for f in findings_of[n] if f.rule == rule.key] for n in names}
            gt = {n: (items.get(n) or {}).get("boxes", []) for n in names}
            rows.append(
                {
                    "rule": rule.key,
                    "tag": tag,
                    "images": len(names),
                    "min_confidence": rule.min_confidence,
                    "detections_conf": det_conf,
                    **evaluate_rule_findings(found, gt, evidence, conf=rule.min_confidence),
                }
            )
    return rows


#: Written beside report.json: what the rules saw, so that a changed rules.yaml can be scored again
#: without running the model (``hazardlens rules score EVAL_DIR``), e.g. to choose a rule's
#: confidence floor on the validation split.
RULE_INPUTS_FILE = "rule_inputs.json"


def write_rule_inputs(
    path: Path,
    predictions: dict[str, dict[str, np.ndarray]],
    items: dict[str, dict[str, Any] | None],
    model_classes: list[str],
    groups: dict[str, list[str]],
    det_conf: float = RULE_DETECTION_CONF,
) -> None:
    """The rules' inputs of one evaluation: predictions at or above ``det_conf`` (all a rule is ever
    given), each image's labelled boxes, size and unlabelled classes, and the per-source groups."""
    preds = {}
    for name, pred in predictions.items():
        keep = pred["conf"] >= det_conf
        preds[name] = {
            "xyxy": np.round(pred["xyxy"][keep].reshape(-1, 4).astype(float), 2).tolist(),
            "conf": np.round(pred["conf"][keep].astype(float), 5).tolist(),
            "cls": [int(c) for c in pred["cls"][keep]],
        }
    slim = {
        name: (
            {
                "width": it.get("width"),
                "height": it.get("height"),
                "unlabeled_classes": list(it.get("unlabeled_classes") or []),
                "boxes": [
                    {k: b[k] for k in ("class_key", "x1", "y1", "x2", "y2") if k in b} for b in it.get("boxes", [])
                ],
            }
            if it
            else None
        )
        for name, it in items.items()
    }
    body = {"model_classes": model_classes, "det_conf": det_conf, "predictions": preds, "items": slim, "groups": groups}
    path.write_text(json.dumps(body, ensure_ascii=False), encoding="utf-8")


def rescore_rules(eval_dir: Path, ruleset: Any) -> list[dict[str, Any]]:
    """:func:`score_rules` of ``ruleset`` on the inputs an earlier evaluation saved in ``eval_dir``."""
    path = Path(eval_dir) / RULE_INPUTS_FILE
    if not path.is_file():
        raise NotFound(f"{path} not found: evaluate with the rule layer on first", code="rule_inputs_not_found")
    body = json.loads(path.read_text(encoding="utf-8"))
    predictions = {
        name: {
            "xyxy": np.asarray(p["xyxy"], dtype=np.float32).reshape(-1, 4),
            "conf": np.asarray(p["conf"], dtype=np.float32),
            "cls": np.asarray(p["cls"], dtype=np.int64),
        }
        for name, p in body["predictions"].items()
    }
    return score_rules(
        ruleset, predictions, body["items"], list(body["model_classes"]), body["groups"], float(body["det_conf"])
    )


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
        out.append(
            SectorMetrics(
                sector=key,
                name=sector.name_zh,
                classes=[r.key for r in members],
                instances=sum(r.instances for r in members),
                **{m: round(_weighted(members, m), 5) for m in _METRICS},
            )
        )
    return out


def evaluate(
    ctx: Context,
    model_ref: str,
    dataset_ref: str,
    split: str = "test",
    imgsz: int | None = None,
    conf: float = 0.001,
    *,
    out_dir: Path | None = None,
    principal: Principal = SYSTEM,
    record_in_card: bool = True,
    device: str | None = None,
    by_tag: bool = False,
    tags: list[str] | None = None,
    rules: bool = True,
) -> EvalReport:
    """Run Ultralytics' validation of ``model_ref`` on ``dataset_ref``'s ``split`` and report per class
    and per sector, with confusion-matrix and PR-curve plots in ``out_dir`` (default
    ``<home>/evals/<id>``). A registered model evaluated on its own dataset version's test split has
    the result written into its model card.

    Classes an image declares unlabelled are not scored on that image (see the module docstring).
    ``by_tag`` adds per-source figures: one group per catalogue tag of the split's samples (only
    ``tags`` when given; samples without any go to ``(untagged)``), from the same predictions.
    With ``rules`` (and a rule layer, ``hazardlens.rules``, installed) the configured rules run on the
    predictions and each is scored against its evidence class's labels, overall and per source
    (:func:`score_rules`)."""
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
    imgsz = int(
        imgsz
        or model_info.get("imgsz")
        or (getattr(model, "ckpt", None) or {}).get("train_args", {}).get("imgsz")
        or 640
    )
    eid = f"{datetime.now(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"
    out = (Path(out_dir) if out_dir else ctx.settings.home / "evals" / eid).resolve()
    out.mkdir(parents=True, exist_ok=True)
    data, skipped, renamed = _aligned_data(data_yaml, split, model_classes, out / "data", private=True)
    _, split_images = _split_images(data, split)  # the private copy's data.yaml: train/val name the split too

    # image file name as the validator sees it -> its manifest item
    by_stem = _split_items(ctx, dv, split)
    item_of = {img.name: by_stem.get(Path(renamed.get(img.name, img.name)).stem) for img in split_images}
    if by_stem and sum(it is not None for it in item_of.values()) != len(by_stem):
        # per-image rules (unlabelled classes, sources) would silently not apply: refuse instead
        raise Invalid(
            f"the {split} images found for {dv.name} ({len(split_images)}) do not match its "
            f"{len(by_stem)} {split} items",
            code="materialise_mismatch",
        )
    model_index = {k: i for i, k in enumerate(model_classes)}
    unlabeled: dict[str, list[int]] = {}
    declared: dict[str, int] = {}
    for name, it in item_of.items():
        keys = [str(k) for k in (it or {}).get("unlabeled_classes") or []]
        for k in keys:
            declared[k] = declared.get(k, 0) + 1
        ids = [model_index[k] for k in keys if k in model_index]
        if ids:
            unlabeled[name] = ids

    dev = resolve_device(device or ctx.settings.device)
    if dev == "cpu":

        def _threads(_: Any) -> None:  # Ultralytics pins cpu_count-1 on device selection
            import torch

            torch.set_num_threads(os.cpu_count() or 1)

        model.add_callback("on_val_start", _threads)
    ruleset = _rule_set(ctx) if rules else None
    made: list[Any] = []

    def make_validator(**kwargs: Any) -> Any:  # Model.val builds it with (args=, _callbacks=)
        made.append(validator_class()(**kwargs, hl_unlabeled=unlabeled, hl_keep_predictions=ruleset is not None))
        return made[-1]

    metrics = model.val(
        validator=make_validator,
        data=str(data),
        split=split,
        imgsz=imgsz,
        conf=conf,
        batch=16,
        device=dev,
        workers=0 if dev == "cpu" else 2,
        plots=True,
        save_json=False,
        verbose=False,
        save_dir=str(out),
        project=str(out.parent),
        name=out.name,
        exist_ok=True,
    )
    validator = made[-1]

    tax = ctx.taxonomy()
    rows = _class_rows(metrics, model_classes, tax)
    overall = _overall(metrics, len(split_images))
    partial = {}
    if declared:
        partial = {
            "images": sum(1 for it in item_of.values() if (it or {}).get("unlabeled_classes")),
            "classes": dict(sorted(declared.items())),
            "not_scored": dict(validator.hl_dropped),
            "rule": "predictions and labels of a class an image declares unlabelled are dropped for "
            "that image before matching",
        }
    per_tag: list[GroupMetrics] = []
    groups: dict[str, list[dict[str, Any]]] = {}
    if by_tag:
        sample_tags = _sample_tags(ctx, dv)
        wanted = set(tags) if tags else None
        for rec in validator.hl_records:
            it = item_of.get(rec["im_name"])
            mine = sample_tags.get(int(it["sample_id"]), []) if it else []
            if wanted is not None:
                mine = [g for g in mine if g in wanted]
            for g in mine or ([UNTAGGED] if wanted is None else []):
                groups.setdefault(g, []).append(rec)
        for g in sorted(groups, key=lambda g: (g == UNTAGGED, g)):
            gm = group_metrics(groups[g], metrics.names)
            per_tag.append(
                GroupMetrics(tag=g, overall=_overall(gm, len(groups[g])), per_class=_class_rows(gm, model_classes, tax))
            )
        for g in sorted((wanted or set()) - set(groups)):
            per_tag.append(GroupMetrics(tag=g, overall=_overall(group_metrics([], metrics.names), 0), per_class=[]))
    rule_rows = (
        score_rules(
            ruleset,
            validator.hl_predictions,
            item_of,
            model_classes,
            {g: [r["im_name"] for r in recs] for g, recs in groups.items()},
        )
        if ruleset
        else []
    )
    if ruleset:
        write_rule_inputs(
            out / RULE_INPUTS_FILE,
            validator.hl_predictions,
            item_of,
            model_classes,
            {g: [r["im_name"] for r in recs] for g, recs in groups.items()},
        )
    plots = {p.name: str(p) for p in sorted(out.iterdir()) if p.suffix.lower() in (".png", ".jpg")}
    report = EvalReport(
        model=model_info,
        dataset={
            "ref": dataset_ref,
            "name": dv.name,
            "id": dv.id,
            "taxonomy_version": dv.taxonomy_version,
            "samples_per_split": provenance.get("samples_per_split"),
        },
        split=split,
        imgsz=imgsz,
        conf=conf,
        overall=overall,
        per_class=rows,
        per_sector=per_sector(ctx, rows),
        skipped_classes=skipped,
        plots=plots,
        out_dir=str(out),
        created_at=now_iso(),
        partial_labels=partial,
        per_tag=per_tag,
        rules=rule_rows,
    )
    if record_in_card and model_id is not None and split == "test" and model_info.get("dataset_version") == dv.id:
        _record_in_card(ctx, principal, model_id, report)
        report.recorded_in_card = True
    (out / "report.json").write_text(json.dumps(report.to_dict(), ensure_ascii=False, indent=2), encoding="utf-8")
    return report


def _record_in_card(ctx: Context, principal: Principal, model_id: int, report: EvalReport) -> None:
    """The card keeps the test result of the model on the data it was made with; the card copy in the
    object store is rewritten too, so an exported model carries it."""
    summary = {
        "split": report.split,
        "dataset_version": report.dataset["id"],
        "imgsz": report.imgsz,
        "conf": report.conf,
        **report.overall,
        "per_class": {c.key: {m: getattr(c, m) for m in ("instances", *_METRICS)} for c in report.per_class},
        "per_sector": {s.sector: {m: getattr(s, m) for m in ("instances", *_METRICS)} for s in report.per_sector},
        "evaluated_at": report.created_at,
    }
    with ctx.db.session() as session:
        mv = session.get(ModelVersion, model_id)
        if mv is None:
            return
        before = (mv.card or {}).get("metrics", {}).get("test")
        card = dict(mv.card or {})
        card["metrics"] = {**card.get("metrics", {}), "test": summary}
        mv.card = card
        ctx.store.put(
            f"models/{mv.name}/{mv.version}/card.json",
            json.dumps(card, ensure_ascii=False, indent=2).encode(),
            "application/json",
        )
        record(
            session,
            principal,
            "model.evaluate",
            "model",
            mv.id,
            before={"test": before},
            after={"test": {k: v for k, v in summary.items() if k not in ("per_class", "per_sector")}},
        )


# ---- comparison report --------------------------------------------------------------------------


def _rule_section(reports: list[EvalReport], lines: list[str]) -> None:
    rows = [(r.label, row) for r in reports for row in r.rules]
    if not rows:
        return
    det = rows[0][1].get("detections_conf")
    lines.extend(
        [
            "## Rules",
            "",
            f"Each rule run on the model's detections (confidence >= {det}) and scored against the labelled "
            "boxes of its evidence class: a finding is right when its box overlaps an unmatched labelled box "
            "(IoU >= 0.3) or holds its centre. Precision and recall at the rule's own minimum confidence; AP "
            "over the findings' confidences.",
            "",
            "| model | rule | source | evidence | images | labelled | findings | TP | FP | FN | precision | "
            "recall | AP |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
    )
    for lab, row in rows:
        lines.append(
            f"| `{lab}` | `{row['rule']}` | {row['tag'] or 'all'} | `{row['evidence_class']}` | "
            f"{row['images']} | {row['n_gt']} | {row['findings']} | {row['tp']} | {row['fp']} | {row['fn']} | "
            f"{_fmt(row['precision'])} | {_fmt(row['recall'])} | {_fmt(row['ap'])} |"
        )
    lines.append("")


def _per_source_sections(reports: list[EvalReport], lines: list[str]) -> None:
    """One section per source tag: the group's overall row and per-class table, each model's P, R,
    mAP50 and mAP50-95 (and the mAP50 change against the first model)."""
    tags = list(dict.fromkeys(g.tag for r in reports for g in r.per_tag))
    if not tags:
        return
    labels = [r.label for r in reports]
    lines.extend(
        [
            "## Per source",
            "",
            "Each source (sample tag) scored on its own images, from the same predictions; precision and "
            "recall at the confidence that maximises that group's mean F1.",
            "",
        ]
    )
    for tag in tags:
        groups = [next((g for g in r.per_tag if g.tag == tag), None) for r in reports]
        first = next(g for g in groups if g is not None)
        lines.extend(
            [
                f"### Source `{tag}`",
                "",
                f"images: {first.overall.get('images', 0)}, instances: {first.overall.get('instances', 0)}",
                "",
            ]
        )
        header = ["class", "images", "instances"]
        for i, lab in enumerate(labels):
            header += [f"{lab} P", f"{lab} R", f"{lab} mAP50", f"{lab} mAP50-95"] + (["Δ mAP50"] if i else [])
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "---|" * len(header))
        keys = list(dict.fromkeys(c.key for g in groups if g is not None for c in g.per_class))

        def cells(get: Any, groups: list[GroupMetrics | None] = groups) -> list[str]:
            out: list[str] = []
            base = get(groups[0])
            for i, g in enumerate(groups):
                row = get(g)
                out += [
                    _fmt(row and row["precision"]),
                    _fmt(row and row["recall"]),
                    _fmt(row and row["map50"]),
                    _fmt(row and row["map50_95"]),
                ]
                if i:
                    out.append(_delta(base and base["map50"], row and row["map50"]))
            return out

        lines.append(
            "| all | "
            + f"{first.overall.get('images', 0)} | {first.overall.get('instances', 0)} | "
            + " | ".join(cells(lambda g: g.overall if g is not None else None))
            + " |"
        )
        for key in keys:
            ref = next(c for g in groups if g is not None for c in g.per_class if c.key == key)

            def get(g: GroupMetrics | None, key: str = key) -> dict[str, Any] | None:
                c = next((c for c in g.per_class if c.key == key), None) if g is not None else None
                return vars(c) if c else None

            lines.append(f"| `{key}` | {ref.images} | {ref.instances} | " + " | ".join(cells(get)) + " |")
        lines.append("")


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
            raise Invalid(
                f"{r.label} was evaluated on {r.dataset.get('ref')} {r.split}, the baseline on "
                f"{base.dataset.get('ref')} {base.split}: only results on the same split compare",
                code="incomparable_reports",
            )
    out = Path(out)
    if out.suffix.lower() != ".md":
        out = out / "report.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    labels = [r.label for r in reports]
    lines = [
        f"# Evaluation: {base.dataset.get('name')} ({base.split})",
        "",
        f"- dataset version: `{base.dataset.get('ref')}` (id `{str(base.dataset.get('id'))[:16]}`)",
        f"- images: {base.overall['images']}, instances: {base.overall['instances']}, "
        f"imgsz {base.imgsz}, conf {base.conf}",
        f"- models: {', '.join(f'`{lab}`' for lab in labels)}"
        + (f" (Δ against `{labels[0]}`)" if len(reports) > 1 else ""),
        "- sector rows average the per-class results weighted by instance count",
        "",
    ]

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
                    cells += [
                        _delta(base_row and base_row["map50"], row and row["map50"]),
                        _delta(base_row and base_row["map50_95"], row and row["map50_95"]),
                    ]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")

    lines.extend(
        [
            "## Overall",
            "",
            "| model | precision | recall | mAP50 | mAP50-95 | Δ mAP50 | Δ mAP50-95 |",
            "|---|---|---|---|---|---|---|",
        ]
    )
    for i, r in enumerate(reports):
        o = r.overall
        lines.append(
            f"| `{r.label}` | {_fmt(o['precision'])} | {_fmt(o['recall'])} | {_fmt(o['map50'])} | "
            f"{_fmt(o['map50_95'])} | {_delta(base.overall['map50'], o['map50']) if i else ''} | "
            f"{_delta(base.overall['map50_95'], o['map50_95']) if i else ''} |"
        )
    lines.append("")

    sectors: dict[str, SectorMetrics] = {}
    for r in reports:
        for s in r.per_sector:
            sectors.setdefault(s.sector, s)

    def sector_row(r: EvalReport, key: str) -> dict[str, float] | None:
        s = next((s for s in r.per_sector if s.sector == key), None)
        return vars(s) if s else None

    table(
        "Per sector",
        list(sectors),
        sector_row,
        ["sector", "instances"],
        lambda k: [f"{sectors[k].name} ({k})", str(sectors[k].instances)],
    )

    classes: dict[str, ClassMetrics] = {}
    for r in reports:
        for c in r.per_class:
            classes.setdefault(c.key, c)

    def class_row(r: EvalReport, key: str) -> dict[str, float] | None:
        c = next((c for c in r.per_class if c.key == key), None)
        return vars(c) if c else None

    table(
        "Per class",
        sorted(classes, key=lambda k: (classes[k].sector, k)),
        class_row,
        ["class", "sector", "instances"],
        lambda k: [f"`{k}`", classes[k].sector, str(classes[k].instances)],
    )
    _per_source_sections(reports, lines)
    _rule_section(reports, lines)
    partial = [(r.label, r.partial_labels) for r in reports if r.partial_labels]
    if partial:
        lab, info = partial[0]
        classes = ", ".join(f"`{k}` ({n} images)" for k, n in info.get("classes", {}).items())
        dropped = info.get("not_scored", {})
        lines.extend(
            [
                "## Partially labelled images",
                "",
                f"{info.get('images', 0)} image(s) declare classes their labels leave out: {classes}. "
                f"On those images, predictions and labels of those classes are not scored "
                f"(`{lab}`: {dropped.get('predictions', 0)} prediction(s) and {dropped.get('labels', 0)} "
                f"label(s) left out).",
                "",
            ]
        )
    skipped = sorted({s for r in reports for s in r.skipped_classes})
    if skipped:
        lines.extend([f"Classes in the split that a model does not know (not scored): {', '.join(skipped)}", ""])
    plots = [
        (r.label, name, path)
        for r in reports
        for name, path in r.plots.items()
        if name in ("confusion_matrix_normalized.png", "BoxPR_curve.png")
    ]
    if plots:
        lines.extend(["## Plots", ""])
        for lab, name, path in plots:
            rel = os.path.relpath(path, out.parent)
            lines.append(f"- `{lab}` {name}: [{rel}]({rel})")
        lines.append("")
    out.write_text("\n".join(lines), encoding="utf-8")
    return out
