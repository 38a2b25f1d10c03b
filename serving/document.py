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


__all__ = ["ENUM_MARKER", "api_routes", "install", "leaf_routes", "refine", "sectors"]
