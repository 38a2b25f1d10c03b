"""Inter-annotator agreement, and a review queue that puts disagreements first.

When several curators label the same sample, their latest revisions are compared class by class:
boxes are paired one-to-one (Hungarian matching) when their IoU is at least 0.5, and a class's
agreement is ``matched / (matched + only_a + only_b)``. A reviewer's time is best spent where
curators disagree, so those samples come first in the review queue.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from hazardlens.auth import Principal
from hazardlens.datasets.tenancy import get_sample, visible_samples
from hazardlens.dates import iso
from hazardlens.detections import box_iou
from hazardlens.errors import Forbidden
from hazardlens.labeling.annotations import label_writable
from hazardlens.orm import AnnotationRevision, Sample, User

IOU_THRESHOLD = 0.5


def _xyxy(boxes: Sequence[dict[str, Any]]) -> np.ndarray:
    return np.array([[b["x1"], b["y1"], b["x2"], b["y2"]] for b in boxes], np.float32).reshape(-1, 4)


def match_count(a: Sequence[dict[str, Any]], b: Sequence[dict[str, Any]], threshold: float = IOU_THRESHOLD) -> int:
    """How many one-to-one pairs reach ``threshold``. The weights make the number of pairs count
    first and their IoU only break ties, so a greedy high-IoU pair never costs two good pairs."""
    if not a or not b:
        return 0
    iou = box_iou(_xyxy(a), _xyxy(b))
    weight = np.where(iou >= threshold, 1.0 + iou * 1e-3, 0.0)
    rows, cols = linear_sum_assignment(-weight)
    return int(sum(1 for r, c in zip(rows, cols, strict=True) if iou[r, c] >= threshold))


def compare(
    a: Sequence[dict[str, Any]], b: Sequence[dict[str, Any]], threshold: float = IOU_THRESHOLD
) -> dict[str, Any]:
    """Per-class and overall agreement of two box lists. Two empty lists agree fully (both say the
    photo shows nothing)."""
    per_class: dict[str, dict[str, Any]] = {}
    totals = [0, 0, 0]
    for key in sorted({x["class_key"] for x in a} | {x["class_key"] for x in b}):
        ka = [x for x in a if x["class_key"] == key]
        kb = [x for x in b if x["class_key"] == key]
        matched = match_count(ka, kb, threshold)
        only_a, only_b = len(ka) - matched, len(kb) - matched
        per_class[key] = {
            "matched": matched,
            "only_a": only_a,
            "only_b": only_b,
            "agreement": round(matched / (matched + only_a + only_b), 4),
        }
        totals = [totals[0] + matched, totals[1] + only_a, totals[2] + only_b]
    denominator = sum(totals)
    overall = round(totals[0] / denominator, 4) if denominator else 1.0
    return {"per_class": per_class, "overall": overall, "matched": totals[0], "only_a": totals[1], "only_b": totals[2]}


def _latest_per_author(session: Session, sample_id: int) -> list[AnnotationRevision]:
    revs = session.scalars(
        select(AnnotationRevision)
        .where(AnnotationRevision.sample_id == sample_id, AnnotationRevision.author_id.is_not(None))
        .order_by(AnnotationRevision.number)
    )
    latest: dict[int, AnnotationRevision] = {}
    for rev in revs:
        assert rev.author_id is not None
        latest.pop(rev.author_id, None)  # re-insert so that dict order follows each author's latest
        latest[rev.author_id] = rev
    return list(latest.values())


def _check(principal: Principal) -> None:
    if not (principal.can("annotations:write") or principal.can("annotations:review")):
        raise Forbidden(f"role '{principal.role}' may not see labeling agreement", code="forbidden")


def _agreement(session: Session, sample_id: int) -> dict[str, Any]:
    revs = _latest_per_author(session, sample_id)
    ids = {r.author_id for r in revs}
    names = dict(session.execute(select(User.id, User.name).where(User.id.in_(ids))).tuples().all()) if ids else {}
    authors = [
        {
            "user_id": r.author_id,
            "name": names.get(r.author_id or -1, "?"),
            "revision_id": r.id,
            "revision_number": r.number,
        }
        for r in revs
    ]
    result: dict[str, Any] = {
        "sample_id": sample_id,
        "authors": authors,
        "threshold": IOU_THRESHOLD,
        "pairs": [],
        "per_class": {},
        "overall": None,
    }
    for (ia, ra), (ib, rb) in combinations(enumerate(revs), 2):
        pair = compare(ra.boxes, rb.boxes)
        result["pairs"].append({"a": authors[ia], "b": authors[ib], **pair})
    if result["pairs"]:
        # With three or more curators the headline is the worst pair: that is what needs a reviewer.
        worst = min(result["pairs"], key=lambda p: p["overall"])
        result["a"], result["b"] = worst["a"], worst["b"]
        result["per_class"], result["overall"] = worst["per_class"], worst["overall"]
    return result


def agreement(session: Session, principal: Principal, sample_id: int) -> dict[str, Any]:
    """Agreement between the latest revisions of each curator who labelled the sample:
    ``{per_class: {key: {matched, only_a, only_b, agreement}}, overall, a, b, authors, pairs}``.
    ``overall`` is None while fewer than two curators have labelled it."""
    _check(principal)
    sample = get_sample(session, principal, sample_id)
    return _agreement(session, sample.id)


def review_queue(session: Session, principal: Principal, limit: int = 50) -> list[dict[str, Any]]:
    """Submitted samples the caller may review: disagreements first (lowest agreement first), then
    the rest oldest submission first. The caller's own revisions are left out, since they cannot
    review them."""
    principal.require("annotations:review")
    limit = max(1, min(int(limit), 1000))
    rows = (
        session.execute(
            visible_samples(principal)
            .with_only_columns(
                Sample.id,
                AnnotationRevision.id,
                AnnotationRevision.number,
                AnnotationRevision.author_id,
                AnnotationRevision.submitted_at,
            )
            .join(AnnotationRevision, AnnotationRevision.id == Sample.current_revision_id)
            .where(Sample.annotation_status == "submitted", label_writable(principal))  # only the owner reviews
        )
        .tuples()
        .all()
    )
    if principal.user_id is not None:
        rows = [r for r in rows if r[3] != principal.user_id]
    ids = [r[0] for r in rows]
    multi: set[int] = set()
    for chunk in range(0, len(ids), 500):
        part = ids[chunk : chunk + 500]
        multi |= set(
            session.scalars(
                select(AnnotationRevision.sample_id)
                .where(AnnotationRevision.sample_id.in_(part), AnnotationRevision.author_id.is_not(None))
                .group_by(AnnotationRevision.sample_id)
                .having(func.count(func.distinct(AnnotationRevision.author_id)) >= 2)
            )
        )
    scores = {sid: _agreement(session, sid)["overall"] for sid in multi}
    authors = {r[3] for r in rows if r[3] is not None}
    names = (
        dict(session.execute(select(User.id, User.name).where(User.id.in_(authors))).tuples().all()) if authors else {}
    )

    def order(row: tuple[Any, ...]) -> tuple[Any, ...]:
        score = scores.get(row[0])
        disagreement = score is not None and score < 1.0
        submitted = row[4].timestamp() if row[4] is not None else 0.0
        return (0, score, submitted, row[0]) if disagreement else (1, 0.0, submitted, row[0])

    out = []
    for sid, rev_id, number, author_id, submitted_at in sorted(rows, key=order)[:limit]:
        out.append(
            {
                "sample_id": sid,
                "revision_id": rev_id,
                "revision_number": number,
                "author_id": author_id,
                "author": names.get(author_id) if author_id else "system",
                "submitted_at": iso(submitted_at),
                "agreement": scores.get(sid),
            }
        )
    return out


__all__ = ["IOU_THRESHOLD", "agreement", "compare", "match_count", "review_queue"]
