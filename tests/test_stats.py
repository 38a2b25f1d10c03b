"""Figures over inspection findings (GET /v1/stats/findings, /v1/stats/models): counts by group for a
period within the caller's organisation (the system organisation sees all), each model version's
field precision, the CSV export, and the dashboard's chart library shipped with the console."""

from __future__ import annotations

import csv
import io
import re
from collections import Counter
from pathlib import Path
from urllib.parse import quote

import pytest
from sqlalchemy import select

from hazardlens.orm import Finding, InspectionPhoto
from tests.fixtures.core import auth
from tests.fixtures.serving import photo

CONSOLE = Path(__file__).resolve().parent.parent / "serving" / "console"


def _post(api, key, record, enterprise, seed):  # type: ignore[no-untyped-def]
    r = api.post(
        f"/v1/inspections/{quote(record, safe='')}/photos",
        data={"enterprise_id": enterprise, "sector": "general", "inspector_id": "执法证1"},
        headers=auth(key),
        files={"file": ("p.jpg", photo(seed=seed), "image/jpeg")},
    )
    assert r.status_code == 201, r.text
    return r.json()["findings"]


def _review(api, key, finding_id, body):  # type: ignore[no-untyped-def]
    r = api.post(f"/v1/findings/{finding_id}/review", json=body, headers=auth(key))
    assert r.status_code == 200, r.text


@pytest.fixture
def figures(api, make_key, ctx):  # type: ignore[no-untyped-def]
    """Two records of 420000 (two enterprises) and one of 330000; in 420000 one suggestion confirmed,
    one corrected to another class, one rejected, the rest pending."""
    hubei = make_key("420000", "inspector")
    first = _post(api, hubei, "鄂应急检〔2026〕1号", "E-A", seed=1)
    second = _post(api, hubei, "鄂应急检〔2026〕2号", "E-B", seed=2)
    _post(api, make_key("330000", "inspector"), "浙应急检〔2026〕1号", "E-Z", seed=3)
    assert len(first) >= 2 and second
    _review(api, hubei, first[0]["id"], {"decision": "confirmed"})
    box = {"x1": 5, "y1": 5, "x2": 60, "y2": 60}
    _review(api, hubei, first[1]["id"], {"decision": "confirmed", "class_key": "helmet", "box": box})
    _review(api, hubei, second[0]["id"], {"decision": "rejected"})
    with ctx.db.session() as s:  # the truth, read straight from the tables
        rows = s.execute(select(Finding, InspectionPhoto.org_code).join(InspectionPhoto)).all()
        by_org = Counter(org for _, org in rows)
        statuses = Counter(f.status for f, org in rows if org == "420000")
    return {"key": hubei, "by_org": by_org, "statuses": statuses, "first": first, "second": second}


def test_findings_by_class_within_the_callers_organisation(api, figures) -> None:
    key, by_org = figures["key"], figures["by_org"]
    r = api.get("/v1/stats/findings", params={"group_by": "class"}, headers=auth(key))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["org"] == "420000" and body["group_by"] == ["class"]
    total = body["total"]
    assert total["findings"] == by_org["420000"]  # 330000's findings are not counted
    assert (total["confirmed"], total["corrected"], total["rejected"]) == (1, 1, 1)
    assert total["pending"] == figures["statuses"]["suggested"]
    groups = {g["key"]["class"]: g for g in body["groups"]}
    assert groups["helmet"]["corrected"] == 1 and groups["helmet"]["label"]["class"] == "安全帽（已佩戴）"
    assert sum(g["findings"] for g in body["groups"]) == total["findings"]
    assert groups["head"]["records"] == 2


def test_grouping_by_enterprise_month_item_and_period(api, figures) -> None:
    key = figures["key"]
    body = api.get("/v1/stats/findings", params={"group_by": "enterprise,month"}, headers=auth(key)).json()
    enterprises = {g["key"]["enterprise"] for g in body["groups"]}
    assert enterprises == {"E-A", "E-B"}
    months = {g["key"]["month"] for g in body["groups"]}
    assert len(months) == 1 and len(next(iter(months))) == 7  # YYYY-MM, Beijing time
    b = next(g for g in body["groups"] if g["key"]["enterprise"] == "E-B")
    assert b["findings"] == len(figures["second"]) and b["rejected"] == 1 and b["records"] == 1

    items = api.get("/v1/stats/findings", params={"group_by": "item"}, headers=auth(key)).json()
    yx04 = next(g for g in items["groups"] if g["key"]["item"] == "YX-04")
    assert yx04["label"]["item"] and yx04["findings"] >= 2

    sectors = api.get("/v1/stats/findings", params={"group_by": "sector"}, headers=auth(key)).json()
    assert [g["key"]["sector"] for g in sectors["groups"]] == ["general"]

    past = api.get("/v1/stats/findings", params={"to": "2000-01-31"}, headers=auth(key)).json()
    assert past["groups"] == [] and past["total"]["findings"] == 0 and past["date_to"].startswith("2000-01-31T15:59")
    assert api.get("/v1/stats/findings", params={"from": "2000-01-01"}, headers=auth(key)).json()["groups"]


def test_the_system_organisation_sees_all_and_others_only_their_own(api, make_key, figures) -> None:
    by_org = figures["by_org"]
    ministry = make_key("000000", "admin")
    body = api.get("/v1/stats/findings", params={"group_by": "org"}, headers=auth(ministry)).json()
    assert body["org"] is None
    assert {g["key"]["org"]: g["findings"] for g in body["groups"]} == dict(by_org)
    one = api.get("/v1/stats/findings", params={"org": "330000"}, headers=auth(ministry)).json()
    assert one["org"] == "330000" and one["total"]["findings"] == by_org["330000"]
    # An organisation asking for another's figures is refused; its own are fine.
    denied = api.get("/v1/stats/findings", params={"org": "330000"}, headers=auth(figures["key"]))
    assert denied.status_code == 403
    own = api.get("/v1/stats/findings", params={"org": "420000"}, headers=auth(figures["key"]))
    assert own.status_code == 200
    assert api.get("/v1/stats/findings", headers=auth(make_key("420000", "curator"))).status_code == 403
    assert api.get("/v1/stats/findings").status_code == 401


def test_field_precision_per_model_version_and_class(api, figures) -> None:
    body = api.get("/v1/stats/models", headers=auth(figures["key"])).json()
    overall = body["models"][0]
    assert overall["model_version"] == "hazardlens:1" and overall["class_key"] == "all"
    assert overall["decided"] == 3 and overall["findings"] == figures["by_org"]["420000"]
    assert overall["confirmed_share"] == overall["corrected_share"] == overall["rejected_share"] == 0.3333
    assert overall["precision"] == 0.6667
    per_class = [m for m in body["models"][1:]]
    assert sum(m["findings"] for m in per_class) == overall["findings"]
    # The corrected suggestion counts for the class the model suggested, not the inspector's.
    suggested = figures["first"][1]
    row = next(
        m for m in per_class if m["class_key"] == suggested["class_key"] and m["rule"] == (suggested["rule"] or "")
    )
    assert row["corrected"] >= 1
    undecided = [m for m in per_class if m["decided"] == 0]
    assert all(m["precision"] is None for m in undecided)


def test_csv_export_carries_the_same_figures(api, figures) -> None:
    key = figures["key"]
    params = {"group_by": "enterprise,class"}
    as_json = api.get("/v1/stats/findings", params=params, headers=auth(key)).json()
    r = api.get("/v1/stats/findings", params={**params, "format": "csv"}, headers=auth(key))
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert r.content.startswith("\ufeff".encode())  # spreadsheets read the Chinese names
    rows = list(csv.DictReader(io.StringIO(r.content.decode("utf-8-sig"))))
    assert [(x["enterprise"], x["class"], int(x["findings"]), int(x["rejected"])) for x in rows] == [
        (g["key"]["enterprise"], g["key"]["class"], g["findings"], g["rejected"]) for g in as_json["groups"]
    ]
    assert any(x["class_name"] == "未戴安全帽的头部" for x in rows)
    models = api.get("/v1/stats/models", params={"format": "csv"}, headers=auth(key))
    first = next(csv.DictReader(io.StringIO(models.content.decode("utf-8-sig"))))
    assert first["class_key"] == "all" and first["precision"] == "0.6667"


def test_bad_parameters_are_refused(api, make_key) -> None:
    key = make_key("420000", "inspector")
    for params, code in (
        ({"group_by": "colour"}, "invalid_group_by"),
        ({"group_by": ""}, "invalid"),
        ({"group_by": "sector,class,month,org"}, "invalid_group_by"),
        ({"from": "yesterday"}, "invalid_date"),
    ):
        r = api.get("/v1/stats/findings", params=params, headers=auth(key))
        assert r.status_code == 422 and r.json()["error"]["code"] == code, (params, r.text)
    inverted = api.get("/v1/stats/findings", params={"from": "2026-05-01", "to": "2026-04-01"}, headers=auth(key))
    assert inverted.status_code == 200 and inverted.json()["groups"] == []  # an empty period, not an error
    ends = api.get("/v1/stats/findings", params={"from": "0001-01-01", "to": "9999-12-31"}, headers=auth(key))
    assert ends.status_code == 200, ends.text


def test_the_chart_library_ships_with_the_console() -> None:
    """The dashboard's charts come from the console's own files (no CDN), licence included, and the
    wheel's package data takes them along."""
    vendor = CONSOLE / "vendor"
    lib = (vendor / "chart.umd.min.js").read_text(encoding="utf-8")
    assert "Chart.js v4" in lib[:300]
    assert "MIT" in (vendor / "chart.js.LICENSE.md").read_text(encoding="utf-8")
    page = (CONSOLE / "pages" / "dashboard.js").read_text(encoding="utf-8")
    assert "vendor/chart.umd.min.js" in page and "http" not in page.split("vendor/chart.umd.min.js")[0][-200:]
    pyproject = (CONSOLE.parent.parent / "pyproject.toml").read_text(encoding="utf-8")
    assert '"vendor/*"' in pyproject


@pytest.mark.browser
def test_dashboard_charts_the_outcomes_offline(console_page, console_world) -> None:
    """The dashboard in headless Chromium (offline: only the app's origin answers): the three outcomes
    in its tiles, its charts drawn by the vendored Chart.js under the console's CSP, no page errors."""
    from playwright.sync_api import expect

    from hazardlens.orm import utcnow

    ctx = console_world.ctx
    with ctx.db.session() as s:
        sample_id = console_world.samples["s4"]
        p = InspectionPhoto(
            record_no="鄂应急检〔2026〕77号", org_code="420000", sample_id=sample_id, enterprise_id="E-1"
        )
        s.add(p)
        s.flush()
        box = {"x1": 1.0, "y1": 1.0, "x2": 20.0, "y2": 20.0}
        for status, review in (
            ("confirmed", {"decision": "confirmed", "corrected": False}),
            ("confirmed", {"decision": "confirmed", "corrected": True, "class_key": "helmet"}),
            ("rejected", {"decision": "rejected"}),
            ("suggested", None),
        ):
            s.add(
                Finding(
                    photo_id=p.id,
                    sample_id=sample_id,
                    class_key="head",
                    confidence=0.8,
                    box=box,
                    model_version="hazardlens:7",
                    status=status,
                    review=review,
                    created_at=utcnow(),
                )
            )
    page = console_page
    page.goto(f"{console_world.url}/console/#/login")
    page.get_by_test_id("login-key").fill(console_world.keys["admin"])
    page.get_by_test_id("login-submit").click()
    expect(page.get_by_test_id("me-role")).to_be_visible()
    expect(page.get_by_test_id("sample-grid")).to_be_attached()  # the login's own navigation has ended
    page.locator('[data-route="dashboard"]').click()
    expect(page).to_have_url(re.compile(r"#/dashboard$"))
    # A generous first wait: the shared 2-core build machine may be busy training.
    expect(page.get_by_test_id("dash-findings").locator(".dash-count")).to_have_text("4", timeout=60_000)
    for outcome in ("confirmed", "corrected", "rejected", "pending"):
        expect(page.get_by_test_id(f"dash-{outcome}").locator(".dash-count")).to_have_text("1")
    expect(page.get_by_test_id("dash-precision").first).to_have_text("66.7%")
    for chart in ("dash-chart-outcomes", "dash-chart-groups", "dash-chart-months"):
        canvas = page.get_by_test_id(chart).locator("canvas")
        expect(canvas).to_be_visible()
        page.wait_for_function(
            """el => { const c = el.getContext('2d'); if (!c || !el.width) return false;
                const d = c.getImageData(0, 0, el.width, el.height).data;
                for (let i = 3; i < d.length; i += 4) if (d[i]) return true; return false; }""",
            arg=canvas.element_handle(),
        )
    assert page.evaluate("typeof globalThis.Chart") == "function"
    with page.expect_download() as download:
        page.get_by_test_id("dash-csv").click()
    assert download.value.suggested_filename == "findings.csv"
    assert not page.console_problems, page.console_problems
