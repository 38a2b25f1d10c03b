"""Running one job, or one shard of a job, under a lease: what makes a job safe to hand to any
number of processes, any of which may die at any moment.

Both ways of running jobs use these functions: the embedded runner (:class:`hazardlens.jobs.JobRunner`,
a thread of the server) and the Celery workers (:mod:`hazardlens.broker`, ``hazardlens worker``).

A unit of work (a job row, or a row of ``job_shards``) is *claimed* by one conditional UPDATE: it
takes a ``queued`` unit, or a ``running`` one whose runner has not written a heartbeat for
``settings.job_lease_s`` (it died). The claimer writes its heartbeat while it works. Its result is
written by another conditional UPDATE that still names it as the owner, in the same transaction as
the unit's effects (a pre-labelling shard's suggestions): so a unit run twice (a message redelivered
while its first runner still worked, a runner that stalled past its lease) commits its effects once,
and a unit whose runner died is taken over and loses nothing. A broker that acknowledges messages
late (Celery ``acks_late``) makes sure a dead runner's unit gets a second runner at all.

A *sharded* kind (:func:`hazardlens.jobs.register` with ``plan`` and ``shard``) first plans its
shards (a few hundred samples each) into ``job_shards``; each shard then runs on its own (in
parallel on several workers), is retried when it fails (``MAX_SHARD_ATTEMPTS``), reports progress
into the job's row (the mean over shards), and the last shard to end writes the job's result: the
kind's ``reduce`` over the shards' results, plus the shards that failed for good and why.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import socket
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal, cast

from sqlalchemy import CursorResult, and_, func, or_, select, update
from sqlalchemy.orm import Session

from hazardlens.audit import record
from hazardlens.auth import SYSTEM, Principal, principal_of
from hazardlens.context import Context
from hazardlens.errors import HazardError
from hazardlens.orm import Job, JobShard, User

if TYPE_CHECKING:
    from hazardlens.detector import Detector
    from hazardlens.jobs import JobType

log = logging.getLogger(__name__)

#: What became of a unit a runner was asked to run: ``done`` (it ran, or was already finished),
#: ``busy`` (another live runner holds it: look again later), ``retry`` (it failed and will be
#: retried: run it again later), ``gone`` (nothing to do: finished, or its job ended).
Outcome = Literal["done", "busy", "retry", "gone"]

MAX_SHARD_ATTEMPTS = 3
_LOG_LINES = 200
_LOG_LINE_CHARS = 500
_LOG_CHARS = 100_000
_FLUSH_S = 1.0

#: progress(fraction 0..1, message)
Progress = Callable[[float, str], None]


def new_owner() -> str:
    """A lease holder's name: host and pid (an operator can find the process) and a token of its own
    (two claims by one process are still two owners)."""
    return f"{socket.gethostname()[:60]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def owner_pid(owner: str | None) -> int | None:
    """The process id inside an owner name (tests and operators: which process holds a unit)."""
    try:
        return int(str(owner).split(":")[-2])
    except (IndexError, ValueError):
        return None


def _now() -> datetime:
    return datetime.now(UTC)


# ---- what a runner hands the handlers ----------------------------------------------------------


@dataclass
class Services:
    """Long-lived things a handler may need that the core cannot build (a detector lives in the models
    part): the server hands in its model manager, a worker builds one on first use."""

    detector_factory: Callable[[Context], Detector] | None = None
    _detector: Detector | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def detector(self, ctx: Context) -> Detector:
        with self._lock:
            if self._detector is None:
                if self.detector_factory is None:
                    from hazardlens.errors import Invalid

                    raise Invalid("this job runner has no detector", code="invalid_job")
                self._detector = self.detector_factory(ctx)
            return self._detector


@dataclass
class ShardWork:
    """One shard as its handler sees it."""

    ctx: Context
    job_id: int
    kind: str
    params: dict[str, Any]  # the job's validated parameters (JSON)
    index: int
    items: Any  # what the plan put into this shard
    principal: Principal  # the job's submitter
    progress: Progress
    services: Services


@dataclass
class ShardResult:
    """A shard's result (JSON, kept on its row) and its effects: ``write`` runs in the transaction that
    marks the shard completed, so a shard run twice writes them once."""

    result: dict[str, Any]
    write: Callable[[Session], None] | None = None


@dataclass
class Plan:
    """A sharded job's plan: the items of each shard, and a note for the job's log."""

    shards: list[Any]
    note: str = ""


#: plan(ctx, job row, submitter) -> Plan
Planner = Callable[[Context, Job, Principal], Plan]
#: shard(work) -> ShardResult
ShardHandler = Callable[[ShardWork], ShardResult]
#: reduce(ctx, job params, results of the completed shards) -> the job's result
Reducer = Callable[[Context, dict[str, Any], list[dict[str, Any]]], dict[str, Any]]


# ---- leases -----------------------------------------------------------------------------------


def _stale(table: type[Job] | type[JobShard], lease_s: float) -> Any:
    limit = _now() - timedelta(seconds=lease_s)
    return and_(table.status == "running", or_(table.heartbeat_at.is_(None), table.heartbeat_at < limit))


def _claim(ctx: Context, table: type[Job] | type[JobShard], row_id: int, owner: str, **values: Any) -> bool:
    """Take a queued unit, or a running one whose runner stopped beating (one UPDATE: atomic across
    processes); ``values`` are what the kind of unit also resets when taken."""
    now = _now()
    with ctx.db.session() as session:
        res = cast(
            CursorResult[Any],
            session.execute(
                update(table)
                .where(table.id == row_id, or_(table.status == "queued", _stale(table, ctx.settings.job_lease_s)))
                .values(
                    status="running",
                    owner=owner,
                    heartbeat_at=now,
                    attempts=table.attempts + 1,
                    started_at=func.coalesce(table.started_at, now),
                    **values,
                )
            ),
        )
        return res.rowcount == 1


def claim_job(ctx: Context, job_id: int, owner: str) -> bool:
    """Take job ``job_id`` (see :func:`_claim`)."""
    return _claim(ctx, Job, job_id, owner)


def claim_shard(ctx: Context, shard_id: int, owner: str) -> bool:
    """Take shard ``shard_id``, clearing the error of its previous attempt (see :func:`_claim`)."""
    return _claim(ctx, JobShard, shard_id, owner, error=None)


class Heartbeat:
    """Writes the owner's heartbeat every ``lease/4`` seconds while a unit runs; ``lost`` turns true when
    the row no longer names this owner (another runner took it over: this one's result will be refused)."""

    def __init__(self, ctx: Context, table: type[Job] | type[JobShard], row_id: int, owner: str) -> None:
        self.ctx, self.table, self.row_id, self.owner = ctx, table, row_id, owner
        self.interval = max(0.5, ctx.settings.job_lease_s / 4)
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"hazardlens-heartbeat-{row_id}", daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                with self.ctx.db.session() as session:
                    t = self.table
                    res = cast(
                        CursorResult[Any],
                        session.execute(
                            update(t).where(t.id == self.row_id, t.owner == self.owner).values(heartbeat_at=_now())
                        ),
                    )
                    if res.rowcount != 1:
                        self.lost = True
                        return
            except Exception:  # a database hiccup: try again next beat (the lease is generous)
                log.warning("heartbeat of %s %s failed", self.table.__tablename__, self.row_id, exc_info=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


# ---- log capture ------------------------------------------------------------------------------


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


def _stamp(text: str) -> str:
    return f"{datetime.now():%H:%M:%S} {text}"[:_LOG_LINE_CHARS]


def append_log(session: Session, job_id: int, line: str) -> None:
    """One line onto a job's log, in SQL (several workers append to one job at once), up to 100 kB."""
    session.execute(
        update(Job)
        .where(Job.id == job_id, func.length(func.coalesce(Job.log, "")) < _LOG_CHARS)
        .values(log=func.coalesce(Job.log, "") + _stamp(line) + "\n")
    )


def principal_for(session: Session, job: Job) -> Principal:
    """The job's submitter as a principal (SYSTEM for a job without one)."""
    if job.created_by is None:
        return SYSTEM
    user = session.get(User, job.created_by)
    return SYSTEM if user is None else principal_of(user)


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, HazardError):
        return f"{exc.code}: {exc.message}"
    return f"{type(exc).__name__}: {exc}"


def _audit(ctx: Context, job_id: int, action: str, after: dict[str, Any]) -> None:
    with ctx.db.session() as session:
        record(session, SYSTEM, action, "job", job_id, after=after)


# ---- a whole job ------------------------------------------------------------------------------


def run_job(
    ctx: Context,
    job_id: int,
    types: Mapping[str, JobType],
    *,
    owner: str | None = None,
    services: Services | None = None,
    handlers: Mapping[str, Callable[..., dict[str, Any]]] | None = None,
    dispatch_shard: Callable[[int], None] | None = None,
    flush_s: float = _FLUSH_S,
) -> Outcome:
    """Claim job ``job_id`` and run it. A plain kind runs its handler here; a sharded kind plans its
    shards (once) and hands each unfinished one to ``dispatch_shard`` (a worker queue), or, without
    one, runs them here one after the other (the embedded runner)."""
    owner = owner or new_owner()
    services = services or Services()
    if not claim_job(ctx, job_id, owner):
        with ctx.db.read_session() as session:
            job = session.get(Job, job_id)
            status = None if job is None else job.status
        return "busy" if status == "running" else "gone"
    with ctx.db.session() as session:
        job = session.get(Job, job_id)
        assert job is not None
        principal = principal_for(session, job)
        session.expunge(job)
    job_type = types.get(job.kind)
    handler = (handlers or {}).get(job.kind)
    if job_type is not None and job_type.sharded and handler is None:
        return _run_sharded(ctx, job, job_type, principal, owner, services, dispatch_shard)
    return _run_plain(ctx, job, job_type, handler, principal, owner, flush_s)


def _run_plain(
    ctx: Context,
    job: Job,
    job_type: JobType | None,
    handler: Callable[..., dict[str, Any]] | None,
    principal: Principal,
    owner: str,
    flush_s: float,
) -> Outcome:
    job_id = job.id
    lines: collections.deque[str] = collections.deque(maxlen=_LOG_LINES)
    if job.log:
        lines.extend(job.log.splitlines()[-_LOG_LINES:])
    if (job.attempts or 0) > 1:
        lines.append(_stamp(f"attempt {job.attempts}: taken over by {owner}"))
    tail = _TailHandler(threading.get_ident(), lines)
    loggers = [logging.getLogger(n) for n in dict.fromkeys(("hazardlens", *(job_type.loggers if job_type else ())))]
    for lg in loggers:
        lg.addHandler(tail)
    state: dict[str, Any] = {"flushed": -1e9, "message": "starting"}

    def write(**values: Any) -> bool:
        with ctx.db.session() as s:
            res = cast(
                CursorResult[Any],
                s.execute(
                    update(Job).where(Job.id == job_id, Job.owner == owner).values(log="\n".join(lines), **values)
                ),
            )
            return res.rowcount == 1

    def progress(fraction: float, message: str) -> None:
        fraction = max(0.0, min(1.0, float(fraction)))
        if message and message != state["message"]:
            lines.append(_stamp(message))
        state["message"] = message or state["message"]
        now = time.monotonic()
        # Throttled: a busy training loop must not turn into a busy database writer.
        if now - state["flushed"] >= flush_s or fraction >= 1.0:
            state["flushed"] = now
            write(progress=fraction, message=str(state["message"])[:2000])

    try:
        with Heartbeat(ctx, Job, job_id, owner) as beat:
            if handler is None:
                if job_type is None:
                    from hazardlens.errors import Invalid

                    raise Invalid(f"no handler for job kind {job.kind!r}", code="invalid_job")
                handler = job_type.handler
            progress(0.0, f"started {job.kind}")
            result = handler(ctx, job, principal, progress)
    except BaseException as exc:  # noqa: BLE001 - every failure ends up on the row, never lost
        error = _error_text(exc)
        if not isinstance(exc, HazardError):
            lines.extend(traceback.format_exc().splitlines()[-20:])
        lines.append(_stamp(f"failed: {error}"))
        log.warning("job %s failed: %s", job_id, error)
        if write(status="failed", error=error, message=f"failed: {error}"[:2000], finished_at=_now(), owner=None):
            _audit(ctx, job_id, "job.fail", {"status": "failed", "error": error})
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            raise
        return "done"
    lines.append(_stamp("completed"))
    done = write(
        status="completed",
        progress=1.0,
        message=str(state["message"] or "completed")[:2000],
        result=result,
        finished_at=_now(),
        owner=None,
    )
    if done:
        _audit(ctx, job_id, "job.complete", {"status": "completed"})
    elif beat.lost:
        log.warning("job %s: another runner took it over; this run's result is dropped", job_id)
    return "done"


def _run_sharded(
    ctx: Context,
    job: Job,
    job_type: JobType,
    principal: Principal,
    owner: str,
    services: Services,
    dispatch_shard: Callable[[int], None] | None,
) -> Outcome:
    job_id = job.id
    try:
        if not job.shards:
            with Heartbeat(ctx, Job, job_id, owner):
                assert job_type.plan is not None
                plan = job_type.plan(ctx, job, principal)
            if not plan.shards:
                return _finish_empty(ctx, job_id, job_type, owner, plan)
            if not _store_plan(ctx, job_id, owner, plan):
                return "gone"  # another runner took the job over while this one planned
    except BaseException as exc:  # noqa: BLE001 - a plan that fails fails the job
        error = _error_text(exc)
        log.warning("job %s failed to plan: %s", job_id, error)
        with ctx.db.session() as s:
            res = cast(
                CursorResult[Any],
                s.execute(
                    update(Job)
                    .where(Job.id == job_id, Job.owner == owner)
                    .values(status="failed", error=error, message=f"failed: {error}"[:2000], finished_at=_now())
                ),
            )
        if res.rowcount == 1:
            _audit(ctx, job_id, "job.fail", {"status": "failed", "error": error})
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            raise
        return "done"
    with ctx.db.read_session() as s:
        pending = list(
            s.scalars(
                select(JobShard.id)
                .where(JobShard.job_id == job_id, JobShard.status.in_(("queued", "running")))
                .order_by(JobShard.idx)
            )
        )
    if dispatch_shard is not None:
        for shard_id in pending:
            dispatch_shard(shard_id)
        with ctx.db.session() as s:  # the job now belongs to its shards (a later claim only re-dispatches)
            s.execute(update(Job).where(Job.id == job_id, Job.owner == owner).values(owner=None, heartbeat_at=None))
    else:
        for shard_id in pending:
            while run_shard(ctx, shard_id, {job.kind: job_type}, owner=owner, services=services) == "retry":
                pass
    finish_if_done(ctx, job_id, {job.kind: job_type})
    return "done"


def _finish_empty(ctx: Context, job_id: int, job_type: JobType, owner: str, plan: Plan) -> Outcome:
    """Nothing matched: the job completes at once with the kind's summary of nothing."""
    summary = job_type.reduce(ctx, {}, []) if job_type.reduce is not None else {}
    with ctx.db.session() as session:
        res = cast(
            CursorResult[Any],
            session.execute(
                update(Job)
                .where(Job.id == job_id, Job.owner == owner)
                .values(
                    status="completed",
                    progress=1.0,
                    result={**summary, "shards": 0, "shards_failed": []},
                    message="nothing to do" + (f": {plan.note}" if plan.note else ""),
                    finished_at=_now(),
                    owner=None,
                )
            ),
        )
        if res.rowcount == 1:
            append_log(session, job_id, "nothing to do" + (f": {plan.note}" if plan.note else ""))
            record(session, SYSTEM, "job.complete", "job", job_id, after={"status": "completed"})
    return "done"


def _store_plan(ctx: Context, job_id: int, owner: str, plan: Plan) -> bool:
    """The shards of a plan, written once (still the owner): the job then belongs to its shards."""
    with ctx.db.session() as session:
        res = cast(
            CursorResult[Any],
            session.execute(
                update(Job)
                .where(Job.id == job_id, Job.owner == owner, Job.shards == 0)
                .values(
                    shards=len(plan.shards),
                    owner=None,
                    heartbeat_at=None,
                    message=f"{len(plan.shards)} shard(s) queued",
                )
            ),
        )
        if res.rowcount != 1:
            return False
        session.add_all(JobShard(job_id=job_id, idx=i, items=items) for i, items in enumerate(plan.shards))
        append_log(session, job_id, f"planned {len(plan.shards)} shard(s)" + (f": {plan.note}" if plan.note else ""))
    return True


# ---- one shard --------------------------------------------------------------------------------


def run_shard(
    ctx: Context,
    shard_id: int,
    types: Mapping[str, JobType],
    *,
    owner: str | None = None,
    services: Services | None = None,
    max_attempts: int = MAX_SHARD_ATTEMPTS,
    flush_s: float = _FLUSH_S,
) -> Outcome:
    """Claim shard ``shard_id`` and run it; see the module docstring. ``retry``: it failed and was put
    back (run it again, after a pause); the job's result is written when its last shard ends."""
    owner = owner or new_owner()
    services = services or Services()
    if not claim_shard(ctx, shard_id, owner):
        with ctx.db.read_session() as session:
            shard = session.get(JobShard, shard_id)
            status, job_id = (None, None) if shard is None else (shard.status, shard.job_id)
        if status == "running":
            return "busy"
        if job_id is not None:
            finish_if_done(ctx, job_id, types)  # in case the runner that ended it died before this step
        return "gone"
    with ctx.db.session() as session:
        shard = session.get(JobShard, shard_id)
        assert shard is not None
        job = session.get(Job, shard.job_id)
        assert job is not None
        principal = principal_for(session, job)
        session.expunge(shard)
        session.expunge(job)
    job_type = types.get(job.kind)
    if job.status != "running" or job_type is None or job_type.shard is None:
        _end_shard(
            ctx, shard, owner, error=f"job {job.id} is {job.status}" if job.status != "running" else "no handler"
        )
        return "gone"
    n = max(1, job.shards)
    state: dict[str, float] = {"flushed": -1e9}

    def progress(fraction: float, message: str) -> None:
        fraction = max(0.0, min(1.0, float(fraction)))
        now = time.monotonic()
        if now - state["flushed"] < flush_s and fraction < 1.0:
            return
        state["flushed"] = now
        with ctx.db.session() as s:
            s.execute(
                update(JobShard).where(JobShard.id == shard_id, JobShard.owner == owner).values(progress=fraction)
            )
            _job_progress(s, job.id, n, f"shard {shard.idx + 1}/{n}: {message}" if message else None)

    work = ShardWork(
        ctx, job.id, job.kind, dict(job.params or {}), shard.idx, shard.items, principal, progress, services
    )
    try:
        with Heartbeat(ctx, JobShard, shard_id, owner):
            outcome = job_type.shard(work)
    except BaseException as exc:  # noqa: BLE001 - a failed shard is retried, then recorded
        error = _error_text(exc)
        log.warning("job %s shard %s (attempt %s) failed: %s", job.id, shard.idx, shard.attempts + 1, error)
        retry = shard.attempts + 1 < max_attempts and not isinstance(exc, KeyboardInterrupt | SystemExit)
        _end_shard(ctx, shard, owner, error=error, retry=retry)
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            raise
        if retry:
            return "retry"
        finish_if_done(ctx, job.id, types)
        return "done"
    try:
        committed = _complete_shard(ctx, shard, owner, outcome, n)
    except Exception as exc:  # its effects could not be written (a constraint, the database): retry
        error = _error_text(exc)
        retry = shard.attempts + 1 < max_attempts
        _end_shard(ctx, shard, owner, error=f"writing: {error}", retry=retry)
        if retry:
            return "retry"
        committed = False
    if not committed:
        log.info("job %s shard %s: another runner finished it first; this run's result is dropped", job.id, shard.idx)
    finish_if_done(ctx, job.id, types)
    return "done"


def _job_progress(session: Session, job_id: int, shards: int, message: str | None) -> None:
    """The job's progress is the mean of its shards' (so two workers on two shards add up)."""
    total = select(func.coalesce(func.sum(JobShard.progress), 0.0)).where(JobShard.job_id == job_id).scalar_subquery()
    values: dict[str, Any] = {"progress": total / shards}
    if message:
        values["message"] = message[:2000]
    session.execute(update(Job).where(Job.id == job_id, Job.status == "running").values(**values))


def _complete_shard(ctx: Context, shard: JobShard, owner: str, outcome: ShardResult, shards: int) -> bool:
    with ctx.db.session() as session:
        res = cast(
            CursorResult[Any],
            session.execute(
                update(JobShard)
                .where(JobShard.id == shard.id, JobShard.owner == owner, JobShard.status == "running")
                .values(status="completed", progress=1.0, result=outcome.result, finished_at=_now(), owner=None)
            ),
        )
        if res.rowcount != 1:
            session.rollback()
            return False
        if outcome.write is not None:
            outcome.write(session)  # may complete the result's counts: written again below
            session.execute(update(JobShard).where(JobShard.id == shard.id).values(result=outcome.result))
        _job_progress(session, shard.job_id, shards, f"shard {shard.idx + 1}/{shards} done")
        summary = ", ".join(f"{k} {v}" for k, v in outcome.result.items() if isinstance(v, int | float))
        append_log(session, shard.job_id, f"shard {shard.idx + 1}/{shards} done by {owner}: {summary}")
    return True


def _end_shard(ctx: Context, shard: JobShard, owner: str, *, error: str, retry: bool = False) -> None:
    with ctx.db.session() as session:
        res = cast(
            CursorResult[Any],
            session.execute(
                update(JobShard)
                .where(JobShard.id == shard.id, JobShard.owner == owner)
                .values(
                    status="queued" if retry else "failed",
                    error=error[:4000],
                    owner=None,
                    heartbeat_at=None,
                    progress=0.0,
                    finished_at=None if retry else _now(),
                )
            ),
        )
        if res.rowcount == 1:
            what = "will be retried" if retry else f"failed for good after {shard.attempts + 1} attempt(s)"
            append_log(session, shard.job_id, f"shard {shard.idx + 1} {what}: {error}")


def finish_if_done(ctx: Context, job_id: int, types: Mapping[str, JobType]) -> bool:
    """When every shard of the job has ended, write the job's result (once: a conditional UPDATE)."""
    with ctx.db.read_session() as session:
        job = session.get(Job, job_id)
        if job is None or job.status != "running" or not job.shards:
            return False
        open_ = session.scalar(
            select(func.count())
            .select_from(JobShard)
            .where(JobShard.job_id == job_id, JobShard.status.in_(("queued", "running")))
        )
        if open_:
            return False
        shards: Sequence[JobShard] = list(session.scalars(select(JobShard).where(JobShard.job_id == job_id)))
        params, kind = dict(job.params or {}), job.kind
    results = [s.result or {} for s in sorted(shards, key=lambda s: s.idx) if s.status == "completed"]
    failed = [
        {"shard": s.idx, "attempts": s.attempts, "error": s.error}
        for s in sorted(shards, key=lambda s: s.idx)
        if s.status == "failed"
    ]
    job_type = types.get(kind)
    try:
        summary = job_type.reduce(ctx, params, results) if job_type is not None and job_type.reduce else {}
    except Exception as exc:  # noqa: BLE001 - the result must be written whatever the reducer does
        summary = {"reduce_error": _error_text(exc)}
    summary = {**summary, "shards": len(shards), "shards_failed": failed}
    status = "failed" if failed else "completed"
    error = f"{len(failed)} of {len(shards)} shard(s) failed: {failed[0]['error']}" if failed else None
    with ctx.db.session() as session:
        res = cast(
            CursorResult[Any],
            session.execute(
                update(Job)
                .where(Job.id == job_id, Job.status == "running")
                .values(
                    status=status,
                    result=summary,
                    error=error,
                    progress=1.0 if not failed else Job.progress,
                    message="completed" if not failed else f"failed: {error}"[:2000],
                    finished_at=_now(),
                    owner=None,
                )
            ),
        )
        if res.rowcount != 1:
            return False
        append_log(session, job_id, "completed" if not failed else f"failed: {error}")
        record(session, SYSTEM, "job.complete" if not failed else "job.fail", "job", job_id, after={"status": status})
    return True


__all__ = [
    "MAX_SHARD_ATTEMPTS",
    "Heartbeat",
    "Outcome",
    "Plan",
    "Planner",
    "Progress",
    "Reducer",
    "Services",
    "ShardHandler",
    "ShardResult",
    "ShardWork",
    "append_log",
    "claim_job",
    "claim_shard",
    "finish_if_done",
    "new_owner",
    "owner_pid",
    "principal_for",
    "run_job",
    "run_shard",
]
