"""Background jobs: submit a training run, an evaluation, a dataset export or library-wide batch work,
then poll it.

The queue is :mod:`hazardlens.jobs`; importing :mod:`hazardlens.training.jobs` registers the kinds
(``train``, ``evaluate``, ``dataset_export``, ``blob_gc``, ``library_rebuild``). The body is
:data:`hazardlens.contracts.jobs.JobIn`, the parameters' model chosen by ``kind``, so the document says
exactly which parameters each kind takes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import APIRouter, Body, Depends, FastAPI, Path, Query, Request

import hazardlens.federation.jobs  # noqa: F401 - registers federation_pull
import hazardlens.labeling.prelabel  # noqa: F401 - registers prelabel
import hazardlens.training.jobs  # noqa: F401 - registers the job kinds with the queue
from hazardlens.auth import Principal
from hazardlens.contracts.jobs import JobIn, JobKind, JobPage, JobPublic, JobStatus
from hazardlens.jobrun import Services
from hazardlens.jobs import JobRunner, job_public, job_summary_view, job_view
from hazardlens.models.manager import ModelManager, ModelUnavailable
from hazardlens.serving.deps import PrincipalDep, require
from hazardlens.serving.schemas import errors


def _new_runner(app: FastAPI) -> JobRunner:
    """The app's runner; its jobs (pre-labelling) detect with the app's own model manager. With a
    broker configured it only submits: ``hazardlens worker`` processes run the jobs."""

    def detector(_ctx: object) -> ModelManager:
        manager = getattr(app.state, "models", None)
        if manager is None:
            raise ModelUnavailable("the model manager is not running in this worker")
        return manager

    return JobRunner(app.state.ctx, services=Services(detector_factory=detector))


def get_runner(request: Request) -> JobRunner:
    """One runner per app, made on first use, so submitting works whether or not the worker thread runs."""
    app = request.app
    runner = getattr(app.state, "job_runner", None)
    if runner is None:
        runner = app.state.job_runner = _new_runner(app)
    return runner


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    # FastAPI runs an included router's lifespan inside the app's (after its startup hooks, so the
    # catalogue is ready, and before its shutdown hooks). A router module cannot reach
    # app.state.startup_hooks when it is imported, so the worker starts here.
    runner: JobRunner | None = None
    if getattr(app.state, "start_background", False):
        runner = getattr(app.state, "job_runner", None) or _new_runner(app)
        app.state.job_runner = runner
        runner.start()
    try:
        yield
    finally:
        if runner is not None:
            runner.stop()


router = APIRouter(prefix="/v1/jobs", tags=["jobs"], lifespan=_lifespan)
RunnerDep = Annotated[JobRunner, Depends(get_runner)]


Reader = Annotated[Principal, Depends(require("jobs:read"))]
JobId = Annotated[int, Path(ge=1, le=2**53)]

_EXAMPLES = {
    "train": {
        "summary": "train on a dataset version (admin)",
        "value": {"kind": "train", "params": {"dataset": "ppe@latest", "config": "baseline"}},
    },
    "dataset_export": {
        "summary": "export a dataset version (datasets:write)",
        "value": {
            "kind": "dataset_export",
            "params": {"dataset": "ppe@3", "format": "yolo", "train_caps": {"fire": 100}},
        },
    },
    "prelabel": {
        "summary": "pre-label the organisation's unlabelled dust samples (suggestions:request)",
        "value": {"kind": "prelabel", "params": {"filters": {"sector": "dust", "status": "unlabeled"}}},
    },
    "blob_gc": {
        "summary": "report the store's unreferenced objects older than a day (system organisation's admin)",
        "value": {"kind": "blob_gc", "params": {"dry_run": True, "grace_hours": 24}},
    },
    "library_rebuild": {
        "summary": "rebuild the thumbnails and near-duplicate links of the organisation's dust samples "
        "(samples:delete)",
        "value": {
            "kind": "library_rebuild",
            "params": {"what": ["thumbnails", "near_duplicates"], "filters": {"sector": "dust"}, "shard_size": 200},
        },
    },
    "evaluate": {
        "summary": "evaluate model version 3 on a dataset version's val split, per source too (admin)",
        "value": {
            "kind": "evaluate",
            "params": {"model": "hazardlens", "version": "3", "dataset": "ppe@3", "split": "val", "by_tag": True},
        },
    },
}


@router.post(
    "",
    status_code=202,
    response_model=JobPublic,
    summary="Submit a job (train and evaluate need admin; dataset_export datasets:write; prelabel "
    "suggestions:request; library_rebuild samples:delete; blob_gc an admin of the system organisation)",
    description="Parameters are checked now (unknown ones, a missing training config, a dataset the "
    "caller cannot see), so a typo fails the request, not the job an hour later.",
    responses=errors(401, 403, 404, 409, 413, 422, 503),
)
def submit_job(
    body: Annotated[JobIn, Body(openapi_examples=_EXAMPLES)], principal: PrincipalDep, runner: RunnerDep
) -> JobPublic:
    return job_public(runner.submit_job(body, principal))


@router.get(
    "/{job_id}",
    response_model=JobPublic,
    summary="A job's status, progress, message, log tail, result and error",
    responses=errors(401, 403, 404, 422),
)
def get_job(job_id: JobId, principal: Reader, runner: RunnerDep) -> JobPublic:
    # Another organisation's job is a 404; server paths and tracebacks are the system organisation's only.
    return job_view(runner.get_job(job_id, principal), principal, runner.ctx)


@router.get(
    "",
    response_model=JobPage,
    summary="Recent jobs, newest first (without their log tails)",
    responses=errors(401, 403, 422),
)
def list_jobs(
    principal: Reader,
    runner: RunnerDep,
    status: Annotated[JobStatus | None, Query()] = None,
    kind: Annotated[JobKind | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> JobPage:
    jobs = runner.list_jobs(principal, status=status, kind=kind, limit=limit)
    # The log tail is left out of the list (it can be 100 kB a job); GET /v1/jobs/{id} has it.
    return JobPage(items=[job_summary_view(j, principal, runner.ctx) for j in jobs])
