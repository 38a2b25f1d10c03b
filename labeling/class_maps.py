"""Class maps of a labelled dataset import: which map (a shipped name, a file, YAML text), per-import
regex overrides, and the check that stops an import before anything is written when the map does not fit.
"""

from __future__ import annotations

import re
from pathlib import Path

from hazardlens.context import Context
from hazardlens.errors import Invalid, NotFound
from hazardlens.formats import (
    ClassMap,
    ImportRecord,
    class_names,
)
from hazardlens.patterns import UserRegex, user_regex
from hazardlens.safeyaml import load_user_yaml
from hazardlens.settings import config_files, find_config_file

_MAP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def resolve_class_map(spec: str | Path | ClassMap) -> ClassMap:
    """A class map from a :class:`ClassMap`, a file path (``configs/class_maps/sfchd.yaml`` also works
    outside the repository: see :func:`~hazardlens.settings.find_config_file`), the name of a map in
    ``configs/class_maps`` (``sfchd`` or ``sfchd.yaml``; ``HAZARDLENS_CONFIG_DIR/class_maps`` wins), or
    the YAML text itself (the API form field accepts the last two, so a name can never reach outside
    that folder)."""
    if isinstance(spec, ClassMap):
        return spec
    if isinstance(spec, Path):
        found = find_config_file(spec)
        if found is not None or len(spec.parts) != 1:
            return ClassMap.load(found or spec)  # a missing path is reported by load
        spec = str(spec)  # a bare name on the command line: a shipped map
    text = spec.strip()
    if "\n" in text or ":" in text:
        # a user's text: bounded, aliases and deep nesting refused (invalid_yaml; hazardlens.safeyaml)
        try:
            data = load_user_yaml(text, "class map")
        except Invalid as exc:
            if (exc.details or {}).get("reason") != "syntax":
                raise
            raise Invalid(exc.message, code="invalid_class_map") from exc
        return ClassMap.from_dict(data, source="class map text")
    if not _MAP_NAME.match(text) or ".." in text:
        raise Invalid(
            f"class map {text!r} is neither YAML text nor the name of a shipped class map", code="invalid_class_map"
        )
    maps = config_files("class_maps")
    stem = text.removesuffix(".yaml").removesuffix(".yml")
    if stem in maps:
        return ClassMap.load(maps[stem])
    raise NotFound(f"no shipped class map {text!r}; shipped: {', '.join(maps) or 'none'}", code="unknown_class_map")


def compile_regex(value: str | None, what: str) -> UserRegex | None:
    """A camera/site regex of an import request, compiled by RE2 (linear time, bounded; see
    :mod:`hazardlens.patterns`): a backtracking pattern must not stall the server."""
    return user_regex(value, what)


def check_class_map(ctx: Context, class_map: ClassMap, records: list[ImportRecord]) -> None:
    """Stop before anything is written when a source name has no mapping or a mapping names a class
    the taxonomy does not have (or has, but not yet approved in legal review)."""
    missing = class_map.unmapped(class_names(records))
    if missing:
        raise Invalid(
            f"{len(missing)} class name(s) in the source have no mapping in "
            f"{class_map.source or 'the class map'}: {', '.join(missing)}; nothing was imported",
            code="unmapped_classes",
            details={"unmapped": missing},
        )
    taxonomy = ctx.taxonomy()
    bad: dict[str, str] = {}
    for key in sorted(class_map.taxonomy_keys):
        try:
            taxonomy.get_class(key)
        except Invalid as exc:
            bad[key] = exc.message
    if bad:
        raise Invalid(
            f"the class map names {len(bad)} class(es) the taxonomy cannot use: "
            f"{'; '.join(bad.values())}; nothing was imported",
            code="unknown_classes",
            details={"classes": bad},
        )
