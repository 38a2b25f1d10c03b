"""``hazardlens labeling ...``: labeling work an administrator starts from the shell."""

from __future__ import annotations

import typer

from hazardlens.cli.common import cli_principal, context, friendly_errors


def register(app: typer.Typer) -> None:
    labeling = typer.Typer(no_args_is_help=True, help="Labeling: assign work to curators.")
    app.add_typer(labeling, name="labeling")

    @labeling.command("assign")
    @friendly_errors
    def assign(
        org: str = typer.Option(..., "--org", help="organisation (region) code acting, e.g. 420000"),
        to: str = typer.Option(..., "--to", help="user name of the curator, in --org"),
        sector: str = typer.Option(None, "--sector", help="only samples of this sector"),
        status: str = typer.Option(None, "--status", help="only samples in this annotation state"),
        class_key: str = typer.Option(None, "--class", help="only samples whose labels hold this class"),
        limit: int = typer.Option(100, "--limit", help="at most this many samples"),
    ) -> None:
        """Assign matching samples of --org (oldest first) to a curator; prints how many."""
        from hazardlens.labeling.queues import assign as do_assign

        filters = {"org": org, "sector": sector, "status": status, "class_key": class_key}
        ctx = context()
        ctx.db.init()
        principal = cli_principal(ctx, org)
        with ctx.db.session() as s:
            count = do_assign(s, principal, {k: v for k, v in filters.items() if v}, to, limit)
        print(f"assigned {count} sample(s) to {to} (org {org})")
