"""Library-wide rebuild (issue 16, item 2): the ``library_rebuild`` job, in shards.

``hazardlens library rebuild --org ORG [filters]`` / ``POST /v1/jobs`` with kind ``library_rebuild``
re-makes, for every sample of the caller's organisation that matches the filters, what ingest derived
from its photo and that can go missing or out of date afterwards:

- ``thumbnails``: re-rendered from the stored photo the way ingest renders them
  (:func:`hazardlens.images.inspect_image` at ``HAZARDLENS_THUMBNAIL_SIZE``) and written over
  ``thumbnails/<sha256>.jpg``: a thumbnail object lost with a disk or a bucket comes back, and a
  changed thumbnail size applies to the samples already held. Writing the same object again is
  harmless, so a shard run twice changes nothing more. A sample whose stored photo is missing, or is
  no longer the bytes its SHA-256 names, is a failure with its reason (the other samples go on).
- ``near_duplicates``: looked up again with the ingest's own search
  (:func:`hazardlens.datasets.near_duplicates.find_near_duplicates`, the caller's visibility, the
  current ``HAZARDLENS_NEAR_DUPLICATE_DISTANCE``): missing links are added (both ways, as ingest
  links), links between samples now farther apart than the distance are removed, the groups
  (``dup_group``) of the organisation's samples are merged over the links as ingest merges them.

The job is planned into shards of a few hundred samples (like ``prelabel``,
:mod:`hazardlens.labeling.prelabel`); each shard works out its links in its own time and writes them in
the transaction that marks it completed, reading the links already there in that same transaction,
so a shard run twice (its first worker died, or stalled past its lease) adds each link once: the
second run finds them present (and the primary key of ``near_duplicates`` would refuse a copy).

Tenancy: only the organisation's own samples are rebuilt (shared samples of other organisations are
readable, not theirs to change: filters naming another organisation are refused with ``not_owner``);
a link from an own sample to a shared one of another organisation is added as ingest adds it, but
that sample's group is left as it is. Links to samples the caller cannot see are never judged.
Groups only merge: a removed link does not split a group (ingest never splits one either).

Permission: ``samples:delete`` (curators and admins), the permission curators use to curate the
library's samples (delete, restore, share): an inspector or a service account that uploads photos
may not rewrite the library's derived data.

Importing this module registers the kind with the job queue (:mod:`hazardlens.jobs`), and so does
importing :mod:`hazardlens.datasets.jobs` (where the datasets part registers its kinds), so it is
known wherever ``dataset_export`` and ``blob_gc`` are: the server, the CLI, the workers.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import delete, insert, or_, select
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from hazardlens import jobs
from hazardlens.audit import record as audit
from hazardlens.auth import Principal
from hazardlens.context import Context
from hazardlens.contracts.jobs import LibraryRebuildJobParams
from hazardlens.datasets.ingest import thumbnail_key
from hazardlens.datasets.near_duplicates import find_near_duplicates, merge_group
from hazardlens.datasets.search import apply_filters
from hazardlens.datasets.tenancy import visibility
from hazardlens.errors import Forbidden, HazardError
from hazardlens.images import hamming, inspect_image
from hazardlens.jobrun import Plan, ShardResult, ShardWork
from hazardlens.orm import Job, NearDuplicate, Sample
from hazardlens.store import blob_key

#: Who may rebuild: the permission of curating the library's samples (see the module docstring).
PERMISSION = "samples:delete"
#: Failures kept by name in a shard's and the job's result (the counts are always complete).
MAX_FAILURES = 200
#: Samples between two progress reports of a shard.
_PROGRESS_EVERY = 20
_COUNTS = (
    "samples",
    "thumbnails",
    "thumbnails_missing",
    "links_added",
    "links_removed",
    "links_kept",
    "dup_groups_changed",
    "failed",
)


def owned(principal: Principal) -> ColumnElement[bool]:
    """The samples ``principal``'s organisation owns (with :func:`visibility`: and not deleted)."""
    return Sample.org_code == principal.org_code


def check_rebuild(ctx: Context, params: LibraryRebuildJobParams, principal: Principal) -> None:
    """At submission: a filter naming another organisation asks for samples that are not the caller's
    to rebuild; refused now (403) rather than planned into an empty job that looks like success."""
    org = params.filters.org
    if org is not None and org != principal.org_code:
        raise Forbidden(
            f"the samples of organisation {org} are that organisation's to rebuild; "
            f"{principal.org_code} rebuilds its own",
            code="not_owner",
        )


def plan_rebuild(ctx: Context, job: Job, principal: Principal) -> Plan:
    """Every matching sample the submitter's organisation owns, in id order, cut into shards."""
    principal.require(PERMISSION)
    params = LibraryRebuildJobParams.model_validate(job.params)
    size = params.shard_size or ctx.settings.shard_size
    with ctx.db.read_session() as session:
        query = select(Sample.id).where(visibility(principal), owned(principal))
        query = apply_filters(session, query, params.filters).order_by(Sample.id)
        ids = list(session.scalars(query.execution_options(yield_per=10_000)))
    shards = [{"ids": ids[i : i + size]} for i in range(0, len(ids), size)]
    what = " and ".join(params.what)
    return Plan(shards, note=f"{len(ids)} sample(s) of {principal.org_code}: {what}, {size} per shard")


# ---- thumbnails ---------------------------------------------------------------------------------


class _SampleFailed(Exception):
    """One sample's photo cannot give a thumbnail: a failure of that sample, not of the shard."""


def _thumbnail(ctx: Context, sha: str) -> bytes:
    """The thumbnail of the stored photo ``sha``, as ingest renders it. A store that is down raises
    (the shard is retried); a missing or altered photo is the sample's failure."""
    try:
        data = ctx.store.get(blob_key(sha))
    except HazardError as exc:
        if exc.status >= 500:
            raise
        raise _SampleFailed(f"{exc.code}: {exc.message}") from None
    if hashlib.sha256(data).hexdigest() != sha:
        raise _SampleFailed("the stored photo is corrupt: its bytes are not the ones the sample's SHA-256 names")
    try:
        return inspect_image(data, ctx.settings.max_pixels, ctx.settings.thumbnail_size).thumbnail_jpeg
    except HazardError as exc:
        if exc.status >= 500:
            raise
        raise _SampleFailed(f"{exc.code}: {exc.message}") from None


def _rebuild_thumbnails(
    work: ShardWork,
    todo: list[tuple[int, str, int]],
    result: dict[str, Any],
    failures: list[dict[str, Any]],
    span: tuple[float, float],
) -> None:
    """Re-render each sample's thumbnail into the store now (idempotent: the same object each time).
    ``span``: the part of the shard's progress this step reports in (start, width)."""
    ctx = work.ctx
    for n, (sample_id, sha, _) in enumerate(todo, 1):
        try:
            jpeg = _thumbnail(ctx, sha)
        except _SampleFailed as exc:
            failures.append({"sample_id": sample_id, "what": "thumbnails", "reason": str(exc)[:300]})
        else:
            key = thumbnail_key(sha)
            if not ctx.store.exists(key):
                result["thumbnails_missing"] += 1
            ctx.store.put(key, jpeg, content_type="image/jpeg")
            result["thumbnails"] += 1
        if n % _PROGRESS_EVERY == 0 or n == len(todo):
            work.progress(span[0] + span[1] * n / len(todo), f"{n}/{len(todo)} thumbnails")


# ---- near-duplicate links -----------------------------------------------------------------------


@dataclass
class _Links:
    """What the links of a shard's samples should be, worked out before the shard's transaction."""

    wanted: dict[tuple[int, int], int] = field(default_factory=dict)  # (sample_id, other_id) -> distance
    stale: set[tuple[int, int]] = field(default_factory=set)  # rows to remove (both ways)
    neighbours: dict[int, list[int]] = field(default_factory=dict)  # shard sample -> its near ids


def _plan_links(work: ShardWork, todo: list[tuple[int, str, int]], span: tuple[float, float]) -> _Links:
    """Each sample's near-duplicates as ingest finds them (both link rows wanted), and the existing
    links to samples the caller sees that are now farther apart than the distance (stale)."""
    ctx, principal = work.ctx, work.principal
    links = _Links()
    max_distance = ctx.settings.near_duplicate_distance
    if max_distance < 0 or not todo:  # near-duplicate detection is off: nothing to add or judge
        return links
    phash_of = {sample_id: phash for sample_id, _, phash in todo}
    ids = list(phash_of)
    with ctx.db.read_session() as session:
        for n, (sample_id, _, phash) in enumerate(todo, 1):
            near = find_near_duplicates(ctx, session, principal, phash, exclude_id=sample_id)
            links.neighbours[sample_id] = [other for other, _ in near]
            for other, distance in near:
                links.wanted[(sample_id, other)] = distance
                links.wanted[(other, sample_id)] = distance
            if n % _PROGRESS_EVERY == 0 or n == len(todo):
                work.progress(span[0] + span[1] * n / len(todo), f"{n}/{len(todo)} near-duplicate lookups")
        # existing rows either way, with the phash of the end that is not the shard's sample
        for mine, theirs in (
            (NearDuplicate.sample_id, NearDuplicate.other_id),
            (NearDuplicate.other_id, NearDuplicate.sample_id),
        ):
            rows = session.execute(
                select(mine, theirs, Sample.phash)
                .join(Sample, Sample.id == theirs)
                .where(mine.in_(ids), visibility(principal))
            ).all()
            for own_id, other_id, other_phash in rows:
                if hamming(phash_of[int(own_id)], int(other_phash)) > max_distance:
                    links.stale.update({(int(own_id), int(other_id)), (int(other_id), int(own_id))})
    return links


def _pair(a: int, b: int) -> tuple[int, int]:
    return (a, b) if a < b else (b, a)


def _write_links(session: Session, principal: Principal, ids: list[int], links: _Links, result: dict[str, Any]) -> None:
    """In the shard's completing transaction: add the wanted rows that are not there now, remove the
    stale ones still there, merge groups. Counts are of links (a pair of samples, two rows)."""
    existing = {
        (int(a), int(b))
        for a, b in session.execute(
            select(NearDuplicate.sample_id, NearDuplicate.other_id).where(
                or_(NearDuplicate.sample_id.in_(ids), NearDuplicate.other_id.in_(ids))
            )
        ).all()
    }
    missing = sorted(k for k in links.wanted if k not in existing)
    if missing:
        session.execute(
            insert(NearDuplicate),
            [{"sample_id": a, "other_id": b, "distance": links.wanted[(a, b)]} for a, b in missing],
        )
    removed: set[tuple[int, int]] = set()
    for a, b in sorted(links.stale & existing):
        session.execute(delete(NearDuplicate).where(NearDuplicate.sample_id == a, NearDuplicate.other_id == b))
        removed.add(_pair(a, b))
    added = {_pair(a, b) for a, b in missing}
    result["links_added"] += len(added)
    result["links_removed"] += len(removed)
    result["links_kept"] += len({_pair(a, b) for a, b in links.wanted} - added)
    # the history of each of the shard's samples says which links the rebuild added or removed
    mine = set(ids)
    changes: dict[int, dict[str, list[int]]] = {}
    for how, pairs in (("added", added), ("removed", removed)):
        for a, b in sorted(pairs):
            for sample_id, other_id in ((a, b), (b, a)):
                if sample_id in mine:
                    changes.setdefault(sample_id, {"added": [], "removed": []})[how].append(other_id)
    for sample_id, change in sorted(changes.items()):
        audit(session, principal, "sample.near_duplicates", "sample", sample_id, sample_id=sample_id, after=change)
    result["dup_groups_changed"] += _merge_groups(session, principal, links)


def _merge_groups(session: Session, principal: Principal, links: _Links) -> int:
    """Each sample and its near-duplicates in one group named by the smallest id among them and their
    groups (ingest's rule), applied to the organisation's own samples only. Returns how many changed."""
    changed = 0
    for sample_id, near in sorted(links.neighbours.items()):
        if not near:
            continue
        members = [sample_id, *near]
        groups = {int(g) for g in session.scalars(select(Sample.dup_group).where(Sample.id.in_(members))) if g}
        group = min([*members, *groups])
        changed += merge_group(session, principal, members, groups, group, only=owned(principal))
        session.flush()
    return changed


# ---- the shard and the summary ------------------------------------------------------------------


def run_rebuild_shard(work: ShardWork) -> ShardResult:
    """Rebuild the shard's samples (still the organisation's and not deleted: checked again now):
    thumbnails straight into the store, links handed back to be written with the shard's completion."""
    params = LibraryRebuildJobParams.model_validate(work.params)
    ids = [int(i) for i in work.items["ids"]]
    principal = work.principal
    with work.ctx.db.read_session() as session:
        rows = session.execute(
            select(Sample.id, Sample.sha256, Sample.phash).where(
                visibility(principal), owned(principal), Sample.id.in_(ids)
            )
        ).all()
    found = {int(r[0]): (str(r[1]), int(r[2])) for r in rows}
    todo = [(i, *found[i]) for i in ids if i in found]
    failures: list[dict[str, Any]] = [
        {"sample_id": i, "what": "sample", "reason": "deleted, or no longer the organisation's"}
        for i in ids
        if i not in found
    ]
    result: dict[str, Any] = {"what": list(params.what), **dict.fromkeys(_COUNTS, 0), "samples": len(ids)}
    share = 1.0 / len(params.what)  # each part reports its own slice of the shard's progress
    if "thumbnails" in params.what:
        _rebuild_thumbnails(work, todo, result, failures, (0.0, share))
    links = _plan_links(work, todo, (1.0 - share, share)) if "near_duplicates" in params.what else None
    result["failed"] = len(failures)
    result["failures"] = failures[:MAX_FAILURES]

    def write(session: Session) -> None:
        if links is not None:
            _write_links(session, principal, [i for i, _, _ in todo], links, result)

    return ShardResult(result, write)


def reduce_rebuild(ctx: Context, params: dict[str, Any], results: list[dict[str, Any]]) -> dict[str, Any]:
    """The job's summary: the shards' counts added up, the failures with their reasons. Links are
    counted as pairs of samples; ``links_added`` and ``links_removed`` once each (the database says
    which shard wrote them), ``links_kept`` by every shard holding one of the pair's samples."""
    what = params.get("what") or LibraryRebuildJobParams().what
    summary: dict[str, Any] = {"what": list(what)}
    for key in _COUNTS:
        summary[key] = sum(int(r.get(key, 0)) for r in results)
    summary["failures"] = [f for r in results for f in r.get("failures", [])][:MAX_FAILURES]
    return summary


def register() -> None:
    """Register ``library_rebuild`` (curators and admins of the organisation: ``samples:delete``)."""
    jobs.register(
        "library_rebuild",
        permission=PERMISSION,
        check=check_rebuild,
        plan=plan_rebuild,
        shard=run_rebuild_shard,
        reduce=reduce_rebuild,
    )


register()

__all__ = [
    "MAX_FAILURES",
    "PERMISSION",
    "check_rebuild",
    "owned",
    "plan_rebuild",
    "reduce_rebuild",
    "register",
    "run_rebuild_shard",
]
