"""Federation over HTTP (issue 17), thin: the logic is :mod:`hazardlens.federation`.

``/federation/v1/*`` is the instance-to-instance protocol: no API key, every request signed by a
registered peer's Ed25519 key and every answer signed by this instance's (``X-Hazardlens-*``
headers; docs/federation.md). It is left out of the OpenAPI document, which describes the API that
people's clients call; those routes are ``/v1/federation/*`` and the sample's origin and scope.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from pydantic import ValidationError

from hazardlens.auth import Principal, require_system
from hazardlens.context import Context
from hazardlens.contracts.federation import (
    AdoptAddition,
    FeedbackAck,
    FeedbackReport,
    FieldFeedback,
    PeersResponse,
    PulledAdditions,
    SampleOrigin,
    ScopeChange,
    ScopeChanged,
)
from hazardlens.contracts.legal_review import AdditionPublic
from hazardlens.datasets.scope import set_scope
from hazardlens.datasets.tenancy import get_sample
from hazardlens.errors import Invalid, NotFound, TooLarge
from hazardlens.federation import additions, peers, serve, sync
from hazardlens.federation.signing import SIG_HEADER, Signer, key_id, public_path
from hazardlens.serving.deps import CtxDep, require
from hazardlens.serving.schemas import errors


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    # Every serving process ticks the peers' scheduled pulls (a due pull is claimed once across
    # processes: hazardlens.federation.schedule); the jobs it submits run wherever jobs run.
    from hazardlens.federation.schedule import TICK_S, Scheduler, runner_submit

    scheduler: Scheduler | None = None
    if getattr(app.state, "start_background", False):
        ctx = app.state.ctx
        submit = runner_submit(ctx, lambda: getattr(app.state, "job_runner", None))
        scheduler = Scheduler(ctx, submit, getattr(app.state, "federation_tick_s", TICK_S))
        scheduler.start()
        app.state.federation_scheduler = scheduler
    try:
        yield
    finally:
        if scheduler is not None:
            scheduler.stop()


router = APIRouter(tags=["federation"], lifespan=_lifespan)

SampleId = Annotated[int, Path(ge=1, le=2**63 - 1)]
MAX_FEEDBACK_BODY = 8 * 1024 * 1024


def _signer(request: Request, ctx: Context) -> Signer:
    signer = getattr(request.app.state, "federation_signer", None)
    if signer is None:
        signer = Signer.of(ctx.settings)
        request.app.state.federation_signer = signer
    return signer


def _path(request: Request) -> str:
    """The path and query exactly as sent (what the peer signed)."""
    raw = request.scope.get("raw_path") or request.url.path.encode()
    query = request.scope.get("query_string") or b""
    return raw.decode("latin-1") + (("?" + query.decode("latin-1")) if query else "")


def _signed(request: Request, ctx: Context, body: bytes, media_type: str = "application/json") -> Response:
    headers = _signer(request, ctx).sign_answer(200, request.headers.get(SIG_HEADER, ""), body)
    return Response(body, status_code=200, media_type=media_type, headers=headers)


@router.get("/federation/v1/changes", include_in_schema=False, response_model=None)
def changes(
    request: Request,
    ctx: CtxDep,
    cursor: Annotated[int, Query(ge=0, le=2**62)] = 0,
    limit: Annotated[int, Query(ge=1, le=serve.MAX_PAGE)] = 100,
) -> Response:
    with ctx.db.read_session() as s:
        serve.authenticate(s, "GET", _path(request), request.headers, b"", "samples")
        page = serve.changes(s, cursor, limit)
    return _signed(request, ctx, page.model_dump_json().encode())


@router.get("/federation/v1/blobs/{sha256}", include_in_schema=False, response_model=None)
def blob(request: Request, ctx: CtxDep, sha256: Annotated[str, Path(pattern=r"^[0-9a-f]{64}$")]) -> Response:
    with ctx.db.read_session() as s:
        serve.authenticate(s, "GET", _path(request), request.headers, b"", "samples")
        data = serve.blob(ctx, s, sha256)
    return _signed(request, ctx, data, "application/octet-stream")


@router.get("/federation/v1/models", include_in_schema=False, response_model=None)
def models(request: Request, ctx: CtxDep) -> Response:
    with ctx.db.read_session() as s:
        serve.authenticate(s, "GET", _path(request), request.headers, b"", "models")
        offers = serve.published_models(ctx, s)
    return _signed(request, ctx, offers.model_dump_json().encode())


@router.get("/federation/v1/models/{name}/{version}/weights", include_in_schema=False, response_model=None)
def weights(
    request: Request,
    ctx: CtxDep,
    name: Annotated[str, Path(min_length=1, max_length=100)],
    version: Annotated[str, Path(min_length=1, max_length=40)],
) -> Response:
    with ctx.db.read_session() as s:
        serve.authenticate(s, "GET", _path(request), request.headers, b"", "models")
        data = serve.model_weights(ctx, s, name, version)
    return _signed(request, ctx, data, "application/octet-stream")


@router.get("/federation/v1/taxonomy", include_in_schema=False, response_model=None)
def taxonomy(
    request: Request,
    ctx: CtxDep,
    after: Annotated[int, Query(ge=0, le=2**62)] = 0,
    limit: Annotated[int, Query(ge=1, le=additions.MAX_PAGE)] = 100,
) -> Response:
    with ctx.db.read_session() as s:
        serve.authenticate(s, "GET", _path(request), request.headers, b"", "taxonomy")
        page = additions.offered(s, after, limit)
    return _signed(request, ctx, page.model_dump_json().encode())


@router.post("/federation/v1/feedback", include_in_schema=False, response_model=None)
async def feedback(request: Request, ctx: CtxDep) -> Response:
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > MAX_FEEDBACK_BODY:
            raise TooLarge(f"a feedback report is limited to {MAX_FEEDBACK_BODY} bytes")
    data, path = bytes(body), _path(request)

    def work() -> FeedbackAck:
        with ctx.db.session() as s:
            peer = serve.authenticate(s, "POST", path, request.headers, data, "feedback")
            try:
                report = FeedbackReport.model_validate_json(data)
            except ValidationError as exc:
                raise Invalid(f"invalid feedback report: {exc.errors()[:3]}", code="invalid_feedback") from None
            return FeedbackAck(received=serve.receive_feedback(s, peer, report))

    ack = await run_in_threadpool(work)
    return _signed(request, ctx, ack.model_dump_json().encode())


# ---- the API people's clients call --------------------------------------------------------------


@router.get(
    "/v1/federation/peers",
    response_model=PeersResponse,
    summary="This instance's key id and the peers it knows (system organisation admins)",
    responses=errors(401, 403),
)
def list_peers(ctx: CtxDep, principal: Annotated[Principal, Depends(require("keys:manage"))]) -> PeersResponse:
    require_system(principal, "the federation peers", ctx.settings.system_org)
    pub = public_path(ctx.settings)
    own = key_id(pub.read_text(encoding="ascii").strip()) if pub.is_file() else None
    with ctx.db.read_session() as s:
        rows = [peers.peer_dict(p) for p in peers.list_peers(s)]
    return PeersResponse.model_validate({"instance_key_id": own, "peers": rows})


@router.get(
    "/v1/federation/feedback",
    response_model=FieldFeedback,
    summary="Field feedback reported by peers: confirmed/corrected/rejected per model version and class",
    responses=errors(401, 403),
)
def field_feedback(ctx: CtxDep, principal: Annotated[Principal, Depends(require("models:read"))]) -> FieldFeedback:
    require_system(principal, "the field feedback of every province", ctx.settings.system_org)
    with ctx.db.read_session() as s:
        return FieldFeedback.model_validate({"rows": serve.field_feedback(s)})


@router.get(
    "/v1/federation/additions",
    response_model=PulledAdditions,
    summary="Taxonomy additions pulled from peers, with their origin and legal clause (read-only until adopted)",
    description="Approved provincial items and classes of other instances, for national adoption: usable "
    "by no organisation here until a system administrator adopts one.",
    responses=errors(401, 403, 422),
)
def pulled_additions(
    ctx: CtxDep,
    principal: Annotated[Principal, Depends(require("taxonomy:read_additions"))],
    include_withdrawn: Annotated[bool, Query(description="also those the peer no longer offers")] = False,
) -> PulledAdditions:
    with ctx.db.read_session() as s:
        rows = additions.list_pulled(s, principal, include_withdrawn)
        return PulledAdditions(additions=[additions.pulled_public(s, r) for r in rows])


@router.post(
    "/v1/federation/additions/{pulled_id}/adopt",
    response_model=AdditionPublic,
    status_code=201,
    summary="Adopt a pulled addition: usable in one organisation here (system organisation admins)",
    description="Makes a local approved addition carrying the origin's clause and approval. 409 "
    "already_adopted, addition_withdrawn or duplicate_addition; 403 system_only.",
    responses=errors(401, 403, 404, 409, 422),
)
def adopt_addition(
    pulled_id: Annotated[int, Path(ge=1, le=2**31 - 1)],
    ctx: CtxDep,
    principal: Annotated[Principal, Depends(require("taxonomy:read_additions"))],
    body: AdoptAddition | None = None,
) -> AdditionPublic:
    from hazardlens import legal_review

    with ctx.db.session() as s:
        row = additions.adopt(ctx, s, principal, pulled_id, body.org_code if body else None)
        return legal_review.addition_public(s, row)


@router.get(
    "/v1/samples/{sample_id}/origin",
    response_model=SampleOrigin,
    summary="Where a sample pulled from another instance came from (instance, organisation, label provenance)",
    description="404 not_federated for a sample of this instance's own library.",
    responses=errors(401, 403, 404, 422),
)
def sample_origin(
    sample_id: SampleId, ctx: CtxDep, principal: Annotated[Principal, Depends(require("samples:read"))]
) -> SampleOrigin:
    with ctx.db.read_session() as s:
        get_sample(s, principal, sample_id, include_deleted=True)
        found = sync.sample_origin(s, sample_id)
        if found is None:
            raise NotFound(f"sample {sample_id} is this instance's own, not pulled from a peer", code="not_federated")
        return SampleOrigin.model_validate(sync.origin_dict(*found))


@router.post(
    "/v1/samples/{sample_id}/scope",
    response_model=ScopeChanged,
    summary="Share a sample with every organisation, or make it private again (the owner only)",
    description="403 not_owner for another organisation's shared sample. A sample made private again is "
    "withdrawn from the instances that pulled it, at their next sync.",
    responses=errors(401, 403, 404, 422),
)
def change_scope(
    sample_id: SampleId,
    body: ScopeChange,
    ctx: CtxDep,
    principal: Annotated[Principal, Depends(require("samples:delete"))],
) -> ScopeChanged:
    with ctx.db.session() as s:
        sample = set_scope(s, principal, sample_id, body.scope)
        return ScopeChanged(sample_id=sample.id, scope=body.scope)
