"""``hazardlens worker``: a Celery worker that runs background jobs (issue 16).

With ``HAZARDLENS_BROKER_URL`` set, the server and the CLI send every submitted job to the broker;
start one or more workers (on this machine or others sharing the catalogue and the object store):

    hazardlens worker --queues cpu --concurrency 2      # pre-labelling, exports
    hazardlens worker --queues gpu                      # training (with HAZARDLENS_GPU_QUEUE=true)

Without a broker nothing changes: the server's embedded runner works the queue.
"""

from __future__ import annotations

import logging
from typing import Any

import typer

from hazardlens.cli.common import context, friendly_errors
from hazardlens.context import Context


def detector_services() -> Any:
    """What a job runner outside the server hands its handlers: a model manager of its own, loaded on
    the first job that needs one and following promotions like a serving worker's (it re-reads the
    catalogue at most every ``HAZARDLENS_MODEL_POLL_S``)."""
    from hazardlens.jobrun import Services

    def build(ctx: Context) -> Any:
        from hazardlens.models.manager import ModelManager

        manager = ModelManager(ctx)
        manager.start(background=False)
        return manager

    return Services(detector_factory=build)


def register_kinds() -> None:
    """Every job kind, registered with the queue (the worker runs whatever it is sent)."""
    import hazardlens.federation.jobs  # noqa: F401
    import hazardlens.labeling.prelabel  # noqa: F401
    import hazardlens.training.jobs  # noqa: F401


def register(app: typer.Typer) -> None:
    @app.command("worker")
    @friendly_errors
    def worker(
        queues: str = typer.Option("cpu", "--queues", help="comma-separated: cpu, gpu (training)"),
        concurrency: int = typer.Option(1, "--concurrency", min=1, max=64, help="jobs (shards) run at once"),
        pool: str = typer.Option(
            None, "--pool", help="solo | threads | prefork (default: solo for 1, threads for more)"
        ),
        name: str = typer.Option(None, "--name", help="worker name (default hazardlens-QUEUES@host)"),
        loglevel: str = typer.Option("INFO", "--loglevel", help="DEBUG | INFO | WARNING"),
    ) -> None:
        """Run background jobs from the broker (HAZARDLENS_BROKER_URL) until stopped (Ctrl-C, SIGTERM:
        the running task finishes first; a worker killed outright loses nothing: its task is
        delivered again and taken over). ``kill -USR1 PID`` makes Celery print every thread's stack
        to the log (a worker that seems stuck says where, without being stopped)."""
        from hazardlens.broker import run_worker

        logging.basicConfig(level=getattr(logging, loglevel.upper(), logging.INFO))
        register_kinds()
        ctx = context()
        run_worker(
            ctx,
            detector_services(),
            queues=[q.strip() for q in queues.split(",") if q.strip()],
            concurrency=concurrency,
            pool=pool,
            name=name,
            loglevel=loglevel.upper(),
        )


__all__ = ["detector_services", "register", "register_kinds"]
