"""``hazardlens datasets ...`` (create, export, list) and ``hazardlens augment preview``.

``create`` acts as the administrator ``cli-<org>`` of ``--org`` (a real user row, so the audit log
names who made the version): the version holds what that organisation may see, its own samples
plus shared ones. Reading commands without ``--org`` act for the installation and see every
organisation's versions.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from hazardlens.cli.common import ORG_HELP, cli_principal, console, context, friendly_errors
from hazardlens.context import Context
from hazardlens.errors import Invalid


def _ready() -> Context:
    ctx = context()
    ctx.init()
    return ctx


def _caps(values: list[str] | None) -> dict[str, int]:
    caps: dict[str, int] = {}
    for value in values or []:
        key, sep, number = value.partition("=")
        if not sep or not key.strip() or not number.strip().isdigit():
            raise Invalid(f"--cap takes CLASS=N (e.g. fire=150), not {value!r}", code="invalid_caps")
        caps[key.strip()] = int(number)
    return caps


def _summary_lines(d: dict[str, Any]) -> list[str]:
    stats = d["stats"]
    splits = ", ".join(f"{s} {v['images']} images/{v['instances']} boxes" for s, v in stats["splits"].items())
    lines = [
        f"{d['name']}@{d['number']}  id {d['id']}",
        f"  {stats['images']} images, {stats['instances']} boxes: {splits}",
        f"  classes ({len(d['classes'])}): {', '.join(d['classes']) or '-'}",
    ]
    missing = {s: c for s, c in stats.get("missing_in_split", {}).items() if c}
    if missing:
        lines.append("  classes missing from a split: " + "; ".join(f"{s}: {', '.join(c)}" for s, c in missing.items()))
    pairs = stats.get("near_duplicates", {}).get("cross_split_pairs", 0)
    lines.append(f"  near-duplicate pairs across splits: {pairs}" + (" (should be 0)" if pairs else ""))
    if stats.get("dropped_boxes"):
        lines.append(
            "  boxes left out (class not in the list): "
            + ", ".join(f"{k} {v}" for k, v in stats["dropped_boxes"].items())
        )
    return lines


def register(app: typer.Typer) -> None:
    datasets = typer.Typer(
        no_args_is_help=True, help="Dataset versions: immutable, leak-free train/val/test manifests of approved labels."
    )
    app.add_typer(datasets, name="datasets")

    @datasets.command("create")
    @friendly_errors
    def create(
        name: str = typer.Argument(..., help="dataset name (letters, digits, '.', '_', '-')"),
        org: str = typer.Option(..., "--org", help=ORG_HELP),
        sector: str = typer.Option(None, "--sector", help="only samples of this sector"),
        class_key: str = typer.Option(None, "--class", help="only samples whose APPROVED boxes hold this class"),
        owner: str = typer.Option(None, "--owner", help="only samples owned by this organisation"),
        tag: str = typer.Option(None, "--tag", help="only samples with this tag"),
        source: str = typer.Option(None, "--source", help="inspection | import | feedback"),
        site: str = typer.Option(None, "--site", help="only samples of this site"),
        camera: str = typer.Option(None, "--camera", help="only samples of this camera"),
        enterprise: str = typer.Option(None, "--enterprise", help="only samples of this enterprise"),
        group_by: str = typer.Option(
            "camera", "--group-by", help="camera | site | enterprise: what never straddles two splits"
        ),
        split: str = typer.Option("0.8,0.1,0.1", "--split", help="train,val,test ratios"),
        seed: int = typer.Option(0, "--seed", help="split seed (same inputs + seed = same version)"),
        classes: str = typer.Option(None, "--classes", help="fixed class list, e.g. fire,smoke"),
        keep_splits: str = typer.Option(
            None,
            "--keep-splits",
            help="NAME@VERSION whose samples keep their split here (a model "
            "trained on it never sees this version's val/test)",
        ),
        as_json: bool = typer.Option(False, "--json", help="print the version summary as JSON"),
    ) -> None:
        """Freeze the approved labels of the matching samples into a version (prints its id). The same
        inputs give the same version: running it twice changes nothing."""
        from hazardlens.datasets.versions import filter_from_params, make_version, resolve, version_dict

        ctx = _ready()
        principal = cli_principal(ctx, org)
        filters = filter_from_params(
            {
                "sector": sector,
                "class_key": class_key,
                "org": owner,
                "tag": tag,
                "source": source,
                "site": site,
                "camera": camera,
                "enterprise": enterprise,
            }
        )
        class_list = [c.strip() for c in classes.split(",") if c.strip()] if classes else None
        with ctx.db.session() as s:
            base = resolve(s, keep_splits, principal) if keep_splits else None
            dv, created = make_version(
                ctx,
                s,
                principal,
                name,
                filters=filters,
                group_by=group_by,
                ratios=split,
                seed=seed,
                classes=class_list,
                keep_splits=base,
            )
            d = version_dict(s, dv)
        ctx.close()
        if as_json:
            print(json.dumps({**d, "created": created}, ensure_ascii=False))
            return
        console.print("created" if created else "unchanged: the same inputs made this version before")
        out = Console(highlight=False, soft_wrap=True)
        for line in _summary_lines(d):
            out.print(line, markup=False)

    @datasets.command("export")
    @friendly_errors
    def export(
        ref: str = typer.Argument(..., help="NAME@VERSION (latest, a number, or an id prefix)"),
        fmt: str = typer.Option("yolo", "--format", help="yolo | coco"),
        out: Path = typer.Option(..., "--out", help="output folder", file_okay=False),
        cap: list[str] = typer.Option(
            None, "--cap", help="CLASS=N: at most N train images holding only capped classes (repeat for several)"
        ),
        org: str = typer.Option(None, "--org", help=ORG_HELP + " (default: any organisation)"),
        as_json: bool = typer.Option(False, "--json", help="print the result as JSON"),
    ) -> None:
        """Write a version as YOLO or COCO (images hard-linked from the local cache) plus stats.json."""
        from hazardlens.datasets.materialize import export_version
        from hazardlens.datasets.versions import resolve

        ctx = _ready()
        principal = cli_principal(ctx, org) if org else None
        with ctx.db.session() as s:
            dv = resolve(s, ref, principal)
        result = export_version(ctx, dv, fmt, out, train_caps=_caps(cap) or None, console=None if as_json else console)
        ctx.close()
        if as_json:
            print(json.dumps(result.to_dict(), ensure_ascii=False))
            return
        print(
            f"{result.images} images, {result.boxes} boxes ({result.negatives} negatives) -> {result.out_dir} "
            f"in {result.seconds:.1f}s; from store {result.store_reads}, from cache {result.cache_hits}, "
            f"re-encoded {result.reencoded}" + (f", capped {result.capped_images}" if result.capped_images else "")
        )

    @datasets.command("list")
    @friendly_errors
    def list_(
        name: str = typer.Argument(None, help="only versions of this name"),
        org: str = typer.Option(None, "--org", help=ORG_HELP + " (default: every organisation)"),
        as_json: bool = typer.Option(False, "--json", help="print JSON"),
    ) -> None:
        """Dataset versions, oldest first per name."""
        from hazardlens.datasets.versions import list_versions, version_dict

        ctx = _ready()
        principal = cli_principal(ctx, org) if org else None
        with ctx.db.session() as s:
            rows = [version_dict(s, dv) for dv in list_versions(s, name, principal)]
        ctx.close()
        if as_json:
            print(json.dumps(rows, ensure_ascii=False))
            return
        table = Table(title="dataset versions")
        for col in ("ref", "id", "org", "images", "train/val/test", "classes", "x-split dups", "created"):
            table.add_column(col)
        for d in rows:
            splits = d["stats"]["splits"]
            table.add_row(
                f"{d['name']}@{d['number']}",
                d["id"][:12],
                d["org_code"] or "",
                str(d["stats"]["images"]),
                "/".join(str(splits.get(s, {}).get("images", 0)) for s in ("train", "val", "test")),
                ", ".join(d["classes"]),
                str(d["stats"]["near_duplicates"]["cross_split_pairs"]),
                (d["created_at"] or "")[:19],
            )
        Console().print(table)

    augment = typer.Typer(no_args_is_help=True, help="Training augmentation pipelines (configs/augment/*.yaml).")
    app.add_typer(augment, name="augment")

    @augment.command("preview")
    @friendly_errors
    def preview(
        config: Path = typer.Option(
            ..., "--config", help="pipeline YAML, e.g. configs/augment/inspection.yaml", dir_okay=False
        ),
        out: Path = typer.Option(..., "--out", help="contact sheet to write (.png)", dir_okay=False),
        dataset: str = typer.Option(None, "--dataset", help="NAME@VERSION to draw images from"),
        images: Path = typer.Option(
            None, "--images", help="or a folder of images (YOLO labels used when present)", exists=True, file_okay=False
        ),
        n: int = typer.Option(16, "--n", help="number of augmented samples"),
        seed: int = typer.Option(0, "--seed", help="random seed (same seed, same sheet)"),
        org: str = typer.Option(None, "--org", help=ORG_HELP + " (default: any organisation)"),
    ) -> None:
        """Draw N augmented samples with their boxes on one PNG, to check a pipeline by eye."""
        from hazardlens.datasets.augment import load_pipeline
        from hazardlens.datasets.augment import preview as do_preview

        if (dataset is None) == (images is None):
            raise Invalid("give exactly one of --dataset NAME@VERSION or --images DIR", code="invalid_source")
        pipeline = load_pipeline(config)
        if images is not None:
            from hazardlens.formats import read_yolo

            records, _ = read_yolo(images)
            if not records:
                raise Invalid(f"no readable images in {images}", code="empty_source")
            path = do_preview([(r.image_path, r.boxes) for r in records], pipeline, out, n=n, seed=seed)
        else:
            from hazardlens.datasets.versions import resolve

            ctx = _ready()
            principal = cli_principal(ctx, org) if org else None
            with ctx.db.session() as s:
                dv = resolve(s, dataset, principal)
            path = do_preview(ctx, pipeline, out, n=n, seed=seed, dataset=dv)
            ctx.close()
        print(path)
