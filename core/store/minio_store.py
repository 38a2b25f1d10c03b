"""Object store on MinIO (or any S3 service): for deployments where several machines share the
sample library. The bucket is created on first write so that an administrator only has to give
credentials.
"""

from __future__ import annotations

import contextlib
import io
import os
import threading
from collections.abc import Iterator
from datetime import timedelta
from typing import BinaryIO

import certifi
import urllib3
from minio import Minio
from minio.error import InvalidResponseError, S3Error, ServerError
from urllib3.exceptions import HTTPError as TransportError
from urllib3.util.retry import Retry

from hazardlens.errors import Invalid
from hazardlens.store.base import ObjectInfo, ObjectNotFound, ObjectStore, StoreUnavailable
from hazardlens.store.keys import MIN_PART_SIZE, ExactReader, validate_key

_MISSING = {"NoSuchKey", "NoSuchBucket", "NoSuchObject"}
_DEFAULT_TYPE = "application/octet-stream"
#: S3 error codes that mean "the service is not able to answer now", not "your request is wrong".
_UNAVAILABLE = {"ServiceUnavailable", "SlowDown", "InternalError", "XMinioServerNotInitialized", "XMinioStorageFull"}


@contextlib.contextmanager
def _reachable() -> Iterator[None]:
    """MinIO down, unreachable, or answering 5xx after the retries: one :class:`StoreUnavailable`
    (503 ``store_unavailable``) instead of whichever transport exception surfaced, so callers and
    the API answer the same clear error for every backend. Nothing is cached about the outage:
    the next call tries the server again, so service comes back by itself when MinIO does."""
    try:
        yield
    except S3Error as exc:
        if exc.code in _UNAVAILABLE:
            raise StoreUnavailable(f"the object store is unavailable ({exc.code})") from exc
        raise
    except (TransportError, ServerError, InvalidResponseError) as exc:
        raise StoreUnavailable(f"the object store cannot be reached ({type(exc).__name__})") from exc


def make_retry() -> Retry:
    """Government intranets drop connections and MinIO answers 503 while it heals; a few quick
    retries turn those into slow requests instead of failed uploads.

    POST is retried too: S3 uses it only to start and complete multipart uploads, and both are
    safe to repeat (a repeated start only leaves an unused upload id for the lifecycle rule).
    ``raise_on_status=False`` hands the last error response to the SDK, which turns it into an
    ``S3Error`` with the server's own code instead of an opaque ``MaxRetryError``.
    """
    return Retry(
        total=5,
        connect=5,
        read=2,
        status=5,
        backoff_factor=0.2,
        backoff_max=10,
        status_forcelist=(500, 502, 503, 504),
        allowed_methods=Retry.DEFAULT_ALLOWED_METHODS | {"POST"},
        raise_on_status=False,
    )


class _ResponseStream(io.RawIOBase):
    """Hands the pooled connection back on close; closing a bare urllib3 response would leak it
    from the pool until garbage collection."""

    def __init__(self, response: urllib3.BaseHTTPResponse) -> None:
        self._response = response

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        return self._response.readinto(buffer)

    def close(self) -> None:
        if not self.closed:
            try:
                self._response.close()
                self._response.release_conn()
            finally:
                super().close()


class MinioStore(ObjectStore):
    name = "minio"

    def __init__(
        self,
        endpoint: str,
        access_key: str,
        secret_key: str,
        bucket: str,
        secure: bool = False,
        region: str | None = None,
        part_size: int = 16 * 1024 * 1024,
        timeout_s: float = 60.0,
    ) -> None:
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"part_size must be at least {MIN_PART_SIZE} bytes (the S3 minimum)")
        self.bucket = bucket
        self.region = region
        self.part_size = part_size
        # Same TLS trust as the SDK's own pool (SSL_CERT_FILE for an intranet CA, else certifi).
        self.http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=min(timeout_s, 10.0), read=timeout_s),
            maxsize=16,
            cert_reqs="CERT_REQUIRED",
            ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
            retries=make_retry(),
        )
        self.client = Minio(
            endpoint,
            access_key=access_key or None,
            secret_key=secret_key or None,
            secure=secure,
            region=region,
            http_client=self.http,
        )
        self._bucket_ready = False
        self._bucket_lock = threading.Lock()

    # -- bucket --------------------------------------------------------------------------------

    def _ensure_bucket(self) -> None:
        """Create the bucket once per process. Several workers may start at once: losing the race
        to create it is fine as long as the bucket is there afterwards."""
        if self._bucket_ready:
            return
        with self._bucket_lock:
            if self._bucket_ready:
                return
            if not self.client.bucket_exists(self.bucket):
                try:
                    self.client.make_bucket(self.bucket, location=self.region)
                except S3Error as exc:
                    # "BucketAlreadyOwnedByYou" on MinIO; AWS and moto may say "BucketAlreadyExists".
                    if exc.code not in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}:
                        raise
                    if not self.client.bucket_exists(self.bucket):
                        raise
            self._bucket_ready = True

    # -- writes --------------------------------------------------------------------------------

    def put(self, key: str, data: bytes, content_type: str | None = None) -> ObjectInfo:
        validate_key(key)
        data = bytes(data)
        with _reachable():
            self._ensure_bucket()
            self.client.put_object(
                self.bucket,
                key,
                io.BytesIO(data),
                len(data),
                content_type=content_type or _DEFAULT_TYPE,
                part_size=self.part_size,
            )
        return ObjectInfo(key=key, size=len(data), content_type=content_type or _DEFAULT_TYPE)

    def put_stream(self, key: str, stream: BinaryIO, size: int = -1, content_type: str | None = None) -> ObjectInfo:
        """Unknown sizes go up in ``part_size`` parts, one part in memory at a time; S3 shows the
        object only when the upload completes, and the SDK aborts the upload on any failure.

        One upload thread: the SDK's parallel upload leaks its worker threads when the source
        stream fails.
        """
        validate_key(key)
        known = size is not None and size >= 0
        source = ExactReader(stream, size) if known else _Counting(stream)
        with _reachable():
            self._ensure_bucket()
            self.client.put_object(
                self.bucket,
                key,
                source,  # type: ignore[arg-type]
                size if known else -1,
                content_type=content_type or _DEFAULT_TYPE,
                part_size=self.part_size,
                num_parallel_uploads=1,
            )
        stored = size if known else source.count  # type: ignore[union-attr]
        return ObjectInfo(key=key, size=stored, content_type=content_type or _DEFAULT_TYPE)

    # -- reads ---------------------------------------------------------------------------------

    def _missing(self, exc: S3Error, key: str) -> Exception:
        if exc.code in _MISSING:
            return ObjectNotFound(f"no object {key!r}")
        return exc

    def open(self, key: str) -> BinaryIO:
        validate_key(key)
        try:
            with _reachable():
                response = self.client.get_object(self.bucket, key)
        except S3Error as exc:
            raise self._missing(exc, key) from exc
        return io.BufferedReader(_ResponseStream(response), buffer_size=256 * 1024)

    def get(self, key: str) -> bytes:
        with self.open(key) as fh, _reachable():
            return fh.read()

    def stat(self, key: str) -> ObjectInfo:
        validate_key(key)
        try:
            with _reachable():
                obj = self.client.stat_object(self.bucket, key)
        except S3Error as exc:
            raise self._missing(exc, key) from exc
        return ObjectInfo(key=key, size=int(obj.size or 0), content_type=obj.content_type)

    def delete(self, key: str) -> None:
        validate_key(key)
        try:
            with _reachable():
                self.client.remove_object(self.bucket, key)
        except S3Error as exc:
            if exc.code not in _MISSING:
                raise

    def list(self, prefix: str = "") -> Iterator[str]:
        try:
            with _reachable():
                for obj in self.client.list_objects(self.bucket, prefix=prefix or None, recursive=True):
                    if obj.object_name and not obj.is_dir:
                        yield obj.object_name
        except S3Error as exc:
            if exc.code != "NoSuchBucket":
                raise

    def list_info(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """The listing already carries size and LastModified: no request per object."""
        try:
            with _reachable():
                for obj in self.client.list_objects(self.bucket, prefix=prefix or None, recursive=True):
                    if obj.object_name and not obj.is_dir:
                        stamp = obj.last_modified.timestamp() if obj.last_modified is not None else None
                        yield ObjectInfo(key=obj.object_name, size=int(obj.size or 0), modified=stamp)
        except S3Error as exc:
            if exc.code != "NoSuchBucket":
                raise

    def url(self, key: str, expires_s: int = 3600) -> str | None:
        validate_key(key)
        try:
            with _reachable():
                return self.client.presigned_get_object(self.bucket, key, expires=timedelta(seconds=expires_s))
        except S3Error as exc:  # looking up the region of a bucket not made yet
            raise self._missing(exc, key) from exc

    def ping(self) -> None:
        """Reachable and the credentials work; a missing bucket is fine (the first write makes it)."""
        with _reachable():
            self.client.bucket_exists(self.bucket)


class _Counting:
    """Counts what the SDK read, since a multipart upload of unknown size reports no length."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self.count = 0

    def read(self, n: int = -1) -> bytes:
        data = self._stream.read(n)
        if data is None:
            raise Invalid("non-blocking streams are not supported", code="bad_stream")
        self.count += len(data)
        return data
