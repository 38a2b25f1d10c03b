"""init, serve, keys: what an administrator needs first."""

from __future__ import annotations

import typer

from hazardlens.cli.common import console, context, friendly_errors


def _reachable_or_exit() -> None:
    """Before serving: a catalogue server (PostgreSQL) or an object store that cannot be reached ends
    the command with one line (``friendly_errors``) instead of the server's start-up traceback. The
    embedded SQLite catalogue is created by the start-up itself, so it is not opened here."""
    ctx = context()
    try:
        if ctx.settings.database_url:
            with ctx.db.engine.connect():
                pass
        ctx.store.ping()
    finally:
        ctx.close()


def register(app: typer.Typer) -> None:
    @app.command()
    @friendly_errors
    def init() -> None:
        """Prepare HAZARDLENS_HOME: catalogue schema, object store, taxonomy check (safe to run twice)."""
        from hazardlens.models.registry import ensure_baseline

        ctx = context()
        ctx.init()
        from hazardlens.federation.signing import ensure_keypair

        ensure_keypair(ctx.settings)  # the instance's federation key pair; the private key stays in the home
        baseline = ensure_baseline(ctx)  # a fresh install serves (and lists) the shipped baseline
        console.print(
            f"ready: home={ctx.settings.home.resolve()} catalogue={ctx.db.engine.url.render_as_string()} "
            f"store={ctx.settings.store}"
            + (f" production model={baseline.name}:{baseline.version}" if baseline is not None else "")
        )

    @app.command()
    @friendly_errors
    def serve(
        host: str = typer.Option("127.0.0.1", help="address to bind"),
        port: int = typer.Option(8000, help="port to bind"),
        workers: int = typer.Option(1, help="worker processes"),
        timeout_keep_alive: int = typer.Option(5, help="seconds an idle connection is kept"),
    ) -> None:
        """Serve the API and the web console."""
        import uvicorn

        _reachable_or_exit()
        uvicorn.run(
            "hazardlens.serving.main:app",
            host=host,
            port=port,
            workers=workers,
            timeout_keep_alive=timeout_keep_alive,
            log_config=None,
            h11_max_incomplete_event_size=65536,
        )

    keys = typer.Typer(no_args_is_help=True, help="API keys (stored hashed; printed once).")
    app.add_typer(keys, name="keys")

    @keys.command("create")
    @friendly_errors
    def keys_create(
        org: str = typer.Option(..., "--org", help="organisation (region) code, e.g. 420000"),
        role: str = typer.Option(..., "--role", help="inspector|curator|reviewer|admin|service"),
        name: str = typer.Option(None, "--name", help="user name (default: <role>-<org>)"),
        expires_days: int = typer.Option(None, "--expires-days", help="days until expiry"),
    ) -> None:
        """Create an API key; the key is the last word printed."""
        from hazardlens.audit import record
        from hazardlens.auth import SYSTEM, create_key

        ctx = context()
        ctx.db.init()
        with ctx.db.session() as s:
            key, user = create_key(s, org, role, name, expires_days)
            record(s, SYSTEM, "key.create", "user", user.id, after={"user": user.name, "org": org, "role": role})
        console.print(f"created key for {user.name} (org {org}, role {role}); it is shown only once:")
        print(key)
