"""A cluster on loopback (issue 16, item 3): the machine's real Redis (a database of its own, flushed
before and after), two ``hazardlens worker`` processes and two ``hazardlens serve`` processes on one
catalogue (PostgreSQL, a schema of its own; SQLite when PostgreSQL is not there) and one home.

A pre-labelling job of a few hundred samples is submitted through one API and followed through the
other; one worker is killed with SIGKILL while it runs a shard. The job still completes, and every
sample has exactly one suggestion from it: the killed worker's unacknowledged message went back to
the queue, the other worker took the shard over once its lease ran out, and nothing was written twice.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, text

from hazardlens.context import Context
from hazardlens.jobrun import owner_pid
from hazardlens.orm import JobShard, Suggestion
from hazardlens.settings import Settings
from tests.fixtures.core import PG_AVAILABLE, auth, redis_or_skip
from tests.fixtures.serving import photo, register

# Slow: a few hundred photos ingested and five processes started. On the 2-core development machine,
# busy with a training run, it took 8 minutes (5.7 of them ingesting the photos and building the tiny
# model); the timeout leaves room for a machine busier still.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]

REDIS_URL = os.environ.get("HAZARDLENS_TEST_REDIS", "redis://127.0.0.1:6379/13")  # db 13: this test's own
SAMPLES = 200
SHARD = 20
HAZARDLENS = str(Path(sys.executable).with_name("hazardlens"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Cluster:
    """The processes of the cluster; each started in its own process group and stopped at the end."""

    def __init__(self, home: Path, env: dict[str, str]) -> None:
        self.home, self.env = home, env
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        log = open(self.home.parent / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            [HAZARDLENS, *args], env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.procs[name] = proc
        return proc

    def logs(self, stacks: bool = False) -> str:
        """Each process's output after its start-up banner; with ``stacks``, the live workers first
        print every thread's stack (Celery's worker dumps them on SIGUSR1)."""
        if stacks:
            for name, proc in self.procs.items():
                if name.startswith("worker") and proc.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(proc.pid, signal.SIGUSR1)
            time.sleep(2)
        out = []
        for name in self.procs:
            path = self.home.parent / f"{name}.log"
            text = path.read_text(errors="replace") if path.exists() else ""
            body = text.split(" ready.", 1)[-1]  # what it did once ready (not Celery's banner)
            out.append(f"--- {name} (last 8000 chars of its log)\n{body[-8000:]}")
        return "\n".join(out)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


@pytest.fixture
def catalogue_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if PG_AVAILABLE or os.environ.get("CI"):
        return str(request.getfixturevalue("pg_url"))
    return f"sqlite:///{tmp_path / 'home' / 'catalogue.sqlite3'}"


@pytest.fixture
def cluster_ctx(tmp_path: Path, catalogue_url: str, model_variants: list[Path]) -> Iterator[Context]:
    """The catalogue and home every process of the cluster shares: the tiny model in production (its
    ONNX export made here, in the cache every process reads) and a few hundred photos of 420000."""
    from hazardlens.auth import Principal, ensure_user
    from hazardlens.datasets.library import IngestMeta, ingest
    from hazardlens.models.engines import export_onnx
    from hazardlens.models.registry import local_weights, production_model

    ctx = Context(Settings(home=tmp_path / "home", database_url=catalogue_url))
    ctx.init()
    register(ctx, model_variants[0], "1")
    with ctx.db.read_session() as s:
        mv = production_model(s)
        assert mv is not None
        onnx = ctx.settings.cache_dir / "onnx" / f"{mv.weights_sha256[:16]}-{int(mv.imgsz)}.onnx"
        export_onnx(local_weights(ctx, mv), onnx, int(mv.imgsz), source_sha256=mv.weights_sha256)
    with ctx.db.session() as s:
        user = ensure_user(s, "420000", "cluster-uploader", "curator")
        who = Principal(user.id, user.name, "420000", "curator")
        for seed in range(SAMPLES):
            ingest(ctx, s, who, photo(seed=seed), IngestMeta(sector="general"))
    yield ctx
    ctx.close()


def _wait(predicate: Any, timeout: float, what: str, cluster: Cluster, interval: float = 0.05, state: Any = str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{state()}\n{cluster.logs(stacks=True)}")


def test_a_worker_killed_mid_job_loses_and_duplicates_nothing(cluster_ctx: Context) -> None:
    ctx = cluster_ctx
    broker = redis_or_skip(REDIS_URL)
    broker.flushdb()  # only this test's database
    from hazardlens.auth import create_key

    with ctx.db.session() as s:
        key, _ = create_key(s, "420000", "curator", "cluster-curator")
    env = {
        **os.environ,
        "HAZARDLENS_HOME": str(ctx.settings.home),
        "HAZARDLENS_DATABASE_URL": ctx.settings.database,
        "HAZARDLENS_BROKER_URL": REDIS_URL,
        "HAZARDLENS_BROKER_VISIBILITY_S": "6",  # a dead worker's message is back on the queue after 6 s
        "HAZARDLENS_JOB_LEASE_S": "4",  # and its shard may be taken over after 4 s without a heartbeat
        "HAZARDLENS_MODEL_POLL_S": "30",
        "YOLO_OFFLINE": "1",
    }
    cluster = Cluster(ctx.settings.home, env)
    ports = [_free_port(), _free_port()]
    try:
        workers = [cluster.start(f"worker{i}", "worker", "--queues", "cpu", "--name", f"w{i}@test") for i in (1, 2)]
        for i, port in enumerate(ports, 1):
            cluster.start(f"api{i}", "serve", "--port", str(port))
        urls = [f"http://127.0.0.1:{p}" for p in ports]

        def up() -> bool:
            with contextlib.suppress(httpx.HTTPError):
                return all(httpx.get(f"{u}/healthz", timeout=2).status_code == 200 for u in urls)
            return False

        _wait(up, 300, "both API processes", cluster, interval=0.5)
        r = httpx.post(
            f"{urls[0]}/v1/prelabel",
            json={"filters": {"sector": "general"}, "conf": 0.01, "shard_size": SHARD},
            headers=auth(key),
            timeout=30,
        )
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]

        # Kill worker 1 (SIGKILL, no goodbye) while it holds a shard.
        victim = workers[0].pid

        def victim_shard() -> int | None:
            with ctx.db.read_session() as s:
                rows = s.execute(
                    select(JobShard.id, JobShard.owner).where(JobShard.job_id == job_id, JobShard.status == "running")
                ).all()
            return next((int(sid) for sid, owner in rows if owner_pid(owner) == victim), None)

        shard_id = _wait(victim_shard, 300, "worker 1 to run a shard", cluster)
        os.kill(victim, signal.SIGKILL)
        workers[0].wait(timeout=10)
        with ctx.db.read_session() as s:
            killed_mid_shard = s.get(JobShard, shard_id).status == "running"  # not finished in the meantime

        def finished() -> dict[str, Any] | None:
            body = httpx.get(f"{urls[1]}/v1/jobs/{job_id}", headers=auth(key), timeout=10).json()
            return body if body["status"] in ("completed", "failed") else None

        # (generous: on an idle machine the rest takes well under a minute)
        def state() -> str:
            """The job's units and the catalogue's sessions, for a message that says where it stuck."""
            with ctx.db.read_session() as s:
                units = [
                    (u.idx, u.status, u.owner, u.attempts, str(u.heartbeat_at))
                    for u in s.scalars(select(JobShard).where(JobShard.job_id == job_id).order_by(JobShard.idx))
                ]
                sessions = []
                if ctx.db.engine.dialect.name == "postgresql":
                    sessions = s.execute(
                        text(
                            "SELECT pid, state, wait_event_type, wait_event, left(query, 160) FROM pg_stat_activity"
                            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                        )
                    ).all()
            return f"shards (idx, status, owner, attempts, heartbeat): {units}\ncatalogue sessions: {sessions}"

        job = _wait(finished, 300, "the job to finish on the surviving worker", cluster, interval=0.5, state=state)
        assert job["status"] == "completed", (job, cluster.logs())
        assert job["shards"] == SAMPLES // SHARD and job["progress"] == 1.0
        result = job["result"]
        assert result["samples"] == SAMPLES and result["suggested"] == SAMPLES and result["failed"] == 0, result
        assert result["shards_failed"] == []

        with ctx.db.read_session() as s:
            per_sample = dict(
                s.execute(
                    select(Suggestion.sample_id, func.count())
                    .where(Suggestion.job_id == job_id)
                    .group_by(Suggestion.sample_id)
                ).all()
            )
            shard = s.get(JobShard, shard_id)
        assert len(per_sample) == SAMPLES and set(per_sample.values()) == {1}
        # The survivor took the dead worker's shard over (the victim was killed while it held it).
        assert killed_mid_shard and shard.status == "completed" and shard.attempts >= 2, cluster.logs()
        [done_by] = re.findall(rf"shard {shard.idx + 1}/{job['shards']} done by (\S+):", job["log"])
        assert owner_pid(done_by) not in (None, victim)
        # The other API process reports the same job the same way.
        listed = httpx.get(f"{urls[0]}/v1/jobs?kind=prelabel", headers=auth(key), timeout=10).json()["items"]
        assert [(j["id"], j["status"]) for j in listed] == [(job_id, "completed")]
    finally:
        cluster.stop()
        broker.flushdb()


def test_a_lock_held_by_a_stuck_client_fails_the_waiting_statement(catalogue_url: str) -> None:
    """A row lock held by a client that is stuck (alive, its transaction open) fails the next
    writer after the catalogue's lock timeout instead of blocking it for ever: the waiting job unit
    errors and is sent again, its worker and queue go on. Replayed with the real PostgreSQL."""
    if not catalogue_url.startswith("postgresql"):
        pytest.skip("the lock timeout is PostgreSQL's (SQLite waits its busy timeout, 30 s, then fails)")
    from sqlalchemy.exc import OperationalError

    from hazardlens.db import make_engine

    engine = make_engine(catalogue_url)
    try:
        with engine.begin() as c:
            assert c.execute(text("SHOW lock_timeout")).scalar() == "30s"  # every catalogue connection
            c.execute(text("CREATE TABLE lock_probe (id integer PRIMARY KEY, v text)"))
            c.execute(text("INSERT INTO lock_probe VALUES (1, 'free')"))
        holder, waiter = engine.connect(), engine.connect()
        try:
            holder.execute(text("UPDATE lock_probe SET v = 'held'"))  # the stuck client's open transaction
            waiter.execute(text("SET lock_timeout = '1s'"))  # the same path as the 30 s, quicker here
            started = time.monotonic()
            with pytest.raises(OperationalError, match="lock timeout"):
                waiter.execute(text("UPDATE lock_probe SET v = 'waiting'"))
            assert time.monotonic() - started < 20
        finally:
            waiter.close()
            holder.close()
    finally:
        engine.dispose()
