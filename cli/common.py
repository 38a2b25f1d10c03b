"""What every CLI topic module shares: the console, the context, and error display."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any, NoReturn, TypeVar

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


def outage(exc: BaseException) -> HazardError | None:
    """The catalogue failing under a command (PostgreSQL down or restarting, SQLite's disk full) as
    the same coded error the API answers (``catalogue_unavailable`` / ``insufficient_storage``), with
    the driver's own first line and the catalogue's URL (password hidden), so the operator sees what
    could not be reached instead of a traceback; None for anything else (a bug stays a traceback).
    The object store and the broker raise coded errors of their own already."""
    from hazardlens.outages import catalogue_error

    err = catalogue_error(exc)
    if err is None:
        return None
    orig = getattr(exc, "orig", None)
    cause = str(orig if orig is not None else exc).strip().splitlines()
    where = ""
    try:
        from sqlalchemy.engine import make_url

        from hazardlens.settings import get_settings

        where = make_url(get_settings().database).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - the URL is a courtesy; the error is what matters
        pass
    detail = f" ({cause[0][:300]})" if cause else ""
    return type(err)(f"{err.message}{detail}" + (f"; the catalogue is {where}" if where else ""))


def friendly_errors(func: F) -> F:
    """Show a HazardError, or an outage of the catalogue (:func:`outage`), as one clear line (and its
    details) with exit code 2, never a traceback."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except HazardError as exc:
            _show(exc)
        except Exception as exc:
            err = outage(exc)
            if err is None:
                raise
            _show(err)

    return wrapper  # type: ignore[return-value]


def _show(exc: HazardError) -> NoReturn:
    console.print(f"[red]error[/red] ({exc.code}): {exc.message}", highlight=False, soft_wrap=True)
    if exc.details:
        details = exc.details if isinstance(exc.details, list) else [exc.details]
        for d in details[:50]:
            console.print(f"  - {d}", highlight=False)
    raise typer.Exit(2) from None


def follow_job(
    ctx: Context,
    runner: Any,
    job: Any,
    *,
    doing: str,
    wait: bool,
    as_json: bool,
    summary: Callable[[Any], str],
    details: Callable[[dict[str, Any]], list[str]],
) -> None:
    """Run a just-submitted batch job here (no broker: the embedded runner) or follow it on the
    workers (``wait``), then print its outcome: the JSON of the job, or ``summary`` and the lines of
    ``details(result)``; exit 1 when it failed. One place, so every batch command reads the same."""
    import json
    import time

    from hazardlens.jobs import job_public

    if not runner.uses_broker:
        with console.status(f"{doing} (job {job.id}) in this process..."):
            runner.run(job.id)
    elif wait:
        console.print(f"queued {job.kind} job {job.id}; following it (Ctrl-C stops following, not the job)")
        while True:
            current = runner.get_job(job.id)
            if current.status in ("completed", "failed"):
                break
            console.print(f"  {current.progress:.0%} {current.message or ''}", highlight=False)
            time.sleep(2.0)
    final = job_public(runner.get_job(job.id))
    ctx.close()
    if as_json:
        print(json.dumps(final.model_dump(mode="json"), ensure_ascii=False, indent=2))
    elif final.status in ("completed", "failed"):
        console.print(summary(final), highlight=False)
        for line in details(final.result or {}):
            console.print(f"  {line}", highlight=False)
    else:
        console.print(f"queued {final.kind} job {final.id} ({final.status}); `hazardlens jobs show {final.id}`")
        print(final.id)
    if final.status == "failed":
        raise typer.Exit(1)


def submit_and_follow(
    ctx: Context,
    principal: Any,
    kind: str,
    params: dict[str, Any],
    *,
    detector: bool = False,
    doing: str,
    wait: bool,
    as_json: bool,
    summary: Callable[[Any], str],
    details: Callable[[dict[str, Any]], list[str]],
) -> None:
    """Submit a job of ``kind`` as ``principal`` (every kind registered first) and :func:`follow_job` it;
    ``detector``: the runner gets a model manager of its own for kinds that run the model here."""
    from hazardlens.cli.worker import detector_services, register_kinds
    from hazardlens.jobs import JobRunner

    register_kinds()
    runner = JobRunner(ctx, services=detector_services()) if detector else JobRunner(ctx)
    job = runner.submit(kind, params, principal)
    follow_job(ctx, runner, job, doing=doing, wait=wait, as_json=as_json, summary=summary, details=details)


def filter_params(**values: str | None) -> dict[str, str]:
    """The sample filters a batch command was given (``SampleFilter``'s field names), blanks left out."""
    return {key: value for key, value in values.items() if value}
