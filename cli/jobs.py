"""``hazardlens jobs ...``: submit, list, show and work background jobs (the queue the server runs).

A job submitted here is validated by the same models as ``POST /v1/jobs``
(:mod:`hazardlens.contracts.jobs`) and lands in the same queue: a running server works it, or
``hazardlens jobs work`` does in the foreground. ``--json`` prints the API's shapes (JobPublic, JobPage).
"""

from __future__ import annotations

import json
from typing import Any

import typer
from rich.table import Table

from hazardlens.cli.common import ORG_HELP, cli_principal, console, context, friendly_errors
from hazardlens.context import Context
from hazardlens.contracts.jobs import JOB_KINDS, JOB_STATUSES, JobPage
from hazardlens.errors import Invalid


def _ready() -> Context:
    ctx = context()
    ctx.init()
    return ctx


def _runner(ctx: Context) -> Any:
    from hazardlens.cli.worker import detector_services, register_kinds
    from hazardlens.jobs import JobRunner

    register_kinds()
    return JobRunner(ctx, services=detector_services())


def parse_params(pairs: list[str] | None, raw: str | None) -> dict[str, Any]:
    """``--params JSON`` then each ``--param KEY=VALUE`` (a JSON value such as ``true`` or ``3``, else text)."""
    params: dict[str, Any] = {}
    if raw:
        try:
            loaded = json.loads(raw)
        except ValueError as exc:
            raise Invalid(f"--params is not JSON: {exc}", code="invalid_job") from None
        if not isinstance(loaded, dict):
            raise Invalid("--params must be a JSON object", code="invalid_job")
        params.update(loaded)
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise Invalid(f"--param takes KEY=VALUE (e.g. dataset=ppe@latest), not {pair!r}", code="invalid_job")
        try:
            params[key.strip()] = json.loads(value)
        except ValueError:
            params[key.strip()] = value
    return params


_PARAMS_HELP = 'all parameters as JSON, e.g. \'{"dataset": "ppe@3", "train_caps": {"fire": 100}}\''


def _print(model: Any) -> None:
    print(json.dumps(model.model_dump(mode="json"), ensure_ascii=False, indent=2))


def register(app: typer.Typer) -> None:
    jobs = typer.Typer(no_args_is_help=True, help="Background jobs: " + ", ".join(JOB_KINDS) + ".")
    app.add_typer(jobs, name="jobs")

    @jobs.command("submit")
    @friendly_errors
    def submit(
        kind: str = typer.Argument(..., help=" | ".join(JOB_KINDS)),
        param: list[str] = typer.Option(
            None, "--param", help="KEY=VALUE, e.g. dataset=ppe@latest config=baseline (repeat)"
        ),
        params: str = typer.Option(None, "--params", help=_PARAMS_HELP),
        org: str = typer.Option(..., "--org", help=ORG_HELP),
        as_json: bool = typer.Option(False, "--json", help="print the job as JSON"),
    ) -> None:
        """Queue a job (checked now: parameters, training config, dataset visibility); prints its id."""
        from hazardlens.jobs import job_public

        ctx = _ready()
        principal = cli_principal(ctx, org)
        job = job_public(_runner(ctx).submit(kind, parse_params(param, params), principal))
        ctx.close()
        if as_json:
            _print(job)
            return
        console.print(f"queued {job.kind} job {job.id} with {json.dumps(job.params, ensure_ascii=False)}")
        print(job.id)

    @jobs.command("list")
    @friendly_errors
    def list_(
        status: str = typer.Option(None, "--status", help=" | ".join(JOB_STATUSES)),
        kind: str = typer.Option(None, "--kind", help=" | ".join(JOB_KINDS)),
        limit: int = typer.Option(100, "--limit", min=1, max=1000),
        org: str = typer.Option(None, "--org", help=ORG_HELP + " (default: every organisation)"),
        as_json: bool = typer.Option(False, "--json", help="print JSON"),
    ) -> None:
        """Recent jobs, newest first."""
        from hazardlens.jobs import job_summary

        ctx = _ready()
        principal = cli_principal(ctx, org) if org else None
        page = JobPage(
            items=[job_summary(j) for j in _runner(ctx).list_jobs(principal, status=status, kind=kind, limit=limit)]
        )
        ctx.close()
        if as_json:
            _print(page)
            return
        table = Table("id", "kind", "status", "progress", "message", "created")
        for j in page.items:
            table.add_row(
                str(j.id),
                j.kind,
                j.status,
                f"{j.progress:.0%}",
                (j.error or j.message or "")[:60],
                (j.created_at or "")[:19],
            )
        console.print(table)

    @jobs.command("show")
    @friendly_errors
    def show(
        job_id: int = typer.Argument(..., min=1), as_json: bool = typer.Option(False, "--json", help="print JSON")
    ) -> None:
        """One job: status, progress, result or error, and its log tail."""
        from hazardlens.jobs import job_public

        ctx = _ready()
        job = job_public(_runner(ctx).get_job(job_id))
        ctx.close()
        if as_json:
            _print(job)
            return
        console.print(f"job {job.id} {job.kind}: {job.status} {job.progress:.0%} {job.message or ''}")
        if job.error:
            console.print(f"[red]error[/red]: {job.error}")
        if job.result:
            print(json.dumps(job.result, ensure_ascii=False, indent=2))
        if job.log:
            console.print(job.log, markup=False, highlight=False)

    @jobs.command("work")
    @friendly_errors
    def work() -> None:
        """Run the queued jobs in this process, one after the other, until the queue is empty (for an
        installation without a running server; a server works the queue itself)."""
        from hazardlens.jobs import job_summary

        ctx = _ready()
        done = [job_summary(j) for j in _runner(ctx).run_pending()]
        ctx.close()
        for j in done:
            console.print(f"job {j.id} {j.kind}: {j.status}" + (f" ({j.error})" if j.error else ""))
        if any(j.status == "failed" for j in done):
            raise typer.Exit(1)


__all__ = ["parse_params", "register"]
