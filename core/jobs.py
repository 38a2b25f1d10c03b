"""Background jobs for the embedded single-machine deployment: the generic queue and its runner.

The catalogue's ``jobs`` table is the queue: a job is a row from the moment it is submitted, its
progress, message and log tail are written to that row while it runs, and its result or error when
it ends. So the state survives a restart and any process can answer "how is job 12 doing".

What a kind of job does lives with the part that owns it: :func:`register` maps a kind to the
permission it needs, the handler that runs it and the submission check it needs
(``hazardlens.training.jobs`` registers ``train``, ``hazardlens.datasets.jobs`` ``dataset_export``;
the server and the CLI import them). The parameters of every kind are the models of
:mod:`hazardlens.contracts.jobs`, the same whether a job comes over HTTP or from the CLI.

One runner per home works the queue: :meth:`JobRunner.start` takes an exclusive lock file under the
home, so that other serving processes only submit. The lock holder is then the only process that can
have been running a job, which makes it safe for it to mark jobs left ``running`` (or ``queued``) by a
previous process as failed with "interrupted by restart" rather than leave them hanging for ever.

That is the embedded default. With ``HAZARDLENS_BROKER_URL`` set (issue 16), a submitted job is sent
to a Celery queue instead (:mod:`hazardlens.broker`) and ``hazardlens worker`` processes run it; no
server runs a thread then. Either way a job (or each shard of a sharded kind) runs under a lease
(:mod:`hazardlens.jobrun`), and its state stays on this table, so the API, the console and the CLI
report it the same way.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any

from pydantic import BaseModel
from sqlalchemy import select

from hazardlens.audit import record
from hazardlens.auth import SYSTEM, Principal
from hazardlens.context import Context
from hazardlens.contracts.jobs import JOB_KINDS, JOB_STATUSES, JobParams, JobPublic, JobSummary, parse_job
from hazardlens.dates import iso
from hazardlens.errors import Invalid, NotFound
from hazardlens.jobrun import Planner, Reducer, Services, ShardHandler, new_owner, run_job
from hazardlens.orm import Job, User

log = logging.getLogger(__name__)

STATUSES = JOB_STATUSES
INTERRUPTED = "interrupted by restart"
_LOG_LINES = 200
_LOG_LINE_CHARS = 500
_FLUSH_S = 1.0

#: progress(fraction 0..1, message)
Progress = Callable[[float, str], None]
#: handler(ctx, job row, the submitter, progress) -> the result stored on the row (JSON)
Handler = Callable[[Context, Job, Principal, Progress], dict[str, Any]]
#: check(ctx, validated params, submitter): raise (Invalid, NotFound...) to refuse the submission
Check = Callable[[Context, Any, Principal], None]


@dataclass(frozen=True)
class JobType:
    """A kind of job: who may submit it, what runs it, what is checked when it is submitted, and
    which loggers (beside ``hazardlens``) feed its log tail. A *sharded* kind has ``plan`` (the job
    cut into shards), ``shard`` (one shard's work) and ``reduce`` (the shards' results summed up)
    instead of running ``handler``. ``queue``: ``gpu`` kinds go to the gpu queue when the deployment
    has one (``HAZARDLENS_GPU_QUEUE``), everything else to ``cpu``."""

    kind: str
    permission: str
    handler: Handler
    check: Check | None = None
    loggers: tuple[str, ...] = ()
    plan: Planner | None = None
    shard: ShardHandler | None = None
    reduce: Reducer | None = None
    queue: str = "cpu"

    @property
    def sharded(self) -> bool:
        return self.plan is not None and self.shard is not None


_TYPES: dict[str, JobType] = {}
#: Kinds that want a GPU: sent to the ``gpu`` queue when the deployment has one (unless registered otherwise).
#: ``evaluate`` runs the model over a whole split, as training's validation does.
GPU_KINDS = frozenset({"train", "evaluate"})


def register(
    kind: str,
    *,
    permission: str,
    handler: Handler | None = None,
    check: Check | None = None,
    loggers: tuple[str, ...] = (),
    plan: Planner | None = None,
    shard: ShardHandler | None = None,
    reduce: Reducer | None = None,
    queue: str | None = None,
) -> JobType:
    """Make ``kind`` runnable (again: the last registration wins). ``kind`` must be one of the kinds
    of :mod:`hazardlens.contracts.jobs`, which defines its parameters. Give ``handler``, or ``plan``
    and ``shard`` (and ``reduce``) for a sharded kind."""
    if kind not in JOB_KINDS:  # its parameters would have no model: it could never be submitted
        raise ValueError(f"job kind {kind!r} has no parameters model in hazardlens.contracts.jobs")
    if handler is None and (plan is None or shard is None):
        raise ValueError(f"job kind {kind!r} needs a handler, or a plan and a shard handler")
    queue = queue or ("gpu" if kind in GPU_KINDS else "cpu")
    if queue not in ("cpu", "gpu"):
        raise ValueError(f"job kind {kind!r}: queue must be cpu or gpu, not {queue!r}")
    job_type = JobType(kind, permission, handler or _sharded_only, check, tuple(loggers), plan, shard, reduce, queue)
    _TYPES[kind] = job_type
    return job_type


def _sharded_only(ctx: Context, job: Job, principal: Principal, progress: Progress) -> dict[str, Any]:
    raise Invalid(f"job kind {job.kind!r} runs in shards", code="invalid_job")


def queue_for(ctx: Context, kind: str) -> str:
    """The Celery queue of a kind: ``gpu`` only when the deployment has GPU workers."""
    job_type = _TYPES.get(kind)
    return "gpu" if job_type is not None and job_type.queue == "gpu" and ctx.settings.gpu_queue else "cpu"


def registered() -> dict[str, JobType]:
    """The registered kinds (a copy)."""
    return dict(_TYPES)


def job_public(job: Job) -> JobPublic:
    """A job row as the API, CLI and client see it."""
    return JobPublic(
        id=job.id,
        kind=job.kind,
        status=job.status,
        params=dict(job.params or {}),
        progress=round(float(job.progress or 0.0), 4),
        message=job.message,
        log=job.log,
        result=job.result,
        error=job.error,
        created_by=job.created_by,
        shards=int(job.shards or 0),
        created_at=iso(job.created_at),
        started_at=iso(job.started_at),
        finished_at=iso(job.finished_at),
    )


def job_summary(job: Job) -> JobSummary:
    """A job row without its log tail (lists: a log can be 100 kB a job)."""
    return JobSummary.model_validate(job_public(job).model_dump(exclude={"log"}))


def job_dict(job: Job) -> dict[str, Any]:
    """:func:`job_public` as plain JSON values."""
    return job_public(job).model_dump(mode="json")


# ---- what another organisation's caller may see -------------------------------------------------

#: Absolute paths on the server (the home, temporary folders, the installation): ``<server path>``.
_SERVER_PATH = re.compile(
    r"(?<![\w.])(?:[A-Za-z]:)?[/\\](?:home|root|tmp|var|usr|opt|srv|work|mnt|data|etc|lib|media|run|private|Users)"
    r"(?![\w.-])(?:[/\\][^\s'\",;()\[\]{}<>]*)*"
)
_TRACEBACK = ("Traceback (most recent call last)", "During handling of the above exception", "The above exception")


def redact(text: str | None, home: str | None = None) -> str | None:
    """``text`` without server paths (issue 13, item 8): a job's message or error may quote a file of
    the server, which only the operator (the system organisation) needs to see."""
    if text is None:
        return None
    if home:  # the home may live anywhere (a mount the generic pattern does not know): the whole path
        text = re.sub(re.escape(home) + r"[^\s'\",;()\[\]{}<>]*", "<server path>", text)
    return _SERVER_PATH.sub("<server path>", text)


def _redact_log(log_tail: str | None, home: str | None) -> str | None:
    """The log tail without traceback frames (indented lines and their headers) and server paths."""
    if log_tail is None:
        return None
    kept = [ln for ln in log_tail.splitlines() if ln[:1] not in (" ", "\t") and not ln.startswith(_TRACEBACK)]
    return redact("\n".join(kept), home)


def _redact_value(value: Any, home: str | None) -> Any:
    if isinstance(value, str):
        return redact(value, home)
    if isinstance(value, dict):
        return {k: _redact_value(v, home) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact_value(v, home) for v in value]
    return value


def job_view(job: Job, viewer: Principal, ctx: Context) -> JobPublic:
    """A job as ``viewer`` may see it: whole for the system organisation (the operator's side);
    for everybody else without tracebacks and with server paths replaced, in the log tail, the
    message, the error and the result (an export's folder on the server is of no use to a caller
    and tells an attacker the layout of the host)."""
    from hazardlens.auth import is_system

    public = job_public(job)
    if is_system(viewer, ctx.settings.system_org):
        return public
    home = str(ctx.settings.home.resolve())
    return public.model_copy(
        update={
            "log": _redact_log(public.log, home),
            "message": redact(public.message, home),
            "error": redact(public.error, home),
            "result": _redact_value(public.result, home),
        }
    )


def job_summary_view(job: Job, viewer: Principal, ctx: Context) -> JobSummary:
    """:func:`job_view` without the log tail (lists)."""
    return JobSummary.model_validate(job_view(job, viewer, ctx).model_dump(exclude={"log"}))


# ---- the runner ---------------------------------------------------------------------------------


class JobRunner:
    """Submit jobs from any thread; run them one at a time in a background thread (``start``) or in
    the caller's thread (``run_next`` / ``run_pending``, for tests and tools). ``handlers`` replaces
    the registered handler of a kind (tests); ``services`` hands the handlers a detector. With a
    broker configured, ``submit`` sends the job to the workers and ``start`` runs no thread."""

    def __init__(
        self,
        ctx: Context,
        *,
        poll_s: float = 1.0,
        flush_s: float = _FLUSH_S,
        handlers: Mapping[str, Handler] | None = None,
        services: Services | None = None,
    ) -> None:
        self.ctx = ctx
        self.poll_s = poll_s
        self.flush_s = flush_s
        self.handlers = dict(handlers or {})
        self.services = services or Services()
        self.owner = new_owner()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock_file: IO[str] | None = None

    def _type(self, kind: str) -> JobType:
        job_type = _TYPES.get(kind)
        if job_type is None:
            known = ", ".join(_TYPES) or "none registered"
            raise Invalid(f"unknown job kind {kind!r}; kinds are {known}", code="invalid_job")
        return job_type

    @property
    def uses_broker(self) -> bool:
        return bool(self.ctx.settings.broker_url)

    # -- queries -----------------------------------------------------------------------------

    def submit(self, kind: str, params: JobParams | Mapping[str, Any] | None, principal: Principal) -> Job:
        """Queue a job after checking the caller may submit it and its parameters (the contract's
        model of ``kind``, then the kind's own check: a missing config or an invisible dataset fails
        the request, not the job an hour later)."""
        job_type = self._type(kind)
        principal.require(job_type.permission)
        job_in = parse_job(kind, params)
        if job_type.check is not None:
            job_type.check(self.ctx, job_in.params, principal)
        clean = job_in.params.model_dump(mode="json", exclude_none=True, by_alias=True)
        queue = queue_for(self.ctx, kind) if self.uses_broker else None
        with self.ctx.db.session() as session:
            job = Job(
                kind=kind,
                status="queued",
                params=clean,
                created_by=principal.user_id,
                created_at=datetime.now(UTC),
                message="queued",
                queue=queue,
            )
            session.add(job)
            session.flush()
            record(session, principal, "job.submit", "job", job.id, after={"kind": kind, "params": clean})
        if queue is not None:  # after the commit: a worker that takes the message finds the row
            from hazardlens.broker import dispatch_job

            dispatch_job(self.ctx, job)
        self._wake.set()
        return job

    def submit_job(self, job_in: BaseModel, principal: Principal) -> Job:
        """:meth:`submit` for a validated ``JobIn`` (what the API receives)."""
        return self.submit(job_in.kind, job_in.params, principal)  # type: ignore[attr-defined]

    def get_job(self, job_id: int, principal: Principal | None = None) -> Job:
        """The system organisation sees every job; everybody else, an organisation's admin included,
        the jobs of their own organisation (another's is a 404: issue 13, item 8)."""
        with self.ctx.db.read_session() as session:
            job = session.get(Job, job_id)
            if job is None or not self._visible(session, job, principal):
                raise NotFound(f"no job {job_id}", code="job_not_found")
            return job

    def list_jobs(
        self,
        principal: Principal | None = None,
        *,
        status: str | None = None,
        kind: str | None = None,
        limit: int = 100,
    ) -> list[Job]:
        if status is not None and status not in STATUSES:
            raise Invalid(f"status must be one of {', '.join(STATUSES)}", code="invalid_status")
        q = select(Job).order_by(Job.id.desc()).limit(max(1, min(limit, 1000)))
        if status:
            q = q.where(Job.status == status)
        if kind:
            q = q.where(Job.kind == kind)
        if principal is not None and not self._sees_all(principal):
            own_org = select(User.id).where(User.org_code == principal.org_code)
            q = q.where(Job.created_by.in_(own_org))
        with self.ctx.db.read_session() as session:
            return list(session.scalars(q))

    def _sees_all(self, principal: Principal) -> bool:
        from hazardlens.auth import is_system

        return is_system(principal, self.ctx.settings.system_org)

    def _visible(self, session: Any, job: Job, principal: Principal | None) -> bool:
        if principal is None or self._sees_all(principal):
            return True
        if job.created_by is None:
            return False
        user = session.get(User, job.created_by)
        return user is not None and user.org_code == principal.org_code

    # -- recovery ----------------------------------------------------------------------------

    def recover(self) -> int:
        """After a restart: jobs still ``queued`` stay queued and this runner works them (they never
        started, so nothing is lost by running them now: issue 13, item 8); a job left ``running``
        was cut off half-way by the previous process, and is failed with a clear reason ('interrupted
        by restart', and that it was running) rather than re-run behind its submitter's back (a
        training run or an export may have written half its output). Returns how many were failed.
        Only call it while no other runner works this catalogue (``start`` holds the home's lock)."""
        now = datetime.now(UTC)
        with self.ctx.db.session() as session:
            jobs = list(session.scalars(select(Job).where(Job.status == "running")))
            for job in jobs:
                job.status, job.error, job.finished_at = "failed", INTERRUPTED, now
                job.message = f"{INTERRUPTED} (was running; it is not re-run by itself: submit it again)"
                record(
                    session,
                    SYSTEM,
                    "job.interrupted",
                    "job",
                    job.id,
                    before={"status": "running"},
                    after={"status": "failed", "error": INTERRUPTED},
                )
            queued = list(session.scalars(select(Job.id).where(Job.status == "queued")))
        if jobs:
            log.warning("marked %d job(s) interrupted by restart: %s", len(jobs), [j.id for j in jobs])
        if queued:
            log.info("resuming %d queued job(s) after a restart: %s", len(queued), queued)
            self._wake.set()
        return len(jobs)

    # -- running -----------------------------------------------------------------------------

    def run_next(self) -> Job | None:
        """Run the oldest queued job to its end in this thread; None when the queue is empty."""
        with self.ctx.db.read_session() as session:
            ids = list(session.scalars(select(Job.id).where(Job.status == "queued").order_by(Job.id).limit(5)))
        for job_id in ids:
            outcome = run_job(
                self.ctx,
                job_id,
                _TYPES,
                owner=self.owner,
                services=self.services,
                handlers=self.handlers,
                flush_s=self.flush_s,
            )
            if outcome == "done":
                with self.ctx.db.read_session() as session:
                    return session.get(Job, job_id)
        return None

    def run(self, job_id: int) -> Job:
        """Run job ``job_id`` to its end in this thread (the CLI without a server or a broker); a job
        another live runner holds is left to it."""
        run_job(
            self.ctx,
            job_id,
            _TYPES,
            owner=self.owner,
            services=self.services,
            handlers=self.handlers,
            flush_s=self.flush_s,
        )
        return self.get_job(job_id)

    def run_pending(self) -> list[Job]:
        done = []
        while (job := self.run_next()) is not None:
            done.append(job)
        return done

    # -- background thread -------------------------------------------------------------------

    def _take_lock(self) -> bool:
        path = self.ctx.settings.home / "jobs.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(path, "a+")  # noqa: SIM115 - held for the runner's lifetime
        try:
            import fcntl

            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # not POSIX: one process per home is the operator's promise
            pass
        except OSError:
            fh.close()
            return False
        self._lock_file = fh
        return True

    def _release_lock(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()  # closing drops the flock
            self._lock_file = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> bool:
        """Recover interrupted jobs and work the queue in a daemon thread. False when another process
        already runs this home's queue (this one then only submits)."""
        if self.running:
            return True
        if self.uses_broker:
            log.info("jobs run on Celery workers (HAZARDLENS_BROKER_URL); this process only submits")
            return False
        if not self._take_lock():
            log.info("another process runs the job queue of %s; this one only submits", self.ctx.settings.home)
            return False
        self.recover()
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="hazardlens-jobs", daemon=True)
        self._thread.start()
        return True

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                ran = self.run_next()
            except Exception:  # the loop must survive a database hiccup
                log.exception("job runner error")
                ran = None
            if ran is None:
                self._wake.wait(self.poll_s)
                self._wake.clear()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop taking jobs. A job already running finishes in its daemon thread if the process lives
        on; if the process exits first, the next start marks it interrupted."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if not self._thread.is_alive():
                self._thread = None
        if self._thread is None:
            self._release_lock()


__all__ = [
    "GPU_KINDS",
    "INTERRUPTED",
    "STATUSES",
    "Check",
    "Handler",
    "JobRunner",
    "JobType",
    "Progress",
    "job_dict",
    "job_public",
    "job_summary",
    "queue_for",
    "register",
    "registered",
]
