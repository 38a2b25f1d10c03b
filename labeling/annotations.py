"""Annotation revisions and the review workflow.

Nothing is ever overwritten: every save is a new :class:`AnnotationRevision` (numbered per sample),
and a revision row only changes its review state afterwards. The sample carries pointers to its
current revision (what curators work on) and its approved revision (the only one a dataset may
use), so that correcting an approved sample never removes the approved labels until the correction
is approved in turn.

Workflow (状态流转), one state per sample::

    unlabeled -> in_progress -> submitted -> approved
                      ^             |
                      |             v
                      +-------- rejected (退回修改, with the reviewer's reason)

Only the owning organisation writes a sample's labels (:func:`writable_sample`: invisible is 404,
visible but shared by another organisation is 403 ``not_owner``). Saving a revision is allowed in
any state (it makes the sample ``in_progress`` again: a rejected sample is fixed that way, and an
approved one corrected). Every change writes an audit event in the same transaction; every check
runs before anything is written, so a refused call changes nothing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from hazardlens.audit import record
from hazardlens.auth import Principal
from hazardlens.context import Context
from hazardlens.datasets.tenancy import get_sample
from hazardlens.dates import iso
from hazardlens.detections import Box
from hazardlens.errors import Conflict, Forbidden, Invalid, NotFound
from hazardlens.orm import AnnotationRevision, Assignment, Sample, SampleClass, User
from hazardlens.taxonomy import Taxonomy

SAVE_STATUSES = ("in_progress", "submitted", "approved")
REVISION_SOURCES = ("manual", "import", "feedback", "model")
_COORDS = ("x1", "y1", "x2", "y2")
MAX_BOXES = 2000  # far above any real photo; stops a runaway client from writing megabytes of JSON
MAX_REASON = 2000


def _now() -> datetime:
    return datetime.now(UTC)


# --- validation ------------------------------------------------------------------------------


def _number(value: Any) -> float | None:
    # bool is an int subclass, and numeric strings are a client bug worth refusing rather than guessing.
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _fmt(value: float) -> str:
    return f"{value:g}"


def validate_boxes(
    taxonomy: Taxonomy, sample: Sample, boxes: Sequence[Mapping[str, Any] | Box]
) -> tuple[list[Box], list[str]]:
    """Check boxes against the sample's oriented image and the active taxonomy.

    Coordinates a little outside the image (a drag past the edge) are clipped and reported, because
    the intent is clear; anything that cannot be repaired without guessing (no area left, unknown or
    inactive class, a non-number) is refused. All problems are reported at once, per box index, so
    a curator fixes them in one go. Raises Invalid (422)."""
    if not isinstance(boxes, Sequence) or isinstance(boxes, str | bytes):
        raise Invalid("boxes must be a list", code="invalid_boxes")
    if len(boxes) > MAX_BOXES:
        raise Invalid(f"{len(boxes)} boxes is more than the {MAX_BOXES} allowed on one sample", code="invalid_boxes")
    width, height = float(sample.width), float(sample.height)
    out: list[Box] = []
    repairs: list[str] = []
    errors: list[dict[str, Any]] = []

    def refuse(index: int, code: str, message: str) -> None:
        errors.append({"index": index, "code": code, "message": f"box {index}: {message}"})

    for index, raw in enumerate(boxes):
        if isinstance(raw, Box):
            raw = raw.as_dict()
        if not isinstance(raw, Mapping):
            refuse(index, "invalid_box", "expected an object with class_key, x1, y1, x2, y2")
            continue
        bad = len(errors)
        key = raw.get("class_key")
        if not isinstance(key, str) or not key:
            refuse(index, "invalid_box", "'class_key' must be a non-empty string")
        else:
            try:
                taxonomy.get_class(key)
            except Invalid as exc:
                refuse(index, exc.code, exc.message)
        coords: dict[str, float] = {}
        for name in _COORDS:
            value = _number(raw.get(name))
            if value is None:
                refuse(index, "invalid_box", f"'{name}' must be a finite number, not {raw.get(name)!r}")
            else:
                coords[name] = value
        if len(errors) > bad:
            continue
        clipped = {
            "x1": min(max(coords["x1"], 0.0), width),
            "x2": min(max(coords["x2"], 0.0), width),
            "y1": min(max(coords["y1"], 0.0), height),
            "y2": min(max(coords["y2"], 0.0), height),
        }
        changed = [f"{n} {_fmt(coords[n])} -> {_fmt(clipped[n])}" for n in _COORDS if clipped[n] != coords[n]]
        if clipped["x2"] <= clipped["x1"] or clipped["y2"] <= clipped["y1"]:
            where = " after clipping to the image" if changed else ""
            refuse(
                index,
                "zero_area",
                f"has no area{where} (x1={_fmt(clipped['x1'])}, y1={_fmt(clipped['y1'])}, "
                f"x2={_fmt(clipped['x2'])}, y2={_fmt(clipped['y2'])}); x2 must exceed x1 and y2 y1",
            )
            continue
        if changed:
            repairs.append(
                f"box {index} ({key}): clipped to the {sample.width}x{sample.height} image: " + ", ".join(changed)
            )
        out.append(Box(str(key), clipped["x1"], clipped["y1"], clipped["x2"], clipped["y2"]))
    if errors:
        shown = "; ".join(e["message"] for e in errors[:10])
        more = f"; and {len(errors) - 10} more" if len(errors) > 10 else ""
        raise Invalid(f"{len(errors)} box problem(s): {shown}{more}", code="invalid_boxes", details=errors)
    return out, repairs


# --- reading ---------------------------------------------------------------------------------


def _names(session: Session, ids: set[int | None]) -> dict[int, str]:
    wanted = {i for i in ids if i is not None}
    if not wanted:
        return {}
    return dict(session.execute(select(User.id, User.name).where(User.id.in_(wanted))).tuples().all())


def revision_dict(rev: AnnotationRevision, names: Mapping[int, str]) -> dict[str, Any]:
    return {
        "id": rev.id,
        "sample_id": rev.sample_id,
        "number": rev.number,
        "status": rev.status,
        "source": rev.source,
        "author_id": rev.author_id,
        "author": names.get(rev.author_id, "system") if rev.author_id is not None else "system",
        "created_at": iso(rev.created_at),
        "submitted_at": iso(rev.submitted_at),
        "reviewed_at": iso(rev.reviewed_at),
        "reviewer_id": rev.reviewer_id,
        "reviewer": names.get(rev.reviewer_id) if rev.reviewer_id is not None else None,
        "reason": rev.review_reason,
        "note": rev.note,
        "model_version": rev.model_version,
        "parent_id": rev.parent_id,
        "boxes": list(rev.boxes),
        "unlabeled_classes": list(rev.unlabeled_classes or []),
    }


def _current_dict(session: Session, sample: Sample) -> dict[str, Any]:
    rev = session.get(AnnotationRevision, sample.current_revision_id) if sample.current_revision_id else None
    names = _names(session, {rev.author_id, rev.reviewer_id}) if rev is not None else {}
    return {
        "sample_id": sample.id,
        "status": sample.annotation_status,
        "width": sample.width,
        "height": sample.height,
        "class_keys": list(sample.class_keys or []),
        "approved_revision_id": sample.approved_revision_id,
        "revision": revision_dict(rev, names) if rev is not None else None,
        "boxes": list(rev.boxes) if rev is not None else [],
    }


def current(session: Session, principal: Principal, sample_id: int) -> dict[str, Any]:
    """The sample's state and its current revision (``revision`` is None while unlabeled)."""
    principal.require("samples:read")
    return _current_dict(session, get_sample(session, principal, sample_id))


def history(session: Session, principal: Principal, sample_id: int) -> list[dict[str, Any]]:
    """Every revision of the sample, oldest first: the archived trail (存档留痕) of its labels."""
    principal.require("samples:read")
    sample = get_sample(session, principal, sample_id)
    revs = list(
        session.scalars(
            select(AnnotationRevision)
            .where(AnnotationRevision.sample_id == sample.id)
            .order_by(AnnotationRevision.number)
        )
    )
    names = _names(session, {r.author_id for r in revs} | {r.reviewer_id for r in revs})
    return [revision_dict(r, names) for r in revs]


# --- writing ---------------------------------------------------------------------------------


def _state(sample: Sample) -> dict[str, Any]:
    return {
        "annotation_status": sample.annotation_status,
        "current_revision_id": sample.current_revision_id,
        "approved_revision_id": sample.approved_revision_id,
        "class_keys": list(sample.class_keys or []),
    }


def may_write_labels(principal: Principal, sample: Sample) -> bool:
    """THE write rule for a sample's labels, written once: only the organisation that owns the sample
    saves, submits, approves or rejects its revisions (by hand, from a suggestion, an import or
    inspection feedback). Shared means readable by every organisation, not writable: another
    organisation's boxes must never reach the owner's datasets (issue 13, item 4)."""
    return sample.org_code == principal.org_code


def label_writable(principal: Principal) -> ColumnElement[bool]:
    """:func:`may_write_labels` as a WHERE clause over samples (the same rule, for queues)."""
    return Sample.org_code == principal.org_code


def require_label_write(principal: Principal, sample: Sample) -> None:
    """Forbidden ``not_owner`` (403) unless :func:`may_write_labels`; for a sample already found visible."""
    if not may_write_labels(principal, sample):
        raise Forbidden(
            f"sample {sample.id} is shared by organisation {sample.org_code}: its labels are that "
            "organisation's to change",
            code="not_owner",
        )


def writable_sample(session: Session, principal: Principal, sample_id: int) -> Sample:
    """The sample whose labels ``principal`` is about to change: NotFound (404) when it is not
    visible, as for any read; Forbidden ``not_owner`` (403) when it is visible (shared) but another
    organisation's; row-locked on PostgreSQL, so two concurrent saves or reviews of one sample run
    one after the other instead of both passing their state checks (SQLite already serialises
    writers with BEGIN IMMEDIATE)."""
    sample = get_sample(session, principal, sample_id)
    require_label_write(principal, sample)
    if session.get_bind().dialect.name != "sqlite":
        session.refresh(sample, with_for_update=True)
    return sample


def _close_assignments(session: Session, sample_id: int, user_id: int | None) -> None:
    """An assignment is done when its assignee submits the sample."""
    if user_id is None:
        return
    for a in session.scalars(
        select(Assignment).where(
            Assignment.sample_id == sample_id, Assignment.assignee_id == user_id, Assignment.done_at.is_(None)
        )
    ):
        a.done_at = _now()


def _save(
    ctx: Context,
    session: Session,
    principal: Principal,
    sample_id: int,
    boxes: Sequence[Mapping[str, Any] | Box],
    *,
    source: str,
    note: str | None,
    status: str,
    model_version: str | None,
    unlabeled_classes: Sequence[str] | None = None,
) -> tuple[AnnotationRevision, list[str]]:
    if source not in REVISION_SOURCES:
        raise Invalid(
            f"unknown revision source {source!r}; one of {', '.join(REVISION_SOURCES)}", code="invalid_source"
        )
    if status not in SAVE_STATUSES:
        raise Invalid(
            f"a revision is saved as one of {', '.join(SAVE_STATUSES)}, not {status!r}", code="invalid_status"
        )
    # Manual work (and accepting a model's boxes) is a curator's job; imports need the import right;
    # the feedback loop is authorised by its caller (an inspector confirming a finding).
    if source in ("manual", "model"):
        principal.require("annotations:write")
    elif source == "import":
        principal.require("labeling:import")
    if status == "approved":
        # Saving straight to 'approved' skips review, so only someone who may review can do it.
        principal.require("annotations:review")
    if note is not None and len(note) > 10_000:
        raise Invalid("note is longer than 10000 characters", code="invalid_note")
    # the organisation's own taxonomy: an approved provincial class is usable where it was proposed only
    taxonomy = ctx.taxonomy(session, org_code=principal.org_code)
    sample = writable_sample(session, principal, sample_id)
    valid, repairs = validate_boxes(taxonomy, sample, boxes)
    unlabeled = _unlabeled_classes(taxonomy, session, sample, unlabeled_classes)
    before = _state(sample)
    number = (
        session.scalar(select(func.max(AnnotationRevision.number)).where(AnnotationRevision.sample_id == sample.id))
        or 0
    ) + 1
    now = _now()
    rev = AnnotationRevision(
        sample_id=sample.id,
        number=number,
        boxes=[b.as_dict() for b in valid],
        unlabeled_classes=unlabeled,
        status=status,
        source=source,
        author_id=principal.user_id,
        parent_id=sample.current_revision_id,
        model_version=model_version,
        note=note,
        created_at=now,
        submitted_at=now if status in ("submitted", "approved") else None,
        reviewer_id=principal.user_id if status == "approved" else None,
        reviewed_at=now if status == "approved" else None,
    )
    session.add(rev)
    session.flush()
    keys = sorted({b.class_key for b in valid})
    sample.annotation_status = status
    sample.current_revision_id = rev.id
    sample.class_keys = keys
    if status == "approved":
        sample.approved_revision_id = rev.id
    session.execute(delete(SampleClass).where(SampleClass.sample_id == sample.id))
    session.add_all(SampleClass(sample_id=sample.id, class_key=k) for k in keys)
    if status in ("submitted", "approved"):
        _close_assignments(session, sample.id, principal.user_id)
    after = {
        **_state(sample),
        "revision_number": number,
        "source": source,
        "boxes": rev.boxes,
        "model_version": model_version,
        "note": note,
    }
    if unlabeled:
        after["unlabeled_classes"] = unlabeled
    if repairs:
        after["repairs"] = repairs
    record(
        session,
        principal,
        "annotation.save",
        "annotation_revision",
        rev.id,
        sample_id=sample.id,
        before=before,
        after=after,
    )
    session.flush()
    return rev, repairs


def _unlabeled_classes(
    taxonomy: Taxonomy, session: Session, sample: Sample, requested: Sequence[str] | None
) -> list[str]:
    """The classes a new revision leaves unlabeled: as requested, or (``None``) as the current
    revision said, so that a curator who fixes one box does not silently claim the whole image
    complete. Only taxonomy classes; an explicit ``[]`` declares the revision complete."""
    if requested is None:
        current = _current_revision(session, sample)
        return list(current.unlabeled_classes or []) if current is not None else []
    if isinstance(requested, str) or len(requested) > 100:
        raise Invalid("unlabeled_classes is a list of at most 100 class keys", code="invalid_unlabeled_classes")
    active = set(taxonomy.class_keys())
    unknown = sorted({k for k in requested if k not in active}, key=str)
    if unknown:
        raise Invalid(
            f"unlabeled_classes names unknown classes: {', '.join(map(str, unknown))}",
            code="invalid_unlabeled_classes",
            details={"unknown": unknown},
        )
    return sorted(set(requested))


def save_revision(
    ctx: Context,
    session: Session,
    principal: Principal,
    sample_id: int,
    boxes: Sequence[Mapping[str, Any] | Box],
    *,
    source: str = "manual",
    note: str | None = None,
    status: str = "in_progress",
    model_version: str | None = None,
    unlabeled_classes: Sequence[str] | None = None,
) -> AnnotationRevision:
    """Store a new full set of boxes for a sample (an empty list says "verified: nothing here", a
    negative sample). Importers pass ``status='submitted'`` or ``'approved'``, the feedback loop
    ``'submitted'``. Raises NotFound for a sample the caller cannot see, Forbidden (``not_owner``) for
    another organisation's shared sample (:func:`writable_sample`), Invalid for bad boxes."""
    rev, _ = _save(
        ctx,
        session,
        principal,
        sample_id,
        boxes,
        source=source,
        note=note,
        status=status,
        model_version=model_version,
        unlabeled_classes=unlabeled_classes,
    )
    return rev


def put_annotations(
    ctx: Context,
    session: Session,
    principal: Principal,
    sample_id: int,
    boxes: Sequence[Mapping[str, Any] | Box],
    note: str | None = None,
    unlabeled_classes: Sequence[str] | None = None,
) -> dict[str, Any]:
    """A curator's manual save, answered with the new current state plus what was repaired, so the
    editor can show the curator that a box was clipped."""
    rev, repairs = _save(
        ctx,
        session,
        principal,
        sample_id,
        boxes,
        source="manual",
        note=note,
        status="in_progress",
        model_version=None,
        unlabeled_classes=unlabeled_classes,
    )
    sample = session.get(Sample, rev.sample_id)
    assert sample is not None
    return {**_current_dict(session, sample), "repairs": repairs}


def _current_revision(session: Session, sample: Sample) -> AnnotationRevision | None:
    if sample.current_revision_id is None:
        return None
    return session.get(AnnotationRevision, sample.current_revision_id)


def _illegal(sample: Sample, action: str, hint: str) -> Conflict:
    return Conflict(
        f"cannot {action} sample {sample.id}: it is '{sample.annotation_status}'; {hint}",
        code="invalid_transition",
        details={"state": sample.annotation_status, "action": action},
    )


def _check_not_own(principal: Principal, rev: AnnotationRevision, action: str) -> None:
    if principal.user_id is not None and rev.author_id == principal.user_id:
        raise Forbidden(
            f"you cannot {action} your own revision (revision {rev.number}); another reviewer must review it",
            code="own_work",
        )


def submit(session: Session, principal: Principal, sample_id: int) -> dict[str, Any]:
    """Hand the current revision to review. Only an in-progress revision can be submitted: a
    rejected one must be corrected (saved again) first, so a reviewer never sees the same
    rejected boxes twice."""
    principal.require("annotations:write")
    sample = writable_sample(session, principal, sample_id)
    rev = _current_revision(session, sample)
    if sample.annotation_status != "in_progress" or rev is None:
        hints = {
            "unlabeled": "save a revision first",
            "rejected": "save a corrected revision first",
            "submitted": "it is already waiting for review",
            "approved": "it is approved; save a new revision to correct it",
        }
        raise _illegal(sample, "submit", hints.get(sample.annotation_status, "save a revision first"))
    before = _state(sample)
    rev.status = "submitted"
    rev.submitted_at = _now()
    sample.annotation_status = "submitted"
    _close_assignments(session, sample.id, principal.user_id)
    record(
        session,
        principal,
        "annotation.submit",
        "annotation_revision",
        rev.id,
        sample_id=sample.id,
        before=before,
        after={**_state(sample), "revision_number": rev.number},
    )
    session.flush()
    return _current_dict(session, sample)


def _reviewable(
    session: Session, principal: Principal, sample_id: int, action: str
) -> tuple[Sample, AnnotationRevision]:
    principal.require("annotations:review")
    sample = writable_sample(session, principal, sample_id)
    rev = _current_revision(session, sample)
    if sample.annotation_status != "submitted" or rev is None:
        hints = {
            "unlabeled": "nothing has been labelled yet",
            "in_progress": "it has not been submitted",
            "approved": "it is already approved",
            "rejected": "it was sent back and not resubmitted",
        }
        raise _illegal(sample, action, hints.get(sample.annotation_status, "it is not submitted"))
    _check_not_own(principal, rev, action)
    return sample, rev


def approve(session: Session, principal: Principal, sample_id: int) -> dict[str, Any]:
    """Approve the submitted revision: from now on it is the one datasets use for this sample."""
    sample, rev = _reviewable(session, principal, sample_id, "approve")
    before = _state(sample)
    rev.status = "approved"
    rev.reviewer_id = principal.user_id
    rev.reviewed_at = _now()
    sample.annotation_status = "approved"
    sample.approved_revision_id = rev.id
    record(
        session,
        principal,
        "annotation.approve",
        "annotation_revision",
        rev.id,
        sample_id=sample.id,
        before=before,
        after={**_state(sample), "revision_number": rev.number},
    )
    session.flush()
    return _current_dict(session, sample)


def reject(session: Session, principal: Principal, sample_id: int, reason: str) -> dict[str, Any]:
    """Send the submitted revision back (退回修改) with the reviewer's reason, which the curator sees
    in the history. The author's assignment is reopened so the sample returns to their queue."""
    reason = reason.strip() if isinstance(reason, str) else ""
    if not reason:
        raise Invalid("a rejection needs a reason the curator can act on", code="reason_required")
    if len(reason) > MAX_REASON:
        raise Invalid(f"reason is longer than {MAX_REASON} characters", code="reason_too_long")
    sample, rev = _reviewable(session, principal, sample_id, "reject")
    before = _state(sample)
    rev.status = "rejected"
    rev.reviewer_id = principal.user_id
    rev.reviewed_at = _now()
    rev.review_reason = reason
    sample.annotation_status = "rejected"
    if rev.author_id is not None:
        for a in session.scalars(
            select(Assignment).where(Assignment.sample_id == sample.id, Assignment.assignee_id == rev.author_id)
        ):
            a.done_at = None
    record(
        session,
        principal,
        "annotation.reject",
        "annotation_revision",
        rev.id,
        sample_id=sample.id,
        before=before,
        after={**_state(sample), "revision_number": rev.number, "reason": reason},
    )
    session.flush()
    return _current_dict(session, sample)


def get_revision(session: Session, principal: Principal, revision_id: int) -> AnnotationRevision:
    """A revision by id, only if its sample is visible (404 otherwise, like the sample itself)."""
    rev = session.get(AnnotationRevision, revision_id)
    if rev is None:
        raise NotFound(f"no annotation revision {revision_id}")
    try:
        get_sample(session, principal, rev.sample_id)
    except NotFound as exc:
        raise NotFound(f"no annotation revision {revision_id}") from exc
    return rev


__all__ = [
    "REVISION_SOURCES",
    "SAVE_STATUSES",
    "approve",
    "current",
    "get_revision",
    "history",
    "label_writable",
    "may_write_labels",
    "put_annotations",
    "reject",
    "require_label_write",
    "revision_dict",
    "save_revision",
    "submit",
    "validate_boxes",
    "writable_sample",
]
