"""``hazardlens blobs gc``: remove stored objects no catalogue row names (the ``blob_gc`` job).

The same job as ``POST /v1/jobs`` with kind ``blob_gc``: with a broker (``HAZARDLENS_BROKER_URL``)
it is queued for the workers (``--wait`` follows it); without one it runs here. The CLI acts as the
system organisation's admin (``--org`` defaults to 000000), the only one allowed to run it.
"""

from __future__ import annotations

import json
import time
from typing import Any

import typer

from hazardlens.cli.common import ORG_HELP, cli_principal, console, context, friendly_errors


def _summary_line(job: Any) -> str:
    r = job.result or {}
    verb = "would remove" if r.get("dry_run") else "removed"
    count = r.get("collectable", 0) if r.get("dry_run") else r.get("deleted", 0)
    line = (
        f"job {job.id} {job.status}: {r.get('scanned', 0)} object(s) looked at, {r.get('referenced', 0)} referenced, "
        f"{r.get('orphans', 0)} unreferenced ({r.get('young_orphans', 0)} younger than "
        f"{r.get('grace_hours')} h, kept); "
        f"{verb} {count} ({r.get('bytes_freed', 0):,} bytes), {r.get('restored', 0)} put back, "
        f"{r.get('failed', 0)} failed"
    )
    return line + (f"; error: {job.error}" if job.error else "")


def register(app: typer.Typer) -> None:
    blobs = typer.Typer(no_args_is_help=True, help="The object store's content-addressed blobs.")
    app.add_typer(blobs, name="blobs")

    @blobs.command("gc")
    @friendly_errors
    def gc(
        dry_run: bool = typer.Option(False, "--dry-run", help="only report what would be removed"),
        grace_hours: float = typer.Option(
            24.0, "--grace-hours", min=0.0, help="keep unreferenced objects younger than this (hours)"
        ),
        org: str = typer.Option("000000", "--org", help=ORG_HELP + " (must be the system organisation)"),
        wait: bool = typer.Option(True, "--wait/--no-wait", help="with a broker: follow the job to its end"),
        as_json: bool = typer.Option(False, "--json", help="print the job as JSON"),
    ) -> None:
        """Remove blobs, thumbnails and model files no catalogue row names, older than the grace period."""
        from hazardlens.cli.worker import register_kinds
        from hazardlens.jobs import JobRunner, job_public

        register_kinds()
        ctx = context()
        ctx.init()
        principal = cli_principal(ctx, org)
        runner = JobRunner(ctx)
        job = runner.submit("blob_gc", {"dry_run": dry_run, "grace_hours": grace_hours}, principal)
        if not runner.uses_broker:
            with console.status(f"collecting (job {job.id}) in this process..."):
                runner.run(job.id)
        elif wait:
            console.print(f"queued blob_gc job {job.id}; following it (Ctrl-C stops following, not the job)")
            while runner.get_job(job.id).status not in ("completed", "failed"):
                time.sleep(2.0)
        final = job_public(runner.get_job(job.id))
        ctx.close()
        if as_json:
            print(json.dumps(final.model_dump(mode="json"), ensure_ascii=False, indent=2))
        elif final.status in ("completed", "failed"):
            console.print(_summary_line(final), highlight=False)
            for key in (final.result or {}).get("removed", [])[:20]:
                console.print(f"  {key}", highlight=False)
            for failure in (final.result or {}).get("failures", [])[:20]:
                console.print(f"  {failure['key']}: {failure['reason']}", highlight=False)
        else:
            console.print(f"queued blob_gc job {final.id} ({final.status}); `hazardlens jobs show {final.id}`")
            print(final.id)
        if final.status == "failed":
            raise typer.Exit(1)


__all__ = ["register"]
