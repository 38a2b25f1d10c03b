"""The background jobs runner and /v1/jobs: submission rules, progress on the row, restart recovery."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from sqlalchemy import update

from hazardlens.audit import history
from hazardlens.auth import ensure_user
from hazardlens.context import Context
from hazardlens.errors import Forbidden, Invalid, NotFound
from hazardlens.orm import Job
from hazardlens.training.jobs import INTERRUPTED, JobRunner, job_dict
from tests.fixtures.core import auth
from tests.fixtures.training import TinyDataset


def _row(ctx: Context, job_id: int) -> Job:
    with ctx.db.session() as s:
        job = s.get(Job, job_id)
        assert job is not None
        return job


def test_dataset_export_job_runs_and_records_its_result(ctx: Context, tiny_dataset: TinyDataset) -> None:
    runner = JobRunner(ctx)
    job = runner.submit("dataset_export", {"dataset": tiny_dataset.ref}, tiny_dataset.principal)
    assert job.status == "queued" and job.params == {"dataset": tiny_dataset.ref, "format": "yolo"}

    done = runner.run_pending()
    assert [j.id for j in done] == [job.id]
    row = _row(ctx, job.id)
    assert row.status == "completed" and row.progress == 1.0 and row.error is None
    assert row.started_at is not None and row.finished_at is not None
    out = Path(row.result["path"])
    assert out == ctx.settings.home / "exports" / f"job-{job.id}"
    assert yaml.safe_load((out / "data.yaml").read_text())["names"] == {0: "fire", 1: "accumulated_dust"}
    assert row.result["files"] > 12 and row.result["dataset_id"] == tiny_dataset.version_id
    assert "completed" in row.log and "exporting tiny" in row.log
    with ctx.db.session() as s:
        assert [e.action for e in history(s, entity="job", entity_id=job.id)] == ["job.submit", "job.complete"]


def test_progress_message_and_log_are_written_while_running(ctx: Context, tiny_dataset: TinyDataset) -> None:
    seen: list[dict[str, Any]] = []

    def fake_train(ctx_: Context, job: Job, principal: Any, progress: Any) -> dict[str, Any]:
        assert principal.user_id == tiny_dataset.principal.user_id  # runs as the submitter
        for i, fraction in enumerate((0.25, 0.5)):
            progress(fraction, f"epoch {i + 1}/4 done")
            row = _row(ctx, job.id)
            seen.append({"status": row.status, "progress": row.progress, "message": row.message, "log": row.log})
        return {"model": "hazardlens:7"}

    runner = JobRunner(ctx, flush_s=0, handlers={"train": fake_train})  # default: at most one write a second
    job = runner.submit("train", {"dataset": tiny_dataset.ref, "config": "tiny"}, tiny_dataset.principal)
    assert job.params == {"dataset": tiny_dataset.ref, "config": "tiny", "resume": False, "register": True}
    runner.run_next()
    assert [s["progress"] for s in seen] == [0.25, 0.5]
    assert seen[0]["status"] == "running" and seen[1]["message"] == "epoch 2/4 done"
    assert "epoch 1/4 done" in seen[1]["log"] and "epoch 2/4 done" in seen[1]["log"]
    row = _row(ctx, job.id)
    assert row.status == "completed" and row.result == {"model": "hazardlens:7"} and row.progress == 1.0


def test_a_failing_job_keeps_its_error_and_log(ctx: Context, tiny_dataset: TinyDataset) -> None:
    def broken(ctx_: Context, job: Job, principal: Any, progress: Any) -> dict[str, Any]:
        progress(0.1, "loading")
        raise RuntimeError("disk full")

    runner = JobRunner(ctx, handlers={"dataset_export": broken})
    job = runner.submit("dataset_export", {"dataset": tiny_dataset.ref}, tiny_dataset.principal)
    runner.run_pending()
    row = _row(ctx, job.id)
    assert row.status == "failed" and row.error == "RuntimeError: disk full"
    assert "RuntimeError: disk full" in row.log and "loading" in row.log


def test_submission_is_checked(ctx: Context, tiny_dataset: TinyDataset) -> None:
    runner = JobRunner(ctx)
    with ctx.db.session() as s:
        curator = ensure_user(s, "420000", "cur", "curator")
        outsider = ensure_user(s, "310000", "adm-sh", "admin")
    from hazardlens.auth import Principal

    cur = Principal(curator.id, curator.name, "420000", "curator")
    other = Principal(outsider.id, outsider.name, "310000", "admin")
    with pytest.raises(Forbidden):
        runner.submit("train", {"dataset": tiny_dataset.ref, "config": "tiny"}, cur)  # train is admin-only
    with pytest.raises(Invalid, match="unknown training config"):
        runner.submit("train", {"dataset": tiny_dataset.ref, "config": "nope"}, tiny_dataset.principal)
    with pytest.raises(Invalid, match="not a path"):
        runner.submit("train", {"dataset": tiny_dataset.ref, "config": "../../etc/passwd"}, tiny_dataset.principal)
    with pytest.raises(Invalid, match="unknown job kind"):
        runner.submit("reindex", {}, tiny_dataset.principal)
    with pytest.raises(NotFound):  # another organisation's dataset is invisible
        runner.submit("dataset_export", {"dataset": tiny_dataset.ref}, other)
    job = runner.submit("dataset_export", {"dataset": tiny_dataset.ref}, cur)  # datasets:write suffices
    assert runner.get_job(job.id, cur).id == job.id
    with pytest.raises(NotFound):
        runner.get_job(job.id, Principal(None, "x", "310000", "curator"))
    assert [j.id for j in runner.list_jobs(cur)] == [job.id]
    assert runner.list_jobs(Principal(None, "x", "310000", "curator")) == []


def test_restart_fails_running_jobs_and_resumes_queued_ones(ctx: Context, tiny_dataset: TinyDataset) -> None:
    first = JobRunner(ctx)
    running = first.submit("dataset_export", {"dataset": tiny_dataset.ref}, tiny_dataset.principal)
    queued = first.submit("dataset_export", {"dataset": tiny_dataset.ref}, tiny_dataset.principal)
    with ctx.db.session() as s:  # the first process died half-way through `running`
        s.execute(update(Job).where(Job.id == running.id).values(status="running", progress=0.4))

    second = JobRunner(ctx, poll_s=0.05)
    assert second.start()
    try:
        # a second runner on the same home only submits: it cannot take the queue's lock
        assert not JobRunner(ctx).start()
        row = _row(ctx, running.id)  # cut off half-way: failed, with the reason, its state kept
        assert row.status == "failed" and row.error == INTERRUPTED and "was running" in row.message
        assert row.progress == 0.4
        # the queued one never started: the restarted runner works it (issue 13, item 8)
        deadline = time.monotonic() + 60
        while _row(ctx, queued.id).status in ("queued", "running") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _row(ctx, queued.id).status == "completed", _row(ctx, queued.id).error
        # the restarted runner works new jobs in its thread
        fresh = second.submit("dataset_export", {"dataset": tiny_dataset.ref}, tiny_dataset.principal)
        deadline = time.monotonic() + 60
        while _row(ctx, fresh.id).status in ("queued", "running") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _row(ctx, fresh.id).status == "completed"
    finally:
        second.stop()
    assert not second.running


def test_jobs_api(ctx: Context, client, make_key, tiny_dataset: TinyDataset) -> None:  # type: ignore[no-untyped-def]
    admin, curator = make_key("420000", "admin"), make_key("420000", "curator")
    inspector, other = make_key("420000", "inspector"), make_key("310000", "curator")

    r = client.post(
        "/v1/jobs",
        json={"kind": "train", "params": {"dataset": tiny_dataset.ref, "config": "tiny"}},
        headers=auth(curator),
    )
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    r = client.post("/v1/jobs", json={"kind": "fly", "params": {}}, headers=auth(admin))
    assert r.status_code == 422
    r = client.post(
        "/v1/jobs",
        json={"kind": "train", "params": {"dataset": tiny_dataset.ref, "config": "tiny", "epochs": 3}},
        headers=auth(admin),
    )
    assert r.status_code == 422 and "epochs" in r.json()["error"]["message"]

    r = client.post(
        "/v1/jobs", json={"kind": "dataset_export", "params": {"dataset": tiny_dataset.ref}}, headers=auth(curator)
    )
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["status"] == "queued" and job["kind"] == "dataset_export"

    client.app.state.job_runner.run_pending()  # tests run the queue synchronously
    r = client.get(f"/v1/jobs/{job['id']}", headers=auth(curator))
    body = r.json()
    assert r.status_code == 200 and body["status"] == "completed" and body["progress"] == 1.0
    assert body["result"]["format"] == "yolo" and "completed" in body["log"]
    assert client.get(f"/v1/jobs/{job['id']}", headers=auth(other)).status_code == 404
    assert client.get(f"/v1/jobs/{job['id']}", headers=auth(inspector)).status_code == 403
    listed = client.get("/v1/jobs", headers=auth(admin)).json()["items"]
    assert [j["id"] for j in listed] == [job["id"]] and "log" not in listed[0]
    assert client.get("/v1/jobs", headers=auth(other)).json()["items"] == []
    assert client.get("/v1/jobs?status=bogus", headers=auth(admin)).status_code == 422


def test_the_router_lifespan_starts_the_worker_only_when_asked(ctx: Context) -> None:
    from hazardlens.serving.routes.jobs import _lifespan

    async def cycle(start: bool) -> tuple[bool, bool]:
        app = SimpleNamespace(state=SimpleNamespace(ctx=ctx, start_background=start))
        async with _lifespan(app):  # type: ignore[arg-type]
            runner = getattr(app.state, "job_runner", None)
            during = bool(runner and runner.running)
        return during, bool(runner and runner.running)

    assert asyncio.run(cycle(False)) == (False, False)
    assert asyncio.run(cycle(True)) == (True, False)
    assert job_dict(Job(id=1, kind="train", status="queued", params={}, progress=0.0, message="", log=""))["id"] == 1
