"""The ``evaluate`` background job (issue 16, item 2): re-evaluate a registered model version on a
dataset version, on a worker, with the code ``hazardlens evaluate`` runs
(:func:`hazardlens.training.evaluate.evaluate` and its Markdown :func:`write_report`).

``POST /v1/jobs`` with kind ``evaluate``, or ``hazardlens evaluate MODEL --dataset D --as-job``. The
parameters are :class:`~hazardlens.contracts.jobs.EvaluateJobParams`; the result is the summary
figures (overall precision, recall, mAP50 and mAP50-95, AP50 per class, per source with ``by_tag``)
and where the full report lies (``<home>/evals/job-<id>/report.json`` and ``report.md``, with the
plots).

Not sharded: a mAP is computed over every prediction of the split at once (the precision-recall
curve of a class ranks all its detections together), so shards' figures could not be added up. It
goes to the ``gpu`` queue when the deployment has one (:data:`hazardlens.jobs.GPU_KINDS`), as
training does. Permission ``train`` (admins), as for training: both run a model over a dataset for
as long as it takes on the same workers. The result is written into the model card (a model on its
own dataset's test split, as the CLI does) only when an administrator of the system organisation
asked: the registry is every organisation's, and one organisation's evaluation must not rewrite it.

The model and the dataset are checked at submission (:func:`check_evaluate`), so a wrong name fails
the request with 404, not the job later.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

from sqlalchemy.orm import Session

from hazardlens import jobs
from hazardlens.auth import Principal, is_system
from hazardlens.context import Context
from hazardlens.contracts.jobs import EvaluateJobParams
from hazardlens.datasets import jobs as dataset_jobs
from hazardlens.orm import Job, ModelVersion

#: Who may submit it: the permission of training (see the module docstring).
PERMISSION = "train"


def registered_model(session: Session, name: str, version: str) -> ModelVersion:
    """The registry row the job evaluates (the production version for 'production')."""
    from hazardlens.training.evaluate import registered_version

    return cast(ModelVersion, registered_version(session, name, version))


def check_evaluate(ctx: Context, params: EvaluateJobParams, principal: Principal) -> None:
    """At submission: the model version is registered and the dataset version is visible to the caller."""
    with ctx.db.read_session() as session:
        registered_model(session, params.model, params.version)
    dataset_jobs.check_dataset(ctx, params, principal)


def summarise(report: Any, report_md: Path) -> dict[str, Any]:
    """The figures a caller reads off the job (the whole report is in its folder)."""
    overall = report.overall
    result: dict[str, Any] = {
        "model": report.label,
        "dataset": report.dataset.get("ref"),
        "dataset_id": report.dataset.get("id"),
        "split": report.split,
        **{k: overall.get(k) for k in ("images", "instances", "precision", "recall", "map50", "map50_95")},
        "per_class": {c.key: c.map50 for c in report.per_class},
        "report": str(Path(report.out_dir) / "report.json"),
        "report_md": str(report_md),
        "recorded_in_card": report.recorded_in_card,
    }
    if report.per_tag:
        result["per_tag"] = {
            g.tag: {
                "images": g.overall.get("images"),
                "map50": g.overall.get("map50"),
                "map50_95": g.overall.get("map50_95"),
                "per_class": {c.key: c.map50 for c in g.per_class},
            }
            for g in report.per_tag
        }
    return result


def run_evaluate(ctx: Context, job: Job, principal: Principal, progress: jobs.Progress) -> dict[str, Any]:
    """Evaluate the version fixed when the job starts (``production`` is read once, here) on the
    dataset version's split, into ``<home>/evals/job-<id>``."""
    from hazardlens.training.evaluate import evaluate, write_report

    params = EvaluateJobParams.model_validate(job.params)
    with ctx.db.read_session() as session:
        mv = registered_model(session, params.model, params.version)
        ref = f"{mv.name}:{mv.version}"
    out_dir = ctx.settings.home / "evals" / f"job-{job.id}"
    progress(0.05, f"evaluating {ref} on {params.dataset} ({params.split})")
    report = evaluate(
        ctx,
        ref,
        params.dataset,
        params.split,
        out_dir=out_dir,
        principal=principal,
        by_tag=params.by_tag,
        record_in_card=is_system(principal, ctx.settings.system_org),
    )
    report_md = write_report([report], Path(report.out_dir))
    overall = report.overall
    progress(1.0, f"{ref}: mAP50 {overall.get('map50', 0):.3f}, mAP50-95 {overall.get('map50_95', 0):.3f}")
    return summarise(report, report_md)


def register() -> None:
    """Register ``evaluate`` (admins; the gpu queue when there is one; Ultralytics' log lines go to
    the job's log tail)."""
    jobs.register(
        "evaluate", permission=PERMISSION, handler=run_evaluate, check=check_evaluate, loggers=("ultralytics",)
    )


register()

__all__ = ["PERMISSION", "check_evaluate", "register", "registered_model", "run_evaluate", "summarise"]
