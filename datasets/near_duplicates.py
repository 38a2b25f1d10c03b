"""Near-duplicates in the sample library: photos that are not the same bytes but nearly the same
picture (re-encoded, resized, the next frame of a fixed camera), found by perceptual-hash distance.

They are kept but linked and grouped (``dup_group``), because a dataset split that puts two of them
on both sides measures memory, not detection. The search is an index lookup in the catalogue
(multi-index hashing over the hash's bands, :data:`NEAR_CANDIDATES`), filtered by
:func:`~hazardlens.datasets.tenancy.visibility` in the same query, so it costs the same in every
process and at 10^6 samples as at 10^3, with nothing held in memory.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from itertools import combinations
from typing import Any

from sqlalchemy import Boolean, bindparam, insert, or_, select
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.visitors import InternalTraversal

from hazardlens.audit import record as audit
from hazardlens.auth import Principal
from hazardlens.context import Context
from hazardlens.datasets.tenancy import get_sample, org_visibility, visibility
from hazardlens.images import hamming
from hazardlens.orm import PHASH_BAND_BITS, PHASH_BANDS, NearDuplicate, Sample, phash_band, phash_bands

# A fixed camera can produce thousands of frames within the distance of each other; linking each
# new frame to all of them would grow the link table quadratically. The closest ones are linked;
# the group (dup_group) still takes in the whole cluster.
MAX_NEAR_DUPLICATE_LINKS = 50


def band_probes(value: int, radius: int) -> list[int]:
    """``value`` and every band value within ``radius`` bits of it (1 + 16 + 120 + ... values)."""
    probes = [value]
    for flips in range(1, radius + 1):
        for bits in combinations(range(PHASH_BAND_BITS), flips):
            probes.append(value ^ sum(1 << bit for bit in bits))
    return probes


class _NotAnIndexPath(ColumnElement[bool]):
    """A condition SQLite's planner must test on the rows found, not use to find them.

    Without statistics SQLite guesses that ``org_code = ?`` matches fewer rows than 68 band probes and
    drove the near-duplicate lookup with the organisation's index: a scan of every photo the caller
    can see, per photo ingested. A unary ``+`` (SQLite's documented way to keep a term off the indexes)
    makes it take the band indexes; PostgreSQL, which has statistics, gets the plain condition."""

    inherit_cache = True
    type = Boolean()
    _traverse_internals = [("condition", InternalTraversal.dp_clauseelement)]  # its part of the cache key

    def __init__(self, condition: ColumnElement[bool]) -> None:
        self.condition = condition

    def get_children(self, **kw: Any) -> tuple[ColumnElement[bool], ...]:
        return (self.condition,)


@compiles(_NotAnIndexPath)
def _plain(element: _NotAnIndexPath, compiler: Any, **kw: Any) -> str:
    return str(compiler.process(element.condition, **kw))


@compiles(_NotAnIndexPath, "sqlite")
def _unary_plus(element: _NotAnIndexPath, compiler: Any, **kw: Any) -> str:
    return f"+({compiler.process(element.condition, **kw)})"


#: The candidate query of :func:`_near_rows`, built once: every value is a bound parameter (each
#: band's probes an expanding one), so each photo of an ingest runs the compiled statement from
#: SQLAlchemy's cache instead of building and compiling an expression of 4 x 17 probes anew (that
#: was most of the near-duplicate step's time).
#:
#: Multi-index hashing: every hash within ``max_distance`` of a photo's is within
#: ``max_distance // PHASH_BANDS`` bits of it on at least one band (pigeonhole), so "some band equals one
#: of its probes" (:func:`band_probes`) finds them all through the band indexes (4 x 17 index probes at
#: the default distance 6). It finds some farther hashes too; :func:`_near_rows` checks the exact distance.
NEAR_CANDIDATES = select(Sample.id, Sample.phash, Sample.dup_group).where(
    or_(*(phash_band(band).in_(bindparam(f"band{band}", expanding=True)) for band in range(PHASH_BANDS))),
    _NotAnIndexPath(org_visibility(bindparam("org"))),
    Sample.id != bindparam("exclude_id"),
)


def candidate_params(phash: int, max_distance: int) -> dict[str, list[int]]:
    """The band probes of :data:`NEAR_CANDIDATES` for ``phash`` at ``max_distance``."""
    radius = max_distance // PHASH_BANDS
    return {f"band{band}": band_probes(value, radius) for band, value in enumerate(phash_bands(phash))}


def _near_rows(
    ctx: Context, session: Session, principal: Principal, phash: int, exclude_id: int
) -> list[tuple[int, int, int | None]]:
    """(id, distance, dup_group) of visible samples within the distance, closest first, at most
    MAX_NEAR_DUPLICATE_LINKS: candidates by the band indexes and the tenancy rule in one query,
    then the exact distance here (neither database has a portable popcount)."""
    max_distance = ctx.settings.near_duplicate_distance
    if max_distance < 0:
        return []
    params = {**candidate_params(phash, max_distance), "org": principal.org_code, "exclude_id": exclude_id}
    rows = session.execute(NEAR_CANDIDATES, params).all()
    found = sorted((d, sid, group) for sid, ph, group in rows if (d := hamming(ph, phash)) <= max_distance)
    return [(sid, d, group) for d, sid, group in found[:MAX_NEAR_DUPLICATE_LINKS]]


def find_near_duplicates(
    ctx: Context, session: Session, principal: Principal, phash: int, exclude_id: int = 0
) -> list[tuple[int, int]]:
    """(sample id, distance) of visible samples within ``near_duplicate_distance``, closest first."""
    return [(sid, d) for sid, d, _ in _near_rows(ctx, session, principal, phash, exclude_id)]


def link_near_duplicates(ctx: Context, session: Session, principal: Principal, sample: Sample) -> list[int]:
    """Link ``sample`` both ways to its near-duplicates and merge their groups into one whose id is
    the smallest sample id in it (stable as the group grows, since new samples get larger ids)."""
    near = _near_rows(ctx, session, principal, sample.phash, exclude_id=sample.id)
    if not near:
        return []
    # Core executemany: up to 2 x 50 link rows per image, without the ORM's per-object bookkeeping.
    session.execute(
        insert(NearDuplicate),
        [
            row
            for other, distance, _ in near
            for row in (
                {"sample_id": sample.id, "other_id": other, "distance": distance},
                {"sample_id": other, "other_id": sample.id, "distance": distance},
            )
        ],
    )
    ids = [sid for sid, _, _ in near]
    groups = {g for _, _, g in near if g is not None}
    group = min([sample.id, *ids, *groups])
    # Usually the neighbours are already in one group named by its smallest id: nothing to merge.
    if any(g != group for _, _, g in near):
        merge_group(session, principal, ids, groups, group)
    sample.dup_group = group
    return ids


def merge_group(
    session: Session,
    principal: Principal,
    ids: Sequence[int],
    groups: Collection[int],
    group: int,
    only: ColumnElement[bool] | None = None,
) -> int:
    """Move the samples ``ids`` and every member of ``groups`` into ``group`` (audited per sample);
    ``only`` narrows whose group may change (the library rebuild: the organisation's own samples).
    Returns how many samples moved."""
    members = or_(Sample.id.in_(ids), Sample.dup_group.in_(groups)) if groups else Sample.id.in_(ids)
    query = select(Sample).where(members, or_(Sample.dup_group.is_(None), Sample.dup_group != group))
    if only is not None:
        query = query.where(only)
    moved = session.scalars(query.order_by(Sample.id)).all()
    for row in moved:
        audit(
            session,
            principal,
            "sample.dup_group",
            "sample",
            row.id,
            sample_id=row.id,
            before={"dup_group": row.dup_group},
            after={"dup_group": group},
        )
        row.dup_group = group
    return len(moved)


def linked_ids(session: Session, principal: Principal, sample_id: int) -> list[int]:
    return [sid for sid, _ in near_duplicates(session, principal, sample_id, check=False)]


def near_duplicates(
    session: Session, principal: Principal, sample_id: int, check: bool = True
) -> list[tuple[int, int]]:
    """(other id, distance) of the visible samples linked to ``sample_id``, closest first."""
    if check:
        get_sample(session, principal, sample_id)
    rows = session.execute(
        select(NearDuplicate.other_id, NearDuplicate.distance)
        .join(Sample, Sample.id == NearDuplicate.other_id)
        .where(NearDuplicate.sample_id == sample_id, visibility(principal))
        .order_by(NearDuplicate.distance, NearDuplicate.other_id)
    ).all()
    return [(int(a), int(b)) for a, b in rows]
