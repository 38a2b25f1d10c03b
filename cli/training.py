"""``hazardlens train``, ``hazardlens evaluate`` and ``hazardlens models ...``.

The shell acts as the administrator ``cli-<org>`` of ``--org`` (a real user row, so the audit log
names who trained, promoted or rolled back a model).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from hazardlens.cli.common import ORG_HELP, cli_principal, console, context, friendly_errors
from hazardlens.context import Context


def _ready() -> Context:
    ctx = context()
    ctx.init()
    return ctx


def _metric(card: dict[str, Any] | None, split: str, key: str) -> str:
    value = ((card or {}).get("metrics") or {}).get(split, {})
    value = value.get(key) if isinstance(value, dict) else None
    return f"{value:.3f}" if isinstance(value, int | float) else "–"


def _rules_table(rows: list[dict[str, Any]], title: str) -> Table:
    rt = Table("rule", "source", "labelled", "findings", "TP", "FP", "FN", "P", "R", "AP", title=title)
    for row in rows:
        rt.add_row(
            row["rule"],
            row["tag"] or "all",
            str(row["n_gt"]),
            str(row["findings"]),
            str(row["tp"]),
            str(row["fp"]),
            str(row["fn"]),
            f"{row['precision']:.3f}",
            f"{row['recall']:.3f}",
            f"{row['ap']:.3f}",
        )
    return rt


def _job_model(ref: str) -> tuple[str, str]:
    """``hazardlens evaluate``'s MODEL as the job's (name, version): a job evaluates registered models
    only (a weights file on this machine means nothing to a worker)."""
    from hazardlens.errors import Invalid
    from hazardlens.training.evaluate import split_model_ref

    accepted = "NAME:VERSION, production or NAME:production (--as-job evaluates a registered model)"
    if ref.strip().lower().endswith(".pt"):
        raise Invalid(f"model reference {ref!r} must be {accepted}", code="invalid_model_ref")
    return split_model_ref(ref, accepted)


def _evaluate_as_job(
    ctx: Context,
    principal: Any,
    model: str,
    dataset: str,
    split: str,
    by_tag: bool,
    wait: bool,
    unsupported: dict[str, Any],
) -> None:
    """``hazardlens evaluate ... --as-job``: the ``evaluate`` job (:mod:`hazardlens.training.eval_job`),
    run here without a broker, followed on the workers with one."""
    from hazardlens.cli.common import submit_and_follow
    from hazardlens.errors import Invalid

    given = [flag for flag, value in unsupported.items() if value]
    if given:
        raise Invalid(f"{', '.join(given)} cannot be used with --as-job", code="invalid_job")
    name, version = _job_model(model)
    params: dict[str, Any] = {"model": name, "version": version, "dataset": dataset, "split": split, "by_tag": by_tag}

    def summary(done: Any) -> str:
        r = done.result or {}
        line = f"job {done.id} {done.status}"
        if r:
            line += (
                f": {r.get('model')} on {r.get('dataset')} ({r.get('split')}), {r.get('images')} image(s): "
                f"mAP50={r.get('map50', 0):.3f} mAP50-95={r.get('map50_95', 0):.3f}; report {r.get('report_md')}"
            )
        return line + (f"; error: {done.error}" if done.error else "")

    def details(r: dict[str, Any]) -> list[str]:
        lines = [f"{key}: AP50 {ap:.3f}" for key, ap in (r.get("per_class") or {}).items()]
        lines += [f"source {tag}: mAP50 {g.get('map50', 0):.3f}" for tag, g in (r.get("per_tag") or {}).items()]
        return lines

    submit_and_follow(
        ctx,
        principal,
        "evaluate",
        params,
        doing="evaluating",
        wait=wait,
        as_json=False,
        summary=summary,
        details=details,
    )


def register(app: typer.Typer) -> None:
    @app.command()
    @friendly_errors
    def train(
        dataset: str = typer.Option(..., "--dataset", help="dataset version, NAME@VERSION"),
        config: Path = typer.Option(
            ..., "--config", help="training config, e.g. configs/train/baseline.yaml", dir_okay=False
        ),
        resume: bool = typer.Option(
            False, "--resume", help="continue the last unfinished run of this dataset and config from its last.pt"
        ),
        run: str = typer.Option(
            None,
            "--run",
            help="with --resume: the run id (folder under <home>/runs) to continue; without: the id for the new run",
        ),
        register_model: bool = typer.Option(
            True, "--register/--no-register", help="register best.pt as a candidate model"
        ),
        start_from: str = typer.Option(
            None,
            "--from",
            help="start from a registered model (production, "
            "NAME:VERSION) or a .pt instead of the "
            "config's model; classes the dataset adds are "
            "appended to its head, the old ones kept (a config "
            "with branch_classes grafts the result onto it as a branch)",
        ),
        org: str = typer.Option("000000", "--org", help=ORG_HELP),
    ) -> None:
        """Train a detector on a dataset version (offline); registers best.pt (with branch_classes: its
        graft onto the --from model) as a candidate."""
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        from hazardlens.training.train import train as do_train

        ctx = _ready()
        principal = cli_principal(ctx, org)
        with Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            TextColumn("{task.percentage:>5.1f}%"),
            TimeElapsedColumn(),
            TextColumn("{task.description}"),
            console=console,
        ) as bar:
            task = bar.add_task("starting", total=1.0)

            def progress(fraction: float, message: str) -> None:
                bar.update(task, completed=fraction, description=message)

            result = do_train(
                ctx,
                dataset,
                config,
                progress=progress,
                resume=resume,
                register=register_model,
                principal=principal,
                run_id=run,
                start_from=start_from,
            )
        m = result.metrics
        console.print(
            f"run {result.run_id} ({result.device}, {len(result.epochs)} epoch(s)): "
            f"mAP50={m.get('map50', 0):.3f} mAP50-95={m.get('map50_95', 0):.3f}; folder {result.run_dir}"
        )
        if result.model:
            console.print(f"registered {result.model['name']} {result.model['version']} as candidate")
            print(f"{result.model['name']}:{result.model['version']}")

    @app.command()
    @friendly_errors
    def evaluate(
        model: str = typer.Argument(..., help="NAME:VERSION, 'production', NAME:production or a .pt path"),
        dataset: str = typer.Option(..., "--dataset", help="dataset version, NAME@VERSION"),
        split: str = typer.Option("test", "--split", help="train|val|test"),
        compare: str = typer.Option(None, "--compare", help="a second model to compare with the first"),
        out: Path = typer.Option(None, "--out", help="folder for plots, report.json and report.md"),
        imgsz: int = typer.Option(None, "--imgsz", help="image size (default: the model's)"),
        by_tag: bool = typer.Option(
            False,
            "--by-tag",
            help="also per source: per-class figures for each sample tag of the split, from the same run",
        ),
        tags: str = typer.Option(None, "--tags", help="with --by-tag: only these tags (comma-separated)"),
        org: str = typer.Option("000000", "--org", help=ORG_HELP),
        as_job: bool = typer.Option(
            False,
            "--as-job",
            help="run it as an `evaluate` job (a registered model only; with a broker on the gpu/cpu workers, "
            "--no-wait leaves it there); the result is the summary figures and where the report lies",
        ),
        wait: bool = typer.Option(True, "--wait/--no-wait", help="with --as-job and a broker: follow the job"),
    ) -> None:
        """Evaluate a model (per class and per sector; --by-tag per source too) and, with --compare, write a
        comparison report. Classes an image declares unlabelled are not scored on that image."""
        from hazardlens.training.evaluate import evaluate as do_evaluate
        from hazardlens.training.evaluate import write_report

        ctx = _ready()
        principal = cli_principal(ctx, org)
        if as_job:
            unsupported = {"--compare": compare, "--out": out, "--imgsz": imgsz, "--tags": tags}
            _evaluate_as_job(ctx, principal, model, dataset, split, by_tag, wait, unsupported)
            return
        refs = [model] + ([compare] if compare else [])
        reports = []
        for i, ref in enumerate(refs):
            sub = (out / f"model{i + 1}") if out else None
            console.print(f"evaluating {ref} on {dataset} ({split})...")
            reports.append(
                do_evaluate(
                    ctx,
                    ref,
                    dataset,
                    split,
                    imgsz,
                    out_dir=sub,
                    principal=principal,
                    by_tag=by_tag or bool(tags),
                    tags=[g.strip() for g in tags.split(",") if g.strip()] if tags else None,
                )
            )
        target = out or Path(reports[0].out_dir)
        md = write_report(reports, target)
        table = Table("model", "P", "R", "mAP50", "mAP50-95", "images", "instances", title=f"{dataset} {split}")
        for r in reports:
            o = r.overall
            table.add_row(
                r.label,
                f"{o['precision']:.3f}",
                f"{o['recall']:.3f}",
                f"{o['map50']:.3f}",
                f"{o['map50_95']:.3f}",
                str(o["images"]),
                str(o["instances"]),
            )
        console.print(table)
        sectors = Table("sector", *[r.label for r in reports], title="mAP50 per sector")
        keys = list(dict.fromkeys(s.sector for r in reports for s in r.per_sector))
        for key in keys:
            cells = []
            for r in reports:
                s = next((s for s in r.per_sector if s.sector == key), None)
                cells.append(f"{s.map50:.3f} ({s.instances})" if s else "–")
            sectors.add_row(key, *cells)
        console.print(sectors)
        for r in reports[:1]:
            for g in r.per_tag:
                per = Table(
                    "class", "images", "instances", "P", "R", "mAP50", "mAP50-95", title=f"{r.label} on source {g.tag}"
                )
                o = g.overall
                per.add_row(
                    "all",
                    str(o["images"]),
                    str(o["instances"]),
                    f"{o['precision']:.3f}",
                    f"{o['recall']:.3f}",
                    f"{o['map50']:.3f}",
                    f"{o['map50_95']:.3f}",
                )
                for c in g.per_class:
                    per.add_row(
                        c.key,
                        str(c.images),
                        str(c.instances),
                        f"{c.precision:.3f}",
                        f"{c.recall:.3f}",
                        f"{c.map50:.3f}",
                        f"{c.map50_95:.3f}",
                    )
                console.print(per)
            if r.rules:
                console.print(_rules_table(r.rules, f"{r.label}: rule findings against their evidence class"))
            if r.partial_labels:
                dropped = r.partial_labels.get("not_scored", {})
                console.print(
                    f"partially labelled: {r.partial_labels.get('images', 0)} image(s) declare "
                    f"{', '.join(r.partial_labels.get('classes', {}))} unlabelled; not scored there: "
                    f"{dropped.get('predictions', 0)} prediction(s), {dropped.get('labels', 0)} label(s)"
                )
        print(md)

    _register_rules(app)

    models = typer.Typer(no_args_is_help=True, help="Model registry: list, promote, roll back, export, import.")
    app.add_typer(models, name="models")

    @models.command("list")
    @friendly_errors
    def models_list(
        name: str = typer.Option(None, "--name", help="only this model name"),
        as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
    ) -> None:
        """Registered model versions with their stage and metrics."""
        from hazardlens.models.registry import ensure_baseline, list_models, model_dict

        ctx = _ready()
        ensure_baseline(ctx)  # no-op once any model is registered
        with ctx.db.session() as s:
            rows = [model_dict(mv) for mv in list_models(s, name)]
        if as_json:
            print(json.dumps([{k: v for k, v in r.items() if k != "card"} for r in rows], ensure_ascii=False, indent=2))
            return
        table = Table("name", "version", "stage", "dataset", "val mAP50", "test mAP50", "created")
        for r in rows:
            table.add_row(
                r["name"],
                r["version"],
                r["stage"],
                (r["dataset_version"] or "–")[:12],
                _metric(r["card"], "val", "map50"),
                _metric(r["card"], "test", "map50"),
                (r["created_at"] or "")[:19],
            )
        console.print(table)
        for r in rows:
            print(f"{r['name']}\t{r['version']}\t{r['stage']}")

    @models.command("promote")
    @friendly_errors
    def models_promote(
        name: str = typer.Argument(...),
        version: str = typer.Argument(...),
        stage: str = typer.Option("production", "--stage", help="candidate|staging|production|archived"),
        org: str = typer.Option("000000", "--org", help=ORG_HELP),
    ) -> None:
        """Move a version to a stage; to production archives the version serving before it."""
        from hazardlens.models.registry import promote

        ctx = _ready()
        principal = cli_principal(ctx, org)
        with ctx.db.session() as s:
            mv = promote(s, principal, name, version, stage)
            console.print(f"{mv.name} {mv.version} is now {mv.stage}")

    @models.command("rollback")
    @friendly_errors
    def models_rollback(
        name: str = typer.Argument("hazardlens", help="model name"),
        org: str = typer.Option("000000", "--org", help=ORG_HELP),
    ) -> None:
        """Put the previous production version back into production."""
        from hazardlens.models.registry import rollback

        ctx = _ready()
        principal = cli_principal(ctx, org)
        with ctx.db.session() as s:
            mv = rollback(s, principal, name)
            console.print(f"rolled back: {mv.name} {mv.version} is production again")

    @models.command("export")
    @friendly_errors
    def models_export(
        name: str = typer.Argument(...),
        version: str = typer.Argument(...),
        out: Path = typer.Option(..., "--out", help="folder for weights.pt and card.json"),
    ) -> None:
        """Write a version's weights and card to a folder (for another, offline installation)."""
        from hazardlens.models.registry import export_model

        ctx = _ready()
        with ctx.db.session() as s:
            folder = export_model(ctx, s, name, version, out)
        console.print(f"exported {name} {version} to {folder}")

    @models.command("import")
    @friendly_errors
    def models_import(
        folder: Path = typer.Argument(..., exists=True, file_okay=False, help="folder with weights.pt and card.json"),
        stage: str = typer.Option("candidate", "--stage", help="stage to register it in"),
        version: str = typer.Option(None, "--version", help="register under this version instead"),
        org: str = typer.Option("000000", "--org", help=ORG_HELP),
    ) -> None:
        """Register a model exported by `models export` (the weights hash is checked against the card)."""
        from hazardlens.models.registry import import_model

        ctx = _ready()
        principal = cli_principal(ctx, org)
        with ctx.db.session() as s:
            mv = import_model(ctx, s, principal, folder, stage=stage, version=version)
            console.print(f"imported {mv.name} {mv.version} as {mv.stage}")
            print(f"{mv.name}:{mv.version}")


def _register_rules(app: typer.Typer) -> None:
    rules = typer.Typer(no_args_is_help=True, help="Derived-finding rules (configs/rules.yaml).")
    app.add_typer(rules, name="rules")

    @rules.command("score")
    @friendly_errors
    def rules_score(
        eval_dir: Path = typer.Argument(..., help="folder of an earlier `hazardlens evaluate --out`"),
        rules_file: Path | None = typer.Option(
            None, "--rules", help="rules YAML to score instead of the configured one (e.g. a changed copy)"
        ),
        as_json: bool = typer.Option(False, "--json", help="print the rows as JSON"),
    ) -> None:
        """Score rules again on the detections an evaluation saved, without running the model: how a
        change to a rule (a confidence floor, a region) moves its precision and recall, per source.
        Choose on a validation split's evaluation, report on the test split's."""
        from hazardlens.rules import RuleSet, default_rules
        from hazardlens.training.evaluate import rescore_rules

        ctx = _ready()
        ruleset = RuleSet.load(rules_file, ctx.taxonomy()) if rules_file else default_rules(ctx)
        rows = rescore_rules(eval_dir, ruleset)
        if as_json:
            print(json.dumps(rows, ensure_ascii=False, indent=2))
        else:
            console.print(_rules_table(rows, f"rules of {rules_file or 'the configuration'} on {eval_dir}"))
