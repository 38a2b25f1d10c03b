"""/v1/samples: upload, search, read and delete library samples. Rules live in the library."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, Query, UploadFile
from fastapi.responses import JSONResponse, Response, StreamingResponse

from hazardlens.audit import event_dict, history
from hazardlens.auth import Principal
from hazardlens.contracts import AnnotationState, Key, OrgCode, SampleFilter, SampleSource, Scope, Text100, Text200
from hazardlens.contracts.common import SECTOR_SCHEMA, WHEN_SCHEMA
from hazardlens.contracts.samples import (
    CURSOR_PATTERN,
    NON_EMPTY_FILE,
    TAGS_PATTERN,
    AuditEvents,
    IngestSummaryPublic,
    NearDuplicates,
    SampleCreated,
    SamplePage,
    SamplePublic,
)
from hazardlens.datasets import library
from hazardlens.errors import TooLarge, UnsupportedMedia
from hazardlens.images import MIME_TYPES, make_thumbnail, sniff_format
from hazardlens.serving.deps import CtxDep, ReadSessionDep, require
from hazardlens.serving.schemas import errors
from hazardlens.store import ObjectNotFound, blob_key

router = APIRouter(prefix="/v1/samples", tags=["samples"])

Reader = Annotated[Principal, Depends(require("samples:read"))]
SectorForm = Annotated[Key, Form(description="sector key (see GET /v1/taxonomy)", json_schema_extra=SECTOR_SCHEMA)]
ScopeForm = Annotated[Scope, Form(description="shared: readable (never writable) by other organisations")]
IdForm = Annotated[Text100 | None, Form()]
RecordForm = Annotated[Text200 | None, Form()]
TagsForm = Annotated[
    str | None,
    Form(
        max_length=2000,
        description="comma-separated tags (at most 50, of 50 characters each)",
        json_schema_extra={"pattern": TAGS_PATTERN},
    ),
]
WhenForm = Annotated[
    str | None, Form(max_length=40, description="ISO date or date-time", json_schema_extra=WHEN_SCHEMA)
]
WhenQuery = Annotated[
    str | None, Query(max_length=40, description="ISO date or date-time, inclusive", json_schema_extra=WHEN_SCHEMA)
]
Writer = Annotated[Principal, Depends(require("samples:write"))]
Deleter = Annotated[Principal, Depends(require("samples:delete"))]
Auditor = Annotated[Principal, Depends(require("audit:read"))]

_CHUNK = 256 * 1024
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
ARCHIVE_FACTOR = 20  # an archive may hold this many maximum-size images


def _read_upload(file: UploadFile, limit: int) -> bytes:
    """Read at most limit+1 bytes: a huge upload is refused without being held in memory."""
    data = file.file.read(limit + 1)
    if len(data) > limit:
        raise TooLarge(f"file is larger than the limit of {limit:,} bytes", code="file_too_large")
    return data


def _meta(
    sector: str,
    scope: str,
    source: str,
    site_id: str | None,
    enterprise_id: str | None,
    camera_id: str | None,
    inspection_record: str | None,
    tags: str | None,
    captured_at: str | None,
    original_name: str | None,
) -> library.IngestMeta:
    return library.IngestMeta(
        sector=sector,
        scope=scope,
        source=source,
        site_id=site_id,
        enterprise_id=enterprise_id,
        camera_id=camera_id,
        inspection_record=inspection_record,
        tags=library.normalise_tags(tags),
        captured_at=library.parse_when(captured_at, name="captured_at"),
        original_name=original_name,
    )


@router.post(
    "",
    status_code=201,
    summary="Upload one image (JPEG, PNG, WebP, HEIC)",
    response_model=SampleCreated,
    responses={
        200: {"model": SampleCreated, "description": "the same bytes were already in the library (deduplicated)"},
        **errors(401, 403, 413, 415, 422),
    },
)
def upload(
    ctx: CtxDep,
    principal: Writer,
    file: Annotated[UploadFile, File(json_schema_extra=NON_EMPTY_FILE)],
    sector: SectorForm,
    scope: ScopeForm = "private",
    source: Annotated[SampleSource, Form()] = "inspection",
    site_id: IdForm = None,
    enterprise_id: IdForm = None,
    camera_id: IdForm = None,
    inspection_record: RecordForm = None,
    tags: TagsForm = None,
    captured_at: WhenForm = None,
) -> JSONResponse:
    meta = _meta(
        sector, scope, source, site_id, enterprise_id, camera_id, inspection_record, tags, captured_at, file.filename
    )
    data = _read_upload(file, ctx.settings.max_upload_bytes)
    if data[:4] in _ZIP_MAGIC and sniff_format(data) is None:
        raise UnsupportedMedia("this is a zip archive; upload archives to /v1/samples/archive", code="not_an_image")
    # Its own transaction, committed before the answer: a client that got 201 finds the sample.
    with ctx.db.session() as session:
        result = library.ingest(ctx, session, principal, data, meta)
        body = library.result_dict(result)
    return JSONResponse(
        body, status_code=200 if result.deduplicated else 201, headers={"Location": f"/v1/samples/{body['id']}"}
    )


@router.post(
    "/archive",
    summary="Upload a zip archive of images; answers a summary",
    response_model=IngestSummaryPublic,
    responses=errors(401, 403, 413, 422),
)
def upload_archive(
    ctx: CtxDep,
    principal: Writer,
    file: Annotated[UploadFile, File(json_schema_extra=NON_EMPTY_FILE)],
    sector: SectorForm,
    scope: ScopeForm = "private",
    source: Annotated[SampleSource, Form()] = "import",
    site_id: IdForm = None,
    enterprise_id: IdForm = None,
    camera_id: IdForm = None,
    inspection_record: RecordForm = None,
    tags: TagsForm = None,
) -> dict[str, Any]:
    meta = _meta(sector, scope, source, site_id, enterprise_id, camera_id, inspection_record, tags, None, None)
    library.validate_meta(ctx, meta)  # a wrong sector is one answer, not one refusal per entry
    limit = ctx.settings.max_upload_bytes * ARCHIVE_FACTOR
    size = file.size if file.size is not None else _size(file)
    if size > limit:
        raise TooLarge(f"archive is {size:,} bytes; the limit is {limit:,}", code="file_too_large")
    return library.ingest_zip(ctx, principal, file.file, meta, name=file.filename or "upload.zip").to_dict()


def _size(file: UploadFile) -> int:
    file.file.seek(0, 2)
    size = file.file.tell()
    file.file.seek(0)
    return size


@router.get(
    "",
    summary="Search samples (newest first, keyset pagination)",
    response_model=SamplePage,
    responses=errors(401, 403, 422),
)
def list_samples(
    session: ReadSessionDep,
    principal: Reader,
    limit: Annotated[int, Query(ge=1, le=library.MAX_LIMIT)] = library.DEFAULT_LIMIT,
    cursor: Annotated[
        str | None,
        Query(
            max_length=64, description="next_cursor of the previous page", json_schema_extra={"pattern": CURSOR_PATTERN}
        ),
    ] = None,
    sector: Annotated[Key | None, Query()] = None,
    class_key: Annotated[Key | None, Query(alias="class")] = None,
    status: AnnotationState | None = None,
    org: Annotated[OrgCode | None, Query()] = None,
    scope: Scope | None = None,
    site: Annotated[Text100 | None, Query()] = None,
    camera: Annotated[Text100 | None, Query()] = None,
    enterprise: Annotated[Text100 | None, Query()] = None,
    source: SampleSource | None = None,
    inspection_record: Annotated[Text200 | None, Query()] = None,
    captured_from: WhenQuery = None,
    captured_to: WhenQuery = None,
    created_from: WhenQuery = None,
    created_to: WhenQuery = None,
    dup_group: Annotated[int | None, Query(ge=1, le=2**53)] = None,
    tag: Annotated[Text100 | None, Query()] = None,
) -> dict[str, Any]:
    filters = SampleFilter.parse(
        {
            "sector": sector,
            "class_key": class_key,
            "status": status,
            "org": org,
            "scope": scope,
            "site": site,
            "camera": camera,
            "enterprise": enterprise,
            "source": source,
            "inspection_record": inspection_record,
            "captured_from": captured_from,
            "captured_to": captured_to,
            "created_from": created_from,
            "created_to": created_to,
            "dup_group": dup_group,
            "tag": tag,
        }
    )
    items, next_cursor = library.search(session, principal, filters, limit, cursor or None)
    return {"items": [library.sample_dict(s) for s in items], "next_cursor": next_cursor}


@router.get("/{sample_id:int}", summary="One sample", response_model=SamplePublic, responses=errors(401, 403, 404, 422))
def get_one(sample_id: int, session: ReadSessionDep, principal: Reader) -> dict[str, Any]:
    return library.sample_dict(library.get_sample(session, principal, sample_id))


@router.get(
    "/{sample_id:int}/image",
    summary="The original bytes, unchanged",
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {
                m: {"schema": {"type": "string", "format": "binary"}} for m in sorted(set(MIME_TYPES.values()))
            },
            "description": "the stored bytes, as uploaded",
        },
        **errors(401, 403, 404, 422),
    },
)
def image(sample_id: int, ctx: CtxDep, session: ReadSessionDep, principal: Reader) -> StreamingResponse:
    sample = library.get_sample(session, principal, sample_id)
    stream = ctx.store.open(blob_key(sample.sha256))

    def chunks() -> Iterator[bytes]:
        with stream:
            while chunk := stream.read(_CHUNK):
                yield chunk

    headers = {
        "Content-Length": str(sample.size_bytes),
        "ETag": f'"{sample.sha256}"',
        "Cache-Control": "private, max-age=31536000, immutable",
    }
    return StreamingResponse(
        chunks(), media_type=MIME_TYPES.get(sample.format, "application/octet-stream"), headers=headers
    )


@router.get(
    "/{sample_id:int}/thumbnail",
    summary="A small JPEG of the oriented image",
    response_class=Response,
    responses={
        200: {
            "content": {"image/jpeg": {"schema": {"type": "string", "format": "binary"}}},
            "description": "JPEG thumbnail",
        },
        **errors(401, 403, 404, 422),
    },
)
def thumbnail(sample_id: int, ctx: CtxDep, principal: Reader) -> Response:
    with ctx.db.read_session() as session:
        sha = library.get_sample(session, principal, sample_id).sha256
    # The store read and a rebuild (decode + resize: CPU and I/O) run outside any transaction.
    key = library.thumbnail_key(sha)
    try:
        data = ctx.store.get(key)
    except ObjectNotFound:  # made by an older version or lost: rebuild it from the original
        data = make_thumbnail(ctx.store.get(blob_key(sha)), ctx.settings.max_pixels, ctx.settings.thumbnail_size)
        ctx.store.put(key, data, content_type="image/jpeg")
    return Response(
        data,
        media_type="image/jpeg",
        headers={"ETag": f'"t-{sha}"', "Cache-Control": "private, max-age=86400"},
    )


@router.delete(
    "/{sample_id:int}",
    summary="Soft delete: hidden from every read, kept for the record",
    response_model=SamplePublic,
    responses=errors(401, 403, 404, 422),
)
def delete(sample_id: int, ctx: CtxDep, principal: Deleter) -> dict[str, Any]:
    with ctx.db.session() as session:
        return library.sample_dict(library.soft_delete(session, principal, sample_id))


@router.get(
    "/{sample_id:int}/near-duplicates",
    summary="Visible samples linked as near-duplicates",
    response_model=NearDuplicates,
    responses=errors(401, 403, 404, 422),
)
def near_duplicates(sample_id: int, session: ReadSessionDep, principal: Reader) -> dict[str, Any]:
    pairs = library.near_duplicates(session, principal, sample_id)
    by_id = (
        {
            s.id: s
            for s in session.scalars(
                library.visible_samples(principal).where(library.Sample.id.in_([sid for sid, _ in pairs]))
            )
        }
        if pairs
        else {}
    )
    return {"items": [{**library.sample_dict(by_id[sid]), "distance": d} for sid, d in pairs if sid in by_id]}


@router.get(
    "/{sample_id:int}/history",
    summary="Audit events of the sample (存档留痕)",
    response_model=AuditEvents,
    responses=errors(401, 403, 404, 422),
)
def sample_history(
    sample_id: int,
    session: ReadSessionDep,
    principal: Auditor,
    limit: Annotated[int, Query(ge=1, le=library.MAX_LIMIT)] = 500,
) -> dict[str, Any]:
    # Deleted samples keep their history, and auditors of the owning organisation can read it.
    library.get_sample(session, principal, sample_id, include_deleted=True)
    return {"items": [event_dict(e) for e in history(session, sample_id=sample_id, limit=limit)]}
