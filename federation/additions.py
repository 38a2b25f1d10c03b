"""Provincial taxonomy additions across instances (the ``taxonomy`` capability): a peer's approved
items and classes, with the legal clause they rest on and who approved them when, are pulled for
national adoption (a province's additions reach the ministry; the ministry's reach a province).

What arrives is a record, not vocabulary: a pulled addition is readable with its origin and usable
by no organisation here until a system administrator adopts it, which makes it a local approved
addition of one organisation (:mod:`hazardlens.legal_review` then governs it like any other). Only an
instance's own approved additions are offered, never pending or rejected ones, and never what it
pulled itself, so two instances pulling from each other do not loop. Every step is audited.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from hazardlens.audit import record
from hazardlens.auth import Principal, require_system
from hazardlens.context import Context
from hazardlens.contracts.federation import AdditionOffer, AdditionOffers, PulledAddition
from hazardlens.dates import iso
from hazardlens.errors import Conflict, NotFound
from hazardlens.federation.peers import get_peer
from hazardlens.federation.signing import PeerAnswerInvalid
from hazardlens.federation.sync import PeerClient, _actor, _parse, _when
from hazardlens.orm import FederatedAddition, Organisation, Peer, TaxonomyAddition, User, utcnow
from hazardlens.taxonomy import validate_addition

MAX_PAGE = 200
#: A pull takes at most this many additions from one peer (a province has a handful).
MAX_ADDITIONS = 5000
_AUDITED = ["kind", "key", "origin_org", "origin_id", "legal_citation", "reviewed_by", "withdrawn_at"]


# ---- what this instance offers ------------------------------------------------------------------


def offered(session: Session, after: int, limit: int) -> AdditionOffers:
    """This instance's approved additions with id > ``after``, in id order (pending and rejected ones
    never leave; pulled copies live in another table and are not offered onwards)."""
    limit = max(1, min(limit, MAX_PAGE))
    rows = session.scalars(
        select(TaxonomyAddition)
        .where(TaxonomyAddition.status == "approved", TaxonomyAddition.id > after)
        .order_by(TaxonomyAddition.id)
        .limit(limit + 1)
    ).all()
    more = len(rows) > limit
    rows = rows[:limit]

    def name(user_id: int | None) -> str | None:
        user = session.get(User, user_id) if user_id is not None else None
        return user.name[:200] if user is not None else None

    offers = [
        AdditionOffer(
            origin_id=r.id,
            kind=r.kind,
            key=r.key,
            org_code=r.org_code,
            definition=dict(r.payload or {}),
            legal_text=r.legal_text or "",
            legal_citation=r.legal_citation or "",
            proposed_by=name(r.created_by),
            reviewed_by=name(r.reviewed_by),
            review_reason=r.review_reason,
            reviewed_at=iso(r.reviewed_at),
        )
        for r in rows
        if r.legal_text and r.legal_citation  # additions from before legal review carry no clause
    ]
    return AdditionOffers(additions=offers, next=rows[-1].id if rows else after, more=more)


# ---- pulling ------------------------------------------------------------------------------------


def pull_taxonomy(ctx: Context, peer_name: str) -> dict[str, int]:
    """Fetch every approved addition the peer offers (signed pages, checked and bounded) and store them
    in one transaction: new ones added, changed ones updated, ones no longer offered marked withdrawn.
    A peer that did not grant this instance ``taxonomy`` refuses (``peer_refused``, its
    ``peer_not_allowed`` quoted)."""
    with ctx.db.read_session() as s:
        peer = get_peer(s, peer_name)
        s.expunge(peer)
    client = PeerClient(ctx, peer)
    offers: list[AdditionOffer] = []
    after = 0
    try:
        while True:
            page = _parse(
                AdditionOffers,
                client.json("GET", f"/federation/v1/taxonomy?after={after}&limit={MAX_PAGE}"),
                peer.name,
            )
            offers.extend(page.additions)
            if len(offers) > MAX_ADDITIONS:
                raise PeerAnswerInvalid(f"peer {peer.name} offers more than {MAX_ADDITIONS} taxonomy additions")
            if not page.more:
                break
            if page.next <= after:
                raise PeerAnswerInvalid(f"peer {peer.name}'s taxonomy pages do not advance")
            after = page.next
    finally:
        client.close()
    with ctx.db.session() as s:
        live = s.get(Peer, peer.id)
        assert live is not None
        stats = _store(ctx, s, live, offers)
    stats["received"] = len(offers)
    stats["answer_bytes"] = client.received
    return stats


def _key_of(offer: AdditionOffer) -> str:
    return str(offer.definition.get("code" if offer.kind == "item" else "key") or "")


def _store(ctx: Context, session: Session, peer: Peer, offers: list[AdditionOffer]) -> dict[str, int]:
    held = {
        r.origin_id: r for r in session.scalars(select(FederatedAddition).where(FederatedAddition.peer_id == peer.id))
    }
    actor, now = _actor(ctx, peer), utcnow()
    stats = {"added": 0, "updated": 0, "unchanged": 0, "withdrawn": 0, "skipped": 0}
    seen: set[int] = set()
    for offer in offers:
        if offer.origin_id in seen or _key_of(offer) != offer.key:
            stats["skipped"] += 1  # a repeated entry, or a definition that names another key
            continue
        seen.add(offer.origin_id)
        values: dict[str, Any] = {
            "origin_org": offer.org_code,
            "kind": offer.kind,
            "key": offer.key,
            "payload": offer.definition,
            "legal_text": offer.legal_text,
            "legal_citation": offer.legal_citation,
            "proposed_by": offer.proposed_by,
            "reviewed_by": offer.reviewed_by,
            "review_reason": offer.review_reason,
            "reviewed_at": _when(offer.reviewed_at),
        }
        row = held.get(offer.origin_id)
        if row is None:
            row = FederatedAddition(peer_id=peer.id, origin_id=offer.origin_id, pulled_at=now, **values)
            session.add(row)
            outcome = "added"
        else:
            changed = row.withdrawn_at is not None or any(
                getattr(row, k) != v for k, v in values.items() if k != "reviewed_at"
            )
            if not changed:
                stats["unchanged"] += 1
                continue
            for k, v in values.items():
                setattr(row, k, v)
            row.withdrawn_at, row.pulled_at = None, now
            outcome = "updated"
        session.flush()
        stats[outcome] += 1
        record(session, actor, f"federation.addition_{outcome}", "federated_addition", row.id,
               after={"peer": peer.name, **_audit(row)})  # fmt: skip
    for origin_id, row in held.items():
        if origin_id not in seen and row.withdrawn_at is None:
            row.withdrawn_at = now
            stats["withdrawn"] += 1
            record(session, actor, "federation.addition_withdrawn", "federated_addition", row.id,
                   after={"peer": peer.name, **_audit(row)})  # fmt: skip
    return stats


def _audit(row: FederatedAddition) -> dict[str, Any]:
    return {k: iso(v) if hasattr(v, "isoformat") else v for k, v in ((k, getattr(row, k)) for k in _AUDITED)}


# ---- reading and adopting -----------------------------------------------------------------------


def list_pulled(session: Session, principal: Principal, include_withdrawn: bool = False) -> list[FederatedAddition]:
    """Every peer's additions pulled here: shared knowledge (readable by anyone who may read taxonomy
    additions), usable by nobody until adopted."""
    principal.require("taxonomy:read_additions")
    query = select(FederatedAddition).order_by(FederatedAddition.id).limit(MAX_ADDITIONS * 4)
    if not include_withdrawn:
        query = query.where(FederatedAddition.withdrawn_at.is_(None))
    return list(session.scalars(query))


def get_pulled(session: Session, principal: Principal, pulled_id: int) -> FederatedAddition:
    principal.require("taxonomy:read_additions")
    row = session.get(FederatedAddition, pulled_id) if 0 < pulled_id < 2**31 else None
    if row is None:
        raise NotFound(f"no pulled taxonomy addition {pulled_id}")
    return row


def adopt(
    ctx: Context, session: Session, principal: Principal, pulled_id: int, org_code: str | None = None
) -> TaxonomyAddition:
    """Make a pulled addition usable in one organisation of this instance (default: the system one): a
    local approved addition carrying the origin's clause, its approval and this adoption. Adopting is
    an installation-wide decision, so only the system organisation's administrators take it; audited."""
    require_system(principal, "adopting another instance's taxonomy addition", ctx.settings.system_org)
    row = get_pulled(session, principal, pulled_id)
    if row.adopted_addition_id is not None:
        raise Conflict(
            f"pulled addition {pulled_id} was already adopted (addition {row.adopted_addition_id})",
            code="already_adopted",
        )
    if row.withdrawn_at is not None:
        raise Conflict(f"pulled addition {pulled_id} is no longer offered by its instance", code="addition_withdrawn")
    target = (org_code or ctx.settings.system_org).strip()
    if session.get(Organisation, target) is None:
        raise NotFound(f"no organisation {target!r} on this instance", code="not_found")
    if session.scalar(
        select(TaxonomyAddition).where(TaxonomyAddition.kind == row.kind, TaxonomyAddition.key == row.key)
    ):
        raise Conflict(f"an addition {row.kind} {row.key!r} already exists here", code="duplicate_addition")
    peer = session.get(Peer, row.peer_id)
    instance = peer.name if peer is not None else "?"
    payload = dict(row.payload or {})
    validate_addition(
        ctx.taxonomy(session, org_code=target, max_age_s=0),
        {"kind": row.kind, "org_code": target, "status": "approved", "payload": payload},
    )
    now = utcnow()
    origin = (
        f"adopted from instance {instance} (organisation {row.origin_org}, addition {row.origin_id}), "
        f"approved there by {row.reviewed_by or '?'} at {iso(row.reviewed_at) or '?'}"
    )
    local = TaxonomyAddition(
        kind=row.kind,
        key=row.key,
        org_code=target,
        payload=payload,
        status="approved",
        created_by=principal.user_id,
        reviewed_by=principal.user_id,
        reviewed_at=now,
        legal_text=row.legal_text,
        legal_citation=row.legal_citation,
        review_reason=origin[:2000],
    )
    session.add(local)
    session.flush()
    row.adopted_addition_id, row.adopted_by, row.adopted_at = local.id, principal.user_id, now
    record(session, principal, "taxonomy.adopt", "taxonomy_addition", local.id,
           after={"kind": row.kind, "key": row.key, "org_code": target, "instance": instance,
                  "origin_org": row.origin_org, "origin_id": row.origin_id, "pulled_id": row.id,
                  "legal_citation": row.legal_citation})  # fmt: skip
    ctx.invalidate_taxonomy()
    return local


def pulled_public(session: Session, row: FederatedAddition) -> PulledAddition:
    peer = session.get(Peer, row.peer_id)
    return PulledAddition(
        id=row.id,
        instance=peer.name if peer is not None else "?",
        origin_id=row.origin_id,
        org_code=row.origin_org,
        kind=row.kind,
        key=row.key,
        definition=dict(row.payload or {}),
        legal_text=row.legal_text,
        legal_citation=row.legal_citation,
        proposed_by=row.proposed_by,
        reviewed_by=row.reviewed_by,
        review_reason=row.review_reason,
        reviewed_at=iso(row.reviewed_at),
        pulled_at=iso(row.pulled_at),
        withdrawn_at=iso(row.withdrawn_at),
        adopted_addition_id=row.adopted_addition_id,
        adopted_at=iso(row.adopted_at),
    )
