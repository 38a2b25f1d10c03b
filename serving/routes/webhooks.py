"""Webhooks for the enforcement system (``/v1/webhooks``, their delivery log) and photos analysed
asynchronously (``POST /v1/inspections/{record_no}/photos?async=true`` answers 202 here, see
:func:`accept_async`; ``GET /v1/inspection-submissions/{id}``).

Two daemon threads per server process do the work: the submission worker (analyses queued photos
with this process's model manager) and the dispatcher (signs and sends deliveries, retrying with
backoff). Both claim rows from the catalogue with conditional updates, so several server processes
share the work and a restarted one takes up what another left. A server started in the background
mode (``hazardlens serve``) starts them at once, so that deliveries left by a previous process go out;
an app without background threads (tests, tools) starts them on first use.
Business rules: :mod:`hazardlens.labeling.webhooks`, :mod:`hazardlens.labeling.inspection_async`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Path, Query, Request
from fastapi.responses import JSONResponse

from hazardlens.auth import Principal
from hazardlens.context import Context
from hazardlens.contracts.webhooks import (
    DeliveryPage,
    SubmissionPublic,
    WebhookCreated,
    WebhookIn,
    WebhookList,
    WebhookPublic,
)
from hazardlens.detector import DEFAULT_CONF
from hazardlens.labeling import inspection_async, webhooks
from hazardlens.labeling.inspections import PhotoMeta
from hazardlens.serving.deps import CtxDep, require
from hazardlens.serving.schemas import errors


def _workers(app: FastAPI, start: bool = True) -> tuple[inspection_async.SubmissionWorker, webhooks.Dispatcher]:
    """This app's worker and dispatcher, made (and with ``start``, started) on first use.
    ``app.state.webhook_policy`` (a RetryPolicy) replaces the default retry timing (tests)."""
    workers = getattr(app.state, "async_workers", None)
    if workers is None:
        ctx: Context = app.state.ctx
        dispatcher = webhooks.Dispatcher(ctx, getattr(app.state, "webhook_policy", None))

        def detector() -> Any:
            from hazardlens.serving.runtime import ModelUnavailable

            manager = getattr(app.state, "models", None)
            if manager is None:
                raise ModelUnavailable("the model manager is not running in this worker")
            return manager

        worker = inspection_async.SubmissionWorker(
            ctx, detector, on_event=dispatcher.wake, timeout=ctx.settings.request_timeout_s
        )
        workers = app.state.async_workers = (worker, dispatcher)
    if start:
        for loop in workers:
            loop.start()
    return workers


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    # An included router's lifespan runs inside the app's, after its startup hooks (the catalogue and
    # the model manager are ready) and before its shutdown hooks.
    if getattr(app.state, "start_background", False):
        _workers(app)
    try:
        yield
    finally:
        workers = getattr(app.state, "async_workers", None)
        if workers is not None:
            for loop in workers:
                loop.stop()
            app.state.async_workers = None


router = APIRouter(tags=["webhooks"], lifespan=_lifespan)
Manager = Annotated[Principal, Depends(require("webhooks:manage"))]
HookId = Annotated[int, Path(ge=1, le=2**31 - 1)]


def accept_async(
    request: Request,
    ctx: Context,
    principal: Principal,
    record_no: str,
    data: bytes,
    meta: PhotoMeta,
    idempotency_key: str | None,
    *,
    conf: float | None,
    tiles: bool,
) -> JSONResponse:
    """``?async=true`` of the photo route: queue the photo, answer 202 with the submission."""
    with ctx.db.session() as session:
        submission, replayed = inspection_async.submit(
            ctx,
            session,
            principal,
            record_no,
            data,
            meta,
            idempotency_key,
            conf=DEFAULT_CONF if conf is None else conf,
            tiles=tiles,
        )
        body = SubmissionPublic.model_validate(inspection_async.submission_dict(submission)).model_dump(mode="json")
    worker, _ = _workers(request.app)
    worker.wake()
    headers = {"Location": f"/v1/inspection-submissions/{body['id']}"}
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    return JSONResponse(body, status_code=202, headers=headers)


@router.get(
    "/v1/inspection-submissions/{submission_id}",
    response_model=SubmissionPublic,
    summary="A photo posted with async=true: queued, running, done (with its findings) or failed",
    responses=errors(401, 403, 404, 422),
)
def get_submission(
    submission_id: HookId, ctx: CtxDep, principal: Annotated[Principal, Depends(require("inspections:read"))]
) -> Any:
    with ctx.db.read_session() as session:
        return inspection_async.get_submission(session, principal, submission_id)


@router.post(
    "/v1/webhooks",
    status_code=201,
    response_model=WebhookCreated,
    summary="Register a webhook of the caller's organisation (the signing secret is shown once)",
    responses=errors(401, 403, 409, 422),
)
def create_webhook(body: WebhookIn, ctx: CtxDep, principal: Manager) -> Any:
    with ctx.db.session() as session:
        hook = webhooks.create_webhook(session, principal, body.url, body.events, body.description)
        return webhooks.webhook_dict(hook, secret=True)


@router.get(
    "/v1/webhooks",
    response_model=WebhookList,
    summary="The organisation's webhooks (not their secrets)",
    responses=errors(401, 403),
)
def list_webhooks(ctx: CtxDep, principal: Manager) -> Any:
    with ctx.db.read_session() as session:
        return {"items": [webhooks.webhook_dict(h) for h in webhooks.list_webhooks(session, principal)]}


@router.get(
    "/v1/webhooks/{webhook_id}",
    response_model=WebhookPublic,
    summary="One webhook of the organisation",
    responses=errors(401, 403, 404, 422),
)
def get_webhook(webhook_id: HookId, ctx: CtxDep, principal: Manager) -> Any:
    with ctx.db.read_session() as session:
        return webhooks.webhook_dict(webhooks.get_webhook(session, principal, webhook_id))


@router.delete(
    "/v1/webhooks/{webhook_id}",
    response_model=WebhookPublic,
    summary="Stop a webhook (deliveries still waiting are dropped)",
    responses=errors(401, 403, 404, 422),
)
def delete_webhook(webhook_id: HookId, ctx: CtxDep, principal: Manager) -> Any:
    with ctx.db.session() as session:
        return webhooks.webhook_dict(webhooks.delete_webhook(session, principal, webhook_id))


@router.get(
    "/v1/webhooks/{webhook_id}/deliveries",
    response_model=DeliveryPage,
    summary="The webhook's delivery log, newest first: every attempt with its answer",
    responses=errors(401, 403, 404, 422),
)
def list_deliveries(
    webhook_id: HookId,
    ctx: CtxDep,
    principal: Manager,
    status: Annotated[Literal["pending", "delivering", "delivered", "failed"] | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> Any:
    with ctx.db.read_session() as session:
        rows = webhooks.list_deliveries(session, principal, webhook_id, status=status, limit=limit)
        return {"items": [webhooks.delivery_dict(d) for d in rows]}
