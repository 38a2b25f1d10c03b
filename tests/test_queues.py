"""Assigning work to curators and working through a queue (and the CLI that assigns)."""

from __future__ import annotations

from typing import Any

import pytest
from typer.testing import CliRunner

from hazardlens import audit
from hazardlens.context import Context
from hazardlens.datasets.library import SampleFilter
from hazardlens.errors import Forbidden, Invalid, NotFound
from hazardlens.labeling import annotations as ann
from hazardlens.labeling.queues import assign, my_queue, next_in_queue
from tests.fixtures.labeling import Cast, add_sample, make_cast

FIRE = {"class_key": "fire", "x1": 0, "y1": 0, "x2": 50, "y2": 50}


@pytest.fixture
def env(catalogue_ctx: Context) -> tuple[Context, Cast]:
    return catalogue_ctx, make_cast(catalogue_ctx)


def _assign(ctx: Context, who: Any, filters: Any, assignee: Any, limit: int = 100) -> int:
    with ctx.db.session() as s:
        return assign(s, who, filters, assignee, limit)


def _queue(ctx: Context, who: Any, **kw: Any) -> list[int]:
    with ctx.db.session() as s:
        return [i["sample_id"] for i in my_queue(s, who, **kw)]


def test_assign_skips_already_assigned_and_respects_limit(env: tuple[Context, Cast]) -> None:
    ctx, cast = env
    ids = [add_sample(ctx) for _ in range(4)]
    assert _assign(ctx, cast.reviewer, None, "curator-a", limit=3) == 3
    assert _assign(ctx, cast.reviewer, {}, cast.curator.user_id, limit=3) == 1  # only the 4th is new
    assert _assign(ctx, cast.reviewer, {}, "curator-a") == 0
    assert _queue(ctx, cast.curator) == ids
    assert _queue(ctx, cast.curator2) == []
    with ctx.db.session() as s:
        events = audit.history(s, entity="user", entity_id=cast.curator.user_id)
    assert [e.action for e in events] == ["labeling.assign"] * 3
    assert events[0].after is not None and events[0].after["sample_ids"] == ids[:3]
    assert events[0].actor == "reviewer-a" and events[2].after["count"] == 0


def test_assign_filters(env: tuple[Context, Cast]) -> None:
    ctx, cast = env
    dust = add_sample(ctx, sector="dust")
    steel = add_sample(ctx, sector="steel")
    labelled = add_sample(ctx, sector="steel")
    with ctx.db.session() as s:
        ann.save_revision(ctx, s, cast.curator, labelled, [FIRE])
    assert _assign(ctx, cast.reviewer, {"sector": "steel", "status": "unlabeled"}, "curator-a") == 1
    assert _queue(ctx, cast.curator) == [steel]
    assert _assign(ctx, cast.reviewer, SampleFilter(class_key="fire"), "curator-b") == 1
    assert _queue(ctx, cast.curator2) == [labelled]
    assert _assign(ctx, cast.reviewer, {"sector": "dust"}, "curator-b") == 1
    assert _queue(ctx, cast.curator2) == [labelled, dust]


def test_assign_only_what_both_can_see(env: tuple[Context, Cast]) -> None:
    ctx, cast = env
    private_sh = add_sample(ctx, "310000")
    shared_sh = add_sample(ctx, "310000", scope="shared")
    private_hb = add_sample(ctx, "420000")
    # a Hubei curator does not exist for the Shanghai reviewer, by id or by name (issue 13, item 8)
    for who, filters in ((cast.curator.user_id, {}), ("curator-a", {}), ("curator-a", {"org": "420000"})):
        with pytest.raises(NotFound):
            _assign(ctx, cast.other_reviewer, filters, who)
    assert _queue(ctx, cast.curator) == []
    # a Hubei reviewer assigns only Hubei's samples: Shanghai's shared one is not theirs to label
    assert _assign(ctx, cast.reviewer, {}, cast.curator.user_id) == 1
    assert _queue(ctx, cast.curator) == [private_hb]
    assert _assign(ctx, cast.other_reviewer, {"org": "310000"}, "curator-sh") == 2
    assert sorted(_queue(ctx, cast.other_curator)) == [private_sh, shared_sh]
    assert private_hb not in _queue(ctx, cast.other_curator)


def test_assign_refusals(env: tuple[Context, Cast]) -> None:
    ctx, cast = env
    add_sample(ctx)
    with pytest.raises(Forbidden):
        _assign(ctx, cast.curator, {}, "curator-b")
    with pytest.raises(Invalid) as err:
        _assign(ctx, cast.reviewer, {}, "inspector-a")
    assert err.value.code == "invalid_assignee"
    with pytest.raises(Invalid) as err:
        _assign(ctx, cast.reviewer, {"colour": "red"}, "curator-a")
    assert err.value.code == "invalid_filter"
    with pytest.raises(Invalid):
        _assign(ctx, cast.reviewer, {"status": "done"}, "curator-a")
    for bad in (0, 10_001):
        with pytest.raises(Invalid):
            _assign(ctx, cast.reviewer, {}, "curator-a", limit=bad)
    with pytest.raises(NotFound):
        _assign(ctx, cast.reviewer, {}, 999_999)
    assert _queue(ctx, cast.curator) == []


def test_submit_closes_and_reject_reopens(env: tuple[Context, Cast]) -> None:
    ctx, cast = env
    a, b = add_sample(ctx), add_sample(ctx)
    _assign(ctx, cast.reviewer, {}, "curator-a")
    _assign(ctx, cast.reviewer, {}, "curator-b")
    with ctx.db.session() as s:
        assert next_in_queue(s, cast.curator)["sample_id"] == a
        ann.save_revision(ctx, s, cast.curator, a, [FIRE])
    assert _queue(ctx, cast.curator) == [a, b]  # saving is not finishing
    with ctx.db.session() as s:
        ann.submit(s, cast.curator, a)
    assert _queue(ctx, cast.curator) == [b]
    assert _queue(ctx, cast.curator2) == [a, b]  # someone else's submission does not close theirs
    assert _queue(ctx, cast.curator, include_done=True) == [b, a]
    with ctx.db.session() as s:
        ann.reject(s, cast.reviewer, a, "missed the second fire")
    assert _queue(ctx, cast.curator) == [a, b]  # sent back: on their desk again
    with ctx.db.session() as s:
        ann.save_revision(ctx, s, cast.curator, b, [], status="in_progress")
        ann.submit(s, cast.curator, b)
        assert next_in_queue(s, cast.curator)["sample_id"] == a
        assert my_queue(s, cast.reviewer) == []


def test_cli_assign(env: tuple[Context, Cast], monkeypatch: pytest.MonkeyPatch) -> None:
    ctx, cast = env
    for sector in ("dust", "dust", "steel"):
        add_sample(ctx, sector=sector)
    add_sample(ctx, "310000", sector="dust", scope="shared")
    from hazardlens.cli.main import app  # import main first: it registers every topic

    monkeypatch.setattr("hazardlens.cli.labeling.context", lambda: ctx)
    runner = CliRunner()
    result = runner.invoke(
        app, ["labeling", "assign", "--org", "420000", "--to", "curator-a", "--sector", "dust", "--limit", "5"]
    )
    assert result.exit_code == 0, result.output
    assert "assigned 2 sample(s) to curator-a" in result.stdout
    assert len(_queue(ctx, cast.curator)) == 2
    result = runner.invoke(app, ["labeling", "assign", "--org", "420000", "--to", "nobody"])
    assert result.exit_code == 2 and "no user named 'nobody'" in result.output
