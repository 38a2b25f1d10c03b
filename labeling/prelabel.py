"""Library-wide pre-labelling (issue 16): the ``prelabel`` job, in shards.

``hazardlens prelabel --org ORG [filters]`` / ``POST /v1/prelabel`` / ``POST /v1/jobs`` with kind
``prelabel`` ask one model version for suggestions on every sample of the caller's organisation that
matches the filters (shared samples of other organisations are theirs to label). The job is planned
into shards of a few hundred samples; each shard runs on whichever worker takes it, and stores its
suggestions (``suggestions.job_id`` = the job) in the transaction that marks it completed, so a
shard run twice (its first worker died, or stalled past its lease) stores them once: a sample never
has two suggestions from one job (a unique index says so too).

Importing this module registers the kind with the job queue (:mod:`hazardlens.jobs`); the server and
the CLI import it. The detector comes from the runner's :class:`~hazardlens.jobrun.Services` (the
server's model manager, or the worker's own), since labeling may not import the models part.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from hazardlens import jobs
from hazardlens.auth import Principal
from hazardlens.context import Context
from hazardlens.contracts.jobs import PrelabelJobParams
from hazardlens.datasets.search import apply_filters
from hazardlens.datasets.tenancy import visibility
from hazardlens.detections import Detections
from hazardlens.detector import detection_taxonomy, relevant
from hazardlens.errors import Conflict, HazardError, NotFound
from hazardlens.jobrun import Plan, ShardResult, ShardWork
from hazardlens.labeling.annotations import label_writable
from hazardlens.labeling.suggestions import store_suggestions
from hazardlens.orm import Job, ModelVersion, Sample
from hazardlens.store import blob_key

#: Images per call to the detector (its micro-batcher shares forward passes across them).
CHUNK = 8
#: Failures kept by name in a shard's and the job's result (the counts are always complete).
MAX_FAILURES = 200


def resolve_model(session: Session, model: str | None) -> str:
    """The version a job runs with: the named one (not archived), or production now."""
    if model is None or model == "production":
        row = session.scalar(
            select(ModelVersion)
            .where(ModelVersion.stage == "production")
            .order_by(ModelVersion.promoted_at.desc(), ModelVersion.id.desc())
            .limit(1)
        )
        if row is None:
            raise NotFound("no model version is in production", code="model_not_found")
        return row.version
    row = session.scalar(select(ModelVersion).where(ModelVersion.version == model).limit(1))
    if row is None:
        raise NotFound(f"no model version {model!r}", code="model_not_found")
    if row.stage == "archived":
        raise Conflict(f"model version {model} is archived and not served", code="model_retired")
    return row.version


def check_prelabel(ctx: Context, params: PrelabelJobParams, principal: Principal) -> None:
    """At submission: the model version exists and is served (a typo fails the request)."""
    with ctx.db.read_session() as session:
        resolve_model(session, params.model)


def plan_prelabel(ctx: Context, job: Job, principal: Principal) -> Plan:
    """Every matching sample the submitter's organisation labels, in id order, cut into shards; the
    model version is fixed here, so every shard uses the same one."""
    principal.require("suggestions:request")
    params = PrelabelJobParams.model_validate(job.params)
    size = params.shard_size or ctx.settings.shard_size
    with ctx.db.read_session() as session:
        version = resolve_model(session, params.model)
        query = select(Sample.id).where(visibility(principal), label_writable(principal))
        query = apply_filters(session, query, params.filters).order_by(Sample.id)
        ids = list(session.scalars(query.execution_options(yield_per=10_000)))
    shards = [{"ids": ids[i : i + size], "version": version} for i in range(0, len(ids), size)]
    return Plan(shards, note=f"{len(ids)} sample(s) of {principal.org_code}, model {version}, {size} per shard")


def _detect(work: ShardWork, version: str, conf: float, shas: list[tuple[int, str]]) -> tuple[list, list]:
    """(sample id, detections) for each photo the model answered, and the samples it could not."""
    ctx = work.ctx
    detector = work.services.detector(ctx)
    taxonomy = detection_taxonomy(ctx)
    done: list[tuple[int, Detections]] = []
    failures: list[dict[str, Any]] = []
    total = len(shas)
    for start in range(0, total, CHUNK):
        chunk = shas[start : start + CHUNK]
        images: list[bytes] = []
        ids: list[int] = []
        for sample_id, sha in chunk:
            try:
                images.append(ctx.store.get(blob_key(sha)))
                ids.append(sample_id)
            except HazardError as exc:
                if exc.status >= 500:  # the store is down: the shard fails (and is retried), not the sample
                    raise
                failures.append({"sample_id": sample_id, "reason": f"{exc.code}: {exc.message}"[:300]})
        if images:
            # bounded like a request: an inference that never answers fails the shard (504, retried with a
            # fresh lease) instead of holding the worker and its queue for ever (as a micro-batcher stall
            # once did in CI; its cause, SimpleQueue.get overshooting its timeout, is fixed in batching.py)
            _, results = detector.detect_many(
                images,
                version=version,
                conf=conf,
                max_pixels=ctx.settings.max_pixels,
                timeout=ctx.settings.request_timeout_s,
            )
            for sample_id, result in zip(ids, results, strict=True):
                if isinstance(result, HazardError):
                    if result.status >= 500:  # the model, not the photo: retry the shard
                        raise result
                    failures.append({"sample_id": sample_id, "reason": f"{result.code}: {result.message}"[:300]})
                else:
                    done.append((sample_id, relevant(taxonomy, result.detections)))
        work.progress(min(1.0, (start + len(chunk)) / max(1, total)), f"{start + len(chunk)}/{total} samples")
    return done, failures


def run_prelabel_shard(work: ShardWork) -> ShardResult:
    """Detect on the shard's samples (still the organisation's and not deleted: checked again now),
    then hand back the suggestions to store with the shard's completion."""
    params = PrelabelJobParams.model_validate(work.params)
    ids = [int(i) for i in work.items["ids"]]
    version = str(work.items["version"])
    principal = work.principal
    with work.ctx.db.read_session() as session:
        rows = session.execute(
            select(Sample.id, Sample.sha256).where(visibility(principal), label_writable(principal), Sample.id.in_(ids))
        ).all()
    found = {int(r[0]): str(r[1]) for r in rows}
    failures = [
        {"sample_id": i, "reason": "deleted, or no longer the organisation's to label"} for i in ids if i not in found
    ]
    predicted, failed = _detect(work, version, params.conf, [(i, found[i]) for i in ids if i in found])
    failures += failed
    result: dict[str, Any] = {
        "model_version": version,
        "samples": len(ids),
        "suggested": 0,
        "boxes": 0,
        "failed": len(failures),
        "failures": failures[:MAX_FAILURES],
    }

    def write(session: Session) -> None:
        for sample_id, detections in predicted:
            row = store_suggestions(session, principal, sample_id, version, detections, job_id=work.job_id)
            result["suggested"] += 1
            result["boxes"] += len(row.boxes)

    return ShardResult(result, write)


def reduce_prelabel(ctx: Context, params: dict[str, Any], results: list[dict[str, Any]]) -> dict[str, Any]:
    """The job's summary: the shards' counts added up, the failures with their reasons."""
    versions = sorted({str(r["model_version"]) for r in results if r.get("model_version")})
    summary: dict[str, Any] = {"model_version": versions[0] if len(versions) == 1 else (versions or None)}
    for key in ("samples", "suggested", "boxes", "failed"):
        summary[key] = sum(int(r.get(key, 0)) for r in results)
    summary["failures"] = [f for r in results for f in r.get("failures", [])][:MAX_FAILURES]
    return summary


def register() -> None:
    """Register ``prelabel`` (curators, reviewers, admins: whoever may ask for suggestions)."""
    jobs.register(
        "prelabel",
        permission="suggestions:request",
        check=check_prelabel,
        plan=plan_prelabel,
        shard=run_prelabel_shard,
        reduce=reduce_prelabel,
    )


register()

__all__ = ["check_prelabel", "plan_prelabel", "reduce_prelabel", "register", "resolve_model", "run_prelabel_shard"]
