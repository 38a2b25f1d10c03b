"""The inspector's round on a phone, end to end: Debian Chromium with a phone viewport and touch
(390x844, is_mobile, has_touch) against the real app on a loopback port.

The inspector finds a record in the list, opens it, takes a photo (the camera input), sees the
suggested findings drawn on it, confirms one, corrects one (a new class and a box moved by touch)
and rejects one with a reason; the server then holds exactly what the enforcement system's own
review call would have stored. Uploads on a bad network: one made while the network is cut waits in
the queue and goes when it returns; one whose answer is lost on the way back is resent with the same
Idempotency-Key; either way the server stores the photo exactly once.

Deterministic findings: the app's model manager is replaced by tests.fixtures.detector.FakeDetector
(a scripted Detector that decodes the uploaded photo like a real one), the way the API tests get
them; nothing in the browser or the API is mocked.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from sqlalchemy import func, select

from hazardlens.auth import create_key
from hazardlens.context import Context
from hazardlens.orm import AuditEvent, InspectionPhoto, Sample
from hazardlens.serving.console.headless import LiveServer
from hazardlens.settings import Settings
from tests.fixtures.core import auth, make_image
from tests.fixtures.detector import FakeDetector

pytestmark = pytest.mark.browser

OPEN, CLOSED, FOREIGN = "鄂应急检〔2026〕1号", "鄂应急检〔2026〕2号", "浙应急检〔2026〕9号"
NEW = "鄂应急检〔2026〕7号"
ENTERPRISE = "91420100MA4K8XYZ"
PHONE = {"viewport": {"width": 390, "height": 844}, "has_touch": True, "is_mobile": True, "device_scale_factor": 2}

expect: Any = None


def _script(width: int, height: int) -> list[tuple[str, float, float, float, float, float]]:
    """Three hazards of the general sector on every photo, in the photo's own pixels."""
    return [
        ("fire", width * 0.10, height * 0.10, width * 0.40, height * 0.45, 0.91),
        ("smoke", width * 0.50, height * 0.15, width * 0.90, height * 0.50, 0.72),
        ("head", width * 0.55, height * 0.60, width * 0.75, height * 0.95, 0.58),
    ]


@dataclass
class World:
    url: str
    ctx: Context
    detector: FakeDetector
    keys: dict[str, str] = field(default_factory=dict)

    def get(self, path: str, key: str = "inspector") -> Any:
        r = httpx.get(f"{self.url}{path}", headers=auth(self.keys[key]), timeout=20)
        r.raise_for_status()
        return r.json()

    def record(self, record_no: str) -> Any:
        return self.get(f"/v1/inspections/{quote(record_no, safe='')}")

    def photos(self, record_no: str) -> int:
        with self.ctx.db.session() as s:
            return int(
                s.scalar(
                    select(func.count()).select_from(InspectionPhoto).where(InspectionPhoto.record_no == record_no)
                )
            )


def _upload(world: World, key: str, record_no: str, seed: int, enterprise: str = ENTERPRISE) -> Any:
    r = httpx.post(
        f"{world.url}/v1/inspections/{quote(record_no, safe='')}/photos",
        headers=auth(world.keys[key]),
        data={"enterprise_id": enterprise, "sector": "general", "inspector_id": "42010001"},
        files={"file": ("现场.jpg", make_image(640, 480, seed=seed), "image/jpeg")},
        timeout=30,
    )
    assert r.status_code == 201, r.text
    return r.json()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    from hazardlens.serving.app import create_app

    ctx = Context(Settings(home=tmp_path_factory.mktemp("inspections-console") / "home"))
    ctx.init()
    detector = FakeDetector(_script)
    app = create_app(ctx, start_background=False)
    server = LiveServer(app)
    w = World(url=server.start(), ctx=ctx, detector=detector)
    app.state.models = detector  # after start-up, which installs the (unloaded) model manager
    try:
        with ctx.db.session() as s:
            for name, (org, role) in {
                "inspector": ("420000", "inspector"),
                "admin": ("420000", "admin"),
                "curator": ("420000", "curator"),
                "other": ("310000", "inspector"),
            }.items():
                w.keys[name], _ = create_key(s, org, role, name=f"{name}-{org}")
        _upload(w, "inspector", OPEN, 1)
        closed = _upload(w, "inspector", CLOSED, 2, enterprise="91420100ZZZ")
        for f in closed["findings"]:
            httpx.post(
                f"{w.url}/v1/findings/{f['id']}/review",
                json={"decision": "confirmed"},
                headers=auth(w.keys["inspector"]),
                timeout=20,
            ).raise_for_status()
        _upload(w, "other", FOREIGN, 3)
        yield w
    finally:
        server.stop()
        ctx.close()


@pytest.fixture
def phone(chromium: Any, world: World) -> Iterator[tuple[Any, Any]]:
    """(context, page) of a phone: touch, a phone-sized viewport, nothing reachable but the server."""
    global expect
    from playwright.sync_api import expect as playwright_expect

    expect = playwright_expect
    playwright_expect.set_options(timeout=20_000)
    context = chromium.new_context(**PHONE, locale="zh-CN")
    context.route("**/*", lambda route: route.continue_() if route.request.url.startswith(world.url) else route.abort())
    page = context.new_page()
    page.set_default_timeout(20_000)
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"pageerror: {exc}"))
    page.on(
        "console",
        lambda msg: (
            problems.append(f"{msg.type}: {msg.text}")
            if msg.type in ("error", "warning") and "Failed to load resource" not in msg.text
            else None
        ),
    )
    page.console_problems = problems  # type: ignore[attr-defined]
    try:
        yield context, page
    finally:
        context.close()


def login(page: Any, world: World, who: str) -> None:
    page.goto(f"{world.url}/console/#/login")
    page.get_by_test_id("login-key").fill(world.keys[who])
    page.get_by_test_id("login-submit").tap()
    # the console leaves #/login for the role's landing page once the session has loaded; a test that
    # navigates before that is sent back there (a stale badge of the previous login is visible earlier)
    expect(page).not_to_have_url(re.compile(r"#/login$"))
    expect(page.get_by_test_id("me-role")).to_be_visible()


def take_photo(page: Any, seed: int, width: int = 2400, height: int = 1800, orientation: int | None = None) -> None:
    page.get_by_test_id("capture-input").set_input_files(
        {
            "name": f"IMG_{seed}.jpg",
            "mimeType": "image/jpeg",
            "buffer": make_image(width, height, seed=seed, exif_orientation=orientation),
        }
    )


def finding_rows(page: Any, photo_id: int) -> Any:
    return page.locator(f'[data-testid="photo-card"][data-photo-id="{photo_id}"] [data-testid="finding"]')


def newest_photo(world: World, record_no: str) -> Any:
    return world.record(record_no)["photos"][-1]


# --- the round -------------------------------------------------------------------------------------


def test_the_inspectors_round_on_a_phone(phone: tuple[Any, Any], world: World) -> None:
    context, page = phone
    login(page, world, "inspector")

    # An inspector lands on the organisation's records; another organisation's is not there.
    cards = page.get_by_test_id("record-card")
    expect(cards).to_have_count(2)
    expect(page.locator(f'[data-record-no="{FOREIGN}"]')).to_have_count(0)
    page.locator("details.record-filters > summary").tap()
    page.locator('[data-filter="open"]').select_option("true")
    expect(cards).to_have_count(1)
    expect(cards.first).to_have_attribute("data-record-no", OPEN)
    assert "open=true" in page.url  # bookmarkable
    page.locator('[data-filter="open"]').select_option("")
    page.locator('[data-filter="enterprise"]').fill("91420100ZZZ")
    expect(cards).to_have_count(1)
    expect(cards.first).to_have_attribute("data-record-no", CLOSED)
    page.locator('[data-filter="enterprise"]').fill("")
    expect(cards).to_have_count(2)
    page.locator(f'[data-record-no="{OPEN}"]').tap()

    # The record: its seeded photo with three suggested findings.
    expect(page.get_by_test_id("record-no")).to_have_text(OPEN)
    expect(page.get_by_test_id("photo-card")).to_have_count(1)
    expect(page.get_by_test_id("count-suggested")).to_have_text("待确认 3")

    # Photograph: a 12-megapixel-ish photo taken sideways (EXIF orientation 6). The phone uploads it
    # upright and downscaled to what detection reads (1280 on the long side, no production model).
    calls = len(world.detector.calls)
    take_photo(page, 11, orientation=6)
    expect(page.get_by_test_id("photo-card")).to_have_count(2)
    photo = newest_photo(world, OPEN)
    assert (photo["image"]["width"], photo["image"]["height"]) == (960, 1280)
    assert len(world.detector.calls) == calls + 1  # the detector read the downscaled photo
    sample = world.get(f"/v1/samples/{photo['sample_id']}")
    assert (sample["width"], sample["height"]) == (960, 1280) and sample["original_name"] == "IMG_11.jpg"
    expect(page.get_by_test_id("upload-queue").locator("li")).to_have_count(0)

    # The suggested findings, drawn on the photo and listed with item, legal basis and confidence.
    rows = finding_rows(page, photo["photo_id"])
    expect(rows).to_have_count(3)
    card = page.locator(f'[data-testid="photo-card"][data-photo-id="{photo["photo_id"]}"]')
    expect(card.locator("g.finding-box")).to_have_count(3)
    assert page.get_by_test_id("photo-card").first.get_attribute("data-photo-id") == str(photo["photo_id"])
    fire, smoke, head = photo["findings"]
    assert [fire["class_key"], smoke["class_key"], head["class_key"]] == ["fire", "smoke", "head"]
    first = rows.nth(0)
    expect(first.get_by_test_id("confidence")).to_have_text("91%")
    expect(first).to_contain_text("明火")
    expect(first.locator(".finding-basis")).to_contain_text(fire["legal_basis"][0])
    expect(rows.nth(2).locator(".finding-items")).to_contain_text("YX-04")  # the head: an inspection item
    expect(rows.nth(2).locator(".finding-basis")).to_contain_text("GB 39800.1")

    # Confirm the fire.
    first.get_by_test_id("confirm-finding").tap()
    expect(rows.nth(0)).to_have_attribute("data-status", "confirmed")

    # Correct the smoke: it is a fire, and the box sits lower. Moved by a finger on the canvas.
    rows.nth(1).get_by_test_id("correct-finding").tap()
    canvas = page.get_by_test_id("correct-canvas")
    expect(canvas).to_have_attribute("data-ready", "1")
    page.get_by_test_id("correct-class").select_option("fire")
    box = canvas.bounding_box()
    # The suggested box's middle, in screen pixels: the editor fits the photo into the canvas.
    scale = min(box["width"] / 960, box["height"] / 1280) * 0.96
    x0 = box["x"] + (box["width"] - 960 * scale) / 2
    y0 = box["y"] + (box["height"] - 1280 * scale) / 2
    mid = (x0 + 960 * 0.70 * scale, y0 + 1280 * 0.325 * scale)
    cdp = context.new_cdp_session(page)

    def touch(kind: str, *points: tuple[float, float]) -> None:
        cdp.send(
            "Input.dispatchTouchEvent",
            {"type": kind, "touchPoints": [{"x": x, "y": y, "id": i} for i, (x, y) in enumerate(points)]},
        )

    touch("touchStart", mid)
    for step in range(1, 7):
        touch("touchMove", (mid[0], mid[1] + 10 * step))
    touch("touchEnd")
    moved = canvas.get_attribute("data-box")
    assert moved and '"y1"' in moved
    # click, not tap: right after CDP touch sequences Chromium swallows the first synthetic tap.
    page.locator('dialog button[value="save"]').click()
    expect(rows.nth(1)).to_have_attribute("data-status", "confirmed")
    expect(rows.nth(1).get_by_test_id("finding-outcome")).to_contain_text("修正后确认")

    # Reject the head, with a reason.
    rows.nth(2).get_by_test_id("reject-finding").click()  # (the first tap after CDP touches is swallowed)
    page.get_by_test_id("finding-reason-input").fill("现场核实已佩戴安全帽，帽子被遮挡")
    page.locator('dialog button[value="reject"]').click()  # click: taps after CDP touches get lost
    expect(rows.nth(2)).to_have_attribute("data-status", "rejected")
    expect(rows.nth(2).get_by_test_id("finding-reason")).to_contain_text("已佩戴安全帽")
    expect(page.get_by_test_id("count-confirmed")).to_have_text("已确认 2")
    expect(page.get_by_test_id("count-rejected")).to_have_text("已否定 1")

    # Server side: what the enforcement system's review would have stored.
    decided = {f["id"]: f for f in newest_photo(world, OPEN)["findings"]}
    assert decided[fire["id"]]["status"] == "confirmed" and not decided[fire["id"]]["review"]["corrected"]
    corrected = decided[smoke["id"]]["review"]
    assert decided[smoke["id"]]["status"] == "confirmed" and corrected["corrected"] is True
    assert corrected["class_key"] == "fire"
    assert corrected["box"]["y1"] > smoke["box"]["y1"] + 20  # moved down by ~60 screen pixels
    assert corrected["box"]["x2"] - corrected["box"]["x1"] == pytest.approx(
        smoke["box"]["x2"] - smoke["box"]["x1"], abs=2
    )
    rejected = decided[head["id"]]
    assert rejected["status"] == "rejected" and rejected["review"]["reason"] == "现场核实已佩戴安全帽，帽子被遮挡"
    current = world.get(f"/v1/samples/{photo['sample_id']}/annotations", "curator")
    assert current["status"] == "submitted" and current["revision"]["source"] == "feedback"
    assert sorted(b["class_key"] for b in current["boxes"]) == ["fire", "fire"]
    assert "hard_negative" in world.get(f"/v1/samples/{photo['sample_id']}")["tags"]

    # The list now shows the three decisions.
    page.get_by_test_id("record-summary").wait_for()
    summary = next(r for r in world.get("/v1/inspections")["items"] if r["record_no"] == OPEN)
    assert summary["findings"] == {"suggested": 3, "confirmed": 2, "rejected": 1}

    # Print the record: the PDF of GET /v1/inspections/{record_no}/report.pdf, fetched with the key.
    with page.expect_download() as download:
        page.get_by_test_id("print-record").click()
    pdf = Path(download.value.path()).read_bytes()
    assert pdf.startswith(b"%PDF") and download.value.suggested_filename == f"{OPEN}.pdf"

    # The dashboard shows the three outcomes, as the figures API counts them.
    page.goto(f"{world.url}/console/#/dashboard")
    total = world.get("/v1/stats/findings")["total"]
    assert total["corrected"] == 1 and total["rejected"] == 1 and total["confirmed"] >= 1
    for outcome in ("confirmed", "corrected", "rejected"):
        expect(page.get_by_test_id(f"dash-{outcome}").locator(".dash-count")).to_have_text(str(total[outcome]))
    assert page.console_problems == []


# --- a bad network ---------------------------------------------------------------------------------


def _keys_of(world: World, record_no: str) -> list[str]:
    with world.ctx.db.session() as s:
        return list(
            s.scalars(
                select(InspectionPhoto.idempotency_key)
                .where(InspectionPhoto.record_no == record_no)
                .order_by(InspectionPhoto.id)
            )
        )


def _photo_events(world: World) -> int:
    with world.ctx.db.session() as s:
        return int(
            s.scalar(select(func.count()).select_from(AuditEvent).where(AuditEvent.action == "inspection.photo"))
        )


def test_uploads_wait_for_the_network_and_are_stored_once(phone: tuple[Any, Any], world: World) -> None:
    context, page = phone
    login(page, world, "inspector")
    page.goto(f"{world.url}/console/#/record/{quote(OPEN, safe='')}")
    cards = page.get_by_test_id("photo-card")
    expect(cards.first).to_be_visible()
    before, events = world.photos(OPEN), _photo_events(world)

    # The network is cut: the photo waits in the queue (IndexedDB) and nothing reaches the server.
    context.set_offline(True)
    take_photo(page, 21)
    queued = page.get_by_test_id("queued-photo")
    expect(queued).to_have_count(1)
    expect(queued.first).to_have_attribute("data-state", "offline")
    time.sleep(1.0)
    assert world.photos(OPEN) == before
    # The network returns: the `online` event sends it, once.
    context.set_offline(False)
    expect(queued).to_have_count(0)
    expect(cards).to_have_count(before + 1)
    keys = _keys_of(world, OPEN)
    assert world.photos(OPEN) == before + 1 and len(set(keys)) == len(keys)
    assert keys[-1].startswith("console-") and _photo_events(world) == events + 1

    # The answer is lost on the way back (the server stored the photo, the phone never heard):
    # the queue sends it again with the same Idempotency-Key and the server replays its answer.
    sent: list[str] = []

    def lose_first_answer(route: Any) -> None:
        sent.append(route.request.headers.get("idempotency-key", ""))
        if len(sent) == 1:
            route.fetch()  # reaches the server
            route.abort("connectionreset")  # ...but the answer never reaches the phone
        else:
            route.continue_()

    page.route("**/photos", lose_first_answer)
    take_photo(page, 22)
    expect(page.locator(".notice.success .notice-text").last).to_contain_text("未重复保存")
    expect(cards).to_have_count(before + 2)
    assert len(sent) == 2 and sent[0] == sent[1] and sent[0].startswith("console-")
    keys = _keys_of(world, OPEN)
    assert world.photos(OPEN) == before + 2 and keys.count(sent[0]) == 1
    assert _photo_events(world) == events + 2  # the replay stored nothing
    page.unroute("**/photos")
    assert page.console_problems == []


def test_an_organisation_that_keeps_originals_gets_them(phone: tuple[Any, Any], world: World) -> None:
    _, page = phone
    r = httpx.put(
        f"{world.url}/v1/organisation/capture",
        json={"keep_original_photos": True},
        headers=auth(world.keys["admin"]),
        timeout=20,
    )
    assert r.status_code == 200, r.text
    try:
        # A new record, opened from the list: its first photo creates it on the server.
        login(page, world, "inspector")
        page.get_by_test_id("new-record").tap()
        page.get_by_test_id("new-record_no").fill(NEW)
        page.get_by_test_id("new-enterprise").fill(ENTERPRISE)
        page.get_by_test_id("new-sector").select_option("general")
        page.get_by_test_id("new-inspector").fill("42010009")
        page.locator('dialog button[value="go"]').tap()
        expect(page.get_by_test_id("record-no")).to_have_text(NEW)
        expect(page.get_by_test_id("no-photos")).to_be_visible()
        expect(page.get_by_test_id("capture-size")).to_contain_text("原图")
        take_photo(page, 31, width=2000, height=1500)
        expect(page.get_by_test_id("photo-card")).to_have_count(1)
        photo = newest_photo(world, NEW)
        assert (photo["image"]["width"], photo["image"]["height"]) == (2000, 1500)  # as taken
        assert photo["inspector_id"] == "42010009" and photo["enterprise_id"] == ENTERPRISE
        with world.ctx.db.session() as s:
            assert s.get(Sample, photo["sample_id"]).size_bytes == len(make_image(2000, 1500, seed=31))
    finally:
        httpx.put(
            f"{world.url}/v1/organisation/capture",
            json={"keep_original_photos": False},
            headers=auth(world.keys["admin"]),
            timeout=20,
        ).raise_for_status()


def test_other_organisations_and_other_roles(phone: tuple[Any, Any], world: World) -> None:
    _, page = phone
    login(page, world, "other")
    page.goto(f"{world.url}/console/#/record/{quote(OPEN, safe='')}")
    expect(page.get_by_test_id("page-error")).to_contain_text(OPEN)  # not found, like a missing record
    page.goto(f"{world.url}/console/#/inspections")
    expect(page.get_by_test_id("record-card")).to_have_count(1)
    expect(page.get_by_test_id("record-card").first).to_have_attribute("data-record-no", FOREIGN)
    page.get_by_test_id("logout").tap()

    login(page, world, "curator")  # no inspection rights: no menu entry, and the API's reason
    expect(page.locator('.nav-link[data-route="inspections"]')).to_have_count(0)
    page.goto(f"{world.url}/console/#/inspections")
    expect(page.get_by_test_id("records-error")).to_contain_text("inspections:read")
    assert page.console_problems == []
