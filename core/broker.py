"""Jobs on Celery (issue 16): when ``HAZARDLENS_BROKER_URL`` names a broker (Redis or RabbitMQ), a
submitted job is a message on a queue and ``hazardlens worker`` processes run it.

The catalogue stays the truth about every job (:mod:`hazardlens.jobs`): a message only says "run job
12" or "run shard 40", and the worker claims that unit under a lease (:mod:`hazardlens.jobrun`)
before it does anything. So:

- messages are acknowledged late (``acks_late``, ``task_reject_on_worker_lost``, one message
  prefetched): a worker killed mid-task never acknowledged its message, and the broker hands it to
  another worker (RabbitMQ when the connection drops, Redis after ``HAZARDLENS_BROKER_VISIBILITY_S``);
- a unit's effects are committed with its completion, by its owner only: a message delivered twice
  (redelivered while its first worker still ran, or sent twice) writes nothing twice;
- a message for a unit another live worker holds is sent again ``job_lease_s`` later, so that if that
  worker dies afterwards its unit still has a message that will find it; a failed shard is sent
  again after a pause until its attempts run out.

Two task names, ``hazardlens.job`` (a job: runs a plain kind, or plans a sharded one and sends its
shards) and ``hazardlens.shard``; two queues, ``cpu`` and ``gpu`` (training, when
``HAZARDLENS_GPU_QUEUE`` says GPU workers exist). The worker side needs the job kinds registered
(``hazardlens worker`` imports them) and a :class:`~hazardlens.jobrun.Services` for the handlers.
"""

from __future__ import annotations

import logging
import socket
import threading
from typing import TYPE_CHECKING, Any

from hazardlens.context import Context
from hazardlens.errors import HazardError
from hazardlens.jobrun import Services, new_owner, run_job, run_shard
from hazardlens.orm import Job
from hazardlens.settings import Settings

if TYPE_CHECKING:
    from celery import Celery  # type: ignore[import-untyped]

log = logging.getLogger(__name__)

JOB_TASK = "hazardlens.job"
SHARD_TASK = "hazardlens.shard"
QUEUES = ("cpu", "gpu")
_RETRY_BACKOFF_S = (2.0, 10.0, 30.0)
#: A task whose runner raised (the runner records a job's own failures on its row, so this is the
#: catalogue or the broker failing under it) is sent again this much later, as often as it takes.
_INFRA_RETRY_S = 15.0


class BrokerUnavailable(HazardError):
    status, code = 503, "broker_unavailable"


_apps: dict[tuple[str, float], Celery] = {}
_apps_lock = threading.Lock()
_worker: dict[str, Any] = {}  # the worker process's context and services (set by :func:`run_worker`)


def celery_app(settings: Settings) -> Celery:
    """One Celery app per broker URL and process (sending only needs the URL; the tasks are defined
    on it too, so a worker started on it runs them)."""
    key = (settings.broker_url, settings.broker_visibility_s)
    with _apps_lock:
        app = _apps.get(key)
        if app is None:
            app = _apps[key] = _make_app(settings)
        return app


def _make_app(settings: Settings) -> Celery:
    from celery import Celery
    from kombu import Queue

    visibility = max(1.0, float(settings.broker_visibility_s))
    app = Celery("hazardlens", broker=settings.broker_url, set_as_current=False)
    app.conf.update(
        task_acks_late=True,  # acknowledged after the task returns: a killed worker's task is redelivered
        task_reject_on_worker_lost=True,  # a pool child that dies requeues its task instead of acking it
        worker_prefetch_multiplier=1,  # a worker holds one message beyond those it runs
        task_ignore_result=True,  # results live in the catalogue, not in a result backend
        task_serializer="json",
        accept_content=["json"],
        task_default_queue="cpu",
        task_queues=[Queue(q, routing_key=q) for q in QUEUES],  # type: ignore[no-untyped-call]
        task_create_missing_queues=True,
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            "visibility_timeout": visibility,
            # look for abandoned messages at least every 10 s (a fifth of the timeout when shorter)
            "unacked_restore_interval": max(1, min(10, int(visibility / 5))),
            "unacked_restore_throttle": 1,
            # a publish or an ack on a connection the broker dropped without closing fails after 30 s
            # (then the task is sent again) instead of blocking its worker for ever (kombu's default)
            "socket_timeout": 30.0,
            "socket_connect_timeout": 10.0,
        },
        task_publish_retry_policy={"max_retries": 3, "interval_start": 0.2, "interval_step": 0.5},
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        worker_cancel_long_running_tasks_on_connection_loss=False,
        broker_heartbeat=30,
    )

    @app.task(name=JOB_TASK, bind=True)  # type: ignore[untyped-decorator]
    def job_task(self: Any, job_id: int) -> str:
        ctx, services = _worker_state()
        from hazardlens import jobs

        try:
            outcome = run_job(
                ctx,
                int(job_id),
                jobs.registered(),
                owner=new_owner(),
                services=services,
                dispatch_shard=lambda shard_id: _send(ctx, SHARD_TASK, shard_id, _queue_of(ctx, int(job_id))),
            )
        except Exception as exc:  # the catalogue or the broker failed under it: try again later
            raise self.retry(exc=exc, countdown=_INFRA_RETRY_S, max_retries=None) from exc
        if outcome == "busy":  # another worker holds it: look again when its lease would have run out
            _send(ctx, JOB_TASK, int(job_id), _queue_of(ctx, int(job_id)), countdown=ctx.settings.job_lease_s)
        return outcome

    @app.task(name=SHARD_TASK, bind=True)  # type: ignore[untyped-decorator]
    def shard_task(self: Any, shard_id: int) -> str:
        ctx, services = _worker_state()
        from hazardlens import jobs
        from hazardlens.orm import JobShard

        try:
            outcome = run_shard(ctx, int(shard_id), jobs.registered(), owner=new_owner(), services=services)
        except Exception as exc:  # the catalogue or the broker failed under it: try again later
            raise self.retry(exc=exc, countdown=_INFRA_RETRY_S, max_retries=None) from exc
        if outcome in ("busy", "retry"):
            with ctx.db.read_session() as session:
                shard = session.get(JobShard, int(shard_id))
                attempts, job_id = (shard.attempts, shard.job_id) if shard is not None else (0, 0)
            delay = (
                ctx.settings.job_lease_s
                if outcome == "busy"
                else _RETRY_BACKOFF_S[min(max(attempts - 1, 0), len(_RETRY_BACKOFF_S) - 1)]
            )
            _send(ctx, SHARD_TASK, int(shard_id), _queue_of(ctx, job_id), countdown=delay)
        return outcome

    return app


def _worker_state() -> tuple[Context, Services]:
    if "ctx" not in _worker:  # a task run outside `hazardlens worker` (e.g. a test's eager call)
        from hazardlens.settings import get_settings

        ctx = Context(get_settings())
        _worker.update(ctx=ctx, services=Services())
    return _worker["ctx"], _worker["services"]


def _queue_of(ctx: Context, job_id: int) -> str:
    with ctx.db.read_session() as session:
        job = session.get(Job, job_id)
        return (job.queue if job is not None and job.queue else None) or "cpu"


def _send(ctx: Context, task: str, unit_id: int, queue: str, countdown: float | None = None) -> None:
    celery_app(ctx.settings).send_task(task, args=[int(unit_id)], queue=queue, countdown=countdown)


def dispatch_job(ctx: Context, job: Job) -> None:
    """Send a just-committed job to its queue. When the broker cannot be reached the job is marked
    failed (nothing would ever run it) and the caller gets 503 ``broker_unavailable``."""
    try:
        _send(ctx, JOB_TASK, job.id, job.queue or "cpu")
    except Exception as exc:
        from datetime import UTC, datetime

        from sqlalchemy import update

        error = f"broker_unavailable: {type(exc).__name__}: {exc}"[:2000]
        with ctx.db.session() as session:
            session.execute(
                update(Job)
                .where(Job.id == job.id, Job.status == "queued")
                .values(status="failed", error=error, message=error, finished_at=datetime.now(UTC))
            )
        log.error("could not send job %s to the broker: %s", job.id, exc)
        raise BrokerUnavailable(f"the job queue's broker cannot be reached ({type(exc).__name__})") from exc


def run_worker(
    ctx: Context,
    services: Services,
    *,
    queues: list[str],
    concurrency: int = 1,
    pool: str | None = None,
    name: str | None = None,
    loglevel: str = "INFO",
) -> None:
    """Work ``queues`` until stopped (``hazardlens worker``). One process: ``solo`` for one task at a
    time, else threads sharing this process's catalogue connections and detector (one model in memory,
    its micro-batcher shared by the tasks)."""
    if not ctx.settings.broker_url:
        from hazardlens.errors import Invalid

        raise Invalid("set HAZARDLENS_BROKER_URL (e.g. redis://127.0.0.1:6379/0) to run a worker", code="invalid_job")
    unknown = sorted(set(queues) - set(QUEUES))
    if unknown or not queues:
        from hazardlens.errors import Invalid

        raise Invalid(f"queues are {', '.join(QUEUES)}, not {', '.join(unknown) or 'none'}", code="invalid_job")
    _worker.update(ctx=ctx, services=services)
    app = celery_app(ctx.settings)
    chosen = pool or ("solo" if concurrency <= 1 else "threads")
    worker = app.Worker(
        queues=list(queues),
        concurrency=max(1, concurrency),
        pool_cls=chosen,
        hostname=name or f"hazardlens-{'-'.join(queues)}@{socket.gethostname()}",
        loglevel=loglevel,
        without_gossip=True,
        without_mingle=True,
        without_heartbeat=True,
        optimization="fair",
    )
    worker.start()


__all__ = [
    "JOB_TASK",
    "QUEUES",
    "SHARD_TASK",
    "BrokerUnavailable",
    "celery_app",
    "dispatch_job",
    "run_worker",
]
