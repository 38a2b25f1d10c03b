"""Application factory. Business rules live in the parts below; this file wires them to HTTP."""

from __future__ import annotations

import importlib
import json
import logging
import pkgutil
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import DataError, InterfaceError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from hazardlens import __version__
from hazardlens.audit import reset_request_id, set_request_id
from hazardlens.context import Context
from hazardlens.errors import HazardError
from hazardlens.outages import CatalogueUnavailable, catalogue_error

log = logging.getLogger("hazardlens.http")

#: Request fields whose refusal the domain has always answered with its own code.
FIELD_ERROR_CODES = {"scope": "invalid_scope", "source": "invalid_source"}

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid",
    429: "too_many_requests",
    500: "internal",
    503: "unavailable",
    504: "timeout",
}


def error_response(
    status: int, code: str, message: str, details: Any = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    body: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        body["details"] = details
    return JSONResponse({"error": body}, status_code=status, headers=headers)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(HazardError)
    async def _hazard(_: Request, exc: HazardError) -> JSONResponse:
        # e.g. Retry-After on 503 overloaded (hazardlens.models.batching.Overloaded)
        return error_response(exc.status, exc.code, exc.message, exc.details, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        details = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", "")} for e in exc.errors()]
        first = details[0] if details else {"loc": [], "msg": "invalid request"}
        where = ".".join(str(p) for p in first["loc"])
        msg = str(first["msg"])
        field = str(first["loc"][-1]) if first["loc"] else ""
        # A field the domain has its own code for keeps that code when the schema catches it first.
        code = FIELD_ERROR_CODES.get(field, "invalid")
        return error_response(422, code, f"{where}: {msg}" if where else msg, details)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail, ensure_ascii=False)
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 405:
            # Starlette names the methods of the first route on the path only; a path served by several
            # routes (GET and POST /v1/samples) allows all of theirs.
            headers["Allow"] = ", ".join(_allowed_methods(request))
        return error_response(
            exc.status_code, _HTTP_CODES.get(exc.status_code, "error"), message, headers=headers or None
        )

    @app.exception_handler(OverflowError)
    @app.exception_handler(DataError)
    async def _out_of_range(_: Request, exc: Exception) -> JSONResponse:
        # An id or number beyond what the database column holds (SQLite: OverflowError, PostgreSQL:
        # DataError): the caller's input, not a server fault.
        return error_response(422, "out_of_range", "a number in the request is out of range")

    @app.exception_handler(OperationalError)
    @app.exception_handler(InterfaceError)
    async def _catalogue_outage(request: Request, exc: Exception) -> JSONResponse:
        # The catalogue down, restarting, locked or on a full disk: 503/507 with a code, not a 500.
        err = catalogue_error(exc) or CatalogueUnavailable("the catalogue database cannot be reached")
        log.warning("catalogue outage: %s", exc, extra={"request_id": getattr(request.state, "request_id", None)})
        return error_response(err.status, err.code, err.message)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        rid = getattr(request.state, "request_id", None)
        log.exception("unhandled error", extra={"request_id": rid})
        # This answer is made outside the request-id middleware (the exception went through it), so it
        # sets the header it promises itself (issue 13, item 8).
        return error_response(
            500,
            "internal",
            "internal error; the request id is in the X-Request-ID header",
            headers={"X-Request-ID": rid} if rid else None,
        )


def _allowed_methods(request: Request) -> list[str]:
    from hazardlens.serving.document import leaf_routes

    methods: set[str] = set()
    for route in leaf_routes(request.app.router.routes):
        allowed = getattr(route, "methods", None)
        if allowed and route.matches(request.scope)[0] != Match.NONE:
            methods |= set(allowed)
    return sorted(methods)


#: A client's X-Request-ID is kept when it looks like one (a UUID, a trace id); anything else (too
#: long, spaces, control or non-ASCII characters) is replaced by our own, so that what reaches the
#: audit log (request_id, 64 characters) and the logs is bounded and printable (issue 13, item 8).
_REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")


def request_id_of(header: str | None) -> str:
    """The request id to use: the client's when well-formed, else a new one."""
    return header if header is not None and _REQUEST_ID.fullmatch(header) else uuid.uuid4().hex


def _install_request_ids(app: FastAPI) -> None:
    @app.middleware("http")
    async def _request_id(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        rid = request_id_of(request.headers.get("x-request-id"))
        request.state.request_id = rid
        token = set_request_id(rid)
        start = time.perf_counter()
        try:
            response = await call_next(request)
        finally:
            reset_request_id(token)
        response.headers["X-Request-ID"] = rid
        log.info(
            "request",
            extra={
                "request_id": rid,
                "method": request.method,
                "path": request.url.path,
                "status": response.status_code,
                "ms": round((time.perf_counter() - start) * 1000, 1),
            },
        )
        return response


def _mount_routers(app: FastAPI) -> None:
    import hazardlens.serving.routes as routes

    for mod in sorted(pkgutil.iter_modules(routes.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{routes.__name__}.{mod.name}")
        router = getattr(module, "router", None)
        if router is not None:
            app.include_router(router)


def create_app(ctx: Context | None = None, *, start_background: bool = True) -> FastAPI:
    ctx = ctx or Context()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        ctx.init()
        ctx.store.recover()  # temporary files of a writer killed mid-write (kill -9, power cut)
        for hook in app.state.startup_hooks:
            hook(app)
        try:
            yield
        finally:
            for hook in reversed(app.state.shutdown_hooks):
                hook(app)
            ctx.close()

    app = FastAPI(
        title="hazardlens",
        version=__version__,
        lifespan=lifespan,
        description="设备设施样本库 and hazard detection API for emergency-management enforcement.",
    )
    app.state.ctx = ctx
    app.state.start_background = start_background
    app.state.startup_hooks = []
    app.state.shutdown_hooks = []
    _install_error_handlers(app)
    _install_request_ids(app)
    _mount_routers(app)
    from hazardlens.serving.runtime import install  # models, limits, timeouts, metrics (serving/runtime.py)

    install(app)
    from hazardlens.serving import document

    document.install(app, {"sectors": document.sectors(ctx)})
    return app


def write_openapi(path: Path) -> None:
    app = create_app(start_background=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(app.openapi(), ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
