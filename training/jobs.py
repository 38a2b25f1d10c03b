"""The ``train`` background job, and the import path the job runner used to have.

The generic queue and runner moved to :mod:`hazardlens.jobs` (the core); the ``dataset_export``
handler to :mod:`hazardlens.datasets.jobs`. Importing this module registers ``train``, ``evaluate``
(:mod:`hazardlens.training.eval_job`) and the datasets part's kinds, so the server and the CLI wire
every job kind by importing it. ``JobRunner``, ``job_dict`` and friends are
re-exported here for the callers that imported them from ``hazardlens.training.jobs``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hazardlens import jobs
from hazardlens.auth import Principal
from hazardlens.context import Context
from hazardlens.contracts.jobs import TrainJobParams
from hazardlens.datasets import jobs as dataset_jobs
from hazardlens.errors import Invalid
from hazardlens.jobs import INTERRUPTED, STATUSES, Handler, JobRunner, job_dict, job_public, job_summary
from hazardlens.orm import Job
from hazardlens.settings import config_dirs


def _config_path(ctx: Context, value: Any) -> Path:
    """A training config by name: <home>/configs/train/*.yaml, $HAZARDLENS_CONFIG_DIR/train/*.yaml or
    the shipped configs/train/*.yaml, first wins. Only names, never paths, are accepted from a job: a
    job must not read arbitrary files on the server."""
    if not isinstance(value, str) or not value.strip():
        raise Invalid("train job needs 'config': the name of a training config such as 'baseline'", code="invalid_job")
    name = value.strip()
    if "/" in name or "\\" in name or name.startswith("."):
        raise Invalid(f"config {name!r} must be a config name (e.g. 'baseline'), not a path", code="invalid_job")
    stem = name[:-5] if name.endswith(".yaml") else name
    folders = [ctx.settings.home / "configs" / "train", *config_dirs("train")]
    for folder in folders:
        if (folder / f"{stem}.yaml").is_file():
            return folder / f"{stem}.yaml"
    known = sorted({p.stem for f in folders if f.is_dir() for p in f.glob("*.yaml")})
    raise Invalid(f"unknown training config {name!r}; known: {', '.join(known) or 'none'}", code="invalid_job")


def check_train(ctx: Context, params: TrainJobParams, principal: Principal) -> None:
    """At submission: the config exists and the dataset is visible to the caller."""
    _config_path(ctx, params.config)
    dataset_jobs.check_dataset(ctx, params, principal)


def run_train(ctx: Context, job: Job, principal: Principal, progress: jobs.Progress) -> dict[str, Any]:
    from hazardlens.training.train import train

    params = TrainJobParams.model_validate(job.params)
    result = train(
        ctx,
        params.dataset,
        _config_path(ctx, params.config),
        progress=progress,
        resume=params.resume,
        register=params.register_model,
        principal=principal,
    )
    out = result.to_dict()
    out.pop("epochs", None)  # in the run folder's metrics.json; the row keeps the summary
    return out


def register() -> None:
    """Register ``train`` (admins only; Ultralytics' log lines go to the job's log tail), ``evaluate``
    (:mod:`hazardlens.training.eval_job`) and the datasets part's kinds with the job queue."""
    from hazardlens.training import eval_job

    jobs.register("train", permission="train", handler=run_train, check=check_train, loggers=("ultralytics",))
    eval_job.register()
    dataset_jobs.register()


register()

#: kind -> handler, as registered (kept for callers of the former module).
HANDLERS: dict[str, Handler] = {kind: t.handler for kind, t in jobs.registered().items()}

__all__ = [
    "HANDLERS",
    "INTERRUPTED",
    "STATUSES",
    "JobRunner",
    "check_train",
    "job_dict",
    "job_public",
    "job_summary",
    "register",
    "run_train",
]
