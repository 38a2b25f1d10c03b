"""Pick the object store the settings name, so that no caller has to know which backends exist."""

from __future__ import annotations

from hazardlens.settings import Settings
from hazardlens.store.base import ObjectStore


def open_store(settings: Settings) -> ObjectStore:
    """Backends are imported on demand: a filesystem deployment should not need the S3 SDK to load."""
    if settings.store == "filesystem":
        from hazardlens.store.filesystem import FilesystemStore

        return FilesystemStore(settings.store_root)
    if settings.store == "minio":
        from hazardlens.store.minio_store import MinioStore

        return MinioStore(
            settings.minio_endpoint,
            settings.minio_access_key,
            settings.minio_secret_key,
            settings.minio_bucket,
            secure=settings.minio_secure,
            region=settings.minio_region,
        )
    raise ValueError(f"unknown object store {settings.store!r} (expected 'filesystem' or 'minio')")
