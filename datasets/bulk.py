"""Bulk ingest into the sample library: files, folders (recursively) and zip archives (read in
memory, never extracted), decoded in worker threads while one thread writes the catalogue in batches.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import struct
import threading
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import IO, Any

from hazardlens.auth import Principal
from hazardlens.context import Context
from hazardlens.datasets.ingest import IngestMeta, IngestResult, KnownBytes, Prepared, prepare, record
from hazardlens.errors import HazardError, Invalid, TooLarge
from hazardlens.imagefiles import ARCHIVE_SUFFIXES, UPLOAD_SUFFIXES
from hazardlens.readahead import read_ahead

log = logging.getLogger("hazardlens.library")


@dataclass(frozen=True)
class Refusal:
    name: str
    code: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "code": self.code, "message": self.message}


@dataclass
class IngestSummary:
    stored: int = 0
    deduplicated: int = 0
    near_duplicates: int = 0  # stored samples that were linked to near-duplicates
    refused: list[Refusal] = field(default_factory=list)
    skipped: list[Refusal] = field(default_factory=list)  # not images (notes, macOS metadata...)
    sample_ids: list[int] = field(default_factory=list)  # stored or found, in input order

    def count(self, outcome: IngestResult | Refusal) -> str:
        """Count one recorded image; returns its outcome: stored | deduplicated | refused."""
        if isinstance(outcome, Refusal):
            self.refused.append(outcome)
            return "refused"
        self.sample_ids.append(outcome.sample.id)
        if outcome.deduplicated:
            self.deduplicated += 1
            return "deduplicated"
        self.stored += 1
        self.near_duplicates += bool(outcome.near_duplicates)
        return "stored"

    @property
    def total(self) -> int:
        return self.stored + self.deduplicated + len(self.refused)

    def to_dict(self) -> dict[str, Any]:
        return {
            "stored": self.stored,
            "deduplicated": self.deduplicated,
            "near_duplicates": self.near_duplicates,
            "refused": [r.to_dict() for r in self.refused],
            "skipped": [r.to_dict() for r in self.skipped],
            "sample_ids": list(self.sample_ids),
        }


#: progress(done, total, name, outcome) with outcome stored | deduplicated | refused | skipped.
Progress = Callable[[int, int, str, str], None]


@dataclass(frozen=True)
class _Source:
    name: str  # shown to the user: path, or archive!entry
    original_name: str  # kept on the sample
    read: Callable[[], bytes] | None = None
    refusal: Refusal | None = None
    skip: bool = False  # refusal is a skip (not an image at all), not a failure


def _is_hidden(name: str) -> bool:
    return name.startswith(".") or name == "__MACOSX" or name.lower() in {"thumbs.db", "desktop.ini"}


def _read_file(path: Path, limit: int) -> Callable[[], bytes]:
    def read() -> bytes:
        with path.open("rb") as fh:
            data = fh.read(limit + 1)
        if len(data) > limit:
            raise TooLarge(f"file is larger than the limit of {limit:,} bytes", code="file_too_large")
        return data

    return read


def unsafe_entry(name: str) -> str | None:
    """Why a zip entry name could write outside the folder it is extracted to (zip slip), else None.
    Entries are never extracted here, but the name is kept as the sample's original name, and
    exports write files by it."""
    norm = name.replace("\\", "/")
    if norm.startswith("/") or re.match(r"^[A-Za-z]:", norm):
        return "absolute path"
    if any(part == ".." for part in norm.split("/")):
        return "'..' in the path"
    if "\x00" in norm:
        return "NUL in the name"
    return None


#: What zipfile raises on a damaged member: a bad CRC or a local header that disagrees with the
#: directory (BadZipFile), data cut short (EOFError), a broken deflate stream (zlib.error), a
#: compression method it lacks (NotImplementedError), an offset before the start of the file
#: (ValueError: negative seek, on an in-memory upload) or beyond what a file offset holds (OverflowError).
_DAMAGED_MEMBER = (zipfile.BadZipFile, EOFError, zlib.error, NotImplementedError, ValueError, OverflowError)


def _damaged(exc: BaseException) -> bool:
    # A negative or impossible seek on an upload spooled to disk is EINVAL; other OS errors (the disk
    # failing under a local archive) are not the archive's fault and stay what they are.
    return isinstance(exc, _DAMAGED_MEMBER) or (isinstance(exc, OSError) and exc.errno == errno.EINVAL)


def _outside(info: zipfile.ZipInfo, zf: zipfile.ZipFile) -> bool:
    """Whether the directory puts the member's local header outside the archive's data: before the
    file's start (an archive cut at the front, or a directory offset that lies) or at or after the
    directory itself (a zip64 offset of 2**64-1)."""
    start_dir = getattr(zf, "start_dir", None)
    return info.header_offset < 0 or (isinstance(start_dir, int) and info.header_offset >= start_dir)


def _zip_sources(zf: zipfile.ZipFile, label: str, limit: int, lock: threading.Lock) -> Iterator[_Source]:
    for info in zf.infolist():
        entry = info.filename
        if info.is_dir():
            continue
        shown = f"{label}!{entry}"
        why = unsafe_entry(entry)
        if why:
            yield _Source(
                shown, entry, refusal=Refusal(shown, "unsafe_path", f"archive entry escapes the archive folder ({why})")
            )
            continue
        parts = PurePosixPath(entry.replace("\\", "/")).parts
        if any(_is_hidden(p) for p in parts):
            yield _Source(
                shown,
                entry,
                skip=True,
                refusal=Refusal(shown, "skipped", "hidden or system metadata entry (e.g. __MACOSX)"),
            )
            continue
        suffix = PurePosixPath(parts[-1]).suffix.lower()
        if suffix not in UPLOAD_SUFFIXES:
            what = "nested archives are not opened" if suffix in ARCHIVE_SUFFIXES else "not an image file"
            yield _Source(shown, entry, skip=True, refusal=Refusal(shown, "skipped", what))
            continue
        if info.flag_bits & 0x1:
            yield _Source(shown, entry, refusal=Refusal(shown, "encrypted", "encrypted archive entries are not read"))
            continue
        if _outside(info, zf):
            yield _Source(
                shown,
                entry,
                refusal=Refusal(
                    shown,
                    "bad_archive",
                    f"damaged archive: the entry's offset ({info.header_offset}) is outside the data",
                ),
            )
            continue
        if info.file_size > limit:
            yield _Source(
                shown,
                entry,
                refusal=Refusal(shown, "file_too_large", f"entry is {info.file_size:,} bytes; the limit is {limit:,}"),
            )
            continue

        def read(info: zipfile.ZipInfo = info) -> bytes:
            # Read in memory, bounded: the size in the header may lie (a zip bomb).
            try:
                with lock, zf.open(info) as fh:
                    data = fh.read(limit + 1)
            except Exception as exc:
                if not _damaged(exc):
                    raise
                raise Invalid(f"damaged archive entry ({type(exc).__name__}: {exc})", code="bad_archive") from exc
            if len(data) > limit:
                raise TooLarge(f"entry is larger than the limit of {limit:,} bytes", code="file_too_large")
            return data

        yield _Source(shown, "/".join(parts), read=read)


def _path_sources(paths: Iterable[Path | str], limit: int, stack: ExitStack) -> Iterator[_Source]:
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not _is_hidden(d))
                for fname in sorted(files):
                    file = Path(root) / fname
                    rel = file.relative_to(path).as_posix()
                    if _is_hidden(fname):
                        yield _Source(
                            str(file), rel, skip=True, refusal=Refusal(str(file), "skipped", "hidden or system file")
                        )
                    elif file.suffix.lower() in ARCHIVE_SUFFIXES:
                        yield from _archive_sources(file, limit, stack)
                    elif file.suffix.lower() not in UPLOAD_SUFFIXES:
                        yield _Source(
                            str(file), rel, skip=True, refusal=Refusal(str(file), "skipped", "not an image file")
                        )
                    else:
                        yield _Source(str(file), rel, read=_read_file(file, limit))
        elif path.is_file():
            if path.suffix.lower() in ARCHIVE_SUFFIXES:
                yield from _archive_sources(path, limit, stack)
            else:  # named explicitly: the decoder decides, whatever the extension says
                yield _Source(str(path), path.name, read=_read_file(path, limit))
        else:
            yield _Source(str(path), path.name, refusal=Refusal(str(path), "not_found", "no such file or folder"))


def _archive_sources(path: Path, limit: int, stack: ExitStack) -> Iterator[_Source]:
    try:
        zf = stack.enter_context(zipfile.ZipFile(path))
    except (zipfile.BadZipFile, OSError) as exc:
        yield _Source(str(path), path.name, refusal=Refusal(str(path), "bad_archive", f"not a readable zip ({exc})"))
        return
    yield from _zip_sources(zf, str(path), limit, threading.Lock())


BATCH_MAX = 64  # images recorded per catalogue transaction in bulk ingest


def _ingest_sources(
    ctx: Context,
    principal: Principal,
    sources: Sequence[_Source],
    meta: IngestMeta,
    progress: Progress | None,
    workers: int | None,
) -> IngestSummary:
    """Decode and store in worker threads (PIL and the store release the GIL) while this thread
    writes the catalogue.

    Images that are ready together are recorded in one transaction, each inside its own savepoint:
    one bad file is rolled back alone and never undoes or stops the rest, while the catalogue pays
    for one commit per batch instead of one per image (the commit, not the insert, is what costs).
    A batch only takes images whose decode already finished, so a slow folder still shows progress
    image by image.
    """
    summary = IngestSummary()
    total = len(sources)
    # Threads beyond the cores still help: much of the work is waiting on disk or network writes.
    workers = workers or min(8, 2 * (os.cpu_count() or 1))
    done = 0

    def note(name: str, outcome: str) -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total, name, outcome)

    known = KnownBytes(ctx)

    def work(src: _Source) -> Prepared:
        assert src.read is not None
        return prepare(ctx, src.read(), replace(meta, original_name=src.original_name), maybe_stored=known)

    def refusal(src: _Source, exc: BaseException) -> Refusal:
        if isinstance(exc, HazardError):
            return Refusal(src.name, exc.code, exc.message)
        log.warning("ingest of %s failed", src.name, exc_info=exc)
        return Refusal(src.name, "error", f"{type(exc).__name__}: {exc}")

    def refuse(src: _Source, exc: BaseException) -> None:
        summary.refused.append(refusal(src, exc))
        note(src.name, "refused")

    def record_batch(batch: list[tuple[_Source, Prepared]]) -> None:
        outcomes: list[tuple[_Source, IngestResult | Refusal]] = []
        try:
            with ctx.db.session() as session:
                for src, prepared in batch:
                    try:
                        with session.begin_nested():
                            outcomes.append((src, record(ctx, session, principal, prepared)))
                    except Exception as exc:
                        outcomes.append((src, refusal(src, exc)))
        except Exception as exc:  # the commit itself failed: nothing of this batch was recorded
            for src, _ in batch:
                refuse(src, exc)
            return
        for src, outcome in outcomes:
            note(src.name, summary.count(outcome))

    # Bounded read-ahead: memory stays a few images whatever the folder size.
    with read_ahead(
        sources, work, workers=workers, window=workers * 3, name="ingest", wants=lambda src: src.read is not None
    ) as queue:
        while queue:
            batch: list[tuple[_Source, Prepared]] = []
            # Take the head (waiting for it if needed), then whatever right behind it is done too.
            while queue and len(batch) < BATCH_MAX and (not batch or queue.head_ready()):
                src, fut = queue.pop()
                if fut is None:
                    assert src.refusal is not None
                    (summary.skipped if src.skip else summary.refused).append(src.refusal)
                    note(src.name, "skipped" if src.skip else "refused")
                    continue
                try:
                    batch.append((src, fut.result()))
                except Exception as exc:
                    refuse(src, exc)
            if batch:
                record_batch(batch)
    return summary


def ingest_paths(
    ctx: Context,
    principal: Principal,
    paths: Iterable[Path | str],
    meta: IngestMeta,
    progress: Progress | None = None,
    workers: int | None = None,
) -> IngestSummary:
    """Ingest files, folders (recursively) and zip archives (read in memory, never extracted)."""
    limit = ctx.settings.max_upload_bytes
    with ExitStack() as stack:
        sources = list(_path_sources(paths, limit, stack))
        return _ingest_sources(ctx, principal, sources, meta, progress, workers)


#: Entries an uploaded archive may hold (files and folders alike): 100,000 entries took 83 MB to
#: list and a 7.8 MB answer (issue 13, item 8); 10,000 photos is more than a day of inspections.
MAX_ARCHIVE_ENTRIES = 10_000


def _declared_entries(fileobj: IO[bytes]) -> int | None:
    """The entry count the archive's end record declares (zip64 included), read before the central
    directory is parsed, so that a huge directory is refused without being listed; None when the
    record cannot be read (``ZipFile`` then says what is wrong)."""
    try:
        endrec = zipfile._EndRecData(fileobj)  # type: ignore[attr-defined] # noqa: SLF001 - CPython's own reader
        fileobj.seek(0)
    except (OSError, ValueError, struct.error):
        return None
    return int(endrec[zipfile._ECD_ENTRIES_TOTAL]) if endrec else None  # type: ignore[attr-defined] # noqa: SLF001


def _too_many(count: int, max_entries: int) -> TooLarge:
    return TooLarge(
        f"the archive holds {count:,} entries; the limit is {max_entries:,}: split it into smaller archives",
        code="archive_too_large",
    )


def ingest_zip(
    ctx: Context,
    principal: Principal,
    fileobj: IO[bytes],
    meta: IngestMeta,
    name: str = "upload.zip",
    progress: Progress | None = None,
    workers: int | None = None,
    max_entries: int = MAX_ARCHIVE_ENTRIES,
) -> IngestSummary:
    """Ingest the images of an uploaded zip archive (a file-like object; read in place). More than
    ``max_entries`` entries is refused as a whole (TooLarge ``archive_too_large``), before the
    archive's directory is listed when its end record says so, else right after. A directory that
    places entries before the start of the file is refused as a whole too (Invalid ``bad_archive``,
    nothing stored); a damaged entry is refused alone (``bad_archive`` in the summary)."""
    declared = _declared_entries(fileobj)
    if declared is not None and declared > max_entries:
        raise _too_many(declared, max_entries)
    try:
        zf = zipfile.ZipFile(fileobj)
    except (zipfile.BadZipFile, OSError) as exc:
        raise Invalid(f"not a readable zip archive ({exc})", code="bad_archive") from exc
    if len(zf.infolist()) > max_entries:  # the end record understated it
        zf.close()
        raise _too_many(len(zf.infolist()), max_entries)
    shifted = [i for i in zf.infolist() if i.header_offset < 0]
    if shifted:
        # zipfile moves every offset by the same amount when the end record and the directory
        # disagree (``concat``); one before the file's start means none of them can be trusted: the
        # archive is refused as a whole, before anything of it is stored.
        zf.close()
        raise Invalid(
            f"damaged zip archive: its directory places {len(shifted)} entr{'y' if len(shifted) == 1 else 'ies'} "
            f"before the start of the file (e.g. {shifted[0].filename!r}); was it cut or altered?",
            code="bad_archive",
        )
    with zf:
        sources = list(_zip_sources(zf, name, ctx.settings.max_upload_bytes, threading.Lock()))
        return _ingest_sources(ctx, principal, sources, meta, progress, workers)
