"""``hazardlens import ... --tag``: every imported sample carries the source's tag, samples already held
get it added (audited), and re-importing unchanged labels writes no revision."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from hazardlens.context import Context
from hazardlens.errors import Invalid
from hazardlens.formats import ClassMap
from hazardlens.labeling.importers import import_dataset
from hazardlens.orm import AnnotationRevision, AuditEvent, Sample
from tests.fixtures.formats import write_image
from tests.fixtures.labeling import make_cast

MAP = ClassMap.from_dict(
    {"mapping": {"head": "head", "helmet": "helmet", "person": "person"}, "unlabeled_classes": ["person"]},
    source="test map",
)


def _yolo_set(root: Path, n: int = 3) -> Path:
    (root / "labels").mkdir(parents=True)
    (root / "classes.txt").write_text("head\nhelmet\nperson\n", encoding="utf-8")
    for i in range(n):
        write_image(root / "images" / f"w{i}.jpg", 80, 60, seed=100 + i)
        (root / "labels" / f"w{i}.txt").write_text("0 0.5 0.5 0.2 0.2\n1 0.2 0.2 0.1 0.1\n", encoding="utf-8")
    return root


def _tags(ctx: Context) -> dict[str, list[str]]:
    with ctx.db.session() as s:
        return {x.original_name: list(x.tags or []) for x in s.scalars(select(Sample))}


def test_tag_on_new_and_already_held_samples(ctx: Context, tmp_path: Path) -> None:
    admin = make_cast(ctx).admin
    src = _yolo_set(tmp_path / "set")
    first = import_dataset(ctx, admin, "yolo", src, MAP, sector="general", approved=True, workers=1)
    assert first.stored == 3 and first.revisions == 3 and first.tag is None and first.tagged == 0
    assert all(t == [] for t in _tags(ctx).values())
    with ctx.db.session() as s:
        revisions_before = len(s.scalars(select(AnnotationRevision)).all())

    # the same export again, now with a tag: labels unchanged (no revision), every sample tagged
    again = import_dataset(
        ctx, admin, "yolo", src, MAP, sector="general", approved=True, workers=1, tag=" hardhat-workers "
    )
    assert (again.deduplicated, again.unchanged, again.revisions, again.tagged) == (3, 3, 0, 3)
    assert again.tag == "hardhat-workers" and again.as_dict()["tagged"] == 3
    assert all(t == ["hardhat-workers"] for t in _tags(ctx).values())
    with ctx.db.session() as s:
        assert len(s.scalars(select(AnnotationRevision)).all()) == revisions_before
        events = s.scalars(select(AuditEvent).where(AuditEvent.action == "sample.tag")).all()
        assert len(events) == 3
        assert all(e.before == {"tags": []} and e.after["tags"] == ["hardhat-workers"] for e in events)
        assert all(e.actor == admin.name for e in events)

    # a third time: nothing to add, nothing audited; a second tag keeps the first
    third = import_dataset(
        ctx, admin, "yolo", src, MAP, sector="general", approved=True, workers=1, tag="hardhat-workers"
    )
    assert third.tagged == 0 and third.unchanged == 3
    import_dataset(ctx, admin, "yolo", src, MAP, sector="general", approved=True, workers=1, tag="batch-2")
    assert all(t == ["hardhat-workers", "batch-2"] for t in _tags(ctx).values())

    # new samples are created with the tag (their sample.create event carries it)
    more = _yolo_set(tmp_path / "more", n=1)
    (more / "images" / "w0.jpg").unlink()
    write_image(more / "images" / "w0.jpg", 80, 60, seed=999)
    fresh = import_dataset(ctx, admin, "yolo", more, MAP, sector="general", approved=True, workers=1, tag="extra")
    assert fresh.stored == 1 and fresh.tagged == 0
    with ctx.db.session() as s:
        sample = s.get(Sample, fresh.sample_ids[0])
        assert sample is not None and sample.tags == ["extra"]


def test_one_tag_only(ctx: Context, tmp_path: Path) -> None:
    admin = make_cast(ctx).admin
    with pytest.raises(Invalid):
        import_dataset(ctx, admin, "yolo", _yolo_set(tmp_path / "set"), MAP, sector="general", approved=True, tag="a,b")
    assert _tags(ctx) == {}  # refused before anything was written


def test_cli_tag(ctx: Context, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hazardlens.cli.main import app
    from hazardlens.settings import get_settings

    src = _yolo_set(tmp_path / "set", n=2)
    cmap = tmp_path / "map.yaml"
    cmap.write_text(
        "mapping: {head: head, helmet: helmet, person: person}\nunlabeled_classes: [person]\n", encoding="utf-8"
    )
    monkeypatch.setenv("HAZARDLENS_HOME", str(ctx.settings.home))
    get_settings.cache_clear()
    try:
        args = [
            "import",
            "yolo",
            str(src),
            "--class-map",
            str(cmap),
            "--org",
            "420000",
            "--sector",
            "general",
            "--approved",
            "--json",
        ]
        res = CliRunner().invoke(app, args)
        assert res.exit_code == 0, res.output
        res = CliRunner().invoke(app, [*args, "--tag", "hardhat-workers"])
        assert res.exit_code == 0, res.output
        summary = json.loads(res.stdout.strip().splitlines()[-1])
        assert (summary["tag"], summary["tagged"], summary["unchanged"], summary["revisions"]) == (
            "hardhat-workers",
            2,
            2,
            0,
        )
        res = CliRunner().invoke(app, [a for a in args if a != "--json"] + ["--tag", "hardhat-workers"])
        assert res.exit_code == 0 and "tag 'hardhat-workers' added to samples already held" in res.output
    finally:
        get_settings.cache_clear()
    assert all(t == ["hardhat-workers"] for t in _tags(ctx).values())
