"""What the serving part adds to the app beyond its routers: the model manager's lifecycle, request
limits and timeouts, metrics and ``/metrics``. ``create_app`` calls :func:`install` once.

Middleware order, outermost first: metrics (sees every answer, 5xx and 504 included) -> request id
(every answer carries ``X-Request-ID`` and is logged) -> the app's own -> limits/timeouts
(:mod:`hazardlens.serving.limits`, innermost so its refusals get a request id and are counted).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Request, Response, UploadFile
from starlette.middleware import Middleware

from hazardlens.auth import Principal
from hazardlens.context import Context
from hazardlens.errors import TooLarge
from hazardlens.models.manager import ModelManager, ModelUnavailable
from hazardlens.serving.deps import require
from hazardlens.serving.limits import GuardMiddleware
from hazardlens.serving.metrics import Metrics, MetricsMiddleware
from hazardlens.serving.schemas import errors
from hazardlens.settings import Settings

log = logging.getLogger("hazardlens.serving")

#: The batch route takes up to this many files, so its body may be this many uploads long.
MAX_BATCH_FILES = 16
BATCH_PATH = "/v1/detect/batch"

metrics_router = APIRouter(tags=["operations"])


@metrics_router.get(
    "/metrics",
    summary="Prometheus metrics of this worker (text exposition format)",
    response_class=Response,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}, **errors(401, 403)},
)
def metrics(request: Request, _: Annotated[Principal, Depends(require("models:read"))]) -> Response:
    body, content_type = request.app.state.metrics.render()
    return Response(body, media_type=content_type)


def read_upload(ctx: Context, file: UploadFile) -> bytes:
    """The uploaded file's bytes, refusing one over ``max_upload_bytes`` without reading it all."""
    limit = ctx.settings.max_upload_bytes
    if file.size is not None and file.size > limit:
        raise TooLarge(f"file is {file.size:,} bytes; the limit is {limit:,}", code="file_too_large")
    data = file.file.read(limit + 1)
    if len(data) > limit:
        raise TooLarge(f"file is over the limit of {limit:,} bytes", code="file_too_large")
    return data


def get_models(request: Request) -> ModelManager:
    manager = getattr(request.app.state, "models", None)
    if manager is None:
        raise ModelUnavailable("the model manager is not running in this worker")
    return manager


ModelsDep = Annotated[ModelManager, Depends(get_models)]


def _start_models(app: FastAPI) -> None:
    """Background mode (a real server): load in the poller thread, so the server answers /healthz at
    once and /readyz turns ready when the model is in. Otherwise (tests, ``start_background=False``)
    the model is loaded on the first request that needs it."""
    # ``app.state.model_loader`` (optional) replaces how an engine is built: tests use it to share one
    # ONNX export across many apps, or to slow an engine down.
    manager = ModelManager(app.state.ctx, observer=app.state.metrics, loader=getattr(app.state, "model_loader", None))
    app.state.models = manager
    if app.state.start_background:
        manager.start_background()


def _stop_models(app: FastAPI) -> None:
    manager = getattr(app.state, "models", None)
    if manager is not None:
        manager.close()
        app.state.models = None


def body_limits() -> dict[str, Callable[[Settings], int]]:
    """Routes whose bodies may exceed one upload; read from the routes' own limits so they agree."""
    from hazardlens.serving.routes import samples

    try:
        from hazardlens.labeling.importers import ARCHIVE_FACTOR as import_factor
    except ImportError:  # pragma: no cover - importers not installed
        import_factor = 40
    archive = getattr(samples, "ARCHIVE_FACTOR", 20)
    return {
        BATCH_PATH: lambda s: s.max_upload_bytes * MAX_BATCH_FILES,
        "/v1/samples/archive": lambda s: s.max_upload_bytes * archive,
        "/v1/imports": lambda s: max(s.max_upload_bytes * import_factor, 1 << 30),
    }


def install(app: FastAPI) -> None:
    from hazardlens.serving.routes.health import add_readiness_check

    ctx = app.state.ctx
    metrics = Metrics(lambda: getattr(app.state, "models", None))
    app.state.metrics = metrics
    app.state.models = None
    app.add_middleware(MetricsMiddleware, metrics=metrics)  # inserted first: outermost
    app.user_middleware.append(Middleware(GuardMiddleware, settings=lambda: ctx.settings, limits=body_limits()))
    app.include_router(metrics_router)
    app.state.startup_hooks.append(_start_models)
    app.state.shutdown_hooks.append(_stop_models)

    def model(app: FastAPI) -> bool:
        manager = getattr(app.state, "models", None)
        if manager is None:
            return False
        return manager.ready or not app.state.start_background  # lazy workers load on first use

    add_readiness_check(app, model)


__all__ = ["MAX_BATCH_FILES", "ModelsDep", "get_models", "install", "read_upload"]
