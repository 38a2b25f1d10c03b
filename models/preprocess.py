"""Image decoding and letterboxing for inference, and the way back to original pixels.

Inspectors upload phone photos of 12-50 MP while the detector looks at 640 px, so decoding at full
resolution wastes most of a request's time and memory. :func:`decode_image` lets libjpeg decode at
1/2, 1/4 or 1/8 scale instead, yet reports the size of the EXIF-oriented original, because every box
the product stores is in those pixels (see ``hazardlens.detections``).

:func:`letterbox` reproduces Ultralytics' ``LetterBox`` exactly (same rounding, same grey 114 border)
so that the ONNX engine sees the same tensor as the Ultralytics engine does.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable

import cv2
import numpy as np

from hazardlens.detections import Detections
from hazardlens.errors import TooLarge, UnsupportedMedia
from hazardlens.imagefiles import register_heif
from hazardlens.images import sniff_format

_REDUCED_FLAGS = {
    1: cv2.IMREAD_COLOR,
    2: cv2.IMREAD_REDUCED_COLOR_2,
    4: cv2.IMREAD_REDUCED_COLOR_4,
    8: cv2.IMREAD_REDUCED_COLOR_8,
}


def letterbox(
    image_bgr: np.ndarray, size: int | tuple[int, int], stride: int = 32, auto: bool = False, color: int = 114
) -> tuple[np.ndarray, float, tuple[int, int]]:
    """Resize keeping the aspect ratio and pad to ``size`` (an int or ``(height, width)``).

    Returns the padded image, the scale factor applied and the left/top padding in pixels, which is
    what :func:`boxes_to_original` needs. ``auto=True`` pads only to a multiple of ``stride``.
    """
    h, w = image_bgr.shape[:2]
    new_h, new_w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    ratio = min(new_h / h, new_w / w)
    unpad_w, unpad_h = max(round(w * ratio), 1), max(round(h * ratio), 1)
    dw, dh = new_w - unpad_w, new_h - unpad_h
    if auto:
        dw, dh = dw % stride, dh % stride
    dw_half, dh_half = dw / 2, dh / 2
    if (w, h) != (unpad_w, unpad_h):
        image_bgr = cv2.resize(image_bgr, (unpad_w, unpad_h), interpolation=cv2.INTER_LINEAR)
    top, bottom = round(dh_half - 0.1), round(dh_half + 0.1)
    left, right = round(dw_half - 0.1), round(dw_half + 0.1)
    if top or bottom or left or right:
        image_bgr = cv2.copyMakeBorder(
            image_bgr, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(color, color, color)
        )
    return image_bgr, ratio, (left, top)


def boxes_to_original(
    xyxy: np.ndarray, ratio: float, pad: tuple[float, float], orig_size: tuple[int, int]
) -> np.ndarray:
    """Undo :func:`letterbox` on ``(N, 4)`` boxes and clip them to ``orig_size`` ``(width, height)``."""
    out = np.asarray(xyxy, dtype=np.float32).reshape(-1, 4).copy()
    out[:, [0, 2]] -= pad[0]
    out[:, [1, 3]] -= pad[1]
    out /= ratio
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, orig_size[0])
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, orig_size[1])
    return out


def scale_detections(detections: Detections, from_size: tuple[int, int], to_size: tuple[int, int]) -> Detections:
    """Rescale boxes found on a reduced decode (``from_size``) to the original pixels (``to_size``)."""
    if tuple(from_size) == tuple(to_size) or len(detections) == 0:
        return detections
    sx, sy = to_size[0] / from_size[0], to_size[1] / from_size[1]
    xyxy = detections.xyxy * np.array([sx, sy, sx, sy], dtype=np.float32)
    return Detections(xyxy, detections.class_keys, detections.confidence).clip(*to_size)


def _reduction(longest: int, max_side: int | None) -> int:
    """Biggest libjpeg scale that still leaves at least ``max_side`` pixels on the long side."""
    if not max_side:
        return 1
    for factor in (8, 4, 2):
        if math.ceil(longest / factor) >= max_side:
            return factor
    return 1


#: Limit when a caller passes none (the settings' default): a decode is never unbounded.
DEFAULT_MAX_PIXELS = 100_000_000

#: Sniffed format -> the one PIL opener allowed to read its header (hazardlens.images.sniff_format).
_PIL_FORMATS = {"jpeg": ("JPEG",), "png": ("PNG",), "webp": ("WEBP",), "heic": ("HEIF",)}


def _probe(data: bytes, max_pixels: int | None = None) -> tuple[int, int, str]:
    """Stored (not oriented) width, height and sniffed format from the header only: no pixels are decoded.

    Only the formats the library accepts (JPEG, PNG, WebP, HEIC), sniffed from the leading bytes,
    reach a decoder, and only once their header is read and within ``max_pixels``: OpenCV would
    otherwise decode anything it knows (Radiance HDR, PFM, TIFF, ...) at full size whatever the
    limit (issue 13, item 3)."""
    from PIL import Image

    if not data:
        raise UnsupportedMedia("empty image")
    fmt = sniff_format(data)
    if fmt is None:
        raise UnsupportedMedia(f"not a JPEG, PNG, WebP or HEIC image (starts {data[:12]!r}); only those are decoded")
    if fmt == "heic":
        register_heif()  # iPhones save HEIC; OpenCV cannot read it, Pillow can with pillow-heif
    limit = max_pixels or DEFAULT_MAX_PIXELS
    try:
        with Image.open(io.BytesIO(data), formats=_PIL_FORMATS[fmt]) as im:
            width, height = int(im.size[0]), int(im.size[1])
    except Image.DecompressionBombError as exc:
        raise TooLarge(f"image too large: {exc}") from exc
    except Exception as exc:
        raise UnsupportedMedia(f"cannot read the {fmt.upper()} header: truncated or corrupt ({exc})") from exc
    if width * height > limit:
        raise TooLarge(f"image has {width * height} pixels, more than the limit of {limit}")
    return width, height, fmt


def _decode_with_pillow(data: bytes, factor: int, fmt: str) -> tuple[np.ndarray, tuple[int, int]]:
    from PIL import Image, ImageOps

    register_heif()  # iPhones save HEIC; OpenCV cannot read it, Pillow can with pillow-heif
    try:
        with Image.open(io.BytesIO(data), formats=_PIL_FORMATS[fmt]) as im:
            oriented = ImageOps.exif_transpose(im)
            size = oriented.size
            if factor > 1:
                oriented = oriented.reduce(factor)
            rgb = np.asarray(oriented.convert("RGB"))
    except Image.DecompressionBombError as exc:
        raise TooLarge(f"image too large: {exc}") from exc
    except Exception as exc:
        raise UnsupportedMedia(f"cannot decode image: {exc}") from exc
    return np.ascontiguousarray(rgb[..., ::-1]), (int(size[0]), int(size[1]))


def decode_image(
    data: bytes, max_side: int | None = None, *, max_pixels: int | None = None
) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode to an EXIF-oriented BGR array, reduced when the original is far bigger than needed.

    ``max_side`` is the long side the caller needs (e.g. the model's imgsz); the decode is never
    smaller than that. Returns the array and the ``(width, height)`` of the oriented *original*, so
    boxes found on the array can be scaled back with :func:`scale_detections`. ``max_pixels`` (else
    :data:`DEFAULT_MAX_PIXELS`) guards against decompression bombs before any pixel is decoded, and only
    JPEG, PNG, WebP and HEIC are decoded at all (UnsupportedMedia ``unsupported_format`` otherwise).
    """
    raw_w, raw_h, fmt = _probe(data, max_pixels)  # sniffed, accepted, within the limit, or raised
    factor = _reduction(max(raw_w, raw_h), max_side)

    # OpenCV picks its decoder from the content, which was sniffed above as one we accept; HEIC
    # (which OpenCV lacks) and anything it fails on go to Pillow, held to the same format.
    image = None if fmt == "heic" else cv2.imdecode(np.frombuffer(data, dtype=np.uint8), _REDUCED_FLAGS[factor])
    if image is None:
        return _decode_with_pillow(data, factor, fmt)
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    dh, dw = image.shape[:2]
    straight = (math.ceil(raw_w / factor), math.ceil(raw_h / factor))

    def near(a: tuple[int, int], b: tuple[int, int]) -> bool:
        return abs(a[0] - b[0]) <= 1 and abs(a[1] - b[1]) <= 1

    # OpenCV applied (or ignored) the EXIF rotation itself; compare shapes to learn which it did. libjpeg
    # rounds reduced sizes up, other decoders may round down, hence exact matches first, then +-1 px.
    turned = (straight[1], straight[0])
    for same in ((lambda a, b: a == b), near):
        if same((dw, dh), straight):
            return image, (raw_w, raw_h)
        if same((dw, dh), turned):
            return image, (raw_h, raw_w)
    return image, (round(dw * factor), round(dh * factor))


def decode_at_scale(
    data: bytes, scale_for: Callable[[int], float], *, max_pixels: int | None = None
) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode to ``scale_for(long side)`` of the original size (never enlarged), EXIF-oriented BGR.

    Sliced inference needs the whole photo at a fixed scale rather than at a fixed long side; the
    decode is still reduced by libjpeg where that leaves enough pixels, then resized with area
    averaging. Returns the array and the ``(width, height)`` of the oriented original.
    """
    header = _probe(data, max_pixels)
    scale = min(1.0, scale_for(max(header[:2])))
    need = math.ceil(max(header[:2]) * scale)
    image, size = decode_image(data, need, max_pixels=max_pixels)
    target = (max(1, round(size[0] * scale)), max(1, round(size[1] * scale)))
    h, w = image.shape[:2]
    if (w, h) != target and abs(w - target[0]) + abs(h - target[1]) > 2:
        image = cv2.resize(image, target, interpolation=cv2.INTER_AREA)
    return image, size
