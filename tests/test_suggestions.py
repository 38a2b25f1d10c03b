"""Model pre-labels: stored, listed, requested through a Detector, accepted or dismissed."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from hazardlens import audit
from hazardlens.context import Context
from hazardlens.detections import Detections
from hazardlens.errors import Conflict, Forbidden, Invalid, NotFound
from hazardlens.labeling import annotations as ann
from hazardlens.labeling.suggestions import accept, dismiss, list_suggestions, request_suggestions, store_suggestions
from hazardlens.orm import Sample
from tests.fixtures.detector import FakeDetector
from tests.fixtures.labeling import Cast, add_sample, make_cast


@pytest.fixture
def env(ctx: Context) -> tuple[Context, Cast]:
    return ctx, make_cast(ctx)


def dets(rows: list[tuple[str, float, float, float, float, float]]) -> Detections:
    return Detections(
        np.array([r[1:5] for r in rows], np.float32).reshape(-1, 4),
        np.array([r[0] for r in rows], object),
        np.array([r[5] for r in rows], np.float32),
    )


class Halves(FakeDetector):
    """A real, tiny 'model' (a Detector): decodes the bytes it is given and proposes one box over the
    left half; ``sizes`` gets the byte count of every photo it is given."""

    def __init__(self, sizes: list[int]) -> None:
        super().__init__(
            lambda w, h: [("fire", 0, 0, w / 2, h, 0.75), ("smoke", w - 4, 0, w + 20, 10, 0.3)], version="halves-0.1"
        )
        self.sizes = sizes

    def detect(self, data: bytes, **options: Any) -> Any:
        self.sizes.append(len(data))
        return super().detect(data, **options)


def size_predictor(calls: list[int]) -> Halves:
    return Halves(calls)


def test_request_runs_predict_on_the_original_bytes(env: tuple[Context, Cast]) -> None:
    ctx, cast = env
    a, b = add_sample(ctx, width=64, height=48), add_sample(ctx, width=80, height=40)
    calls: list[int] = []
    with ctx.db.session() as s:
        rows = request_suggestions(ctx, s, cast.curator, [a, b, a], size_predictor(calls))
        sizes = [s.get(Sample, i).size_bytes for i in (a, b)]
    assert calls == sizes  # each sample once, its stored original
    assert [r.sample_id for r in rows] == [a, b]
    with ctx.db.session() as s:
        listed = list_suggestions(s, cast.curator, b)
    assert len(listed) == 1 and listed[0]["model_version"] == "halves-0.1" and listed[0]["status"] == "open"
    # boxes come back in pixels of the image, the overhanging one clipped to it
    assert listed[0]["boxes"] == [
        {"class_key": "fire", "x1": 0.0, "y1": 0.0, "x2": 40.0, "y2": 40.0, "confidence": 0.75},
        {"class_key": "smoke", "x1": 76.0, "y1": 0.0, "x2": 80.0, "y2": 10.0, "confidence": 0.3},
    ]
    with ctx.db.session() as s:
        assert [e.action for e in audit.history(s, sample_id=b) if e.entity == "suggestion"] == ["suggestion.create"]


def test_request_checks_every_id_before_inference(env: tuple[Context, Cast]) -> None:
    ctx, cast = env
    mine = add_sample(ctx)
    theirs = add_sample(ctx, "310000")
    calls: list[int] = []
    with pytest.raises(NotFound), ctx.db.session() as s:
        request_suggestions(ctx, s, cast.curator, [mine, theirs], size_predictor(calls))
    assert calls == []
    with ctx.db.session() as s:
        assert list_suggestions(s, cast.curator, mine) == []
        with pytest.raises(Forbidden):
            request_suggestions(ctx, s, cast.inspector, [mine], size_predictor(calls))
        with pytest.raises(Invalid):
            request_suggestions(ctx, s, cast.curator, [], size_predictor(calls))


def test_accept_as_is_creates_a_model_revision(env: tuple[Context, Cast]) -> None:
    ctx, cast = env
    sid = add_sample(ctx, width=64, height=48)
    with ctx.db.session() as s:
        sug = store_suggestions(
            s,
            cast.reviewer,
            sid,
            "yolo-1.2",
            dets([("accumulated_dust", 1, 2, 30, 40, 0.81), ("fire", 5, 5, 5, 9, 0.5)]),
        )
    with ctx.db.session() as s:
        rev = accept(ctx, s, cast.curator, sug.id)
    assert rev["source"] == "model" and rev["model_version"] == "yolo-1.2" and rev["author"] == "curator-a"
    # the zero-area box was never stored; confidence is dropped from an accepted label
    assert rev["boxes"] == [{"class_key": "accumulated_dust", "x1": 1.0, "y1": 2.0, "x2": 30.0, "y2": 40.0}]
    with ctx.db.session() as s:
        cur = ann.current(s, cast.curator, sid)
        assert cur["status"] == "in_progress" and cur["revision"]["id"] == rev["id"]
        assert list_suggestions(s, cast.curator, sid) == []
        assert list_suggestions(s, cast.curator, sid, include_closed=True)[0]["status"] == "accepted"
        actions = [e.action for e in audit.history(s, sample_id=sid)]
    assert actions[-3:] == ["suggestion.create", "annotation.save", "suggestion.accept"]
    with ctx.db.session() as s, pytest.raises(Conflict):
        accept(ctx, s, cast.curator, sug.id)


def test_accept_edited_boxes_are_validated(env: tuple[Context, Cast]) -> None:
    ctx, cast = env
    sid = add_sample(ctx, width=64, height=48)
    with ctx.db.session() as s:
        sug = store_suggestions(s, cast.curator, sid, "yolo-1.2", dets([("fire", 1, 2, 30, 40, 0.9)]))
    with pytest.raises(Invalid), ctx.db.session() as s:
        accept(ctx, s, cast.curator, sug.id, [{"class_key": "nope", "x1": 0, "y1": 0, "x2": 5, "y2": 5}])
    with ctx.db.session() as s:  # the refused edit left the suggestion open and no revision behind
        assert list_suggestions(s, cast.curator, sid)[0]["status"] == "open"
        assert ann.history(s, cast.curator, sid) == []
        rev = accept(ctx, s, cast.curator, sug.id, [{"class_key": "smoke", "x1": 0, "y1": 0, "x2": 5, "y2": 5}])
    assert rev["boxes"][0]["class_key"] == "smoke" and "edited" in rev["note"]


def test_dismiss_and_tenancy(env: tuple[Context, Cast]) -> None:
    ctx, cast = env
    sid = add_sample(ctx)
    with ctx.db.session() as s:
        sug = store_suggestions(s, cast.curator, sid, "m", Detections.empty(with_confidence=True))
    with ctx.db.session() as s:
        for fn in (
            lambda: dismiss(s, cast.other_curator, sug.id),
            lambda: accept(ctx, s, cast.other_curator, sug.id),
            lambda: list_suggestions(s, cast.other_curator, sid),
            lambda: store_suggestions(s, cast.other_reviewer, sid, "m", Detections.empty()),
        ):
            with pytest.raises(NotFound):
                fn()
        with pytest.raises(Forbidden):
            dismiss(s, cast.reviewer, sug.id)
        assert dismiss(s, cast.curator, sug.id)["status"] == "dismissed"
        with pytest.raises(Conflict):
            dismiss(s, cast.curator, sug.id)
        with pytest.raises(Conflict):
            accept(ctx, s, cast.curator, sug.id)
        assert ann.current(s, cast.curator, sid)["status"] == "unlabeled"
