"""``hazardlens prelabel``: model suggestions on every sample of an organisation that matches filters.

The same ``prelabel`` job as ``POST /v1/prelabel``: with a broker (``HAZARDLENS_BROKER_URL``) it is
queued for the workers (``--wait`` follows it); without one it runs here, shard after shard.
"""

from __future__ import annotations

from typing import Any

import typer

from hazardlens.cli.common import ORG_HELP, cli_principal, context, filter_params, friendly_errors, submit_and_follow


def _summary_line(job: Any) -> str:
    r = job.result or {}
    line = (
        f"job {job.id} {job.status}: {r.get('samples', 0)} sample(s), {r.get('suggested', 0)} suggestion(s), "
        f"{r.get('boxes', 0)} box(es), {r.get('failed', 0)} failed, model {r.get('model_version')}, "
        f"{r.get('shards', job.shards)} shard(s)"
    )
    return line + (f"; error: {job.error}" if job.error else "")


def register(app: typer.Typer) -> None:
    @app.command("prelabel")
    @friendly_errors
    def prelabel(
        org: str = typer.Option(..., "--org", help=ORG_HELP + " (its own samples are pre-labelled)"),
        sector: str = typer.Option(None, "--sector", help="only samples of this sector"),
        status: str = typer.Option(None, "--status", help="unlabeled | draft | submitted | approved | rejected"),
        class_key: str = typer.Option(None, "--class", help="only samples whose labels hold this class"),
        site: str = typer.Option(None, "--site"),
        camera: str = typer.Option(None, "--camera"),
        tag: str = typer.Option(None, "--tag"),
        captured_from: str = typer.Option(None, "--captured-from", help="ISO date or date-time"),
        captured_to: str = typer.Option(None, "--captured-to", help="ISO date or date-time"),
        model: str = typer.Option("production", "--model", help="model version (default: production)"),
        conf: float = typer.Option(0.25, "--conf", help="confidence threshold"),
        shard_size: int = typer.Option(None, "--shard-size", min=1, max=5000, help="samples per shard"),
        wait: bool = typer.Option(True, "--wait/--no-wait", help="with a broker: follow the job to its end"),
        as_json: bool = typer.Option(False, "--json", help="print the job as JSON"),
    ) -> None:
        """Pre-label every sample of ORG matching the filters (one open suggestion each, never a label)."""
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
        params: dict[str, Any] = {"filters": filters, "model": model, "conf": conf}
        if shard_size:
            params["shard_size"] = shard_size
        submit_and_follow(
            ctx,
            principal,
            "prelabel",
            params,
            detector=True,
            doing="pre-labelling",
            wait=wait,
            as_json=as_json,
            summary=_summary_line,
            details=lambda r: [f"sample {f['sample_id']}: {f['reason']}" for f in r.get("failures", [])[:20]],
        )


__all__ = ["register"]
