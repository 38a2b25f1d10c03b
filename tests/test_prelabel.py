"""Model-assisted pre-labelling over HTTP: suggestions on a sample and on the queue, and the Label
Studio ML backend protocol (Basic auth with the API key as password)."""

from __future__ import annotations

import base64

from hazardlens.auth import ensure_user
from hazardlens.datasets.library import IngestMeta, ingest
from tests.fixtures.core import auth
from tests.fixtures.serving import photo


def _sample(ctx, org: str = "420000", seed: int = 3) -> int:  # type: ignore[no-untyped-def]
    from hazardlens.auth import Principal

    with ctx.db.session() as s:
        user = ensure_user(s, org, f"uploader-{org}", "curator")
        who = Principal(user.id, user.name, org, "curator")
        result = ingest(ctx, s, who, photo(seed=seed), IngestMeta(sector="general"))
        return result.sample.id


def test_suggestions_for_a_sample_and_for_my_queue(api, ctx, make_key) -> None:  # type: ignore[no-untyped-def]
    curator = make_key("420000", "curator", "pre-curator")
    reviewer = make_key("420000", "reviewer", "pre-reviewer")
    first, second = _sample(ctx, seed=3), _sample(ctx, seed=4)

    r = api.post("/v1/suggestions/request", json={"sample_ids": [first], "conf": 0.0}, headers=auth(curator))
    assert r.status_code == 200, r.text
    [item] = r.json()["items"]
    assert item["sample_id"] == first and item["model_version"] == "1" and item["boxes"]
    listed = api.get(f"/v1/samples/{first}/suggestions", headers=auth(curator)).json()["items"]
    assert [s["id"] for s in listed] == [item["id"]]

    assigned = api.post(
        "/v1/labeling/assign", json={"filters": {}, "assignee": "pre-curator", "limit": 10}, headers=auth(reviewer)
    )
    assert assigned.status_code == 200, assigned.text
    queued = api.post("/v1/suggestions/request", json={"queue": True, "conf": 0.0}, headers=auth(curator))
    assert queued.status_code == 200, queued.text
    assert {s["sample_id"] for s in queued.json()["items"]} == {first, second}


def test_suggestions_refuse_other_organisations_and_inspectors(api, ctx, make_key) -> None:  # type: ignore[no-untyped-def]
    theirs = _sample(ctx, org="310000", seed=5)
    curator = make_key("420000", "curator", "pre-curator-2")
    r = api.post("/v1/suggestions/request", json={"sample_ids": [theirs]}, headers=auth(curator))
    assert r.status_code == 404 and r.json()["error"]["code"]
    inspector = make_key("420000", "inspector", "pre-inspector")
    r = api.post("/v1/suggestions/request", json={"sample_ids": [theirs]}, headers=auth(inspector))
    assert r.status_code == 403


def test_label_studio_ml_backend_protocol(api, ctx, make_key) -> None:  # type: ignore[no-untyped-def]
    key = make_key("420000", "curator", "ls-curator")
    basic = {"Authorization": "Basic " + base64.b64encode(f"labelstudio:{key}".encode()).decode()}
    sample = _sample(ctx, seed=6)

    health = api.get("/labelstudio/health")
    assert health.status_code == 200 and health.json()["status"] == "UP"
    setup = api.post("/labelstudio/setup", json={"project": 1, "schema": "<View/>"}, headers=basic)
    assert setup.status_code == 200 and setup.json()["model_version"] == "1"

    inline = "data:image/jpeg;base64," + base64.b64encode(photo(seed=7)).decode()
    tasks = [{"id": 1, "data": {"image": f"/data/x/v1/samples/{sample}/image"}}, {"id": 2, "data": {"image": inline}}]
    r = api.post("/labelstudio/predict", json={"tasks": tasks}, headers=basic)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert len(results) == 2
    for prediction in results:
        assert prediction["model_version"] == "1"
        for res in prediction["result"]:
            v = res["value"]
            assert res["type"] == "rectanglelabels" and res["original_width"] == 160
            assert 0 <= v["x"] <= 100 and 0 <= v["y"] <= 100 and v["x"] + v["width"] <= 100.0001
            assert v["rectanglelabels"][0] in {"person", "head"}

    unresolvable = api.post(
        "/labelstudio/predict", json={"tasks": [{"id": 3, "data": {"image": "http://x/y.jpg"}}]}, headers=basic
    )
    assert unresolvable.status_code == 422
    assert unresolvable.json()["error"]["code"] == "unresolvable_image"
    assert api.post("/labelstudio/predict", json={"tasks": tasks}).status_code == 401


def test_ids_beyond_the_database_range_are_client_errors(api, make_key) -> None:  # type: ignore[no-untyped-def]
    key = make_key("420000", "curator", "range-curator")
    huge = 2**80
    assert api.get(f"/v1/samples/{huge}", headers=auth(key)).status_code == 404
    r = api.post(f"/v1/suggestions/{huge}/dismiss", headers=auth(key))
    assert r.status_code in (404, 422) and r.json()["error"]["code"]
