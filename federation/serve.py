"""What this instance answers a peer: the change feed of its shared library, blobs by hash, the
published model versions and their weights, and the feedback counts a peer reports.

The feed is the audit log (存档留痕): every change to a sample is recorded there with its id, so
"what changed since cursor N" is "which samples have audit events after N", answered with each
sample's *current* state: shared and live -> ``upsert`` (metadata, hash, approved revision with its
provenance); otherwise ``withdraw``, and only for a sample that was once shared, so a private sample
never crosses, not even its id. Samples that are themselves copies pulled from a peer are never
served onwards (the origin serves them), so two instances pulling from each other do not loop.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import String, cast, delete, exists, func, or_, select
from sqlalchemy.orm import Session

from hazardlens.audit import record
from hazardlens.auth import Principal
from hazardlens.context import Context
from hazardlens.contracts.federation import ChangesPage, FeedbackReport, ModelOffer, ModelOffers
from hazardlens.dates import iso
from hazardlens.errors import Forbidden, NotFound, Unauthorized
from hazardlens.federation.signing import KEY_HEADER, SIG_HEADER, TIME_HEADER, check_time, request_message, verify
from hazardlens.orm import (
    AnnotationRevision,
    AuditEvent,
    FederatedSample,
    FederationFeedback,
    ModelVersion,
    Peer,
    Sample,
    User,
    utcnow,
)
from hazardlens.store.base import blob_key

MAX_PAGE = 500
#: Model versions a peer may pull: the published ones.
PUBLISHED_STAGES = ("production",)


def authenticate(
    session: Session, method: str, path: str, headers: Mapping[str, str], body: bytes, capability: str
) -> Peer:
    """The registered peer that signed this request, allowed ``capability``; else 401/403 with a code
    saying which check failed (unknown key, stale time, signature that does not match)."""
    kid, sig, ts = headers.get(KEY_HEADER), headers.get(SIG_HEADER), headers.get(TIME_HEADER)
    if not kid or not sig:
        raise Unauthorized("federation requests must be signed (X-Hazardlens-Key/-Signature)", code="bad_signature")
    peer = session.scalar(select(Peer).where(Peer.key_id == kid[:16]))
    if peer is None:
        raise Unauthorized(f"no peer with key id {kid[:16]!r} is registered on this instance", code="unknown_peer")
    check_time(ts)
    if not verify(peer.public_key, sig, request_message(method, path, ts or "", body)):
        raise Unauthorized(
            f"the request's signature does not match peer {peer.name}'s key (tampered or forged)", code="bad_signature"
        )
    if capability not in (peer.allow or []):
        raise Forbidden(f"peer {peer.name} is not allowed to {capability} here", code="peer_not_allowed")
    return peer


def _is_copy(session: Session, sample_id: int) -> bool:
    return bool(session.scalar(select(exists().where(FederatedSample.local_sample_id == sample_id))))


def _ever_shared(session: Session, sample_id: int) -> bool:
    # The audit record of the sample (created shared, restored or scoped shared) names its scope.
    mark = '%"scope": "shared"%'
    return bool(
        session.scalar(
            select(
                exists().where(
                    AuditEvent.sample_id == sample_id,
                    or_(cast(AuditEvent.before, String).like(mark), cast(AuditEvent.after, String).like(mark)),
                )
            )
        )
    )


def _user(session: Session, user_id: int | None) -> User | None:
    return session.get(User, user_id) if user_id is not None else None


def _revision(session: Session, sample: Sample) -> dict[str, Any] | None:
    if sample.approved_revision_id is None:
        return None
    rev = session.get(AnnotationRevision, sample.approved_revision_id)
    if rev is None:
        return None
    author, reviewer = _user(session, rev.author_id), _user(session, rev.reviewer_id)
    return {
        "origin_revision_id": rev.id,
        "number": rev.number,
        "boxes": [{k: b[k] for k in ("class_key", "x1", "y1", "x2", "y2")} for b in rev.boxes or []],
        "unlabeled_classes": list(rev.unlabeled_classes or []),
        "author": author.name if author else None,
        "author_org": author.org_code if author else sample.org_code,
        "reviewer": reviewer.name if reviewer else None,
        "reviewed_at": iso(rev.reviewed_at),
    }


def changes(session: Session, cursor: int, limit: int) -> ChangesPage:
    """The next ``limit`` samples changed after ``cursor`` (an audit-log id), in order of their last change."""
    limit = max(1, min(limit, MAX_PAGE))
    last = func.max(AuditEvent.id)
    rows = session.execute(
        select(AuditEvent.sample_id, last)
        .where(AuditEvent.id > cursor, AuditEvent.sample_id.is_not(None))
        .group_by(AuditEvent.sample_id)
        .order_by(last)
        .limit(limit)
    ).all()
    out: list[dict[str, Any]] = []
    for sample_id, _ in rows:
        sample = session.get(Sample, sample_id)
        if sample is None or _is_copy(session, sample.id):
            continue
        if sample.deleted_at is None and sample.scope == "shared":
            out.append(
                {
                    "op": "upsert",
                    "origin_sample_id": sample.id,
                    "org_code": sample.org_code,
                    "sha256": sample.sha256,
                    "phash": sample.phash,
                    "width": sample.width,
                    "height": sample.height,
                    "format": sample.format,
                    "size_bytes": sample.size_bytes,
                    "sector": sample.sector,
                    "tags": list(sample.tags or []),
                    "captured_at": iso(sample.captured_at),
                    "revision": _revision(session, sample),
                }
            )
        elif _ever_shared(session, sample.id):
            out.append({"op": "withdraw", "origin_sample_id": sample.id})
    next_cursor = int(rows[-1][1]) if rows else cursor
    return ChangesPage.model_validate({"changes": out, "cursor": next_cursor, "more": len(rows) == limit})


def blob(ctx: Context, session: Session, sha256: str) -> bytes:
    """The bytes of a shared, live sample; a hash no shared sample has is not found (a private
    sample's bytes never leave, even to a peer that guessed its hash)."""
    shared = session.scalar(
        select(exists().where(Sample.sha256 == sha256, Sample.scope == "shared", Sample.deleted_at.is_(None)))
    )
    if not shared:
        raise NotFound(f"no shared sample with SHA-256 {sha256}")
    return ctx.store.get(blob_key(sha256))


def published_models(ctx: Context, session: Session) -> ModelOffers:
    rows = session.scalars(
        select(ModelVersion).where(ModelVersion.stage.in_(PUBLISHED_STAGES)).order_by(ModelVersion.id)
    ).all()
    offers = [
        ModelOffer(
            name=mv.name,
            version=mv.version,
            stage=mv.stage,
            classes=list(mv.classes or []),
            imgsz=mv.imgsz,
            weights_sha256=mv.weights_sha256,
            size_bytes=ctx.store.stat(mv.weights_key).size,
            card=dict(mv.card or {}),
        )
        for mv in rows
    ]
    return ModelOffers(models=offers)


def model_weights(ctx: Context, session: Session, name: str, version: str) -> bytes:
    mv = session.scalar(
        select(ModelVersion).where(
            ModelVersion.name == name, ModelVersion.version == version, ModelVersion.stage.in_(PUBLISHED_STAGES)
        )
    )
    if mv is None:
        raise NotFound(f"no published model {name} {version}")
    return ctx.store.get(mv.weights_key)


def receive_feedback(session: Session, peer: Peer, report: FeedbackReport) -> int:
    """Replace the peer's feedback counts with this report (totals, so a repeated report changes nothing)."""
    session.execute(delete(FederationFeedback).where(FederationFeedback.peer_id == peer.id))
    now = utcnow()
    merged: dict[tuple[str, str, str], list[int]] = {}
    for c in report.counts:
        tally = merged.setdefault((c.model_name, c.model_version, c.class_key), [0, 0, 0])
        tally[0] += c.confirmed
        tally[1] += c.corrected
        tally[2] += c.rejected
    session.add_all(
        FederationFeedback(
            peer_id=peer.id,
            model_name=name,
            model_version=version,
            class_key=key,
            confirmed=t[0],
            corrected=t[1],
            rejected=t[2],
            reported_at=now,
        )
        for (name, version, key), t in merged.items()
    )
    peer.last_seen_at = now
    actor = Principal(user_id=None, name=f"peer:{peer.name}", org_code=peer.org_code or "000000", role="service")
    record(session, actor, "federation.feedback", "peer", peer.id, after={"rows": len(merged)})
    return len(merged)


def field_feedback(session: Session) -> list[dict[str, Any]]:
    """What the ministry reads a model's field precision from: every peer's latest counts, summed per
    model version and class (confirmed / all decided), with the peers that reported them."""
    rows = session.execute(
        select(FederationFeedback, Peer.name).join(Peer, Peer.id == FederationFeedback.peer_id)
    ).all()
    merged: dict[tuple[str, str, str], dict[str, Any]] = {}
    for fb, peer_name in rows:
        entry = merged.setdefault(
            (fb.model_name, fb.model_version, fb.class_key),
            {"confirmed": 0, "corrected": 0, "rejected": 0, "peers": set()},
        )
        entry["confirmed"] += fb.confirmed
        entry["corrected"] += fb.corrected
        entry["rejected"] += fb.rejected
        entry["peers"].add(peer_name)
    out = []
    for (name, version, key), e in sorted(merged.items()):
        decided = e["confirmed"] + e["corrected"] + e["rejected"]
        out.append(
            {
                "model_name": name,
                "model_version": version,
                "class_key": key,
                "confirmed": e["confirmed"],
                "corrected": e["corrected"],
                "rejected": e["rejected"],
                "precision": round(e["confirmed"] / decided, 4) if decided else None,
                "peers": sorted(e["peers"]),
            }
        )
    return out
