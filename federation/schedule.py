"""The scheduled pull of each peer (``hazardlens peers set NAME --pull-every 15m``): a tick submits a
``federation_pull`` job for every peer whose pull is due, so the pull runs wherever jobs run (the
server's embedded runner, or a Celery worker when a broker is configured) and its summary is the
job's result.

Every serving process ticks (:class:`Scheduler`); a due pull is claimed by one conditional UPDATE of
the peer's ``next_pull_at`` that also requires the peer's last scheduled job to be neither queued nor
running. So however many processes tick, each due pull is submitted once, and never while the
previous one for that peer is still waiting or working. Every ``full_pull_every_s`` the pull starts
from cursor 0, which closes the cursor gap (docs/federation.md, "Known gaps").
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, exists, select, update

from hazardlens.context import Context
from hazardlens.contracts.jobs import FederationPullJobParams
from hazardlens.orm import Job, Peer, utcnow

log = logging.getLogger("hazardlens.federation")

#: How often a serving process looks for due pulls (a schedule is at least a minute apart).
TICK_S = 30.0
ACTIVE = ("queued", "running")

#: submit(params) -> the submitted job's id
Submit = Callable[[FederationPullJobParams], int]


def runner_submit(ctx: Context, runner_of: Callable[[], Any] | None = None) -> Submit:
    """Submit through a :class:`hazardlens.jobs.JobRunner` as the system (the job is visible to the
    system organisation): ``runner_of()``'s (the server's own, looked up at each submission so its
    thread wakes at once) or, without one, a submit-only runner."""
    import hazardlens.federation.jobs  # noqa: F401 - registers federation_pull
    from hazardlens.auth import SYSTEM
    from hazardlens.jobs import JobRunner

    def submit(params: FederationPullJobParams) -> int:
        runner = (runner_of() if runner_of is not None else None) or JobRunner(ctx)
        return int(runner.submit("federation_pull", params, SYSTEM).id)

    return submit


@dataclass(frozen=True)
class Due:
    """A peer whose scheduled pull is due, as a tick read it."""

    peer_id: int
    name: str
    every_s: int
    full_every_s: int | None
    what: list[str]
    next_full_at: datetime | None

    def full(self, now: datetime) -> bool:
        return bool(self.full_every_s) and (self.next_full_at is None or self.next_full_at <= now)


def due(ctx: Context, now: datetime) -> list[Due]:
    """The peers whose scheduled pull is due at ``now`` (a read: claiming one is :func:`claim`)."""
    with ctx.db.read_session() as s:
        rows = s.execute(
            select(
                Peer.id, Peer.name, Peer.pull_every_s, Peer.full_pull_every_s, Peer.pull_what, Peer.next_full_pull_at
            )
            .where(Peer.pull_every_s.is_not(None), Peer.next_pull_at.is_not(None), Peer.next_pull_at <= now)
            .order_by(Peer.id)
        ).all()
    return [Due(r[0], r[1], int(r[2]), r[3], list(r[4] or ["samples", "models"]), r[5]) for r in rows]


def claim(ctx: Context, item: Due, now: datetime) -> bool:
    """Move the peer's next pull one interval on, if it is still due and its last scheduled job is
    neither queued nor running: one conditional UPDATE, so of all the processes that read it due,
    exactly one claims it (SQLite serialises writers; PostgreSQL re-checks the condition on the row
    another transaction just updated)."""
    values: dict[str, Any] = {"next_pull_at": now + timedelta(seconds=item.every_s)}
    if item.full(now) and item.full_every_s:
        values["next_full_pull_at"] = now + timedelta(seconds=item.full_every_s)
    active = exists().where(Job.id == Peer.pull_job_id, Job.status.in_(ACTIVE))
    with ctx.db.session() as s:
        res = cast(
            CursorResult[Any],
            s.execute(
                update(Peer)
                .where(Peer.id == item.peer_id, Peer.pull_every_s.is_not(None), Peer.next_pull_at <= now, ~active)
                .values(**values)
                .execution_options(synchronize_session=False)
            ),
        )
        return res.rowcount == 1


def tick(ctx: Context, submit: Submit, *, now: datetime | None = None) -> list[int]:
    """Submit the pulls that are due and this process claimed; returns the ids of their jobs."""
    now = now or utcnow()
    submitted: list[int] = []
    for item in due(ctx, now):
        if not claim(ctx, item, now):
            continue  # another process claimed it, the schedule was turned off, or the last pull is active
        params = FederationPullJobParams(peer=item.name, what=item.what, full=item.full(now), scheduled=True)
        try:
            job_id = submit(params)
        except Exception:  # a broker down: the job row says so; the next interval tries again
            log.exception("scheduled pull from %s could not be submitted", item.name)
            continue
        with ctx.db.session() as s:
            s.execute(update(Peer).where(Peer.id == item.peer_id).values(pull_job_id=job_id))
        log.info("scheduled pull from %s submitted as job %s%s", item.name, job_id, " (full)" if params.full else "")
        submitted.append(job_id)
    return submitted


class Scheduler:
    """A daemon thread that ticks every ``tick_s`` seconds until stopped (one per serving process)."""

    def __init__(self, ctx: Context, submit: Submit, tick_s: float = TICK_S) -> None:
        self.ctx, self.submit, self.tick_s = ctx, submit, tick_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="hazardlens-federation-schedule", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.tick_s):
            try:
                tick(self.ctx, self.submit)
            except Exception:  # the loop must survive a database hiccup
                log.exception("federation schedule tick failed")

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
