"""``hazardlens peers ...`` and ``hazardlens sync ...``: federation between instances (issue 17).
Thin: the logic is :mod:`hazardlens.federation`."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from hazardlens.cli.common import cli_principal, console, context, friendly_errors

_EVERY_HELP = "pull from the peer this often (15m, 2h, 1d) as a job of the service; 'off' stops it"
_FULL_HELP = "every this often the scheduled pull starts from cursor 0 (e.g. 1d; closes the cursor gap)"
_WHAT_HELP = "what the scheduled pull fetches: samples, models, taxonomy (comma separated)"


def _parts(text: str) -> list[str]:
    return [w.strip() for w in (text or "").split(",") if w.strip()][:10]


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
        pull_every: str = typer.Option(None, "--pull-every", help=_EVERY_HELP),
        full_pull_every: str = typer.Option(None, "--full-pull-every", help=_FULL_HELP),
        pull_what: str = typer.Option("samples,models", "--pull-what", help=_WHAT_HELP),
    ) -> None:
        """Register another instance by its public key (system organisation)."""
        from hazardlens.federation.peers import add_peer, parse_every, set_schedule

        ctx = context()
        ctx.db.init()
        principal = cli_principal(ctx, ctx.settings.system_org)
        text = public_key.read_text(encoding="utf-8", errors="replace")[:4000]
        every = parse_every(pull_every)
        full = parse_every(full_pull_every, "--full-pull-every")
        with ctx.db.session() as s:
            peer = add_peer(s, principal, name, url, text, org, [a.strip() for a in allow.split(",") if a.strip()])
            if every is not None or full is not None:
                set_schedule(s, principal, peer.name, every, full, _parts(pull_what))
            console.print(f"peer {peer.name} registered (key id {peer.key_id}), may: {', '.join(peer.allow)}")
            if every is not None:
                console.print(f"pulls {', '.join(peer.pull_what or [])} every {every} s (first at the next tick)")

    @peers_app.command("set")
    @friendly_errors
    def set_(
        name: str = typer.Argument(..., help="peer name"),
        pull_every: str = typer.Option(..., "--pull-every", help=_EVERY_HELP),
        full_pull_every: str = typer.Option(None, "--full-pull-every", help=_FULL_HELP),
        pull_what: str = typer.Option("samples,models", "--pull-what", help=_WHAT_HELP),
    ) -> None:
        """Schedule (or stop: --pull-every off) the peer's periodic pull, run as a job by the service."""
        from hazardlens.federation.peers import parse_every, peer_dict, set_schedule

        ctx = context()
        ctx.db.init()
        principal = cli_principal(ctx, ctx.settings.system_org)
        every = parse_every(pull_every)
        full = parse_every(full_pull_every, "--full-pull-every")
        with ctx.db.session() as s:
            peer = set_schedule(s, principal, name, every, full, _parts(pull_what))
            print(json.dumps(peer_dict(peer)["schedule"], ensure_ascii=False))

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
        what: str = typer.Option("samples,models", "--what", help="samples, models, taxonomy (comma separated)"),
        page_size: int = typer.Option(100, "--page-size", min=1, max=500, help="samples per page (and commit)"),
        full: bool = typer.Option(False, "--full", help="samples from cursor 0 (moves no bytes already held)"),
    ) -> None:
        """Fetch what changed at the peer since the last pull; prints a JSON report."""
        from hazardlens.federation import additions, sync

        ctx = context()
        ctx.db.init()
        parts = _parts(what)
        report: dict[str, object] = {}
        if "samples" in parts:
            report["samples"] = sync.pull_samples(ctx, peer, page_size, full=full)
        if "models" in parts:
            report["models"] = sync.pull_models(ctx, peer)
        if "taxonomy" in parts:
            report["taxonomy"] = additions.pull_taxonomy(ctx, peer)
        print(json.dumps(report, ensure_ascii=False))

    @sync_app.command("additions")
    @friendly_errors
    def pulled(
        all_: bool = typer.Option(False, "--all", help="also those their instance no longer offers"),
    ) -> None:
        """Taxonomy additions pulled from peers (origin, clause, approval) as JSON; unusable until adopted."""
        from hazardlens.federation import additions

        ctx = context()
        ctx.db.init()
        principal = cli_principal(ctx, ctx.settings.system_org)
        with ctx.db.read_session() as s:
            rows = [additions.pulled_public(s, r).model_dump() for r in additions.list_pulled(s, principal, all_)]
        print(json.dumps(rows, ensure_ascii=False, indent=2))

    @sync_app.command("adopt")
    @friendly_errors
    def adopt(
        pulled_id: int = typer.Argument(..., help="id of the pulled addition ('hazardlens sync additions')"),
        org: str = typer.Option(None, "--org", help="the organisation that may use it (default: the system one)"),
    ) -> None:
        """Adopt a pulled taxonomy addition: usable in that organisation here (system organisation)."""
        from hazardlens.federation import additions

        ctx = context()
        ctx.db.init()
        principal = cli_principal(ctx, ctx.settings.system_org)
        with ctx.db.session() as s:
            row = additions.adopt(ctx, s, principal, pulled_id, org)
            console.print(f"adopted as addition {row.id} ({row.kind} {row.key}) of organisation {row.org_code}")

    @sync_app.command("push-feedback")
    @friendly_errors
    def push_feedback(peer: str = typer.Argument(..., help="peer name")) -> None:
        """Send inspectors' feedback counts (per model version and class; no photos) to the peer."""
        from hazardlens.federation import sync

        ctx = context()
        ctx.db.init()
        print(json.dumps(sync.push_feedback(ctx, peer), ensure_ascii=False))
