"""The dataset side of training: the version a run trains on, its provenance for the model card,
and its YOLO materialisation (cached; train caps and the repeated train list for rare classes).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import func, select

from hazardlens.auth import Principal
from hazardlens.context import Context
from hazardlens.dates import iso, now_iso
from hazardlens.errors import Invalid
from hazardlens.orm import DatasetItem, DatasetVersion, Sample
from hazardlens.training.runs import read_json, write_json


def dataset_provenance(session: Any, dv: DatasetVersion) -> dict[str, Any]:
    """What a model card says about the data: which version, how many samples per split, and where
    the samples came from (source sets and organisations), so a reviewer can tell what a model has seen."""
    splits = dict(
        session.execute(
            select(DatasetItem.split, func.count()).where(DatasetItem.version_id == dv.id).group_by(DatasetItem.split)
        ).all()
    )
    sources: Counter[str] = Counter()
    orgs: Counter[str] = Counter()
    sectors: Counter[str] = Counter()
    tags: Counter[str] = Counter()
    rows = session.execute(
        select(Sample.source, Sample.org_code, Sample.sector, Sample.tags)
        .join(DatasetItem, DatasetItem.sample_id == Sample.id)
        .where(DatasetItem.version_id == dv.id)
    )
    for source, org, sector, sample_tags in rows:
        sources[source or "unknown"] += 1
        orgs[org] += 1
        sectors[sector] += 1
        tags.update(t for t in sample_tags or [] if isinstance(t, str))
    # Curators mark where imported photos came from with tags (e.g. the public set's name); the 50
    # commonest are enough to tell the sets apart without copying every tag into every card.
    return {
        "name": dv.name,
        "id": dv.id,
        "taxonomy_version": dv.taxonomy_version,
        "classes": list(dv.classes),
        "samples_per_split": {k: int(v) for k, v in sorted(splits.items())},
        "sources": dict(sources),
        "source_sets": dict(tags.most_common(50)),
        "organisations": dict(orgs),
        "sectors": dict(sectors),
        "params": dv.params,
        "manifest_key": dv.manifest_key,
        "created_at": iso(dv.created_at),
    }


def resolve_dataset(
    ctx: Context, dataset_ref: str, principal: Principal | None = None
) -> tuple[DatasetVersion, dict[str, Any]]:
    """The version and its provenance. A user principal sees only its organisation's versions
    (the datasets' tenancy rule); the system principal sees all."""
    from hazardlens.datasets.versions import resolve

    with ctx.db.session() as session:
        who = principal if principal is not None and principal.user_id is not None else None
        dv = resolve(session, dataset_ref, who)
        return dv, dataset_provenance(session, dv)


def materialise(
    ctx: Context,
    dv: DatasetVersion,
    train_caps: dict[str, int] | None = None,
    train_repeat: dict[str, int] | None = None,
) -> Path:
    """The version as a YOLO folder under ``<cache>/datasets``; returns its data.yaml.

    A version is immutable, so a folder once complete is reused as is (images are hard links into
    the materializer's blob cache, so even a first export copies little). It is built in a temporary
    folder and renamed into place, so that a training or evaluation reading it never sees an export
    being rewritten under it."""
    from hazardlens.datasets.materialize import export_version

    selection: Any = train_caps or {}
    if train_repeat:
        selection = {"caps": train_caps or {}, "repeat": train_repeat}
    tag = hashlib.sha256(json.dumps(selection, sort_keys=True).encode()).hexdigest()[:8]
    final = ctx.settings.cache_dir / "datasets" / f"{dv.id[:16]}-yolo-{tag}"
    marker = final / ".complete"
    if marker.is_file() and (final / "data.yaml").is_file():
        return final / "data.yaml"
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.{os.getpid()}.{secrets.token_hex(3)}")
    try:
        export_version(ctx, dv, "yolo", tmp, train_caps=train_caps)
        data_yaml = tmp / "data.yaml"
        if not data_yaml.is_file():
            raise Invalid(f"materialising {dv.name} as YOLO produced no data.yaml", code="materialise_failed")
        data = yaml.safe_load(data_yaml.read_text(encoding="utf-8")) or {}
        data["path"] = str(final.resolve())
        if train_repeat:
            data["train"] = write_train_list(tmp, data, train_repeat)
        data_yaml.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
        write_json(
            tmp / ".complete",
            {"version_id": dv.id, "train_caps": train_caps or {}, "train_repeat": train_repeat or {}, "at": now_iso()},
        )
        if final.exists():  # an unfinished folder from a crash, or another process just won the race
            if (final / ".complete").is_file():
                return final / "data.yaml"
            shutil.rmtree(final)
        try:
            os.replace(tmp, final)
        except OSError:
            if not (final / ".complete").is_file():  # anything but "another process finished first"
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final / "data.yaml"


def write_train_list(folder: Path, data: dict[str, Any], repeat: dict[str, int]) -> str:
    """Write ``train.txt`` listing each train image once, or ``max(repeat[c])`` times over the classes
    ``c`` in its labels; returns the name for data.yaml's ``train``. Ultralytics keeps repeated lines
    (each is one more sample per epoch, augmented afresh), so this oversamples without copying files.
    Paths are ``./``-relative, which Ultralytics resolves against the list's folder wherever it moves."""
    key_of = yaml_names(data)
    unknown = sorted(set(repeat) - set(key_of))
    if unknown:
        raise Invalid(f"train_repeat names classes not in this dataset: {', '.join(unknown)}", code="invalid_repeat")
    lines: list[str] = []
    repeated: Counter[str] = Counter()
    for image in sorted((folder / "images" / "train").glob("*")):
        label = folder / "labels" / "train" / f"{image.stem}.txt"
        rows = label.read_text(encoding="utf-8").splitlines() if label.is_file() else []
        boosted = {key_of[int(r.split()[0])] for r in rows if r.strip()} & set(repeat)
        times = max((repeat[c] for c in boosted), default=1)
        if times > 1:
            repeated.update(boosted)
        lines += [f"./images/train/{image.name}"] * times
    (folder / "train.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    write_json(
        folder / "train_repeat.json",
        {"repeat": repeat, "entries": len(lines), "images": len(set(lines)), "images_with_class": dict(repeated)},
    )
    return "train.txt"


def export_summary(data_yaml: Path) -> dict[str, Any]:
    """Images/instances per split as materialised (after train caps), from the export's stats.json:
    what training really saw, next to what the version holds."""
    stats = read_json(data_yaml.parent / "stats.json")
    splits = {
        k: {f: v.get(f) for f in ("images", "instances", "negatives")}
        for k, v in (stats.get("splits") or {}).items()
        if isinstance(v, dict)
    }
    summary = {"splits": splits, "capped_images": stats.get("capped_images", 0)}
    repeat = data_yaml.parent / "train_repeat.json"
    if repeat.is_file():
        summary["train_repeat"] = read_json(repeat)
    return summary


def data_names(data_yaml: Path) -> list[str]:
    return yaml_names(yaml.safe_load(data_yaml.read_text(encoding="utf-8")) or {})


def yaml_names(data: dict[str, Any]) -> list[str]:
    """Class keys in class-id order; data.yaml's ``names`` is a list or an id -> name mapping."""
    names = data.get("names")
    if isinstance(names, dict):
        return [str(names[k]) for k in sorted(names, key=int)]
    return [str(n) for n in names or []]
