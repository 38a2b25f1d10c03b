"""The tag filter reads ``sample_tags`` (migration 0011), kept in step with ``samples.tags`` by the ORM
on every flush: whatever path sets a sample's tags (ingest, a curator's edit, a rejected finding, a
federation pull), the filter answers what the tags say, and the migration fills the table from the
tags a library already has."""

from __future__ import annotations

from alembic import command
from sqlalchemy import delete, select, text

from hazardlens.auth import Principal
from hazardlens.context import Context
from hazardlens.contracts.filters import SampleFilter
from hazardlens.datasets.ingest import IngestMeta, ingest
from hazardlens.datasets.search import apply_filters, search
from hazardlens.datasets.tenancy import visible_samples
from hazardlens.db import alembic_config
from hazardlens.orm import Organisation, Sample, SampleTag
from tests.fixtures.core import make_image

ME = Principal(user_id=None, name="t", org_code="420000", role="curator")


def _tagged(ctx: Context, tag: str) -> list[int]:
    with ctx.db.read_session() as s:
        items, _ = search(s, ME, SampleFilter.parse({"tag": tag}), 1000, None)
    return sorted(item.id for item in items)


def _table(ctx: Context) -> set[tuple[int, str]]:
    with ctx.db.read_session() as s:
        return {(int(a), str(b)) for a, b in s.execute(select(SampleTag.sample_id, SampleTag.tag))}


def _from_tags(ctx: Context) -> set[tuple[int, str]]:
    with ctx.db.read_session() as s:
        return {(int(sid), str(t)) for sid, tags in s.execute(select(Sample.id, Sample.tags)) for t in tags or []}


def _add(ctx: Context, seed: int, tags: tuple[str, ...]) -> int:
    with ctx.db.session() as s:
        if s.get(Organisation, ME.org_code) is None:
            s.add(Organisation(code=ME.org_code))
            s.flush()
        return int(ingest(ctx, s, ME, make_image(seed=seed), IngestMeta(sector="general", tags=tags)).sample.id)


def test_the_tag_filter_follows_every_change_of_tags(catalogue_ctx: Context) -> None:
    ctx = catalogue_ctx
    a = _add(ctx, 1, ("retake", "night"))
    b = _add(ctx, 2, ("night",))
    c = _add(ctx, 3, ())
    assert _tagged(ctx, "night") == sorted([a, b]) and _tagged(ctx, "retake") == [a]
    with ctx.db.session() as s:
        s.get(Sample, b).tags = ["retake", "retake"]  # replaced (a repeat is one row)
        s.get(Sample, a).tags = []  # cleared
        s.get(Sample, c).tags = [*s.get(Sample, c).tags, "hard_negative"]  # appended, as a rejection does
    assert _tagged(ctx, "retake") == [b] and _tagged(ctx, "night") == [] and _tagged(ctx, "hard_negative") == [c]
    assert _table(ctx) == _from_tags(ctx)
    with ctx.db.session() as s:
        s.get(Sample, a).sector = "dust"  # a change that leaves the tags alone writes no tag row
    assert _table(ctx) == _from_tags(ctx)
    with ctx.db.session() as s:
        s.execute(delete(Sample).where(Sample.id == b))  # hard delete: the rows go with the sample
    assert _tagged(ctx, "retake") == [] and _table(ctx) == _from_tags(ctx)


def test_a_rolled_back_change_leaves_the_tag_rows_as_they_were(catalogue_ctx: Context) -> None:
    ctx = catalogue_ctx
    a = _add(ctx, 4, ("retake",))
    try:
        with ctx.db.session() as s:
            s.get(Sample, a).tags = ["other"]
            s.flush()
            raise RuntimeError("the request failed after its flush")
    except RuntimeError:
        pass
    assert _tagged(ctx, "retake") == [a] and _tagged(ctx, "other") == []


def test_the_tag_filter_uses_its_index_on_sqlite(ctx: Context) -> None:
    with ctx.db.read_session() as s:
        query = apply_filters(s, visible_samples(ME), SampleFilter.parse({"tag": "retake"}), below_id=1000)
        sql = str(query.order_by(Sample.id.desc()).compile(s.get_bind(), compile_kwargs={"literal_binds": True}))
        plan = " | ".join(str(row[-1]) for row in s.execute(text("EXPLAIN QUERY PLAN " + sql)))
    assert "ix_sample_tags_tag_sample" in plan, plan


def test_migration_0011_fills_the_table_from_existing_tags(catalogue_ctx: Context) -> None:
    ctx = catalogue_ctx
    a = _add(ctx, 5, ("retake", "night"))
    b = _add(ctx, 6, ())
    cfg = alembic_config(ctx.settings.database)
    with ctx.db.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0010")
    value = "CAST(:t AS jsonb)" if ctx.db.engine.dialect.name == "postgresql" else ":t"
    with ctx.db.engine.begin() as conn:  # a library as it was before: tags only on the rows
        conn.execute(text(f"UPDATE samples SET tags = {value} WHERE id = :i"), {"t": '["night", "old", "old"]', "i": b})
        conn.execute(text(f"UPDATE samples SET tags = {value} WHERE id = :i"), {"t": '"not a list"', "i": a})
    ctx.init()  # migrates to head again
    assert _table(ctx) == {(b, "night"), (b, "old")}
    assert _tagged(ctx, "old") == [b]
