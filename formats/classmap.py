"""Foreign class names -> taxonomy keys, plus camera/site ids taken from file names.

Each source names its classes its own way (``hat``, ``helmet``, ``安全帽``...). A class map is the
curator's explicit statement of what each foreign name means, so that nothing is imported under a
guessed class: the importer calls :meth:`ClassMap.unmapped` first and stops, before writing
anything, if a name has no entry.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from hazardlens.errors import Invalid, NotFound
from hazardlens.patterns import UserRegex, user_regex
from hazardlens.safeyaml import MAX_NAME_CHARS, load_user_yaml_file, short_scalar

from .records import ImportRecord

#: Most entries a class map may have.
MAX_CLASSES = 2000

#: The mapping target that drops a foreign class (blurred people, a format's unused parent class).
IGNORE = "ignore"


def extract_group(file_name: str, regex: str | UserRegex | None) -> str | None:
    """The id a regex finds in a file name: its capture groups joined by ``.`` (so
    ``192_168_2_22_x.jpg`` with four number groups gives ``192.168.2.22``), or the whole match
    when it has no groups. Searched, not anchored, so a name inside a folder path still matches.
    Run by RE2 (linear time; :mod:`hazardlens.patterns`): class maps and regexes come from users."""
    if regex is None:
        return None
    pattern = UserRegex(regex) if isinstance(regex, str) else regex
    found = pattern.search(file_name.replace("\\", "/"))
    if found is None:
        return None
    whole, groups = found
    value = ".".join(g for g in groups if g) if pattern.groups else whole
    return value or None


def class_names(records: Iterable[ImportRecord]) -> list[str]:
    """Every source class name that occurs in the records, sorted; the input to ``unmapped``."""
    return sorted({b.class_key for r in records for b in r.boxes})


def _compile(value: Any, key: str, source: str) -> UserRegex | None:
    return user_regex(value, f"{source}: {key}")


@dataclass(frozen=True)
class ClassMap:
    mapping: dict[str, str]
    camera_regex: UserRegex | None = None
    site_regex: UserRegex | None = None
    source: str = field(default="", compare=False)
    #: Taxonomy classes this source does not (fully) label, e.g. ``person`` on a set that boxes heads
    #: and helmets but only a few of the people. Revisions imported with this map say so, and
    #: training masks those classes on these images instead of learning "nothing here".
    unlabeled_classes: tuple[str, ...] = ()

    @classmethod
    def load(cls, path: Path | str) -> ClassMap:
        path = Path(path)
        if not path.exists():
            raise NotFound(f"{path}: no such class map")
        # bounded, aliases refused: a class map file may be a user's (CLI --class-map PATH)
        return cls.from_dict(load_user_yaml_file(path, str(path)), source=str(path))

    @classmethod
    def from_dict(cls, data: Any, source: str = "class map") -> ClassMap:
        if not isinstance(data, dict) or not isinstance(data.get("mapping"), dict) or not data["mapping"]:
            raise Invalid(f"{source}: expected 'mapping: {{foreign_name: taxonomy_key | ignore}}'")
        unknown_keys = set(data) - {"mapping", "camera_regex", "site_regex", "unlabeled_classes"}
        if unknown_keys:
            raise Invalid(f"{source}: unknown keys {sorted(unknown_keys)}")
        if len(data["mapping"]) > MAX_CLASSES:
            raise Invalid(f"{source}: more than {MAX_CLASSES} mapping entries")
        mapping: dict[str, str] = {}
        for foreign, target in data["mapping"].items():
            # YAML turns `0: fire` into an int key; YOLO sources without names use "0" as the name.
            name = short_scalar(foreign)
            if not name:
                raise Invalid(f"{source}: mapping keys must be class names of at most {MAX_NAME_CHARS} characters")
            if not isinstance(target, str) or not target.strip() or len(target) > MAX_NAME_CHARS:
                raise Invalid(f"{source}: {name!r} must map to a taxonomy key or '{IGNORE}'")
            mapping[name] = target.strip()
        unlabeled = data.get("unlabeled_classes") or []
        if (
            not isinstance(unlabeled, list)
            or len(unlabeled) > 100
            or not all(isinstance(k, str) and k.strip() and k != IGNORE and len(k) <= MAX_NAME_CHARS for k in unlabeled)
        ):
            raise Invalid(f"{source}: unlabeled_classes must be a list of taxonomy class keys")
        return cls(
            mapping,
            _compile(data.get("camera_regex"), "camera_regex", source),
            _compile(data.get("site_regex"), "site_regex", source),
            source,
            tuple(sorted({k.strip() for k in unlabeled})),
        )

    @property
    def taxonomy_keys(self) -> set[str]:
        """Targets the importer must find in the taxonomy before it writes anything."""
        return {v for v in self.mapping.values() if v != IGNORE} | set(self.unlabeled_classes)

    def unmapped(self, names: Iterable[str]) -> list[str]:
        return sorted({n for n in names if n not in self.mapping})

    def apply(self, records: Iterable[ImportRecord]) -> list[ImportRecord]:
        """New records with taxonomy keys and camera/site ids; ignored classes dropped (and counted
        on the record, so an image left without boxes is not mistaken for a negative)."""
        records = list(records)
        missing = self.unmapped(class_names(records))
        if missing:
            raise Invalid(
                f"classes without a mapping in {self.source or 'the class map'}: {', '.join(missing)}",
                details={"unmapped": missing},
            )
        out: list[ImportRecord] = []
        for record in records:
            boxes = [
                replace(b, class_key=self.mapping[b.class_key])
                for b in record.boxes
                if self.mapping[b.class_key] != IGNORE
            ]
            ignored = len(record.boxes) - len(boxes)
            problems = list(record.problems)
            if ignored and not boxes:
                problems.append(f"all {ignored} boxes are of ignored classes; not a verified negative")
            out.append(
                replace(
                    record,
                    boxes=boxes,
                    ignored_boxes=record.ignored_boxes + ignored,
                    problems=problems,
                    camera_id=record.camera_id or extract_group(record.file_name, self.camera_regex),
                    site_id=record.site_id or extract_group(record.file_name, self.site_regex),
                )
            )
        return out
