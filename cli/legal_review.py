"""``hazardlens taxonomy ...``: provincial items and classes under legal review (法制审核). Thin: the
rules live in :mod:`hazardlens.legal_review`."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from hazardlens.cli.common import ORG_HELP, cli_principal, console, context, friendly_errors


def register(app: typer.Typer) -> None:
    tax = typer.Typer(no_args_is_help=True, help="Provincial items and classes under legal review (法制审核).")
    app.add_typer(tax, name="taxonomy")

    @tax.command("propose")
    @friendly_errors
    def propose(
        definition: Path = typer.Argument(..., help="YAML/JSON file: the item or class as in configs/taxonomy.yaml"),
        kind: str = typer.Option(..., "--kind", help="item | class"),
        clause_text: str = typer.Option("", "--clause-text", help="the mandatory legal clause's wording"),
        citation: str = typer.Option("", "--citation", help="law/regulation/standard and article"),
        org: str = typer.Option("000000", "--org", help=ORG_HELP),
    ) -> None:
        """Propose an item or class for the organisation (as its admin); refused without the legal clause."""
        from hazardlens import legal_review
        from hazardlens.safeyaml import load_user_yaml_file

        ctx = context()
        ctx.db.init()
        principal = cli_principal(ctx, org)
        raw = load_user_yaml_file(definition, "taxonomy addition")
        with ctx.db.session() as s:
            row = legal_review.propose(ctx, s, principal, kind, raw, clause_text, citation)
            console.print(f"proposed {row.kind} {row.key} (addition {row.id}), pending legal review")
            print(row.id)

    @tax.command("additions")
    @friendly_errors
    def additions(
        org: str = typer.Option("000000", "--org", help=ORG_HELP),
        status: str = typer.Option(None, "--status", help="pending | approved | rejected"),
    ) -> None:
        """List the organisation's additions (the system organisation: every organisation's) as JSON."""
        from hazardlens import legal_review

        ctx = context()
        ctx.db.init()
        principal = cli_principal(ctx, org)
        with ctx.db.read_session() as s:
            rows = [
                legal_review.addition_public(s, r).model_dump()
                for r in legal_review.list_additions(s, principal, status)
            ]
        print(json.dumps(rows, ensure_ascii=False, indent=2))

    @tax.command("review")
    @friendly_errors
    def review(
        addition_id: int = typer.Argument(..., help="addition id"),
        decision: str = typer.Option(..., "--decision", help="approve | reject"),
        reason: str = typer.Option("", "--reason", help="required to reject"),
        org: str = typer.Option(..., "--org", help="the proposing organisation"),
        reviewer: str = typer.Option(..., "--as", help="name of a user of role legal in that organisation"),
    ) -> None:
        """Approve or reject a pending addition, as a legal reviewer (a user of role ``legal``)."""
        from sqlalchemy import select

        from hazardlens import legal_review
        from hazardlens.auth import principal_of
        from hazardlens.errors import NotFound
        from hazardlens.orm import User

        ctx = context()
        ctx.db.init()
        with ctx.db.session() as s:
            user = s.scalar(select(User).where(User.org_code == org.strip(), User.name == reviewer))
            if user is None:
                raise NotFound(f"no user {reviewer!r} in organisation {org}", code="unknown_user")
            row = legal_review.review(ctx, s, principal_of(user), addition_id, decision, reason)
            console.print(f"addition {row.id} ({row.kind} {row.key}): {row.status}")
