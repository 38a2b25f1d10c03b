"""Dataset versions: immutable, content-addressed manifests of approved labels.

A model is only as trustworthy as the record of what it was trained on. A version therefore holds
everything training and evaluation read (sample ids, SHA-256 of the bytes, the approved annotation
revision and its boxes, image sizes, the class list and taxonomy version, the group and split of
every sample) and nothing they would have to look up later, so that later label corrections never
change a version that a model card cites.

The version id is the SHA-256 of the canonical JSON of that content (no timestamps, no database
ids of the version itself): the same inputs give the same id on any machine, creating it again
returns the existing version, and :func:`load_manifest` can prove that a manifest is unaltered.

Splits are by group (camera, site or enterprise; else the near-duplicate group; else the image),
because frames of one fixed camera are near-duplicates and a split that puts them on both sides
measures memory, not detection. Near-duplicate groups are merged into those groups for the same
reason, and a check counts the near-duplicate pairs that still straddle two splits (goal: zero).

Versions belong to the organisation that made them (``org_code`` in the content): they are made
from what that organisation may see, and only its users list and read them.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from hazardlens.audit import record
from hazardlens.auth import Principal
from hazardlens.context import Context
from hazardlens.contracts.datasets import DatasetVersionPublic
from hazardlens.contracts.filters import SampleFilter
from hazardlens.datasets.search import apply_filters
from hazardlens.datasets.splits import SPLITS, SplitItem, assign_splits, parse_ratios
from hazardlens.datasets.tenancy import visible_samples
from hazardlens.dates import iso
from hazardlens.errors import Conflict, Invalid, NotFound
from hazardlens.orm import AnnotationRevision, DatasetItem, DatasetVersion, Sample, User
from hazardlens.taxonomy import Taxonomy

MANIFEST_FORMAT = "hazardlens.dataset/1"
GROUP_BY = ("camera", "site", "enterprise")
GroupBy = Literal["camera", "site", "enterprise"]
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_ORDINAL_RE = re.compile(r"^v?(\d{1,5})$")
_PREFIX_RE = re.compile(r"^[0-9a-f]{4,64}$")
_GROUP_COLUMN = {"camera": "camera_id", "site": "site_id", "enterprise": "enterprise_id"}
MAX_PAIR_EXAMPLES = 20


def manifest_key(name: str, version_id: str) -> str:
    return f"datasets/{name}/{version_id}.json"


def canonical_json(content: Mapping[str, Any]) -> bytes:
    """The one serialisation the id is computed over: sorted keys, no spaces, UTF-8."""
    return json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode(
        "utf-8"
    )


def content_id(content: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical_json(content)).hexdigest()


def _check_name(name: str) -> str:
    name = (name or "").strip()
    if not _NAME_RE.match(name):
        raise Invalid(
            f"dataset name {name!r} must be 1-100 letters, digits, '.', '_' or '-', starting with a "
            f"letter or digit (it becomes part of storage keys and NAME@VERSION references)",
            code="invalid_name",
        )
    return name


def filter_params(filters: SampleFilter | None) -> dict[str, Any]:
    """The filter as it goes into the manifest: only the fields set, dates as ISO text."""
    return filters.params() if filters is not None else {}


def filter_from_params(params: Mapping[str, Any] | SampleFilter | None) -> SampleFilter:
    """The one sample filter from plain values (API body, CLI options); see SampleFilter.parse."""
    return SampleFilter.parse(params)


# --- grouping and the near-duplicate check ----------------------------------------------------------


def group_key(sample: Sample, group_by: str, dup_names: dict[int, str] | None = None) -> str:
    """The sample's camera/site/enterprise, else its near-duplicate group, else the image itself.

    A near-duplicate group is named by the smallest SHA-256 among its members (``dup_names``), not by
    a database id, so the same images give the same split on any installation.
    """
    value = getattr(sample, _GROUP_COLUMN[group_by])
    if value:
        return str(value)
    if sample.dup_group is not None:
        return f"dup:{(dup_names or {}).get(sample.dup_group, sample.dup_group)}"
    return f"sample:{sample.sha256}"


def dup_group_names(samples: Sequence[Sample]) -> dict[int, str]:
    names: dict[int, str] = {}
    for s in samples:
        if s.dup_group is not None and (s.dup_group not in names or s.sha256 < names[s.dup_group]):
            names[s.dup_group] = s.sha256
    return names


def _merge_groups(keys: Sequence[str], dup_groups: Sequence[str | None]) -> list[str]:
    """Split units: groups that share a near-duplicate cluster are merged (union-find), so a
    cluster that spans two cameras still lands on one side. Each unit is named by its smallest key."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for key, dup in zip(keys, dup_groups, strict=True):
        a = find(key)
        if dup is not None:
            b = find(f"dup:{dup}")
            if a != b:
                lo, hi = sorted((a, b))
                parent[hi] = lo
    return [find(k) for k in keys]


def cross_split_near_duplicates(
    phashes: Sequence[int],
    splits: Sequence[str],
    ids: Sequence[int],
    max_distance: int,
    examples: int = MAX_PAIR_EXAMPLES,
) -> dict[str, Any]:
    """Pairs of samples in different splits whose perceptual hashes are within ``max_distance``
    bits. Blockwise over a uint64 matrix: 10,000 samples take about a second."""
    n = len(phashes)
    arr = np.array([h & 0xFFFFFFFFFFFFFFFF for h in phashes], dtype=np.uint64)
    split_codes = np.array([SPLITS.index(s) for s in splits], dtype=np.int8)
    count = 0
    found: list[tuple[int, int, int]] = []
    block = max(1, min(1024, 4_000_000 // max(n, 1)))  # bounds the block matrix to ~32 MB
    for start in range(0, n, block):
        rows = arr[start : start + block]
        dist = np.bitwise_count(rows[:, None] ^ arr[None, start:])  # only pairs (i, j >= start)
        i_idx, j_rel = np.nonzero(dist <= max_distance)
        i_abs, j_abs = i_idx + start, j_rel + start
        keep = (j_abs > i_abs) & (split_codes[i_abs] != split_codes[j_abs])
        count += int(keep.sum())
        if len(found) < examples:
            for i, j in zip(i_abs[keep][:examples], j_abs[keep][:examples], strict=True):
                found.append((int(i), int(j), int(dist[i - start, j - start])))
    found.sort(key=lambda t: (t[2], ids[t[0]], ids[t[1]]))
    return {
        "max_distance": max_distance,
        "cross_split_pairs": count,
        "examples": [
            {"a": ids[i], "b": ids[j], "distance": d, "splits": [splits[i], splits[j]]} for i, j, d in found[:examples]
        ],
    }


# --- statistics -----------------------------------------------------------------------------------


def split_stats(items: Sequence[Mapping[str, Any]], classes: Sequence[str]) -> dict[str, Any]:
    """Images, instances, negatives and groups per split, and images/instances per class and split."""
    per_split: dict[str, dict[str, Any]] = {}
    per_class: dict[str, dict[str, dict[str, int]]] = {c: {} for c in classes}
    groups: dict[str, set[str]] = defaultdict(set)
    for it in items:
        split = it["split"]
        s = per_split.setdefault(split, {"images": 0, "instances": 0, "negatives": 0, "groups": 0})
        s["images"] += 1
        s["instances"] += len(it["boxes"])
        s["negatives"] += not it["boxes"]
        groups[split].add(it["group"])
        counts = Counter(b["class_key"] for b in it["boxes"])
        for cls, n in counts.items():
            entry = per_class.setdefault(cls, {}).setdefault(split, {"images": 0, "instances": 0})
            entry["images"] += 1
            entry["instances"] += n
    for split, s in per_split.items():
        s["groups"] = len(groups[split])
    ordered = {s: per_split[s] for s in SPLITS if s in per_split}
    return {
        "images": len(items),
        "instances": sum(len(it["boxes"]) for it in items),
        "splits": ordered,
        "classes": {c: {s: v[s] for s in SPLITS if s in v} for c, v in per_class.items()},
    }


# --- create -----------------------------------------------------------------------------------------


def _check_classes(tax: Taxonomy, classes: Sequence[str] | None) -> list[str] | None:
    if classes is None:
        return None
    out: list[str] = []
    for key in classes:
        key = str(key).strip()
        tax.get_class(key)  # unknown or inactive: Invalid with suggestions
        if key in out:
            raise Invalid(f"class {key!r} is listed twice", code="invalid_classes")
        out.append(key)
    if not out:
        raise Invalid("classes, when given, must name at least one class", code="invalid_classes")
    return out


def pin_splits(split_of: Mapping[int, str], unit_of: Mapping[int, str], pinned: Mapping[int, str]) -> dict[int, str]:
    """``split_of`` with every sample of ``pinned`` in its pinned split, and every other sample of a
    unit that holds pinned samples in the split most of them had (ties: test, then val, then train,
    the side that keeps held-out data held out). Units without pinned samples keep their split."""
    votes: dict[str, Counter[str]] = {}
    for sample_id, split in pinned.items():
        if sample_id in unit_of:
            votes.setdefault(unit_of[sample_id], Counter())[split] += 1
    order = {"test": 0, "val": 1, "train": 2}
    unit_split = {unit: min(c, key=lambda sp: (-c[sp], order.get(sp, 3))) for unit, c in votes.items()}
    out = {}
    for sample_id, split in split_of.items():
        if sample_id in pinned:
            out[sample_id] = pinned[sample_id]
        else:
            out[sample_id] = unit_split.get(unit_of.get(sample_id, ""), split)
    return out


def create_version(
    ctx: Context,
    session: Session,
    principal: Principal,
    name: str,
    *,
    filters: SampleFilter | None = None,
    group_by: GroupBy | str = "camera",
    ratios: Sequence[float] | str = (0.8, 0.1, 0.1),
    seed: int = 0,
    classes: list[str] | None = None,
) -> DatasetVersion:
    """Freeze the approved labels of the matching samples into a version; see :func:`make_version`."""
    return make_version(
        ctx, session, principal, name, filters=filters, group_by=group_by, ratios=ratios, seed=seed, classes=classes
    )[0]


def make_version(
    ctx: Context,
    session: Session,
    principal: Principal,
    name: str,
    *,
    filters: SampleFilter | None = None,
    group_by: GroupBy | str = "camera",
    ratios: Sequence[float] | str = (0.8, 0.1, 0.1),
    seed: int = 0,
    classes: list[str] | None = None,
    keep_splits: DatasetVersion | None = None,
) -> tuple[DatasetVersion, bool]:
    """Freeze the approved labels of the matching visible samples into a new version (or return
    the identical one made before; the flag says whether it is new). The caller's session commits;
    the manifest object is written first, so a failed commit leaves only an unreferenced object.

    ``classes`` fixes the class list (and order); boxes of other classes are left out and counted
    in ``stats['dropped_boxes']``; their images stay, since an approved revision states everything
    visible. A ``class_key`` filter selects samples by their APPROVED boxes, not their current ones.

    ``keep_splits`` (an earlier version) pins every sample it holds to the split it had there, and
    every split unit (camera, near-duplicate group) holding such a sample with it. A model trained
    on the earlier version and fine-tuned on this one has then never seen this version's val and
    test images: growing a dataset must not move old test images into train.

    Revisions that declare ``unlabeled_classes`` carry them into their item (only when set, so
    versions made before the field existed keep their ids).
    """
    principal.require("datasets:write")
    name = _check_name(name)
    if group_by not in GROUP_BY:
        raise Invalid(f"group_by must be one of {', '.join(GROUP_BY)}, not {group_by!r}", code="invalid_group_by")
    try:
        ratios = parse_ratios(ratios)
    except ValueError as exc:
        raise Invalid(str(exc), code="invalid_ratios") from None
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise Invalid(f"seed must be an integer, not {seed!r}", code="invalid_seed")
    # The caller's session: on SQLite it may already hold the write lock a second session would wait on.
    tax = ctx.taxonomy(session)
    wanted = _check_classes(tax, classes)
    active = tax.class_keys()
    if filters is not None and filters.class_key is not None:
        tax.get_class(filters.class_key)

    # Samples: visible to the caller, matching the filters (except class and state, which are
    # decided on the approved revision below), with an approved revision.
    base = filters.model_copy(update={"class_key": None, "status": None}) if filters is not None else SampleFilter()
    query = (
        apply_filters(session, visible_samples(principal), base)
        .join(
            AnnotationRevision,
            (AnnotationRevision.id == Sample.approved_revision_id)
            & (AnnotationRevision.sample_id == Sample.id)
            & (AnnotationRevision.status == "approved"),
        )
        .add_columns(AnnotationRevision.id, AnnotationRevision.boxes, AnnotationRevision.unlabeled_classes)
        .order_by(Sample.id)
    )
    allowed = set(wanted) if wanted is not None else set(active)
    dropped: Counter[str] = Counter()
    rows: list[tuple[Sample, int, list[dict[str, Any]]]] = []
    unlabeled_of: dict[int, list[str]] = {}
    for sample, rev_id, raw_boxes, unlabeled in session.execute(query).tuples():
        if unlabeled:
            unlabeled_of[sample.id] = sorted(str(k) for k in unlabeled if str(k) in allowed)
        boxes = []
        for b in raw_boxes or []:
            key = str(b["class_key"])
            if key not in allowed:
                dropped[key] += 1
                continue
            boxes.append(
                {
                    "class_key": key,
                    "x1": float(b["x1"]),
                    "y1": float(b["y1"]),
                    "x2": float(b["x2"]),
                    "y2": float(b["y2"]),
                }
            )
        if (
            filters is not None
            and filters.class_key is not None
            and not any(b["class_key"] == filters.class_key for b in boxes)
        ):
            continue
        rows.append((sample, int(rev_id), boxes))
    if not rows:
        raise Invalid("no visible sample with an approved annotation matches these filters", code="empty_dataset")

    present = {b["class_key"] for _, _, boxes in rows for b in boxes}
    class_list = wanted if wanted is not None else [k for k in active if k in present]

    dup_names = dup_group_names([s for s, _, _ in rows])
    keys = [group_key(s, group_by, dup_names) for s, _, _ in rows]
    units = _merge_groups(keys, [dup_names.get(s.dup_group) if s.dup_group is not None else None for s, _, _ in rows])
    split_of = assign_splits(
        [
            SplitItem(s.id, unit, frozenset(b["class_key"] for b in boxes))
            for (s, _, boxes), unit in zip(rows, units, strict=True)
        ],
        ratios,
        seed,
    )
    if keep_splits is not None:
        split_of = pin_splits(
            split_of,
            {s.id: unit for (s, _, _), unit in zip(rows, units, strict=True)},
            {int(it["sample_id"]): str(it["split"]) for it in load_manifest(ctx, keep_splits)["items"]},
        )
    items = [
        {
            "sample_id": s.id,
            "sha256": s.sha256,
            "revision_id": rev_id,
            "width": int(s.width),
            "height": int(s.height),
            "format": s.format,
            "group": key,
            "split": split_of[s.id],
            "boxes": boxes,
        }
        | ({"unlabeled_classes": unlabeled_of[s.id]} if unlabeled_of.get(s.id) else {})
        for (s, rev_id, boxes), key in zip(rows, keys, strict=True)
    ]

    params = {
        "filters": filter_params(filters),
        "group_by": group_by,
        "ratios": list(ratios),
        "seed": seed,
        "classes": wanted,
    }
    if keep_splits is not None:
        params["keep_splits"] = keep_splits.id
    content = {
        "format": MANIFEST_FORMAT,
        "name": name,
        "org_code": principal.org_code,
        "params": params,
        "taxonomy_version": tax.version,
        "classes": class_list,
        "items": items,
    }
    version_id = content_id(content)
    existing = session.get(DatasetVersion, version_id)
    if existing is not None:
        return existing, False

    stats = split_stats(items, class_list)
    stats["dropped_boxes"] = dict(sorted(dropped.items()))
    stats["merged_groups"] = len(set(keys)) - len(set(units))
    stats["near_duplicates"] = cross_split_near_duplicates(
        [s.phash for s, _, _ in rows],
        [it["split"] for it in items],
        [it["sample_id"] for it in items],
        ctx.settings.near_duplicate_distance,
    )
    stats["missing_in_split"] = {
        sp: [c for c in class_list if sp not in stats["classes"].get(c, {})]
        for sp in SPLITS
        if ratios[SPLITS.index(sp)] > 0
    }

    key = manifest_key(name, version_id)
    body = {"id": version_id, **content, "stats": stats}
    ctx.store.put(
        key, json.dumps(body, ensure_ascii=False, sort_keys=True).encode("utf-8"), content_type="application/json"
    )
    dv = DatasetVersion(
        id=version_id,
        name=name,
        manifest_key=key,
        classes=class_list,
        taxonomy_version=tax.version,
        params={**params, "org_code": principal.org_code},
        stats=stats,
        created_by=principal.user_id,
    )
    try:
        with session.begin_nested():  # losing a race to an identical create undoes only this insert
            session.add(dv)
            session.flush()
    except IntegrityError:
        winner = session.get(DatasetVersion, version_id)
        if winner is None:
            raise
        return winner, False
    session.execute(
        insert(DatasetItem),
        [
            {
                "version_id": version_id,
                "sample_id": it["sample_id"],
                "revision_id": it["revision_id"],
                "split": it["split"],
            }
            for it in items
        ],
    )
    record(
        session,
        principal,
        "dataset.create",
        "dataset_version",
        version_id,
        after={
            "name": name,
            "id": version_id,
            "classes": class_list,
            "params": params,
            "images": stats["images"],
            "instances": stats["instances"],
            "splits": {s: v["images"] for s, v in stats["splits"].items()},
            "cross_split_near_duplicates": stats["near_duplicates"]["cross_split_pairs"],
        },
    )
    session.flush()
    return dv, True


# --- reading ----------------------------------------------------------------------------------------


def _org(dv: DatasetVersion) -> str | None:
    return (dv.params or {}).get("org_code")


def _visible(dv: DatasetVersion, principal: Principal | None) -> bool:
    return principal is None or _org(dv) == principal.org_code


def list_versions(
    session: Session, name: str | None = None, principal: Principal | None = None
) -> list[DatasetVersion]:
    """Versions, oldest first per name (the order their numbers follow). With a principal, only
    those of its organisation."""
    if principal is not None:
        principal.require("datasets:read")
    query = select(DatasetVersion).order_by(DatasetVersion.name, DatasetVersion.created_at, DatasetVersion.id)
    if name is not None:
        query = query.where(DatasetVersion.name == name)
    return [dv for dv in session.scalars(query) if _visible(dv, principal)]


def version_number(session: Session, dv: DatasetVersion) -> int:
    """1-based position of ``dv`` among the versions of its name and organisation, by creation."""
    same = [v for v in list_versions(session, dv.name) if _org(v) == _org(dv)]
    return next(i for i, v in enumerate(same, start=1) if v.id == dv.id)


def parse_ref(spec: str) -> tuple[str, str]:
    name, _, version = str(spec).strip().partition("@")
    return _check_name(name), (version.strip() or "latest")


def resolve(session: Session, spec: str, principal: Principal | None = None) -> DatasetVersion:
    """``NAME@latest`` (or bare ``NAME``), ``NAME@3`` / ``NAME@v3`` (the 3rd version of NAME, up to
    five digits), or ``NAME@<id prefix>`` (4+ hex digits; must be unambiguous)."""
    name, ref = parse_ref(spec)
    versions = list_versions(session, name, principal)
    if not versions:
        raise NotFound(f"no dataset {name!r}", code="dataset_not_found")
    if principal is None and len({_org(v) for v in versions}) > 1 and (ref == "latest" or _ORDINAL_RE.match(ref)):
        raise Conflict(
            f"dataset {name!r} exists in several organisations; use NAME@<id prefix>", code="ambiguous_dataset"
        )
    if ref.lower() == "latest":
        return versions[-1]
    ordinal = _ORDINAL_RE.match(ref.lower())
    if ordinal:
        n = int(ordinal.group(1))
        if not 1 <= n <= len(versions):
            raise NotFound(
                f"dataset {name!r} has {len(versions)} version(s); there is no version {n}", code="dataset_not_found"
            )
        return versions[n - 1]
    if not _PREFIX_RE.match(ref.lower()):
        raise Invalid(
            f"{ref!r} is not a version: use latest, a number, or 4+ hex digits of the id", code="invalid_version"
        )
    matches = [v for v in versions if v.id.startswith(ref.lower())]
    if not matches:
        raise NotFound(f"dataset {name!r} has no version {ref!r}", code="dataset_not_found")
    if len(matches) > 1:
        raise Conflict(f"{name}@{ref} matches {len(matches)} versions; give more digits", code="ambiguous_version")
    return matches[0]


def load_manifest(ctx: Context, dv: DatasetVersion, *, verify: bool = True) -> dict[str, Any]:
    """The stored manifest. With ``verify`` its content is re-hashed against the id, so a
    manifest that was edited in the store is refused rather than trained on."""
    body = json.loads(ctx.store.get(dv.manifest_key).decode("utf-8"))
    if verify:
        content = {k: v for k, v in body.items() if k not in ("id", "stats")}
        if content_id(content) != dv.id:
            raise Conflict(
                f"manifest {dv.manifest_key} does not match version id {dv.id}: it was altered",
                code="manifest_mismatch",
            )
    return body


def version_public(session: Session, dv: DatasetVersion) -> DatasetVersionPublic:
    """The summary the API, CLI and client show (the manifest itself stays in the store)."""
    return DatasetVersionPublic.model_validate(version_dict(session, dv))


def version_dict(session: Session, dv: DatasetVersion) -> dict[str, Any]:
    """:func:`version_public` as plain JSON values (the CLI's ``--json`` adds ``created`` to it)."""
    creator = session.get(User, dv.created_by) if dv.created_by is not None else None
    params = dict(dv.params or {})
    return {
        "id": dv.id,
        "name": dv.name,
        "number": version_number(session, dv),
        "ref": f"{dv.name}@{dv.id[:12]}",
        "org_code": params.pop("org_code", None),
        "classes": list(dv.classes),
        "taxonomy_version": dv.taxonomy_version,
        "params": params,
        "stats": dv.stats,
        "manifest_key": dv.manifest_key,
        "created_at": iso(dv.created_at),
        "created_by": creator.name if creator is not None else None,
    }


__all__ = [
    "GROUP_BY",
    "MANIFEST_FORMAT",
    "canonical_json",
    "content_id",
    "create_version",
    "cross_split_near_duplicates",
    "filter_from_params",
    "filter_params",
    "group_key",
    "list_versions",
    "load_manifest",
    "make_version",
    "manifest_key",
    "parse_ref",
    "resolve",
    "split_stats",
    "version_dict",
    "version_number",
    "version_public",
]
