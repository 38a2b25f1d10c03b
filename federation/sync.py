"""Pulling from a peer and pushing to one: shared samples (bytes by SHA-256, only the missing ones),
their approved revisions with provenance, withdrawals; published model versions as candidates;
feedback counts up.

Every request is signed with this instance's key and every answer checked against the peer's
registered key before anything of it is used (:class:`PeerClient`). A pull goes page by page; each
page's blobs are stored first (content-addressed, so storing one twice is harmless), then the page's
changes and the new cursor are committed in one transaction: a pull killed at any point resumes from
the last committed page and ends in the same state, and a pull with nothing new moves no bytes.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
from pydantic import ValidationError
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from hazardlens.audit import record
from hazardlens.auth import Principal, ensure_org
from hazardlens.context import Context
from hazardlens.contracts.federation import ChangesPage, FeedbackAck, FeedbackReport, ModelOffers, SampleChange
from hazardlens.dates import iso
from hazardlens.errors import HazardError
from hazardlens.federation.peers import get_peer
from hazardlens.federation.signing import (
    KEY_HEADER,
    MAX_SKEW_S,
    SIG_HEADER,
    TIME_HEADER,
    PeerAnswerInvalid,
    Signer,
    answer_message,
    verify,
)
from hazardlens.models.registry import register_model
from hazardlens.orm import (
    AnnotationRevision,
    FederatedSample,
    Finding,
    ModelVersion,
    Peer,
    Sample,
    SampleClass,
    SyncState,
    utcnow,
)
from hazardlens.store.base import blob_key

MAX_JSON_ANSWER = 64 * 1024 * 1024
MAX_BLOB = 256 * 1024 * 1024
MAX_WEIGHTS = 2 * 1024 * 1024 * 1024


class PeerUnreachable(HazardError):
    status, code = 502, "peer_unreachable"


class PeerRefused(HazardError):
    """The peer answered with an error of its own (its code and message are passed on)."""

    status, code = 502, "peer_refused"


class PeerClient:
    """Signed requests to one peer; answers verified against its registered key."""

    def __init__(self, ctx: Context, peer: Peer, timeout: float = 60.0) -> None:
        self.peer_name, self.key_id, self.public_key = peer.name, peer.key_id, peer.public_key
        parts = urlsplit(peer.url)
        self.origin, self.prefix = f"{parts.scheme}://{parts.netloc}", parts.path.rstrip("/")
        self.signer = Signer.of(ctx.settings)
        self.http = httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False)
        self.received = 0  # bytes of every answer body, for the pull report

    def close(self) -> None:
        self.http.close()

    def call(self, method: str, path: str, body: bytes = b"", *, limit: int = MAX_JSON_ANSWER) -> bytes:
        full = self.prefix + path
        headers = self.signer.sign_request(method, full, body)
        if body:
            headers["Content-Type"] = "application/json"
        try:
            with self.http.stream(method, self.origin + full, content=body, headers=headers) as answer:
                data = bytearray()
                for chunk in answer.iter_bytes():
                    data.extend(chunk)
                    if len(data) > limit:
                        raise PeerAnswerInvalid(f"peer {self.peer_name} answered more than {limit} bytes")
                status, got = answer.status_code, answer.headers
        except httpx.HTTPError as exc:
            raise PeerUnreachable(f"peer {self.peer_name} ({self.origin}) cannot be reached: {exc}") from None
        content = bytes(data)
        self.received += len(content)
        sig, kid, ts = got.get(SIG_HEADER), got.get(KEY_HEADER), got.get(TIME_HEADER)
        if sig is None and status >= 400:
            raise PeerRefused(f"peer {self.peer_name} refused {method} {path}: {status} {_error_text(content)}")
        if (
            not sig
            or kid != self.key_id
            or not ts
            or not ts.isdigit()
            or abs(int(ts) - int(datetime.now().timestamp())) > MAX_SKEW_S
            or not verify(self.public_key, sig, answer_message(status, headers[SIG_HEADER], ts, content))
        ):
            raise PeerAnswerInvalid(
                f"the answer of peer {self.peer_name} to {method} {path} is not signed by its registered key "
                f"(forged or altered on the way); nothing of it was used"
            )
        if status >= 400:
            raise PeerRefused(f"peer {self.peer_name} refused {method} {path}: {status} {_error_text(content)}")
        return content

    def json(self, method: str, path: str, body: Any = None) -> Any:
        raw = json.dumps(body, ensure_ascii=False).encode() if body is not None else b""
        content = self.call(method, path, raw)
        try:
            return json.loads(content)
        except ValueError:
            raise PeerAnswerInvalid(f"peer {self.peer_name} answered {path} with something that is not JSON") from None


def _error_text(content: bytes) -> str:
    try:
        err = json.loads(content)["error"]
        return f"({err['code']}) {err['message']}"[:500]
    except (ValueError, KeyError, TypeError):
        return content[:200].decode("utf-8", "replace")


def _parse(model: Any, data: Any, peer: str) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise PeerAnswerInvalid(f"peer {peer} answered an invalid page: {exc.errors()[:3]}") from None


def _actor(ctx: Context, peer: Peer) -> Principal:
    return Principal(user_id=None, name=f"federation:{peer.name}", org_code=ctx.settings.system_org, role="service")


def _state(session: Session, peer: Peer, kind: str) -> SyncState:
    state = session.get(SyncState, (peer.id, kind))
    if state is None:
        state = SyncState(peer_id=peer.id, kind=kind, cursor=0, updated_at=utcnow())
        session.add(state)
        session.flush()
    return state


def _when(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


# ---- samples ------------------------------------------------------------------------------------


def pull_samples(ctx: Context, peer_name: str, page_size: int = 100, *, full: bool = False) -> dict[str, int]:
    """Pull the peer's shared-library changes since the last pull; returns counts (``blob_bytes``:
    image bytes moved; 0 when nothing changed). ``full``: from cursor 0, every shared sample again,
    which closes the cursor gap (docs/federation.md) and moves no bytes already held, writing nothing
    for a sample that did not change."""
    with ctx.db.session() as s:
        peer = get_peer(s, peer_name)
        s.expunge(peer)
        cursor = 0 if full else _state(s, peer, "samples").cursor
    client = PeerClient(ctx, peer)
    stats: Counter[str] = Counter()
    try:
        while True:
            page = _parse(
                ChangesPage, client.json("GET", f"/federation/v1/changes?cursor={cursor}&limit={page_size}"), peer.name
            )
            for change in page.changes:
                if change.op == "upsert" and change.sha256 and not ctx.store.exists(blob_key(change.sha256)):
                    data = client.call("GET", f"/federation/v1/blobs/{change.sha256}", limit=MAX_BLOB)
                    if hashlib.sha256(data).hexdigest() != change.sha256:
                        raise PeerAnswerInvalid(
                            f"peer {peer.name} sent bytes that do not match SHA-256 {change.sha256}"
                        )
                    ctx.store.put(blob_key(change.sha256), data)
                    stats["blobs"] += 1
                    stats["blob_bytes"] += len(data)
            with ctx.db.session() as s:
                live = s.get(Peer, peer.id)
                assert live is not None
                for change in page.changes:
                    stats[_apply(ctx, s, live, change)] += 1
                state = _state(s, live, "samples")
                state.cursor = page.cursor
                state.stats = {"last_pull": dict(stats)}
                state.updated_at = utcnow()
            stats["pages"] += 1
            cursor = page.cursor
            if not page.more:
                break
    finally:
        client.close()
    stats["answer_bytes"] = client.received
    stats["cursor"] = cursor
    return dict(stats)


def _apply(ctx: Context, session: Session, peer: Peer, change: SampleChange) -> str:
    fs = session.scalar(
        select(FederatedSample).where(
            FederatedSample.peer_id == peer.id, FederatedSample.origin_sample_id == change.origin_sample_id
        )
    )
    actor = _actor(ctx, peer)
    now = utcnow()
    if change.op == "withdraw":
        if fs is None or fs.withdrawn_at is not None:
            return "unchanged"
        sample = session.get(Sample, fs.local_sample_id)
        fs.withdrawn_at = now
        if sample is not None and sample.deleted_at is None:
            sample.deleted_at = now
            sample.updated_at = now
        record(session, actor, "federation.withdraw", "sample", fs.local_sample_id, sample_id=fs.local_sample_id,
               after={"peer": peer.name, "origin_sample_id": change.origin_sample_id})  # fmt: skip
        return "withdrawn"
    if not (change.sha256 and change.org_code and change.sector and change.width and change.height):
        return "skipped"
    tax = ctx.taxonomy(session)
    if change.sector not in tax.sectors:
        return "skipped"
    ensure_org(session, change.org_code)
    outcome = "updated"
    if fs is None:
        sample = session.scalar(
            select(Sample).where(Sample.sha256 == change.sha256, Sample.org_code == change.org_code)
        )
        if sample is not None and not session.scalar(
            select(func.count()).select_from(FederatedSample).where(FederatedSample.local_sample_id == sample.id)
        ):
            return "skipped"  # that organisation's own original lives here: never overwritten by a copy
        if sample is None:
            sample = Sample(
                sha256=change.sha256,
                phash=change.phash or 0,
                width=change.width,
                height=change.height,
                format=change.format or "jpeg",
                size_bytes=change.size_bytes or 0,
                org_code=change.org_code,
                sector=change.sector,
                scope="shared",
                source="import",
                tags=list(change.tags),
                captured_at=_when(change.captured_at),
                created_at=now,
            )
            session.add(sample)
            session.flush()
        fs = FederatedSample(
            peer_id=peer.id,
            origin_sample_id=change.origin_sample_id,
            origin_org=change.org_code,
            local_sample_id=sample.id,
            sha256=change.sha256,
            updated_at=now,
        )
        session.add(fs)
        outcome = "added"
    else:
        sample = session.get(Sample, fs.local_sample_id)
        assert sample is not None
        if fs.withdrawn_at is not None:
            outcome = "restored"
        elif _same(sample, fs, change):
            return "unchanged"  # a re-pull (from cursor 0) writes nothing, not even an audit event
    fs.withdrawn_at = None
    sample.deleted_at, sample.scope, sample.sector = None, "shared", change.sector
    sample.tags = list(change.tags)
    sample.updated_at = now
    rev = change.revision
    if rev is not None and rev.origin_revision_id != fs.origin_revision_id:
        known = set(tax.class_keys())
        if all(b.class_key in known for b in rev.boxes):
            _add_revision(session, peer, fs, sample, change)
            outcome = outcome if outcome != "updated" else "relabeled"
        else:
            outcome = "skipped_labels"
    fs.updated_at = now
    session.flush()
    record(session, actor, f"federation.{outcome}", "sample", sample.id, sample_id=sample.id,
           after={"peer": peer.name, "origin_org": change.org_code, "origin_sample_id": change.origin_sample_id,
                  "origin_revision_id": fs.origin_revision_id})  # fmt: skip
    return outcome


def _same(sample: Sample, fs: FederatedSample, change: SampleChange) -> bool:
    rev = change.revision
    return (
        sample.deleted_at is None
        and sample.scope == "shared"
        and sample.sector == change.sector
        and list(sample.tags or []) == list(change.tags)
        and (rev is None or rev.origin_revision_id == fs.origin_revision_id)
    )


def _add_revision(session: Session, peer: Peer, fs: FederatedSample, sample: Sample, change: SampleChange) -> None:
    rev = change.revision
    assert rev is not None
    provenance = {
        "instance": peer.name,
        "organisation": change.org_code,
        "origin_revision_id": rev.origin_revision_id,
        "origin_number": rev.number,
        "author": rev.author,
        "author_org": rev.author_org,
        "reviewer": rev.reviewer,
        "reviewed_at": rev.reviewed_at,
    }
    number = (
        session.scalar(select(func.max(AnnotationRevision.number)).where(AnnotationRevision.sample_id == sample.id))
        or 0
    ) + 1
    now = utcnow()
    row = AnnotationRevision(
        sample_id=sample.id,
        number=number,
        boxes=[b.model_dump() for b in rev.boxes],
        unlabeled_classes=list(rev.unlabeled_classes),
        status="approved",
        source="import",
        parent_id=sample.current_revision_id,
        note="federated: " + json.dumps(provenance, ensure_ascii=False),
        created_at=now,
        submitted_at=now,
        reviewed_at=_when(rev.reviewed_at) or now,
    )
    session.add(row)
    session.flush()
    keys = sorted({b.class_key for b in rev.boxes})
    sample.current_revision_id = sample.approved_revision_id = row.id
    sample.annotation_status = "approved"
    sample.class_keys = keys
    session.execute(delete(SampleClass).where(SampleClass.sample_id == sample.id))
    session.add_all(SampleClass(sample_id=sample.id, class_key=k) for k in keys)
    fs.origin_revision_id = rev.origin_revision_id
    fs.provenance = provenance


def sample_origin(session: Session, sample_id: int) -> tuple[FederatedSample, Peer] | None:
    fs = session.scalar(
        select(FederatedSample).where(FederatedSample.local_sample_id == sample_id).order_by(FederatedSample.id)
    )
    if fs is None:
        return None
    peer = session.get(Peer, fs.peer_id)
    assert peer is not None
    return fs, peer


# ---- models down ----------------------------------------------------------------------------------


def pull_models(ctx: Context, peer_name: str) -> dict[str, Any]:
    """Register the peer's published model versions we do not hold yet as candidates (weights checked
    against their announced SHA-256); this instance's admin decides whether to promote one."""
    with ctx.db.session() as s:
        peer = get_peer(s, peer_name)
        s.expunge(peer)
    client = PeerClient(ctx, peer)
    registered: list[str] = []
    skipped: list[str] = []
    try:
        offers = _parse(ModelOffers, client.json("GET", "/federation/v1/models"), peer.name)
        for offer in offers.models:
            with ctx.db.read_session() as s:
                held = s.scalar(select(ModelVersion).where(ModelVersion.weights_sha256 == offer.weights_sha256))
                taken = s.scalar(
                    select(ModelVersion).where(ModelVersion.name == offer.name, ModelVersion.version == offer.version)
                )
            if held is not None:
                skipped.append(f"{offer.name}:{offer.version}")
                continue
            path = f"/federation/v1/models/{quote(offer.name, safe='')}/{quote(offer.version, safe='')}/weights"
            data = client.call("GET", path, limit=MAX_WEIGHTS)
            if hashlib.sha256(data).hexdigest() != offer.weights_sha256:
                raise PeerAnswerInvalid(f"peer {peer.name} sent weights that do not match {offer.weights_sha256}")
            version = offer.version if taken is None else f"{peer.name}-{offer.version}"[:40]
            card = {
                **offer.card,
                "federation": {"instance": peer.name, "origin_version": offer.version, "origin_stage": offer.stage},
            }
            with tempfile.TemporaryDirectory() as tmp:
                weights = Path(tmp) / "weights.pt"
                weights.write_bytes(data)
                with ctx.db.session() as s:
                    mv = register_model(
                        ctx,
                        s,
                        _actor(ctx, peer),
                        weights,
                        classes=list(offer.classes),
                        imgsz=offer.imgsz,
                        card=card,
                        name=offer.name,
                        version=version,
                        stage="candidate",
                    )
                    registered.append(f"{mv.name}:{mv.version}")
    finally:
        client.close()
    return {"registered": registered, "already_held": skipped, "answer_bytes": client.received}


# ---- feedback up -----------------------------------------------------------------------------------


def feedback_counts(session: Session, model_name: str = "hazardlens") -> FeedbackReport:
    """Inspectors' decisions on suggested findings, per model version and class: confirmed as they
    were, confirmed with a correction (box or class), rejected. Counts only: no photo leaves."""
    tally: dict[tuple[str, str], Counter[str]] = {}
    rows = session.execute(
        select(Finding.model_version, Finding.class_key, Finding.status, Finding.review).where(
            Finding.status.in_(("confirmed", "rejected"))
        )
    )
    for version, class_key, status, review in rows:
        corrected = status == "confirmed" and bool((review or {}).get("corrected"))
        kind = "corrected" if corrected else status
        tally.setdefault((str(version), class_key), Counter())[kind] += 1
    return FeedbackReport.model_validate(
        {
            "counts": [
                {
                    "model_name": model_name,
                    "model_version": v,
                    "class_key": k,
                    **{n: c[n] for n in ("confirmed", "corrected", "rejected")},
                }
                for (v, k), c in sorted(tally.items())
            ]
        }
    )


def push_feedback(ctx: Context, peer_name: str) -> dict[str, Any]:
    with ctx.db.read_session() as s:
        peer = get_peer(s, peer_name)
        s.expunge(peer)
        report = feedback_counts(s)
    client = PeerClient(ctx, peer)
    try:
        ack = _parse(FeedbackAck, client.json("POST", "/federation/v1/feedback", report.model_dump()), peer.name)
    finally:
        client.close()
    return {"sent": len(report.counts), "received": ack.received}


def origin_dict(fs: FederatedSample, peer: Peer) -> dict[str, Any]:
    return {
        "sample_id": fs.local_sample_id,
        "instance": peer.name,
        "instance_url": peer.url,
        "org_code": fs.origin_org,
        "origin_sample_id": fs.origin_sample_id,
        "origin_revision_id": fs.origin_revision_id,
        "provenance": fs.provenance,
        "withdrawn_at": iso(fs.withdrawn_at),
        "updated_at": iso(fs.updated_at),
    }
