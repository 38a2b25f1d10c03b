"""Inspection records over HTTP: photos with suggested findings, idempotent retries, Chinese record
numbers, and the inspector's decisions feeding the sample library."""

from __future__ import annotations

import threading
from urllib.parse import quote

from sqlalchemy import func, select

from hazardlens.audit import history
from hazardlens.orm import AnnotationRevision, Finding, InspectionPhoto, Sample
from tests.fixtures.core import auth
from tests.fixtures.serving import photo

RECORD = "鄂应急检〔2026〕3号"


def _url(record: str = RECORD) -> str:
    return f"/v1/inspections/{quote(record, safe='')}"


def _record(api, key, *, record=RECORD, seed=1, idem=None, sector="general", **form):  # type: ignore[no-untyped-def]
    headers = {**auth(key), **({"Idempotency-Key": idem} if idem else {})}
    data = {"enterprise_id": "91420100MA4K", "sector": sector, "inspector_id": "执法证42010001", **form}
    return api.post(
        f"{_url(record)}/photos",
        data=data,
        headers=headers,
        files={"file": ("现场.jpg", photo(seed=seed), "image/jpeg")},
    )


def test_chinese_record_number_photo_with_findings(api, make_key, ctx) -> None:
    key = make_key("420000", "service")
    r = _record(api, key, item_codes="YX-04, YX-03", captured_at="2026-03-05T09:30:00+08:00")
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["record_no"] == RECORD and body["replayed"] is False
    assert body["item_codes"] == ["YX-04", "YX-03"]
    assert body["captured_at"].startswith("2026-03-05T01:30:00")
    # Only the hazard class becomes a suggested finding; the context class is a detection only.
    assert body["findings"] and {f["class_key"] for f in body["findings"]} == {"head"}
    assert all(f["status"] == "suggested" and f["finding"] and f["legal_basis"] for f in body["findings"])
    assert {d["class_key"] for d in body["detections"]} == {"head", "person"}
    confidences = [d["confidence"] for d in body["detections"]]
    assert confidences == sorted(confidences, reverse=True)
    with ctx.db.session() as s:
        sample = s.get(Sample, body["sample_id"])
        assert sample.source == "inspection" and sample.scope == "private" and sample.org_code == "420000"
        assert sample.inspection_record == RECORD and sample.enterprise_id == "91420100MA4K"
        assert [e.action for e in history(s, entity="inspection_photo", entity_id=body["photo_id"])] == [
            "inspection.photo"
        ]

    got = api.get(_url(), headers=auth(key))
    assert got.status_code == 200, got.text
    record = got.json()
    assert record["record_no"] == RECORD and len(record["photos"]) == 1
    assert [f["id"] for f in record["photos"][0]["findings"]] == [f["id"] for f in body["findings"]]
    assert record["summary"]["suggested"] == len(body["findings"])
    # Another organisation does not see the record at all.
    other = make_key("330000", "service")
    assert api.get(_url(), headers=auth(other)).status_code == 404


def test_same_idempotency_key_replays_and_stores_nothing_twice(api, make_key, ctx) -> None:
    key = make_key("420000", "inspector")
    first = _record(api, key, idem="upload-0001")
    again = _record(api, key, idem="upload-0001")
    assert first.status_code == again.status_code == 201
    assert again.headers.get("idempotent-replayed") == "true"
    a, b = first.json(), again.json()
    assert b.pop("replayed") is True and a.pop("replayed") is False
    assert a == b
    with ctx.db.session() as s:
        assert s.scalar(select(func.count()).select_from(InspectionPhoto)) == 1
        assert s.scalar(select(func.count()).select_from(Finding)) == len(a["findings"])
    # The same key for a different photo is a client bug, not a replay.
    clash = _record(api, key, idem="upload-0001", seed=9)
    assert clash.status_code == 422 and clash.json()["error"]["code"] == "idempotency_key_reused"
    # The key is per organisation: another one may use the same string.
    other = _record(api, make_key("330000", "inspector"), idem="upload-0001")
    assert other.status_code == 201 and other.json()["replayed"] is False


def test_concurrent_retries_store_one_photo(api, make_key, ctx) -> None:
    key = make_key("420000", "service")
    answers: list = []
    barrier = threading.Barrier(4)

    def send() -> None:
        barrier.wait()
        answers.append(_record(api, key, idem="flaky-network-7", seed=3))

    threads = [threading.Thread(target=send) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert [r.status_code for r in answers] == [201] * 4, [r.text for r in answers]
    bodies = [r.json() for r in answers]
    assert sum(not b.pop("replayed") for b in bodies) == 1  # exactly one call did the work
    assert all(b == bodies[0] for b in bodies)
    with ctx.db.session() as s:
        assert s.scalar(select(func.count()).select_from(InspectionPhoto)) == 1
        assert s.scalar(select(func.count()).select_from(Finding)) == len(bodies[0]["findings"])
        assert s.scalar(select(func.count()).select_from(Sample)) == 1


def test_confirmed_finding_becomes_a_submitted_feedback_revision(api, make_key, ctx) -> None:
    key = make_key("420000", "service")
    body = _record(api, key).json()
    first, second = body["findings"][0], body["findings"][1]
    ctx.invalidate_taxonomy()  # a stale cache must be refilled on the request's own session, not wait on it
    r = api.post(f"/v1/findings/{first['id']}/review", json={"decision": "confirmed"}, headers=auth(key))
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["status"] == "confirmed" and out["revision"]["status"] == "submitted"
    assert out["review"]["corrected"] is False
    with ctx.db.session() as s:
        rev = s.get(AnnotationRevision, out["revision"]["id"])
        assert rev.source == "feedback" and rev.status == "submitted" and rev.model_version == "hazardlens:1"
        assert rev.boxes == [{"class_key": "head", **first["box"]}]
        sample = s.get(Sample, body["sample_id"])
        assert sample.annotation_status == "submitted" and sample.current_revision_id == rev.id
        assert [e.action for e in history(s, entity="finding", entity_id=first["id"])] == ["finding.review"]

    # A corrected confirmation adds its box to the current revision's boxes.
    fix = {"decision": "confirmed", "class_key": "helmet", "box": {"x1": 10, "y1": 12, "x2": 50.5, "y2": 60}}
    r2 = api.post(f"/v1/findings/{second['id']}/review", json=fix, headers=auth(key))
    assert r2.status_code == 200, r2.text
    assert r2.json()["review"]["corrected"] is True and r2.json()["class_key"] == "head"  # the suggestion stays
    with ctx.db.session() as s:
        rev2 = s.get(AnnotationRevision, r2.json()["revision"]["id"])
        assert rev2.number == rev.number + 1 and rev2.parent_id == rev.id
        assert rev2.boxes == [
            {"class_key": "head", **first["box"]},
            {"class_key": "helmet", "x1": 10.0, "y1": 12.0, "x2": 50.5, "y2": 60.0},
        ]

    again = api.post(f"/v1/findings/{first['id']}/review", json={"decision": "rejected"}, headers=auth(key))
    assert again.status_code == 409 and again.json()["error"]["code"] == "already_reviewed"


def test_rejected_finding_is_kept_as_a_false_positive(api, make_key, ctx) -> None:
    key = make_key("420000", "inspector")
    body = _record(api, key).json()
    finding = body["findings"][0]
    bad = api.post(
        f"/v1/findings/{finding['id']}/review", json={"decision": "rejected", "class_key": "fire"}, headers=auth(key)
    )
    assert bad.status_code == 422
    r = api.post(f"/v1/findings/{finding['id']}/review", json={"decision": "rejected"}, headers=auth(key))
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "rejected" and r.json()["revision"] is None
    with ctx.db.session() as s:
        row = s.get(Finding, finding["id"])
        assert row.status == "rejected" and row.box == finding["box"] and row.review["decision"] == "rejected"
        sample = s.get(Sample, body["sample_id"])
        assert "hard_negative" in sample.tags and sample.annotation_status == "unlabeled"
    photos = api.get(_url(), headers=auth(key)).json()
    assert photos["summary"]["rejected"] == 1
    assert (
        api.post(f"/v1/findings/{finding['id']}/review", json={"decision": "rejected"}, headers=auth(key)).status_code
        == 409
    )


def test_tenancy_roles_and_validation(api, make_key) -> None:
    key = make_key("420000", "service")
    body = _record(api, key).json()
    fid = body["findings"][0]["id"]
    other = make_key("330000", "service")
    assert (
        api.post(f"/v1/findings/{fid}/review", json={"decision": "confirmed"}, headers=auth(other)).status_code == 404
    )
    curator = make_key("420000", "curator")
    assert _record(api, curator).status_code == 403
    assert (
        api.post(f"/v1/findings/{fid}/review", json={"decision": "confirmed"}, headers=auth(curator)).status_code == 403
    )
    assert _record(api, key, item_codes="ZZ-99").json()["error"]["code"] == "unknown_item"
    assert _record(api, key, sector="mining").json()["error"]["code"] == "unknown_sector"
    assert api.post(f"/v1/findings/{fid}/review", json={"decision": "maybe"}, headers=auth(key)).status_code == 422
    assert api.post("/v1/findings/999999/review", json={"decision": "confirmed"}, headers=auth(key)).status_code == 404
    assert api.get(_url("鄂应急检〔2026〕999号"), headers=auth(key)).status_code == 404
