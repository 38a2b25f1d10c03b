"""Decode-checking of uploads (hazardlens.images): formats, orientation, EXIF, and every bad input."""

from __future__ import annotations

import hashlib
import io
import struct
import zlib
from datetime import UTC, datetime
from pathlib import Path

import pytest
from PIL import Image

from hazardlens.context import Context
from hazardlens.datasets.library import IngestMeta, prepare
from hazardlens.errors import Invalid, TooLarge, UnsupportedMedia
from hazardlens.images import hamming, inspect_image, sniff_format
from hazardlens.settings import Settings
from hazardlens.store import blob_key
from tests.fixtures.core import make_image

MP = 100_000_000


def _exif_jpeg(
    orientation: int | None = None,
    when: str | None = None,
    offset: str | None = None,
    gps: tuple[str, tuple[float, ...], str, tuple[float, ...]] | None = None,
    width: int = 64,
    height: int = 48,
) -> bytes:
    img = Image.open(io.BytesIO(make_image(width, height, seed=5)))
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    if when is not None:
        exif.get_ifd(0x8769)[0x9003] = when
    if offset is not None:
        exif.get_ifd(0x8769)[0x9011] = offset
    if gps is not None:
        exif.get_ifd(0x8825).update({1: gps[0], 2: gps[1], 3: gps[2], 4: gps[3]})
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif.tobytes())
    return buf.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A valid PNG signature and IHDR claiming ``width`` x ``height``, with one tiny IDAT: what a
    decompression bomb looks like before anything is decoded."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    ("fmt", "name", "mime"),
    [
        ("JPEG", "jpeg", "image/jpeg"),
        ("PNG", "png", "image/png"),
        ("WEBP", "webp", "image/webp"),
        ("HEIF", "heic", "image/heic"),
    ],
)
def test_supported_formats(fmt: str, name: str, mime: str) -> None:
    data = make_image(400, 300, fmt=fmt, seed=1)
    info = inspect_image(data, MP, 128)
    assert (info.format, info.mime, info.width, info.height) == (name, mime, 400, 300)
    assert sniff_format(data) == name
    thumb = Image.open(io.BytesIO(info.thumbnail_jpeg))
    assert thumb.format == "JPEG" and thumb.size == (128, 96)
    assert -(1 << 63) <= info.phash < (1 << 63)


def test_same_picture_in_every_format_has_a_close_phash() -> None:
    """The hash describes the picture, not the encoding: a PNG and a WebP of one photo are near-duplicates."""
    hashes = [inspect_image(make_image(320, 240, fmt=f, seed=2), MP, 320).phash for f in ("PNG", "JPEG", "WEBP")]
    assert max(hamming(hashes[0], h) for h in hashes) <= 6
    other = inspect_image(make_image(320, 240, seed=99), MP, 320).phash
    assert hamming(hashes[0], other) > 12


def test_reencoded_jpeg_is_a_near_duplicate() -> None:
    original = make_image(640, 480, seed=7)
    buf = io.BytesIO()
    Image.open(io.BytesIO(original)).save(buf, "JPEG", quality=35)
    assert buf.getvalue() != original
    a, b = inspect_image(original, MP, 320), inspect_image(buf.getvalue(), MP, 320)
    assert hamming(a.phash, b.phash) <= 6


@pytest.mark.parametrize("orientation", [5, 6, 7, 8])
def test_exif_rotation_swaps_width_and_height(orientation: int) -> None:
    data = _exif_jpeg(orientation=orientation, width=64, height=48)
    info = inspect_image(data, MP, 32)
    assert (info.width, info.height) == (48, 64)
    assert Image.open(io.BytesIO(info.thumbnail_jpeg)).size == (24, 32)  # the thumbnail is upright too


def test_exif_orientation_3_keeps_size_and_rotated_thumbnail_matches() -> None:
    upright = Image.open(io.BytesIO(make_image(64, 48, seed=5)))
    data = _exif_jpeg(orientation=3)
    info = inspect_image(data, MP, 64)
    assert (info.width, info.height) == (64, 48)
    expected = inspect_image(_jpeg(upright.rotate(180)), MP, 64)
    assert hamming(info.phash, expected.phash) <= 6


def _jpeg(img: Image.Image, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", **kw)
    return buf.getvalue()


def test_multi_picture_jpeg_from_phones_is_a_jpeg() -> None:
    first = Image.open(io.BytesIO(make_image(120, 80, seed=1)))
    second = Image.open(io.BytesIO(make_image(60, 40, seed=2)))
    buf = io.BytesIO()
    first.save(buf, "MPO", save_all=True, append_images=[second])
    assert Image.open(io.BytesIO(buf.getvalue())).format == "MPO"
    info = inspect_image(buf.getvalue(), MP, 64)
    assert (info.format, info.mime, info.width, info.height) == ("jpeg", "image/jpeg", 120, 80)


def test_heic_orientation_is_applied() -> None:
    info = inspect_image(make_image(300, 200, fmt="HEIF", exif_orientation=6), MP, 300)
    assert (info.format, info.width, info.height) == ("heic", 200, 300)


def test_exif_capture_time_and_gps() -> None:
    data = _exif_jpeg(when="2024:05:01 10:30:00", gps=("N", (30.0, 35.0, 24.0), "E", (114.0, 18.0, 36.0)))
    info = inspect_image(data, MP, 64)
    # No offset in the file: read as China time (UTC+8).
    assert info.captured_at == datetime(2024, 5, 1, 2, 30, tzinfo=UTC)
    assert info.gps_lat == pytest.approx(30.59) and info.gps_lon == pytest.approx(114.31)


def test_exif_offset_and_southern_western_refs() -> None:
    data = _exif_jpeg(
        when="2023:12:31 23:00:00", offset="-03:00", gps=("S", (33.0, 52.0, 12.0), "W", (70.0, 30.0, 0.0))
    )
    info = inspect_image(data, MP, 64)
    assert info.captured_at == datetime(2024, 1, 1, 2, 0, tzinfo=UTC)
    assert info.gps_lat == pytest.approx(-33.87) and info.gps_lon == pytest.approx(-70.5)


def test_bad_exif_never_fails() -> None:
    data = _exif_jpeg(when="garbage", gps=("N", (31.0, 37.0, 41.0), "E", (114.0, 18.0, 0.0)))
    raw_good = struct.pack(">II", 37, 1)
    assert raw_good in data
    broken = data.replace(raw_good, struct.pack(">II", 37, 0))  # a zero denominator
    info = inspect_image(broken, MP, 64)
    assert (info.captured_at, info.gps_lat, info.gps_lon) == (None, None, None)
    # An EXIF block that is garbage altogether.
    img = Image.open(io.BytesIO(make_image(64, 48)))
    garbage = _jpeg(img, exif=b"Exif\x00\x00II*\x00\x08\x00\x00\x00\xff\xff" + b"\x01" * 30)
    info = inspect_image(garbage, MP, 64)
    assert (info.width, info.height, info.captured_at) == (64, 48, None)


def test_empty_file() -> None:
    with pytest.raises(Invalid) as err:
        inspect_image(b"", MP, 64)
    assert err.value.code == "empty_file"


@pytest.mark.parametrize("data", [b"hello, not a picture", b"%PDF-1.7\n" + b"x" * 100, b"\x00" * 50])
def test_not_an_image(data: bytes) -> None:
    with pytest.raises(UnsupportedMedia) as err:
        inspect_image(data, MP, 64)
    assert err.value.code == "not_an_image"


@pytest.mark.parametrize("fmt", ["GIF", "BMP", "TIFF"])
def test_other_image_formats_are_unsupported(fmt: str) -> None:
    with pytest.raises(UnsupportedMedia) as err:
        inspect_image(make_image(32, 32, fmt=fmt), MP, 64)
    assert err.value.code == "unsupported_format"
    assert fmt in err.value.message


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "HEIF"])
@pytest.mark.parametrize("keep", [0.5, 0.97])
def test_truncated_images_are_refused(fmt: str, keep: float) -> None:
    data = make_image(200, 150, fmt=fmt, seed=3)
    with pytest.raises(Invalid) as err:
        inspect_image(data[: int(len(data) * keep)], MP, 64)
    assert err.value.code == "truncated_image"


def test_jpeg_missing_only_its_end_marker_is_refused() -> None:
    """Decoded at reduced scale, the decoder still reads every byte, so a cut-off tail is caught."""
    data = make_image(2000, 1500, seed=4)
    with pytest.raises(Invalid) as err:
        inspect_image(data[:-2], MP, 64)
    assert err.value.code == "truncated_image"


@pytest.mark.parametrize(("width", "height"), [(100_000, 100_000), (12_000, 9_000)])
def test_decompression_bomb_refused_before_decoding(width: int, height: int) -> None:
    # 10^10 pixels trips PIL's own bomb error; 1.08*10^8 only our max_pixels. Both are refused alike.
    with pytest.raises(TooLarge) as err:
        inspect_image(_png_header_only(width, height), MP, 64)
    assert err.value.code == "too_many_pixels"


def test_max_pixels_is_the_limit() -> None:
    data = make_image(100, 100)
    assert inspect_image(data, 10_000, 64).width == 100
    with pytest.raises(TooLarge) as err:
        inspect_image(data, 9_999, 64)
    assert err.value.code == "too_many_pixels"


def test_large_jpeg_is_decoded_at_reduced_scale() -> None:
    """A 6000x4000 JPEG gives exact full-size dimensions and a thumbnail without a full decode."""
    base = Image.open(io.BytesIO(make_image(600, 400, seed=8))).resize((6000, 4000), Image.Resampling.BILINEAR)
    info = inspect_image(_jpeg(base, quality=70), MP, 320)
    assert (info.width, info.height) == (6000, 4000)
    assert Image.open(io.BytesIO(info.thumbnail_jpeg)).size == (320, 213)


def test_over_byte_limit_is_refused_before_decoding(tmp_path: Path) -> None:
    ctx = Context(Settings(home=tmp_path / "home", max_upload_bytes=1000))
    ctx.init()
    try:
        data = make_image(200, 200, seed=1)
        assert len(data) > 1000
        with pytest.raises(TooLarge) as err:
            prepare(ctx, data, IngestMeta(sector="general"))
        assert err.value.code == "file_too_large"
        assert list(ctx.store.list("blobs/")) == []
        small = make_image(8, 8, pattern="flat")
        assert len(small) <= 1000
        assert prepare(ctx, small, IngestMeta(sector="general")).size == len(small)
        assert ctx.store.get(blob_key(hashlib.sha256(small).hexdigest())) == small
    finally:
        ctx.close()
