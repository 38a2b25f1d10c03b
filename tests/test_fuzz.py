"""Fuzz pass (issue 13): property-based fuzzers (Hypothesis) over every parser that reads what a
caller uploads or imports: image sniffing and decoding (library upload and detection), zip archives
(sample archives and dataset imports, end to end), COCO, YOLO (labels and data.yaml), Pascal VOC,
CVAT, Label Studio JSON, class maps and user YAML.

The property, for every input: the parser answers, or raises a ``hazardlens.errors.HazardError``
(a 4xx with a code over HTTP), never another exception (a 500); within bounded CPU time per input and
bounded memory over the run. Inputs are made structure-aware (valid files, then mutated: flipped,
truncated, spliced bytes; crafted headers with huge sizes; JSON/XML/YAML of the right shape with
hostile values) so the fuzzers get past the first check of each parser.

This module is the short run (deterministic: ``derandomize=True``, a few seconds per target);
``make fuzz`` (``benchmarks/fuzz_long.py``) runs the same targets with random seeds for minutes.
Inputs that once crashed a parser are kept below as explicit regression cases.

Environment: ``HAZARDLENS_FUZZ_EXAMPLES`` (examples per target, default 40),
``HAZARDLENS_FUZZ_RANDOM=1`` (random instead of derandomized), ``HAZARDLENS_FUZZ_MAX_S`` (CPU seconds
one input may take, default 20; a pathological input takes minutes).
"""

from __future__ import annotations

import atexit
import functools
import io
import json
import os
import resource
import shutil
import struct
import tempfile
import time
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from hazardlens.errors import HazardError

EXAMPLES = int(os.environ.get("HAZARDLENS_FUZZ_EXAMPLES", "40"))
RANDOM = os.environ.get("HAZARDLENS_FUZZ_RANDOM", "") == "1"
MAX_S = float(os.environ.get("HAZARDLENS_FUZZ_MAX_S", "20"))
MAX_PIXELS = 4_000_000  # the pixel limit the fuzzed decoders run under (as HAZARDLENS_MAX_PIXELS would set)
MAX_RSS_GROWTH_MB = 400  # a target may not grow the process's peak memory by more than this

FUZZ = settings(
    max_examples=EXAMPLES,
    derandomize=not RANDOM,
    deadline=None,  # timed below with a generous bound instead: CI machines are loaded
    database=None,  # nothing written to .hypothesis/ (a failing input is printed, then kept below)
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def clean(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run one parser on one input: an answer or a HazardError, in bounded time. Any other
    exception propagates and fails the property (Hypothesis then shrinks the input)."""
    started = time.process_time()  # CPU time: the parser's work, not how busy the machine is
    try:
        return fn(*args, **kwargs)
    except HazardError as exc:
        assert 400 <= exc.status < 500, f"a parser refused with {exc.status} {exc.code}: {exc.message}"
        return None
    finally:
        took = time.process_time() - started
        assert took < MAX_S, f"{fn.__name__} took {took:.1f} s of CPU on one input"


@pytest.fixture(autouse=True)
def _bounded_memory() -> Any:
    """ru_maxrss is the process's peak: its growth over one target bounds every input's decode."""
    before = _peak_rss_mb()
    yield
    grown = _peak_rss_mb() - before
    assert grown < MAX_RSS_GROWTH_MB, f"peak memory grew by {grown:.0f} MB during the run"


# -- shared inputs ---------------------------------------------------------------------------------


def _encode(img: Image.Image, fmt: str, **kw: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


@functools.cache
def seed_images() -> dict[str, bytes]:
    """Small valid images of every format and mode an upload or a dataset may carry."""
    rng = np.random.default_rng(7)
    rgb = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: sizes swap
    exif[0x9003] = "2024:05:01 10:00:00"
    gps = {1: "N", 2: (30.0, 35.0, 10.5), 3: "E", 4: (114.0, 18.0, 0.0)}
    exif[0x8825] = gps
    return {
        "jpeg": _encode(rgb, "JPEG", quality=80),
        "jpeg_exif": _encode(rgb, "JPEG", exif=exif.tobytes()),
        "jpeg_progressive": _encode(rgb, "JPEG", progressive=True),
        "png": _encode(rgb, "PNG"),
        "png_rgba": _encode(rgb.convert("RGBA"), "PNG"),
        "png_l": _encode(rgb.convert("L"), "PNG"),
        "png_1bit": _encode(rgb.convert("1"), "PNG"),
        "png_p": _encode(rgb.convert("P"), "PNG"),
        "png_16": _encode(rgb.convert("I;16"), "PNG"),
        "webp": _encode(rgb, "WEBP"),
        "gif": _encode(rgb, "GIF"),
        "bmp": _encode(rgb, "BMP"),
        "tiff": _encode(rgb, "TIFF"),
        "hdr": b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y 2000 +X 2000\n" + b"\x02\x02\x07\xd0" * 8,
    }


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


@st.composite
def crafted_png(draw: st.DrawFn) -> bytes:
    """A PNG with a well-formed (CRC-valid) header of any size, depth and colour type and a short
    stream of pixels: decompression bombs and 1-bit giants get past the signature and CRC checks."""
    width = draw(st.sampled_from([0, 1, 7, 640, 2001, 10_000, 65_535, 2**31 - 1]))
    height = draw(st.sampled_from([0, 1, 9, 480, 2001, 10_000, 65_535, 2**31 - 1]))
    depth = draw(st.sampled_from([1, 2, 4, 8, 16, 3]))
    colour = draw(st.sampled_from([0, 2, 3, 4, 6, 5]))
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, draw(st.sampled_from([0, 1])))
    raw = draw(st.binary(max_size=256))
    body = zlib.compress(raw + b"\0" * draw(st.sampled_from([0, 100, 100_000])))
    extra = b""
    if colour == 3:
        extra = _chunk(b"PLTE", bytes(range(48)))
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + extra + _chunk(b"IDAT", body) + _chunk(b"IEND", b"")


@st.composite
def crafted_jpeg(draw: st.DrawFn) -> bytes:
    """A valid JPEG whose frame header claims another size (huge, zero), possibly cut short."""
    data = bytearray(seed_images()[draw(st.sampled_from(["jpeg", "jpeg_exif", "jpeg_progressive"]))])
    for marker in (b"\xff\xc0", b"\xff\xc2"):
        at = data.find(marker)
        if at >= 0:
            h = draw(st.sampled_from([0, 1, 12, 9000, 65_535]))
            w = draw(st.sampled_from([0, 1, 16, 9000, 65_535]))
            data[at + 5 : at + 9] = struct.pack(">HH", h, w)
    cut = draw(st.integers(0, len(data)))
    return bytes(data[: len(data) - cut // draw(st.sampled_from([1, 4, 1000, len(data) + 1]))])


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    """A valid file with a few random edits: flipped or set bytes, cuts, insertions, repeats."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(0, 6))):
        op = draw(st.sampled_from(["flip", "set", "cut", "insert", "delete", "repeat"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[at] = draw(st.sampled_from([0x00, 0xFF, 0x7F, 0x80, 0x01]))
        elif op == "cut":
            del data[at:]
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=32))
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 64))]
        elif op == "repeat":
            data[at:at] = data[at : at + draw(st.integers(1, 64))] * draw(st.integers(1, 50))
    return bytes(data)


def image_bytes() -> st.SearchStrategy[bytes]:
    seeds = list(seed_images().values())
    return st.one_of(
        st.binary(max_size=512),
        st.sampled_from(seeds),
        mutated(seeds),
        crafted_png(),
        crafted_jpeg(),
        st.sampled_from([b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"RIFF\0\0\0\0WEBPVP8 ", b"PK\x03\x04"]).flatmap(
            lambda head: st.binary(max_size=256).map(lambda tail: head + tail)
        ),
    )


@functools.cache
def workdir() -> Path:
    """One folder for the whole run (Hypothesis forbids function-scoped fixtures), removed at exit."""
    path = Path(tempfile.mkdtemp(prefix="hl-fuzz-"))
    atexit.register(shutil.rmtree, path, True)
    return path


def fresh_dir() -> Path:
    return Path(tempfile.mkdtemp(dir=workdir()))


# JSON values of every kind, hostile ones included (NaN, huge and negative numbers, long strings).
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, 1, -1, 0.5, 1e308, -1e-308, 2**63, "", "0", "1.5", "nan", "inf", "a.jpg", "../x.jpg"]),
    st.text(max_size=40),
)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=25,
)
NUMBER = st.one_of(
    st.integers(-100, 10_000), st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(["5", "x", None, []])
)
IMAGE_NAMES = st.sampled_from(["a.jpg", "b.png", "missing.jpg", "../a.jpg", "/etc/passwd", "sub/a.jpg", "", "a"])
CLASS_NAMES = st.one_of(st.sampled_from(["helmet", "head", "person", "fire", "0", "安全帽", ""]), st.text(max_size=20))


def place_images(folder: Path) -> None:
    """The images the fuzzed annotation files refer to (and one that is not an image)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "a.jpg").write_bytes(seed_images()["jpeg_exif"])
    (folder / "b.png").write_bytes(seed_images()["png"])
    (folder / "c.jpg").write_bytes(b"not an image")


def json_bytes(structured: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes]:
    """Structured documents, arbitrary JSON, deeply nested JSON and raw bytes."""
    return st.one_of(
        structured.map(lambda d: json.dumps(d, allow_nan=True).encode()),
        JSON.map(lambda d: json.dumps(d, allow_nan=True).encode()),
        st.integers(1, 200_000).map(lambda n: b"[" * n + b"]" * n),
        st.integers(1, 200_000).map(lambda n: b'{"images":' * n),
        st.binary(max_size=300),
    )


# -- images: sniff, library decode-check (upload, import), detection decode --------------------------


@given(image_bytes())
@FUZZ
def test_fuzz_library_image_checks(data: bytes) -> None:
    from hazardlens.images import inspect_image, make_thumbnail, sniff_format

    sniff_format(data)  # never raises
    clean(inspect_image, data, MAX_PIXELS, 64)
    clean(make_thumbnail, data, MAX_PIXELS, 64)


@given(image_bytes())
@FUZZ
def test_fuzz_detection_decode(data: bytes) -> None:
    from hazardlens.models.preprocess import decode_at_scale, decode_image

    clean(decode_image, data, 640, max_pixels=MAX_PIXELS)
    clean(decode_at_scale, data, lambda longest: 1280 / max(longest, 1), max_pixels=MAX_PIXELS)


@given(image_bytes())
@FUZZ
def test_fuzz_import_image_conversion(data: bytes) -> None:
    """Dataset imports convert formats the library does not keep (BMP, TIFF, GIF) to PNG first."""
    from hazardlens.labeling.import_sources import library_bytes

    out, _note = clean(library_bytes, data, MAX_PIXELS) or (data, None)
    assert isinstance(out, bytes)


# -- user YAML and class maps -------------------------------------------------------------------------

YAML_TEXT = st.one_of(
    st.text(max_size=300),
    st.sampled_from(
        [
            "a: &x [1, 2]\nb: *x\n",
            "a: &a ['x','x']\nb: &b [*a,*a]\nc: &c [*b,*b]\n",
            "<<: {a: 1}\n",
            "!!python/object/apply:os.system ['true']\n",
            "mapping: {hat: helmet}\ncamera_regex: '(a+)+$'\n",
            "mapping:\n  " + "\n  ".join(f"c{i}: helmet" for i in range(2100)) + "\n",
            "[" * 5000,
            "a:\n" + "".join(" " * (i + 1) + "- \n" for i in range(300)),
            "mapping: {? [a, b] : helmet}\n",
            "mapping: {1.5: helmet, null: head, true: fire}\n",
            "\ufeffmapping: {hat: helmet}\n",
        ]
    ),
    st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
)

CLASS_MAP = st.fixed_dictionaries(
    {
        "mapping": st.one_of(
            st.dictionaries(st.one_of(CLASS_NAMES, st.integers()), st.one_of(CLASS_NAMES, SCALARS)), JSON
        )
    },
    optional={
        "camera_regex": st.one_of(
            st.sampled_from([r"(\d+)_(\d+)", "(a+)+$", "(?P<x>", "\\", "a{99999}", "(?=x)", r"\1", "[" * 300]),
            st.text(max_size=60),
            SCALARS,
        ),
        "site_regex": st.one_of(st.text(max_size=60), SCALARS),
        "unlabeled_classes": st.one_of(st.lists(CLASS_NAMES, max_size=5), SCALARS),
        "extra": SCALARS,
    },
)


@given(st.one_of(YAML_TEXT, CLASS_MAP.map(json.dumps)), st.text(max_size=80))
@FUZZ
def test_fuzz_class_map_yaml(text: str, file_name: str) -> None:
    """A class map sent to /v1/imports (YAML text) or named with --class-map PATH."""
    from hazardlens.formats import ClassMap, extract_group
    from hazardlens.formats.records import ImportRecord

    path = fresh_dir() / "map.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    cmap = clean(ClassMap.load, path)
    if cmap is not None:
        clean(extract_group, file_name, cmap.camera_regex)
        clean(extract_group, file_name, cmap.site_regex)
        clean(cmap.apply, [ImportRecord(file_name=file_name or "x.jpg", image_path=None, width=10, height=10)])


@given(CLASS_MAP)
@FUZZ
def test_fuzz_class_map_dict(data: dict[str, Any]) -> None:
    from hazardlens.formats import ClassMap

    clean(ClassMap.from_dict, data)


# -- COCO -------------------------------------------------------------------------------------------------

COCO = st.fixed_dictionaries(
    {
        "images": st.one_of(
            st.lists(
                st.fixed_dictionaries(
                    {"id": st.one_of(st.integers(-2, 5), SCALARS), "file_name": st.one_of(IMAGE_NAMES, SCALARS)},
                    optional={"width": NUMBER, "height": NUMBER, "extra": JSON},
                ),
                max_size=6,
            ),
            JSON,
        ),
        "annotations": st.one_of(
            st.lists(
                st.fixed_dictionaries(
                    {
                        "image_id": st.one_of(st.integers(-2, 5), SCALARS),
                        "category_id": st.one_of(st.integers(0, 4), SCALARS),
                    },
                    optional={
                        "bbox": st.one_of(st.lists(NUMBER, max_size=6), SCALARS),
                        "segmentation": st.one_of(st.lists(st.lists(NUMBER, max_size=10), max_size=3), JSON),
                        "iscrowd": SCALARS,
                        "id": SCALARS,
                    },
                ),
                max_size=10,
            ),
            JSON,
        ),
        "categories": st.one_of(
            st.lists(
                st.fixed_dictionaries(
                    {"id": st.one_of(st.integers(0, 4), SCALARS), "name": st.one_of(CLASS_NAMES, SCALARS)}
                ),
                max_size=5,
            ),
            JSON,
        ),
    }
)


@given(json_bytes(COCO))
@FUZZ
def test_fuzz_coco(data: bytes) -> None:
    from hazardlens.formats import read_coco

    root = fresh_dir()
    place_images(root / "images")
    (root / "annotations.json").write_bytes(data)
    clean(read_coco, root / "annotations.json", root / "images")


# -- Label Studio -------------------------------------------------------------------------------------------

LS_RESULT = st.fixed_dictionaries(
    {"type": st.one_of(st.sampled_from(["rectanglelabels", "polygonlabels", "choices"]), SCALARS)},
    optional={
        "value": st.one_of(
            st.fixed_dictionaries(
                {},
                optional={
                    "x": NUMBER,
                    "y": NUMBER,
                    "width": NUMBER,
                    "height": NUMBER,
                    "rotation": NUMBER,
                    "rectanglelabels": st.one_of(st.lists(CLASS_NAMES, max_size=3), SCALARS),
                    "points": st.one_of(st.lists(st.lists(NUMBER, max_size=3), max_size=6), SCALARS),
                    "polygonlabels": st.lists(CLASS_NAMES, max_size=2),
                },
            ),
            JSON,
        ),
        "original_width": NUMBER,
        "original_height": NUMBER,
        "from_name": SCALARS,
        "to_name": SCALARS,
    },
)
LS_TASKS = st.lists(
    st.fixed_dictionaries(
        {
            "data": st.one_of(
                st.fixed_dictionaries(
                    {
                        "image": st.one_of(
                            IMAGE_NAMES.map(lambda n: f"/data/local-files/?d=images/{n}"), IMAGE_NAMES, SCALARS
                        )
                    }
                ),
                JSON,
            )
        },
        optional={
            "annotations": st.one_of(
                st.lists(
                    st.fixed_dictionaries(
                        {"result": st.one_of(st.lists(LS_RESULT, max_size=4), JSON)},
                        optional={"was_cancelled": SCALARS, "id": SCALARS},
                    ),
                    max_size=3,
                ),
                JSON,
            ),
            "predictions": JSON,
        },
    ),
    max_size=5,
)


@given(json_bytes(st.one_of(LS_TASKS, LS_TASKS.map(lambda t: {"tasks": t}))))
@FUZZ
def test_fuzz_labelstudio(data: bytes) -> None:
    from hazardlens.formats import read_labelstudio

    root = fresh_dir()
    place_images(root / "images")
    (root / "tasks.json").write_bytes(data)
    clean(read_labelstudio, root / "tasks.json", root / "images")


# -- XML: Pascal VOC and CVAT ----------------------------------------------------------------------------------

XML_TEXT = st.one_of(st.text(max_size=12), NUMBER.map(str), st.sampled_from(["", "-1", "1e9", "nan", "0x10", " 5 "]))


def _tag(name: str, inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return inner.map(lambda body: f"<{name}>{body}</{name}>")


def _xml_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


SAFE_TEXT = XML_TEXT.map(_xml_escape)
VOC_OBJECT = st.tuples(
    _tag("name", st.one_of(CLASS_NAMES.map(_xml_escape), SAFE_TEXT)),
    _tag("difficult", SAFE_TEXT),
    _tag(
        "bndbox",
        st.tuples(*(_tag(t, SAFE_TEXT) for t in ("xmin", "ymin", "xmax", "ymax"))).map("".join),
    ),
).map(lambda parts: "<object>" + "".join(parts) + "</object>")
VOC_DOC = st.tuples(
    _tag("filename", st.one_of(IMAGE_NAMES.map(_xml_escape), SAFE_TEXT)),
    _tag("size", st.tuples(_tag("width", SAFE_TEXT), _tag("height", SAFE_TEXT), _tag("depth", SAFE_TEXT)).map("".join)),
    st.lists(VOC_OBJECT, max_size=5).map("".join),
).map(lambda parts: "<annotation>" + "".join(parts) + "</annotation>")
HOSTILE_XML = st.sampled_from(
    [
        '<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x "xxxxxxxx"><!ENTITY y "&x;&x;&x;&x;">]>'
        "<annotation>&y;</annotation>",
        '<!DOCTYPE a SYSTEM "file:///etc/passwd"><annotation/>',
        "<annotation>" + "<a>" * 20_000 + "</a>" * 20_000 + "</annotation>",
        "<annotations><image name='a.jpg' width='1e400' height='-0'/></annotations>",
        "\xef\xbb\xbf<annotation></annotation>",
    ]
)


def xml_bytes(structured: st.SearchStrategy[str]) -> st.SearchStrategy[bytes]:
    return st.one_of(
        structured.map(str.encode),
        structured.map(str.encode).flatmap(lambda b: mutated([b])),
        HOSTILE_XML.map(lambda s: s.encode("utf-8", "surrogatepass")),
        st.binary(max_size=300),
    )


@given(st.lists(xml_bytes(VOC_DOC), min_size=1, max_size=3))
@FUZZ
def test_fuzz_voc(documents: list[bytes]) -> None:
    from hazardlens.formats import read_voc

    root = fresh_dir()
    place_images(root / "JPEGImages")
    (root / "Annotations").mkdir()
    for i, doc in enumerate(documents):
        (root / "Annotations" / ("a.xml" if i == 0 else f"x{i}.xml")).write_bytes(doc)
    clean(read_voc, root)


CVAT_SHAPE = st.one_of(
    st.tuples(CLASS_NAMES.map(_xml_escape), SAFE_TEXT, SAFE_TEXT, SAFE_TEXT, SAFE_TEXT).map(
        lambda t: f'<box label="{t[0]}" xtl="{t[1]}" ytl="{t[2]}" xbr="{t[3]}" ybr="{t[4]}" occluded="0"/>'
    ),
    st.tuples(CLASS_NAMES.map(_xml_escape), st.lists(st.tuples(NUMBER, NUMBER), max_size=5)).map(
        lambda t: f'<polygon label="{t[0]}" points="{";".join(f"{x},{y}" for x, y in t[1])}"/>'
    ),
    st.just('<points label="x" points="1,2"/>'),
)
CVAT_IMAGE = st.tuples(
    st.one_of(IMAGE_NAMES.map(_xml_escape), SAFE_TEXT),
    SAFE_TEXT,
    SAFE_TEXT,
    st.lists(CVAT_SHAPE, max_size=4).map("".join),
).map(lambda t: f'<image id="0" name="{t[0]}" width="{t[1]}" height="{t[2]}">{t[3]}</image>')
CVAT_DOC = st.tuples(
    st.lists(CLASS_NAMES.map(_xml_escape), max_size=3).map(
        lambda names: (
            "<meta><task><labels>"
            + "".join(f"<label><name>{n}</name></label>" for n in names)
            + "</labels></task></meta>"
        )
    ),
    st.lists(CVAT_IMAGE, max_size=4).map("".join),
).map(lambda t: "<annotations><version>1.1</version>" + t[0] + t[1] + "</annotations>")


@given(xml_bytes(CVAT_DOC))
@FUZZ
def test_fuzz_cvat(data: bytes) -> None:
    from hazardlens.formats import read_cvat

    root = fresh_dir()
    place_images(root / "images")
    (root / "annotations.xml").write_bytes(data)
    clean(read_cvat, root / "annotations.xml", root / "images")


# -- YOLO: label lines and data.yaml --------------------------------------------------------------------------

YOLO_TOKEN = st.one_of(
    st.sampled_from(
        ["0", "1", "7", "-1", "0.5", "1.5", "nan", "inf", "1e9", "", "x", "0.1e-3", "99999999999999999999"]
    ),
    NUMBER.map(str),
)
YOLO_LINE = st.lists(YOLO_TOKEN, max_size=12).map(" ".join)
YOLO_LABELS = st.one_of(
    st.lists(YOLO_LINE, max_size=8).map(lambda lines: "\n".join(lines).encode()),
    st.binary(max_size=200),
)
DATA_YAML = st.one_of(
    st.fixed_dictionaries(
        {
            "names": st.one_of(
                st.lists(CLASS_NAMES, max_size=5), st.dictionaries(SCALARS, CLASS_NAMES, max_size=4), JSON
            )
        },
        optional={"nc": SCALARS, "train": SCALARS, "val": SCALARS, "path": SCALARS},
    ).map(json.dumps),
    YAML_TEXT,
)


@given(YOLO_LABELS, st.one_of(st.none(), DATA_YAML), st.one_of(st.none(), st.text(max_size=80)))
@FUZZ
def test_fuzz_yolo(labels: bytes, data_yaml: str | None, classes_txt: str | None) -> None:
    from hazardlens.formats import read_yolo

    root = fresh_dir()
    place_images(root / "images" / "train")
    (root / "labels" / "train").mkdir(parents=True)
    (root / "labels" / "train" / "a.txt").write_bytes(labels)
    (root / "labels" / "train" / "b.txt").write_bytes(labels[::-1])
    if data_yaml is not None:
        (root / "data.yaml").write_text(data_yaml, encoding="utf-8", errors="surrogatepass")
    if classes_txt is not None:
        (root / "classes.txt").write_text(classes_txt, encoding="utf-8", errors="surrogatepass")
    clean(read_yolo, root)


# -- zip archives: sample archives and dataset imports, end to end ----------------------------------------------


ZIP_NAMES = st.one_of(
    st.sampled_from(
        [
            "a.jpg",
            "images/a.jpg",
            "labels/a.txt",
            "data.yaml",
            "annotations.json",
            "annotations.xml",
            "Annotations/a.xml",
            "JPEGImages/a.jpg",
            "../evil.jpg",
            "/abs.jpg",
            "C:/win.jpg",
            "a/../../b.jpg",
            "dir/",
            "./",
            "__MACOSX/._a.jpg",
            ".hidden.jpg",
            "x\\..\\y.jpg",
            "nul\0.jpg",
            "inner.zip",
            "a.jpg/b.jpg",
        ]
    ),
    st.text(max_size=30),
)


@st.composite
def zip_archives(draw: st.DrawFn) -> bytes:
    """Zips built entry by entry (names that slip, collide, nest; stored or deflated members;
    image and annotation contents), or valid ones with bytes edited afterwards."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for _ in range(draw(st.integers(0, 6))):
            name = draw(ZIP_NAMES)
            content = draw(
                st.one_of(
                    st.sampled_from(list(seed_images().values())),
                    st.binary(max_size=64),
                    json_bytes(COCO),
                    YOLO_LABELS,
                    st.just(b"\0" * 200_000),
                )
            )
            info = zipfile.ZipInfo(name or "empty")
            info.compress_type = draw(st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED]))
            if draw(st.booleans()):
                info.create_system = 3
                info.external_attr = draw(st.sampled_from([0o120777, 0o100644, 0o040755])) << 16
            try:
                zf.writestr(info, content)
            except (ValueError, OSError):  # a name zipfile itself will not write
                continue
    data = buf.getvalue()
    return draw(st.one_of(st.just(data), mutated([data])))


def zip_bytes() -> st.SearchStrategy[bytes]:
    return st.one_of(zip_archives(), st.binary(max_size=200), st.just(b"PK\x05\x06" + b"\0" * 18))


@functools.cache
def library_context() -> tuple[Any, Any]:
    """A real home (SQLite catalogue, filesystem store) for the end-to-end zip targets."""
    from hazardlens.auth import Principal, create_key
    from hazardlens.context import Context
    from hazardlens.settings import Settings

    home = workdir() / "home"
    ctx = Context(Settings(home=home, max_pixels=MAX_PIXELS, max_upload_bytes=1 << 20))
    ctx.init()
    atexit.register(ctx.close)
    with ctx.db.session() as s:  # a real user, as a request's key resolves to
        _, user = create_key(s, "420000", "admin", "fuzz")
        principal = Principal(user_id=user.id, name=user.name, org_code="420000", role="admin")
    return ctx, principal


@given(zip_bytes())
@FUZZ
def test_fuzz_sample_archive(data: bytes) -> None:
    """POST /v1/samples/archive: a zip of photos ingested in place (never extracted)."""
    from hazardlens.datasets import library

    ctx, principal = library_context()
    meta = library.IngestMeta(sector="general", scope="private", source="import")
    summary = clean(library.ingest_zip, ctx, principal, io.BytesIO(data), meta, name="fuzz.zip", workers=1)
    if summary is not None:
        summary.to_dict()


@given(zip_bytes(), st.sampled_from(["coco", "yolo", "voc", "labelstudio", "cvat"]))
@FUZZ
def test_fuzz_dataset_import_zip(data: bytes, fmt: str) -> None:
    """POST /v1/imports: unpack safely, locate the dataset, read it, map classes, ingest."""
    from hazardlens.labeling.importers import import_zip

    ctx, principal = library_context()
    cmap = {"mapping": {"helmet": "helmet", "head": "head", "person": "person", "0": "head", "1": "helmet"}}
    clean(import_zip, ctx, principal, fmt, io.BytesIO(data), json.dumps(cmap), sector="general", name="fuzz.zip")


# -- over HTTP: the same inputs through the routes, answered in the error shape and never a 500 ------------------


@functools.cache
def http_client() -> tuple[Any, dict[str, str]]:
    """The real app (lifespan run, no background model loading) on a home of its own, and an admin key."""
    from fastapi.testclient import TestClient

    from hazardlens.auth import create_key
    from hazardlens.context import Context
    from hazardlens.serving.app import create_app
    from hazardlens.settings import Settings

    ctx = Context(Settings(home=workdir() / "http-home", max_pixels=MAX_PIXELS, max_upload_bytes=1 << 20))
    client = TestClient(create_app(ctx, start_background=False), raise_server_exceptions=False)
    client.__enter__()
    atexit.register(client.__exit__, None, None, None)
    with ctx.db.session() as s:
        key, _ = create_key(s, "420000", "admin", None)
    return client, {"Authorization": f"Bearer {key}"}


def answered(resp: Any) -> None:
    """Below 500, and a refusal in the one error shape with a code."""
    assert resp.status_code < 500, (resp.status_code, resp.text[:300])
    if resp.status_code >= 400:
        body = resp.json()
        assert set(body) == {"error"} and isinstance(body["error"]["code"], str), body


@given(image_bytes(), zip_bytes(), st.sampled_from(["coco", "yolo", "voc", "labelstudio", "cvat"]), YAML_TEXT)
@settings(FUZZ, max_examples=max(EXAMPLES // 2, 1))  # three requests per example
def test_fuzz_http_uploads(image: bytes, archive: bytes, fmt: str, class_map: str) -> None:
    client, headers = http_client()
    form = {"sector": "general"}
    answered(client.post("/v1/samples", headers=headers, files={"file": ("x.jpg", image)}, data=form))
    answered(client.post("/v1/samples/archive", headers=headers, files={"file": ("x.zip", archive)}, data=form))
    maps = {"class_map": class_map or "x", "format": fmt, **form}
    answered(client.post("/v1/imports", headers=headers, files={"file": ("x.zip", archive)}, data=maps))


# -- regressions: inputs the fuzzers once crashed a parser with -------------------------------------------------
# (added as they are found; each failed before its fix)


@pytest.mark.parametrize("fmt", ["coco", "labelstudio"])
def test_regression_deeply_nested_json_is_refused(tmp_path: Path, fmt: str) -> None:
    """test_fuzz_coco found ``[[[[...]]]]`` a few thousand deep (20 KB) raising RecursionError out
    of json.loads: an internal error for a COCO or Label Studio file in an import zip."""
    from hazardlens.errors import Invalid
    from hazardlens.formats import read_coco, read_labelstudio

    place_images(tmp_path / "images")
    path = tmp_path / "annotations.json"
    path.write_bytes(b"[" * 50_000 + b"]" * 50_000)
    with pytest.raises(Invalid, match="nested too deeply"):
        if fmt == "coco":
            read_coco(path, tmp_path / "images")
        else:
            read_labelstudio(path, tmp_path / "images")


def test_regression_yaml_with_control_characters_is_refused(tmp_path: Path) -> None:
    """test_fuzz_yolo found a data.yaml holding a control character (``\x08``): PyYAML's reader
    refuses it while the loader is built, outside the parse's error handling, so the import failed
    with an internal error instead of 422 invalid_yaml."""
    from hazardlens.errors import Invalid
    from hazardlens.formats import ClassMap, read_yolo
    from hazardlens.safeyaml import load_user_yaml

    with pytest.raises(Invalid) as caught:
        load_user_yaml("names: [a\x08]\n", "data.yaml")
    assert caught.value.code == "invalid_yaml"
    place_images(tmp_path / "images")
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "a.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    (tmp_path / "data.yaml").write_text("names:\n  - hel\x1fmet\n")
    records, report = read_yolo(tmp_path)  # a names file that does not parse is reported and ignored
    assert report.count("bad_names_file") == 1 and records
    (tmp_path / "map.yaml").write_text("mapping: {a\x08: helmet}\n")
    with pytest.raises(Invalid):
        ClassMap.load(tmp_path / "map.yaml")


@pytest.mark.parametrize("damage", ["crc", "truncated", "header_name", "magic", "shifted"])
def test_regression_damaged_zip_member_is_bad_archive(tmp_path: Path, damage: str) -> None:
    """test_fuzz_dataset_import_zip found members with a bad CRC, data cut short, a local header
    that disagrees with the directory, no local header at all, or an offset before the file's start:
    zipfile's BadZipFile/EOFError/ValueError
    escaped the import's unpacking as internal errors. Now: 422 bad_archive, nothing unpacked kept."""
    from hazardlens.errors import Invalid
    from hazardlens.labeling.import_sources import safe_extract_zip

    payload = seed_images()["png"]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("a.jpg", payload)
    data = bytearray(buf.getvalue())
    start = 30 + len("a.jpg")  # the member's data follows its 30-byte local header and name
    if damage == "crc":
        data[start + 40] ^= 0xFF
    elif damage == "truncated":
        central = data.index(b"PK\x01\x02")
        data = data[: start + 10] + data[central:]  # the directory still promises the whole member
        offset = data.index(b"PK\x05\x06") + 16
        data[offset : offset + 4] = struct.pack("<I", start + 10)
    elif damage == "header_name":
        data[30:35] = b"b.jpg"
    elif damage == "shifted":  # make fuzz: the first byte gone, every offset one too far (negative seek)
        data = data[1:]
    else:
        data[0:4] = b"XXXX"
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(Invalid) as caught:
        safe_extract_zip(io.BytesIO(bytes(data)), dest, max_bytes=1 << 20)
    assert caught.value.code == "bad_archive"


@pytest.mark.parametrize("names", [["a.jpg/b.jpg", "a.jpg"], ["a.jpg", "a.jpg/b.jpg"], ["a.jpg", "a.jpg/"]])
def test_regression_file_and_folder_of_one_name_is_bad_archive(tmp_path: Path, names: list[str]) -> None:
    """make fuzz (test_fuzz_dataset_import_zip) found an archive holding ``a.jpg`` and ``a.jpg/b.jpg``:
    unpacking met IsADirectoryError / FileExistsError, an internal error. Now: 422 bad_archive."""
    from hazardlens.errors import Invalid
    from hazardlens.labeling.import_sources import safe_extract_zip

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name in names:
            zf.writestr(name, b"" if name.endswith("/") else seed_images()["jpeg"])
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(Invalid) as caught:
        safe_extract_zip(io.BytesIO(buf.getvalue()), dest, max_bytes=1 << 20)
    assert caught.value.code == "bad_archive" and "clashes" in caught.value.message


def test_regression_cut_short_interlaced_1bit_png_is_truncated_image() -> None:
    """make fuzz (test_fuzz_library_image_checks) found a 1x1 interlaced 1-bit PNG whose IDAT is cut
    short: Pillow's decoder set-up raised TypeError, which the upload check did not expect (a 500 on
    POST /v1/samples). Now: 422 truncated_image; the detection decoder already refused it (415)."""
    from hazardlens.errors import Invalid, UnsupportedMedia
    from hazardlens.images import inspect_image
    from hazardlens.models.preprocess import decode_image

    data = (
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x01\x00\x00\x00\x01@i\xc9\xb2"
        b"\x00\x00\x00\x08IDAT"
    )
    with pytest.raises(Invalid) as caught:
        inspect_image(data, MAX_PIXELS, 64)
    assert caught.value.code == "truncated_image"
    with pytest.raises(UnsupportedMedia):
        decode_image(data, 640, max_pixels=MAX_PIXELS)


def _two_photo_zip(compression: int = zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        zf.writestr("a.jpg", seed_images()["jpeg"])
        zf.writestr("b.png", seed_images()["png"])
    return buf.getvalue()


def _central_entries(data: bytes) -> list[int]:
    """Positions of the central directory's entries."""
    out, at = [], data.find(b"PK\x01\x02")
    while at >= 0:
        out.append(at)
        at = data.find(b"PK\x01\x02", at + 4)
    return out


def _shift_directory(data: bytes, by: int) -> bytes:
    """The end record says the directory starts ``by`` bytes later than it does: zipfile then moves
    every member's offset ``by`` bytes back, the first one before the file's start."""
    out = bytearray(data)
    at = out.rindex(b"PK\x05\x06") + 16
    (offset,) = struct.unpack("<I", out[at : at + 4])
    out[at : at + 4] = struct.pack("<I", offset + by)
    return bytes(out)


def _samples(ctx: Any) -> int:
    from sqlalchemy import func, select

    from hazardlens.orm import Sample

    with ctx.db.read_session() as s:
        return int(s.scalar(select(func.count()).select_from(Sample)) or 0)


@pytest.mark.parametrize("how", ["end_record_offset", "first_byte_cut"])
def test_regression_sample_archive_offsets_before_the_file(how: str, tmp_path: Path) -> None:
    """A fuzz run once saw ingest_zip (POST /v1/samples/archive) meet a negative seek: an archive whose
    end record and directory disagree makes zipfile move every member's offset before the file's
    start, and reading a member raised ValueError (OSError EINVAL once spooled to disk), a refusal
    with no code and a traceback in the log. Now the archive is refused as a whole, 422 bad_archive,
    before anything of it is stored; an in-memory and an on-disk upload alike."""
    from hazardlens.datasets import library
    from hazardlens.errors import Invalid

    good = _two_photo_zip()
    data = _shift_directory(good, 7) if how == "end_record_offset" else good[1:]
    assert min(i.header_offset for i in zipfile.ZipFile(io.BytesIO(data)).infolist()) < 0  # the crafted damage
    ctx, principal = library_context()
    meta = library.IngestMeta(sector="general", scope="private", source="import")
    before = _samples(ctx)
    with tempfile.TemporaryFile(dir=tmp_path) as on_disk:
        on_disk.write(data)
        for upload in (io.BytesIO(data), on_disk):
            upload.seek(0)
            with pytest.raises(Invalid) as caught:
                library.ingest_zip(ctx, principal, upload, meta, name="shifted.zip", workers=1)
            assert caught.value.code == "bad_archive" and "before the start of the file" in caught.value.message
    assert _samples(ctx) == before
    # the same bytes undamaged are ingested: the refusal is about the damage, not the photos
    summary = library.ingest_zip(ctx, principal, io.BytesIO(good), meta, name="good.zip", workers=1)
    assert not summary.refused and summary.stored + summary.deduplicated == 2


@pytest.mark.parametrize("damage", ["offset_past_data", "zip64_offset", "deflate", "crc"])
def test_regression_sample_archive_damaged_member_is_refused_alone(damage: str) -> None:
    """One damaged member (its directory offset pointing past the data, a zip64 offset of 2**64-1,
    a broken deflate stream, a bad CRC) is refused as bad_archive with a reason; the other member is
    stored (nothing lost), and nothing raised."""
    from hazardlens.datasets import library

    good = _two_photo_zip(zipfile.ZIP_DEFLATED if damage == "deflate" else zipfile.ZIP_STORED)
    data = bytearray(good)
    second = _central_entries(good)[1]  # b.png's directory entry
    if damage == "offset_past_data":
        data[second + 42 : second + 46] = struct.pack("<I", good.index(b"PK\x01\x02") + 3)
    elif damage == "zip64_offset":
        # zipfile reads a zip64 extra field's offset when the directory's says 0xFFFFFFFF
        name_len, extra_len = struct.unpack("<HH", data[second + 28 : second + 32])
        assert extra_len == 0
        extra = struct.pack("<HHQ", 0x0001, 8, 2**64 - 1)
        data[second + 42 : second + 46] = b"\xff\xff\xff\xff"
        data[second + 30 : second + 32] = struct.pack("<H", len(extra))
        cut = second + 46 + name_len
        data[cut:cut] = extra
        end = data.rindex(b"PK\x05\x06")
        (size,) = struct.unpack("<I", data[end + 12 : end + 16])
        data[end + 12 : end + 16] = struct.pack("<I", size + len(extra))
    else:  # damage inside b.png's data: its local header is 30 bytes and the name
        (local,) = struct.unpack("<I", good[second + 42 : second + 46])
        at = local + 30 + len("b.png") + (2 if damage == "deflate" else 40)
        data[at] ^= 0xFF
        if damage == "deflate":
            data[at + 1] ^= 0xFF
    ctx, principal = library_context()
    meta = library.IngestMeta(sector="general", scope="private", source="import", tags=(f"dmg-{damage}",))
    summary = library.ingest_zip(ctx, principal, io.BytesIO(bytes(data)), meta, name="dmg.zip", workers=1)
    refused = {r.name: r for r in summary.refused}
    assert list(refused) == ["dmg.zip!b.png"], summary.to_dict()
    assert refused["dmg.zip!b.png"].code == "bad_archive" and refused["dmg.zip!b.png"].message
    assert summary.stored + summary.deduplicated == 1  # a.jpg is kept
