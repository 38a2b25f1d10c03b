"""What a labelled dataset import reads: the foreign source through its format reader, an uploaded
zip unpacked safely and located, and image bytes converted when the library does not keep their format.
"""

from __future__ import annotations

import io
import stat
import warnings
import zipfile
import zlib
from pathlib import Path
from typing import IO, Literal

from PIL import Image, ImageOps

from hazardlens.errors import Invalid, TooLarge
from hazardlens.formats import (
    ImportRecord,
    ImportReport,
    read_coco,
    read_cvat,
    read_labelstudio,
    read_voc,
    read_yolo,
)
from hazardlens.formats._util import safe_relative
from hazardlens.images import sniff_format

ImportFormat = Literal["coco", "yolo", "voc", "labelstudio", "cvat"]
FORMATS: tuple[str, ...] = ("coco", "yolo", "voc", "labelstudio", "cvat")


def read_source(
    fmt: str, source: Path | str, images: Path | str | None = None
) -> tuple[list[ImportRecord], ImportReport]:
    """Run the format's reader. COCO and Label Studio take a json plus an images folder (COCO
    defaults to the json's folder), CVAT its XML (images default to ``images/`` beside it); YOLO and
    VOC take the dataset folder."""
    if fmt == "coco":
        return read_coco(source, images)
    if fmt == "cvat":
        return read_cvat(source, images)
    if fmt == "labelstudio":
        if images is None:
            raise Invalid("a Label Studio import needs the images folder", code="images_required")
        return read_labelstudio(source, images)
    if fmt == "yolo":
        return read_yolo(source)
    if fmt == "voc":
        return read_voc(source)
    raise Invalid(f"unknown import format {fmt!r}; one of {', '.join(FORMATS)}", code="invalid_format")


def library_bytes(data: bytes, max_pixels: int) -> tuple[bytes, str | None]:
    """The bytes to store, and a note when they had to be converted. Datasets carry formats the
    library does not keep (GIFs named .jpg, BMP, TIFF) whose labels are still good: those are
    converted losslessly to PNG, upright, so the pixels are the ones the labels were drawn on. Data
    the library can judge itself (its own formats, even when broken, and non-images) passes as is."""
    if sniff_format(data) is not None:
        return data, None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                fmt = im.format or "unknown"
                if im.size[0] * im.size[1] > max_pixels:
                    return data, None  # the library refuses it with its own message
                im.seek(0)
                im.load()
                upright = ImageOps.exif_transpose(im) or im
                if upright.mode not in ("1", "L", "LA", "P", "RGB", "RGBA"):
                    upright = upright.convert("RGBA" if "A" in upright.getbands() else "RGB")
                buf = io.BytesIO()
                upright.save(buf, format="PNG")
    except Exception:
        return data, None  # not an image PIL can read either: the library says why
    return buf.getvalue(), f"{fmt} converted to PNG (the library keeps JPEG, PNG, WebP and HEIC)"


# --- zip uploads (API) -----------------------------------------------------------------------------

#: What zipfile raises for a damaged member: a bad header or CRC (BadZipFile), data cut short
#: (EOFError), a broken deflate stream (zlib.error), a compression method it lacks (NotImplementedError),
#: an offset before the start of the file (ValueError: negative seek).
_DAMAGED_MEMBER = (zipfile.BadZipFile, EOFError, zlib.error, NotImplementedError, ValueError)
#: What the filesystem says when one entry's path runs into another's (a file where a folder must be).
_CLASHING_ENTRY = (FileExistsError, IsADirectoryError, NotADirectoryError)


def safe_extract_zip(fileobj: IO[bytes], dest: Path, *, max_bytes: int, max_entries: int = 200_000) -> None:
    """Extract an uploaded zip into ``dest``. The whole upload is refused when an entry would land
    outside ``dest`` (absolute path, ``..``, a drive letter, a symlink) or when it unpacks to more
    than ``max_bytes``, counted on the bytes actually written because headers can lie."""
    try:
        zf = zipfile.ZipFile(fileobj)
    except (zipfile.BadZipFile, OSError) as exc:
        raise Invalid(f"not a readable zip archive ({exc})", code="bad_archive") from exc
    root = dest.resolve()
    with zf:
        infos = zf.infolist()
        if len(infos) > max_entries:
            raise TooLarge(
                f"archive holds {len(infos):,} entries; the limit is {max_entries:,}", code="archive_too_large"
            )
        planned: list[tuple[zipfile.ZipInfo, Path]] = []
        for info in infos:
            if info.is_dir() and info.filename.replace("\\", "/").strip("/") in ("", "."):
                continue  # the archive's own root folder ("./"), written by some zip tools
            rel = safe_relative(info.filename)
            mode = info.external_attr >> 16
            if rel is None or (info.create_system == 3 and stat.S_ISLNK(mode)):
                raise Invalid(
                    f"archive entry {info.filename!r} escapes the archive folder; nothing was imported",
                    code="unsafe_path",
                )
            target = (root / rel).resolve()
            if not target.is_relative_to(root):
                raise Invalid(
                    f"archive entry {info.filename!r} escapes the archive folder; nothing was imported",
                    code="unsafe_path",
                )
            if info.flag_bits & 0x1:
                raise Invalid(f"archive entry {info.filename!r} is encrypted", code="encrypted")
            planned.append((info, target))
        written = 0
        for info, target in planned:
            try:
                written = _extract_member(zf, info, target, written, max_bytes)
            except _CLASHING_ENTRY as exc:
                # "a.jpg" and "a.jpg/b.jpg" in one archive: a file and a folder of the same name
                # (found by the fuzz pass: an internal error).
                raise Invalid(
                    f"archive entry {info.filename!r} clashes with another entry (a file and a folder of "
                    "the same name); nothing was imported",
                    code="bad_archive",
                ) from exc
            except _DAMAGED_MEMBER as exc:
                # A member whose header, data or checksum is damaged (found by the fuzz pass: these
                # were internal errors): the whole upload is refused, nothing imported.
                raise Invalid(
                    f"archive entry {info.filename!r} cannot be read ({type(exc).__name__}: {exc}); "
                    "nothing was imported",
                    code="bad_archive",
                ) from exc


def _extract_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, written: int, max_bytes: int) -> int:
    """Write one member to ``target``; answers the bytes written so far, this member's included,
    refusing the archive once they pass ``max_bytes`` (counted as written: headers can lie)."""
    if info.is_dir():
        target.mkdir(parents=True, exist_ok=True)
        return written
    target.parent.mkdir(parents=True, exist_ok=True)
    with zf.open(info) as src, target.open("wb") as dst:
        while chunk := src.read(1 << 20):
            written += len(chunk)
            if written > max_bytes:
                raise TooLarge(f"archive unpacks to more than {max_bytes:,} bytes", code="archive_too_large")
            dst.write(chunk)
    return written


def _unwrap(root: Path) -> Path:
    """Descend through a single wrapping folder (``export/`` around the dataset), as zips made by
    compressing a folder have; stop at dataset folders themselves."""
    while True:
        entries = [p for p in root.iterdir() if not p.name.startswith(".") and p.name != "__MACOSX"]
        if (
            len(entries) == 1
            and entries[0].is_dir()
            and entries[0].name.lower()
            not in ("images", "labels", "annotations", "jpegimages", "train", "val", "valid", "test")
        ):
            root = entries[0]
            continue
        return root


def locate_dataset(fmt: str, folder: Path) -> tuple[Path, Path | None]:
    """(source, images) of a dataset unpacked into ``folder``: the json and its images folder for
    COCO and Label Studio (the ``images/`` beside the json when there is one), the same with the XML
    for CVAT, the dataset folder for YOLO and VOC."""
    root = _unwrap(folder)
    if fmt in ("yolo", "voc"):
        return root, None
    if fmt not in FORMATS:
        raise Invalid(f"unknown import format {fmt!r}; one of {', '.join(FORMATS)}", code="invalid_format")
    kind = "xml" if fmt == "cvat" else "json"
    jsons = sorted(
        (p for p in root.rglob(f"*.{kind}") if "__MACOSX" not in p.parts and not p.name.startswith(".")),
        key=lambda p: (len(p.relative_to(root).parts), p.as_posix()),
    )
    if not jsons:
        raise Invalid(f"the archive holds no {fmt} {kind} file", code="no_annotations")
    top = [p for p in jsons if len(p.parts) == len(jsons[0].parts)]
    if len(top) > 1:
        names = ", ".join(p.relative_to(root).as_posix() for p in top)
        raise Invalid(
            f"the archive holds several {kind} files ({names}); upload one dataset at a time",
            code="ambiguous_annotations",
        )
    ann = top[0]
    images = ann.parent / "images"
    return ann, images if images.is_dir() else ann.parent
