"""Near-duplicates in the sample library: photos that are not the same bytes but nearly the same
picture (re-encoded, resized, the next frame of a fixed camera), found by perceptual-hash distance.

They are kept but linked and grouped (``dup_group``), because a dataset split that puts two of them
on both sides measures memory, not detection. The search is a vectorised index over the catalogue's
hashes; the catalogue, through :func:`~hazardlens.datasets.tenancy.visibility`, decides what is found.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Sequence
from typing import Any

import numpy as np
from sqlalchemy import insert, or_, select
from sqlalchemy.orm import Session

from hazardlens.audit import record as audit
from hazardlens.auth import Principal
from hazardlens.context import Context
from hazardlens.datasets.tenancy import get_sample, visibility
from hazardlens.images import hamming
from hazardlens.orm import NearDuplicate, Sample

# A fixed camera can produce thousands of frames within the distance of each other; linking each
# new frame to all of them would grow the link table quadratically. The closest ones are linked;
# the group (dup_group) still takes in the whole cluster.
MAX_NEAR_DUPLICATE_LINKS = 50


class _PhashIndex:
    """(id, phash, org, shared) of every live sample of one catalogue, as numpy arrays, so that a
    Hamming search over 10^5 samples is one vectorised XOR + popcount (~1 ms) instead of a table scan.

    The catalogue stays the authority: the index only proposes candidates, which are re-read through
    :func:`visible_samples` (a sample deleted or made private since is dropped there). New rows are
    picked up incrementally on every search, re-reading a window of recent ids because ids are
    handed out before concurrent transactions commit; a full reload every few minutes covers
    anything else (another process changing scope, ids committed very late).
    """

    OVERLAP_IDS = 64
    FULL_RELOAD_S = 300.0

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        self.ids = np.zeros(0, np.int64)
        self.hashes = np.zeros(0, np.uint64)
        self.orgs = np.zeros(0, np.int32)
        self.shared = np.zeros(0, bool)
        self.n = 0
        self.pos: dict[int, int] = {}
        self.org_index: dict[str, int] = {}
        self.max_id = 0
        self.loaded_at = -1e18

    def _org(self, code: str) -> int:
        return self.org_index.setdefault(code, len(self.org_index))

    def _grow(self, need: int) -> None:
        cap = len(self.ids)
        if need <= cap:
            return
        new = max(need, cap * 2, 1024)
        for name in ("ids", "hashes", "orgs", "shared"):
            old = getattr(self, name)
            arr = np.zeros(new, old.dtype)
            arr[: self.n] = old[: self.n]
            setattr(self, name, arr)

    def _upsert(self, rows: Sequence[Any]) -> None:
        self._grow(self.n + len(rows))
        for sid, phash, org, scope in rows:
            i = self.pos.get(sid)
            if i is None:
                i = self.n
                self.n += 1
                self.pos[sid] = i
            self.ids[i] = sid
            self.hashes[i] = np.int64(phash).view(np.uint64)
            self.orgs[i] = self._org(org)
            self.shared[i] = scope == "shared"
            self.max_id = max(self.max_id, sid)

    def refresh(self, session: Session) -> None:
        cols = select(Sample.id, Sample.phash, Sample.org_code, Sample.scope).where(Sample.deleted_at.is_(None))
        now = time.monotonic()
        if now - self.loaded_at > self.FULL_RELOAD_S:
            rows = session.execute(cols.order_by(Sample.id)).all()
            self._reset()
            self.loaded_at = now
        else:
            rows = session.execute(cols.where(Sample.id > self.max_id - self.OVERLAP_IDS)).all()
        self._upsert(rows)

    def candidates(self, phash: int, org_code: str, max_distance: int, exclude: int) -> list[int]:
        n = self.n
        if n == 0:
            return []
        q = np.int64(phash).view(np.uint64)
        dist = np.bitwise_count(self.hashes[:n] ^ q)
        mask = dist <= max_distance
        org = self.org_index.get(org_code, -1)
        mask &= (self.orgs[:n] == org) | self.shared[:n]
        mask &= self.ids[:n] != exclude
        hit = np.flatnonzero(mask)
        if len(hit) > 4 * MAX_NEAR_DUPLICATE_LINKS:  # keep the closest; the re-check query stays small
            hit = hit[np.argsort(dist[hit], kind="stable")[: 4 * MAX_NEAR_DUPLICATE_LINKS]]
        return [int(v) for v in self.ids[hit]]


_INDEXES: weakref.WeakKeyDictionary[Any, _PhashIndex] = weakref.WeakKeyDictionary()
_INDEXES_LOCK = threading.Lock()


def _index_for(session: Session) -> _PhashIndex:
    engine = session.get_bind()
    engine = getattr(engine, "engine", engine)  # a Connection bound session -> its Engine
    with _INDEXES_LOCK:
        index = _INDEXES.get(engine)
        if index is None:
            index = _INDEXES[engine] = _PhashIndex()
        return index


def _near_rows(
    ctx: Context, session: Session, principal: Principal, phash: int, exclude_id: int
) -> list[tuple[int, int, int | None]]:
    """(id, distance, dup_group) of visible samples within the distance, closest first, at most
    MAX_NEAR_DUPLICATE_LINKS. The index proposes; the catalogue decides (one query)."""
    max_distance = ctx.settings.near_duplicate_distance
    index = _index_for(session)
    with index.lock:
        index.refresh(session)
        ids = index.candidates(phash, principal.org_code, max_distance, exclude_id)
    if not ids:
        return []
    rows = session.execute(
        select(Sample.id, Sample.phash, Sample.dup_group).where(visibility(principal), Sample.id.in_(ids))
    ).all()
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
        members = or_(Sample.id.in_(ids), Sample.dup_group.in_(groups)) if groups else Sample.id.in_(ids)
        changed = session.scalars(
            select(Sample)
            .where(members, or_(Sample.dup_group.is_(None), Sample.dup_group != group))
            .order_by(Sample.id)
        ).all()
        for other_sample in changed:
            audit(
                session,
                principal,
                "sample.dup_group",
                "sample",
                other_sample.id,
                sample_id=other_sample.id,
                before={"dup_group": other_sample.dup_group},
                after={"dup_group": group},
            )
            other_sample.dup_group = group
    sample.dup_group = group
    return ids


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
