"""``hazardlens`` command. Each topic lives in its own module (cli/<topic>.py) exposing ``register``."""

from __future__ import annotations

import importlib
import pkgutil
import sys
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import typer
from rich.console import Console

from hazardlens.context import Context
from hazardlens.errors import HazardError

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="hazardlens: equipment/facility image sample library (设备设施样本库) and hazard detection.")
console = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])


def context() -> Context:
    return Context()


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


def _register_all() -> None:
    import hazardlens.cli as pkg

    for mod in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        if mod.name == "main":
            continue
        module = importlib.import_module(f"{pkg.__name__}.{mod.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(app)


_register_all()


def main() -> None:  # pragma: no cover - console entry
    app(prog_name="hazardlens", args=sys.argv[1:])
