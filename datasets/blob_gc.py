"""Garbage collection of stored objects no catalogue row names (issue 16, item 5): the ``blob_gc`` job.

An ingest writes a photo's bytes (``blobs/<aa>/<sha256>``) and thumbnail (``thumbnails/<sha256>.jpg``)
*before* it inserts the sample row, so that a row never names bytes that are not there; the price is
that an insert that fails (a crash, a refused row, the catalogue going away) leaves bytes no row names.
The model registry does the same with a version's files (``models/<name>/<version>/...``). This job
walks the store and removes those leftovers:

- ``blobs/<aa>/<sha256>`` and ``thumbnails/<sha256>.jpg``: kept while any sample row has that
  SHA-256 (a deleted sample included: it can be restored by uploading it again) or a federated
  sample names it;
- ``models/<name>/<version>/...``: kept while a model version ``name``/``version`` is registered
  (weights, ONNX export, card and quantised variants all live under that prefix);
- every other key (dataset manifests, the inspection inbox, anything unknown) is named by a row
  or by a job and never touched; keys under the collected prefixes that do not have the expected
  shape are counted as ``unrecognised`` and kept.

Only objects older than ``grace_hours`` are removed: an ingest in flight has written its bytes
and not yet committed its row, and that window is seconds, not hours. An upload of bytes that are
already stored does not write them again, so two checks guard the remaining race (an upload of
exactly an old orphan's bytes while it is being removed). Here: the references are read again right
before each removal, the bytes are held while the object is removed, and they are put back if a row
has named them meanwhile (counted as ``restored``). On the ingest side: a new row over bytes the
upload found stored has them checked again after its commit and written back if they are gone
(:mod:`hazardlens.datasets.ingest`), which covers a removal that falls between the upload's check and
its commit.

The store is the installation's, shared by every organisation, so only an administrator of the
system organisation may run this (``store:gc`` and :func:`hazardlens.auth.require_system`); the
job's submission, and its removals when it ends, are in the audit log. ``dry_run`` only reports.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select, tuple_

from hazardlens import jobs
from hazardlens.audit import record
from hazardlens.auth import Principal, require_system
from hazardlens.context import Context
from hazardlens.contracts.jobs import BlobGcJobParams
from hazardlens.errors import HazardError
from hazardlens.orm import FederatedSample, Job, ModelVersion, Sample
from hazardlens.store.base import ObjectInfo, ObjectNotFound, ObjectStore, StoreUnavailable

#: Objects looked up in the catalogue per query (bounded memory at any store size).
BATCH = 500
#: Keys and failures named in the result (the counts are always complete).
MAX_LISTED = 200

_BLOB = re.compile(r"^blobs/([0-9a-f]{2})/([0-9a-f]{64})$")
_THUMB = re.compile(r"^thumbnails/([0-9a-f]{64})\.jpg$")
_MODEL = re.compile(r"^models/([^/]+)/([^/]+)/.+$")


@dataclass
class Summary:
    """What a run found and did; the job's result."""

    dry_run: bool
    grace_hours: float
    scanned: int = 0
    referenced: int = 0
    orphans: int = 0
    young_orphans: int = 0
    collectable: int = 0  # unreferenced and past the grace period: removed, or (dry run) would be
    deleted: int = 0
    bytes_freed: int = 0
    restored: int = 0
    unrecognised: int = 0
    failures: list[dict[str, str]] = field(default_factory=list)
    failed: int = 0
    removed: list[str] = field(default_factory=list)

    def as_result(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "grace_hours": self.grace_hours,
            "scanned": self.scanned,
            "referenced": self.referenced,
            "orphans": self.orphans,
            "young_orphans": self.young_orphans,
            "collectable": self.collectable,
            "deleted": self.deleted,
            "bytes_freed": self.bytes_freed,
            "restored": self.restored,
            "failed": self.failed,
            "failures": self.failures[:MAX_LISTED],
            "removed": self.removed[:MAX_LISTED],
            "unrecognised": self.unrecognised,
        }


# -- what the catalogue names --------------------------------------------------------------------------


def _ref_of(key: str) -> tuple[str, Any] | None:
    """``("sha", sha256)`` or ``("model", (name, version))`` for a collectable key, else None."""
    if m := _BLOB.match(key):
        return ("sha", m.group(2)) if m.group(2).startswith(m.group(1)) else None
    if m := _THUMB.match(key):
        return ("sha", m.group(1))
    if m := _MODEL.match(key):
        return ("model", (m.group(1), m.group(2)))
    return None


def _named(ctx: Context, refs: Iterable[tuple[str, Any]]) -> set[tuple[str, Any]]:
    """Which of ``refs`` a catalogue row names now (indexed look-ups, one query per kind)."""
    refs = list(refs)
    shas = sorted({v for k, v in refs if k == "sha"})
    models = sorted({v for k, v in refs if k == "model"})
    named: set[tuple[str, Any]] = set()
    with ctx.db.read_session() as session:
        if shas:
            named.update(("sha", s) for s in session.scalars(select(Sample.sha256).where(Sample.sha256.in_(shas))))
            named.update(
                ("sha", s)
                for s in session.scalars(select(FederatedSample.sha256).where(FederatedSample.sha256.in_(shas)))
            )
        if models:
            rows = session.execute(
                select(ModelVersion.name, ModelVersion.version).where(
                    tuple_(ModelVersion.name, ModelVersion.version).in_(models)
                )
            ).all()
            named.update(("model", (str(r[0]), str(r[1]))) for r in rows)
    return named


def _batches(items: Iterator[ObjectInfo], size: int) -> Iterator[list[ObjectInfo]]:
    batch: list[ObjectInfo] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _listing(store: ObjectStore) -> Iterator[ObjectInfo]:
    for prefix in ("blobs/", "thumbnails/", "models/"):
        yield from store.list_info(prefix)


# -- the walk -----------------------------------------------------------------------------------------


def _remove(ctx: Context, info: ObjectInfo, ref: tuple[str, Any], summary: Summary) -> None:
    """Remove one orphan, holding its bytes until the catalogue is read again: bytes a row named in
    the meantime are put back (a concurrent upload of exactly these bytes found them stored)."""
    store = ctx.store
    try:
        data = store.get(info.key)
    except ObjectNotFound:
        return  # removed by someone else meanwhile
    store.delete(info.key)
    if ref in _named(ctx, [ref]):
        store.put(info.key, data)
        summary.restored += 1
        return
    summary.deleted += 1
    summary.bytes_freed += len(data)
    summary.removed.append(info.key)


def collect(
    ctx: Context,
    *,
    dry_run: bool = False,
    grace_hours: float = 24.0,
    progress: Callable[[float, str], None] | None = None,
    now: float | None = None,
) -> Summary:
    """Walk the store and remove (or, ``dry_run``, only count) unreferenced objects older than
    ``grace_hours``. A store outage ends the walk (raised: the job fails and can be run again);
    any other failure on one object is counted with its reason and the walk goes on."""
    summary = Summary(dry_run=dry_run, grace_hours=grace_hours)
    cutoff = (time.time() if now is None else now) - grace_hours * 3600.0
    for batch in _batches(_listing(ctx.store), BATCH):
        summary.scanned += len(batch)
        refs = {info.key: _ref_of(info.key) for info in batch}
        named = _named(ctx, [r for r in refs.values() if r is not None])
        for info in batch:
            ref = refs[info.key]
            if ref is None:
                summary.unrecognised += 1
                continue
            if ref in named:
                summary.referenced += 1
                continue
            summary.orphans += 1
            if info.modified is None or info.modified > cutoff:
                summary.young_orphans += 1
                continue
            summary.collectable += 1
            if dry_run:
                summary.removed.append(info.key)
                summary.bytes_freed += info.size
                continue
            try:
                _remove(ctx, info, ref, summary)
            except StoreUnavailable:
                raise
            except (HazardError, OSError) as exc:
                summary.failed += 1
                reason = f"{exc.code}: {exc.message}" if isinstance(exc, HazardError) else repr(exc)
                summary.failures.append({"key": info.key, "reason": reason[:300]})
        if progress is not None:
            progress(0.0, f"{summary.scanned} object(s) looked at, {summary.orphans} unreferenced")
    return summary


# -- the job ------------------------------------------------------------------------------------------


def check_gc(ctx: Context, params: BlobGcJobParams, principal: Principal) -> None:
    """At submission: the store is every organisation's, so only the system organisation's admins."""
    require_system(principal, "removing objects from the shared store", ctx.settings.system_org)


def run_gc(ctx: Context, job: Job, principal: Principal, progress: Callable[[float, str], None]) -> dict[str, Any]:
    """The ``blob_gc`` handler: collect, then audit what was removed (the job's submission is
    audited already)."""
    principal.require("store:gc")
    params = BlobGcJobParams.model_validate(job.params or {})
    check_gc(ctx, params, principal)  # again when it runs: the submitter's role may have changed
    summary = collect(ctx, dry_run=params.dry_run, grace_hours=params.grace_hours, progress=progress)
    result = summary.as_result()
    if not params.dry_run:
        with ctx.db.session() as session:
            record(
                session,
                principal,
                "store.gc",
                "job",
                job.id,
                after={k: v for k, v in result.items() if k != "failures"},
            )
    progress(1.0, f"{summary.deleted} removed, {summary.bytes_freed} bytes freed, {summary.failed} failed")
    return result


def register() -> None:
    """Register ``blob_gc`` (``store:gc``: admins; the check narrows it to the system organisation)."""
    jobs.register("blob_gc", permission="store:gc", handler=run_gc, check=check_gc)


register()

__all__ = ["BATCH", "Summary", "check_gc", "collect", "register", "run_gc"]
