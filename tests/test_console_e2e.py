"""The web console end to end, in headless Chromium against the real app on a loopback port.

One story carries most of it, because that is how the console is used: a curator finds a sample by
filter, draws a box and submits; a reviewer sends it back with a reason; the curator corrects and
resubmits; the reviewer approves the second revision; the API then holds both revisions. Around it,
the refusals: a wrong, expired or revoked key, a curator trying to review, another organisation's
sample. Each must show the API's own message and change nothing.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from hazardlens.auth import create_key, revoke_key
from hazardlens.orm import ApiKey
from tests.fixtures.console import ConsoleWorld

pytestmark = pytest.mark.browser

expect: Any = None


@pytest.fixture(autouse=True)
def _expect() -> None:
    global expect
    from playwright.sync_api import expect as playwright_expect

    expect = playwright_expect
    playwright_expect.set_options(timeout=15_000)


# --- helpers ------------------------------------------------------------------------------------


def login(page: Any, world: ConsoleWorld, key: str) -> None:
    page.goto(f"{world.url}/console/#/login")
    page.get_by_test_id("login-key").fill(key)
    page.get_by_test_id("login-submit").click()
    # the console leaves #/login for the role's landing page once the session has loaded; a test that
    # navigates before that is sent back there (a stale badge of the previous login is visible earlier)
    expect(page).not_to_have_url(re.compile(r"#/login$"))
    expect(page.get_by_test_id("me-role")).to_be_visible()


def logout(page: Any) -> None:
    page.get_by_test_id("logout").click()
    expect(page.get_by_test_id("login-key")).to_be_visible()


def api(world: ConsoleWorld, key: str, path: str) -> Any:
    response = httpx.get(f"{world.url}{path}", headers={"Authorization": f"Bearer {key}"}, timeout=10)
    response.raise_for_status()
    return response.json()


def open_annotator(page: Any, world: ConsoleWorld, sample_id: int) -> Any:
    page.goto(f"{world.url}/console/#/annotate/{sample_id}")
    canvas = page.get_by_test_id("annotator-canvas")
    expect(canvas).to_have_attribute("data-ready", "1")
    return canvas


def drag(page: Any, canvas: Any, start: tuple[float, float], end: tuple[float, float]) -> None:
    """Drag between two points given as fractions of the canvas."""
    box = canvas.bounding_box()
    page.mouse.move(box["x"] + box["width"] * start[0], box["y"] + box["height"] * start[1])
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * end[0], box["y"] + box["height"] * end[1], steps=6)
    page.mouse.up()


def status_of(page: Any) -> Any:
    return page.locator(".editor-toolbar [data-status]")


def assert_clean(page: Any) -> None:
    """No script errors and no missing translations on the way."""
    assert page.console_problems == []


# --- the review round trip ---------------------------------------------------------------------------


def test_label_reject_correct_approve(console_page: Any, console_world: ConsoleWorld) -> None:
    page, world = console_page, console_world
    target = world.samples["target"]

    # The curator logs in; the header shows the key's organisation and role.
    login(page, world, world.keys["curator"])
    expect(page.get_by_test_id("me-org")).to_have_text("420000")
    expect(page.get_by_test_id("me-role")).to_have_text("标注员")
    expect(page.locator('.nav-link[data-route="review"]')).to_have_count(0)

    # Find the sample by sector and site.
    expect(page.get_by_test_id("sample-card").first).to_be_visible()
    page.locator('[data-filter="sector"]').select_option("confined_space")
    page.locator('[data-filter="site"]').fill("site-42")
    cards = page.get_by_test_id("sample-card")
    expect(cards).to_have_count(1)
    expect(cards.first).to_have_attribute("data-sample-id", str(target))
    assert "site=site-42" in page.url and "sector=confined_space" in page.url  # filters are bookmarkable
    cards.first.click()
    expect(page.get_by_test_id("history")).to_contain_text("入库")
    page.get_by_test_id("open-annotator").click()

    # Draw one box as "person" (picked from the searchable list), save, submit.
    canvas = page.get_by_test_id("annotator-canvas")
    expect(canvas).to_have_attribute("data-ready", "1")
    page.get_by_test_id("class-search").fill("Person")
    page.get_by_test_id("class-search").press("Enter")
    expect(page.locator('.class-option.active[data-key="person"]')).to_be_visible()
    drag(page, canvas, (0.35, 0.30), (0.55, 0.60))
    expect(page.get_by_test_id("box-list").locator(".box-row")).to_have_count(1)
    page.get_by_test_id("save").click()
    expect(page.locator(".notice.success .notice-text").last).to_have_text("已保存")
    page.get_by_test_id("submit").click()
    expect(status_of(page)).to_have_attribute("data-status", "submitted")
    assert_clean(page)
    logout(page)

    # The reviewer sends it back with a reason (退回修改).
    login(page, world, world.keys["reviewer"])
    page.goto(f"{world.url}/console/#/review/{target}")
    expect(page.get_by_test_id("review-queue").locator(f'[data-sample-id="{target}"]')).to_be_visible()
    page.get_by_test_id("reject").click()
    page.get_by_test_id("reject-reason-input").fill("人员框偏大，请重画；另有安全帽漏标")
    page.locator('dialog button[value="reject"]').click()
    expect(page.locator(".notice.success .notice-text").last).to_contain_text(f"#{target}")
    assert api(world, world.keys["reviewer"], f"/v1/samples/{target}/annotations")["status"] == "rejected"
    logout(page)

    # The curator sees the reason, corrects (moves the box, adds a helmet) and resubmits; undo and
    # redo work on the way.
    login(page, world, world.keys["curator"])
    canvas = open_annotator(page, world, target)
    expect(page.get_by_test_id("reject-reason")).to_contain_text("人员框偏大")
    expect(page.get_by_test_id("submit")).to_be_disabled()  # a rejected revision must be corrected first
    drag(page, canvas, (0.45, 0.45), (0.40, 0.40))  # move the box by its middle
    page.keyboard.press("Escape")  # deselect, so picking a class sets the next box's class, not this one's
    page.locator('.class-option[data-key="helmet"]').click()
    drag(page, canvas, (0.60, 0.20), (0.66, 0.27))
    rows = page.get_by_test_id("box-list").locator(".box-row")
    expect(rows).to_have_count(2)
    canvas.focus()
    page.keyboard.press("Control+z")
    expect(rows).to_have_count(1)
    page.keyboard.press("Control+Shift+z")
    expect(rows).to_have_count(2)
    page.get_by_test_id("submit").click()  # saves the correction, then submits it
    expect(status_of(page)).to_have_attribute("data-status", "submitted")
    assert_clean(page)
    logout(page)

    # The reviewer compares with the rejected revision and approves.
    login(page, world, world.keys["reviewer"])
    page.goto(f"{world.url}/console/#/review/{target}")
    expect(page.get_by_test_id("review-previous")).to_contain_text("人员框偏大")
    expect(page.get_by_test_id("review-current")).to_contain_text("安全帽")
    page.get_by_test_id("approve").click()
    expect(page.locator(".notice.success .notice-text").last).to_contain_text(f"#{target}")
    assert_clean(page)

    # The stored trail: revision 1 sent back with the reason, revision 2 approved with two boxes.
    revisions = api(world, world.keys["reviewer"], f"/v1/samples/{target}/annotations/history")["revisions"]
    assert [(r["number"], r["status"]) for r in revisions] == [(1, "rejected"), (2, "approved")]
    assert revisions[0]["reason"] == "人员框偏大，请重画；另有安全帽漏标"
    assert [b["class_key"] for b in revisions[0]["boxes"]] == ["person"]
    assert sorted(b["class_key"] for b in revisions[1]["boxes"]) == ["helmet", "person"]
    moved, original = revisions[1]["boxes"][0], revisions[0]["boxes"][0]
    assert moved["x1"] < original["x1"] and moved["y1"] < original["y1"]
    assert moved["x2"] - moved["x1"] == pytest.approx(original["x2"] - original["x1"], abs=1)
    current = api(world, world.keys["reviewer"], f"/v1/samples/{target}/annotations")
    assert current["status"] == "approved" and current["approved_revision_id"] == revisions[1]["id"]

    # The sample page shows the boxes and the audit trail of all of it.
    page.goto(f"{world.url}/console/#/sample/{target}")
    expect(page.locator(".box-overlay rect")).to_have_count(2)
    expect(page.get_by_test_id("history")).to_contain_text("退回修改")
    expect(page.get_by_test_id("history")).to_contain_text("审核通过")


# --- library: paging, upload, suggestions -----------------------------------------------------------


def test_library_pages_through_the_keyset_cursor(console_page: Any, console_world: ConsoleWorld) -> None:
    page, world = console_page, console_world
    visible = api(world, world.keys["curator"], "/v1/samples?limit=500")["items"]
    seen: list[str] = []

    def small_pages(route: Any) -> None:
        # Pages of 3 instead of 60, so a handful of samples takes several cursor hops.
        url = route.request.url.replace("limit=60", "limit=3")
        seen.append(url)
        route.continue_(url=url)

    page.route("**/v1/samples?*", small_pages)
    login(page, world, world.keys["curator"])
    cards = page.get_by_test_id("sample-card")
    expect(cards).to_have_count(len(visible))
    expect(page.get_by_test_id("sample-count")).to_have_text(f"共 {len(visible)} 个样本")
    ids = [int(i) for i in cards.evaluate_all("cards => cards.map((c) => c.dataset.sampleId)")]
    assert ids == [s["id"] for s in visible]  # newest first, none repeated or skipped
    assert sum("cursor=" in u for u in seen) >= len(visible) // 3
    assert_clean(page)


def test_upload_photos_and_a_zip_with_progress(console_page: Any, console_world: ConsoleWorld) -> None:
    import io
    import zipfile

    from tests.fixtures.core import make_image

    page, world = console_page, console_world
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("现场/照片1.jpg", make_image(320, 240, seed=901))
        zf.writestr("现场/照片2.jpg", make_image(320, 240, seed=902))
        zf.writestr("说明.txt", "not a photo")
    before = len(api(world, world.keys["curator"], "/v1/samples?limit=500")["items"])

    login(page, world, world.keys["curator"])
    page.get_by_test_id("upload-open").click()
    page.get_by_test_id("upload-sector").select_option("dust")
    page.get_by_test_id("upload-input").set_input_files(
        [
            {"name": "p1.jpg", "mimeType": "image/jpeg", "buffer": make_image(320, 240, seed=900)},
            {"name": "photos.zip", "mimeType": "application/zip", "buffer": archive.getvalue()},
            {"name": "notes.jpg", "mimeType": "image/jpeg", "buffer": b"this is not a jpeg"},
        ]
    )
    page.locator('dialog button[value="go"]').click()
    rows = page.get_by_test_id("upload-list").locator("li")
    expect(rows.nth(0)).to_contain_text("已入库 #")
    expect(rows.nth(1)).to_contain_text("入库 2，已存在 0，拒收 0，跳过 1")
    expect(rows.nth(2).locator(".form-error")).not_to_be_empty()  # the API's reason for the bad file
    expect(page.locator(".notice.error .notice-text").last).to_contain_text("入库 3")
    assert page.locator("progress").evaluate_all("bars => bars.map((b) => b.value)")[:2] == [1, 1]
    page.locator("dialog button", has_text="关闭").click()
    after = api(world, world.keys["curator"], "/v1/samples?limit=500")["items"]
    assert len(after) == before + 3
    assert {s["original_name"] for s in after[:3]} == {"p1.jpg", "现场/照片1.jpg", "现场/照片2.jpg"}
    expect(page.get_by_test_id("sample-card")).to_have_count(len(after))


def test_accept_and_edit_a_model_suggestion(console_page: Any, console_world: ConsoleWorld) -> None:
    from hazardlens.auth import Principal
    from hazardlens.detections import Box, Detections
    from hazardlens.labeling.suggestions import store_suggestions

    page, world = console_page, console_world
    sample = world.samples["s3"]
    model = Principal(user_id=None, name="model", org_code="420000", role="admin")
    with world.ctx.db.session() as s:
        suggestion = store_suggestions(
            s,
            model,
            sample,
            "hazard-yolo 3",
            Detections.from_boxes(
                [
                    Box("accumulated_dust", 40, 300, 300, 380, confidence=0.91),
                    Box("fire", 400, 100, 460, 180, confidence=0.34),
                ]
            ),
        ).id

    login(page, world, world.keys["curator"])
    open_annotator(page, world, sample)
    card = page.locator(f'[data-suggestion-id="{suggestion}"]')
    expect(card).to_contain_text("hazard-yolo 3")
    card.get_by_role("button", name="采用").click()
    rows = page.get_by_test_id("box-list").locator(".box-row")
    expect(rows).to_have_count(2)
    rows.filter(has_text="明火").get_by_role("button", name="删除").click()  # the fire was a false alarm
    expect(rows).to_have_count(1)
    page.get_by_test_id("save").click()
    expect(page.locator(".notice.success .notice-text").last).to_have_text("已保存")

    current = api(world, world.keys["curator"], f"/v1/samples/{sample}/annotations")
    assert current["revision"]["source"] == "model" and current["revision"]["model_version"] == "hazard-yolo 3"
    assert [b["class_key"] for b in current["boxes"]] == ["accumulated_dust"]
    closed = api(world, world.keys["curator"], f"/v1/samples/{sample}/suggestions?include_closed=true")["items"]
    assert [(x["id"], x["status"]) for x in closed] == [(suggestion, "accepted")]
    assert_clean(page)


# --- refusals ------------------------------------------------------------------------------------


def test_wrong_expired_and_revoked_keys_say_why(console_page: Any, console_world: ConsoleWorld) -> None:
    page, world = console_page, console_world
    page.goto(f"{world.url}/console/")
    expect(page.get_by_test_id("login-key")).to_be_visible()  # no key: the login page
    page.get_by_test_id("login-key").fill("hl_000000000000_not-a-real-key")
    page.get_by_test_id("login-submit").click()
    expect(page.get_by_test_id("login-error")).to_have_text("登录失败：invalid API key")
    assert page.evaluate("sessionStorage.length") == 0  # a refused key is not kept

    with world.ctx.db.session() as s:
        expired, _ = create_key(s, "420000", "curator", name="expired-curator")
        row = s.scalar(select(ApiKey).where(ApiKey.prefix == expired.split("_")[1]))
        row.expires_at = datetime.now(UTC) - timedelta(days=1)
    page.get_by_test_id("login-key").fill(expired)
    page.get_by_test_id("login-submit").click()
    expect(page.get_by_test_id("login-error")).to_have_text("登录失败：this API key has expired")

    # A key revoked while in use: the next request ends the session with the API's reason.
    with world.ctx.db.session() as s:
        revocable, _ = create_key(s, "420000", "curator", name="revoked-curator")
    login(page, world, revocable)
    assert revocable not in page.url  # the key never goes into a URL...
    assert page.evaluate("Object.values(sessionStorage)") == [revocable]  # ...only into sessionStorage
    with world.ctx.db.session() as s:
        revoke_key(s, revocable.split("_")[1])
    page.goto(f"{world.url}/console/#/sample/{world.samples['s0']}")
    expect(page.locator(".notice.error .notice-text")).to_contain_text("this API key has been revoked")
    expect(page.get_by_test_id("login-key")).to_be_visible()
    assert page.evaluate("sessionStorage.length") == 0
    assert_clean(page)


def test_curator_cannot_review(console_page: Any, console_world: ConsoleWorld) -> None:
    page, world = console_page, console_world
    sample = world.samples["s1"]
    with httpx.Client(base_url=world.url, headers={"Authorization": f"Bearer {world.keys['admin']}"}) as admin:
        admin.put(
            f"/v1/samples/{sample}/annotations",
            json={"boxes": [{"class_key": "fire", "x1": 10, "y1": 10, "x2": 60, "y2": 50}]},
        ).raise_for_status()
        admin.post(f"/v1/samples/{sample}/annotations/submit").raise_for_status()

    login(page, world, world.keys["curator"])
    page.goto(f"{world.url}/console/#/review/{sample}")
    # No approve or reject button, and the API's own reason for the empty queue.
    expect(page.get_by_test_id("no-review-right")).to_contain_text("标注员")
    expect(page.get_by_test_id("review-error")).to_contain_text("may not do 'annotations:review'")
    expect(page.get_by_test_id("approve")).to_have_count(0)
    expect(page.get_by_test_id("reject")).to_have_count(0)
    assert api(world, world.keys["admin"], f"/v1/samples/{sample}/annotations")["status"] == "submitted"

    # The language toggle switches every label, and back.
    page.get_by_test_id("lang-toggle").click()
    expect(page.get_by_test_id("no-review-right")).to_contain_text("Curator")
    expect(page.locator('.nav-link[data-route="library"]')).to_have_text("Library")
    page.get_by_test_id("lang-toggle").click()
    expect(page.locator('.nav-link[data-route="library"]')).to_have_text("样本库")
    assert_clean(page)


def test_other_organisations_sample_is_not_there(console_page: Any, console_world: ConsoleWorld) -> None:
    page, world = console_page, console_world
    foreign = world.samples["foreign"]
    login(page, world, world.keys["curator"])
    page.goto(f"{world.url}/console/#/sample/{foreign}")
    expect(page.get_by_test_id("page-error")).to_contain_text(f"{foreign}")
    page.goto(f"{world.url}/console/#/annotate/{foreign}")
    expect(page.get_by_test_id("page-error")).to_be_visible()
    expect(page.get_by_test_id("annotator-canvas")).to_have_count(0)
    # The library never lists it either.
    page.goto(f"{world.url}/console/#/library")
    expect(page.get_by_test_id("sample-card").first).to_be_visible()
    expect(page.locator(f'[data-sample-id="{foreign}"]')).to_have_count(0)
    other = api(world, world.keys["other"], f"/v1/samples/{foreign}/annotations")
    assert other["status"] == "unlabeled" and other["revision"] is None
    assert_clean(page)


# --- touch ---------------------------------------------------------------------------------------------


def test_touch_pinch_zoom_then_draw_a_small_box(chromium: Any, console_world: ConsoleWorld) -> None:
    """On a tablet: two fingers zoom in (and draw nothing), one finger then draws a box, and the box
    is stored in image pixels, so a box drawn large on a zoomed screen is small in the image."""
    world = console_world
    sample = world.samples["s2"]
    context = chromium.new_context(
        viewport={"width": 820, "height": 1180}, has_touch=True, is_mobile=True, locale="zh-CN"
    )
    try:
        page = context.new_page()
        problems: list[str] = []
        page.on("pageerror", lambda exc: problems.append(str(exc)))
        page.console_problems = problems
        login(page, world, world.keys["curator"])
        canvas = open_annotator(page, world, sample)
        cdp = context.new_cdp_session(page)
        box = canvas.bounding_box()
        cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2

        def touch(kind: str, *points: tuple[float, float]) -> None:
            cdp.send(
                "Input.dispatchTouchEvent",
                {"type": kind, "touchPoints": [{"x": x, "y": y, "id": i} for i, (x, y) in enumerate(points)]},
            )

        zoom_before = int(page.get_by_test_id("zoom").inner_text().rstrip("%"))
        touch("touchStart", (cx - 40, cy), (cx + 40, cy))
        for step in range(1, 9):
            touch("touchMove", (cx - 40 - 30 * step, cy), (cx + 40 + 30 * step, cy))
        touch("touchEnd")
        zoom_after = int(page.get_by_test_id("zoom").inner_text().rstrip("%"))
        assert zoom_after > zoom_before * 3  # fingers 80 px -> 560 px apart
        expect(page.get_by_test_id("box-list").locator(".box-row")).to_have_count(0)

        touch("touchStart", (cx - 60, cy - 60))
        for step in range(1, 7):
            touch("touchMove", (cx - 60 + 20 * step, cy - 60 + 20 * step))
        touch("touchEnd")
        expect(page.get_by_test_id("box-list").locator(".box-row")).to_have_count(1)
        # click, not tap: right after CDP touch sequences Chromium swallows the first synthetic tap
        # (a plain page without the console does the same).
        page.get_by_test_id("save").click()
        expect(page.locator(".notice.success .notice-text").last).to_have_text("已保存")

        (stored,) = api(world, world.keys["curator"], f"/v1/samples/{sample}/annotations")["boxes"]
        drawn = 120 / (zoom_after / 100)  # 120 screen px at the zoomed scale, in image pixels
        assert stored["x2"] - stored["x1"] == pytest.approx(drawn, rel=0.15)
        assert stored["x2"] - stored["x1"] < 40
        assert problems == []
    finally:
        context.close()


def test_a_page_that_cannot_load_says_so_instead_of_staying_put(console_page: Any, console_world: ConsoleWorld) -> None:
    """A nav click whose page module cannot be fetched (the server went away for a moment) shows an
    error with a retry, not the previous page as if the click had been lost."""
    page, world = console_page, console_world
    login(page, world, world.keys["admin"])
    expect(page.get_by_test_id("sample-grid")).to_be_attached()
    page.route("**/console/pages/jobs.js*", lambda route: route.abort())
    page.locator('[data-route="jobs"]').click()
    error = page.get_by_test_id("route-error")
    expect(error).to_be_visible()
    expect(error).to_contain_text("页面加载失败")
    expect(page.get_by_test_id("sample-grid")).to_have_count(0)  # the library is not left on screen
    assert any("jobs.js" in p or "import" in p.lower() for p in page.console_problems), page.console_problems


def test_the_system_admin_adopts_an_addition_pulled_from_a_peer(console_page: Any, console_world: ConsoleWorld) -> None:
    """Issue 17: the legal page lists the approved additions pulled from other instances with their
    origin and clause; the system organisation's admin adopts one for an organisation here, which
    then has it as an approved addition of its own; an organisation's admin sees the list, no button."""
    from hazardlens.auth import SYSTEM
    from hazardlens.federation.peers import add_peer
    from hazardlens.federation.signing import ensure_keypair
    from hazardlens.orm import FederatedAddition, Peer
    from hazardlens.settings import Settings

    ctx = console_world.ctx
    system_org = ctx.settings.system_org
    with ctx.db.session() as s:
        system_key, _ = create_key(s, system_org, "admin", name="ministry-admin")
        peer_keys = ensure_keypair(Settings(home=ctx.settings.home.parent / "peer-home"))
        add_peer(s, SYSTEM, "hubei", "http://127.0.0.1:9", peer_keys, "420000", ["feedback"])
        peer = s.scalar(select(Peer).where(Peer.name == "hubei"))
        assert peer is not None
        pulled = FederatedAddition(
            peer_id=peer.id, origin_id=7, origin_org="420000", kind="class", key="oil_leak",
            payload={"key": "oil_leak", "name_zh": "漏油", "name_en": "oil leak", "sector": "general",
                     "inspection_items": [], "severity": "medium", "finding_zh": "设备漏油", "is_hazard": True,
                     "legal_basis": ["《示例条例》第一条"]},
            legal_text="设备不得漏油。", legal_citation="《示例条例》第一条",
            proposed_by="admin-hb", reviewed_by="legal-hb", review_reason="条款为强制性规定",
        )  # fmt: skip
        s.add(pulled)
        s.flush()
        pulled_id = pulled.id
    page = console_page
    login(page, console_world, console_world.keys["admin"])  # an organisation's admin: reads, cannot adopt
    page.goto(f"{console_world.url}/console/#/legal")
    row = page.locator(f'[data-testid="pulled-table"] tr[data-pulled="{pulled_id}"]')
    expect(row).to_contain_text("hubei")
    expect(row).to_contain_text("《示例条例》第一条")
    expect(page.get_by_test_id(f"adopt-{pulled_id}")).to_have_count(0)
    logout(page)

    login(page, console_world, system_key)
    page.goto(f"{console_world.url}/console/#/legal")
    expect(page.get_by_test_id("me-role")).to_contain_text("管理员")
    page.get_by_test_id(f"adopt-{pulled_id}").click()
    page.get_by_test_id("adopt-org").fill("420000")
    page.locator('dialog button[value="ok"]').click()
    expect(page.get_by_test_id(f"adopted-{pulled_id}")).not_to_have_text("—")
    expect(page.get_by_test_id(f"adopt-{pulled_id}")).to_have_count(0)
    local = api(console_world, console_world.keys["admin"], "/v1/taxonomy/additions")["additions"]
    assert [(a["key"], a["status"], a["org_code"]) for a in local if a["key"] == "oil_leak"] == [
        ("oil_leak", "approved", "420000")
    ]
    assert_clean(page)
