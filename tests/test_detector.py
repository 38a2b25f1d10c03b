"""Every caller of detection goes through the one Detector (hazardlens.detector), and every one of them
filters classes with the one taxonomy: approved provincial additions are suggested everywhere, pending
ones nowhere (detect, suggestions, the Label Studio backend, inspections)."""

from __future__ import annotations

import base64
import inspect
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest

from hazardlens.context import Context
from hazardlens.contracts.detections import Detection, detection_public, detections_public
from hazardlens.detections import Box
from hazardlens.detector import Detector, detect_relevant, detection_taxonomy
from hazardlens.labeling import inspections
from hazardlens.labeling.ml_backend import predict_tasks
from hazardlens.labeling.suggestions import list_suggestions, request_suggestions, suggest_for_samples
from hazardlens.orm import TaxonomyAddition
from tests.fixtures.core import auth, make_image
from tests.fixtures.detector import FakeDetector, Row
from tests.fixtures.labeling import Cast, add_sample, make_cast

APPROVED, PENDING = "oil_leak", "oil_puddle"


def _addition(key: str, status: str) -> TaxonomyAddition:
    payload = {
        "key": key,
        "name_zh": "设备漏油",
        "name_en": "oil leak",
        "sector": "general",
        "inspection_items": [],
        "severity": "medium",
        "finding_zh": "设备漏油",
        "is_hazard": True,
        "legal_basis": ["GB 30871-2022 4.1"],
    }
    return TaxonomyAddition(kind="class", key=key, org_code="420000", payload=payload, status=status)


def _script(w: int, h: int) -> list[Row]:
    """A bare head, an approved provincial class, a pending one, and a key the taxonomy does not know."""
    return [
        ("head", 0.1 * w, 0.1 * h, 0.3 * w, 0.4 * h, 0.9),
        (APPROVED, 0.5 * w, 0.5 * h, 0.9 * w, 0.9 * h, 0.8),
        (PENDING, 0.2 * w, 0.6 * h, 0.4 * w, 0.9 * h, 0.8),
        ("not_a_class", 0, 0, 10, 10, 0.7),
    ]


@pytest.fixture
def env(ctx: Context) -> tuple[Context, Cast]:
    cast = make_cast(ctx)  # creates organisation 420000, which additions belong to
    with ctx.db.session() as s:
        s.add_all([_addition(APPROVED, "approved"), _addition(PENDING, "pending")])
    ctx.invalidate_taxonomy()
    return ctx, cast


def test_the_manager_and_the_fake_take_the_protocols_arguments() -> None:
    from hazardlens.models.manager import ModelManager

    for name in ("detect", "detect_many"):
        want = inspect.signature(getattr(Detector, name)).parameters
        for impl in (ModelManager, FakeDetector):
            got = inspect.signature(getattr(impl, name)).parameters
            assert list(got) == list(want), (impl, name)
            assert all((got[p].kind, got[p].default) == (want[p].kind, want[p].default) for p in want), (impl, name)


def test_one_public_form_of_a_detection(env: tuple[Context, Cast]) -> None:
    ctx, _ = env
    tax = detection_taxonomy(ctx)
    d = detection_public(tax, Box(APPROVED, 1.04, 2.06, 30.0, 40.0, 0.812345))
    assert isinstance(d, Detection) and d.name_zh == "设备漏油" and d.is_hazard and d.severity == "medium"
    assert d.box.model_dump() == {"x1": 1.0, "y1": 2.1, "x2": 30.0, "y2": 40.0} and d.confidence == 0.8123
    unknown = detections_public(tax, [Box("not_a_class", 0, 0, 1, 1, None)])[0]
    assert unknown.name_en == "not_a_class" and unknown.legal_basis == [] and not unknown.is_hazard


def test_labeling_callers_take_the_detector_and_share_the_taxonomy(env: tuple[Context, Cast]) -> None:
    ctx, cast = env
    sid = add_sample(ctx, width=200, height=100)
    fake = FakeDetector(_script)
    kept = {"head", APPROVED}

    assert {b.class_key for b in detect_relevant(ctx, fake, make_image(64, 48, seed=1)).detections} == kept
    with ctx.db.session() as s:
        [row] = request_suggestions(ctx, s, cast.curator, [sid], fake, conf=0.5, version="7")
    assert {b["class_key"] for b in row.boxes} == kept and row.model_version == "7"
    [item] = suggest_for_samples(ctx, cast.curator, [sid], fake)
    assert {b["class_key"] for b in item["boxes"]} == kept
    answer = predict_tasks(ctx, cast.curator, [{"id": 1, "data": {"sample_id": sid}}], fake)
    [prediction] = answer["results"]
    assert {r["value"]["rectanglelabels"][0] for r in prediction["result"]} == kept
    assert prediction["model_version"] == "fake-1"

    meta = inspections.PhotoMeta(enterprise_id="91420100MA4K", sector="general")
    with ctx.db.session() as s:
        out = inspections.record_photo(
            ctx,
            s,
            cast.inspector,
            "鄂应急检〔2026〕9号",
            make_image(320, 240, seed=2),
            meta,
            None,
            fake,
            conf=0.3,
            timeout=5.0,
            tiles=(640, 0.2),
        )
    assert {d["class_key"] for d in out["detections"]} == kept
    assert {f["class_key"] for f in out["findings"]} == kept  # both are hazard classes
    assert out["model"] == {"name": "fake", "version": "fake-1"} and out["image"] == {"width": 320, "height": 240}

    limit = ctx.settings.max_pixels
    assert [(c["conf"], c["version"], c["max_pixels"]) for c in fake.calls[:4]] == [
        (0.25, None, limit),
        (0.5, "7", limit),
        (0.25, None, limit),
        (0.25, None, limit),
    ]
    assert fake.calls[4] == {
        "bytes": fake.calls[4]["bytes"],
        "version": None,
        "conf": 0.3,
        "max_pixels": limit,
        "timeout": 5.0,
        "tiles": (640, 0.2),
    }
    with ctx.db.session() as s:
        assert len(list_suggestions(s, cast.curator, sid)) == 2


@pytest.fixture
def faked_api(env: tuple[Context, Cast], serving_app: Any) -> Iterator[tuple[Any, FakeDetector]]:
    """An app whose model manager is replaced by a FakeDetector: every route must take it as it is."""
    from fastapi.testclient import TestClient

    fake = FakeDetector(_script)
    with TestClient(serving_app()) as client:
        manager, client.app.state.models = client.app.state.models, fake
        try:
            yield client, fake
        finally:
            client.app.state.models = manager


def test_detect_and_prelabel_agree_on_provincial_additions(
    env: tuple[Context, Cast], faked_api: Any, make_key: Any
) -> None:
    ctx, _ = env
    api, fake = faked_api
    kept = {"head", APPROVED}
    photo = make_image(320, 240, seed=3)
    service, curator = make_key("420000", "service"), make_key("420000", "curator")

    detected = api.post("/v1/detect", headers=auth(service), files={"file": ("a.jpg", photo, "image/jpeg")})
    assert detected.status_code == 200, detected.text
    assert {d["class_key"] for d in detected.json()["detections"]} == kept
    approved = next(d for d in detected.json()["detections"] if d["class_key"] == APPROVED)
    assert approved["name_zh"] == "设备漏油" and approved["legal_basis"] == ["GB 30871-2022 4.1"]

    batch = api.post("/v1/detect/batch", headers=auth(service), files=[("files", ("a.jpg", photo, "image/jpeg"))])
    assert batch.status_code == 200, batch.text
    assert {d["class_key"] for d in batch.json()["results"][0]["detections"]} == kept

    sid = add_sample(ctx, sector="general")
    suggested = api.post("/v1/suggestions/request", json={"sample_ids": [sid], "conf": 0.1}, headers=auth(curator))
    assert suggested.status_code == 200, suggested.text
    assert {b["class_key"] for b in suggested.json()["items"][0]["boxes"]} == kept

    basic = {"Authorization": "Basic " + base64.b64encode(f"labelstudio:{curator}".encode()).decode()}
    inline = "data:image/jpeg;base64," + base64.b64encode(photo).decode()
    ls = api.post("/labelstudio/predict", json={"tasks": [{"id": 1, "data": {"image": inline}}]}, headers=basic)
    assert ls.status_code == 200, ls.text
    assert {r["value"]["rectanglelabels"][0] for r in ls.json()["results"][0]["result"]} == kept

    url = f"/v1/inspections/{quote('鄂应急检〔2026〕8号', safe='')}/photos"
    recorded = api.post(
        url,
        headers=auth(service),
        data={"enterprise_id": "91420100MA4K", "sector": "general"},
        files={"file": ("现场.jpg", make_image(320, 240, seed=4), "image/jpeg")},
    )
    assert recorded.status_code == 201, recorded.text
    assert {d["class_key"] for d in recorded.json()["detections"]} == kept

    assert len(fake.calls) == 5  # every route asked the one detector it was given
    assert fake.calls[2]["conf"] == 0.1 and fake.calls[4]["timeout"] == ctx.settings.request_timeout_s
