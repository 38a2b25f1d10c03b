"""Dataset versions over HTTP (/v1/datasets) and from the shell (hazardlens datasets / augment)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from PIL import Image

from hazardlens.context import Context
from hazardlens.settings import Settings, config_path
from tests.fixtures.cli import run
from tests.fixtures.core import auth
from tests.fixtures.dataset_versions import add_sample, admin_principal, box


def _seed(ctx: Context, n: int = 4) -> None:
    admin = admin_principal(ctx)
    for i in range(n):
        add_sample(ctx, admin, seed=i, camera=f"cam{i}", boxes=[box("fire" if i % 2 else "smoke", 5, 5, 40, 30)])


def test_api_create_list_get(ctx: Context, client, make_key: Callable[..., str]) -> None:  # type: ignore[no-untyped-def]
    _seed(ctx)
    curator = make_key("420000", "curator")
    body = {"name": "fs", "filters": {"sector": "general"}, "ratios": [0.5, 0.25, 0.25], "seed": 3}
    r = client.post("/v1/datasets", json=body, headers=auth(curator))
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["classes"] == ["fire", "smoke"] and created["stats"]["images"] == 4
    assert created["params"]["filters"] == {"sector": "general"} and created["number"] == 1
    again = client.post("/v1/datasets", json=body, headers=auth(curator))
    assert again.status_code == 200 and again.json()["id"] == created["id"]

    listed = client.get("/v1/datasets", headers=auth(curator)).json()["datasets"]
    assert [d["id"] for d in listed] == [created["id"]]
    one = client.get(f"/v1/datasets/fs/{created['id'][:8]}", headers=auth(curator))
    assert one.status_code == 200
    assert one.json()["manifest"]["items"] == 4 and one.json()["stats"] == created["stats"]
    assert client.get("/v1/datasets/fs/latest", headers=auth(curator)).json()["id"] == created["id"]

    inspector = make_key("420000", "inspector")
    assert client.post("/v1/datasets", json=body, headers=auth(inspector)).status_code == 403
    other = make_key("310000", "curator")
    missing = client.get("/v1/datasets/fs/latest", headers=auth(other))
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "dataset_not_found"
    assert client.get("/v1/datasets", headers=auth(other)).json()["datasets"] == []
    bad = client.post("/v1/datasets", json={**body, "ratios": [0.9, 0.9, 0.1]}, headers=auth(curator))
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_ratios"


def test_cli_create_export_list_preview(home: Path, tmp_path: Path) -> None:
    ctx = Context(Settings(home=home))
    ctx.init()
    _seed(ctx, 6)
    ctx.close()

    code, out = run(
        "datasets",
        "create",
        "fs",
        "--org",
        "420000",
        "--split",
        "0.5,0.25,0.25",
        "--seed",
        "2",
        "--classes",
        "fire,smoke",
        "--json",
    )
    assert code == 0, out
    first = json.loads(out.strip().splitlines()[-1])
    assert first["created"] and first["classes"] == ["fire", "smoke"] and first["stats"]["images"] == 6
    code, out = run(
        "datasets",
        "create",
        "fs",
        "--org",
        "420000",
        "--split",
        "0.5,0.25,0.25",
        "--seed",
        "2",
        "--classes",
        "fire,smoke",
        "--json",
    )
    assert json.loads(out.strip().splitlines()[-1]) == {**first, "created": False}

    code, out = run("datasets", "list", "--json")
    assert code == 0 and [d["id"] for d in json.loads(out)] == [first["id"]]

    dest = tmp_path / "export"
    code, out = run("datasets", "export", "fs@1", "--format", "yolo", "--out", str(dest), "--cap", "fire=1")
    assert code == 0, out
    assert (dest / "data.yaml").is_file() and (dest / "stats.json").is_file()
    assert json.loads((dest / "stats.json").read_text())["train_caps"] == {"fire": 1}

    code, out = run("datasets", "export", "fs@latest", "--format", "voc", "--out", str(tmp_path / "x"))
    assert code == 2 and "invalid_format" in out

    sheet = tmp_path / "sheet.png"
    code, out = run(
        "augment",
        "preview",
        "--config",
        str(config_path("augment/inspection.yaml")),
        "--dataset",
        "fs@latest",
        "--out",
        str(sheet),
        "--n",
        "4",
    )
    assert code == 0, out
    with Image.open(sheet) as im:
        assert im.size == (512, 512)  # 2 x 2 tiles of 256

    code, out = run("datasets", "create", "none", "--org", "420000", "--sector", "steel")
    assert code == 2 and "empty_dataset" in out
