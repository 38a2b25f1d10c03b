"""Decode-check, measure and fingerprint one uploaded image, without trusting anything it claims.

Inspectors upload phone photos (large JPEGs and HEIC, rotated by EXIF) over poor networks, so a
file may be cut short, be something else with an image name, or claim a size that would exhaust
memory when decoded. Every upload is therefore decoded once here, and refused with a clear
:mod:`hazardlens.errors` code when it is not a complete image of a supported format.

Memory: a 48-megapixel JPEG decodes to ~144 MB of pixels. The JPEG decoder can scale by 1/2, 1/4
or 1/8 while it decodes (``Image.draft``), and it still reads every byte of the entropy-coded data
at that scale, so decoding at thumbnail scale both proves the file complete and keeps the pixel
buffer near 1/64 of the full size. Formats without reduced decoding (PNG, WebP, HEIC) are decoded
in full; phones rarely produce large ones except HEIC, whose photos are ~12 MP.

Width, height, perceptual hash and thumbnail all describe the EXIF-oriented image (what a person
sees, and what boxes are drawn on); the stored original bytes are never rewritten.
"""

from __future__ import annotations

import contextlib
import io
import math
import struct
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import imagehash
from PIL import ExifTags, Image, ImageFile, UnidentifiedImageError

from hazardlens.errors import Invalid, TooLarge, UnsupportedMedia
from hazardlens.imagefiles import register_heif

# HEIC is what iPhones take; without the plugin those uploads would be refused as unsupported.
_HEIF = register_heif()

# PIL format name -> (our format name, media type). MPO is how PIL names the multi-picture JPEGs
# many phones write; they are ordinary JPEGs to every viewer.
_FORMATS: dict[str, tuple[str, str]] = {
    "JPEG": ("jpeg", "image/jpeg"),
    "MPO": ("jpeg", "image/jpeg"),
    "PNG": ("png", "image/png"),
    "WEBP": ("webp", "image/webp"),
    "HEIF": ("heic", "image/heic"),
}
MIME_TYPES: dict[str, str] = {name: mime for name, mime in _FORMATS.values()}
SUPPORTED = ("jpeg", "png", "webp", "heic")

# China has one civil time zone and phone cameras write local wall-clock time without an offset
# (OffsetTimeOriginal is recent and often missing), so a naive EXIF time is read as UTC+8.
EXIF_DEFAULT_TZ = timezone(timedelta(hours=8), "CST")

_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs", b"mif1", b"msf1"}
_THUMB_QUALITY = 85


@dataclass(frozen=True)
class ImageInfo:
    format: str  # jpeg | png | webp | heic
    mime: str
    width: int  # of the EXIF-oriented image
    height: int
    phash: int  # 64-bit perceptual hash as a signed int64 (what the catalogue column holds)
    thumbnail_jpeg: bytes
    captured_at: datetime | None = None  # aware, UTC
    gps_lat: float | None = None
    gps_lon: float | None = None


def sniff_format(data: bytes) -> str | None:
    """The supported format the leading bytes announce, or None. Used to tell a cut-short image of a
    supported format (truncated) from a file that was never one (not an image), because PIL cannot
    even identify some truncated files (HEIC, WebP)."""
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[4:8] == b"ftyp" and data[8:12] in _HEIF_BRANDS:
        return "heic"
    return None


def to_signed64(value: int) -> int:
    """Unsigned 64-bit hash -> signed int64 (BIGINT columns are signed on every database)."""
    value &= (1 << 64) - 1
    return value - (1 << 64) if value >= 1 << 63 else value


def to_unsigned64(value: int) -> int:
    return value & ((1 << 64) - 1)


def hamming(a: int, b: int) -> int:
    return ((a ^ b) & ((1 << 64) - 1)).bit_count()


def inspect_image(data: bytes, max_pixels: int, thumb_size: int = 320) -> ImageInfo:
    """Decode ``data`` completely (at reduced scale where the format allows) and describe it.

    Refuses: empty (Invalid ``empty_file``), not an image (UnsupportedMedia ``not_an_image``),
    an image of another format (UnsupportedMedia ``unsupported_format``), more than ``max_pixels``
    pixels, checked on the header before any pixel is decoded (TooLarge ``too_many_pixels``), and
    cut-short or corrupt data (Invalid ``truncated_image``).
    """
    if not data:
        raise Invalid("the file is empty", code="empty_file")
    sniffed = sniff_format(data)
    img = _open(data, sniffed, max_pixels)
    try:
        fmt, mime = _FORMATS[img.format or ""]
        width, height = img.size
        if width * height > max_pixels:
            raise TooLarge(
                f"image is {width}x{height} = {width * height:,} pixels; the limit is {max_pixels:,}",
                code="too_many_pixels",
            )
        exif = _exif(img)
        orientation = _orientation(exif)
        if orientation in (5, 6, 7, 8):
            width, height = height, width
        if fmt == "jpeg":
            # libjpeg picks the largest 1/2^n scale that keeps both sides at least this size, so ask
            # for the thumbnail's own proportions: a 4000x3000 photo decodes at 500x375, not 1000x750.
            w, h = img.size
            k = thumb_size / max(w, h)
            img.draft("RGB", (max(1, math.ceil(w * k)), max(1, math.ceil(h * k))))
        try:
            if ImageFile.LOAD_TRUNCATED_IMAGES:  # pragma: no cover - someone flipped the global
                raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is set; truncated files would pass")
            img.load()
        # TypeError: Pillow's decoder set-up on some damaged PNGs (an interlaced 1-bit image whose IDAT is
        # cut short; found by the fuzz pass, it was a 500).
        except (OSError, SyntaxError, ValueError, EOFError, TypeError, Image.DecompressionBombError) as exc:
            raise Invalid(f"the {fmt.upper()} data is truncated or corrupt ({exc})", code="truncated_image") from exc
        # Shrink first, then turn the small image upright: the same pixels, a fraction of the work.
        thumb = _orient(_thumbnail_image(img, thumb_size), orientation)
        phash = to_signed64(int(str(imagehash.phash(thumb)), 16))
        buf = io.BytesIO()
        thumb.save(buf, format="JPEG", quality=_THUMB_QUALITY, optimize=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # bad EXIF is dropped quietly, never a failed upload
            captured_at = _captured_at(exif)
            lat, lon = _gps(exif)
        return ImageInfo(
            format=fmt,
            mime=mime,
            width=width,
            height=height,
            phash=phash,
            thumbnail_jpeg=buf.getvalue(),
            captured_at=captured_at,
            gps_lat=lat,
            gps_lon=lon,
        )
    finally:
        img.close()


def make_thumbnail(data: bytes, max_pixels: int, thumb_size: int = 320) -> bytes:
    """A thumbnail of stored bytes (for samples whose thumbnail object went missing)."""
    return inspect_image(data, max_pixels, thumb_size).thumbnail_jpeg


# -- decoding -------------------------------------------------------------------------------------


def _open(data: bytes, sniffed: str | None, max_pixels: int) -> Image.Image:
    # MPO is not a separate opener: the JPEG opener returns MPO files.
    formats = tuple(f for f in _FORMATS if f != "MPO" and (_HEIF or f != "HEIF"))
    with warnings.catch_warnings():
        # Between PIL's own limit and twice it PIL only warns; our max_pixels check decides instead.
        # PIL also warns about corrupt EXIF while opening a JPEG; bad EXIF is dropped, not reported.
        warnings.simplefilter("ignore")
        try:
            return Image.open(io.BytesIO(data), formats=formats)
        except Image.DecompressionBombError as exc:
            raise TooLarge(
                f"image claims too many pixels to decode safely (limit {max_pixels:,}): {exc}", code="too_many_pixels"
            ) from exc
        except UnidentifiedImageError:
            pass
        except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
            raise Invalid(f"the image header is truncated or corrupt ({exc})", code="truncated_image") from exc
        if sniffed is not None:
            raise Invalid(
                f"the file starts like a {sniffed.upper()} image but cannot be read: it is truncated or corrupt",
                code="truncated_image",
            )
        other = _identify_other(data)
    if other:
        raise UnsupportedMedia(
            f"{other} images are not supported; send {', '.join(s.upper() for s in SUPPORTED)}",
            code="unsupported_format",
        )
    raise UnsupportedMedia("the file is not an image (or not one this service can read)", code="not_an_image")


def _identify_other(data: bytes) -> str | None:
    """Name of the (unsupported) format PIL recognises, so the refusal can say what was sent."""
    try:
        with Image.open(io.BytesIO(data)) as other:
            return other.format or "unknown"
    except Exception:
        return None


_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}  # the EXIF orientation -> the transform that makes the image upright (as ImageOps.exif_transpose)


def _orient(img: Image.Image, orientation: int) -> Image.Image:
    method = _TRANSPOSE.get(orientation)
    return img.transpose(method) if method is not None else img


_BAND_BLOCKS = 8  # rows of output blocks converted at a time when shrinking in bands


def _to_rgb(img: Image.Image) -> Image.Image:
    """``img`` as RGB: transparency flattened onto white, 16-bit and float scaled to 8 bits."""
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        flat = Image.new("RGB", rgba.size, (255, 255, 255))
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        return img.convert("I").point(lambda v: v * (1 / 256)).convert("L").convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")


def _thumbnail_image(img: Image.Image, size: int) -> Image.Image:
    """An RGB image whose long side is ``size`` (smaller images are not enlarged); ``img`` is left as is.

    Never converts the full-size image (issue 13, item 8): a 10000x10000 1-bit PNG decodes to 100 MB,
    and converting it whole to RGB cost 300 MB more, then the resize as much again (480 MB for a
    12 KB file). An image more than twice the thumbnail is shrunk by a whole factor first, in bands
    of rows, each band converted and box-averaged on its own; only the small result is resized."""
    w, h = img.size
    factor = max(w, h) // (2 * size)
    if img.mode == "RGB" or factor < 2:
        rgb = _to_rgb(img)
    else:
        rgb = Image.new("RGB", (math.ceil(w / factor), math.ceil(h / factor)))
        band = factor * _BAND_BLOCKS
        for top in range(0, h, band):
            part = img.crop((0, top, w, min(h, top + band)))
            rgb.paste(_to_rgb(part).reduce(factor), (0, top // factor))
    if max(w, h) <= size:
        return rgb
    k = size / max(w, h)
    target = (max(1, round(w * k)), max(1, round(h * k)))
    return rgb.resize(target, Image.Resampling.BICUBIC, reducing_gap=2.0)


# -- EXIF -----------------------------------------------------------------------------------------


def _exif(img: Image.Image) -> Image.Exif | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Corrupt EXIF data": we drop what cannot be read
            exif = img.getexif()
            # Parse the sub-IFDs now, under the same filter (Pillow reads them lazily); a broken one
            # must not lose the orientation in IFD0.
            for ifd in (ExifTags.IFD.Exif, ExifTags.IFD.GPSInfo):
                with contextlib.suppress(Exception):
                    exif.get_ifd(ifd)
            return exif
    except Exception:
        return None


def _orientation(exif: Image.Exif | None) -> int:
    try:
        value = int(exif.get(ExifTags.Base.Orientation, 1)) if exif is not None else 1
    except Exception:
        return 1
    return value if 1 <= value <= 8 else 1


def _captured_at(exif: Image.Exif | None) -> datetime | None:
    """DateTimeOriginal (else DateTimeDigitized, else IFD0 DateTime), in UTC. Unreadable -> None."""
    if exif is None:
        return None
    try:
        sub = exif.get_ifd(ExifTags.IFD.Exif)
    except Exception:
        sub = {}
    candidates = [
        (sub.get(ExifTags.Base.DateTimeOriginal), sub.get(ExifTags.Base.OffsetTimeOriginal)),
        (sub.get(ExifTags.Base.DateTimeDigitized), sub.get(ExifTags.Base.OffsetTimeDigitized)),
        (exif.get(ExifTags.Base.DateTime), sub.get(ExifTags.Base.OffsetTime)),
    ]
    for value, offset in candidates:
        parsed = _parse_exif_time(value, offset)
        if parsed is not None:
            return parsed
    return None


def _parse_exif_time(value: Any, offset: Any) -> datetime | None:
    if not isinstance(value, str | bytes):
        return None
    try:
        text = (value.decode("ascii", "ignore") if isinstance(value, bytes) else value).strip("\x00 ").strip()
        dt = datetime.strptime(text[:19], "%Y:%m:%d %H:%M:%S")
    except (ValueError, TypeError):
        return None
    if dt.year < 1990:  # "0000:00:00" fails above; 1970/1980 are unset camera clocks
        return None
    tz: timezone = EXIF_DEFAULT_TZ
    if isinstance(offset, bytes):
        offset = offset.decode("ascii", "ignore")
    if isinstance(offset, str):
        off = offset.strip("\x00 ").strip()
        if len(off) == 6 and off[0] in "+-" and off[3] == ":" and off[1:3].isdigit() and off[4:].isdigit():
            minutes = int(off[1:3]) * 60 + int(off[4:])
            if minutes <= 14 * 60:
                tz = timezone(timedelta(minutes=minutes if off[0] == "+" else -minutes))
    return dt.replace(tzinfo=tz).astimezone(UTC)


def _gps(exif: Image.Exif | None) -> tuple[float | None, float | None]:
    """Decimal degrees from the GPS IFD's degree/minute/second rationals; S and W are negative."""
    if exif is None:
        return None, None
    try:
        gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
        lat = _dms(gps.get(ExifTags.GPS.GPSLatitude), gps.get(ExifTags.GPS.GPSLatitudeRef), 90.0, "S")
        lon = _dms(gps.get(ExifTags.GPS.GPSLongitude), gps.get(ExifTags.GPS.GPSLongitudeRef), 180.0, "W")
    except Exception:
        return None, None
    if lat is None or lon is None:
        return None, None
    if lat == 0.0 and lon == 0.0:  # "null island": a receiver without a fix
        return None, None
    return lat, lon


def _dms(value: Any, ref: Any, limit: float, negative_ref: str) -> float | None:
    if value is None:
        return None
    parts = list(value) if isinstance(value, tuple | list) else [value]
    if not 1 <= len(parts) <= 3:
        return None
    nums = [float(p) for p in parts] + [0.0] * (3 - len(parts))
    if not all(math.isfinite(n) and n >= 0 for n in nums):
        return None
    degrees = nums[0] + nums[1] / 60.0 + nums[2] / 3600.0
    if isinstance(ref, bytes):
        ref = ref.decode("ascii", "ignore")
    if isinstance(ref, str) and ref.strip("\x00 ").upper().startswith(negative_ref):
        degrees = -degrees
    if abs(degrees) > limit:
        return None
    return round(degrees, 7)
