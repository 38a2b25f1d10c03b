"""`hazardlens models ...`: list, promote, rollback, export and import through the real CLI."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hazardlens.audit import history
from hazardlens.auth import SYSTEM
from hazardlens.context import Context
from hazardlens.models.registry import get_model, register_model
from hazardlens.settings import Settings, get_settings


@pytest.fixture
def cli(ctx: Context, monkeypatch: pytest.MonkeyPatch) -> Iterator[CliRunner]:
    monkeypatch.setenv("HAZARDLENS_HOME", str(ctx.settings.home))
    get_settings.cache_clear()
    yield CliRunner()
    get_settings.cache_clear()


def _app():  # type: ignore[no-untyped-def]
    from hazardlens.cli.main import app

    return app


def _register(ctx: Context, tmp_path: Path, n: int) -> None:
    for i in range(1, n + 1):
        weights = tmp_path / f"w{i}.pt"
        weights.write_bytes(f"weights {i}".encode())
        with ctx.db.session() as s:
            register_model(
                ctx,
                s,
                SYSTEM,
                weights,
                classes=["fire", "smoke"],
                imgsz=640,
                card={"metrics": {"val": {"map50": 0.1 * i}}},
            )


def _stages(ctx: Context) -> dict[str, str]:
    with ctx.db.session() as s:
        return {v: get_model(s, "hazardlens", v).stage for v in ("1", "2")}


def test_list_promote_rollback(ctx: Context, cli: CliRunner, tmp_path: Path) -> None:
    _register(ctx, tmp_path, 2)
    res = cli.invoke(_app(), ["models", "list"])
    assert res.exit_code == 0, res.output
    assert "hazardlens\t1\tcandidate" in res.stdout and "hazardlens\t2\tcandidate" in res.stdout
    listed = json.loads(cli.invoke(_app(), ["models", "list", "--json"]).stdout)
    assert [m["version"] for m in listed] == ["1", "2"] and listed[1]["metrics"]["val"]["map50"] == 0.2

    assert cli.invoke(_app(), ["models", "promote", "hazardlens", "1"]).exit_code == 0
    assert cli.invoke(_app(), ["models", "promote", "hazardlens", "2", "--stage", "production"]).exit_code == 0
    assert _stages(ctx) == {"1": "archived", "2": "production"}
    res = cli.invoke(_app(), ["models", "rollback"])
    assert res.exit_code == 0 and "hazardlens 1 is production again" in res.output
    assert _stages(ctx) == {"1": "production", "2": "archived"}

    # the audit log names the CLI's admin user of the organisation
    with ctx.db.session() as s:
        actors = {e.actor for e in history(s, entity="model") if e.action == "model.stage"}
    assert actors == {"cli-000000"}
    # the registry serves every organisation: another organisation's admin may not change it
    res = cli.invoke(_app(), ["models", "promote", "hazardlens", "2", "--org", "420000"])
    assert res.exit_code == 2 and "system_only" in res.output
    assert _stages(ctx) == {"1": "production", "2": "archived"}

    # errors are one clear line and exit code 2
    res = cli.invoke(_app(), ["models", "promote", "hazardlens", "9"])
    assert res.exit_code == 2 and "no model hazardlens 9" in res.output
    res = cli.invoke(_app(), ["models", "promote", "hazardlens", "1", "--stage", "gold"])
    assert res.exit_code == 2 and "unknown stage" in res.output


def test_rollback_without_history_fails_clearly(ctx: Context, cli: CliRunner, tmp_path: Path) -> None:
    _register(ctx, tmp_path, 1)
    res = cli.invoke(_app(), ["models", "rollback", "hazardlens"])
    assert res.exit_code == 2 and "nothing_to_roll_back" in res.output


def test_export_then_import_on_another_installation(
    ctx: Context, cli: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _register(ctx, tmp_path, 2)
    out = tmp_path / "bundle"
    res = cli.invoke(_app(), ["models", "export", "hazardlens", "2", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert (out / "weights.pt").read_bytes() == b"weights 2"
    card = json.loads((out / "card.json").read_text())
    assert card["version"] == "2" and card["classes"] == ["fire", "smoke"]

    # the same weights cannot be registered twice in one installation
    res = cli.invoke(_app(), ["models", "import", str(out)])
    assert res.exit_code == 2 and "already registered" in res.output

    other_home = tmp_path / "other-home"
    monkeypatch.setenv("HAZARDLENS_HOME", str(other_home))
    get_settings.cache_clear()
    res = cli.invoke(_app(), ["models", "import", str(out), "--stage", "production"])
    assert res.exit_code == 0, res.output
    assert res.stdout.strip().splitlines()[-1] == "hazardlens:2"
    other = Context(Settings(home=other_home))
    try:
        with other.db.session() as s:
            mv = get_model(s, "hazardlens", "2")
            assert mv.stage == "production" and mv.card["metrics"]["val"]["map50"] == 0.2
    finally:
        other.close()

    # a tampered bundle is refused
    (out / "weights.pt").write_bytes(b"tampered")
    res = cli.invoke(_app(), ["models", "import", str(out), "--version", "3"])
    assert res.exit_code == 2 and "does not match" in res.output


def test_fresh_install_lists_the_shipped_baseline_as_production(ctx: Context, cli: CliRunner) -> None:
    from hazardlens.models.registry import BASELINE_DIR

    if not (BASELINE_DIR / "baseline.pt").is_file():
        pytest.skip("no shipped baseline in this checkout")
    card = json.loads((BASELINE_DIR / "card.json").read_text(encoding="utf-8"))
    res = cli.invoke(_app(), ["init"])
    assert res.exit_code == 0, res.output
    assert "production model=hazardlens:" in res.output.replace("\n", "")
    listed = json.loads(cli.invoke(_app(), ["models", "list", "--json"]).stdout)
    assert [(m["name"], m["stage"]) for m in listed] == [("hazardlens", "production")]
    assert listed[0]["classes"] == card["classes"]
    assert cli.invoke(_app(), ["init"]).exit_code == 0  # twice: still one model
    assert len(json.loads(cli.invoke(_app(), ["models", "list", "--json"]).stdout)) == 1
