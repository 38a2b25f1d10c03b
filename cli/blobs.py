"""``hazardlens blobs gc``: remove stored objects no catalogue row names (the ``blob_gc`` job).

The same job as ``POST /v1/jobs`` with kind ``blob_gc``: with a broker (``HAZARDLENS_BROKER_URL``)
it is queued for the workers (``--wait`` follows it); without one it runs here. The CLI acts as the
system organisation's admin (``--org`` defaults to 000000), the only one allowed to run it.
"""

from __future__ import annotations

from typing import Any

import typer

from hazardlens.cli.common import ORG_HELP, cli_principal, context, friendly_errors, submit_and_follow


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


def _detail_lines(result: dict[str, Any]) -> list[str]:
    failures = [f"{f['key']}: {f['reason']}" for f in result.get("failures", [])[:20]]
    return [*result.get("removed", [])[:20], *failures]


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
        ctx = context()
        ctx.init()
        principal = cli_principal(ctx, org)
        submit_and_follow(
            ctx,
            principal,
            "blob_gc",
            {"dry_run": dry_run, "grace_hours": grace_hours},
            doing="collecting",
            wait=wait,
            as_json=as_json,
            summary=_summary_line,
            details=lambda r: [
                *r.get("removed", [])[:20],
                *(f"{f['key']}: {f['reason']}" for f in r.get("failures", [])),
            ],
        )


__all__ = ["register"]
