"""Background jobs: submit a training run or a dataset export, then poll it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from pydantic import BaseModel, Field

from hazardlens.auth import Principal
from hazardlens.serving.deps import PrincipalDep, require
from hazardlens.training.jobs import JobRunner, job_dict


def get_runner(request: Request) -> JobRunner:
    """One runner per app, made on first use, so submitting works whether or not the worker thread runs."""
    app = request.app
    runner = getattr(app.state, "job_runner", None)
    if runner is None:
        runner = app.state.job_runner = JobRunner(app.state.ctx)
    return runner


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    # FastAPI runs an included router's lifespan inside the app's (after its startup hooks, so the
    # catalogue is ready, and before its shutdown hooks). A router module cannot reach
    # app.state.startup_hooks when it is imported, so the worker starts here.
    runner: JobRunner | None = None
    if getattr(app.state, "start_background", False):
        runner = getattr(app.state, "job_runner", None) or JobRunner(app.state.ctx)
        app.state.job_runner = runner
        runner.start()
    try:
        yield
    finally:
        if runner is not None:
            runner.stop()


router = APIRouter(prefix="/v1/jobs", tags=["jobs"], lifespan=_lifespan)
RunnerDep = Annotated[JobRunner, Depends(get_runner)]


class JobIn(BaseModel):
    kind: Literal["train", "dataset_export"]
    params: dict[str, Any] = Field(default_factory=dict, description=(
        "train: {dataset: 'NAME@VERSION', config: 'baseline', resume?: bool, register?: bool}; "
        "dataset_export: {dataset: 'NAME@VERSION', format?: 'yolo', train_caps?: {class: n}}"))


@router.post("", status_code=202, summary="Submit a job (train needs admin; dataset_export datasets:write)")
def submit_job(body: JobIn, principal: PrincipalDep, runner: RunnerDep) -> dict[str, Any]:
    return job_dict(runner.submit(body.kind, body.params, principal))


@router.get("/{job_id}", summary="A job's status, progress, message, log tail, result and error")
def get_job(job_id: int, principal: Annotated[Principal, Depends(require("jobs:read"))],
            runner: RunnerDep) -> dict[str, Any]:
    return job_dict(runner.get_job(job_id, principal))


@router.get("", summary="Recent jobs, newest first")
def list_jobs(principal: Annotated[Principal, Depends(require("jobs:read"))], runner: RunnerDep,
              status: Annotated[str | None, Query(description="queued|running|completed|failed")] = None,
              kind: Annotated[str | None, Query()] = None,
              limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> dict[str, Any]:
    jobs = runner.list_jobs(principal, status=status, kind=kind, limit=limit)
    # The log tail is left out of the list (it can be 100 kB a job); GET /v1/jobs/{id} has it.
    return {"items": [{k: v for k, v in job_dict(j).items() if k != "log"} for j in jobs]}
