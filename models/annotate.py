"""Evidence images: the photo with the suggested boxes and their Chinese names drawn on it.

Inspectors attach these to the record, so labels must be legible Chinese (the CJK font bundled with
the product, found by :func:`~hazardlens.models.ultralytics_env.cjk_font_path`: nothing downloads,
and a font without the glyphs is never used, so no label turns into empty boxes). Boxes are drawn on
the decoded image the request already has (reduced for large photos), scaled from original pixels.
"""

from __future__ import annotations

import io
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from hazardlens.detections import Detections
from hazardlens.models.ultralytics_env import cjk_font_path
from hazardlens.taxonomy import Taxonomy

#: Colours by severity (RGB): a critical hazard must stand out from context classes.
SEVERITY_COLOURS = {"critical": (220, 20, 60), "high": (255, 110, 0), "medium": (255, 200, 0), "low": (30, 144, 255)}
CONTEXT_COLOUR = (0, 170, 90)


@lru_cache(maxsize=16)
def _font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(cjk_font_path()), size=size, index=0)


def render_evidence(
    image_bgr: np.ndarray, detections: Detections, scale: float, taxonomy: Taxonomy, quality: int = 88
) -> bytes:
    """JPEG of ``image_bgr`` with ``detections`` (original pixels, ``scale`` = image px per original px)."""
    image = Image.fromarray(np.ascontiguousarray(image_bgr[..., ::-1]))
    draw = ImageDraw.Draw(image)
    w, h = image.size
    size = max(14, round(min(w, h) / 36))
    font = _font(size)
    line = max(2, round(min(w, h) / 300))
    for box in sorted(detections, key=lambda b: b.confidence or 0.0):  # most confident drawn last, on top
        cls = taxonomy.classes.get(box.class_key)
        colour = SEVERITY_COLOURS.get(cls.severity, CONTEXT_COLOUR) if cls and cls.is_hazard else CONTEXT_COLOUR
        x1, y1, x2, y2 = (v * scale for v in (box.x1, box.y1, box.x2, box.y2))
        draw.rectangle([x1, y1, x2, y2], outline=colour, width=line)
        name = cls.name_zh if cls else box.class_key
        label = f"{'疑似 ' if cls and cls.is_hazard else ''}{name} {box.confidence or 0:.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), label, font=font)
        tw, th = right - left, bottom - top
        ty = y1 - th - 2 * line if y1 - th - 2 * line >= 0 else y1  # above the box, or inside at the top
        draw.rectangle([x1, ty, x1 + tw + 2 * line, ty + th + 2 * line], fill=colour)
        draw.text((x1 + line - left, ty + line - top), label, fill=(255, 255, 255), font=font)
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


__all__ = ["render_evidence"]
