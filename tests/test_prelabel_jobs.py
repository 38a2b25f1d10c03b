"""Library-wide pre-labelling as a sharded job (issue 16, item 2), on the embedded runner: the plan
(the organisation's matching samples, in shards), one suggestion per sample from the job, progress
summed over shards, a failed shard retried, a shard run twice committing once, and the summary."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select, update

from hazardlens.auth import Principal, ensure_user
from hazardlens.context import Context
from hazardlens.datasets.library import IngestMeta, ingest
from hazardlens.jobrun import Services, claim_shard, run_shard
from hazardlens.jobs import registered
from hazardlens.models.manager import ModelManager, ModelUnavailable
from hazardlens.orm import Job, JobShard, Sample, Suggestion
from hazardlens.store import blob_key
from tests.fixtures.core import auth
from tests.fixtures.serving import photo


def _samples(ctx: Context, org: str, seeds: range, sector: str = "general", scope: str = "private") -> list[int]:
    with ctx.db.session() as s:
        user = ensure_user(s, org, f"uploader-{org}", "curator")
        who = Principal(user.id, user.name, org, "curator")
        return [
            ingest(ctx, s, who, photo(seed=seed), IngestMeta(sector=sector, scope=scope)).sample.id for seed in seeds
        ]


def _job_suggestions(ctx: Context, job_id: int) -> dict[int, int]:
    with ctx.db.read_session() as s:
        rows = s.execute(
            select(Suggestion.sample_id, func.count()).where(Suggestion.job_id == job_id).group_by(Suggestion.sample_id)
        ).all()
    return {int(a): int(b) for a, b in rows}


def test_prelabel_endpoint_runs_in_shards_and_summarises(api: Any, ctx: Context, make_key: Any) -> None:
    ours = _samples(ctx, "420000", range(7))
    other_sector = _samples(ctx, "420000", range(20, 22), sector="dust")
    theirs_shared = _samples(ctx, "310000", range(30, 32), scope="shared")  # visible, but theirs to label
    broken = ours[3]
    with ctx.db.read_session() as s:
        sha = s.get(Sample, broken).sha256
    ctx.store._path(blob_key(sha)).write_bytes(b"not an image any more")  # type: ignore[attr-defined]

    curator = make_key("420000", "curator", "pl-curator")
    body = {"filters": {"sector": "general"}, "model": "1", "conf": 0.01, "shard_size": 3}
    r = api.post("/v1/prelabel", json=body, headers=auth(curator))
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["kind"] == "prelabel" and job["status"] == "queued"

    api.app.state.job_runner.run_pending()
    done = api.get(f"/v1/jobs/{job['id']}", headers=auth(curator)).json()
    assert done["status"] == "completed", done
    assert done["progress"] == 1.0 and done["shards"] == 3
    result = done["result"]
    assert result["samples"] == 7 and result["suggested"] == 6 and result["failed"] == 1
    assert result["model_version"] == "1" and result["shards"] == 3 and result["shards_failed"] == []
    assert [f["sample_id"] for f in result["failures"]] == [broken] and result["failures"][0]["reason"]
    assert result["boxes"] > 0
    per_sample = _job_suggestions(ctx, job["id"])
    assert per_sample == {i: 1 for i in ours if i != broken}
    assert not set(per_sample) & set(other_sector + theirs_shared)
    assert "planned 3 shard(s)" in done["log"] and "shard 3/3 done" in done["log"]


def test_prelabel_submission_is_checked(api: Any, ctx: Context, make_key: Any) -> None:
    curator = make_key("420000", "curator", "pl-curator-2")
    inspector = make_key("420000", "inspector", "pl-inspector")
    assert api.post("/v1/prelabel", json={}, headers=auth(inspector)).status_code == 403
    r = api.post("/v1/prelabel", json={"model": "99"}, headers=auth(curator))
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    r = api.post("/v1/prelabel", json={"filters": {"colour": "red"}}, headers=auth(curator))
    assert r.status_code == 422
    r = api.post("/v1/jobs", json={"kind": "prelabel", "params": {"shard_size": 0}}, headers=auth(curator))
    assert r.status_code == 422
    # nothing matches: completed at once, with an empty summary
    r = api.post("/v1/prelabel", json={"filters": {"sector": "dust"}}, headers=auth(curator))
    assert r.status_code == 202, r.text
    api.app.state.job_runner.run_pending()
    done = api.get(f"/v1/jobs/{r.json()['id']}", headers=auth(curator)).json()
    assert done["status"] == "completed" and done["shards"] == 0
    assert done["result"]["samples"] == 0 and done["result"]["suggested"] == 0


class _FlakyDetector:
    """The real model manager, refusing the first ``failures`` batches as a model outage would."""

    def __init__(self, manager: ModelManager, failures: int) -> None:
        self.manager, self.failures = manager, failures

    def detect_many(self, images: Any, **kwargs: Any) -> Any:
        if self.failures > 0:
            self.failures -= 1
            raise ModelUnavailable("model is being swapped")
        return self.manager.detect_many(images, **kwargs)


def _runner(ctx: Context, detector: Any) -> Any:
    from hazardlens.jobs import JobRunner

    return JobRunner(ctx, services=Services(detector_factory=lambda _ctx: detector))


def _curator(ctx: Context) -> Principal:
    with ctx.db.session() as s:
        user = ensure_user(s, "420000", "pl-cur", "curator")
        return Principal(user.id, user.name, "420000", "curator")


def test_a_failed_shard_is_retried_and_a_shard_run_twice_commits_once(
    ctx: Context, model_variants: Any, shared_loader: Any
) -> None:
    import hazardlens.labeling.prelabel  # noqa: F401 - registers the kind
    from tests.fixtures.serving import register

    register(ctx, model_variants[0], "1")
    ids = _samples(ctx, "420000", range(5))
    manager = ModelManager(ctx, loader=shared_loader, poll_s=3600)
    try:
        flaky = _FlakyDetector(manager, failures=1)
        runner = _runner(ctx, flaky)
        job = runner.submit("prelabel", {"shard_size": 2, "conf": 0.01}, _curator(ctx))
        runner.run(job.id)
        row = runner.get_job(job.id)
        assert row.status == "completed" and row.result["suggested"] == 5, row.result
        assert "shard 1 will be retried: model_unavailable" in row.log
        with ctx.db.read_session() as s:
            attempts = dict(s.execute(select(JobShard.idx, JobShard.attempts).where(JobShard.job_id == job.id)).all())
        assert attempts == {0: 2, 1: 1, 2: 1}
        assert _job_suggestions(ctx, job.id) == {i: 1 for i in ids}

        # A second runner takes a shard whose first runner stopped beating; the first runner's late
        # result is then refused, and a completed shard run again writes nothing.
        job2 = runner.submit("prelabel", {"shard_size": 5, "conf": 0.01}, _curator(ctx))
        with ctx.db.session() as s:  # plan it without running it
            s.execute(update(Job).where(Job.id == job2.id).values(status="running", shards=1))
            s.add(JobShard(job_id=job2.id, idx=0, items={"ids": ids, "version": "1"}))
        with ctx.db.read_session() as s:
            shard_id = s.scalar(select(JobShard.id).where(JobShard.job_id == job2.id))
        assert claim_shard(ctx, shard_id, "host:1:dead")  # a runner that then died
        assert not claim_shard(ctx, shard_id, "host:2:other")  # its lease is fresh: nobody else may take it
        with ctx.db.session() as s:
            s.execute(update(JobShard).where(JobShard.id == shard_id).values(heartbeat_at=None))
        services = Services(detector_factory=lambda _ctx: manager)
        assert run_shard(ctx, shard_id, registered(), owner="host:3:taker", services=services) == "done"
        assert run_shard(ctx, shard_id, registered(), owner="host:4:late", services=services) == "gone"
        assert _job_suggestions(ctx, job2.id) == {i: 1 for i in ids}
        final = runner.get_job(job2.id)
        assert final.status == "completed" and final.result["suggested"] == 5
        with ctx.db.read_session() as s:
            shard = s.get(JobShard, shard_id)
            assert shard.attempts == 2 and shard.status == "completed"
    finally:
        manager.close()


def test_one_suggestion_per_job_and_sample_is_a_database_rule(ctx: Context) -> None:
    from sqlalchemy.exc import IntegrityError

    [sample] = _samples(ctx, "420000", range(1))
    with ctx.db.session() as s:
        job = Job(kind="prelabel", status="running", params={})
        s.add(job)
        s.flush()
        job_id = job.id
        s.add(Suggestion(sample_id=sample, model_version="1", boxes=[], job_id=job_id))
    with pytest.raises(IntegrityError), ctx.db.session() as s:
        s.add(Suggestion(sample_id=sample, model_version="1", boxes=[], job_id=job_id))
    with ctx.db.session() as s:  # suggestions asked for by hand (no job) may repeat
        s.add_all(Suggestion(sample_id=sample, model_version="1", boxes=[]) for _ in range(2))
