"""Inspection records (执法检查): photos taken on site, the findings a model suggests on them, and the
inspector's decision on each suggestion.

A detection is a suggestion (疑似隐患), never a finding on its own: the inspector confirms or rejects
it, and only a confirmed one goes into the inspection record. Both answers feed the sample library:

* a confirmed (or corrected) finding becomes an annotation revision on the photo's sample, in state
  ``submitted`` (source ``feedback``), so a reviewer approves it like any other label before a
  dataset can use it;
* a rejected one stays, with its box, as evidence of a false positive (status ``rejected``), and the
  organisation's own sample is tagged ``hard_negative`` so dataset builders can find such photos.

Which detections become findings: only hazard classes (``is_hazard`` in the taxonomy). Context
classes (a person, a worn helmet, an explosion vent) are returned with the photo as ``detections``
to help the inspector, but they are nothing an inspector could confirm as a hazard, so they create
no Finding rows. Detections are limited to the classes relevant to the photo's sector.

Derived findings: the rules of configs/rules.yaml (hazardlens.rules) add findings that are an
absence or a relation, e.g. a worker whose head has no helmet. A rule finding is recorded as a
Finding of the rule's evidence class (``head``) with ``rule`` set, so confirming it labels a box of
that class like any other finding. A ``head`` detection that a rule finding rests on creates no
second, plain ``head`` finding: the rule's finding supersedes it (same box, confidence strengthened
by the person it belongs to). Rules without an evidence class have nothing to label and are not
recorded (``POST /v1/detect`` still reports them).

Ownership: a photo is stored against a sample of the recording organisation, deduplicated only
within that organisation. When another organisation shares the same bytes, the photo still gets a
private sample of its own (the bytes are stored once): the record number, enterprise, inspector and
idempotency key stay in the recording organisation's tables and audit trail, and never reach the
other organisation's sample or its history (issue 13, item 5). Only the sample's owner writes its
labels (:func:`hazardlens.labeling.annotations.may_write_labels`), feedback included.

Retries: enforcement clients upload over poor networks and retry. With an ``Idempotency-Key`` the
same key from the same organisation returns the stored answer of the first call and stores nothing
twice; concurrent retries are settled by the unique constraint (org_code, idempotency_key). The
model runs outside any catalogue transaction, so the catalogue's write lock is never held while a
photo is being analysed.

This module does not import ``hazardlens.models``: serving hands in its model manager as a
:class:`hazardlens.detector.Detector`. Detections are filtered and named with the one taxonomy of every
detection answer (:func:`hazardlens.detector.detection_taxonomy`) and answered in the one public form
(:func:`hazardlens.contracts.detections.detection_public`).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from hazardlens.audit import record as audit
from hazardlens.audit import snapshot
from hazardlens.auth import Principal
from hazardlens.context import Context
from hazardlens.contracts.detections import class_text, detections_public
from hazardlens.datasets import library
from hazardlens.dates import iso
from hazardlens.detections import Box, box_iou
from hazardlens.detector import DEFAULT_CONF, Detector, Tiling, detection_taxonomy, relevant
from hazardlens.errors import Conflict, Invalid, NotFound
from hazardlens.labeling.annotations import may_write_labels, save_revision, validate_boxes
from hazardlens.orm import AnnotationRevision, Finding, InspectionPhoto, ModelVersion, Sample, utcnow
from hazardlens.rules import RuleSet, default_rules
from hazardlens.taxonomy import Taxonomy
from hazardlens.textnorm import invisible_characters, record_number

DECISIONS = ("confirmed", "rejected")
HARD_NEGATIVE_TAG = "hard_negative"
MAX_RECORD_NO = 200
MAX_KEY = 200
MAX_REASON = 2000
#: A confirmed box this close to a box of the same class already in the current revision is that box.
SAME_BOX_IOU = 0.9
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class PhotoMeta:
    """What the enforcement system tells about a photo of a record."""

    enterprise_id: str
    sector: str
    inspector_id: str | None = None
    captured_at: datetime | None = None
    item_codes: Sequence[str] = ()
    original_name: str | None = None


def check_record_no(record_no: str) -> str:
    """Record numbers are issued by the enforcement system (e.g. 鄂应急检〔2026〕3号); kept as printed,
    in one spelling: NFKC (full-width digits are digits), no invisible characters (issue 13, item 8)."""
    value = record_number(record_no or "")
    if not value or len(value) > MAX_RECORD_NO or _CONTROL.search(value) or "/" in value:
        raise Invalid(
            f"record number must be 1-{MAX_RECORD_NO} characters without '/' or control characters",
            code="invalid_record_no",
        )
    return value


def _check_key(key: str | None) -> str | None:
    if key is None:
        return None
    key = key.strip()
    if not key:
        return None
    if len(key) > MAX_KEY or _CONTROL.search(key):
        raise Invalid(f"Idempotency-Key must be 1-{MAX_KEY} printable characters", code="invalid_idempotency_key")
    return key


def _item_codes(taxonomy: Taxonomy, codes: Sequence[str]) -> list[str]:
    out: list[str] = []
    for code in codes:
        code = str(code).strip()
        if code and code not in out:
            taxonomy.get_item(code)  # raises Invalid (unknown_item) naming close matches
            out.append(code)
    return out


def _box(box: Box | Mapping[str, Any]) -> dict[str, float]:
    get: Callable[[str], Any] = box.get if isinstance(box, Mapping) else lambda k: getattr(box, k)
    return {k: round(float(get(k)), 1) for k in ("x1", "y1", "x2", "y2")}


def finding_dict(taxonomy: Taxonomy, f: Finding, rules: RuleSet | None = None) -> dict[str, Any]:
    """A finding for the API. A rule finding shows its rule's text, items and legal basis (read now,
    like a class's, so a corrected citation shows on old records); if the rule has since been
    removed, its evidence class's."""
    cls = taxonomy.classes.get(f.class_key)
    text = class_text(taxonomy, f.class_key)  # the same names, items and basis as the class's detections
    out = {
        "id": f.id,
        "photo_id": f.photo_id,
        "sample_id": f.sample_id,
        "class_key": f.class_key,
        "name_zh": text["name_zh"],
        "name_en": text["name_en"],
        "confidence": round(float(f.confidence), 4),
        "box": dict(f.box),
        "inspection_items": text["inspection_items"],
        "legal_basis": text["legal_basis"],
        "severity": text["severity"],
        "finding": cls.finding_zh if cls else "",
        "finding_en": cls.finding_en if cls else None,
        "rule": f.rule,
        "model_version": f.model_version,
        "status": f.status,
        "review": f.review,
        "revision_id": f.revision_id,
        "reviewed_at": iso(f.reviewed_at),
    }
    rule = (rules if rules is not None else default_rules()).get(f.rule) if f.rule else None
    if rule is not None:
        out.update(
            {
                "inspection_items": list(rule.inspection_items or []),
                "legal_basis": list(rule.legal_basis or []),
                "severity": rule.severity,
                "finding": rule.finding_zh,
                "finding_en": rule.finding_en,
            }
        )
    return out


# --- recording a photo -------------------------------------------------------------------------


def _existing(session: Session, org_code: str, key: str) -> InspectionPhoto | None:
    return session.scalar(
        select(InspectionPhoto).where(InspectionPhoto.org_code == org_code, InspectionPhoto.idempotency_key == key)
    )


def _replay(session: Session, photo: InspectionPhoto, record_no: str, sha256: str) -> dict[str, Any]:
    """The stored answer of the first call with this key, if this retry is the same request."""
    sample = session.get(Sample, photo.sample_id)
    if photo.record_no != record_no or (sample is not None and sample.sha256 != sha256):
        raise Invalid(
            "this Idempotency-Key was already used for a different photo or record; use a new key for a new upload",
            code="idempotency_key_reused",
        )
    return {**(photo.response or {}), "replayed": True}


def record_photo(
    ctx: Context,
    session: Session,
    principal: Principal,
    record_no: str,
    data: bytes,
    meta: PhotoMeta,
    idempotency_key: str | None,
    detector: Detector,
    *,
    conf: float = DEFAULT_CONF,
    tiles: Tiling | None = None,
    timeout: float | None = None,
    rule_conf: float = 0.25,
) -> dict[str, Any]:
    """Store an inspection photo in the library, run the model (``detector``, at ``conf``, sliced with
    ``tiles``), and create its suggested findings.

    Returns the answer (also stored, for replay): record_no, photo_id, sample_id, model, image,
    findings (hazard classes and rule findings of at least ``rule_conf``; status ``suggested``) and
    detections (everything relevant to the sector, context classes included). ``replayed`` tells
    whether it is the stored answer of an earlier call.
    The caller's session commits; it must not hold an open transaction (the model runs before it
    is first used, so no catalogue lock is held meanwhile).
    """
    principal.require("inspections:write")
    record_no = check_record_no(record_no)
    key = _check_key(idempotency_key)
    sha256 = hashlib.sha256(data).hexdigest()
    if key is not None:  # cheap early replay, in a short transaction of its own
        with ctx.db.session() as s:
            earlier = _existing(s, principal.org_code, key)
            if earlier is not None:
                return _replay(s, earlier, record_no, sha256)

    tax = detection_taxonomy(ctx, org_code=principal.org_code)  # provincial additions of this organisation only
    items = _item_codes(tax, meta.item_codes)
    enterprise = (meta.enterprise_id or "").strip()
    if not enterprise:
        raise Invalid("enterprise_id is required", code="invalid_meta")
    prepared = library.prepare(
        ctx,
        data,
        library.IngestMeta(
            sector=meta.sector,
            scope="private",
            source="inspection",
            site_id=enterprise,
            enterprise_id=enterprise,
            inspection_record=record_no,
            captured_at=meta.captured_at,
            original_name=meta.original_name,
        ),
    )
    inspector = (meta.inspector_id or "").strip() or None
    if len(enterprise) > 100 or (inspector is not None and len(inspector) > 100):
        raise Invalid("enterprise_id and inspector_id are at most 100 characters", code="invalid_meta")
    detected = detector.detect(data, conf=conf, max_pixels=ctx.settings.max_pixels, timeout=timeout, tiles=tiles)
    model, size = detected.model, detected.image_size
    rules = default_rules(ctx)
    in_sector = {c.key for c in tax.active_classes(prepared.meta.sector)}
    active = relevant(tax, detected.detections)  # rules read context classes of any sector
    everything = active.to_boxes()
    order = sorted(
        (i for i, b in enumerate(everything) if b.class_key in in_sector),
        key=lambda i: -(everything[i].confidence or 0.0),
    )  # most confident first
    boxes = [everything[i] for i in order]

    # --- one catalogue transaction from here ---
    if key is not None:  # under SQLite's write lock this sees a retry that committed meanwhile
        earlier = _existing(session, principal.org_code, key)
        if earlier is not None:
            return _replay(session, earlier, record_no, sha256)
    # Against the organisation's own sample, never another's shared one with the same bytes: the
    # record number, enterprise and idempotency key below belong to this organisation (issue 13, item 5).
    result = library.record(ctx, session, principal, prepared, own_only=True)
    sample = result.sample
    now = utcnow()
    photo = InspectionPhoto(
        record_no=record_no,
        org_code=principal.org_code,
        sample_id=sample.id,
        enterprise_id=enterprise,
        inspector_id=inspector,
        item_codes=items,
        captured_at=prepared.meta.captured_at,
        idempotency_key=key,
        created_by=principal.user_id,
        created_at=now,
    )
    try:
        with session.begin_nested():  # losing a concurrent retry's race undoes only this insert
            session.add(photo)
            session.flush()
    except IntegrityError:
        earlier = _existing(session, principal.org_code, key) if key is not None else None
        if earlier is None:
            raise
        return _replay(session, earlier, record_no, sha256)

    version = str(model.get("version", ""))
    model_version = f"{model.get('name', '')}:{version}"
    derived = [
        f
        for f in rules.apply(
            active,
            prepared.meta.sector,
            rule_conf,
            image_size=(int(size[0]), int(size[1])),
            model_classes=_model_classes(session, model, detected.classes),
        )
        if f.evidence_class is not None
    ]
    # A detection a rule finding rests on as its evidence is that finding: no second, plain one.
    claimed = {f.inputs[0] for f in derived if f.inputs and everything[f.inputs[0]].class_key == f.evidence_class}
    findings: list[Finding] = []
    for i in order:
        box = everything[i]
        if not tax.classes[box.class_key].is_hazard or i in claimed:
            continue
        findings.append(
            Finding(
                photo_id=photo.id,
                sample_id=sample.id,
                class_key=box.class_key,
                confidence=float(box.confidence or 0.0),
                box=_box(box),
                model_version=model_version,
                created_at=now,
            )
        )
    findings += [
        Finding(
            photo_id=photo.id,
            sample_id=sample.id,
            class_key=f.evidence_class,
            rule=f.rule,
            confidence=float(f.confidence),
            box=f.box_dict(),
            model_version=model_version,
            created_at=now,
        )
        for f in derived
    ]
    findings.sort(key=lambda f: -f.confidence)
    session.add_all(findings)
    session.flush()
    response = {
        "record_no": record_no,
        "photo_id": photo.id,
        "sample_id": sample.id,
        "deduplicated": result.deduplicated,
        "enterprise_id": enterprise,
        "inspector_id": inspector,
        "item_codes": items,
        "captured_at": iso(photo.captured_at),
        "created_at": iso(now),
        "model": {"name": str(model.get("name", "")), "version": version},
        "image": {"width": int(size[0]), "height": int(size[1])},
        "findings": [finding_dict(tax, f, rules) for f in findings],
        "detections": [d.model_dump() for d in detections_public(tax, boxes)],
    }
    photo.response = response
    audit(
        session,
        principal,
        "inspection.photo",
        "inspection_photo",
        photo.id,
        sample_id=sample.id,
        after={
            "record_no": record_no,
            "sample_id": sample.id,
            "enterprise_id": enterprise,
            "idempotency_key": key,
            "model": response["model"],
            "findings": [
                {"id": f.id, "class_key": f.class_key, "rule": f.rule, "confidence": f.confidence} for f in findings
            ],
        },
    )
    session.flush()
    return {**response, "replayed": False}


def _model_classes(session: Session, model: Mapping[str, Any], classes: Sequence[str] | None = None) -> list[str]:
    """The classes of the model that analysed the photo (the detector's answer or the catalogue knows
    them): a rule may only call a class missing if the model can see it."""
    if classes is not None:
        return [str(c) for c in classes]
    classes = session.scalar(
        select(ModelVersion.classes).where(
            ModelVersion.name == str(model.get("name", "")), ModelVersion.version == str(model.get("version", ""))
        )
    )
    return [str(c) for c in classes or []]


# --- reading a record --------------------------------------------------------------------------


def get_inspection(
    session: Session,
    principal: Principal,
    record_no: str,
    *,
    taxonomy: Taxonomy | None = None,
    rules: RuleSet | None = None,
) -> dict[str, Any]:
    """The record's photos and findings, with each finding's current status. Records belong to the
    organisation that made them; another organisation's record is simply not found."""
    principal.require("inspections:read")
    if invisible_characters(record_no):  # no record is stored with one: look-alikes are simply not found
        raise NotFound(f"no inspection record {record_no!r}", code="record_not_found")
    record_no = check_record_no(record_no)
    photos = list(
        session.scalars(
            select(InspectionPhoto)
            .where(InspectionPhoto.org_code == principal.org_code, InspectionPhoto.record_no == record_no)
            .order_by(InspectionPhoto.id)
        )
    )
    if not photos:
        raise NotFound(f"no inspection record {record_no}", code="record_not_found")
    if taxonomy is None:
        from hazardlens.taxonomy import default_taxonomy

        taxonomy = default_taxonomy()
    sectors = dict(
        session.execute(select(Sample.id, Sample.sector).where(Sample.id.in_({p.sample_id for p in photos}))).all()
    )
    by_photo: dict[int, list[Finding]] = {p.id: [] for p in photos}
    for f in session.scalars(select(Finding).where(Finding.photo_id.in_(by_photo)).order_by(Finding.id)):
        by_photo[f.photo_id].append(f)
    counts = {"suggested": 0, "confirmed": 0, "rejected": 0}
    out = []
    for p in photos:
        stored = p.response or {}
        for f in by_photo[p.id]:
            counts[f.status] = counts.get(f.status, 0) + 1
        out.append(
            {
                "photo_id": p.id,
                "sample_id": p.sample_id,
                "sector": sectors.get(p.sample_id),
                "enterprise_id": p.enterprise_id,
                "inspector_id": p.inspector_id,
                "item_codes": list(p.item_codes or []),
                "captured_at": iso(p.captured_at),
                "created_at": iso(p.created_at),
                "model": stored.get("model"),
                "image": stored.get("image"),
                "findings": [finding_dict(taxonomy, f, rules) for f in by_photo[p.id]],
                "detections": stored.get("detections", []),
            }
        )
    return {"record_no": record_no, "photos": out, "summary": {"photos": len(photos), **counts}}


# --- the inspector's decision ------------------------------------------------------------------


def _check_reason(reason: str | None) -> str | None:
    """An inspector's reason as kept: stripped, blank is none, bounded like a reviewer's reason."""
    text = (reason or "").strip()
    if not text:
        return None
    if len(text) > MAX_REASON:
        raise Invalid(f"reason is longer than {MAX_REASON} characters", code="reason_too_long")
    return _CONTROL.sub(" ", text)


def _own_finding(session: Session, principal: Principal, finding_id: int) -> tuple[Finding, InspectionPhoto]:
    finding = session.get(Finding, finding_id)
    photo = session.get(InspectionPhoto, finding.photo_id) if finding is not None else None
    if finding is None or photo is None or photo.org_code != principal.org_code:
        raise NotFound(f"no finding {finding_id}", code="finding_not_found")
    return finding, photo


def _merge(current: Sequence[Mapping[str, Any]], box: Box) -> list[dict[str, Any]]:
    """The current revision's boxes plus the confirmed one, unless it is already there (a second
    finding on the same object, or a curator who drew it first)."""
    boxes = [dict(b) for b in current]
    same = [b for b in boxes if b.get("class_key") == box.class_key]
    if same:
        ious = box_iou([[box.x1, box.y1, box.x2, box.y2]], [[b["x1"], b["y1"], b["x2"], b["y2"]] for b in same])
        if float(ious.max()) >= SAME_BOX_IOU:
            return boxes
    return [*boxes, {"class_key": box.class_key, "x1": box.x1, "y1": box.y1, "x2": box.x2, "y2": box.y2}]


def review_finding(
    ctx: Context,
    session: Session,
    principal: Principal,
    finding_id: int,
    decision: str,
    box: Mapping[str, Any] | None = None,
    class_key: str | None = None,
    reason: str | None = None,
) -> dict[str, Any]:
    """Record the inspector's decision on a suggested finding (see the module docstring for what
    each decision does to the library). A finding is decided once: a second review is a Conflict.
    ``reason`` (why it is rejected, or what a correction fixed) is kept in the finding's review, so
    whoever studies the model's false positives reads the inspector's own words."""
    principal.require("findings:review")
    reason = _check_reason(reason)
    if decision not in DECISIONS:
        raise Invalid(f"decision must be one of {', '.join(DECISIONS)}, not {decision!r}", code="invalid_decision")
    if decision == "rejected" and (box is not None or class_key is not None):
        raise Invalid("a rejected finding takes no box or class; confirm it to correct it", code="invalid_review")
    finding, photo = _own_finding(session, principal, finding_id)
    if finding.status != "suggested":
        raise Conflict(
            f"finding {finding_id} was already {finding.status}",
            code="already_reviewed",
            details={"status": finding.status},
        )
    # this session may hold SQLite's write lock: a second one would wait on it
    tax = detection_taxonomy(ctx, session, principal.org_code)
    sample = library.get_sample(session, principal, finding.sample_id)
    before = snapshot(finding, ["status", "class_key", "box", "review", "revision_id"])
    now = utcnow()
    review: dict[str, Any] = {
        "decision": decision,
        "by": principal.name,
        "by_id": principal.user_id,
        "at": now.isoformat(),
    }
    if reason is not None:
        review["reason"] = reason
    revision: AnnotationRevision | None = None
    if decision == "confirmed":
        key = class_key.strip() if isinstance(class_key, str) and class_key.strip() else finding.class_key
        source = dict(box) if box is not None else dict(finding.box)
        (final,), _ = validate_boxes(tax, sample, [{**source, "class_key": key}])
        review.update(
            {
                "class_key": final.class_key,
                "box": _box(final),
                "corrected": final.class_key != finding.class_key or _box(final) != dict(finding.box),
            }
        )
    # Decide first, conditionally: of two concurrent reviews only one changes the row.
    changed = session.execute(
        update(Finding)
        .where(Finding.id == finding.id, Finding.status == "suggested")
        .values(status=decision, review=review, reviewed_by=principal.user_id, reviewed_at=now)
        .execution_options(synchronize_session=False)
    ).rowcount  # type: ignore[attr-defined]  # DML: a CursorResult
    if changed != 1:
        raise Conflict(f"finding {finding_id} was already reviewed", code="already_reviewed")
    session.refresh(finding)
    writable = may_write_labels(principal, sample)
    if decision == "confirmed" and writable:
        current = session.get(AnnotationRevision, sample.current_revision_id) if sample.current_revision_id else None
        boxes = _merge(current.boxes if current is not None else [], final)
        revision = save_revision(
            ctx,
            session,
            principal,
            sample.id,
            boxes,
            source="feedback",
            status="submitted",
            model_version=finding.model_version,
            note=f"{photo.record_no}: finding {finding.id} confirmed by the inspector",
        )
        finding.revision_id = revision.id
    # Another organisation's (shared) sample: the decision stays on the finding, in the inspector's
    # own records; that sample's labels and tags are its owner's to change (issue 13, item 4).
    elif decision == "rejected" and writable and HARD_NEGATIVE_TAG not in (sample.tags or []):
        tags_before = list(sample.tags or [])
        sample.tags = [*tags_before, HARD_NEGATIVE_TAG]
        audit(
            session,
            principal,
            "sample.tag",
            "sample",
            sample.id,
            sample_id=sample.id,
            before={"tags": tags_before},
            after={"tags": list(sample.tags), "finding_id": finding.id},
        )
    session.flush()
    audit(
        session,
        principal,
        "finding.review",
        "finding",
        finding.id,
        sample_id=sample.id,
        before=before,
        after=snapshot(finding, ["status", "class_key", "box", "review", "revision_id"]),
    )
    out = finding_dict(tax, finding, default_rules(ctx))
    out["record_no"] = photo.record_no
    out["revision"] = (
        {"id": revision.id, "number": revision.number, "status": revision.status} if revision is not None else None
    )
    return out


__all__ = [
    "DECISIONS",
    "HARD_NEGATIVE_TAG",
    "PhotoMeta",
    "check_record_no",
    "finding_dict",
    "get_inspection",
    "record_photo",
    "review_finding",
]
