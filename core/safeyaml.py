"""YAML that comes from users (class maps sent to the API, ``data.yaml`` inside an uploaded dataset).

``yaml.safe_load`` constructs no objects, but it still expands aliases: an 824-byte ``data.yaml``
nesting aliases six deep answered with a 9.8 MB body, nine deep would need gigabytes (issue 13,
item 2). A user's YAML is therefore bounded in bytes before it is parsed, and parsed by a loader
that refuses alias events outright and nesting deeper than a class map or ``data.yaml`` ever needs.
What the caller then takes from the data (class names, mapping entries) it checks itself to be
short scalars: see :func:`short_scalar`.

Files the project ships (taxonomy, rules, training configs) are read with ``yaml.safe_load``; they
are the operator's, not a request's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from yaml.composer import ComposerError
from yaml.error import Mark
from yaml.nodes import Node

from hazardlens.errors import Invalid

#: Largest YAML text a user may hand in (a class map of a thousand classes is about 40 KB).
MAX_YAML_BYTES = 256 * 1024
#: Deepest nesting of mappings/sequences (a class map is three deep, data.yaml two).
MAX_YAML_DEPTH = 8
#: Longest class name or mapping key/value taken from a user's YAML.
MAX_NAME_CHARS = 200


class _Refused(ComposerError):
    """Valid YAML this loader will not compose (an alias, too deep)."""


class NoAliasLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses aliases (``*name``) and deep nesting while composing, so an
    alias bomb is refused before anything is expanded."""

    _depth = 0

    def _mark(self) -> Mark | None:
        event = self.peek_event()  # type: ignore[no-untyped-call]
        return getattr(event, "start_mark", None)

    def compose_node(self, parent: Node | None, index: int) -> Node | None:
        if self.check_event(yaml.AliasEvent):
            raise _Refused(None, None, "aliases (*name) are not accepted", self._mark())
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise _Refused(None, None, f"nested deeper than {MAX_YAML_DEPTH} levels", self._mark())
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def load_user_yaml(text: str | bytes, what: str) -> Any:
    """The plain data of a user's YAML text; ``Invalid`` (``invalid_yaml``) when it is too large,
    uses an alias or nests too deep (``details["reason"]`` ``"refused"``) or does not parse
    (``"syntax"``)."""
    size = len(text.encode("utf-8")) if isinstance(text, str) else len(text)
    if size > MAX_YAML_BYTES:
        raise Invalid(
            f"{what}: YAML of {size} bytes is over the {MAX_YAML_BYTES}-byte limit",
            code="invalid_yaml",
            details={"reason": "refused"},
        )
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise Invalid(f"{what}: not UTF-8 text ({exc})", code="invalid_yaml", details={"reason": "syntax"}) from exc
    loader: NoAliasLoader | None = None
    try:
        # Inside the try: the reader refuses control characters (ReaderError) already while it is built
        # (found by the fuzz pass: a data.yaml with a \x08 in it was an internal error).
        loader = NoAliasLoader(text)
        return loader.get_single_data()
    except _Refused as exc:
        raise Invalid(f"{what}: YAML refused ({exc})", code="invalid_yaml", details={"reason": "refused"}) from exc
    except (yaml.YAMLError, RecursionError) as exc:
        raise Invalid(f"{what}: not valid YAML ({exc})", code="invalid_yaml", details={"reason": "syntax"}) from exc
    finally:
        if loader is not None:
            loader.dispose()


def load_user_yaml_file(path: Path, what: str | None = None) -> Any:
    """:func:`load_user_yaml` of a file, its size checked before it is read."""
    what = what or path.name
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise Invalid(f"{what}: not readable ({exc})", code="invalid_yaml", details={"reason": "syntax"}) from exc
    if size > MAX_YAML_BYTES:
        raise Invalid(
            f"{what}: YAML of {size} bytes is over the {MAX_YAML_BYTES}-byte limit",
            code="invalid_yaml",
            details={"reason": "refused"},
        )
    try:
        data = path.read_bytes()[: MAX_YAML_BYTES + 1]
    except OSError as exc:
        raise Invalid(f"{what}: not readable ({exc})", code="invalid_yaml", details={"reason": "syntax"}) from exc
    return load_user_yaml(data, what)


def short_scalar(value: object) -> str | None:
    """``value`` as a stripped string when it is a scalar (str, int, float, bool) of at most
    :data:`MAX_NAME_CHARS` characters, else None: class names and mapping entries are never lists,
    mappings or essays."""
    if isinstance(value, str | int | float | bool):
        text = str(value).strip()
        if len(text) <= MAX_NAME_CHARS:
            return text
    return None
