"""Rules shared by every backend, so that a key valid on one store is valid on the other and an
object can move between them (filesystem in development, MinIO in production) without renaming.
"""

from __future__ import annotations

from typing import BinaryIO

from hazardlens.errors import Invalid

# Temporary files of the filesystem store start with this; keys may not, so that a half-written
# file can never be mistaken for (or overwrite) an object.
RESERVED_PREFIX = ".hl-"
MAX_KEY_BYTES = 1024  # the S3 limit
MIN_PART_SIZE = 5 * 1024 * 1024  # the S3 minimum for every part but the last


def validate_key(key: object) -> str:
    """Refuse keys that could escape the filesystem root or mean different objects on different
    backends (S3 keeps ``a//b`` and ``a/./b`` apart; a filesystem does not)."""
    if not isinstance(key, str) or not key:
        raise Invalid("object key must be a non-empty string", code="invalid_key")
    if len(key.encode("utf-8")) > MAX_KEY_BYTES:
        raise Invalid(f"object key longer than {MAX_KEY_BYTES} bytes", code="invalid_key")
    if key.startswith("/"):
        raise Invalid(f"object key must be relative: {key!r}", code="invalid_key")
    if "\\" in key:
        raise Invalid(f"object key may not contain a backslash: {key!r}", code="invalid_key")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in key):
        raise Invalid(f"object key may not contain control characters: {key!r}", code="invalid_key")
    for part in key.split("/"):
        if part in ("", ".", ".."):
            raise Invalid(f"object key has an empty, '.' or '..' segment: {key!r}", code="invalid_key")
        if part.startswith(RESERVED_PREFIX):
            raise Invalid(f"object key segments may not start with {RESERVED_PREFIX!r}: {key!r}", code="invalid_key")
    return key


class ExactReader:
    """Wraps a stream whose length the caller promised, so that a short stream fails the write
    (with nothing stored) on every backend instead of storing a truncated object."""

    def __init__(self, stream: BinaryIO, size: int) -> None:
        self._stream = stream
        self._left = size

    def read(self, n: int = -1) -> bytes:
        if self._left <= 0:
            return b""
        want = self._left if n is None or n < 0 else min(n, self._left)
        data = self._stream.read(want)
        if not data:
            raise Invalid(f"stream ended {self._left} bytes before the promised size", code="short_stream")
        self._left -= len(data)
        return data
