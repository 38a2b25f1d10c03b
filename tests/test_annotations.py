"""Annotation revisions and the review workflow, on SQLite and PostgreSQL (catalogue suite)."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from hazardlens import audit
from hazardlens.context import Context
from hazardlens.errors import Conflict, Forbidden, Invalid, NotFound
from hazardlens.labeling import annotations as ann
from hazardlens.orm import AnnotationRevision, Sample, SampleClass, TaxonomyAddition
from tests.fixtures.labeling import Cast, add_sample, make_cast

DUST = {"class_key": "accumulated_dust", "x1": 10, "y1": 20, "x2": 110, "y2": 220}
VENT = {"class_key": "explosion_vent", "x1": 300, "y1": 40, "x2": 400, "y2": 140}


@pytest.fixture
def env(catalogue_ctx: Context) -> tuple[Context, Cast, int]:
    cast = make_cast(catalogue_ctx)
    return catalogue_ctx, cast, add_sample(catalogue_ctx, width=640, height=480)


def _sample(ctx: Context, sample_id: int) -> Sample:
    with ctx.db.session() as s:
        sample = s.get(Sample, sample_id)
        assert sample is not None
        return sample


def _actions(ctx: Context, sample_id: int) -> list[str]:
    with ctx.db.session() as s:
        return [e.action for e in audit.history(s, sample_id=sample_id) if e.entity == "annotation_revision"]


def _save(ctx: Context, who: Any, sample_id: int, boxes: list[dict[str, Any]], **kw: Any) -> AnnotationRevision:
    with ctx.db.session() as s:
        return ann.save_revision(ctx, s, who, sample_id, boxes, **kw)


def _do(ctx: Context, fn: Any, *args: Any) -> Any:
    with ctx.db.session() as s:
        return fn(s, *args)


def test_revisions_are_kept_and_numbered(env: tuple[Context, Cast, int]) -> None:
    ctx, cast, sid = env
    r1 = _save(ctx, cast.curator, sid, [DUST])
    r2 = _save(ctx, cast.curator, sid, [DUST, VENT], note="added the vent")
    assert (r1.number, r2.number) == (1, 2)
    assert r2.parent_id == r1.id
    hist = _do(ctx, ann.history, cast.curator, sid)
    assert [h["number"] for h in hist] == [1, 2]
    assert hist[0]["boxes"] == [{**DUST, "x1": 10.0, "y1": 20.0, "x2": 110.0, "y2": 220.0}]
    assert len(hist[1]["boxes"]) == 2 and hist[1]["note"] == "added the vent"
    assert hist[1]["author"] == "curator-a" and hist[1]["source"] == "manual"
    sample = _sample(ctx, sid)
    assert sample.annotation_status == "in_progress"
    assert sample.current_revision_id == r2.id and sample.approved_revision_id is None
    assert sample.class_keys == ["accumulated_dust", "explosion_vent"]
    with ctx.db.session() as s:
        rows = s.scalars(select(SampleClass.class_key).where(SampleClass.sample_id == sid)).all()
    assert sorted(rows) == ["accumulated_dust", "explosion_vent"]
    # a third revision with fewer classes replaces the class index rows, not appends to them
    _save(ctx, cast.curator, sid, [VENT])
    with ctx.db.session() as s:
        rows = s.scalars(select(SampleClass.class_key).where(SampleClass.sample_id == sid)).all()
    assert rows == ["explosion_vent"]
    assert _actions(ctx, sid) == ["annotation.save"] * 3


def test_empty_list_is_a_negative_sample(env: tuple[Context, Cast, int]) -> None:
    ctx, cast, sid = env
    rev = _save(ctx, cast.curator, sid, [])
    assert rev.boxes == [] and rev.number == 1
    sample = _sample(ctx, sid)
    assert sample.annotation_status == "in_progress" and sample.current_revision_id == rev.id
    assert sample.class_keys == []
    cur = _do(ctx, ann.current, cast.curator, sid)
    assert cur["revision"]["number"] == 1 and cur["boxes"] == []


def test_out_of_range_boxes_are_clipped_and_reported(env: tuple[Context, Cast, int]) -> None:
    ctx, cast, sid = env
    with ctx.db.session() as s:
        out = ann.put_annotations(
            ctx, s, cast.curator, sid, [{"class_key": "fire", "x1": -5, "y1": 10, "x2": 700, "y2": 100}]
        )
    assert out["boxes"] == [{"class_key": "fire", "x1": 0.0, "y1": 10.0, "x2": 640.0, "y2": 100.0}]
    assert len(out["repairs"]) == 1
    assert "box 0" in out["repairs"][0] and "x1 -5 -> 0" in out["repairs"][0] and "x2 700 -> 640" in out["repairs"][0]
    with ctx.db.session() as s:
        event = audit.history(s, sample_id=sid, entity="annotation_revision")[-1]
    assert event.after is not None and event.after["repairs"] == out["repairs"]


@pytest.mark.parametrize(
    ("box", "code"),
    [
        ({"class_key": "fire", "x1": 50, "y1": 10, "x2": 50, "y2": 100}, "zero_area"),
        ({"class_key": "fire", "x1": 60, "y1": 10, "x2": 50, "y2": 100}, "zero_area"),
        ({"class_key": "fire", "x1": 650, "y1": 10, "x2": 700, "y2": 100}, "zero_area"),  # entirely outside
        ({"class_key": "fire", "x1": 0, "y1": -30, "x2": 10, "y2": -1}, "zero_area"),
        ({"class_key": "flames", "x1": 0, "y1": 0, "x2": 10, "y2": 10}, "unknown_class"),
        ({"class_key": "fire", "x1": "0", "y1": 0, "x2": 10, "y2": 10}, "invalid_box"),
        ({"class_key": "fire", "x1": True, "y1": 0, "x2": 10, "y2": 10}, "invalid_box"),
        ({"class_key": "fire", "x1": float("nan"), "y1": 0, "x2": 10, "y2": 10}, "invalid_box"),
        ({"class_key": "fire", "y1": 0, "x2": 10, "y2": 10}, "invalid_box"),
        ({"x1": 0, "y1": 0, "x2": 10, "y2": 10}, "invalid_box"),
    ],
)
def test_bad_boxes_are_refused_and_nothing_is_written(
    env: tuple[Context, Cast, int], box: dict[str, Any], code: str
) -> None:
    ctx, cast, sid = env
    with pytest.raises(Invalid) as err:
        _save(ctx, cast.curator, sid, [DUST, box])
    assert err.value.status == 422 and err.value.code == "invalid_boxes"
    assert err.value.details == [{"index": 1, "code": code, "message": err.value.details[0]["message"]}]
    assert err.value.details[0]["message"].startswith("box 1:")
    assert _sample(ctx, sid).annotation_status == "unlabeled"
    assert _do(ctx, ann.history, cast.curator, sid) == [] and _actions(ctx, sid) == []


def test_every_bad_box_is_reported_at_once(env: tuple[Context, Cast, int]) -> None:
    ctx, cast, sid = env
    with pytest.raises(Invalid) as err:
        _save(
            ctx,
            cast.curator,
            sid,
            [
                {"class_key": "nope", "x1": 0, "y1": 0, "x2": 1, "y2": 1},
                DUST,
                {"class_key": "fire", "x1": 5, "y1": 5, "x2": 5, "y2": 9},
            ],
        )
    assert [d["index"] for d in err.value.details] == [0, 2]
    assert "2 box problem(s)" in err.value.message


def test_inactive_class_is_refused(env: tuple[Context, Cast, int]) -> None:
    ctx, cast, sid = env
    payload = {
        "key": "oil_leak",
        "name_zh": "漏油",
        "name_en": "oil leak",
        "sector": "general",
        "inspection_items": [],
        "severity": "medium",
        "finding_zh": "设备漏油",
        "is_hazard": True,
        "legal_basis": ["GB 30871-2022 4.1"],
    }
    with ctx.db.session() as s:
        s.add(TaxonomyAddition(kind="class", key="oil_leak", org_code="420000", payload=payload, status="pending"))
    ctx.invalidate_taxonomy()
    with pytest.raises(Invalid) as err:
        _save(ctx, cast.curator, sid, [{"class_key": "oil_leak", "x1": 0, "y1": 0, "x2": 10, "y2": 10}])
    assert err.value.details[0]["code"] == "inactive_class"
    with ctx.db.session() as s:
        s.scalars(select(TaxonomyAddition)).one().status = "approved"
    ctx.invalidate_taxonomy()
    rev = _save(ctx, cast.curator, sid, [{"class_key": "oil_leak", "x1": 0, "y1": 0, "x2": 10, "y2": 10}])
    assert rev.boxes[0]["class_key"] == "oil_leak"


def test_full_workflow_with_rejection(env: tuple[Context, Cast, int]) -> None:
    ctx, cast, sid = env
    _save(ctx, cast.curator, sid, [DUST])
    assert _do(ctx, ann.submit, cast.curator, sid)["status"] == "submitted"
    out = _do(ctx, ann.reject, cast.reviewer, sid, "  漏标了泄爆口 (explosion vent missing)  ")
    assert out["status"] == "rejected"
    assert out["revision"]["reason"] == "漏标了泄爆口 (explosion vent missing)"
    assert out["revision"]["reviewer"] == "reviewer-a" and out["revision"]["status"] == "rejected"
    # the rejected boxes cannot simply be resubmitted: they must be corrected first
    with pytest.raises(Conflict):
        _do(ctx, ann.submit, cast.curator, sid)
    _save(ctx, cast.curator, sid, [DUST, VENT])
    assert _sample(ctx, sid).annotation_status == "in_progress"
    _do(ctx, ann.submit, cast.curator, sid)
    out = _do(ctx, ann.approve, cast.reviewer, sid)
    assert out["status"] == "approved"
    sample = _sample(ctx, sid)
    assert sample.approved_revision_id == sample.current_revision_id == out["revision"]["id"]
    hist = _do(ctx, ann.history, cast.reviewer, sid)
    assert [(h["number"], h["status"]) for h in hist] == [(1, "rejected"), (2, "approved")]
    assert hist[0]["reason"].startswith("漏标了泄爆口") and hist[1]["reviewer"] == "reviewer-a"
    assert hist[1]["submitted_at"] is not None and hist[1]["reviewed_at"] is not None
    assert _actions(ctx, sid) == [
        "annotation.save",
        "annotation.submit",
        "annotation.reject",
        "annotation.save",
        "annotation.submit",
        "annotation.approve",
    ]
    with ctx.db.session() as s:
        events = audit.history(s, sample_id=sid, entity="annotation_revision")
    reject_event = events[2]
    assert reject_event.actor == "reviewer-a"
    assert reject_event.before is not None and reject_event.before["annotation_status"] == "submitted"
    assert reject_event.after is not None and reject_event.after["annotation_status"] == "rejected"
    assert reject_event.after["reason"].startswith("漏标了泄爆口")
    assert events[-1].after is not None and events[-1].after["approved_revision_id"] == out["revision"]["id"]


def test_correcting_an_approved_sample_keeps_the_approved_revision(env: tuple[Context, Cast, int]) -> None:
    ctx, cast, sid = env
    first = _save(ctx, cast.curator, sid, [DUST])
    _do(ctx, ann.submit, cast.curator, sid)
    _do(ctx, ann.approve, cast.reviewer, sid)
    second = _save(ctx, cast.curator, sid, [VENT])
    sample = _sample(ctx, sid)
    assert sample.annotation_status == "in_progress"
    assert sample.current_revision_id == second.id and sample.approved_revision_id == first.id


def test_reviewer_cannot_review_own_revision(env: tuple[Context, Cast, int]) -> None:
    ctx, cast, sid = env
    _save(ctx, cast.admin, sid, [DUST])
    _do(ctx, ann.submit, cast.admin, sid)
    for fn, args in ((ann.approve, ()), (ann.reject, ("no",))):
        with pytest.raises(Forbidden) as err:
            _do(ctx, fn, cast.admin, sid, *args)
        assert err.value.code == "own_work" and err.value.status == 403
    assert _sample(ctx, sid).annotation_status == "submitted"
    assert _do(ctx, ann.approve, cast.reviewer, sid)["status"] == "approved"


@pytest.mark.parametrize("setup", ["unlabeled", "in_progress", "approved", "rejected"])
def test_illegal_transitions_conflict_and_change_nothing(env: tuple[Context, Cast, int], setup: str) -> None:
    ctx, cast, sid = env
    if setup != "unlabeled":
        _save(ctx, cast.curator, sid, [DUST])
    if setup in ("approved", "rejected"):
        _do(ctx, ann.submit, cast.curator, sid)
        if setup == "approved":
            _do(ctx, ann.approve, cast.reviewer, sid)
        else:
            _do(ctx, ann.reject, cast.reviewer, sid, "fix it")
    before_state = _do(ctx, ann.current, cast.curator, sid)
    before_events = _actions(ctx, sid)
    attempts = [(ann.approve, cast.reviewer2, ()), (ann.reject, cast.reviewer2, ("why",))]
    if setup != "in_progress":
        attempts.append((ann.submit, cast.curator, ()))
    for fn, who, args in attempts:
        with pytest.raises(Conflict) as err:
            _do(ctx, fn, who, sid, *args)
        assert err.value.status == 409 and f"'{setup}'" in err.value.message
        assert err.value.details["state"] == setup
    assert _do(ctx, ann.current, cast.curator, sid) == before_state
    assert _actions(ctx, sid) == before_events


def test_reject_needs_a_reason(env: tuple[Context, Cast, int]) -> None:
    ctx, cast, sid = env
    _save(ctx, cast.curator, sid, [DUST])
    _do(ctx, ann.submit, cast.curator, sid)
    for reason in ("", "   "):
        with pytest.raises(Invalid) as err:
            _do(ctx, ann.reject, cast.reviewer, sid, reason)
        assert err.value.code == "reason_required"
    assert _sample(ctx, sid).annotation_status == "submitted"


def test_roles_are_enforced(env: tuple[Context, Cast, int]) -> None:
    ctx, cast, sid = env
    with pytest.raises(Forbidden):
        _save(ctx, cast.inspector, sid, [DUST])
    with pytest.raises(Forbidden):  # a curator cannot skip review by saving as approved
        _save(ctx, cast.curator, sid, [DUST], status="approved")
    _save(ctx, cast.curator, sid, [DUST])
    _do(ctx, ann.submit, cast.curator, sid)
    with pytest.raises(Forbidden):
        _do(ctx, ann.approve, cast.curator2, sid)
    with pytest.raises(Forbidden):
        _do(ctx, ann.submit, cast.reviewer, sid)


def test_import_and_feedback_statuses(env: tuple[Context, Cast, int]) -> None:
    ctx, cast, sid = env
    rev = _save(ctx, cast.admin, sid, [DUST], source="import", status="approved")
    sample = _sample(ctx, sid)
    assert sample.annotation_status == "approved" and sample.approved_revision_id == rev.id
    assert rev.reviewer_id == cast.admin.user_id and rev.submitted_at is not None
    other = add_sample(ctx)
    rev2 = _save(ctx, cast.admin, other, [VENT], source="feedback", status="submitted", model_version="m-1")
    assert _sample(ctx, other).annotation_status == "submitted"
    assert rev2.model_version == "m-1" and rev2.source == "feedback"
    assert _do(ctx, ann.approve, cast.reviewer, other)["status"] == "approved"
    with pytest.raises(Invalid):
        _save(ctx, cast.admin, other, [], status="rejected")


def test_other_orgs_private_sample_is_not_found(env: tuple[Context, Cast, int]) -> None:
    ctx, cast, sid = env
    _save(ctx, cast.curator, sid, [DUST])
    _do(ctx, ann.submit, cast.curator, sid)
    for call in (
        lambda s: ann.save_revision(ctx, s, cast.other_curator, sid, [DUST]),
        lambda s: ann.current(s, cast.other_curator, sid),
        lambda s: ann.history(s, cast.other_curator, sid),
        lambda s: ann.approve(s, cast.other_reviewer, sid),
        lambda s: ann.reject(s, cast.other_reviewer, sid, "no"),
    ):
        with pytest.raises(NotFound), ctx.db.session() as s:
            call(s)
    assert _sample(ctx, sid).annotation_status == "submitted"
    with pytest.raises(NotFound):
        _save(ctx, cast.curator, 999_999, [DUST])
