"""The inspector's workbench over HTTP: the list of inspection records (filters, keyset pages,
tenancy), the inspector's reason on a rejected finding, and the organisation's capture settings.
The list's query also runs on PostgreSQL (catalogue_ctx)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from sqlalchemy import select

from hazardlens.audit import history
from hazardlens.auth import Principal
from hazardlens.context import Context
from hazardlens.contracts.inspections import RecordFilter
from hazardlens.labeling import inspection_records, inspections
from hazardlens.orm import Finding, Sample
from tests.fixtures.core import auth, make_image
from tests.fixtures.detector import FakeDetector

A, B, C = "鄂应急检〔2026〕1号", "鄂应急检〔2026〕2号", "鄂应急检〔2026〕3号"


def _script(width: int, height: int) -> list[tuple[str, float, float, float, float, float]]:
    """Two hazards on every photo: fire and smoke, in the photo's own pixels."""
    return [
        ("fire", width * 0.1, height * 0.1, width * 0.4, height * 0.5, 0.91),
        ("smoke", width * 0.5, height * 0.2, width * 0.9, height * 0.6, 0.72),
    ]


@pytest.fixture
def faked(ctx: Context, serving_app: Any) -> Iterator[Any]:
    """The real app whose model manager is a scripted detector (deterministic findings)."""
    from fastapi.testclient import TestClient

    with TestClient(serving_app()) as client:
        manager, client.app.state.models = client.app.state.models, FakeDetector(_script)
        try:
            yield client
        finally:
            client.app.state.models = manager


def _photo(api: Any, key: str, record: str, seed: int, **form: str) -> dict[str, Any]:
    data = {"enterprise_id": "91420100MA4K", "sector": "general", "inspector_id": "42010001", **form}
    r = api.post(
        f"/v1/inspections/{quote(record, safe='')}/photos",
        data=data,
        headers=auth(key),
        files={"file": ("现场.jpg", make_image(320, 240, seed=seed), "image/jpeg")},
    )
    assert r.status_code == 201, r.text
    return r.json()


def _records(api: Any, key: str, **query: Any) -> list[str]:
    r = api.get("/v1/inspections", params=query, headers=auth(key))
    assert r.status_code == 200, r.text
    return [item["record_no"] for item in r.json()["items"]]


def test_records_are_listed_filtered_and_paged_within_the_organisation(faked: Any, make_key: Any) -> None:
    api = faked
    inspector, other = make_key("420000", "inspector"), make_key("330000", "inspector")
    a = _photo(api, inspector, A, 1, captured_at="2026-03-01T09:00:00+08:00")
    _photo(api, inspector, A, 2, captured_at="2026-03-01T10:00:00+08:00", enterprise_id="91420100XY")
    _photo(api, inspector, B, 3, sector="dust", inspector_id="42010002", captured_at="2026-03-08T09:00:00+08:00")
    _photo(api, inspector, C, 4, captured_at="2026-04-02T09:00:00+08:00")
    _photo(api, other, "浙应急检〔2026〕9号", 5)

    page = api.get("/v1/inspections", headers=auth(inspector)).json()
    assert [i["record_no"] for i in page["items"]] == [C, B, A] and page["next_cursor"] is None
    first = page["items"][2]
    assert first["photos"] == 2 and first["enterprise_ids"] == ["91420100MA4K", "91420100XY"]
    assert first["sectors"] == ["general"] and first["inspector_ids"] == ["42010001"]
    assert first["first_at"].startswith("2026-03-01T01:00:00") and first["last_at"].startswith("2026-03-01T02:00")
    assert first["cover_sample_id"] == a["sample_id"]
    assert first["findings"] == {"suggested": 4, "confirmed": 0, "rejected": 0}

    assert _records(api, inspector, enterprise="91420100XY") == [A]  # any photo of the record
    assert _records(api, inspector, sector="dust") == [B]
    assert _records(api, inspector, inspector="42010002") == [B]
    assert _records(api, inspector, date_from="2026-03-01", date_to="2026-03-08") == [B, A]  # whole last day
    assert _records(api, inspector, date_from="2026-04-01") == [C]
    assert _records(api, inspector, record="〔2026〕2") == [B]
    assert _records(api, inspector, record="%") == []  # LIKE wildcards are literal

    # Deciding every finding of B closes it.
    for f in api.get(f"/v1/inspections/{quote(B, safe='')}", headers=auth(inspector)).json()["photos"][0]["findings"]:
        r = api.post(f"/v1/findings/{f['id']}/review", json={"decision": "confirmed"}, headers=auth(inspector))
        assert r.status_code == 200, r.text
    assert _records(api, inspector, open="true") == [C, A]
    assert _records(api, inspector, open="false") == [B]

    # Keyset pages of one: every record once, newest first.
    seen, cursor = [], None
    while True:
        body = api.get(
            "/v1/inspections", params={"limit": 1, **({"cursor": cursor} if cursor else {})}, headers=auth(inspector)
        ).json()
        seen += [i["record_no"] for i in body["items"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == [C, B, A]

    # The other organisation lists only its own; a curator may not read inspection records.
    assert _records(api, other) == ["浙应急检〔2026〕9号"]
    assert api.get("/v1/inspections", headers=auth(make_key("420000", "curator"))).status_code == 403
    bad_date = api.get("/v1/inspections", params={"date_from": "2026-13-01"}, headers=auth(inspector))
    assert bad_date.status_code == 422 and bad_date.json()["error"]["code"] == "invalid_date"
    bad_cursor = api.get("/v1/inspections", params={"cursor": "czE6MTIz" + "x"}, headers=auth(inspector))
    assert bad_cursor.status_code == 422


def test_a_rejection_keeps_the_inspectors_reason(faked: Any, make_key: Any, ctx: Context) -> None:
    api = faked
    inspector = make_key("420000", "inspector")
    fire, smoke = _photo(api, inspector, A, 7)["findings"]
    r = api.post(
        f"/v1/findings/{smoke['id']}/review",
        json={"decision": "rejected", "reason": "  水蒸气，不是烟雾  "},
        headers=auth(inspector),
    )
    assert r.status_code == 200, r.text
    assert r.json()["review"]["reason"] == "水蒸气，不是烟雾" and r.json()["status"] == "rejected"
    too_long = api.post(
        f"/v1/findings/{fire['id']}/review",
        json={"decision": "rejected", "reason": "x" * 2001},
        headers=auth(inspector),
    )
    assert too_long.status_code == 422
    with ctx.db.session() as s:
        assert s.get(Finding, fire["id"]).status == "suggested"  # nothing changed
        assert "hard_negative" in s.get(Sample, smoke["sample_id"]).tags  # the library hears it as before
        (event,) = [e for e in history(s, entity="finding", entity_id=smoke["id"]) if e.action == "finding.review"]
        assert event.after["review"]["reason"] == "水蒸气，不是烟雾"
    record = api.get(f"/v1/inspections/{quote(A, safe='')}", headers=auth(inspector)).json()
    assert record["photos"][0]["sector"] == "general"


def test_capture_settings_are_the_organisations_and_only_its_admin_changes_them(
    faked: Any, make_key: Any, ctx: Context
) -> None:
    api = faked
    inspector, admin = make_key("420000", "inspector"), make_key("420000", "admin")
    other_admin = make_key("330000", "admin")
    default = api.get("/v1/organisation/capture", headers=auth(inspector)).json()
    assert default == {
        "org_code": "420000",
        "keep_original_photos": False,
        "photo_max_side": None,
        "detect_side": inspection_records.DEFAULT_DETECT_SIDE,  # no production model in this catalogue
        "upload_max_side": inspection_records.DEFAULT_DETECT_SIDE,
    }
    refused = api.put("/v1/organisation/capture", json={"keep_original_photos": True}, headers=auth(inspector))
    assert refused.status_code == 403

    kept = api.put("/v1/organisation/capture", json={"keep_original_photos": True}, headers=auth(admin))
    assert kept.status_code == 200, kept.text
    assert kept.json()["keep_original_photos"] is True and kept.json()["upload_max_side"] is None
    own = api.put(
        "/v1/organisation/capture",
        json={"keep_original_photos": False, "photo_max_side": 2048},
        headers=auth(admin),
    ).json()
    assert own["upload_max_side"] == 2048 and own["photo_max_side"] == 2048
    unchanged = api.put("/v1/organisation/capture", json={}, headers=auth(admin)).json()
    assert unchanged == own
    assert api.put("/v1/organisation/capture", json={"photo_max_side": 100}, headers=auth(admin)).status_code == 422
    assert api.put("/v1/organisation/capture", json={"shrink": True}, headers=auth(admin)).status_code == 422
    reset = api.put("/v1/organisation/capture", json={"photo_max_side": None}, headers=auth(admin)).json()
    assert reset["photo_max_side"] is None and reset["upload_max_side"] == inspection_records.DEFAULT_DETECT_SIDE

    # Another organisation's administrator changes only their own.
    api.put("/v1/organisation/capture", json={"keep_original_photos": True}, headers=auth(other_admin))
    assert api.get("/v1/organisation/capture", headers=auth(inspector)).json()["keep_original_photos"] is False
    with ctx.db.session() as s:
        events = [
            e for e in history(s, entity="organisation", entity_id="420000") if e.action == "organisation.settings"
        ]
        assert [e.after for e in events] == [
            {"keep_original_photos": True},
            {"keep_original_photos": False, "photo_max_side": 2048},
            {"keep_original_photos": False},
        ]


@pytest.mark.postgres
def test_the_record_query_on_both_catalogues(catalogue_ctx: Context) -> None:
    """The grouped keyset query (HAVING min(id) < cursor, a correlated EXISTS) on SQLite and PostgreSQL."""
    from hazardlens.auth import ensure_org

    ctx = catalogue_ctx
    with ctx.db.session() as s:
        ensure_org(s, "420000")
    inspector = Principal(user_id=None, name="inspector", org_code="420000", role="inspector")
    detector = FakeDetector(_script)
    for i, record in enumerate([A, A, B, C]):
        with ctx.db.session() as s:
            inspections.record_photo(
                ctx,
                s,
                inspector,
                record,
                make_image(160, 120, seed=40 + i),
                inspections.PhotoMeta(enterprise_id=f"E{i % 2}", sector="general"),
                None,
                detector,
            )
    with ctx.db.session() as s:
        for f in s.scalars(select(Finding)).all()[-2:]:  # C's two findings
            f.status = "rejected"
    with ctx.db.session() as s:
        items, cursor = inspection_records.list_records(s, inspector, RecordFilter(), limit=2)
        assert [i["record_no"] for i in items] == [C, B] and cursor
        rest, end = inspection_records.list_records(s, inspector, RecordFilter(), limit=2, cursor=cursor)
        assert [i["record_no"] for i in rest] == [A] and end is None and rest[0]["photos"] == 2
        opened, _ = inspection_records.list_records(s, inspector, RecordFilter(open=True))
        assert [i["record_no"] for i in opened] == [B, A]
        e1, _ = inspection_records.list_records(s, inspector, RecordFilter(enterprise="E1"))
        assert [i["record_no"] for i in e1] == [C, A]
