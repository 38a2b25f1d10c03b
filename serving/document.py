"""What the OpenAPI document says beyond what FastAPI derives from the routes, so that it is the truth
about what the server accepts and answers (``create_app`` installs :func:`install`).

* **Nothing null where null cannot be sent.** A query, path or header parameter, or a multipart form
  field, is a string on the wire or absent; FastAPI documents an optional one as ``anyOf [X, null]``,
  and a client (or a fuzzer) that sends ``null`` sends the text ``"null"``. Those alternatives go.
* **Checks the domain makes with its own error codes, said in the schema.** A route keeps its field a
  plain string, so the domain's refusal (``unknown_sector``, ``invalid_date``, ``invalid_cursor``...)
  stays the answer; the field carries its rule as ``json_schema_extra`` (a pattern, a format), or the
  marker ``x-hazardlens-enum: sectors``, which becomes the sectors of this app's taxonomy.
* **Statuses every route shares**, in the one error shape: a route that reads a body answers 400 (a
  body that cannot be parsed), 408 (a body that stalls) and 413 (a body over the limit), and every
  route answers 504 when it runs out of time (:mod:`hazardlens.serving.limits`).
* **Outages, where they can happen** (issue 13), in the one error shape with the codes a client
  retries on: 503 ``catalogue_unavailable`` on every route that needs a key (the key is looked up in
  the catalogue), ``store_unavailable`` on those that read or write stored objects,
  ``broker_unavailable`` on those that queue a job, ``overloaded`` (with ``Retry-After``) on those that
  run the model; 507 ``insufficient_storage`` on every keyed write (the catalogue's disk, or the
  store's for the routes that store bytes). Each such answer lists its codes in ``x-error-codes``.
* **Who may call.** Routes that need an API key declare it (bearer, or basic auth whose password is
  the key, as Label Studio sends it), so clients know, and a 401 is documented.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.routing import BaseRoute

from hazardlens.context import Context

ENUM_MARKER = "x-hazardlens-enum"
_FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")
_SECURITY = {
    "bearer": {"type": "http", "scheme": "bearer", "description": "an API key (hazardlens keys create)"},
    "basic": {
        "type": "http",
        "scheme": "basic",
        "description": "any user name, the API key as password (how Label Studio calls an ML backend)",
    },
}
_SHARED = {
    400: "the body could not be parsed",
    408: "request body stalled",
    413: "file, body or image too large",
    504: "timed out",
}


#: Operations that read or write the object store (photos, thumbnails, manifests, exports, reports):
#: 503 ``store_unavailable``; those that write it can also meet a full store (507).
STORE_ROUTES = frozenset(
    {
        ("post", "/v1/samples"),
        ("post", "/v1/samples/archive"),
        ("get", "/v1/samples/{sample_id}/image"),
        ("get", "/v1/samples/{sample_id}/thumbnail"),
        ("post", "/v1/imports"),
        ("post", "/v1/exports"),
        ("post", "/v1/datasets"),
        ("get", "/v1/datasets/{name}/{version}"),
        ("post", "/v1/inspections/{record_no}/photos"),
        ("get", "/v1/inspections/{record_no}/report.pdf"),
        ("post", "/v1/suggestions/request"),
        ("post", "/labelstudio/predict"),
    }
)
#: Operations that queue a job (sent to the broker when one is configured): 503 ``broker_unavailable``.
JOB_ROUTES = frozenset({("post", "/v1/jobs"), ("post", "/v1/prelabel")})
#: Operations that wait for the model's queue: 503 ``overloaded`` with ``Retry-After`` when it is full.
MODEL_ROUTES = frozenset(
    {
        ("post", "/v1/detect"),
        ("post", "/v1/detect/batch"),
        ("post", "/v1/inspections/{record_no}/photos"),
        ("post", "/v1/suggestions/request"),
        ("post", "/labelstudio/predict"),
    }
)
_OUTAGE_TEXT = {
    "catalogue_unavailable": "the catalogue cannot be reached, is restarting or is busy",
    "store_unavailable": "the object store cannot be reached",
    "broker_unavailable": "the job queue's broker cannot be reached (the job was not queued)",
    "overloaded": "the model's queue is full (wait Retry-After seconds)",
}
_WRITES = frozenset({"post", "put", "patch", "delete"})


def outage_codes(method: str, path: str, keyed: bool) -> tuple[list[str], list[str]]:
    """The 503 and the 507 codes an operation can answer when what it stands on fails."""
    unavailable = ["catalogue_unavailable"] if keyed else []
    if (method, path) in STORE_ROUTES:
        unavailable.append("store_unavailable")
    if (method, path) in JOB_ROUTES:
        unavailable.append("broker_unavailable")
    if (method, path) in MODEL_ROUTES:
        unavailable.append("overloaded")
    full = ["insufficient_storage"] if keyed and method in _WRITES else []
    return unavailable, full


def _declare_outages(responses: dict[str, Any], method: str, path: str, keyed: bool, error: dict[str, Any]) -> None:
    """Add (or extend: a model route's own 503) the outage answers of one operation."""
    unavailable, full = outage_codes(method, path, keyed)
    if unavailable:
        answer = responses.setdefault("503", {"description": "service unavailable", "content": error})
        answer.setdefault("content", error)
        codes = [
            *answer.get("x-error-codes", []),
            *(c for c in unavailable if c not in answer.get("x-error-codes", [])),
        ]
        answer["x-error-codes"] = codes
        reasons = "; ".join(f"`{c}`: {_OUTAGE_TEXT[c]}" for c in unavailable)
        answer["description"] = f"{answer['description']}; retry later. {reasons}"
        if "overloaded" in unavailable:
            answer.setdefault("headers", {})["Retry-After"] = {
                "description": "seconds to wait before retrying (with `overloaded`)",
                "schema": {"type": "integer", "minimum": 1},
            }
    if full:
        responses.setdefault(
            "507",
            {
                "description": "`insufficient_storage`: the disk of the catalogue or the object store is full; "
                "nothing of the request was kept",
                "content": error,
                "x-error-codes": full,
            },
        )


def leaf_routes(routes: Iterable[BaseRoute]) -> Iterator[BaseRoute]:
    """Every route of the app, looking inside included routers (FastAPI keeps them wrapped)."""
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from leaf_routes(inner.routes)
        else:
            yield route


def api_routes(app: FastAPI) -> list[APIRoute]:
    return [r for r in leaf_routes(app.routes) if isinstance(r, APIRoute)]


def sectors(ctx: Context) -> Callable[[FastAPI], list[str]]:
    return lambda _app: sorted(ctx.base_taxonomy.sectors)


def _drop_null(schema: dict[str, Any]) -> None:
    """``anyOf [X, null]`` -> X, keeping the outer keys (title, description, json_schema_extra)."""
    branches = schema.get("anyOf")
    if not isinstance(branches, list):
        return
    kept = [b for b in branches if b != {"type": "null"}]
    if len(kept) == len(branches):
        return
    if len(kept) == 1:
        del schema["anyOf"]
        for key, value in kept[0].items():
            schema.setdefault(key, value)
    else:
        schema["anyOf"] = kept


def _resolve_enums(node: Any, enums: dict[str, list[str]]) -> None:
    if isinstance(node, dict):
        name = node.pop(ENUM_MARKER, None)
        if name is not None:
            values = list(enums[name])
            extra = node.pop("x-hazardlens-enum-extra", [])
            node.pop("anyOf", None)
            node["type"] = "string"
            node["enum"] = [*extra, *values]
            for key in ("maxLength", "minLength", "pattern"):
                node.pop(key, None)
        for value in node.values():
            _resolve_enums(value, enums)
    elif isinstance(node, list):
        for value in node:
            _resolve_enums(value, enums)


def _needs_key(route: APIRoute) -> bool:
    from hazardlens.serving.deps import get_principal

    pending = [route.dependant]
    while pending:
        dependant = pending.pop()
        if dependant.call is get_principal:
            return True
        pending.extend(dependant.dependencies)
    return False


def refine(app: FastAPI, document: dict[str, Any], enums: dict[str, list[str]]) -> dict[str, Any]:
    components = document.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    assert "ErrorResponse" in schemas, "routes document their errors with serving.schemas.errors()"
    components.setdefault("securitySchemes", {}).update(_SECURITY)
    keyed = {(m.lower(), r.path_format) for r in api_routes(app) if _needs_key(r) for m in r.methods or ()}
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
    for path, item in document.get("paths", {}).items():
        for method, operation in item.items():
            if not isinstance(operation, dict):
                continue
            for parameter in operation.get("parameters", []):
                _drop_null(parameter.get("schema", {}))
            body = operation.get("requestBody")
            responses = operation.setdefault("responses", {})
            shared = [504] + ([400, 408, 413] if body is not None else [])
            if (method, path) in keyed:
                operation["security"] = [{"bearer": []}, {"basic": []}]
                shared.append(401)
            for status in shared:
                responses.setdefault(
                    str(status), {"description": _SHARED.get(status, "missing or invalid API key"), "content": error}
                )
            _declare_outages(responses, method, path, (method, path) in keyed, error)
            for media, content in (body or {}).get("content", {}).items():
                if media not in _FORM_TYPES:
                    continue
                ref = content.get("schema", {}).get("$ref", "")
                form = schemas.get(ref.rsplit("/", 1)[-1], content.get("schema", {}))
                for prop in form.get("properties", {}).values():
                    _drop_null(prop)
    _resolve_enums(document, enums)
    return document


def install(app: FastAPI, enums: dict[str, Callable[[FastAPI], list[str]]]) -> None:
    """Replace ``app.openapi`` with one that refines FastAPI's document once (it is cached)."""
    derive = app.openapi

    def openapi() -> dict[str, Any]:
        if getattr(app.state, "openapi_refined", None) is None:
            app.state.openapi_refined = refine(app, derive(), {name: f(app) for name, f in enums.items()})
        return app.state.openapi_refined

    app.openapi = openapi  # type: ignore[method-assign]


__all__ = [
    "ENUM_MARKER",
    "JOB_ROUTES",
    "MODEL_ROUTES",
    "STORE_ROUTES",
    "api_routes",
    "install",
    "leaf_routes",
    "outage_codes",
    "refine",
    "sectors",
]
