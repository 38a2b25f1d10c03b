"""``hazardlens library rebuild``: thumbnails and near-duplicate links of an organisation's samples,
rebuilt as the sharded ``library_rebuild`` job (:mod:`hazardlens.datasets.rebuild`).

The same job as ``POST /v1/jobs`` with kind ``library_rebuild``: with a broker
(``HAZARDLENS_BROKER_URL``) it is queued for the workers (``--wait`` follows it); without one it runs
here, shard after shard.
"""

from __future__ import annotations

from typing import Any

import typer

from hazardlens.cli.common import ORG_HELP, cli_principal, context, filter_params, friendly_errors, submit_and_follow


def _summary_line(job: Any) -> str:
    r = job.result or {}
    line = (
        f"job {job.id} {job.status}: {r.get('samples', 0)} sample(s) ({', '.join(r.get('what') or [])}), "
        f"{r.get('thumbnails', 0)} thumbnail(s) rebuilt ({r.get('thumbnails_missing', 0)} were missing), "
        f"links {r.get('links_added', 0)} added, {r.get('links_removed', 0)} removed, {r.get('links_kept', 0)} kept, "
        f"{r.get('failed', 0)} failed, {r.get('shards', job.shards)} shard(s)"
    )
    return line + (f"; error: {job.error}" if job.error else "")


def register(app: typer.Typer) -> None:
    library = typer.Typer(no_args_is_help=True, help="Library-wide batch work on the organisation's samples.")
    app.add_typer(library, name="library")

    @library.command("rebuild")
    @friendly_errors
    def rebuild(
        org: str = typer.Option(..., "--org", help=ORG_HELP + " (its own samples are rebuilt)"),
        what: str = typer.Option(
            "thumbnails,near_duplicates", "--what", help="comma-separated: thumbnails, near_duplicates"
        ),
        sector: str = typer.Option(None, "--sector", help="only samples of this sector"),
        status: str = typer.Option(None, "--status", help="unlabeled | draft | submitted | approved | rejected"),
        class_key: str = typer.Option(None, "--class", help="only samples whose labels hold this class"),
        site: str = typer.Option(None, "--site"),
        camera: str = typer.Option(None, "--camera"),
        tag: str = typer.Option(None, "--tag"),
        captured_from: str = typer.Option(None, "--captured-from", help="ISO date or date-time"),
        captured_to: str = typer.Option(None, "--captured-to", help="ISO date or date-time"),
        shard_size: int = typer.Option(None, "--shard-size", min=1, max=5000, help="samples per shard"),
        wait: bool = typer.Option(True, "--wait/--no-wait", help="with a broker: follow the job to its end"),
        as_json: bool = typer.Option(False, "--json", help="print the job as JSON"),
    ) -> None:
        """Rebuild the thumbnails (from the stored photos) and near-duplicate links of every sample of ORG
        matching the filters."""
        ctx = context()
        ctx.init()
        principal = cli_principal(ctx, org)
        filters = filter_params(
            sector=sector,
            status=status,
            class_key=class_key,
            site=site,
            camera=camera,
            tag=tag,
            captured_from=captured_from,
            captured_to=captured_to,
        )
        params: dict[str, Any] = {"what": [w.strip() for w in what.split(",") if w.strip()], "filters": filters}
        if shard_size:
            params["shard_size"] = shard_size
        submit_and_follow(
            ctx,
            principal,
            "library_rebuild",
            params,
            doing="rebuilding",
            wait=wait,
            as_json=as_json,
            summary=_summary_line,
            details=lambda r: [
                f"sample {f['sample_id']} ({f.get('what')}): {f['reason']}" for f in r.get("failures", [])[:20]
            ],
        )


__all__ = ["register"]
