"""``hazardlens`` command. Each topic lives in its own module (cli/<topic>.py) exposing ``register``."""

from __future__ import annotations

import importlib
import pkgutil
import sys

import typer

from hazardlens.cli.common import console, context, friendly_errors

__all__ = ["app", "console", "context", "friendly_errors", "main"]

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="hazardlens: equipment/facility image sample library (设备设施样本库) and hazard detection.",
)


def _register_all() -> None:
    import hazardlens.cli as pkg

    for mod in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        if mod.name in {"main", "common"}:
            continue
        module = importlib.import_module(f"{pkg.__name__}.{mod.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(app)


_register_all()


def main() -> None:  # pragma: no cover - console entry
    app(prog_name="hazardlens", args=sys.argv[1:])
