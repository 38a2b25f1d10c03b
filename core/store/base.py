"""The object-store contract every backend honours (tests/test_store_contract.py runs on both).

Keys are plain slash-separated strings. Image bytes are stored content-addressed under
``blob_key(sha256)``, so the same bytes are never stored twice; derived objects (thumbnails,
manifests, weights) use readable keys such as ``thumbnails/<sha256>.jpg``.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from hazardlens.errors import HazardError, NotFound


class ObjectNotFound(NotFound):
    code = "object_not_found"


class StoreUnavailable(HazardError):
    """The store cannot be reached or answers with a server error (MinIO down, a dead mount): the
    caller may retry later; nothing was written. 503, so load balancers and clients back off."""

    status, code = 503, "store_unavailable"


class StoreFull(HazardError):
    """The store's disk (or quota) is full: the write was refused and nothing was kept."""

    status, code = 507, "insufficient_storage"


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    content_type: str | None = None
    #: When the object was last written (seconds since the epoch), where the answer carries it
    #: (:meth:`ObjectStore.list_info`); garbage collection spares what is younger than its grace.
    modified: float | None = None


def blob_key(sha256: str) -> str:
    """Content-addressed key for original image bytes."""
    return f"blobs/{sha256[:2]}/{sha256}"


class ObjectStore(abc.ABC):
    """Writes are atomic: a reader sees the whole object or none of it."""

    name: str

    @abc.abstractmethod
    def put(self, key: str, data: bytes, content_type: str | None = None) -> ObjectInfo: ...

    @abc.abstractmethod
    def put_stream(self, key: str, stream: BinaryIO, size: int = -1, content_type: str | None = None) -> ObjectInfo:
        """Store from a file-like object without holding it all in memory (multipart on S3)."""

    @abc.abstractmethod
    def get(self, key: str) -> bytes: ...

    @abc.abstractmethod
    def open(self, key: str) -> BinaryIO:
        """A readable stream; the caller closes it."""

    @abc.abstractmethod
    def stat(self, key: str) -> ObjectInfo: ...

    def exists(self, key: str) -> bool:
        try:
            self.stat(key)
        except ObjectNotFound:
            return False
        return True

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Idempotent: deleting a missing key is not an error."""

    @abc.abstractmethod
    def list(self, prefix: str = "") -> Iterator[str]: ...

    def list_info(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """:meth:`list` with each object's size and time of writing, for a walk over the whole store
        (garbage collection) that must not cost a request per object. Backends that keep the time
        answer it; this fallback answers ``modified=None`` (treated as "too young to collect")."""
        for key in self.list(prefix):
            try:
                yield self.stat(key)
            except ObjectNotFound:
                continue  # removed while listing

    @abc.abstractmethod
    def url(self, key: str, expires_s: int = 3600) -> str | None:
        """A presigned GET URL where the backend has one (MinIO), else None (filesystem)."""

    @abc.abstractmethod
    def ping(self) -> None:
        """Raise if the store cannot be reached (used by /readyz)."""

    def recover(self) -> int:
        """Remove what writers that died mid-write (kill -9, power cut) left behind; called once
        at start-up. Answers how many leftovers were removed. Backends whose writes leave nothing
        visible (S3 multipart uploads are invisible until completed) have nothing to do."""
        return 0

    def download_to(self, key: str, path: str) -> None:
        import shutil

        with self.open(key) as src, open(path, "wb") as dst:
            shutil.copyfileobj(src, dst, 1024 * 1024)
