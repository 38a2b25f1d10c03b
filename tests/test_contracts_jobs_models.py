"""The contract layer for jobs, model versions, dataset versions, imports and Label Studio: one model
per shape, the same validation over HTTP, from the CLI and in Python, and an OpenAPI document that
says what the server accepts and answers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from typer.testing import CliRunner

from hazardlens.context import Context
from hazardlens.contracts.datasets import DatasetPage, DatasetVersionDetail
from hazardlens.contracts.jobs import (
    JOB_KINDS,
    DatasetExportJobParams,
    JobPage,
    JobPublic,
    TrainJobParams,
    parse_job,
)
from hazardlens.contracts.models import ModelsResponse, ModelVersionPublic
from hazardlens.errors import Invalid
from hazardlens.settings import get_settings
from tests.fixtures.core import auth
from tests.fixtures.training import TinyDataset


@pytest.fixture
def cli(ctx: Context, monkeypatch: pytest.MonkeyPatch) -> Iterator[CliRunner]:
    monkeypatch.setenv("HAZARDLENS_HOME", str(ctx.settings.home))
    get_settings.cache_clear()
    yield CliRunner()
    get_settings.cache_clear()


def _app():  # type: ignore[no-untyped-def]
    from hazardlens.cli.main import app

    return app


def test_job_parameters_are_one_model_per_kind() -> None:
    job = parse_job("train", {"dataset": " ppe@latest ", "config": "baseline.yaml", "register": False})
    assert isinstance(job.params, TrainJobParams)
    assert job.params.model_dump(by_alias=True) == {
        "dataset": "ppe@latest",
        "config": "baseline.yaml",
        "resume": False,
        "register": False,
    }
    export = parse_job("dataset_export", DatasetExportJobParams(dataset="ppe@3", train_caps={}))
    assert export.params.model_dump(exclude_none=True) == {"dataset": "ppe@3", "format": "yolo"}
    refusals = [
        ("train", {"dataset": "ppe", "config": "baseline"}, "NAME@VERSION"),
        ("train", {"dataset": "ppe@1", "config": "../x"}, "not a path"),
        ("train", {"dataset": "ppe@1", "config": "baseline", "resume": "yes"}, "resume"),
        ("train", {"dataset": "ppe@1", "config": "baseline", "epochs": 3}, "unknown train parameter(s) epochs"),
        ("dataset_export", {"dataset": "ppe@1", "format": "voc"}, "format"),
        ("dataset_export", {"dataset": "ppe@1", "train_caps": {"fire": -1}}, "train_caps.fire"),
        ("dataset_export", {"dataset": "ppe@1", "train_caps": {"Fire!": 1}}, "train_caps"),
        ("reindex", {}, "unknown job kind"),
    ]
    for kind, params, words in refusals:
        with pytest.raises(Invalid) as err:
            parse_job(kind, params)
        assert words in err.value.message and err.value.code == "invalid_job", (kind, params, err.value.message)


def test_jobs_from_the_cli_use_the_same_contract(ctx: Context, cli: CliRunner, tiny_dataset: TinyDataset) -> None:
    org = tiny_dataset.principal.org_code
    bad = cli.invoke(
        _app(),
        [
            "jobs",
            "submit",
            "train",
            "--param",
            f"dataset={tiny_dataset.ref}",
            "--param",
            "config=tiny",
            "--param",
            "epochs=3",
            "--org",
            org,
        ],
    )
    assert bad.exit_code == 2 and "unknown train parameter(s) epochs" in bad.output
    res = cli.invoke(
        _app(),
        [
            "jobs",
            "submit",
            "dataset_export",
            "--params",
            json.dumps({"dataset": tiny_dataset.ref}),
            "--org",
            org,
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    job = JobPublic.model_validate_json(res.stdout)
    assert job.status == "queued" and job.params == {"dataset": tiny_dataset.ref, "format": "yolo"}

    worked = cli.invoke(_app(), ["jobs", "work"])
    assert worked.exit_code == 0, worked.output
    shown = JobPublic.model_validate_json(cli.invoke(_app(), ["jobs", "show", str(job.id), "--json"]).stdout)
    assert shown.status == "completed" and shown.result and shown.result["format"] == "yolo" and shown.log
    page = JobPage.model_validate_json(cli.invoke(_app(), ["jobs", "list", "--json"]).stdout)
    assert [j.id for j in page.items] == [job.id]


def test_typed_answers_of_jobs_models_and_datasets(
    ctx: Context, client: Any, make_key: Any, tiny_dataset: TinyDataset
) -> None:
    admin = make_key("420000", "admin")
    params = {"dataset": tiny_dataset.ref, "format": "coco", "train_caps": {"fire": 2}}
    r = client.post("/v1/jobs", json={"kind": "dataset_export", "params": params}, headers=auth(admin))
    assert r.status_code == 202, r.text
    job = JobPublic.model_validate(r.json())
    assert job.params == {"dataset": tiny_dataset.ref, "format": "coco", "train_caps": {"fire": 2}}
    r = client.post(
        "/v1/jobs",
        json={"kind": "dataset_export", "params": {"dataset": tiny_dataset.ref, "format": "voc"}},
        headers=auth(admin),
    )
    assert r.status_code == 422 and "format" in r.json()["error"]["message"]
    assert client.get("/v1/jobs/0", headers=auth(admin)).status_code == 422
    assert client.get("/v1/jobs?kind=reindex", headers=auth(admin)).status_code == 422
    JobPage.model_validate(client.get("/v1/jobs", headers=auth(admin)).json())

    models = ModelsResponse.model_validate(client.get("/v1/models", headers=auth(admin)).json())
    assert models.loaded == [] and models.serving is None
    bad_stage = client.post("/v1/models/hazardlens/1/promote", json={"stage": "gold"}, headers=auth(admin))
    assert bad_stage.status_code == 422

    name = tiny_dataset.ref.split("@")[0]
    page = DatasetPage.model_validate(client.get("/v1/datasets", headers=auth(admin)).json())
    assert [d.id for d in page.datasets] == [tiny_dataset.version_id]
    one = DatasetVersionDetail.model_validate(client.get(f"/v1/datasets/{name}/latest", headers=auth(admin)).json())
    assert one.manifest.verified and one.stats.images == one.manifest.items
    again = client.post(
        "/v1/datasets", json={"name": name, "ratios": [0.5, 0.25, 0.25], "seed": 0}, headers=auth(admin)
    )
    assert again.status_code == 200, again.text  # the same inputs made this version: it is returned
    assert client.post("/v1/datasets", json={"name": "a/b"}, headers=auth(admin)).status_code == 422


def test_model_versions_keep_their_card_as_registered(ctx: Context, tmp_path: Any) -> None:
    from hazardlens.auth import SYSTEM
    from hazardlens.models.registry import model_dict, model_public, register_model

    weights = tmp_path / "w.pt"
    weights.write_bytes(b"weights")
    with ctx.db.session() as s:
        mv = register_model(
            ctx,
            s,
            SYSTEM,
            weights,
            classes=["fire"],
            imgsz=640,
            card={"metrics": {"val": {"map50": 0.5}}, "notes": "kept"},
        )
        public, plain = model_public(mv), model_dict(mv)
    assert isinstance(public, ModelVersionPublic) and public.card is not None
    assert public.metrics == {"val": {"map50": 0.5}} and plain["card"]["notes"] == "kept"
    assert "kind" not in plain["card"]  # keys a card does not have are not invented
    assert set(plain) == {
        "id",
        "name",
        "version",
        "stage",
        "classes",
        "imgsz",
        "weights_sha256",
        "dataset_version",
        "metrics",
        "card",
        "created_at",
        "stage_changed_at",
    }


def test_the_document_describes_bodies_answers_and_errors(client: Any) -> None:
    doc = client.app.openapi()
    paths = doc["paths"]
    schemas = doc["components"]["schemas"]

    body = paths["/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["discriminator"]["propertyName"] == "kind"
    assert set(body["discriminator"]["mapping"]) == set(JOB_KINDS)
    assert schemas["TrainJobParams"]["additionalProperties"] is False
    assert "register" in schemas["TrainJobParams"]["properties"]
    assert schemas["DatasetExportJobParams"]["properties"]["format"]["enum"] == ["yolo", "coco"]

    typed = {
        ("/v1/jobs", "post", "202"): "JobPublic",
        ("/v1/jobs", "get", "200"): "JobPage",
        ("/v1/jobs/{job_id}", "get", "200"): "JobPublic",
        ("/v1/models", "get", "200"): "ModelsResponse",
        ("/v1/models/{name}/{version}/promote", "post", "200"): "ModelVersionPublic",
        ("/v1/models/{name}/rollback", "post", "200"): "ModelVersionPublic",
        ("/v1/datasets", "post", "201"): "DatasetVersionPublic",
        ("/v1/datasets", "post", "200"): "DatasetVersionPublic",
        ("/v1/datasets", "get", "200"): "DatasetPage",
        ("/v1/datasets/{name}/{version}", "get", "200"): "DatasetVersionDetail",
        ("/v1/imports", "post", "200"): "ImportSummaryPublic",
        ("/v1/suggestions/request", "post", "200"): "Suggestions",
        ("/labelstudio/health", "get", "200"): "LsHealth",
        ("/labelstudio/setup", "post", "200"): "LsSetup",
        ("/labelstudio/predict", "post", "200"): "LsPredictions",
    }
    for (path, method, status), name in typed.items():
        schema = paths[path][method]["responses"][status]["content"]["application/json"]["schema"]
        assert schema["$ref"].endswith(f"/{name}"), (path, method, status, schema)
        for code, answer in paths[path][method]["responses"].items():
            if code.startswith(("4", "5")):
                assert answer["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorResponse"), (path, code)

    export = paths["/v1/exports"]["post"]["responses"]
    assert "application/zip" in export["200"]["content"] and "X-Export-Images" in export["200"]["headers"]
    assert {"401", "403", "422"} <= set(export)
    imports = paths["/v1/imports"]["post"]
    assert {"400", "401", "403", "404", "413", "422"} <= set(imports["responses"])
    form = imports["requestBody"]["content"]["multipart/form-data"]["schema"]
    form = schemas[form["$ref"].rsplit("/", 1)[1]] if "$ref" in form else form
    assert form["properties"]["format"]["enum"] == ["coco", "yolo", "voc", "labelstudio", "cvat"]
    assert form["properties"]["scope"]["enum"] == ["private", "shared"]
    assert schemas["ExportIn"]["properties"]["format"]["enum"] == ["yolo", "coco", "labelstudio", "cvat", "voc"]


def test_the_python_client_answers_the_contract_models(
    ctx: Context, client: Any, make_key: Any, tiny_dataset: TinyDataset
) -> None:
    from hazardlens.serving.client import HazardLensClient, HazardLensError

    admin = make_key("420000", "admin")
    with HazardLensClient("http://testserver", admin, transport=client._transport, retries=0) as hl:
        job = hl.submit_job("dataset_export", DatasetExportJobParams(dataset=tiny_dataset.ref))
        assert isinstance(job, JobPublic) and job.status == "queued"
        client.app.state.job_runner.run_pending()
        done = hl.wait_for_job(job.id, timeout=5, poll_s=0.01)
        assert done.status == "completed" and done.result and done.result["dataset_id"] == tiny_dataset.version_id
        assert [j.id for j in hl.list_jobs(status="completed").items] == [job.id]
        with pytest.raises(HazardLensError) as err:
            hl.submit_job("train", {"dataset": tiny_dataset.ref, "config": "nope"})
        assert err.value.status == 422 and "unknown training config" in err.value.message
        assert isinstance(hl.list_models(), ModelsResponse)
        name = tiny_dataset.ref.split("@")[0]
        assert hl.get_dataset(name).id == tiny_dataset.version_id
        assert [d.name for d in hl.list_datasets(name).datasets] == [name]
