"""The printable inspection record (现场检查隐患记录): a PDF in Chinese for the enforcement file.

Why a PDF built here, not by the browser: the paper record goes into an enforcement file, so every
copy of it must read the same whatever device prints it; the API answers one document, with its
fonts embedded (WenQuanYi Micro Hei from the ``paperang-p2-fonts-cjk`` package, subset into the file,
never downloaded), rendered by fpdf2.

What goes on paper is what the inspector decided, not what the model suggested: each photo is shown
with its **confirmed** findings drawn (the corrected box and class when the inspector corrected
one), numbered, with the finding text, the inspection items and the legal basis. Suggestions the
inspector has not decided yet are left out of the findings and counted in one clearly marked line
(未经执法人员确认，不列入本记录), and rejected ones are left out too: a model's guess never reaches
an enforcement file by accident.

Tenancy is :func:`hazardlens.labeling.inspections.get_inspection`'s: another organisation's record
is not found (404), like reading it.
"""

from __future__ import annotations

import importlib.util
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from fpdf import FPDF
from sqlalchemy.orm import Session

from hazardlens.auth import Principal
from hazardlens.context import Context
from hazardlens.contracts.detections import class_text
from hazardlens.dates import utc
from hazardlens.detector import detection_taxonomy
from hazardlens.errors import HazardError
from hazardlens.images import inspect_image
from hazardlens.labeling.inspections import get_inspection
from hazardlens.orm import Sample
from hazardlens.rules import RuleSet, default_rules
from hazardlens.store import ObjectNotFound, blob_key
from hazardlens.taxonomy import Taxonomy

#: Times on paper are Beijing time: the reader of an enforcement file reads local time, not UTC.
BEIJING = timezone(timedelta(hours=8), "北京时间")
#: The long side of a photo as embedded (pixels): sharp at print size, a few hundred kB a photo.
PHOTO_PIXELS = 1600
#: Confirmed findings are drawn in this colour (RGB), thick enough to see on a grey photocopy.
BOX_RGB = (220, 0, 0)
#: Where the font is looked for when the package is missing (Debian's WenQuanYi, Noto CJK).
_SYSTEM_FONTS = (
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
)
_FONT = "cjk"


class FontMissing(HazardError):
    """No font with Chinese glyphs is installed: the record cannot be printed (an installation fault)."""

    status, code = 503, "report_font_missing"


def cjk_font() -> Path:
    """The font file embedded in reports: the one the ``paperang-p2-fonts-cjk`` dependency ships,
    else a system CJK font. Found on disk only; nothing is downloaded."""
    spec = importlib.util.find_spec("paperang_p2_fonts_cjk")
    candidates: list[Path] = []
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(p) / "fonts" / "wqy-microhei.ttc" for p in spec.submodule_search_locations]
    candidates += [Path(p) for p in _SYSTEM_FONTS]
    for path in candidates:
        if path.is_file():
            return path
    raise FontMissing("no font with Chinese glyphs is installed; install the 'paperang-p2-fonts-cjk' package")


def beijing(value: str | datetime | None) -> str:
    """``2026-03-05 09:30（北京时间）`` for an ISO text or datetime; '—' when unknown."""
    if value is None or value == "":
        return "—"
    when = utc(datetime.fromisoformat(value) if isinstance(value, str) else value)
    assert when is not None
    return when.astimezone(BEIJING).strftime("%Y-%m-%d %H:%M")


# --- what goes on paper ----------------------------------------------------------------------------


@dataclass
class ConfirmedFinding:
    """A confirmed finding as printed: the inspector's final class and box, and its text."""

    number: int
    class_key: str
    name_zh: str
    finding: str
    box: Mapping[str, float]
    confidence: float
    corrected: bool
    items: list[tuple[str, str]]  # (code, title)
    legal_basis: list[str]
    reviewed_by: str | None
    reviewed_at: str | None


@dataclass
class PhotoPage:
    photo_id: int
    sample_id: int
    enterprise_id: str | None
    inspector_id: str | None
    when: str | None
    item_codes: list[str]
    image: Mapping[str, Any] | None
    confirmed: list[ConfirmedFinding] = field(default_factory=list)
    pending: int = 0
    rejected: int = 0


@dataclass
class RecordReport:
    """Everything the PDF shows, built from the record as the API answers it."""

    record_no: str
    org_code: str
    photos: list[PhotoPage]
    items: list[tuple[str, str]]
    generated_at: datetime

    @property
    def confirmed(self) -> int:
        return sum(len(p.confirmed) for p in self.photos)

    @property
    def pending(self) -> int:
        return sum(p.pending for p in self.photos)

    @property
    def rejected(self) -> int:
        return sum(p.rejected for p in self.photos)


def _item_titles(tax: Taxonomy, codes: Sequence[str]) -> list[tuple[str, str]]:
    out = []
    for code in codes:
        item = tax.items.get(code)
        out.append((code, item.title_zh if item is not None else ""))
    return out


def _confirmed(tax: Taxonomy, rules: RuleSet, number: int, f: Mapping[str, Any]) -> ConfirmedFinding:
    """The printed form of a confirmed finding. A correction to another class prints that class's
    text (the suggestion's rule text no longer describes what the inspector saw)."""
    review = f.get("review") or {}
    final_class = str(review.get("class_key") or f["class_key"])
    box = review.get("box") or f["box"]
    if final_class != f["class_key"]:
        text = class_text(tax, final_class)
        cls = tax.classes.get(final_class)
        name, finding = text["name_zh"], (cls.finding_zh if cls is not None else "") or text["name_zh"]
        items, basis = list(text["inspection_items"]), list(text["legal_basis"])
    else:
        name, finding = f["name_zh"], f.get("finding") or f["name_zh"]
        items, basis = list(f.get("inspection_items") or []), list(f.get("legal_basis") or [])
    return ConfirmedFinding(
        number=number,
        class_key=final_class,
        name_zh=name,
        finding=finding,
        box={k: float(box[k]) for k in ("x1", "y1", "x2", "y2")},
        confidence=float(f.get("confidence") or 0.0),
        corrected=bool(review.get("corrected")),
        items=_item_titles(tax, items),
        legal_basis=basis,
        reviewed_by=review.get("by"),
        reviewed_at=review.get("at") or f.get("reviewed_at"),
    )


def build_report(ctx: Context, session: Session, principal: Principal, record_no: str) -> RecordReport:
    """The record's content for paper (tenancy and roles as reading the record: 404 / 403)."""
    tax = detection_taxonomy(ctx, session)
    rules = default_rules(ctx)
    record = get_inspection(session, principal, record_no, taxonomy=tax, rules=rules)
    pages: list[PhotoPage] = []
    number = 0
    item_codes: list[str] = []
    for p in record["photos"]:
        page = PhotoPage(
            photo_id=p["photo_id"],
            sample_id=p["sample_id"],
            enterprise_id=p.get("enterprise_id"),
            inspector_id=p.get("inspector_id"),
            when=p.get("captured_at") or p.get("created_at"),
            item_codes=list(p.get("item_codes") or []),
            image=p.get("image"),
        )
        for f in p["findings"]:
            if f["status"] == "confirmed":
                number += 1
                page.confirmed.append(_confirmed(tax, rules, number, f))
            elif f["status"] == "rejected":
                page.rejected += 1
            else:
                page.pending += 1
        for code in [*page.item_codes, *(c for cf in page.confirmed for c, _ in cf.items)]:
            if code not in item_codes:
                item_codes.append(code)
        pages.append(page)
    return RecordReport(
        record_no=record["record_no"],
        org_code=principal.org_code,
        photos=pages,
        items=_item_titles(tax, item_codes),
        generated_at=datetime.now(BEIJING),
    )


# --- the PDF ---------------------------------------------------------------------------------------


class _RecordPDF(FPDF):
    def __init__(self, record_no: str, font: Path) -> None:
        super().__init__(orientation="P", unit="mm", format="A4")
        self.record_no = record_no
        self.add_font(_FONT, "", str(font))
        self.set_auto_page_break(auto=True, margin=18)
        self.set_margins(16, 16, 16)
        self.alias_nb_pages()

    def footer(self) -> None:
        self.set_y(-13)
        self.set_font(_FONT, size=8)
        self.set_text_color(90, 90, 90)
        self.cell(0, 5, f"{self.record_no}    第 {self.page_no()} 页 / 共 {{nb}} 页", align="C")
        self.set_text_color(0, 0, 0)


def _line(pdf: FPDF, label: str, value: str, size: float = 10.5) -> None:
    pdf.set_font(_FONT, size=size)
    pdf.multi_cell(0, 6.2, f"{label}：{value}", new_x="LMARGIN", new_y="NEXT")


def _photo_image(ctx: Context, session: Session, sample_id: int) -> bytes | None:
    """The photo upright (EXIF orientation applied, the pixels boxes are in), at most
    :data:`PHOTO_PIXELS` on its long side, as JPEG; None when its bytes are gone from the store."""
    sample = session.get(Sample, sample_id)
    if sample is None:
        return None
    try:
        data = ctx.store.get(blob_key(sample.sha256))
    except ObjectNotFound:
        return None
    return inspect_image(data, ctx.settings.max_pixels, thumb_size=PHOTO_PIXELS).thumbnail_jpeg


def _draw_photo(pdf: FPDF, jpeg: bytes, page: PhotoPage) -> None:
    """The photo scaled to the text width (or 110 mm high at most), each confirmed finding's box drawn
    on it with its number. Boxes are in original pixels; the stored image size maps them."""
    size = page.image or {}
    from PIL import Image

    with Image.open(io.BytesIO(jpeg)) as im:
        jw, jh = im.size
    width_px = float(size.get("width") or jw)
    height_px = float(size.get("height") or jh)
    max_w, max_h = pdf.epw, 110.0
    scale = min(max_w / width_px, max_h / height_px)
    w, h = width_px * scale, height_px * scale
    if pdf.get_y() + h > pdf.page_break_trigger:
        pdf.add_page()
    x, y = pdf.l_margin + (max_w - w) / 2, pdf.get_y()
    pdf.image(io.BytesIO(jpeg), x=x, y=y, w=w, h=h)
    pdf.set_draw_color(*BOX_RGB)
    pdf.set_line_width(0.7)
    pdf.set_font(_FONT, size=9)
    for cf in page.confirmed:
        b = cf.box
        bx, by = x + b["x1"] * scale, y + b["y1"] * scale
        bw, bh = max(0.5, (b["x2"] - b["x1"]) * scale), max(0.5, (b["y2"] - b["y1"]) * scale)
        pdf.rect(bx, by, bw, bh)
        label = str(cf.number)
        lw = pdf.get_string_width(label) + 2
        pdf.set_fill_color(*BOX_RGB)
        pdf.set_text_color(255, 255, 255)
        pdf.set_xy(bx, max(y, by - 4.5))
        pdf.cell(lw, 4.5, label, fill=True, align="C")
    pdf.set_text_color(0, 0, 0)
    pdf.set_draw_color(0, 0, 0)
    pdf.set_line_width(0.2)
    pdf.set_xy(pdf.l_margin, y + h + 3)


def _summary(pdf: FPDF, report: RecordReport) -> None:
    enterprises = sorted({p.enterprise_id for p in report.photos if p.enterprise_id})
    inspectors = sorted({p.inspector_id for p in report.photos if p.inspector_id})
    reviewers = sorted({cf.reviewed_by for p in report.photos for cf in p.confirmed if cf.reviewed_by})
    times = sorted(t for t in (p.when for p in report.photos) if t)
    when = beijing(times[0]) if times else "—"
    if len(times) > 1 and beijing(times[-1]) != when:
        when = f"{when} 至 {beijing(times[-1])}"
    _line(pdf, "记录编号", report.record_no)
    _line(pdf, "被检查单位", "、".join(enterprises) or "—")
    _line(pdf, "执法人员", "、".join(inspectors) or "—")
    if reviewers:
        _line(pdf, "确认人", "、".join(reviewers))
    _line(pdf, "检查时间", f"{when}（北京时间）" if times else "—")
    _line(pdf, "检查单位（机构代码）", report.org_code)
    _line(pdf, "照片", f"{len(report.photos)} 张；已确认隐患 {report.confirmed} 项")
    if report.items:
        pdf.set_font(_FONT, size=10.5)
        pdf.multi_cell(0, 6.2, "检查事项：", new_x="LMARGIN", new_y="NEXT")
        for code, title in report.items:
            pdf.multi_cell(0, 5.6, f"    {code} {title}", new_x="LMARGIN", new_y="NEXT")
    if report.pending or report.rejected:
        pdf.ln(1)
        pdf.set_font(_FONT, size=9.5)
        pdf.set_text_color(150, 0, 0)
        parts = []
        if report.pending:
            parts.append(f"另有 {report.pending} 项疑似隐患（模型提示）未经执法人员确认，不列入本记录")
        if report.rejected:
            parts.append(f"{report.rejected} 项疑似隐患已被执法人员否定，不列入本记录")
        pdf.multi_cell(0, 5.6, "注：" + "；".join(parts) + "。", new_x="LMARGIN", new_y="NEXT")
        pdf.set_text_color(0, 0, 0)


def _finding_text(pdf: FPDF, cf: ConfirmedFinding) -> None:
    pdf.set_font(_FONT, size=10.5)
    corrected = "（执法人员已更正）" if cf.corrected else ""
    pdf.multi_cell(0, 6, f"隐患 {cf.number}：{cf.finding}（{cf.name_zh}）{corrected}", new_x="LMARGIN", new_y="NEXT")
    pdf.set_font(_FONT, size=9.5)
    if cf.items:
        text = "；".join(f"{code} {title}".strip() for code, title in cf.items)
        pdf.multi_cell(0, 5.2, f"    检查事项：{text}", new_x="LMARGIN", new_y="NEXT")
    for basis in cf.legal_basis:
        pdf.multi_cell(0, 5.2, f"    法律依据：{basis}", new_x="LMARGIN", new_y="NEXT")
    who = f"{cf.reviewed_by or '—'}，{beijing(cf.reviewed_at)}"
    pdf.multi_cell(0, 5.2, f"    模型置信度 {cf.confidence:.2f}；确认：{who}", new_x="LMARGIN", new_y="NEXT")
    pdf.ln(1)


def render_pdf(ctx: Context, session: Session, report: RecordReport) -> bytes:
    """The record as PDF bytes (fonts embedded and subset)."""
    pdf = _RecordPDF(report.record_no, cjk_font())
    pdf.set_title(f"现场检查隐患记录 {report.record_no}")
    pdf.set_author("hazardlens")
    pdf.set_creation_date(report.generated_at)
    pdf.add_page()
    pdf.set_font(_FONT, size=17)
    pdf.cell(0, 11, "现场检查隐患记录", align="C", new_x="LMARGIN", new_y="NEXT")
    pdf.set_font(_FONT, size=9)
    made = f"生成时间：{report.generated_at:%Y-%m-%d %H:%M}（北京时间）"
    pdf.cell(0, 5, made, align="C", new_x="LMARGIN", new_y="NEXT")
    pdf.ln(3)
    _summary(pdf, report)
    for index, page in enumerate(report.photos, start=1):
        pdf.ln(4)
        if pdf.get_y() > pdf.page_break_trigger - 60:
            pdf.add_page()
        pdf.set_font(_FONT, size=12)
        pdf.multi_cell(
            0,
            7,
            f"照片 {index}（样本 #{page.sample_id}，拍摄时间 {beijing(page.when)}）",
            new_x="LMARGIN",
            new_y="NEXT",
        )
        jpeg = _photo_image(ctx, session, page.sample_id)
        if jpeg is not None:
            _draw_photo(pdf, jpeg, page)
        else:
            _line(pdf, "照片", "原图已不在存储中", size=9.5)
        if not page.confirmed:
            pdf.set_font(_FONT, size=10)
            pdf.multi_cell(0, 6, "本照片无已确认的隐患。", new_x="LMARGIN", new_y="NEXT")
        for cf in page.confirmed:
            _finding_text(pdf, cf)
        if page.pending:
            pdf.set_font(_FONT, size=9)
            pdf.set_text_color(150, 0, 0)
            pdf.multi_cell(
                0, 5, f"（本照片另有 {page.pending} 项未经确认的疑似隐患，未列入。）", new_x="LMARGIN", new_y="NEXT"
            )
            pdf.set_text_color(0, 0, 0)
    return bytes(pdf.output())


def record_pdf(ctx: Context, session: Session, principal: Principal, record_no: str) -> tuple[str, bytes]:
    """(the record number as stored, the PDF) for ``GET /v1/inspections/{record_no}/report.pdf``."""
    report = build_report(ctx, session, principal, record_no)
    return report.record_no, render_pdf(ctx, session, report)


__all__ = ["BEIJING", "ConfirmedFinding", "FontMissing", "RecordReport", "build_report", "cjk_font", "record_pdf"]
