"""Object store on a local folder: the embedded default, so that a single machine on an intranet
needs no MinIO. Keys map to files under ``root``.

Content types are not kept (``stat`` answers ``content_type=None``): the catalogue records each
sample's media type, and a sidecar file would make a write two files and no longer atomic.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from hazardlens.errors import Conflict, Invalid
from hazardlens.store.base import ObjectInfo, ObjectNotFound, ObjectStore
from hazardlens.store.keys import RESERVED_PREFIX, ExactReader, validate_key

_CHUNK = 1024 * 1024
_TMP_PREFIX = RESERVED_PREFIX + "tmp-"


def _fsync_dir(path: Path) -> None:
    """Make the rename itself durable; without it a power cut can bring the old file back."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # platforms where a directory cannot be opened (Windows)
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class FilesystemStore(ObjectStore):
    name = "filesystem"

    def __init__(self, root: Path | str) -> None:
        # Nothing is created here, so that a bad root shows up in ping() (/readyz), not as a crash
        # at start-up.
        self.root = Path(root)

    # -- paths ---------------------------------------------------------------------------------

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*validate_key(key).split("/"))

    # -- writes --------------------------------------------------------------------------------

    def _write(self, key: str, chunks: Iterator[bytes]) -> ObjectInfo:
        """Write to a temporary file beside the target and rename it over the target, so that a
        reader sees the old object or the new one, never a part; a failure leaves no trace."""
        path = self._path(key)
        parent = path.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError) as exc:
            raise Conflict(f"object key {key!r} is below an existing object", code="key_conflict") from exc
        fd, tmp_name = tempfile.mkstemp(prefix=_TMP_PREFIX, dir=parent)
        tmp = Path(tmp_name)
        size = 0
        try:
            with os.fdopen(fd, "wb") as fh:
                for chunk in chunks:
                    fh.write(chunk)
                    size += len(chunk)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o644)  # mkstemp makes 0600; objects are shared data, not secrets
            try:
                os.replace(tmp, path)
            except IsADirectoryError as exc:
                raise Conflict(f"object key {key!r} is a prefix of other objects", code="key_conflict") from exc
            except OSError as exc:
                if path.is_dir():
                    raise Conflict(f"object key {key!r} is a prefix of other objects", code="key_conflict") from exc
                raise
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
        _fsync_dir(parent)
        return ObjectInfo(key=key, size=size, content_type=None)

    def put(self, key: str, data: bytes, content_type: str | None = None) -> ObjectInfo:
        return self._write(key, iter((bytes(data),)))

    def put_stream(self, key: str, stream: BinaryIO, size: int = -1, content_type: str | None = None) -> ObjectInfo:
        source: BinaryIO | ExactReader = stream if size is None or size < 0 else ExactReader(stream, size)

        def chunks() -> Iterator[bytes]:
            while True:
                chunk = source.read(_CHUNK)
                if not chunk:
                    return
                yield chunk

        return self._write(key, chunks())

    # -- reads ---------------------------------------------------------------------------------

    def open(self, key: str) -> BinaryIO:
        path = self._path(key)
        try:
            return path.open("rb")
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as exc:
            raise ObjectNotFound(f"no object {key!r}") from exc

    def get(self, key: str) -> bytes:
        with self.open(key) as fh:
            return fh.read()

    def stat(self, key: str) -> ObjectInfo:
        path = self._path(key)
        try:
            st = path.stat()
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise ObjectNotFound(f"no object {key!r}") from exc
        if not path.is_file():
            raise ObjectNotFound(f"no object {key!r}")
        return ObjectInfo(key=key, size=st.st_size, content_type=None)

    def delete(self, key: str) -> None:
        # Empty folders are left in place: removing them would race with a writer about to
        # create a temporary file there.
        path = self._path(key)
        with contextlib.suppress(FileNotFoundError, NotADirectoryError, IsADirectoryError):
            path.unlink()

    def list(self, prefix: str = "") -> Iterator[str]:
        """Keys in the same (code-point) order S3 lists them, produced lazily while walking."""
        head, _, rest = prefix.rpartition("/")
        if head:
            try:
                validate_key(head)
            except Invalid:
                return iter(())
            base = self.root.joinpath(*head.split("/"))
            key_base = head + "/"
        else:
            base, key_base = self.root, ""
        return self._walk(base, key_base, rest)

    def _walk(self, folder: Path, key_base: str, name_prefix: str) -> Iterator[str]:
        try:
            with os.scandir(folder) as it:
                entries = [e for e in it if not e.name.startswith(RESERVED_PREFIX) and e.name.startswith(name_prefix)]
        except (FileNotFoundError, NotADirectoryError):
            return
        # A folder "a" sorts as "a/" so that "a.txt" (".": 0x2e) comes before "a/b" ("/": 0x2f).
        entries.sort(key=lambda e: e.name + "/" if e.is_dir(follow_symlinks=False) else e.name)
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                yield from self._walk(Path(entry.path), f"{key_base}{entry.name}/", "")
            elif entry.is_file():
                yield key_base + entry.name

    # -- misc ----------------------------------------------------------------------------------

    def url(self, key: str, expires_s: int = 3600) -> str | None:
        validate_key(key)
        return None

    def ping(self) -> None:
        """Prove the root can take a write (a read-only mount or full disk fails here, not on the
        first upload)."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=_TMP_PREFIX + "ping-", dir=self.root)
        try:
            os.write(fd, b"ok")
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(name)
