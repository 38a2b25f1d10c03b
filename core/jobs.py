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
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any, cast

from pydantic import BaseModel
from sqlalchemy import CursorResult, or_, select, update

from hazardlens.audit import record
from hazardlens.auth import SYSTEM, Principal, principal_of
from hazardlens.context import Context
from hazardlens.contracts.jobs import JOB_KINDS, JOB_STATUSES, JobParams, JobPublic, JobSummary, parse_job
from hazardlens.dates import iso
from hazardlens.errors import HazardError, Invalid, NotFound
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
    which loggers (beside ``hazardlens``) feed its log tail."""

    kind: str
    permission: str
    handler: Handler
    check: Check | None = None
    loggers: tuple[str, ...] = ()


_TYPES: dict[str, JobType] = {}


def register(
    kind: str, *, permission: str, handler: Handler, check: Check | None = None, loggers: tuple[str, ...] = ()
) -> JobType:
    """Make ``kind`` runnable (again: the last registration wins). ``kind`` must be one of the kinds
    of :mod:`hazardlens.contracts.jobs`, which defines its parameters."""
    if kind not in JOB_KINDS:  # its parameters would have no model: it could never be submitted
        raise ValueError(f"job kind {kind!r} has no parameters model in hazardlens.contracts.jobs")
    job_type = JobType(kind, permission, handler, check, tuple(loggers))
    _TYPES[kind] = job_type
    return job_type


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


# ---- log capture --------------------------------------------------------------------------------


class _TailHandler(logging.Handler):
    """Keeps the last lines logged by one thread (the job's), for the job row's log tail."""

    def __init__(self, thread_id: int, lines: collections.deque[str]) -> None:
        super().__init__(logging.INFO)
        self.thread_id = thread_id
        self.lines = lines
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))

    def emit(self, rec: logging.LogRecord) -> None:
        if rec.thread != self.thread_id:
            return
        with contextlib.suppress(Exception):  # a log line must never fail the job
            self.lines.append(self.format(rec)[:_LOG_LINE_CHARS])


# ---- the runner ---------------------------------------------------------------------------------


class JobRunner:
    """Submit jobs from any thread; run them one at a time in a background thread (``start``) or in
    the caller's thread (``run_next`` / ``run_pending``, for tests and tools). ``handlers`` replaces
    the registered handler of a kind (tests)."""

    def __init__(
        self,
        ctx: Context,
        *,
        poll_s: float = 1.0,
        flush_s: float = _FLUSH_S,
        handlers: Mapping[str, Handler] | None = None,
    ) -> None:
        self.ctx = ctx
        self.poll_s = poll_s
        self.flush_s = flush_s
        self.handlers = dict(handlers or {})
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

    def _handler(self, kind: str) -> Handler:
        handler = self.handlers.get(kind) or (_TYPES[kind].handler if kind in _TYPES else None)
        if handler is None:
            raise Invalid(f"no handler for job kind {kind!r}", code="invalid_job")
        return handler

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
        with self.ctx.db.session() as session:
            job = Job(
                kind=kind,
                status="queued",
                params=clean,
                created_by=principal.user_id,
                created_at=datetime.now(UTC),
                message="queued",
            )
            session.add(job)
            session.flush()
            record(session, principal, "job.submit", "job", job.id, after={"kind": kind, "params": clean})
        self._wake.set()
        return job

    def submit_job(self, job_in: BaseModel, principal: Principal) -> Job:
        """:meth:`submit` for a validated ``JobIn`` (what the API receives)."""
        return self.submit(job_in.kind, job_in.params, principal)  # type: ignore[attr-defined]

    def get_job(self, job_id: int, principal: Principal | None = None) -> Job:
        """Admins see every job; others the jobs of their own organisation (another's is a 404)."""
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
        if principal is not None and principal.role != "admin":
            own_org = select(User.id).where(User.org_code == principal.org_code)
            q = q.where(Job.created_by.in_(own_org))
        with self.ctx.db.read_session() as session:
            return list(session.scalars(q))

    @staticmethod
    def _visible(session: Any, job: Job, principal: Principal | None) -> bool:
        if principal is None or principal.role == "admin":
            return True
        if job.created_by is None:
            return False
        user = session.get(User, job.created_by)
        return user is not None and user.org_code == principal.org_code

    # -- recovery ----------------------------------------------------------------------------

    def recover(self) -> int:
        """Mark jobs a previous process left queued or running as failed ('interrupted by restart').
        Only call it while no other runner works this catalogue (``start`` holds the home's lock)."""
        now = datetime.now(UTC)
        with self.ctx.db.session() as session:
            jobs = list(session.scalars(select(Job).where(or_(Job.status == "running", Job.status == "queued"))))
            for job in jobs:
                before = job.status
                job.status, job.error, job.finished_at = "failed", INTERRUPTED, now
                job.message = f"{INTERRUPTED} (was {before})"
                record(
                    session,
                    SYSTEM,
                    "job.interrupted",
                    "job",
                    job.id,
                    before={"status": before},
                    after={"status": "failed", "error": INTERRUPTED},
                )
        if jobs:
            log.warning("marked %d job(s) interrupted by restart: %s", len(jobs), [j.id for j in jobs])
        return len(jobs)

    # -- running -----------------------------------------------------------------------------

    def _claim(self) -> int | None:
        """Take the oldest queued job; the conditional update makes the claim atomic across processes."""
        with self.ctx.db.session() as session:
            ids = list(session.scalars(select(Job.id).where(Job.status == "queued").order_by(Job.id).limit(5)))
            for job_id in ids:
                res = cast(
                    CursorResult[Any],
                    session.execute(
                        update(Job)
                        .where(Job.id == job_id, Job.status == "queued")
                        .values(status="running", started_at=datetime.now(UTC), message="starting")
                    ),
                )
                if res.rowcount == 1:
                    return job_id
        return None

    def _principal(self, session: Any, job: Job) -> Principal:
        if job.created_by is None:
            return SYSTEM
        user = session.get(User, job.created_by)
        if user is None:
            return SYSTEM
        return principal_of(user)

    def run_next(self) -> Job | None:
        """Run the oldest queued job to its end in this thread; None when the queue is empty."""
        job_id = self._claim()
        if job_id is None:
            return None
        self._execute(job_id)
        with self.ctx.db.session() as session:
            return session.get(Job, job_id)

    def run_pending(self) -> list[Job]:
        done = []
        while (job := self.run_next()) is not None:
            done.append(job)
        return done

    def _execute(self, job_id: int) -> None:
        with self.ctx.db.session() as session:
            job = session.get(Job, job_id)
            assert job is not None
            principal = self._principal(session, job)
            session.expunge(job)
        lines: collections.deque[str] = collections.deque(maxlen=_LOG_LINES)
        tail = _TailHandler(threading.get_ident(), lines)
        extra = _TYPES[job.kind].loggers if job.kind in _TYPES else ()
        loggers = [logging.getLogger(name) for name in dict.fromkeys(("hazardlens", *extra))]
        for lg in loggers:
            lg.addHandler(tail)
        state: dict[str, Any] = {"flushed": -1e9, "progress": 0.0, "message": "starting"}

        def write(**values: Any) -> None:
            with self.ctx.db.session() as s:
                s.execute(update(Job).where(Job.id == job_id).values(log="\n".join(lines), **values))

        def progress(fraction: float, message: str) -> None:
            fraction = max(0.0, min(1.0, float(fraction)))
            if message and message != state["message"]:
                lines.append(f"{datetime.now():%H:%M:%S} {message}"[:_LOG_LINE_CHARS])
            state.update(progress=fraction, message=message or state["message"])
            now = time.monotonic()
            # Throttled: a busy training loop must not turn into a busy database writer.
            if now - state["flushed"] >= self.flush_s or fraction >= 1.0:
                state["flushed"] = now
                write(progress=fraction, message=str(state["message"])[:2000])

        try:
            handler = self._handler(job.kind)
            progress(0.0, f"started {job.kind}")
            result = handler(self.ctx, job, principal, progress)
        except BaseException as exc:  # noqa: BLE001 - every failure ends up on the row, never lost
            if isinstance(exc, HazardError):
                error = f"{exc.code}: {exc.message}"
            else:
                error = f"{type(exc).__name__}: {exc}"
                lines.extend(traceback.format_exc().splitlines()[-20:])
            lines.append(f"{datetime.now():%H:%M:%S} failed: {error}"[:_LOG_LINE_CHARS])
            log.warning("job %s failed: %s", job_id, error)
            write(status="failed", error=error, message=f"failed: {error}"[:2000], finished_at=datetime.now(UTC))
            self._audit(job_id, "job.fail", {"status": "failed", "error": error})
            if isinstance(exc, KeyboardInterrupt | SystemExit):
                raise
        else:
            lines.append(f"{datetime.now():%H:%M:%S} completed")
            write(
                status="completed",
                progress=1.0,
                message=str(state["message"] or "completed")[:2000],
                result=result,
                finished_at=datetime.now(UTC),
            )
            self._audit(job_id, "job.complete", {"status": "completed"})
        finally:
            for lg in loggers:
                lg.removeHandler(tail)

    def _audit(self, job_id: int, action: str, after: dict[str, Any]) -> None:
        with self.ctx.db.session() as session:
            record(session, SYSTEM, action, "job", job_id, after=after)

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
    "register",
    "registered",
]
