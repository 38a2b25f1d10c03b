"""Object store: one small interface, two backends (filesystem, MinIO/S3)."""

from hazardlens.store.base import ObjectInfo, ObjectNotFound, ObjectStore, StoreFull, StoreUnavailable, blob_key
from hazardlens.store.factory import open_store

__all__ = ["ObjectInfo", "ObjectNotFound", "ObjectStore", "StoreFull", "StoreUnavailable", "blob_key", "open_store"]
