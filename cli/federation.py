"""``hazardlens peers ...`` and ``hazardlens sync ...``: federation between instances (issue 17).
Thin: the logic is :mod:`hazardlens.federation`."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from hazardlens.cli.common import cli_principal, console, context, friendly_errors


def register(app: typer.Typer) -> None:
    peers_app = typer.Typer(no_args_is_help=True, help="Other hazardlens instances (signed federation).")
    sync_app = typer.Typer(no_args_is_help=True, help="Pull from / push to a peer instance.")
    app.add_typer(peers_app, name="peers")
    app.add_typer(sync_app, name="sync")

    @peers_app.command("key")
    @friendly_errors
    def key() -> None:
        """Print this instance's public key (give it to the peer's administrator)."""
        from hazardlens.federation.signing import ensure_keypair

        print(ensure_keypair(context().settings))

    @peers_app.command("add")
    @friendly_errors
    def add(
        name: str = typer.Argument(..., help="a short name for the peer, e.g. hubei or ministry"),
        url: str = typer.Option(..., "--url", help="the peer's base URL, e.g. https://hazardlens.hubei.example"),
        public_key: Path = typer.Option(..., "--public-key", help="file with the peer's public key"),
        org: str = typer.Option(None, "--org", help="the peer's own organisation (region) code"),
        allow: str = typer.Option(
            "samples,models,taxonomy,feedback",
            "--allow",
            help="what the peer may pull from here (samples, models, taxonomy) or push (feedback)",
        ),
    ) -> None:
        """Register another instance by its public key (system organisation)."""
        from hazardlens.federation.peers import add_peer

        ctx = context()
        ctx.db.init()
        principal = cli_principal(ctx, ctx.settings.system_org)
        text = public_key.read_text(encoding="utf-8", errors="replace")[:4000]
        with ctx.db.session() as s:
            peer = add_peer(s, principal, name, url, text, org, [a.strip() for a in allow.split(",") if a.strip()])
            console.print(f"peer {peer.name} registered (key id {peer.key_id}), may: {', '.join(peer.allow)}")

    @peers_app.command("list")
    @friendly_errors
    def list_() -> None:
        """The registered peers as JSON."""
        from hazardlens.federation.peers import list_peers, peer_dict

        ctx = context()
        ctx.db.init()
        with ctx.db.read_session() as s:
            print(json.dumps([peer_dict(p) for p in list_peers(s)], ensure_ascii=False, indent=2))

    @sync_app.command("pull")
    @friendly_errors
    def pull(
        peer: str = typer.Argument(..., help="peer name"),
        what: str = typer.Option("samples,models", "--what", help="samples, models (comma separated)"),
        page_size: int = typer.Option(100, "--page-size", min=1, max=500, help="samples per page (and commit)"),
    ) -> None:
        """Fetch what changed at the peer since the last pull; prints a JSON report."""
        from hazardlens.federation import sync

        ctx = context()
        ctx.db.init()
        parts = {w.strip() for w in what.split(",") if w.strip()}
        report: dict[str, object] = {}
        if "samples" in parts:
            report["samples"] = sync.pull_samples(ctx, peer, page_size)
        if "models" in parts:
            report["models"] = sync.pull_models(ctx, peer)
        print(json.dumps(report, ensure_ascii=False))

    @sync_app.command("push-feedback")
    @friendly_errors
    def push_feedback(peer: str = typer.Argument(..., help="peer name")) -> None:
        """Send inspectors' feedback counts (per model version and class; no photos) to the peer."""
        from hazardlens.federation import sync

        ctx = context()
        ctx.db.init()
        print(json.dumps(sync.push_feedback(ctx, peer), ensure_ascii=False))
