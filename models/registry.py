"""Model registry: versions with a stage (candidate / staging / production / archived), weights and
model card in the object store and catalogue.

The catalogue is the source of truth for what serves: promotion is one row update, and every
serving worker polls it, so a promotion reaches all workers within seconds and no worker keeps
serving a retired model.
"""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from hazardlens.audit import record, snapshot
from hazardlens.auth import SYSTEM, Principal, require_system
from hazardlens.context import Context
from hazardlens.contracts.models import ModelVersionPublic
from hazardlens.dates import iso
from hazardlens.errors import Conflict, Invalid, NotFound
from hazardlens.models.engines import sha256_file
from hazardlens.orm import MODEL_STAGES, ModelVersion

DEFAULT_NAME = "hazardlens"
BASELINE_DIR = Path(__file__).resolve().parent / "baseline"
_AUDITED = ["name", "version", "stage", "weights_sha256", "dataset_version_id"]


def weights_key(name: str, version: str) -> str:
    return f"models/{name}/{version}/weights.pt"


def model_public(mv: ModelVersion) -> ModelVersionPublic:
    """A registered version as the API, CLI and client see it."""
    return ModelVersionPublic.model_validate(
        {
            "id": mv.id,
            "name": mv.name,
            "version": mv.version,
            "stage": mv.stage,
            "classes": list(mv.classes or []),
            "imgsz": mv.imgsz,
            "weights_sha256": mv.weights_sha256,
            "dataset_version": mv.dataset_version_id,
            "metrics": (mv.card or {}).get("metrics"),
            "card": mv.card,
            "created_at": iso(mv.created_at),
            "stage_changed_at": iso(mv.stage_changed_at),
        }
    )


def model_dict(mv: ModelVersion) -> dict[str, Any]:
    """:func:`model_public` as plain JSON values (the card as it was registered)."""
    return model_public(mv).model_dump(mode="json", exclude_unset=True)


def _next_version(session: Session, name: str) -> str:
    count = session.scalar(select(func.count()).select_from(ModelVersion).where(ModelVersion.name == name)) or 0
    return str(count + 1)


def register_model(
    ctx: Context,
    session: Session,
    principal: Principal,
    weights: Path,
    *,
    classes: list[str],
    imgsz: int,
    card: dict[str, Any],
    name: str = DEFAULT_NAME,
    version: str | None = None,
    dataset_version_id: str | None = None,
    stage: str = "candidate",
) -> ModelVersion:
    """Store the weights and card and add a catalogue row; the same weights twice are refused. Any
    training administrator registers candidates; any other stage is a registry change for the system
    organisation (:func:`hazardlens.auth.require_system`)."""
    if stage != "candidate":
        require_system(principal, f"registering a model as {stage}")
    if stage not in MODEL_STAGES:
        raise Invalid(f"unknown stage {stage!r}; stages are {', '.join(MODEL_STAGES)}", code="invalid_stage")
    if not weights.is_file():
        raise Invalid(f"weights file not found: {weights}", code="missing_weights")
    if not classes:
        raise Invalid("a model needs its class list", code="missing_classes")
    tax = ctx.taxonomy(session)
    unknown = [c for c in classes if c not in tax.classes]
    if unknown:
        raise Invalid(f"model classes not in the taxonomy: {', '.join(unknown)}", code="unknown_class")
    digest = sha256_file(weights)
    existing = session.scalar(
        select(ModelVersion).where(ModelVersion.name == name, ModelVersion.weights_sha256 == digest)
    )
    if existing is not None:
        raise Conflict(f"these weights are already registered as {name} {existing.version}", code="duplicate_model")
    version = version or _next_version(session, name)
    if session.scalar(select(ModelVersion).where(ModelVersion.name == name, ModelVersion.version == version)):
        raise Conflict(f"model {name} {version} already exists", code="duplicate_version")
    key = weights_key(name, version)
    full_card = {
        **card,
        "name": name,
        "version": version,
        "classes": classes,
        "imgsz": imgsz,
        "taxonomy_version": card.get("taxonomy_version", tax.version),
        "dataset_version": dataset_version_id or card.get("dataset_version"),
        "hashes": {**card.get("hashes", {}), "weights_sha256": digest},
    }
    with open(weights, "rb") as f:
        ctx.store.put_stream(key, f, weights.stat().st_size, "application/octet-stream")
    ctx.store.put(
        f"models/{name}/{version}/card.json",
        json.dumps(full_card, ensure_ascii=False, indent=2).encode(),
        "application/json",
    )
    now = datetime.now(UTC)
    mv = ModelVersion(
        name=name,
        version=version,
        stage=stage,
        weights_key=key,
        weights_sha256=digest,
        classes=classes,
        imgsz=imgsz,
        card=full_card,
        dataset_version_id=full_card["dataset_version"],
        created_at=now,
        stage_changed_at=now,
        promoted_at=now if stage == "production" else None,
    )
    session.add(mv)
    session.flush()
    if stage == "production":
        _retire_others(session, principal, mv)
    record(session, principal, "model.register", "model", mv.id, after=snapshot(mv, _AUDITED))
    return mv


def list_models(session: Session, name: str | None = None) -> list[ModelVersion]:
    q = select(ModelVersion).order_by(ModelVersion.name, ModelVersion.id)
    if name:
        q = q.where(ModelVersion.name == name)
    return list(session.scalars(q))


def get_model(session: Session, name: str, version: str) -> ModelVersion:
    mv = session.scalar(select(ModelVersion).where(ModelVersion.name == name, ModelVersion.version == version))
    if mv is None:
        raise NotFound(f"no model {name} {version}", code="model_not_found")
    return mv


def production_model(session: Session, name: str = DEFAULT_NAME) -> ModelVersion | None:
    return session.scalar(
        select(ModelVersion)
        .where(ModelVersion.name == name, ModelVersion.stage == "production")
        .order_by(ModelVersion.promoted_at.desc(), ModelVersion.id.desc())
        .limit(1)
    )


def _retire_others(session: Session, principal: Principal, keep: ModelVersion) -> None:
    others = session.scalars(
        select(ModelVersion).where(
            ModelVersion.name == keep.name, ModelVersion.stage == "production", ModelVersion.id != keep.id
        )
    )
    for other in others:
        before = snapshot(other, _AUDITED)
        other.stage = "archived"
        other.stage_changed_at = datetime.now(UTC)
        record(session, principal, "model.stage", "model", other.id, before=before, after=snapshot(other, _AUDITED))


def _other_production(session: Session, mv: ModelVersion) -> ModelVersion | None:
    return session.scalar(
        select(ModelVersion)
        .where(ModelVersion.name == mv.name, ModelVersion.stage == "production", ModelVersion.id != mv.id)
        .limit(1)
    )


def promote(session: Session, principal: Principal, name: str, version: str, stage: str = "production") -> ModelVersion:
    """Move a version to a stage; promoting to production archives the one serving before it.

    The registry serves every organisation, so only the system organisation's administrators change
    it (Forbidden ``system_only``), and the only production version cannot be moved out of
    production, only replaced (Conflict ``last_production``)."""
    principal.require("models:promote")
    require_system(principal, "changing a model's stage")
    if stage not in MODEL_STAGES:
        raise Invalid(f"unknown stage {stage!r}; stages are {', '.join(MODEL_STAGES)}", code="invalid_stage")
    mv = get_model(session, name, version)
    if mv.stage == "production" and stage != "production" and _other_production(session, mv) is None:
        raise Conflict(
            f"{name} {version} is the only production version: detection would stop for every "
            "organisation; promote its replacement instead (that archives it)",
            code="last_production",
        )
    before = snapshot(mv, _AUDITED)
    now = datetime.now(UTC)
    mv.stage = stage
    mv.stage_changed_at = now
    if stage == "production":
        mv.promoted_at = now
        _retire_others(session, principal, mv)
    session.flush()
    record(session, principal, "model.stage", "model", mv.id, before=before, after=snapshot(mv, _AUDITED))
    return mv


def rollback(session: Session, principal: Principal, name: str = DEFAULT_NAME) -> ModelVersion:
    """Put the previously serving version back into production."""
    principal.require("models:promote")
    require_system(principal, "rolling back the production model")
    current = production_model(session, name)
    q = select(ModelVersion).where(
        ModelVersion.name == name, ModelVersion.promoted_at.is_not(None), ModelVersion.stage != "production"
    )
    if current is not None:
        q = q.where(ModelVersion.id != current.id)
    previous = session.scalar(q.order_by(ModelVersion.promoted_at.desc(), ModelVersion.id.desc()).limit(1))
    if previous is None:
        raise Conflict(f"no earlier production version of {name} to roll back to", code="nothing_to_roll_back")
    return promote(session, principal, name, previous.version, "production")


def local_weights(ctx: Context, mv: ModelVersion) -> Path:
    """The weights as a local file (cached by hash), for engines that need a path."""
    cache = ctx.settings.cache_dir / "models"
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"{mv.weights_sha256}.pt"
    if not path.exists() or sha256_file(path) != mv.weights_sha256:
        tmp = path.with_suffix(".part")
        ctx.store.download_to(mv.weights_key, str(tmp))
        tmp.replace(path)
    return path


def export_model(ctx: Context, session: Session, name: str, version: str, out_dir: Path) -> Path:
    """Write weights.pt and card.json to a folder that ``import_model`` (on another install) reads."""
    mv = get_model(session, name, version)
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(local_weights(ctx, mv), out_dir / "weights.pt")
    (out_dir / "card.json").write_text(json.dumps(mv.card, ensure_ascii=False, indent=2), encoding="utf-8")
    return out_dir


def import_model(
    ctx: Context,
    session: Session,
    principal: Principal,
    folder: Path,
    stage: str = "candidate",
    version: str | None = None,
) -> ModelVersion:
    require_system(principal, "importing a model")
    card_path, weights = folder / "card.json", folder / "weights.pt"
    if not card_path.is_file() or not weights.is_file():
        raise Invalid(f"{folder} must hold weights.pt and card.json", code="invalid_model_folder")
    card = json.loads(card_path.read_text(encoding="utf-8"))
    expected = (card.get("hashes") or {}).get("weights_sha256")
    if expected and expected != sha256_file(weights):
        raise Invalid("weights.pt does not match the hash in card.json", code="hash_mismatch")
    return register_model(
        ctx,
        session,
        principal,
        weights,
        classes=list(card["classes"]),
        imgsz=int(card["imgsz"]),
        card=card,
        name=card.get("name", DEFAULT_NAME),
        version=version or card.get("version"),
        dataset_version_id=card.get("dataset_version"),
        stage=stage,
    )


def ensure_baseline(ctx: Context) -> ModelVersion | None:
    """On a fresh install, register the baseline shipped in models/baseline/ as the production model."""
    weights, card_path = BASELINE_DIR / "baseline.pt", BASELINE_DIR / "card.json"
    if not weights.is_file() or not card_path.is_file():
        return None
    with ctx.db.session() as session:
        if session.scalar(select(ModelVersion).limit(1)) is not None:
            return production_model(session)
        card = json.loads(card_path.read_text(encoding="utf-8"))
        return register_model(
            ctx,
            session,
            SYSTEM,
            weights,
            classes=list(card["classes"]),
            imgsz=int(card["imgsz"]),
            card=card,
            name=card.get("name", DEFAULT_NAME),
            version=card.get("version", "baseline"),
            dataset_version_id=card.get("dataset_version"),
            stage="production",
        )
