"""The hazard taxonomy: sectors, key inspection items (重点检查事项) and visible hazard classes.

Every box, annotation, model and finding names a class by its string key, and a confirmed finding
must cite the inspection item and legal basis it rests on, so the taxonomy is validated in full at
load time: a broken taxonomy file stops the process instead of producing findings without a legal
basis.

Provinces may add items and classes (``Taxonomy.with_additions``). The ministry's rule is that each
new item rests on a mandatory clause of a law, regulation or standard and passes the bureau's legal
review (法制审核); so an addition without a legal basis is refused outright, and an addition that is
not yet approved is kept (visible, so reviewers can see it) but inactive, so detectors and labelers
cannot use it.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from hazardlens.errors import Invalid
from hazardlens.settings import Settings, get_settings

SEVERITIES: tuple[str, ...] = ("low", "medium", "high", "critical")
ADDITION_KINDS: tuple[str, ...] = ("item", "class")
ADDITION_STATUSES: tuple[str, ...] = ("pending", "approved", "rejected")

_KEY_RE = re.compile(r"^[a-z][a-z0-9_]*$")
_CODE_RE = re.compile(r"^[A-Z][A-Z0-9]*(?:-[A-Z0-9]+)+$")

_SECTOR_FIELDS = {"key", "name_zh", "name_en"}
_ITEM_FIELDS = {"code", "sector", "title_zh", "title_en", "legal_basis", "active"}
_CLASS_FIELDS = {
    "key",
    "name_zh",
    "name_en",
    "sector",
    "inspection_items",
    "severity",
    "finding_zh",
    "finding_en",
    "is_hazard",
    "legal_basis",
    "active",
}


@dataclass(frozen=True)
class Sector:
    key: str
    name_zh: str
    name_en: str

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "name_zh": self.name_zh, "name_en": self.name_en}


@dataclass(frozen=True)
class InspectionItem:
    """A key inspection item. ``org_code`` is set for a provincial addition; ``status`` is its
    legal-review state (national items are ``approved``)."""

    code: str
    sector: str
    title_zh: str
    title_en: str
    legal_basis: tuple[str, ...]
    active: bool = True
    org_code: str | None = None
    status: str = "approved"

    def to_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "sector": self.sector,
            "title_zh": self.title_zh,
            "title_en": self.title_en,
            "legal_basis": list(self.legal_basis),
            "active": self.active,
            "org_code": self.org_code,
            "status": self.status,
        }


@dataclass(frozen=True)
class HazardClass:
    """A visible class a detector may suggest. ``is_hazard`` is false for context classes (a person,
    a worn helmet, an explosion vent): they help the inspector and the model but are no finding.
    ``legal_basis`` is the class's own citation or, when it has none, that of its items."""

    key: str
    name_zh: str
    name_en: str
    sector: str
    inspection_items: tuple[str, ...]
    severity: str
    finding_zh: str
    is_hazard: bool
    legal_basis: tuple[str, ...] = ()
    finding_en: str | None = None
    active: bool = True
    org_code: str | None = None
    status: str = "approved"

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "name_zh": self.name_zh,
            "name_en": self.name_en,
            "sector": self.sector,
            "inspection_items": list(self.inspection_items),
            "severity": self.severity,
            "finding_zh": self.finding_zh,
            "finding_en": self.finding_en,
            "is_hazard": self.is_hazard,
            "legal_basis": list(self.legal_basis),
            "active": self.active,
            "org_code": self.org_code,
            "status": self.status,
        }


@dataclass(frozen=True)
class _ClassDraft:
    """A class before its legal basis is resolved and its activity decided (both need the items)."""

    cls: HazardClass
    declared_active: bool


class Taxonomy:
    """The effective taxonomy: the shipped file plus any provincial additions. Read-only, so that
    ``version`` (a content hash) always describes what the object holds."""

    def __init__(
        self, release: str, sectors: Iterable[Sector], items: Iterable[InspectionItem], classes: Iterable[HazardClass]
    ) -> None:
        self.release = release
        self.sectors: Mapping[str, Sector] = MappingProxyType({s.key: s for s in sectors})
        self.items: Mapping[str, InspectionItem] = MappingProxyType({i.code: i for i in items})
        self.classes: Mapping[str, HazardClass] = MappingProxyType({c.key: c for c in classes})
        self.version = self._content_hash()

    def _content_hash(self) -> str:
        # Sorted so that reordering the file does not change the version, but any change of content,
        # activity or review status does (models and datasets record the version they were made with).
        body = {
            "release": self.release,
            "sectors": sorted((s.to_dict() for s in self.sectors.values()), key=lambda d: d["key"]),
            "items": sorted((i.to_dict() for i in self.items.values()), key=lambda d: d["code"]),
            "classes": sorted((c.to_dict() for c in self.classes.values()), key=lambda d: d["key"]),
        }
        text = json.dumps(body, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]

    def __repr__(self) -> str:
        return (
            f"Taxonomy(release={self.release!r}, version={self.version!r}, "
            f"items={len(self.items)}, classes={len(self.classes)})"
        )

    def get_class(self, key: str) -> HazardClass:
        """The active class ``key``. Unknown and inactive keys are refused alike, because a box or
        annotation with either must not enter the library or a finding."""
        cls = self.classes.get(key)
        if cls is not None and cls.active:
            return cls
        if cls is not None:
            why = f"review status {cls.status!r}" + (f", organisation {cls.org_code}" if cls.org_code else "")
            raise Invalid(
                f"hazard class {key!r} is not active ({why}); only classes approved in legal "
                f"review (法制审核) can be used",
                code="inactive_class",
            )
        active = self.class_keys()
        close = difflib.get_close_matches(str(key), active, n=5, cutoff=0.5)
        hint = f"; did you mean: {', '.join(close)}?" if close else f"; known classes: {', '.join(active)}"
        raise Invalid(f"unknown hazard class {key!r}{hint}", code="unknown_class")

    def get_item(self, code: str) -> InspectionItem:
        item = self.items.get(code)
        if item is None:
            close = difflib.get_close_matches(str(code), list(self.items), n=5, cutoff=0.5)
            hint = f"; did you mean: {', '.join(close)}?" if close else ""
            raise Invalid(f"unknown inspection item {code!r}{hint}", code="unknown_item")
        return item

    def class_sectors(self, cls: HazardClass) -> set[str]:
        """The sectors a class is relevant to: its own and those of the items it supports (a helmet
        matters to a confined-space check; standing water to steel and aluminium casting alike)."""
        return {cls.sector} | {self.items[c].sector for c in cls.inspection_items if c in self.items}

    def active_classes(self, sector: str | None = None) -> list[HazardClass]:
        """Active classes in file order; with ``sector``, those relevant to it (see class_sectors)."""
        if sector is not None and sector not in self.sectors:
            raise Invalid(f"unknown sector {sector!r}; known sectors: {', '.join(self.sectors)}", code="unknown_sector")
        return [c for c in self.classes.values() if c.active and (sector is None or sector in self.class_sectors(c))]

    def class_keys(self) -> list[str]:
        """Keys of the active classes, in file order: the vocabulary labels and models may use."""
        return [c.key for c in self.classes.values() if c.active]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form for ``GET /v1/taxonomy``; includes inactive entries, flagged, so that
        reviewers and provincial systems see pending additions too."""
        return {
            "version": self.version,
            "release": self.release,
            "severities": list(SEVERITIES),
            "sectors": [s.to_dict() for s in self.sectors.values()],
            "items": [i.to_dict() for i in self.items.values()],
            "classes": [c.to_dict() for c in self.classes.values()],
        }

    def with_additions(self, additions: list[dict[str, Any]]) -> Taxonomy:
        """A new taxonomy with provincial additions. Each addition is
        ``{"kind": "item"|"class", "org_code": str, "status": "pending"|"approved"|"rejected",
        "payload": {...}}`` (other keys, e.g. a database id, are ignored). Additions are included
        whatever their status but only approved ones are active; a class is active only when all
        its items are too, so approving a class cannot bring an unreviewed item into use. Every
        addition must carry its own legal basis. Raises Invalid naming each offending addition."""
        errors: list[str] = []
        new_items: list[InspectionItem] = []
        new_classes: list[_ClassDraft] = []
        for index, addition in enumerate(additions):
            parsed = _parse_addition(addition, index, errors)
            if isinstance(parsed, InspectionItem):
                new_items.append(parsed)
            elif isinstance(parsed, _ClassDraft):
                new_classes.append(parsed)
        existing = [_ClassDraft(c, c.active) for c in self.classes.values()]
        return _assemble(
            self.release,
            list(self.sectors.values()),
            [*self.items.values(), *new_items],
            existing,
            new_classes,
            errors,
            source="additions",
        )


def validate_addition(taxonomy: Taxonomy, addition: dict[str, Any]) -> None:
    """Check one provincial addition against ``taxonomy`` before it is stored; raises Invalid. A
    class that cites a new item must be checked against a taxonomy that already holds that item."""
    taxonomy.with_additions([addition])


def load_taxonomy(path: str | Path) -> Taxonomy:
    """Read and validate a taxonomy file; every problem is reported at once, naming its entry."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise Invalid(f"cannot read taxonomy file {path}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise Invalid(f"taxonomy file {path} is not valid YAML: {exc}") from exc
    return taxonomy_from_dict(raw, source=str(path))


def taxonomy_from_dict(raw: Any, source: str = "taxonomy") -> Taxonomy:
    """Build and validate a taxonomy from its parsed YAML form."""
    if not isinstance(raw, dict):
        raise Invalid(f"{source}: expected a mapping with version, sectors, items and classes")
    errors: list[str] = []
    unknown = set(raw) - {"version", "sectors", "items", "classes"}
    if unknown:
        errors.append(f"unknown top-level field(s): {', '.join(sorted(unknown))}")
    release = raw.get("version")
    if not isinstance(release, str | int | float) or not str(release).strip():
        errors.append("'version' must be a non-empty string")
        release = ""
    sectors = [
        s
        for i, r in enumerate(_list(raw, "sectors", errors))
        if (s := _parse_sector(r, f"sectors[{i}]", errors)) is not None
    ]
    items = [
        it
        for i, r in enumerate(_list(raw, "items", errors))
        if (it := _parse_item(r, f"items[{i}]", errors)) is not None
    ]
    classes = [
        c
        for i, r in enumerate(_list(raw, "classes", errors))
        if (c := _parse_class(r, f"classes[{i}]", errors)) is not None
    ]
    return _assemble(str(release).strip(), sectors, items, [], classes, errors, source=source)


@lru_cache(maxsize=4)
def _load_cached(path: str, mtime_ns: int) -> Taxonomy:
    return load_taxonomy(path)


def default_taxonomy(settings: Settings | None = None) -> Taxonomy:
    """The configured national taxonomy, re-read only when its file changes (the API serves it on
    every request)."""
    path = Path((settings or get_settings()).taxonomy_path).resolve()
    try:
        mtime = path.stat().st_mtime_ns
    except OSError as exc:
        raise Invalid(f"cannot read taxonomy file {path}: {exc}") from exc
    return _load_cached(str(path), mtime)


# ---- parsing and validation -------------------------------------------------------------------


def _list(raw: dict[str, Any], name: str, errors: list[str]) -> list[Any]:
    value = raw.get(name)
    if not isinstance(value, list) or not value:
        errors.append(f"'{name}' must be a non-empty list")
        return []
    return value


def _label(raw: Any, where: str, ident: str) -> str:
    if isinstance(raw, dict) and isinstance(raw.get(ident), str) and raw[ident]:
        return f"{where} ({raw[ident]})"
    return where


def _text(raw: dict[str, Any], name: str, where: str, errors: list[str], *, required: bool = True) -> str:
    value = raw.get(name)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value.strip()):
        errors.append(f"{where}: '{name}' must be a non-empty string")
        return ""
    return value.strip()


def _legal_basis(raw: dict[str, Any], where: str, errors: list[str], *, required: bool) -> tuple[str, ...]:
    value = raw.get("legal_basis")
    if value is None or value == [] or value == "":
        if required:
            errors.append(
                f"{where}: 'legal_basis' is missing; every item must cite the mandatory clause of "
                f"a law, regulation or standard it rests on"
            )
        return ()
    entries = [value] if isinstance(value, str) else value
    if not isinstance(entries, list) or not all(isinstance(e, str) and e.strip() for e in entries):
        errors.append(f"{where}: 'legal_basis' must be a non-empty string or a list of non-empty strings")
        return ()
    return tuple(dict.fromkeys(e.strip() for e in entries))


def _check_fields(raw: dict[str, Any], allowed: set[str], where: str, errors: list[str]) -> None:
    # Unknown fields are refused: a misspelt 'legal_basis' or 'severity' must not pass silently.
    unknown = set(raw) - allowed
    if unknown:
        errors.append(f"{where}: unknown field(s) {', '.join(sorted(map(str, unknown)))}")


def _active(raw: dict[str, Any], where: str, errors: list[str]) -> bool:
    value = raw.get("active", True)
    if not isinstance(value, bool):
        errors.append(f"{where}: 'active' must be true or false")
        return True
    return value


def _parse_sector(raw: Any, where: str, errors: list[str]) -> Sector | None:
    if not isinstance(raw, dict):
        errors.append(f"{where}: expected a mapping")
        return None
    where = _label(raw, where, "key")
    _check_fields(raw, _SECTOR_FIELDS, where, errors)
    key = _text(raw, "key", where, errors)
    if key and not _KEY_RE.match(key):
        errors.append(f"{where}: sector key must be ascii snake_case")
    return Sector(key, _text(raw, "name_zh", where, errors), _text(raw, "name_en", where, errors))


def _parse_item(
    raw: Any, where: str, errors: list[str], *, org_code: str | None = None, status: str = "approved"
) -> InspectionItem | None:
    if not isinstance(raw, dict):
        errors.append(f"{where}: expected a mapping")
        return None
    where = _label(raw, where, "code")
    _check_fields(raw, _ITEM_FIELDS, where, errors)
    code = _text(raw, "code", where, errors)
    if code and not _CODE_RE.match(code):
        errors.append(f"{where}: item code must look like 'GT-01' (upper-case letters/digits joined by '-')")
    return InspectionItem(
        code=code,
        sector=_text(raw, "sector", where, errors),
        title_zh=_text(raw, "title_zh", where, errors),
        title_en=_text(raw, "title_en", where, errors),
        legal_basis=_legal_basis(raw, where, errors, required=True),
        active=_active(raw, where, errors) and status == "approved",
        org_code=org_code,
        status=status,
    )


def _parse_class(
    raw: Any,
    where: str,
    errors: list[str],
    *,
    org_code: str | None = None,
    status: str = "approved",
    require_basis: bool = False,
) -> _ClassDraft | None:
    if not isinstance(raw, dict):
        errors.append(f"{where}: expected a mapping")
        return None
    where = _label(raw, where, "key")
    _check_fields(raw, _CLASS_FIELDS, where, errors)
    key = _text(raw, "key", where, errors)
    if key and not _KEY_RE.match(key):
        errors.append(f"{where}: class key must be ascii snake_case (a-z, 0-9, _), starting with a letter")
    items = raw.get("inspection_items", [])
    if not isinstance(items, list) or not all(isinstance(c, str) and c for c in items):
        errors.append(f"{where}: 'inspection_items' must be a list of item codes")
        items = []
    if len(set(items)) != len(items):
        errors.append(f"{where}: 'inspection_items' lists an item twice")
    severity = raw.get("severity")
    if severity not in SEVERITIES:
        errors.append(f"{where}: severity {severity!r} is not one of {', '.join(SEVERITIES)}")
    is_hazard = raw.get("is_hazard")
    if not isinstance(is_hazard, bool):
        errors.append(f"{where}: 'is_hazard' must be true or false")
        is_hazard = True
    finding_en = raw.get("finding_en")
    if finding_en is not None and not isinstance(finding_en, str):
        errors.append(f"{where}: 'finding_en' must be a string")
        finding_en = None
    cls = HazardClass(
        key=key,
        name_zh=_text(raw, "name_zh", where, errors),
        name_en=_text(raw, "name_en", where, errors),
        sector=_text(raw, "sector", where, errors),
        inspection_items=tuple(items),
        severity=str(severity),
        finding_zh=_text(raw, "finding_zh", where, errors, required=is_hazard),
        is_hazard=is_hazard,
        legal_basis=_legal_basis(raw, where, errors, required=require_basis),
        finding_en=(finding_en.strip() or None) if finding_en else None,
        org_code=org_code,
        status=status,
    )
    return _ClassDraft(cls, _active(raw, where, errors) and status == "approved")


def _parse_addition(addition: Any, index: int, errors: list[str]) -> InspectionItem | _ClassDraft | None:
    where = f"addition[{index}]"
    if not isinstance(addition, dict):
        errors.append(f"{where}: expected a mapping with kind, org_code, status and payload")
        return None
    kind, org_code, status = addition.get("kind"), addition.get("org_code"), addition.get("status")
    payload = addition.get("payload")
    bad = len(errors)
    if kind not in ADDITION_KINDS:
        errors.append(f"{where}: kind {kind!r} is not one of {', '.join(ADDITION_KINDS)}")
    if not isinstance(org_code, str) or not org_code.strip():
        errors.append(f"{where}: 'org_code' (the proposing organisation) is required")
    if status not in ADDITION_STATUSES:
        errors.append(f"{where}: status {status!r} is not one of {', '.join(ADDITION_STATUSES)}")
    if not isinstance(payload, dict):
        errors.append(f"{where}: 'payload' must be a mapping")
    if len(errors) > bad:
        return None
    assert isinstance(payload, dict) and isinstance(org_code, str) and isinstance(status, str)
    if "active" in payload:  # activity follows legal review, never the proposer's say-so
        errors.append(f"{where}: 'active' cannot be set on an addition; it follows its review status")
    if kind == "item":
        return _parse_item(payload, f"{where} item", errors, org_code=org_code.strip(), status=status)
    return _parse_class(payload, f"{where} class", errors, org_code=org_code.strip(), status=status, require_basis=True)


def _assemble(
    release: str,
    sectors: list[Sector],
    items: list[InspectionItem],
    existing: list[_ClassDraft],
    new: list[_ClassDraft],
    errors: list[str],
    *,
    source: str,
) -> Taxonomy:
    """Cross-entry checks (uniqueness, references, legal basis) and the final resolution."""
    sector_keys = _unique((s.key for s in sectors), "sector key", errors)
    item_codes = _unique((i.code for i in items), "item code", errors)
    _unique((d.cls.key for d in [*existing, *new]), "class key", errors)
    by_code = {i.code: i for i in items}
    for item in items:
        if item.sector and item.sector not in sector_keys:
            errors.append(f"item {item.code}: unknown sector {item.sector!r}; known: {', '.join(sector_keys)}")
    classes: list[HazardClass] = [draft.cls for draft in existing]
    for draft in new:
        cls = draft.cls
        where = f"class {cls.key or '?'}"
        if cls.sector and cls.sector not in sector_keys:
            errors.append(f"{where}: unknown sector {cls.sector!r}; known: {', '.join(sector_keys)}")
        missing = [c for c in cls.inspection_items if c not in item_codes]
        if missing:
            errors.append(f"{where}: unknown inspection item(s) {', '.join(missing)}")
        basis = cls.legal_basis or tuple(
            dict.fromkeys(b for c in cls.inspection_items if c in by_code for b in by_code[c].legal_basis)
        )
        if cls.is_hazard and not basis:
            errors.append(f"{where}: a hazard class needs a legal basis, its own or through its inspection items")
        active = draft.declared_active and all(by_code[c].active for c in cls.inspection_items if c in by_code)
        classes.append(replace(cls, legal_basis=basis, active=active))
    if errors:
        shown = "; ".join(errors[:20]) + (f"; and {len(errors) - 20} more" if len(errors) > 20 else "")
        raise Invalid(f"{source}: {len(errors)} problem(s): {shown}", code="invalid_taxonomy", details=list(errors))
    return Taxonomy(release, sectors, items, classes)


def _unique(values: Iterable[str], what: str, errors: list[str]) -> list[str]:
    seen: list[str] = []
    for value in values:
        if not value:
            continue
        if value in seen:
            errors.append(f"duplicate {what} {value!r}")
        else:
            seen.append(value)
    return seen


__all__ = [
    "ADDITION_KINDS",
    "ADDITION_STATUSES",
    "SEVERITIES",
    "HazardClass",
    "InspectionItem",
    "Sector",
    "Taxonomy",
    "default_taxonomy",
    "load_taxonomy",
    "taxonomy_from_dict",
    "validate_addition",
]
