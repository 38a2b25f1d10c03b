"""``hazardlens ingest`` as a user runs it: the Typer app, a home in a temporary folder."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
from sqlalchemy import select

from hazardlens.context import Context
from hazardlens.orm import Sample, User
from hazardlens.settings import Settings
from tests.fixtures.cli import run
from tests.fixtures.core import make_image, shared_data


def samples(home: Path) -> list[Sample]:
    ctx = Context(Settings(home=home))
    try:
        with ctx.db.session() as s:
            return list(s.scalars(select(Sample).order_by(Sample.id)))
    finally:
        ctx.close()


def test_folder_and_zip_then_again_adds_none(home: Path, tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    (folder / "line-2").mkdir(parents=True)
    (folder / "a.jpg").write_bytes(make_image(64, 48, seed=1))
    (folder / "line-2" / "b.png").write_bytes(make_image(64, 48, seed=2, fmt="PNG"))
    (folder / "line-2" / "broken.jpg").write_bytes(make_image(64, 48, seed=3)[:200])
    (folder / "readme.txt").write_text("not a photo")
    (folder / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    archive = tmp_path / "batch.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("x/c.webp", make_image(64, 48, seed=4, fmt="WEBP"))
        zf.writestr("x/a-copy.jpg", make_image(64, 48, seed=1))  # the same bytes as a.jpg
        zf.writestr("../../escape.jpg", make_image(64, 48, seed=5))
        zf.writestr("__MACOSX/x/._c.webp", b"\0\5\26\7")

    code, out = run(
        "ingest",
        str(folder),
        str(archive),
        "--sector",
        "dust",
        "--org",
        "420000",
        "--camera",
        "cam-1",
        "--tag",
        "积尘",
        "--tag",
        "line-2",
    )
    assert code == 1, out  # something was refused
    assert "stored 3, deduplicated 1, near-duplicates 0, refused 2, skipped 3" in out
    assert "truncated_image" in out and "unsafe_path" in out and "escape.jpg" in out
    rows = samples(home)
    assert [r.original_name for r in rows] == ["a.jpg", "line-2/b.png", "x/c.webp"]
    assert {r.format for r in rows} == {"jpeg", "png", "webp"}
    assert all(r.sector == "dust" and r.camera_id == "cam-1" and r.tags == ["积尘", "line-2"] for r in rows)
    ctx = Context(Settings(home=home))
    try:
        with ctx.db.session() as s:
            user = s.get(User, rows[0].uploader_id)
            assert user is not None and (user.name, user.role, user.org_code) == ("cli-420000", "admin", "420000")
    finally:
        ctx.close()

    code, out = run("ingest", str(folder), str(archive), "--sector", "dust", "--org", "420000", "--json")
    summary = json.loads(out.strip().splitlines()[-1])
    assert (summary["stored"], summary["deduplicated"], len(summary["refused"])) == (0, 4, 2)
    assert len(samples(home)) == 3


def test_clean_folder_exits_zero_and_bad_options_are_refused(home: Path, tmp_path: Path) -> None:
    folder = tmp_path / "ok"
    folder.mkdir()
    for i in range(3):
        (folder / f"{i}.jpg").write_bytes(make_image(32, 32, seed=10 + i))
    code, out = run("ingest", str(folder), "--sector", "general", "--org", "420000", "--scope", "shared")
    assert code == 0 and "stored 3" in out
    assert {r.scope for r in samples(home)} == {"shared"}
    code, out = run("ingest", str(folder), "--sector", "bakery", "--org", "420000")
    assert code == 2 and "unknown_sector" in out
    code, out = run("ingest", str(folder), "--sector", "general", "--org", "hubei")
    assert code == 2 and "invalid_org" in out
    code, out = run("ingest", str(tmp_path / "missing"), "--sector", "general", "--org", "420000")
    assert code == 1 and "not_found" in out


@pytest.mark.skipif(shared_data() is None, reason="shared data folder absent")
@pytest.mark.slow
def test_real_sfchd_folder(home: Path) -> None:  # pragma: no cover - minutes on a busy machine
    images = shared_data() / "sfchd-ppe" / "images"  # type: ignore[operator]
    code, out = run("ingest", str(images), "--sector", "general", "--org", "420000", "--json")
    assert code == 0 and json.loads(out.strip().splitlines()[-1])["stored"] == 656
    code, out = run("ingest", str(images), "--sector", "general", "--org", "420000", "--json")
    assert json.loads(out.strip().splitlines()[-1])["stored"] == 0
