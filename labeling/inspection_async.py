"""Inspection photos analysed later: ``POST /v1/inspections/{record_no}/photos?async=true``.

Why: the enforcement system posts photos from its own servers in bulk; holding each request open
while the model runs ties up its workers and ours, and a timeout mid-way leaves it unsure what was
stored. With ``async=true`` the photo is checked (record number, enterprise, sector, items, that it
is an image within the limits), kept in the object store under ``inbox/``, queued in the catalogue
(``inspection_submissions``) and answered **202** with the submission's id; a worker then records
it exactly as the synchronous path does (:func:`hazardlens.labeling.inspections.record_photo`: same
sample, findings, audit) and the organisation's webhooks receive the findings
(``inspection.findings``), or the reason it could not be analysed (``inspection.failed``).
``GET /v1/inspection-submissions/{id}`` answers the same for a caller without a webhook.

Retries are safe on both sides: the same ``Idempotency-Key`` returns the same submission (nothing
queued twice), and the worker records the photo under that key (or ``submission:<id>`` when the
client sent none), so a worker that dies mid-way and is run again by another never stores a photo
twice. A failure that may pass (no model loaded yet, a timeout, the catalogue busy) is retried with
backoff; one that will not (not an image, too large) fails at once.

This module does not import ``hazardlens.models``: serving hands its model manager in as a
:class:`hazardlens.detector.Detector`, as for the synchronous path.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import asdict
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from hazardlens.audit import record as audit
from hazardlens.auth import Principal, principal_of
from hazardlens.context import Context
from hazardlens.dates import iso
from hazardlens.detector import DEFAULT_CONF, Detector, detection_taxonomy
from hazardlens.errors import HazardError, Invalid, NotFound
from hazardlens.images import inspect_image
from hazardlens.labeling import webhooks
from hazardlens.labeling.inspections import PhotoMeta, check_record_no, record_photo
from hazardlens.orm import InspectionSubmission, User, utcnow

log = logging.getLogger(__name__)

#: Statuses a failure may pass from (retried with backoff); anything else fails the submission.
TRANSIENT = frozenset({408, 429, 500, 502, 503, 504, 507})
MAX_ATTEMPTS = 5
LEASE_S = 600.0  # longer than any analysis: a submission still running after this was abandoned
RETRY_BASE_S = 10.0


def _inbox_key(submission: InspectionSubmission) -> str:
    return f"inbox/{submission.org_code}/{submission.id}"


def submission_dict(s: InspectionSubmission, photo: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "id": s.id,
        "record_no": s.record_no,
        "status": s.status,
        "idempotency_key": s.idempotency_key,
        "photo_id": s.photo_id,
        "error": s.error,
        "attempts": s.attempts,
        "created_at": iso(s.created_at),
        "finished_at": iso(s.finished_at),
        "photo": photo,
    }


def _existing(session: Session, org: str, key: str) -> InspectionSubmission | None:
    return session.scalar(
        select(InspectionSubmission).where(
            InspectionSubmission.org_code == org, InspectionSubmission.idempotency_key == key
        )
    )


def _same(earlier: InspectionSubmission, record_no: str, sha256: str) -> InspectionSubmission:
    if earlier.record_no != record_no or earlier.sha256 != sha256:
        raise Invalid(
            "this Idempotency-Key was already used for a different photo or record; use a new key for a new upload",
            code="idempotency_key_reused",
        )
    return earlier


def submit(
    ctx: Context,
    session: Session,
    principal: Principal,
    record_no: str,
    data: bytes,
    meta: PhotoMeta,
    idempotency_key: str | None,
    *,
    conf: float = DEFAULT_CONF,
    tiles: bool = False,
) -> tuple[InspectionSubmission, bool]:
    """Queue a photo for analysis; (the submission, whether it is an earlier one replayed). What can
    be checked without the model is checked now, so that a bad request is refused (4xx), not
    reported by webhook later."""
    principal.require("inspections:write")
    record_no = check_record_no(record_no)
    key = (idempotency_key or "").strip() or None
    if key is not None and (len(key) > 200 or any(ord(c) < 32 or ord(c) == 127 for c in key)):
        raise Invalid("Idempotency-Key must be 1-200 printable characters", code="invalid_idempotency_key")
    sha256 = hashlib.sha256(data).hexdigest()
    if key is not None and (earlier := _existing(session, principal.org_code, key)) is not None:
        return _same(earlier, record_no, sha256), True
    enterprise = (meta.enterprise_id or "").strip()
    inspector = (meta.inspector_id or "").strip() or None
    if not enterprise or len(enterprise) > 100 or (inspector is not None and len(inspector) > 100):
        raise Invalid("enterprise_id is required; it and inspector_id are at most 100 characters", code="invalid_meta")
    tax = detection_taxonomy(ctx, session)
    if meta.sector not in tax.sectors:
        raise Invalid(f"unknown sector {meta.sector!r}; sectors are {', '.join(tax.sectors)}", code="unknown_sector")
    items = []
    for code in meta.item_codes:
        code = str(code).strip()
        if code and code not in items:
            tax.get_item(code)  # unknown_item
            items.append(code)
    inspect_image(data, ctx.settings.max_pixels, thumb_size=32)  # an image, within the limits
    params = {
        **{k: v for k, v in asdict(meta).items() if k not in ("captured_at", "item_codes")},
        "enterprise_id": enterprise,
        "inspector_id": inspector,
        "item_codes": items,
        "captured_at": iso(meta.captured_at),
        "conf": float(conf),
        "tiles": bool(tiles),
    }
    submission = InspectionSubmission(
        org_code=principal.org_code,
        record_no=record_no,
        status="queued",
        params=params,
        sha256=sha256,
        idempotency_key=key,
        attempts=0,
        created_by=principal.user_id,
        created_at=utcnow(),
    )
    try:
        with session.begin_nested():  # a concurrent retry with the same key wins the race: answer it
            session.add(submission)
            session.flush()
    except IntegrityError:
        earlier = _existing(session, principal.org_code, key) if key is not None else None
        if earlier is None:
            raise
        return _same(earlier, record_no, sha256), True
    ctx.store.put(_inbox_key(submission), data, content_type="application/octet-stream")
    audit(
        session,
        principal,
        "inspection.submit",
        "inspection_submission",
        submission.id,
        after={"record_no": record_no, "sha256": sha256, "idempotency_key": key, "enterprise_id": enterprise},
    )
    return submission, False


def get_submission(session: Session, principal: Principal, submission_id: int) -> dict[str, Any]:
    """A submission of the caller's organisation (another's: 404), with the photo's answer once done."""
    principal.require("inspections:read")
    s = session.get(InspectionSubmission, submission_id)
    if s is None or s.org_code != principal.org_code:
        raise NotFound(f"no submission {submission_id}", code="submission_not_found")
    photo = None
    if s.photo_id is not None:
        from hazardlens.orm import InspectionPhoto

        row = session.get(InspectionPhoto, s.photo_id)
        photo = {**(row.response or {}), "replayed": False} if row is not None else None
    return submission_dict(s, photo)


# --- the worker ----------------------------------------------------------------------------------------


def _claim(ctx: Context) -> int | None:
    now = utcnow()
    due = or_(
        and_(
            InspectionSubmission.status == "queued",
            or_(InspectionSubmission.lease_until.is_(None), InspectionSubmission.lease_until <= now),
        ),
        and_(InspectionSubmission.status == "running", InspectionSubmission.lease_until <= now),
    )
    with ctx.db.session() as session:
        ids = list(
            session.scalars(select(InspectionSubmission.id).where(due).order_by(InspectionSubmission.id).limit(5))
        )
        for submission_id in ids:
            res = session.execute(
                update(InspectionSubmission)
                .where(InspectionSubmission.id == submission_id, due)
                .values(
                    status="running",
                    lease_until=now + timedelta(seconds=LEASE_S),
                    attempts=InspectionSubmission.attempts + 1,
                )
                .execution_options(synchronize_session=False)
            )
            if res.rowcount == 1:  # type: ignore[attr-defined]
                return submission_id
    return None


def _principal(session: Session, s: InspectionSubmission) -> Principal:
    user = session.get(User, s.created_by) if s.created_by is not None else None
    if user is not None:
        return principal_of(user)
    return Principal(user_id=None, name="system", org_code=s.org_code, role="service")


def _finish(
    ctx: Context,
    submission_id: int,
    status: str,
    *,
    photo: dict[str, Any] | None = None,
    error: dict[str, Any] | None = None,
    retry_at: datetime | None = None,
) -> None:
    """Write the outcome and, when final, queue its webhook event in the same transaction."""
    with ctx.db.session() as session:
        s = session.get(InspectionSubmission, submission_id)
        if s is None:
            return
        s.status, s.error = status, error
        if retry_at is not None:
            s.lease_until = retry_at
            return
        s.finished_at = utcnow()
        s.lease_until = None
        if photo is not None:
            s.photo_id = int(photo["photo_id"])
        data = submission_dict(s, photo)
        webhooks.enqueue(session, s.org_code, "inspection.findings" if status == "done" else "inspection.failed", data)
        inbox = _inbox_key(s)
    try:
        ctx.store.delete(inbox)
    except Exception:  # the photo is in the library (or never will be); a stray inbox object is only disk
        log.warning("could not delete %s", inbox, exc_info=True)


def process(ctx: Context, detector: Detector, submission_id: int, *, timeout: float | None = None) -> str:
    """Analyse one claimed submission; returns its new status."""
    with ctx.db.read_session() as session:
        s = session.get(InspectionSubmission, submission_id)
        if s is None:
            return "missing"
        principal = _principal(session, s)
        params, record_no, attempts = dict(s.params), s.record_no, s.attempts
        key = s.idempotency_key or f"submission:{s.id}"
        inbox = _inbox_key(s)
    captured = params.get("captured_at")
    meta = PhotoMeta(
        enterprise_id=params["enterprise_id"],
        sector=params["sector"],
        inspector_id=params.get("inspector_id"),
        captured_at=datetime.fromisoformat(captured) if captured else None,
        item_codes=list(params.get("item_codes") or []),
        original_name=params.get("original_name"),
    )
    tiles = (ctx.settings.tile_window, ctx.settings.tile_overlap) if params.get("tiles") else None
    try:
        data = ctx.store.get(inbox)
        with ctx.db.session() as session:
            out = record_photo(
                ctx,
                session,
                principal,
                record_no,
                data,
                meta,
                key,
                detector,
                conf=float(params.get("conf", DEFAULT_CONF)),
                tiles=tiles,
                timeout=timeout,
            )
    except HazardError as exc:
        error = {"code": exc.code, "message": exc.message}
        if exc.status in TRANSIENT and attempts < MAX_ATTEMPTS:
            retry = utcnow() + timedelta(seconds=RETRY_BASE_S * 2 ** (attempts - 1))
            _finish(ctx, submission_id, "queued", error=error, retry_at=retry)
            return "queued"
        _finish(ctx, submission_id, "failed", error=error)
        return "failed"
    except Exception as exc:  # noqa: BLE001 - a fault of ours or of the store: retried, then reported
        log.exception("submission %s failed", submission_id)
        error = {"code": "internal", "message": f"{type(exc).__name__}: {exc}"[:500]}
        if attempts < MAX_ATTEMPTS:
            retry = utcnow() + timedelta(seconds=RETRY_BASE_S * 2 ** (attempts - 1))
            _finish(ctx, submission_id, "queued", error=error, retry_at=retry)
            return "queued"
        _finish(ctx, submission_id, "failed", error=error)
        return "failed"
    out = {k: v for k, v in out.items() if k != "replayed"}
    _finish(ctx, submission_id, "done", photo=out)
    return "done"


class SubmissionWorker(webhooks.Loop):
    """Analyses queued submissions one at a time, then wakes the dispatcher for their events."""

    name = "hazardlens-inspections"

    def __init__(
        self,
        ctx: Context,
        detector: Detector | Callable[[], Detector],
        *,
        on_event: Callable[[], None] | None = None,
        poll_s: float = 2.0,
        timeout: float | None = None,
    ) -> None:
        super().__init__(poll_s)
        self.ctx = ctx
        self._detector = detector
        self.on_event = on_event
        self.timeout = timeout

    def step(self) -> bool:
        submission_id = _claim(self.ctx)
        if submission_id is None:
            return False
        detector = (
            self._detector() if callable(self._detector) and not hasattr(self._detector, "detect") else self._detector
        )
        status = process(self.ctx, detector, submission_id, timeout=self.timeout)  # type: ignore[arg-type]
        if status in ("done", "failed") and self.on_event is not None:
            self.on_event()
        return True


__all__ = ["SubmissionWorker", "get_submission", "process", "submission_dict", "submit"]
