"""Model pre-labels (suggestions) for curators.

A suggestion is never a label: it becomes one only when a curator accepts it (as is, or edited),
which saves a normal revision with source ``model`` and the model version, so the history shows
which boxes started as a model's guess. The inference itself is passed in as a
:class:`hazardlens.detector.Detector` (serving hands in its model manager), so this module does not
depend on which engine the serving layer runs; suggestions hold the classes every detection answer
holds (:func:`hazardlens.detector.detect_relevant`: approved provincial additions included).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from hazardlens.audit import record
from hazardlens.auth import Principal
from hazardlens.context import Context
from hazardlens.datasets.library import get_sample
from hazardlens.dates import iso
from hazardlens.detections import Box, Detections
from hazardlens.detector import DEFAULT_CONF, Detector, detect_relevant
from hazardlens.errors import Conflict, Invalid, NotFound
from hazardlens.labeling.annotations import require_label_write, revision_dict, save_revision
from hazardlens.orm import Sample, Suggestion, User
from hazardlens.store import blob_key

MAX_REQUEST = 100  # inference is slow on CPU; bigger batches belong in a background job


def suggestion_dict(s: Suggestion) -> dict[str, Any]:
    return {
        "id": s.id,
        "sample_id": s.sample_id,
        "model_version": s.model_version,
        "status": s.status,
        "boxes": list(s.boxes),
        "created_by": s.created_by,
        "created_at": iso(s.created_at),
    }


def _clipped_boxes(sample: Sample, detections: Detections) -> list[dict[str, Any]]:
    # Letterbox rounding can put a box a pixel outside the image; clip here so that accepting the
    # suggestion as-is does not report repairs the curator never made.
    out = []
    for box in detections.clip(sample.width, sample.height):
        if box.width <= 0 or box.height <= 0:
            continue
        d = box.as_dict()
        if box.confidence is not None:
            d["confidence"] = round(float(box.confidence), 4)
        out.append(d)
    return out


def store_suggestions(
    session: Session,
    principal: Principal,
    sample_id: int,
    model_version: str,
    detections: Detections,
    *,
    job_id: int | None = None,
) -> Suggestion:
    """Keep one model's boxes for a sample as an open suggestion (``job_id``: the pre-labelling job
    that asked; one per job and sample)."""
    principal.require("suggestions:request")
    if not isinstance(model_version, str) or not model_version.strip():
        raise Invalid("model_version must be a non-empty string", code="invalid_model_version")
    sample = get_sample(session, principal, sample_id)
    require_label_write(principal, sample)  # suggestions are labelling work on the sample: the owner's
    row = Suggestion(
        sample_id=sample.id,
        model_version=model_version.strip()[:100],
        boxes=_clipped_boxes(sample, detections),
        created_by=principal.user_id,
        job_id=job_id,
    )
    session.add(row)
    session.flush()
    record(
        session,
        principal,
        "suggestion.create",
        "suggestion",
        row.id,
        sample_id=sample.id,
        after={"model_version": row.model_version, "boxes": len(row.boxes), **({"job_id": job_id} if job_id else {})},
    )
    return row


def request_suggestions(
    ctx: Context,
    session: Session,
    principal: Principal,
    sample_ids: Iterable[int],
    detector: Detector,
    *,
    conf: float = DEFAULT_CONF,
    version: str | None = None,
) -> list[Suggestion]:
    """Run ``detector`` (model ``version``, default production; threshold ``conf``) on each sample's
    original image and store the result. Every id is checked for visibility before any inference
    runs, so an invisible id fails the request without spending model time."""
    principal.require("suggestions:request")
    ids = list(dict.fromkeys(int(i) for i in sample_ids))
    if not ids:
        raise Invalid("no sample ids given", code="invalid_request")
    if len(ids) > MAX_REQUEST:
        raise Invalid(f"at most {MAX_REQUEST} samples per request", code="invalid_request")
    samples = [get_sample(session, principal, i) for i in ids]
    for sample in samples:  # every id checked before any inference runs
        require_label_write(principal, sample)
    out = []
    for sample in samples:
        result = detect_relevant(ctx, detector, ctx.store.get(blob_key(sample.sha256)), conf=conf, version=version)
        out.append(store_suggestions(session, principal, sample.id, result.version, result.detections))
    return out


def suggest_for_samples(
    ctx: Context,
    principal: Principal,
    sample_ids: Iterable[int],
    detector: Detector,
    *,
    conf: float = DEFAULT_CONF,
    version: str | None = None,
) -> list[dict[str, Any]]:
    """``request_suggestions`` for a server: the catalogue is read and written in two short sessions
    and the (slow) inference runs between them, holding no database lock (SQLite serialises writers,
    and the model manager itself reads the catalogue)."""
    principal.require("suggestions:request")
    ids = list(dict.fromkeys(int(i) for i in sample_ids))
    if not ids:
        raise Invalid("no sample ids given", code="invalid_request")
    if len(ids) > MAX_REQUEST:
        raise Invalid(f"at most {MAX_REQUEST} samples per request", code="invalid_request")
    with ctx.db.session() as session:
        samples = [get_sample(session, principal, i) for i in ids]
        for sample in samples:  # every id checked before any inference runs
            require_label_write(principal, sample)
        shas = [(sample.id, sample.sha256) for sample in samples]
    predicted = [
        (i, detect_relevant(ctx, detector, ctx.store.get(blob_key(sha)), conf=conf, version=version)) for i, sha in shas
    ]
    with ctx.db.session() as session:
        rows = [store_suggestions(session, principal, i, r.version, r.detections) for i, r in predicted]
        session.flush()
        return [suggestion_dict(r) for r in rows]


def list_suggestions(
    session: Session, principal: Principal, sample_id: int, include_closed: bool = False
) -> list[dict[str, Any]]:
    """A sample's suggestions, newest first; accepted and dismissed ones only on request."""
    principal.require("samples:read")
    sample = get_sample(session, principal, sample_id)
    query = select(Suggestion).where(Suggestion.sample_id == sample.id)
    if not include_closed:
        query = query.where(Suggestion.status == "open")
    return [suggestion_dict(s) for s in session.scalars(query.order_by(Suggestion.id.desc()))]


def _open(session: Session, principal: Principal, suggestion_id: int) -> Suggestion:
    row = session.get(Suggestion, suggestion_id)
    if row is None:
        raise NotFound(f"no suggestion {suggestion_id}")
    try:
        sample = get_sample(session, principal, row.sample_id)
    except NotFound as exc:  # invisible = absent, also through a suggestion's id
        raise NotFound(f"no suggestion {suggestion_id}") from exc
    require_label_write(principal, sample)  # accepting or dismissing changes the owner's labelling work
    if row.status != "open":
        raise Conflict(
            f"suggestion {suggestion_id} is already {row.status}",
            code="invalid_transition",
            details={"state": row.status},
        )
    return row


def accept(
    ctx: Context,
    session: Session,
    principal: Principal,
    suggestion_id: int,
    boxes: Sequence[Mapping[str, Any] | Box] | None = None,
) -> dict[str, Any]:
    """Turn a suggestion (or the curator's edit of it) into a new revision; returns the revision.
    Confidence is dropped: an accepted box is a curator's statement, not a score."""
    principal.require("annotations:write")
    row = _open(session, principal, suggestion_id)
    chosen: list[Any] = (
        list(boxes) if boxes is not None else [{k: v for k, v in b.items() if k != "confidence"} for b in row.boxes]
    )
    rev = save_revision(
        ctx,
        session,
        principal,
        row.sample_id,
        chosen,
        source="model",
        model_version=row.model_version,
        note=f"from suggestion {row.id}" + (" (edited)" if boxes is not None else ""),
    )
    row.status = "accepted"
    record(
        session,
        principal,
        "suggestion.accept",
        "suggestion",
        row.id,
        sample_id=row.sample_id,
        before={"status": "open"},
        after={"status": "accepted", "revision_id": rev.id, "edited": boxes is not None},
    )
    session.flush()
    names = {}
    if principal.user_id is not None:
        user = session.get(User, principal.user_id)
        names = {user.id: user.name} if user else {}
    return revision_dict(rev, names)


def dismiss(session: Session, principal: Principal, suggestion_id: int) -> dict[str, Any]:
    """Close a suggestion without using it (kept, so its model's misses stay on record)."""
    principal.require("annotations:write")
    row = _open(session, principal, suggestion_id)
    row.status = "dismissed"
    record(
        session,
        principal,
        "suggestion.dismiss",
        "suggestion",
        row.id,
        sample_id=row.sample_id,
        before={"status": "open"},
        after={"status": "dismissed"},
    )
    session.flush()
    return suggestion_dict(row)


__all__ = ["accept", "dismiss", "list_suggestions", "request_suggestions", "store_suggestions", "suggestion_dict"]
