"""What every CLI topic module shares: the console, the context, and error display."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import typer
from rich.console import Console

from hazardlens.auth import Principal, ensure_user, principal_of
from hazardlens.context import Context
from hazardlens.errors import HazardError

console = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])


ORG_HELP = "organisation (region) code the CLI acts for, as its admin user cli-<org>"


def context() -> Context:
    return Context()


def cli_principal(ctx: Context, org: str) -> Principal:
    """The shell acts as user ``cli-<org>``, an administrator of that organisation, so its work carries
    a real user in the catalogue and the audit log, and the tenancy rule applies as for any admin key."""
    org = org.strip()
    with ctx.db.session() as s:
        user = ensure_user(s, org, f"cli-{org}", "admin")
        return principal_of(user)


def friendly_errors(func: F) -> F:
    """Show a HazardError as one clear line (and its details) with exit code 2, never a traceback."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except HazardError as exc:
            console.print(f"[red]error[/red] ({exc.code}): {exc.message}")
            if exc.details:
                details = exc.details if isinstance(exc.details, list) else [exc.details]
                for d in details[:50]:
                    console.print(f"  - {d}")
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]
