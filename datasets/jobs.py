"""The ``dataset_export`` background job: a dataset version written as YOLO or COCO under the home.

Importing this module registers the kind with the generic queue (:mod:`hazardlens.jobs`); the
parameters are :class:`~hazardlens.contracts.jobs.DatasetExportJobParams`. It registers the datasets
part's other kinds with it: ``blob_gc`` (:mod:`hazardlens.datasets.blob_gc`) and ``library_rebuild``
(:mod:`hazardlens.datasets.rebuild`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hazardlens import jobs
from hazardlens.auth import Principal
from hazardlens.context import Context
from hazardlens.contracts.jobs import DatasetExportJobParams, EvaluateJobParams, TrainJobParams
from hazardlens.orm import Job


def check_dataset(
    ctx: Context, params: TrainJobParams | DatasetExportJobParams | EvaluateJobParams, principal: Principal
) -> None:
    """A dataset the caller cannot see fails the request now (404), not the job later."""
    from hazardlens.datasets.versions import resolve

    with ctx.db.read_session() as session:
        resolve(session, params.dataset, principal if principal.user_id is not None else None)


def run_export(ctx: Context, job: Job, principal: Principal, progress: jobs.Progress) -> dict[str, Any]:
    from hazardlens.datasets.materialize import export_version
    from hazardlens.datasets.versions import resolve

    params = DatasetExportJobParams.model_validate(job.params)
    with ctx.db.session() as session:
        dv = resolve(session, params.dataset, principal if principal.user_id is not None else None)
    out_dir = ctx.settings.home / "exports" / f"job-{job.id}"
    progress(0.05, f"exporting {dv.name} as {params.format} to {out_dir}")
    produced = export_version(ctx, dv, params.format, out_dir, train_caps=params.train_caps)
    files = sum(1 for p in out_dir.rglob("*") if p.is_file()) if out_dir.is_dir() else 0
    result: dict[str, Any] = {
        "dataset": params.dataset,
        "dataset_id": dv.id,
        "format": params.format,
        "path": str(out_dir),
        "files": files,
    }
    if isinstance(produced, str | Path):
        result["output"] = str(produced)
    elif isinstance(produced, dict):
        result["output"] = {
            k: v if isinstance(v, int | float | str | bool | None) else str(v) for k, v in produced.items()
        }
    return result


def register() -> None:
    # blob_gc (garbage collection of the store) and library_rebuild (thumbnails, near-duplicate links) too
    from hazardlens.datasets import blob_gc, rebuild

    jobs.register("dataset_export", permission="datasets:write", handler=run_export, check=check_dataset)
    blob_gc.register()
    rebuild.register()


register()

__all__ = ["check_dataset", "register", "run_export"]
