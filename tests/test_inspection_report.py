"""The printable inspection record (GET /v1/inspections/{record_no}/report.pdf): rendered with
Poppler (pdftoppm, pdftotext, pdffonts) as a reader's PDF viewer would, the Chinese text read back,
the font embedded, and the confirmed finding's box found in the rendered pixels; suggestions the
inspector has not confirmed are not drawn or listed."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest
from PIL import Image

from tests.fixtures.core import auth
from tests.fixtures.serving import photo

RECORD = "鄂应急检〔2026〕15号"
DPI = 100
#: The corrected box the inspector draws (original pixels of the 160x120 test photo).
BOX = {"x1": 20.0, "y1": 30.0, "x2": 120.0, "y2": 100.0}


def _poppler() -> None:
    if all(shutil.which(t) for t in ("pdftoppm", "pdftotext", "pdffonts")):
        return
    if os.environ.get("CI"):
        pytest.fail("poppler-utils (pdftoppm, pdftotext) must be installed in CI: make pdftools")
    pytest.skip("poppler-utils is not installed (make pdftools)")


def _url(record: str = RECORD) -> str:
    return f"/v1/inspections/{quote(record, safe='')}"


def _post(api, key, seed=1):  # type: ignore[no-untyped-def]
    r = api.post(
        f"{_url()}/photos",
        data={"enterprise_id": "91420100MA4K", "sector": "general", "inspector_id": "执法证42010001"},
        headers=auth(key),
        files={"file": ("现场.jpg", photo(seed=seed), "image/jpeg")},
    )
    assert r.status_code == 201, r.text
    return r.json()


def _text(pdf: Path) -> str:
    return subprocess.run(["pdftotext", "-layout", str(pdf), "-"], capture_output=True, check=True, text=True).stdout


def _page1(pdf: Path, tmp: Path) -> np.ndarray:
    subprocess.run(["pdftoppm", "-r", str(DPI), "-png", "-f", "1", "-l", "1", str(pdf), str(tmp / "p")], check=True)
    (png,) = sorted(tmp.glob("p*.png"))
    return np.asarray(Image.open(png).convert("RGB")).astype(int)


def _red(rgb: np.ndarray) -> np.ndarray:
    """The box colour (220, 0, 0) exactly (within rounding): the core of a 0.7 mm stroke renders in it,
    while the photo's own reds (and the dark-red notes, 150, 0, 0) never match it."""
    return (np.abs(rgb[..., 0] - 220) <= 6) & (rgb[..., 1] <= 6) & (rgb[..., 2] <= 6)


def _edge_columns(mask: np.ndarray, min_run: int) -> list[int]:
    """Columns holding a vertical run of box colour at least ``min_run`` pixels long."""
    cols = []
    for x in range(mask.shape[1]):
        col = mask[:, x]
        if col.sum() < min_run:
            continue
        run = best = 0
        for v in col:
            run = run + 1 if v else 0
            best = max(best, run)
        if best >= min_run:
            cols.append(x)
    return cols


def test_report_prints_confirmed_findings_in_chinese_with_the_box_drawn(api, make_key, tmp_path) -> None:
    _poppler()
    key = make_key("420000", "inspector", "王执法")
    body = _post(api, key)
    findings = body["findings"]
    assert len(findings) >= 2, "the test photo should give at least two suggestions"

    # Before any decision: nothing confirmed, so nothing is drawn and the suggestions are marked as such.
    before = api.get(f"{_url()}/report.pdf", headers=auth(key))
    assert before.status_code == 200, before.text
    assert before.headers["content-type"] == "application/pdf"
    assert before.content.startswith(b"%PDF-")
    (tmp_path / "before.pdf").write_bytes(before.content)
    text = _text(tmp_path / "before.pdf")
    assert "未经执法人员确认" in text and "本照片无已确认的隐患" in text
    assert "隐患 1：" not in text
    (tmp_path / "b").mkdir()
    assert not _red(_page1(tmp_path / "before.pdf", tmp_path / "b")).any()

    # Confirm the first suggestion with a corrected box, and the second as it is; leave the rest.
    first, second = findings[0], findings[1]
    fix = {"decision": "confirmed", "box": BOX}
    assert api.post(f"/v1/findings/{first['id']}/review", json=fix, headers=auth(key)).status_code == 200
    ok = api.post(f"/v1/findings/{second['id']}/review", json={"decision": "confirmed"}, headers=auth(key))
    assert ok.status_code == 200, ok.text

    r = api.get(f"{_url()}/report.pdf", headers=auth(key))
    assert r.status_code == 200, r.text
    assert "filename*=UTF-8''" in r.headers["content-disposition"]
    pdf = tmp_path / "record.pdf"
    pdf.write_bytes(r.content)
    text = _text(pdf)
    for expected in (
        "现场检查隐患记录",
        RECORD,
        "91420100MA4K",
        "执法证42010001",
        "王执法",  # who confirmed
        "北京时间",
        "检查事项",
        "法律依据",
        first["finding"],
        first["legal_basis"][0][:20],
        first["inspection_items"][0],
        "（执法人员已更正）",
    ):
        assert expected in text, f"{expected!r} not in the PDF text:\n{text}"
    assert "隐患 1：" in text and "隐患 2：" in text and "隐患 3：" not in text  # only the confirmed two
    pending = len(findings) - 2
    if pending:
        assert f"另有 {pending} 项疑似隐患" in text

    fonts = subprocess.run(["pdffonts", str(pdf)], capture_output=True, check=True, text=True).stdout
    row = next(line for line in fonts.splitlines() if "WenQuanYi" in line)
    assert row.split()[-5:-3] == ["yes", "yes"], fonts  # embedded, subset

    # The corrected box is drawn: two vertical edges of its height, as far apart as its width, at the
    # scale the photo is printed at (fit into 178 mm x 110 mm).
    (tmp_path / "a").mkdir()
    mask = _red(_page1(pdf, tmp_path / "a"))
    mm = min(178 / 160, 110 / 120) * DPI / 25.4  # rendered pixels per photo pixel
    width, height = (BOX["x2"] - BOX["x1"]) * mm, (BOX["y2"] - BOX["y1"]) * mm
    cols = _edge_columns(mask, int(height * 0.9))
    assert cols, "no box edge found in the rendered page"
    pairs = [(a, b) for a in cols for b in cols if abs((b - a) - width) <= 4]
    assert pairs, f"no two edges {width:.0f} px apart: columns {cols}"


def test_report_follows_the_record_tenancy_and_roles(api, make_key) -> None:
    key = make_key("420000", "inspector")
    _post(api, key)
    assert api.get(f"{_url()}/report.pdf", headers=auth(make_key("330000", "inspector"))).status_code == 404
    curator = api.get(f"{_url()}/report.pdf", headers=auth(make_key("420000", "curator")))
    assert curator.status_code == 403
    missing = api.get(f"{_url('鄂应急检〔2026〕999号')}/report.pdf", headers=auth(key))
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "record_not_found"
    assert api.get(f"{_url()}/report.pdf").status_code == 401
