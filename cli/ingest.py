"""``hazardlens ingest PATH...``: bulk import of files, folders and zip archives into the library."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from hazardlens.cli.common import cli_principal, console, context, friendly_errors


def register(app: typer.Typer) -> None:
    @app.command()
    @friendly_errors
    def ingest(
        paths: list[Path] = typer.Argument(..., help="image files, folders (recursive) and .zip archives"),
        sector: str = typer.Option(..., "--sector", help="taxonomy sector: dust, steel, aluminium, ..."),
        org: str = typer.Option(..., "--org", help="organisation (region) code, e.g. 420000"),
        scope: str = typer.Option("private", "--scope", help="private (own organisation) or shared (all)"),
        site: str = typer.Option(None, "--site", help="site id"),
        camera: str = typer.Option(None, "--camera", help="camera id"),
        enterprise: str = typer.Option(None, "--enterprise", help="enterprise id"),
        inspection_record: str = typer.Option(None, "--inspection-record", help="inspection record number"),
        source: str = typer.Option("import", "--source", help="import | inspection | feedback"),
        tag: list[str] = typer.Option(None, "--tag", help="tag (repeat for several)"),
        workers: int = typer.Option(0, "--workers", help="decode threads (0: automatic)"),
        as_json: bool = typer.Option(False, "--json", help="print the summary as JSON"),
    ) -> None:
        """Add images to the sample library. One bad file never stops the rest; the summary lists
        what was stored, found already (deduplicated), linked as near-duplicate, and refused, with
        reasons. Exit code 1 when anything was refused."""
        from hazardlens.datasets.bulk import ingest_paths
        from hazardlens.datasets.ingest import IngestMeta, validate_meta

        ctx = context()
        ctx.init()
        meta = validate_meta(
            ctx,
            IngestMeta(
                sector=sector,
                scope=scope,
                source=source,
                site_id=site,
                camera_id=camera,
                enterprise_id=enterprise,
                inspection_record=inspection_record,
                tags=tuple(tag or ()),
            ),
        )
        principal = cli_principal(ctx, org)
        with Progress(
            TextColumn("[bold]ingest"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[name]}", style="dim"),
            console=console,
            transient=True,
        ) as bar:
            task = bar.add_task("ingest", total=None, name="")

            def progress(done: int, total: int, name: str, outcome: str) -> None:
                bar.update(task, completed=done, total=total, name=Path(name.split("!")[-1]).name[-40:])

            summary = ingest_paths(ctx, principal, paths, meta, progress=progress, workers=workers or None)
        ctx.close()
        if as_json:
            print(json.dumps(summary.to_dict(), ensure_ascii=False))
        else:
            out = Console(highlight=False, soft_wrap=True)
            out.print(
                f"stored {summary.stored}, deduplicated {summary.deduplicated}, "
                f"near-duplicates {summary.near_duplicates}, refused {len(summary.refused)}, "
                f"skipped {len(summary.skipped)} (org {principal.org_code}, sector {meta.sector})"
            )
            # One line per file (not a table): paths stay whole and greppable in any terminal width.
            for title, rows in (("refused", summary.refused), ("skipped", summary.skipped)):
                for r in rows[:500]:
                    out.print(f"  {title} {r.name} ({r.code}): {r.message}", markup=False)
                if len(rows) > 500:
                    out.print(f"  ... and {len(rows) - 500} more {title}")
        if summary.refused:
            raise typer.Exit(1)
