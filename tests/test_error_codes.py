"""The error code registry (hazardlens.error_codes) is complete: every code the source raises or
answers with is registered, with the status it is raised with, and nothing registered is unused."""

from __future__ import annotations

import ast
from pathlib import Path

from hazardlens.error_codes import ERROR_CODES, markdown

ROOT = Path(__file__).resolve().parent.parent
PARTS = ("core", "formats", "datasets", "labeling", "training", "models", "federation", "serving", "cli")
#: HazardError and its subclasses in hazardlens.errors: name -> (default status, default code).
BASE = {
    "HazardError": (400, "bad_request"),
    "NotFound": (404, "not_found"),
    "Conflict": (409, "conflict"),
    "Invalid": (422, "invalid"),
    "Unauthorized": (401, "unauthorized"),
    "Forbidden": (403, "forbidden"),
    "TooLarge": (413, "too_large"),
    "UnsupportedMedia": (415, "unsupported_media_type"),
}


def _sources() -> list[tuple[Path, ast.Module]]:
    files = [p for part in PARTS for p in (ROOT / part).rglob("*.py") if "migrations" not in p.parts]
    return [(p, ast.parse(p.read_text(encoding="utf-8"))) for p in sorted(files)]


def _name(func: ast.expr) -> str | None:
    return func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None


def _const(node: ast.expr | None) -> object:
    return node.value if isinstance(node, ast.Constant) else None


def _error_classes(trees: list[tuple[Path, ast.Module]]) -> dict[str, tuple[int, str]]:
    """BASE plus the subclasses defined anywhere, with their class-level status/code."""
    classes = dict(BASE)
    for _, tree in trees:
        for node in ast.walk(tree):
            if not isinstance(node, ast.ClassDef):
                continue
            parent = next((classes[b] for b in (_name(b) for b in node.bases) if b in classes), None)
            if parent is None or node.name in BASE:
                continue
            status, code = parent
            for stmt in node.body:
                if isinstance(stmt, ast.Assign):
                    targets = [
                        n.id
                        for t in stmt.targets
                        for n in (t.elts if isinstance(t, ast.Tuple) else [t])
                        if isinstance(n, ast.Name)
                    ]
                    values = stmt.value.elts if isinstance(stmt.value, ast.Tuple) else [stmt.value]
                    for target, value in zip(targets, values, strict=False):
                        if target == "status":
                            status = _const(value)  # type: ignore[assignment]
                        elif target == "code":
                            code = _const(value)  # type: ignore[assignment]
            classes[node.name] = (status, code)
    return classes


def used_codes() -> list[tuple[str, int | None, str]]:
    """(code, status, where) of every literal code the source raises or answers with (status None:
    answered with any status)."""
    trees = _sources()
    classes = _error_classes(trees)
    found = [(code, status, f"class {name}") for name, (status, code) in classes.items()]
    for path, tree in trees:
        rel = path.relative_to(ROOT)
        for node in ast.walk(tree):
            where = f"{rel}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Call) and _name(node.func) in classes:
                kw = {k.arg: k.value for k in node.keywords}
                default_status, default_code = classes[_name(node.func)]
                code = _const(kw["code"]) if "code" in kw else default_code
                status = _const(kw["status"]) if "status" in kw else default_status
                if isinstance(code, str):
                    found.append((code, status, where))
            elif isinstance(node, ast.Call) and _name(node.func) in ("error_response", "send_error"):
                args = node.args[1:] if _name(node.func) == "send_error" else node.args
                if len(args) >= 2 and isinstance(_const(args[0]), int) and isinstance(_const(args[1]), str):
                    found.append((_const(args[1]), _const(args[0]), where))
            elif (
                isinstance(node, ast.Tuple)
                and len(node.elts) == 3
                and isinstance(_const(node.elts[0]), int)
                and isinstance(_const(node.elts[1]), str)
                and 400 <= _const(node.elts[0]) < 600
            ):
                found.append((_const(node.elts[1]), _const(node.elts[0]), where))  # (status, code, message)
            elif isinstance(node, ast.Assign) and any(_name(t) == "_HTTP_CODES" for t in node.targets):
                found += [
                    (_const(v), _const(k), where) for k, v in zip(node.value.keys, node.value.values, strict=True)
                ]
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "get"
                and len(node.args) == 2
                and _name(node.func.value) == "_HTTP_CODES"
            ):
                found.append((_const(node.args[1]), None, where))  # the fallback code, for any status
            elif isinstance(node, ast.Assign) and any(_name(t) == "FIELD_ERROR_CODES" for t in node.targets):
                found += [(_const(v), 422, where) for v in node.value.values]
    return found


def test_every_code_raised_is_registered_with_its_status() -> None:
    missing = sorted({f"{code} ({where})" for code, _, where in used_codes() if code not in ERROR_CODES})
    assert not missing, f"error codes missing from hazardlens.error_codes.ERROR_CODES: {', '.join(missing)}"
    wrong = sorted(
        {
            f"{code}: raised with {status} at {where}, registered as {ERROR_CODES[code].statuses}"
            for code, status, where in used_codes()
            if status is not None and status not in ERROR_CODES[code].statuses
        }
    )
    assert not wrong, "\n".join(wrong)


def test_every_registered_code_is_used() -> None:
    used = {code for code, _, _ in used_codes()}
    assert sorted(set(ERROR_CODES) - used) == []


def test_the_scan_sees_the_raises() -> None:
    codes = {code for code, _, _ in used_codes()}
    # one from each kind of place: a raise, a class default, an HTTP handler, the ASGI limits, the core
    assert {"unknown_sector", "model_unavailable", "out_of_range", "body_timeout", "invalid_date"} <= codes


def test_the_published_table_is_current() -> None:
    assert (ROOT / "docs" / "error-codes.md").read_text(encoding="utf-8") == markdown()
