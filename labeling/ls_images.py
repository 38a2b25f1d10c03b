"""Images that live in Label Studio: files uploaded into a project (``/data/upload/<project>/<name>``)
and files Label Studio serves from its local-files storage (``/data/local-files/?d=<path>``) that
are not one of our exports' files.

A task pointing at such a file can be pre-labelled only by fetching the file from Label Studio, so
the ML backend does that when it is given Label Studio's address and an API token
(``HAZARDLENS_LABEL_STUDIO_URL``, ``HAZARDLENS_LABEL_STUDIO_TOKEN``). Only that one origin is ever
fetched from, and only those two paths: a task cannot make the backend fetch an arbitrary URL.
Answers are read as a stream and abandoned past the upload limit (``max_upload_bytes``), like any
uploaded photo.

Both kinds of Label Studio token work: a legacy token (``Authorization: Token <key>``) and a personal
access token (a JWT refresh token, exchanged at ``/api/token/refresh/`` for a short-lived access
token that is cached until shortly before it expires).
"""

from __future__ import annotations

import base64
import binascii
import json
import threading
import time
from urllib.parse import urlsplit

import httpx

from hazardlens.errors import HazardError, Invalid, TooLarge

#: The paths Label Studio serves task files under (uploads, local-files storage).
LS_PATHS = ("/data/upload/", "/data/local-files/")
_MAX_REF = 4096


class LabelStudioUnavailable(HazardError):
    """Label Studio could not be reached, or refused the configured token."""

    status, code = 503, "labelstudio_unavailable"


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    default = {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), parts.port or default


def _jwt_expiry(token: str) -> float | None:
    """The ``exp`` of a JWT (read, not verified: only to know when to refresh), else None."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (binascii.Error, ValueError):
        return None
    exp = payload.get("exp") if isinstance(payload, dict) else None
    return float(exp) if isinstance(exp, int | float) else None


class LabelStudioImages:
    """Fetches task images from one Label Studio installation (thread-safe; one per process)."""

    def __init__(self, url: str, token: str, max_bytes: int, timeout_s: float = 30.0) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"the Label Studio URL must be http(s)://host[:port][/path], not {url!r}")
        self.base = url.rstrip("/")
        self.base_path = parts.path.rstrip("/")
        self.token = token.strip()
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self._jwt = _jwt_expiry(self.token) is not None
        self._access: tuple[str, float] | None = None
        self._lock = threading.Lock()

    # --- which references are Label Studio's --------------------------------------------------

    def path_of(self, ref: object) -> str | None:
        """The path (and query) to fetch for a task's image reference, when it is a file Label Studio
        serves: a relative ``/data/upload/...`` or ``/data/local-files/?d=...``, or the same on this
        Label Studio's origin. Anything else (another host, another path, ``..``) is None."""
        if not isinstance(ref, str) or not ref or len(ref) > _MAX_REF or any(c in ref for c in "\r\n\x00\\"):
            return None
        parts = urlsplit(ref)
        foreign = parts.scheme not in ("http", "https") or _origin(ref) != _origin(self.base)
        if (parts.scheme or parts.netloc) and foreign:
            return None
        path = parts.path
        if self.base_path and path.startswith(self.base_path + "/"):
            path = path[len(self.base_path) :]
        if not path.startswith(LS_PATHS) or ".." in path.split("/") or "//" in path:
            return None
        if path.startswith("/data/local-files/") and not parts.query:
            return None
        return path + (f"?{parts.query}" if parts.query else "")

    # --- auth -----------------------------------------------------------------------------------

    def _auth(self, client: httpx.Client, renew: bool = False) -> str:
        if not self._jwt:
            return f"Token {self.token}"
        with self._lock:
            if self._access is not None and not renew and self._access[1] > time.time() + 30:
                return f"Bearer {self._access[0]}"
            try:
                r = client.post(f"{self.base}/api/token/refresh/", json={"refresh": self.token})
            except httpx.HTTPError as exc:
                raise LabelStudioUnavailable(f"Label Studio at {self.base} cannot be reached ({exc})") from exc
            access = r.json().get("access") if r.status_code == 200 else None
            if not isinstance(access, str):
                raise LabelStudioUnavailable(
                    f"Label Studio refused the configured personal access token (HTTP {r.status_code}); "
                    "set HAZARDLENS_LABEL_STUDIO_TOKEN to a valid one"
                )
            self._access = (access, _jwt_expiry(access) or time.time() + 60)
            return f"Bearer {access}"

    # --- fetch ----------------------------------------------------------------------------------

    def fetch(self, path: str, client: httpx.Client) -> bytes:
        """The file's bytes. 422 ``unresolvable_image`` when Label Studio has no such file, 413
        ``file_too_large`` past the upload limit, 503 ``labelstudio_unavailable`` when Label Studio
        cannot be reached or refuses the token."""
        url = f"{self.base}{path}"
        for attempt in (0, 1):
            try:
                with client.stream("GET", url, headers={"Authorization": self._auth(client, renew=attempt > 0)}) as r:
                    if r.status_code == 401 and self._jwt and attempt == 0:
                        continue  # the cached access token expired early: renew once
                    if r.status_code in (401, 403):
                        raise LabelStudioUnavailable(
                            f"Label Studio refused the configured token for {path[:200]} (HTTP {r.status_code})"
                        )
                    if r.status_code == 404:
                        raise Invalid(f"Label Studio has no file {path[:200]}", code="unresolvable_image")
                    if r.status_code != 200:
                        raise LabelStudioUnavailable(f"Label Studio answered HTTP {r.status_code} for {path[:200]}")
                    declared = r.headers.get("content-length")
                    if declared and declared.isdigit() and int(declared) > self.max_bytes:
                        raise TooLarge(self._too_large(path), code="file_too_large")
                    chunks: list[bytes] = []
                    size = 0
                    for chunk in r.iter_bytes():
                        size += len(chunk)
                        if size > self.max_bytes:
                            raise TooLarge(self._too_large(path), code="file_too_large")
                        chunks.append(chunk)
                    return b"".join(chunks)
            except httpx.HTTPError as exc:
                raise LabelStudioUnavailable(f"Label Studio at {self.base} cannot be reached ({exc})") from exc
        raise LabelStudioUnavailable(f"Label Studio refused the configured token for {path[:200]}")

    def _too_large(self, path: str) -> str:
        return f"the Label Studio file {path[:200]} is over the upload limit of {self.max_bytes:,} bytes"

    def client(self) -> httpx.Client:
        """A client for one batch of fetches (connections reused within it)."""
        return httpx.Client(timeout=self.timeout_s, follow_redirects=False)


_cache: dict[tuple[str, str, int], LabelStudioImages] = {}
_cache_lock = threading.Lock()


def label_studio_images(url: str, token: str, max_bytes: int, timeout_s: float = 30.0) -> LabelStudioImages | None:
    """The process's fetcher for this Label Studio (its access token cached), or None when no
    address or token is configured."""
    if not url.strip() or not token.strip():
        return None
    key = (url.strip(), token.strip(), max_bytes)
    with _cache_lock:
        if key not in _cache:
            try:
                _cache[key] = LabelStudioImages(url.strip(), token.strip(), max_bytes, timeout_s)
            except ValueError as exc:  # a misconfigured server, not a bad request
                raise LabelStudioUnavailable(f"HAZARDLENS_LABEL_STUDIO_URL: {exc}") from exc
        return _cache[key]


__all__ = ["LS_PATHS", "LabelStudioImages", "LabelStudioUnavailable", "label_studio_images"]
