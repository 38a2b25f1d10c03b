"""Render the console's library grid and annotator to PNGs (``make screenshots``)::

    python -m hazardlens.serving.console.screenshots --out docs

It builds a throw-away library in a temporary home, serves the real app on a loopback port and
photographs it with the system's headless Chromium. The photos are drawn here (simple plant
scenes: workers with and without helmets, dust, fire, manholes) rather than taken from a data set,
so the pictures in docs/ carry no third-party images and come out the same on every run.
"""

from __future__ import annotations

import argparse
import io
import math
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFilter

W, H = 1280, 720
Boxes = list[dict[str, Any]]


# --- drawn scenes ------------------------------------------------------------------------------------


def _background(rng: random.Random, indoor: bool) -> Image.Image:
    wall = (rng.randint(150, 190), rng.randint(155, 190), rng.randint(160, 200)) if indoor else (170, 196, 222)
    floor = (rng.randint(110, 135),) * 3
    img = Image.new("RGB", (W, H), wall)
    d = ImageDraw.Draw(img)
    horizon = rng.randint(380, 450)
    for y in range(horizon):  # light from above
        shade = int(25 * y / horizon)
        d.line([(0, y), (W, y)], fill=tuple(max(0, c - shade) for c in wall))
    d.rectangle([0, horizon, W, H], fill=floor)
    for _ in range(4):  # beams and pipes
        y = rng.randint(40, horizon - 60)
        colour = rng.choice([(92, 104, 120), (176, 64, 52), (205, 160, 40), (70, 120, 160)])
        d.rectangle([0, y, W, y + rng.randint(10, 22)], fill=colour)
    for _ in range(3):
        x = rng.randint(0, W - 40)
        d.rectangle([x, 0, x + rng.randint(14, 26), horizon], fill=(110, 118, 130))
    noise = Image.effect_noise((W, H), 18).convert("RGB")
    return Image.blend(img, noise, 0.06)


def _worker(
    d: ImageDraw.ImageDraw, rng: random.Random, x: int, y: int, scale: float, helmet: bool, boxes: Boxes
) -> None:
    """A standing worker with feet at (x, y): person, clothes and helmet-or-head boxes."""
    h = int(260 * scale)
    w = int(80 * scale)
    head = int(34 * scale)
    top = y - h
    clothes = rng.choice([(30, 80, 160), (230, 110, 30), (40, 120, 80)])
    d.rectangle([x - w // 2, top + head + 4, x + w // 2, top + int(h * 0.58)], fill=clothes)  # torso
    d.rectangle([x - w // 2 + 4, top + int(h * 0.58), x - 4, y], fill=(45, 50, 70))  # legs
    d.rectangle([x + 4, top + int(h * 0.58), x + w // 2 - 4, y], fill=(45, 50, 70))
    d.ellipse([x - head // 2, top + 4, x + head // 2, top + head + 4], fill=(224, 182, 150))  # face
    if helmet:
        colour = rng.choice([(250, 200, 20), (235, 60, 40), (245, 245, 245), (30, 110, 220)])
        d.chord([x - head // 2 - 4, top - 6, x + head // 2 + 4, top + head], 180, 360, fill=colour)
        d.rectangle([x - head // 2 - 6, top + head // 2 - 4, x + head // 2 + 6, top + head // 2], fill=colour)
        boxes.append(
            {
                "class_key": "helmet",
                "x1": x - head // 2 - 6,
                "y1": top - 6,
                "x2": x + head // 2 + 6,
                "y2": top + head // 2 + 2,
            }
        )
    else:
        d.chord([x - head // 2, top + 2, x + head // 2, top + head], 180, 360, fill=(30, 25, 25))
        boxes.append(
            {"class_key": "head", "x1": x - head // 2 - 2, "y1": top, "x2": x + head // 2 + 2, "y2": top + head + 6}
        )
    boxes.append(
        {
            "class_key": "safety_clothes",
            "x1": x - w // 2,
            "y1": top + head + 4,
            "x2": x + w // 2,
            "y2": top + int(h * 0.58),
        }
    )
    boxes.append({"class_key": "person", "x1": x - w // 2 - 2, "y1": top - 8, "x2": x + w // 2 + 2, "y2": y})


def _dust(d: ImageDraw.ImageDraw, rng: random.Random, boxes: Boxes) -> None:
    x, y = rng.randint(80, 700), rng.randint(560, 640)
    w, h = rng.randint(180, 360), rng.randint(40, 70)
    for _ in range(60):
        px, py = rng.randint(x, x + w), rng.randint(y, y + h)
        r = rng.randint(8, 26)
        tone = rng.randint(170, 200)
        d.ellipse([px - r, py - r // 2, px + r, py + r // 2], fill=(tone, tone - 20, tone - 50))
    boxes.append({"class_key": "accumulated_dust", "x1": x - 20, "y1": y - 12, "x2": x + w + 20, "y2": y + h + 12})


def _collector(d: ImageDraw.ImageDraw, rng: random.Random, boxes: Boxes) -> None:
    x, y = rng.randint(820, 960), rng.randint(120, 170)
    d.rectangle([x, y, x + 230, y + 330], fill=(150, 160, 150), outline=(90, 95, 90), width=4)
    d.polygon([(x, y + 330), (x + 230, y + 330), (x + 140, y + 400), (x + 90, y + 400)], fill=(130, 140, 130))
    boxes.append({"class_key": "dust_collector", "x1": x - 4, "y1": y - 4, "x2": x + 234, "y2": y + 404})
    vx, vy = x + 60, y + 40
    d.rectangle([vx, vy, vx + 110, vy + 90], fill=(200, 60, 50), outline=(120, 30, 30), width=3)
    d.line([(vx, vy), (vx + 110, vy + 90)], fill=(120, 30, 30), width=3)
    boxes.append({"class_key": "explosion_vent", "x1": vx - 3, "y1": vy - 3, "x2": vx + 113, "y2": vy + 93})
    ex = rng.randint(560, 700)
    d.rectangle([ex, 250, ex + 70, 340], fill=(205, 205, 200), outline=(80, 80, 80), width=3)
    d.ellipse([ex + 50, 285, ex + 60, 295], fill=(60, 60, 60))
    boxes.append({"class_key": "non_ex_electrical_box", "x1": ex - 3, "y1": 247, "x2": ex + 73, "y2": 343})


def _fire(img: Image.Image, rng: random.Random, boxes: Boxes) -> Image.Image:
    x, y = rng.randint(300, 900), rng.randint(470, 560)
    smoke = Image.new("L", (W, H), 0)
    sd = ImageDraw.Draw(smoke)
    for i in range(14):
        r = 30 + i * 6
        sd.ellipse([x - r + i * 6, y - 90 - i * 18 - r, x + r + i * 6, y - 90 - i * 18 + r], fill=150)
    smoke = smoke.filter(ImageFilter.GaussianBlur(18))
    img = Image.composite(Image.new("RGB", (W, H), (90, 90, 95)), img, smoke)
    d = ImageDraw.Draw(img)
    for colour, s in (((230, 70, 20), 1.0), ((250, 150, 30), 0.7), ((255, 230, 120), 0.4)):
        d.polygon(
            [
                (x - 70 * s, y),
                (x - 40 * s, y - 120 * s),
                (x - 10 * s, y - 60 * s),
                (x + 10 * s, y - 170 * s),
                (x + 40 * s, y - 70 * s),
                (x + 70 * s, y),
            ],
            fill=colour,
        )
    boxes.append({"class_key": "fire", "x1": x - 74, "y1": y - 174, "x2": x + 74, "y2": y + 4})
    boxes.append({"class_key": "smoke", "x1": x - 40, "y1": y - 450, "x2": x + 200, "y2": y - 120})
    return img


def _manhole(d: ImageDraw.ImageDraw, rng: random.Random, boxes: Boxes, signed: bool) -> None:
    x, y = rng.randint(250, 800), rng.randint(560, 620)
    d.ellipse([x - 110, y - 40, x + 110, y + 40], fill=(40, 40, 45), outline=(90, 90, 90), width=6)
    if signed:
        sx, sy = x + 150, y - 170
        d.rectangle([sx + 28, sy + 70, sx + 34, sy + 170], fill=(80, 80, 80))
        d.polygon([(sx, sy + 70), (sx + 31, sy), (sx + 62, sy + 70)], fill=(250, 205, 20), outline=(20, 20, 20))
        d.text((sx + 27, sy + 30), "!", fill=(20, 20, 20))
        boxes.append(
            {"class_key": "confined_space_entry_signed", "x1": x - 115, "y1": y - 45, "x2": x + 115, "y2": y + 45}
        )
    else:
        boxes.append(
            {"class_key": "confined_space_entry_no_sign", "x1": x - 115, "y1": y - 45, "x2": x + 115, "y2": y + 45}
        )


def scene(seed: int) -> tuple[bytes, Boxes, str]:
    """A drawn site photo: JPEG bytes, its true boxes, and its sector."""
    rng = random.Random(seed)
    kind = ["ppe", "dust", "fire", "confined", "ppe", "dust"][seed % 6]
    img = _background(rng, indoor=kind != "confined")
    d = ImageDraw.Draw(img)
    boxes: Boxes = []
    sector = {"ppe": "general", "dust": "dust", "fire": "general", "confined": "confined_space"}[kind]
    if kind == "dust":
        _collector(d, rng, boxes)
        _dust(d, rng, boxes)
    elif kind == "fire":
        img = _fire(img, rng, boxes)
        d = ImageDraw.Draw(img)
    elif kind == "confined":
        _manhole(d, rng, boxes, signed=seed % 4 == 0)
    for _ in range(rng.randint(1, 4) if kind == "ppe" else rng.randint(0, 2)):
        _worker(
            d,
            rng,
            rng.randint(120, W - 120),
            rng.randint(540, 700),
            rng.uniform(0.6, 1.3),
            helmet=rng.random() > 0.35,
            boxes=boxes,
        )
    img = img.filter(ImageFilter.GaussianBlur(0.6))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    boxes = [
        {**b, "x1": max(0, b["x1"]), "y1": max(0, b["y1"]), "x2": min(W, b["x2"]), "y2": min(H, b["y2"])} for b in boxes
    ]
    return buf.getvalue(), boxes, sector


# --- the library ------------------------------------------------------------------------------------


def build_library(ctx: Any, count: int) -> dict[str, Any]:
    """Samples in every workflow state, a rejected one with its reason, and a model suggestion on the
    sample the annotator shot shows. Returns keys and the ids worth photographing."""
    from hazardlens.auth import create_key, principal_of
    from hazardlens.datasets.library import IngestMeta, ingest
    from hazardlens.detections import Box, Detections
    from hazardlens.labeling import annotations
    from hazardlens.labeling.suggestions import store_suggestions

    with ctx.db.session() as s:
        curator_key, curator = create_key(s, "420000", "curator", name="张敏")
        _, reviewer = create_key(s, "420000", "reviewer", name="李强")
        _, admin = create_key(s, "420000", "admin", name="王静")
        as_curator = principal_of(curator)
        as_reviewer = principal_of(reviewer)
        as_admin = principal_of(admin)
    states = ["approved", "submitted", "in_progress", "unlabeled", "approved", "rejected", "approved", "unlabeled"]
    annotate_id = None
    focus = (0, 0, W, H)
    for i in range(count):
        data, boxes, sector = scene(i)
        meta = IngestMeta(
            sector=sector,
            site_id=f"鄂-{['武钢', '冶炼厂', '铝业', '化工园'][i % 4]}-{i % 3 + 1}",
            camera_id=f"cam-{i % 5 + 1:02d}",
            original_name=f"现场照片_{i + 1:03d}.jpg",
        )
        with ctx.db.session() as s:
            sample_id = ingest(ctx, s, as_curator, data, meta).sample.id
        state = states[i % len(states)]
        with ctx.db.session() as s:
            if state == "approved":
                annotations.save_revision(ctx, s, as_admin, sample_id, boxes, source="import", status="approved")
            elif state in ("submitted", "rejected"):
                annotations.save_revision(ctx, s, as_curator, sample_id, boxes, status="submitted")
            elif state == "in_progress":
                annotations.save_revision(ctx, s, as_curator, sample_id, boxes[: max(1, len(boxes) // 2)])
        if state == "rejected":
            with ctx.db.session() as s:
                annotations.reject(s, as_reviewer, sample_id, "安全帽框偏大，请贴合帽檐重画")
        if annotate_id is None and state == "in_progress" and len(boxes) >= 6:
            annotate_id = sample_id
            focus = (
                min(b["x1"] for b in boxes),
                min(b["y1"] for b in boxes),
                max(b["x2"] for b in boxes),
                max(b["y2"] for b in boxes),
            )
            # What a model would add: the rest of the boxes, with confidences.
            dets = Detections.from_boxes(
                [
                    Box(
                        b["class_key"],
                        b["x1"] + 3,
                        b["y1"] + 2,
                        b["x2"] - 2,
                        b["y2"] + 3,
                        confidence=0.55 + 0.4 * ((k * 37) % 10) / 10,
                    )
                    for k, b in enumerate(boxes[len(boxes) // 2 :])
                ]
            )
            with ctx.db.session() as s:
                store_suggestions(s, as_reviewer, sample_id, "hazard-yolo 3", dets)
    return {"key": curator_key, "annotate": annotate_id, "focus": focus}


# --- pictures ---------------------------------------------------------------------------------------


def _wait_thumbnails(page: Any, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pending = page.evaluate("""() => [...document.querySelectorAll('.thumb img')]
            .filter((img) => img.getBoundingClientRect().top < innerHeight)
            .filter((img) => !img.classList.contains('ready')).length""")
        if pending == 0:
            return
        time.sleep(0.2)


def shoot(out: Path, count: int = 30, lang: str = "zh") -> list[Path]:
    from playwright.sync_api import sync_playwright

    from hazardlens.context import Context
    from hazardlens.serving.app import create_app
    from hazardlens.serving.console.headless import LiveServer, launch_chromium
    from hazardlens.settings import Settings

    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    with tempfile.TemporaryDirectory(prefix="hazardlens-shots-") as tmp:
        ctx = Context(Settings(home=Path(tmp) / "home"))
        ctx.init()
        world = build_library(ctx, count)
        with LiveServer(create_app(ctx, start_background=False)) as server, sync_playwright() as p:
            browser = launch_chromium(p)
            context = browser.new_context(viewport={"width": 1440, "height": 900}, locale="zh-CN")
            context.add_init_script(f"localStorage.setItem('hazardlens.lang', '{lang}')")
            page = context.new_page()
            page.goto(f"{server.url}/console/#/login")
            page.get_by_test_id("login-key").fill(world["key"])
            page.get_by_test_id("login-submit").click()
            page.get_by_test_id("sample-card").first.wait_for()
            _wait_thumbnails(page)
            page.mouse.move(0, 0)
            written.append(out / "console-library.png")
            page.screenshot(path=str(written[-1]))

            page.goto(f"{server.url}/console/#/annotate/{world['annotate']}")
            page.locator('[data-testid="annotator-canvas"][data-ready="1"]').wait_for()
            # Zoom in on the labelled workers, the way a curator works on small objects.
            canvas = page.get_by_test_id("annotator-canvas").bounding_box()
            x1, y1, x2, y2 = world["focus"]
            scale = min(canvas["width"] / W, canvas["height"] / H) * 0.96
            cx = canvas["x"] + (canvas["width"] - W * scale) / 2 + (x1 + x2) / 2 * scale
            cy = canvas["y"] + (canvas["height"] - H * scale) / 2 + (y1 + y2) / 2 * scale
            page.mouse.move(cx, cy)
            zoom = min(2.2, 0.8 * min(W / max(1, x2 - x1), H / max(1, y2 - y1)))
            page.mouse.wheel(0, -math.log(zoom) / 0.0015)
            time.sleep(0.3)
            page.locator(".box-row").first.click()  # a selected box shows its handles
            page.mouse.move(cx + 90, cy - 40)
            time.sleep(0.3)
            written.append(out / "console-annotator.png")
            page.screenshot(path=str(written[-1]))
            browser.close()
        ctx.close()
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs"), help="folder for the PNGs (default: docs)")
    parser.add_argument("--count", type=int, default=30, help="samples in the drawn library (default: 30)")
    parser.add_argument("--lang", choices=("zh", "en"), default="zh")
    args = parser.parse_args(argv)
    for path in shoot(args.out, args.count, args.lang):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
