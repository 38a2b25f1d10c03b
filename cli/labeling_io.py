"""``hazardlens import coco|yolo|voc|labelstudio|cvat ...`` and ``hazardlens export ...``: labelled
datasets into and out of the library. Thin: the rules live in hazardlens.labeling.importers and
hazardlens.labeling.exporters."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from hazardlens.cli.common import cli_principal, console, context, friendly_errors

_SHOWN = 200  # rows per table; the JSON output has everything


def _options() -> dict[str, Any]:
    """The options every ``import`` format shares (Typer reads them from the signature, so each
    command spells them out; this keeps their help text in one place)."""
    return {
        "class_map": typer.Option(
            ...,
            "--class-map",
            help="class map YAML (source class -> taxonomy key | ignore) or the name of a shipped one, e.g. sfchd",
        ),
        "org": typer.Option(..., "--org", help="organisation (region) code the samples belong to, e.g. 420000"),
        "sector": typer.Option(..., "--sector", help="taxonomy sector: dust, steel, aluminium, ..."),
        "approved": typer.Option(
            False, "--approved", help="save labels as approved (skips review) instead of submitted"
        ),
        "scope": typer.Option("private", "--scope", help="private (own organisation) or shared (all)"),
        "camera_regex": typer.Option(
            None,
            "--camera-regex",
            help="camera id from file names (overrides the class map); capture groups joined by '.'",
        ),
        "site_regex": typer.Option(None, "--site-regex", help="site id from file names (overrides the class map)"),
        "as_json": typer.Option(False, "--json", help="print the summary as JSON"),
        "tag": typer.Option(
            None,
            "--tag",
            help="tag every imported sample with this (e.g. the source set's name, "
            "sfchd-ppe), also samples the library already held",
        ),
    }


_O = _options()


def _print_summary(summary: Any) -> None:
    out = Console(highlight=False, soft_wrap=True)
    table = Table(title=f"import {summary.format}: {summary.source}", show_header=False)
    table.add_column("what")
    table.add_column("count", justify="right")
    rows = [
        ("images read", summary.images_read),
        ("stored (new samples)", summary.stored),
        ("deduplicated (already held)", summary.deduplicated),
        ("refused images", len(summary.refused)),
        (f"revisions written ({summary.status})", summary.revisions),
        ("unchanged (same labels already current)", summary.unchanged),
        ("boxes written", summary.boxes),
        ("negatives written", summary.negatives),
        ("stored unlabelled (all boxes refused/ignored)", summary.unlabeled),
        ("boxes of ignored classes", summary.ignored_boxes),
        ("linked to near-duplicates", summary.near_duplicates),
        ("camera ids", summary.camera_ids),
        *([(f"tag {summary.tag!r} added to samples already held", summary.tagged)] if summary.tag else []),
        ("seconds", f"{summary.elapsed_s:.1f}"),
    ]
    for what, n in rows:
        table.add_row(what, str(n))
    out.print(table)
    if summary.class_counts:
        out.print("boxes per class: " + ", ".join(f"{k} {v}" for k, v in sorted(summary.class_counts.items())))
    if summary.unused_categories:
        out.print("unused source categories: " + ", ".join(summary.unused_categories))
    for title, counts in (
        ("repaired by the reader", summary.repairs),
        ("boxes refused by the reader", summary.refused_boxes),
    ):
        if counts:
            t = Table(title=title)
            t.add_column("kind")
            t.add_column("count", justify="right")
            t.add_column("example", overflow="fold")
            issues = summary.report.repaired if title.startswith("repaired") else summary.report.refused_boxes
            for kind, n in sorted(counts.items()):
                example = next((str(i) for i in issues if i.kind == kind), "")
                t.add_row(kind, str(n), example)
            out.print(t)
    for title, refusals in (
        ("refused images", summary.refused),
        ("labels left alone", summary.not_relabelled),
        ("converted to PNG", summary.transcoded),
        ("same bytes twice in the source", summary.duplicates),
    ):
        if refusals:
            t = Table(title=f"{title} ({len(refusals)})")
            for col in ("file", "code", "reason"):
                t.add_column(col, overflow="fold")
            for r in refusals[:_SHOWN]:
                t.add_row(r.name, r.code, r.message)
            out.print(t)
            if len(refusals) > _SHOWN:
                out.print(f"... and {len(refusals) - _SHOWN} more")


def _run_import(
    fmt: str,
    source: Path,
    images: Path | None,
    class_map: Path,
    org: str,
    sector: str,
    approved: bool,
    scope: str,
    camera_regex: str | None,
    site_regex: str | None,
    as_json: bool,
    tag: str | None = None,
) -> None:
    from hazardlens.labeling.importers import import_dataset

    ctx = context()
    ctx.init()
    principal = cli_principal(ctx, org)
    with Progress(
        TextColumn(f"[bold]import {fmt}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[name]}", style="dim"),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task("import", total=None, name="reading")

        def progress(done: int, total: int, name: str, outcome: str) -> None:
            bar.update(task, completed=done, total=total, name=Path(name).name[-40:])

        summary = import_dataset(
            ctx,
            principal,
            fmt,
            source,
            class_map,
            images=images,
            org=org,
            sector=sector,
            scope=scope,
            approved=approved,
            camera_regex=camera_regex,
            site_regex=site_regex,
            progress=progress,
            tag=tag,
        )
    ctx.close()
    if as_json:
        print(json.dumps(summary.as_dict(), ensure_ascii=False))
    else:
        _print_summary(summary)
    if summary.refused:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    imp = typer.Typer(
        no_args_is_help=True,
        help="Import a labelled dataset (COCO, YOLO, VOC, Label Studio, CVAT) "
        "into the sample library, labels as revisions.",
    )
    app.add_typer(imp, name="import")

    @imp.command("coco")
    @friendly_errors
    def import_coco(
        annotations: Path = typer.Argument(..., help="COCO annotations json"),
        images: Path = typer.Option(None, "--images", help="images folder (default: the json's)"),
        class_map: Path = _O["class_map"],
        org: str = _O["org"],
        sector: str = _O["sector"],
        approved: bool = _O["approved"],
        scope: str = _O["scope"],
        camera_regex: str = _O["camera_regex"],
        site_regex: str = _O["site_regex"],
        as_json: bool = _O["as_json"],
        tag: str = _O["tag"],
    ) -> None:
        """Import a COCO detection json and its images. Exit code 1 when an image was refused."""
        _run_import(
            "coco", annotations, images, class_map, org, sector, approved, scope, camera_regex, site_regex, as_json, tag
        )

    @imp.command("yolo")
    @friendly_errors
    def import_yolo(
        directory: Path = typer.Argument(..., help="folder with images/, labels/ and classes.txt or data.yaml"),
        class_map: Path = _O["class_map"],
        org: str = _O["org"],
        sector: str = _O["sector"],
        approved: bool = _O["approved"],
        scope: str = _O["scope"],
        camera_regex: str = _O["camera_regex"],
        site_regex: str = _O["site_regex"],
        as_json: bool = _O["as_json"],
        tag: str = _O["tag"],
    ) -> None:
        """Import a YOLO dataset; an image without a label file is a negative."""
        _run_import(
            "yolo", directory, None, class_map, org, sector, approved, scope, camera_regex, site_regex, as_json, tag
        )

    @imp.command("voc")
    @friendly_errors
    def import_voc(
        directory: Path = typer.Argument(..., help="folder with Annotations/ and JPEGImages/"),
        class_map: Path = _O["class_map"],
        org: str = _O["org"],
        sector: str = _O["sector"],
        approved: bool = _O["approved"],
        scope: str = _O["scope"],
        camera_regex: str = _O["camera_regex"],
        site_regex: str = _O["site_regex"],
        as_json: bool = _O["as_json"],
        tag: str = _O["tag"],
    ) -> None:
        """Import a Pascal VOC dataset; an image without an xml is not imported."""
        _run_import(
            "voc", directory, None, class_map, org, sector, approved, scope, camera_regex, site_regex, as_json, tag
        )

    @imp.command("labelstudio")
    @friendly_errors
    def import_labelstudio(
        tasks: Path = typer.Argument(..., help="Label Studio tasks json (JSON export)"),
        images: Path = typer.Option(..., "--images", help="folder holding the task images"),
        class_map: Path = _O["class_map"],
        org: str = _O["org"],
        sector: str = _O["sector"],
        approved: bool = _O["approved"],
        scope: str = _O["scope"],
        camera_regex: str = _O["camera_regex"],
        site_regex: str = _O["site_regex"],
        as_json: bool = _O["as_json"],
        tag: str = _O["tag"],
    ) -> None:
        """Import Label Studio rectangle labels; tasks never annotated are refused, not negatives."""
        _run_import(
            "labelstudio",
            tasks,
            images,
            class_map,
            org,
            sector,
            approved,
            scope,
            camera_regex,
            site_regex,
            as_json,
            tag,
        )

    @imp.command("cvat")
    @friendly_errors
    def import_cvat(
        annotations: Path = typer.Argument(..., help="CVAT for images 1.1 annotations.xml"),
        images: Path = typer.Option(
            None, "--images", help="images folder (default: images/ beside the xml, else its folder)"
        ),
        class_map: Path = _O["class_map"],
        org: str = _O["org"],
        sector: str = _O["sector"],
        approved: bool = _O["approved"],
        scope: str = _O["scope"],
        camera_regex: str = _O["camera_regex"],
        site_regex: str = _O["site_regex"],
        as_json: bool = _O["as_json"],
        tag: str = _O["tag"],
    ) -> None:
        """Import CVAT for images 1.1 boxes (polygons as their bounding boxes); a listed image without
        shapes is a negative."""
        _run_import(
            "cvat", annotations, images, class_map, org, sector, approved, scope, camera_regex, site_regex, as_json, tag
        )

    @app.command("export")
    @friendly_errors
    def export(
        fmt: str = typer.Option(..., "--format", help="yolo | coco | labelstudio | cvat | voc"),
        out: Path = typer.Option(..., "--out", help="new (or empty) folder to write"),
        status: str = typer.Option("approved", "--status", help="approved | submitted"),
        org: str = typer.Option(..., "--org", help="organisation acting (sees its own and shared samples)"),
        only_org: str = typer.Option(None, "--only-org", help="only samples owned by this organisation"),
        sector: str = typer.Option(None, "--sector", help="only samples of this sector"),
        class_key: str = typer.Option(None, "--class", help="only samples whose labels hold this class"),
        image_url_prefix: str = typer.Option(
            None,
            "--image-url-prefix",
            help="labelstudio: tasks point at this service's image URLs, <prefix><sample id>/image "
            "(e.g. http://host:8000/v1/samples/), instead of the exported images/ as Label "
            "Studio local files",
        ),
        yaml_name: str = typer.Option(
            "data.yaml",
            "--yaml-name",
            help="yolo: name of the dataset file; dataset.yaml is what FiftyOne's YOLOv5 reader looks for",
        ),
        fiftyone: bool = typer.Option(False, "--fiftyone", help="yolo: same as --yaml-name dataset.yaml"),
        as_json: bool = typer.Option(False, "--json", help="print the result as JSON"),
    ) -> None:
        """Export labelled samples: Ultralytics YOLO layout + data.yaml, COCO json + images, Label
        Studio tasks + images (with model suggestions as predictions), CVAT for images 1.1 XML +
        images, or the Pascal VOC devkit layout. A YOLO export of the library has no held-out
        split: its data.yaml names the training images as val, so Ultralytics trains on it as is."""
        from hazardlens.labeling.exporters import export_library

        ctx = context()
        ctx.init()
        principal = cli_principal(ctx, org)
        filters = {"org": only_org, "sector": sector, "class_key": class_key}
        with console.status(f"exporting {status} samples as {fmt}..."), ctx.db.session() as s:
            result = export_library(
                ctx,
                s,
                principal,
                fmt,
                out,
                status=status,
                filters=filters,
                sample_url_prefix=image_url_prefix,
                yaml_name="dataset.yaml" if fiftyone else yaml_name,
            )
        ctx.close()
        if as_json:
            print(json.dumps({**result.as_dict(), "sample_ids": len(result.sample_ids)}, ensure_ascii=False))
            return
        print(
            f"exported {result.images} images ({result.negatives} negatives), {result.boxes} boxes, "
            f"{len(result.classes)} classes [{', '.join(result.classes)}] to {result.path}"
        )
        if result.reoriented:
            print(f"{result.reoriented} image(s) re-encoded upright (EXIF orientation / HEIC)")
        if result.dropped_boxes:
            print(f"{result.dropped_boxes} box(es) outside their image were not written")
        if result.predictions:
            print(f"{result.predictions} task(s) carry a model suggestion as prediction")
