"""Inter-annotator agreement and the disagreement-first review queue."""

from __future__ import annotations

from typing import Any

import pytest

from hazardlens.context import Context
from hazardlens.errors import Forbidden, NotFound
from hazardlens.labeling import annotations as ann
from hazardlens.labeling.agreement import agreement, compare, match_count, review_queue
from tests.fixtures.labeling import Cast, add_sample, make_cast


def box(key: str, x1: float, y1: float, x2: float, y2: float) -> dict[str, Any]:
    return {"class_key": key, "x1": x1, "y1": y1, "x2": x2, "y2": y2}


def test_compare_matches_one_to_one_at_iou_half() -> None:
    a = [box("fire", 0, 0, 100, 100), box("fire", 200, 200, 300, 300), box("smoke", 0, 0, 50, 50)]
    b = [
        box("fire", 5, 5, 105, 105),  # IoU ~0.82 with a[0]
        box("fire", 250, 200, 350, 300),  # IoU 1/3 with a[1]: not a match
        box("helmet", 0, 0, 50, 50),
    ]  # same place, other class: no match
    out = compare(a, b)
    assert out["per_class"]["fire"] == {"matched": 1, "only_a": 1, "only_b": 1, "agreement": round(1 / 3, 4)}
    assert out["per_class"]["smoke"] == {"matched": 0, "only_a": 1, "only_b": 0, "agreement": 0.0}
    assert out["per_class"]["helmet"] == {"matched": 0, "only_a": 0, "only_b": 1, "agreement": 0.0}
    assert out["overall"] == round(1 / 5, 4)
    assert compare([], [])["overall"] == 1.0 and compare([], [])["per_class"] == {}
    assert compare(a, a)["overall"] == 1.0


def test_matching_maximises_pairs_not_a_greedy_best_iou() -> None:
    # Greedy would pair a0 with b1 (the highest IoU, 0.82) and leave a1/b0 (IoU 0.18) unmatched;
    # the optimal one-to-one pairing matches both (a0-b0 and a1-b1, each IoU 0.54).
    a = [box("fire", 0, 0, 100, 100), box("fire", 40, 0, 140, 100)]
    b = [box("fire", -30, 0, 70, 100), box("fire", 10, 0, 110, 100)]
    assert match_count(a, b) == 2
    assert match_count(a, []) == 0


@pytest.fixture
def env(catalogue_ctx: Context) -> tuple[Context, Cast]:
    return catalogue_ctx, make_cast(catalogue_ctx)


def _save(ctx: Context, who: Any, sid: int, boxes: list[dict[str, Any]]) -> None:
    with ctx.db.session() as s:
        ann.save_revision(ctx, s, who, sid, boxes)


def _submit(ctx: Context, who: Any, sid: int) -> None:
    with ctx.db.session() as s:
        ann.submit(s, who, sid)


def test_agreement_uses_latest_revision_per_author(env: tuple[Context, Cast]) -> None:
    ctx, cast = env
    sid = add_sample(ctx)
    with ctx.db.session() as s:
        assert agreement(s, cast.reviewer, sid)["overall"] is None  # nobody labelled it yet
    _save(ctx, cast.curator, sid, [box("fire", 0, 0, 100, 100)])
    with ctx.db.session() as s:
        one = agreement(s, cast.reviewer, sid)
    assert one["overall"] is None and [a["name"] for a in one["authors"]] == ["curator-a"]
    _save(ctx, cast.curator2, sid, [box("smoke", 0, 0, 100, 100)])
    _save(ctx, cast.curator, sid, [box("smoke", 2, 2, 100, 100)])  # curator-a changes their mind
    with ctx.db.session() as s:
        out = agreement(s, cast.curator, sid)
    assert out["overall"] == 1.0 and out["per_class"] == {
        "smoke": {"matched": 1, "only_a": 0, "only_b": 0, "agreement": 1.0}
    }
    assert (out["a"]["name"], out["b"]["name"]) == ("curator-b", "curator-a")
    assert out["b"]["revision_number"] == 3


def test_three_curators_report_the_worst_pair(env: tuple[Context, Cast]) -> None:
    ctx, cast = env
    sid = add_sample(ctx)
    _save(ctx, cast.curator, sid, [box("fire", 0, 0, 100, 100)])
    _save(ctx, cast.curator2, sid, [box("fire", 0, 0, 100, 100)])
    _save(ctx, cast.admin, sid, [])
    with ctx.db.session() as s:
        out = agreement(s, cast.reviewer, sid)
    assert len(out["pairs"]) == 3 and out["overall"] == 0.0
    assert sorted(p["overall"] for p in out["pairs"]) == [0.0, 0.0, 1.0]


def test_agreement_access(env: tuple[Context, Cast]) -> None:
    ctx, cast = env
    sid = add_sample(ctx)
    with ctx.db.session() as s:
        with pytest.raises(Forbidden):
            agreement(s, cast.inspector, sid)
        with pytest.raises(NotFound):
            agreement(s, cast.other_reviewer, sid)


def test_review_queue_puts_disagreements_first(env: tuple[Context, Cast]) -> None:
    ctx, cast = env
    plain_old, split_mild, split_bad, plain_new, own, draft = (add_sample(ctx) for _ in range(6))
    fire = box("fire", 0, 0, 100, 100)
    _save(ctx, cast.curator, plain_old, [fire])
    _submit(ctx, cast.curator, plain_old)
    # mild disagreement: 2 of 3 boxes matched
    _save(ctx, cast.curator2, split_mild, [fire, box("smoke", 200, 200, 300, 300)])
    _save(ctx, cast.curator, split_mild, [fire, box("smoke", 200, 200, 300, 300), box("fire", 400, 0, 450, 50)])
    _submit(ctx, cast.curator, split_mild)
    # complete disagreement
    _save(ctx, cast.curator2, split_bad, [fire])
    _save(ctx, cast.curator, split_bad, [])
    _submit(ctx, cast.curator, split_bad)
    _save(ctx, cast.curator, plain_new, [])
    _submit(ctx, cast.curator, plain_new)
    _save(ctx, cast.admin, own, [fire])
    _submit(ctx, cast.admin, own)
    _save(ctx, cast.curator, draft, [fire])  # in progress: not in the queue
    with ctx.db.session() as s:
        items = review_queue(s, cast.reviewer, limit=10)
        assert [(i["sample_id"], i["agreement"]) for i in items] == [
            (split_bad, 0.0),
            (split_mild, round(2 / 3, 4)),
            (plain_old, None),
            (plain_new, None),
            (own, None),
        ]
        assert items[0]["author"] == "curator-a"
        # the admin authored 'own' and cannot review it, so it is not in their queue
        assert own not in [i["sample_id"] for i in review_queue(s, cast.admin, limit=10)]
        assert [i["sample_id"] for i in review_queue(s, cast.reviewer, limit=2)] == [split_bad, split_mild]
        assert review_queue(s, cast.other_reviewer) == []
        with pytest.raises(Forbidden):
            review_queue(s, cast.curator)
