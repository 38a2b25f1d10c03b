"""The shared sample library (设备设施样本库): one import for everything about samples.

The library is split by job; this module holds what the API shows of a sample and its deletion, and
re-exports the rest, so ``from hazardlens.datasets import library`` keeps working for every caller:

- :mod:`hazardlens.datasets.tenancy`: THE tenancy rule (:func:`visible_samples`), written once;
- :mod:`hazardlens.datasets.ingest`: metadata checks, :func:`prepare` / :func:`record`, dedup by SHA-256;
- :mod:`hazardlens.datasets.near_duplicates`: the perceptual-hash index, links and groups;
- :mod:`hazardlens.datasets.search`: the sample filter as a query, keyset pagination;
- :mod:`hazardlens.datasets.bulk`: files, folders and zip archives, in worker threads.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session, object_session

from hazardlens.audit import record as audit
from hazardlens.audit import snapshot
from hazardlens.auth import Principal
from hazardlens.contracts.filters import SampleFilter
from hazardlens.contracts.samples import SamplePublic
from hazardlens.datasets.bulk import (
    BATCH_MAX,
    IngestSummary,
    Progress,
    Refusal,
    ingest_paths,
    ingest_zip,
    unsafe_entry,
)
from hazardlens.datasets.ingest import (
    MAX_TAG_CHARS,
    MAX_TAGS,
    IngestMeta,
    IngestResult,
    Prepared,
    ingest,
    normalise_tags,
    prepare,
    record,
    thumbnail_key,
    validate_meta,
)
from hazardlens.datasets.near_duplicates import MAX_NEAR_DUPLICATE_LINKS, find_near_duplicates, near_duplicates
from hazardlens.datasets.search import DEFAULT_LIMIT, MAX_LIMIT, apply_filters, decode_cursor, encode_cursor, search
from hazardlens.datasets.tenancy import get_sample, visibility, visible_samples
from hazardlens.dates import iso, parse_when
from hazardlens.errors import Forbidden
from hazardlens.images import MIME_TYPES
from hazardlens.orm import Sample, User, utcnow

# -- delete -------------------------------------------------------------------------------------------


def soft_delete(session: Session, principal: Principal, sample_id: int) -> Sample:
    """Hide a sample from every read; the row, its bytes and its history stay (存档留痕). Only the
    owning organisation may delete: a shared sample is visible to others, not theirs."""
    principal.require("samples:delete")
    sample = get_sample(session, principal, sample_id)
    if sample.org_code != principal.org_code:
        raise Forbidden(
            f"sample {sample_id} belongs to organisation {sample.org_code}; only it may delete it", code="not_owner"
        )
    before = snapshot(sample)
    sample.deleted_at = utcnow()
    sample.updated_at = sample.deleted_at
    session.flush()
    audit(
        session,
        principal,
        "sample.delete",
        "sample",
        sample.id,
        sample_id=sample.id,
        before=before,
        after=snapshot(sample),
    )
    return sample


# -- JSON shape -----------------------------------------------------------------------------------------


def sample_dict(sample: Sample) -> dict[str, Any]:
    """The sample as the API and the console show it (:class:`SamplePublic`, as plain values)."""
    return sample_public(sample).model_dump()


def sample_public(sample: Sample) -> SamplePublic:
    """The sample as the API and the console show it."""
    uploader = None
    if sample.uploader_id is not None:
        session = object_session(sample)
        user = session.get(User, sample.uploader_id) if session is not None else None
        uploader = user.name if user is not None else None
    gps = None
    if sample.gps_lat is not None and sample.gps_lon is not None:
        gps = {"lat": sample.gps_lat, "lon": sample.gps_lon}
    return SamplePublic.model_validate(
        {
            "id": sample.id,
            "sha256": sample.sha256,
            "width": sample.width,
            "height": sample.height,
            "format": sample.format,
            "content_type": MIME_TYPES.get(sample.format, "application/octet-stream"),
            "size_bytes": sample.size_bytes,
            "original_name": sample.original_name,
            "org_code": sample.org_code,
            "sector": sample.sector,
            "scope": sample.scope,
            "source": sample.source,
            "site_id": sample.site_id,
            "enterprise_id": sample.enterprise_id,
            "camera_id": sample.camera_id,
            "inspection_record": sample.inspection_record,
            "tags": list(sample.tags or []),
            "captured_at": iso(sample.captured_at),
            "gps": gps,
            "dup_group": sample.dup_group,
            "annotation_status": sample.annotation_status,
            "class_keys": list(sample.class_keys or []),
            "created_at": iso(sample.created_at),
            "uploader": uploader,
            "uploader_id": sample.uploader_id,
            "deleted_at": iso(sample.deleted_at),
        }
    )


def result_dict(result: IngestResult) -> dict[str, Any]:
    return {
        **sample_dict(result.sample),
        "deduplicated": result.deduplicated,
        "near_duplicates": list(result.near_duplicates),
    }


__all__ = [
    # tenancy
    "get_sample",
    "visibility",
    "visible_samples",
    # ingest
    "MAX_TAGS",
    "MAX_TAG_CHARS",
    "IngestMeta",
    "IngestResult",
    "Prepared",
    "ingest",
    "normalise_tags",
    "prepare",
    "record",
    "thumbnail_key",
    "validate_meta",
    # near-duplicates
    "MAX_NEAR_DUPLICATE_LINKS",
    "find_near_duplicates",
    "near_duplicates",
    # search
    "DEFAULT_LIMIT",
    "MAX_LIMIT",
    "SampleFilter",
    "apply_filters",
    "decode_cursor",
    "encode_cursor",
    "parse_when",
    "search",
    # bulk ingest
    "BATCH_MAX",
    "IngestSummary",
    "Progress",
    "Refusal",
    "ingest_paths",
    "ingest_zip",
    "unsafe_entry",
    # this module
    "Sample",
    "result_dict",
    "sample_dict",
    "sample_public",
    "soft_delete",
]
