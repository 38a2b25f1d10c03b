"""Object store on a local folder: the embedded default, so that a single machine on an intranet
needs no MinIO. Keys map to files under ``root``.

Content types are not kept (``stat`` answers ``content_type=None``): the catalogue records each
sample's media type, and a sidecar file would make a write two files and no longer atomic.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from hazardlens.errors import Conflict, Invalid
from hazardlens.store.base import ObjectInfo, ObjectNotFound, ObjectStore, StoreFull, StoreUnavailable
from hazardlens.store.keys import RESERVED_PREFIX, ExactReader, validate_key

_CHUNK = 1024 * 1024
_TMP_PREFIX = RESERVED_PREFIX + "tmp-"
#: A temporary file names the process writing it (``.hl-tmp-<pid>-<random>``), so that start-up can
#: tell a dead writer's leftover from a live writer's file; one without a live owner (or older than
#: this, whatever its name) is removed by :meth:`FilesystemStore.recover`.
_STALE_TMP_S = 24 * 3600
_FULL = {errno.ENOSPC, errno.EDQUOT}
_BROKEN = {errno.EIO, errno.EROFS, errno.ENOTCONN, errno.ESTALE}


@contextlib.contextmanager
def _disk_errors(key: str) -> Iterator[None]:
    """A full disk or a broken mount is the operator's problem, not a bug: say so with a code
    (507 / 503) instead of an internal error; other OS errors stay what they are."""
    try:
        yield
    except OSError as exc:
        if exc.errno in _FULL:
            raise StoreFull(f"the object store's disk is full; {key!r} was not stored") from exc
        if exc.errno in _BROKEN:
            raise StoreUnavailable(f"the object store's disk cannot be written ({exc.strerror})") from exc
        raise


def _live_writer(name: str) -> bool | None:
    """Whether the process named in a temporary file's name still runs (same host: the filesystem
    store is one machine's folder); None for a name without a pid (written by an older version)."""
    pid_text = name[len(_TMP_PREFIX) :].split("-", 1)[0]
    if not pid_text.isdigit():
        return None
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    return True


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
        with _disk_errors(key):
            return self._write_file(key, path, chunks)

    def _write_file(self, key: str, path: Path, chunks: Iterator[bytes]) -> ObjectInfo:
        parent = path.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError) as exc:
            raise Conflict(f"object key {key!r} is below an existing object", code="key_conflict") from exc
        fd, tmp_name = tempfile.mkstemp(prefix=f"{_TMP_PREFIX}{os.getpid()}-", dir=parent)
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

    def list_info(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """The walk of :meth:`list` with each file's size and modification time (one ``stat``)."""
        for key in self.list(prefix):
            try:
                st = self._path(key).stat()
            except (FileNotFoundError, NotADirectoryError):
                continue  # removed while listing
            yield ObjectInfo(key=key, size=st.st_size, content_type=None, modified=st.st_mtime)

    # -- misc ----------------------------------------------------------------------------------

    def url(self, key: str, expires_s: int = 3600) -> str | None:
        validate_key(key)
        return None

    def ping(self) -> None:
        """Prove the root can take a write (a read-only mount or full disk fails here, not on the
        first upload)."""
        with _disk_errors("ping"):
            self.root.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix=f"{_TMP_PREFIX}{os.getpid()}-ping-", dir=self.root)
            try:
                os.write(fd, b"ok")
                os.fsync(fd)
            finally:
                os.close(fd)
                os.unlink(name)

    def recover(self) -> int:
        """Remove the temporary files of writers that died mid-write (kill -9, OOM, power cut):
        they are invisible to readers already, but a crash loop would fill the disk with them.
        A temporary file whose writer still runs (another worker of this server) is left alone."""
        removed = 0
        cutoff = time.time() - _STALE_TMP_S
        for folder, _dirs, files in os.walk(self.root):
            for name in files:
                if not name.startswith(_TMP_PREFIX):
                    continue
                path = os.path.join(folder, name)
                try:
                    # A live writer's file is left alone unless it is a day old (a reused pid); a
                    # file without a pid only once it is that old.
                    if _live_writer(name) is not False and os.stat(path).st_mtime > cutoff:
                        continue
                    os.unlink(path)
                except FileNotFoundError:
                    continue  # its writer finished (renamed it) or another worker removed it
                removed += 1
        return removed
