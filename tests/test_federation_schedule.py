"""Issue 17, what docs/federation.md listed as not yet done: the scheduled pull per peer, and pulling a
peer's approved taxonomy additions for national adoption.

Two real instances on loopback: province A (SQLite + filesystem, served over HTTP) and the ministry M
(PostgreSQL + filesystem, with a second context on the same catalogue playing a second API process).
The schedule submits a normal ``federation_pull`` job: two processes ticking at once submit it once,
a tick while it is queued or running submits nothing, the job's summary is its result in
``GET /v1/jobs``, the service's scheduler and runner threads run it by themselves, a periodic full
re-pull (cursor 0) brings what the cursor passed over and rewrites nothing else, and a disabled
schedule submits nothing. Taxonomy: A's approved addition crosses with its clause, approver and
origin, its rejected and pending ones do not, it is unusable at M until M's system admin adopts it,
and a peer without the ``taxonomy`` grant is refused; a peer's answer is bounded; the CLI schedules,
lists and adopts.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, update

from hazardlens import legal_review
from hazardlens.audit import history
from hazardlens.auth import SYSTEM, Principal, create_key, ensure_user
from hazardlens.context import Context
from hazardlens.datasets.ingest import IngestMeta, ingest
from hazardlens.errors import HazardError
from hazardlens.federation import additions
from hazardlens.federation.jobs import _handler as pull_handler
from hazardlens.federation.peers import add_peer, set_schedule
from hazardlens.federation.schedule import Scheduler, claim, due, runner_submit, tick
from hazardlens.federation.signing import ensure_keypair
from hazardlens.jobs import JobRunner
from hazardlens.labeling import annotations as ann
from hazardlens.orm import AuditEvent, FederatedSample, Job, Peer, SyncState, utcnow
from hazardlens.settings import Settings
from tests.fixtures.cli import run
from tests.fixtures.core import auth, make_image, redis_or_skip
from tests.fixtures.serving import LiveServer, wait_for

HB = "420000"
BOX = {"class_key": "accumulated_dust", "x1": 4, "y1": 4, "x2": 40, "y2": 30}
OIL_LEAK: dict[str, Any] = {
    "key": "oil_leak",
    "name_zh": "设备漏油",
    "name_en": "oil leak",
    "sector": "general",
    "inspection_items": [],
    "severity": "medium",
    "finding_zh": "设备漏油，未及时处置",
    "is_hazard": True,
}
CLAUSE = ("设备设施应保持完好，不得有跑、冒、滴、漏。", "湖北省安全生产条例 第二十条")


def _instance(settings: Settings) -> Context:
    ctx = Context(settings)
    ctx.init()
    ensure_keypair(settings)
    return ctx


def _register(ctx: Context, name: str, url: str, other: Context, org: str, allow: list[str]) -> None:
    public = (other.settings.home / "federation" / "instance_ed25519.pub").read_text()
    with ctx.db.session() as s:
        add_peer(s, SYSTEM, name, url, public, org, allow)


@pytest.fixture
def pair(tmp_path: Path, pg_url: str) -> Iterator[dict[str, Any]]:
    from hazardlens.serving.app import create_app

    a = _instance(Settings(home=tmp_path / "hubei"))
    m_settings = Settings(home=tmp_path / "ministry", database_url=pg_url)
    m = _instance(m_settings)
    m2 = Context(m_settings)  # a second API process of the ministry: same catalogue, its own engine
    with (
        LiveServer(create_app(a, start_background=False)) as a_srv,
        LiveServer(create_app(m, start_background=False)) as m_srv,
    ):
        _register(m, "hubei", a_srv.url, a, HB, ["models", "feedback"])  # what A may do at the ministry
        _register(a, "ministry", m_srv.url, m, "000000", ["samples", "taxonomy"])  # what M may do at A
        yield {"a": a, "m": m, "m2": m2, "a_url": a_srv.url, "m_url": m_srv.url}
    m2.close()
    a.close()
    m.close()


def _share(a: Context, n: int, seed: int) -> list[int]:
    with a.db.session() as s:
        admin = ensure_user(s, HB, "admin-hb", "admin")
        who = Principal(user_id=admin.id, name=admin.name, org_code=HB, role="admin")
    ids = []
    for i in range(n):
        with a.db.session() as s:
            sid = ingest(a, s, who, make_image(64, 48, seed=seed + i), IngestMeta(sector="dust", scope="shared")).sample
            ann.save_revision(a, s, who, sid.id, [BOX], status="approved")
            ids.append(sid.id)
    return ids


def _job(ctx: Context, job_id: int) -> Job:
    with ctx.db.read_session() as s:
        job = s.get(Job, job_id)
        assert job is not None
        return job


def _peer(ctx: Context) -> Peer:
    with ctx.db.read_session() as s:
        peer = s.scalar(select(Peer).where(Peer.name == "hubei"))
        assert peer is not None
        return peer


def test_scheduled_pull_is_a_job_submitted_once(pair: dict[str, Any]) -> None:
    a, m, m2 = pair["a"], pair["m"], pair["m2"]
    first = _share(a, 3, seed=7000)
    with m.db.session() as s:
        set_schedule(s, SYSTEM, "hubei", 900, 86400, ["samples"])
    t0 = utcnow()

    # -- two API processes read the pull due at once: exactly one claims it ---------------------------------
    seen = [due(c, t0) for c in (m, m2)]
    assert [[d.name for d in x] for x in seen] == [["hubei"], ["hubei"]]
    assert [claim(m2, seen[1][0], t0), claim(m, seen[0][0], t0)] == [True, False]
    with m.db.session() as s:  # undo that claim: due again
        s.execute(update(Peer).values(next_pull_at=t0))

    # -- two API processes tick at the same moment: one job --------------------------------------------
    barrier, got = threading.Barrier(2), []

    def ticker(ctx: Context) -> None:
        submit = runner_submit(ctx)
        barrier.wait()
        got.extend(tick(ctx, submit, now=t0))

    threads = [threading.Thread(target=ticker, args=(c,)) for c in (m, m2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(got) == 1, got
    job = _job(m, got[0])
    assert job.kind == "federation_pull" and job.status == "queued" and job.created_by is None
    assert job.params == {"peer": "hubei", "what": ["samples"], "full": False, "page_size": 100, "scheduled": True}
    assert _peer(m).pull_job_id == job.id

    # -- due again, but the last pull is queued, then running: nothing more is submitted -----------------
    later = t0 + timedelta(seconds=1000)
    assert tick(m, runner_submit(m), now=later) == [] and tick(m2, runner_submit(m2), now=later) == []
    started, release = threading.Event(), threading.Event()

    def held(*args: Any) -> dict[str, Any]:
        started.set()
        assert release.wait(60)
        return pull_handler(*args)  # the real pull, over HTTP from A

    runner = JobRunner(m, handlers={"federation_pull": held})
    worker = threading.Thread(target=runner.run_next)
    worker.start()
    try:
        assert started.wait(60)
        assert _job(m, job.id).status == "running"
        assert tick(m2, runner_submit(m2), now=later + timedelta(seconds=1000)) == []
    finally:
        release.set()
        worker.join(120)
    done = _job(m, job.id)
    assert done.status == "completed", (done.error, done.log)
    assert done.result is not None and done.result["samples"]["added"] == 3 and done.result["scheduled"] is True

    # -- visible in GET /v1/jobs to the system organisation, with the pull's summary ---------------------
    with m.db.session() as s:
        admin_key, _ = create_key(s, "000000", "admin", "ministry-admin")
        province_key, _ = create_key(s, HB, "admin", "hubei-admin-at-ministry")
    with httpx.Client(base_url=pair["m_url"], trust_env=False) as client:
        items = client.get("/v1/jobs?kind=federation_pull", headers=auth(admin_key)).json()["items"]
        assert [(j["id"], j["status"], j["result"]["samples"]["added"]) for j in items] == [(job.id, "completed", 3)]
        assert client.get("/v1/jobs?kind=federation_pull", headers=auth(province_key)).json()["items"] == []
        # a system admin may submit one by hand; nobody else may
        body = {"kind": "federation_pull", "params": {"peer": "hubei", "what": ["samples"]}}
        r = client.post("/v1/jobs", json=body, headers=auth(province_key))
        assert r.status_code == 403 and r.json()["error"]["code"] == "system_only"
        r = client.post("/v1/jobs", json={**body, "params": {"peer": "nobody"}}, headers=auth(admin_key))
        assert r.status_code == 404 and r.json()["error"]["code"] == "peer_not_found"

    # -- the service's own threads: the scheduler submits, the runner runs; a pull with no change --------
    with m.db.session() as s:
        set_schedule(s, SYSTEM, "hubei", 900, 86400, ["samples"])  # due at once again
    service = JobRunner(m)
    assert service.start()
    scheduler = Scheduler(m, runner_submit(m, lambda: service), tick_s=0.2)
    scheduler.start()
    try:
        assert wait_for(lambda: (_peer(m).pull_job_id or 0) > job.id, 60)
        second = _peer(m).pull_job_id
        assert second is not None
        assert wait_for(lambda: _job(m, second).status in ("completed", "failed"), 120)
    finally:
        scheduler.stop()
        service.stop()
    result = _job(m, second).result
    assert result is not None and result["samples"].get("added", 0) == 0, result
    assert result["samples"].get("blob_bytes", 0) == 0 and result["full"] is False

    # -- the cursor gap: a change the cursor passed over comes with the periodic full re-pull -------------
    late = _share(a, 1, seed=7100)[0]
    with m.db.session() as s:
        s.execute(update(SyncState).values(cursor=10**9))  # as if a later-numbered transaction was seen first
        audit_before = s.scalar(select(func.max(AuditEvent.id)))
    runner = JobRunner(m)
    full_at = utcnow() + timedelta(seconds=86400 + 60)
    ids = tick(m, runner_submit(m), now=full_at)
    assert len(ids) == 1 and _job(m, ids[0]).params["full"] is True
    runner.run(ids[0])
    done = _job(m, ids[0])
    assert done.status == "completed", done.error
    samples = done.result["samples"]  # type: ignore[index]
    assert samples["added"] == 1 and samples["unchanged"] == 3 and samples["blobs"] == 1, samples
    with m.db.read_session() as s:
        origins = set(s.scalars(select(FederatedSample.origin_sample_id)))
        assert origins == {*first, late}
        # the three unchanged samples wrote nothing: only the new sample's events and the job's own
        new_events = s.scalars(select(AuditEvent.action).where(AuditEvent.id > audit_before)).all()
        assert "federation.added" in new_events and "federation.updated" not in new_events, new_events
        peer = s.scalar(select(Peer).where(Peer.name == "hubei"))
        assert peer is not None and peer.next_full_pull_at is not None
    # the next one is incremental again (its full re-pull is a day away)
    ids = tick(m, runner_submit(m), now=full_at + timedelta(seconds=1000))
    assert len(ids) == 1 and _job(m, ids[0]).params["full"] is False
    runner.run(ids[0])

    # -- a disabled schedule submits nothing -------------------------------------------------------------
    with m.db.session() as s:
        set_schedule(s, SYSTEM, "hubei", None)
        events = history(s, entity="peer", entity_id=_peer(m).id)
        assert [e.action for e in events].count("peer.schedule") == 3
    assert _peer(m).next_pull_at is None
    assert tick(m, runner_submit(m), now=utcnow() + timedelta(days=365)) == []


def test_a_failed_part_fails_the_job_with_the_peer_refusal(pair: dict[str, Any]) -> None:
    m = pair["m"]
    with m.db.session() as s:
        set_schedule(s, SYSTEM, "hubei", 60, None, ["samples", "models"])  # A never granted models
    (job_id,) = tick(m, runner_submit(m))
    done = JobRunner(m).run(job_id)
    assert done.status == "failed" and done.error is not None
    assert done.error.startswith("peer_refused: models:") and "peer_not_allowed" in done.error, done.error
    assert "pulled samples from hubei" in (done.log or "")


def _approved(a: Context, key: str, decision: str | None) -> None:
    with a.db.session() as s:
        admin = ensure_user(s, HB, "admin-hb", "admin")
        legal = ensure_user(s, HB, "legal-hb", "legal")
        proposer = Principal(user_id=admin.id, name=admin.name, org_code=HB, role="admin")
        reviewer = Principal(user_id=legal.id, name=legal.name, org_code=HB, role="legal")
    with a.db.session() as s:
        row = legal_review.propose(a, s, proposer, "class", {**OIL_LEAK, "key": key}, *CLAUSE)
        if decision is not None:
            reason = "条款为强制性规定" if decision == "approve" else "引用条款不是强制性条款"
            legal_review.review(a, s, reviewer, row.id, decision, reason)


def test_taxonomy_additions_cross_for_adoption(pair: dict[str, Any]) -> None:
    a, m = pair["a"], pair["m"]
    _approved(a, "oil_leak", "approve")
    _approved(a, "steam_leak", "reject")
    _approved(a, "gas_smell", None)  # pending

    # a peer without the taxonomy grant: A asks the ministry, which granted it only models and feedback
    with pytest.raises(HazardError) as err:
        additions.pull_taxonomy(a, "ministry")
    assert err.value.code == "peer_refused" and "peer_not_allowed" in err.value.message

    report = additions.pull_taxonomy(m, "hubei")
    assert report["received"] == 1 and report["added"] == 1, report
    with m.db.session() as s:
        admin_key, _ = create_key(s, "000000", "admin", "ministry-admin")
        curator_key, _ = create_key(s, "000000", "curator", "ministry-curator")
        province_admin, _ = create_key(s, HB, "admin", "hb-admin-at-ministry")
    with httpx.Client(base_url=pair["m_url"], trust_env=False) as client:
        listed = client.get("/v1/federation/additions", headers=auth(curator_key)).json()["additions"]
        assert len(listed) == 1, listed
        got = listed[0]
        assert (got["instance"], got["org_code"], got["kind"], got["key"]) == ("hubei", HB, "class", "oil_leak")
        assert (got["legal_text"], got["legal_citation"]) == CLAUSE
        assert got["reviewed_by"] == "legal-hb" and got["proposed_by"] == "admin-hb" and got["reviewed_at"]
        assert got["review_reason"] == "条款为强制性规定" and got["adopted_addition_id"] is None

        # visible, not usable: neither the ministry's nor the national taxonomy has it
        assert "oil_leak" not in m.taxonomy(org_code="000000", max_age_s=0).class_keys()
        assert "oil_leak" not in {
            c["key"] for c in client.get("/v1/taxonomy", headers=auth(admin_key)).json()["classes"]
        }

        # adoption: the system organisation's admins only; audited; once
        url = f"/v1/federation/additions/{got['id']}/adopt"
        r = client.post(url, headers=auth(province_admin))
        assert r.status_code == 403 and r.json()["error"]["code"] == "system_only"
        r = client.post(url, json={"org_code": "999999"}, headers=auth(admin_key))
        assert r.status_code == 404
        r = client.post(url, headers=auth(admin_key))
        assert r.status_code == 201, r.text
        local = r.json()
        assert (
            local["status"] == "approved" and local["org_code"] == "000000" and local["reviewed_by"] == "ministry-admin"
        )
        assert "hubei" in local["review_reason"] and "legal-hb" in local["review_reason"]
        assert local["legal_citation"] == CLAUSE[1]
        r = client.post(url, headers=auth(admin_key))
        assert r.status_code == 409 and r.json()["error"]["code"] == "already_adopted"
    assert "oil_leak" in m.taxonomy(org_code="000000", max_age_s=0).class_keys()
    assert "oil_leak" not in m.taxonomy(org_code=HB, max_age_s=0).class_keys()
    with m.db.read_session() as s:
        events = history(s, entity="taxonomy_addition", entity_id=local["id"])
        assert [(e.action, e.actor) for e in events] == [("taxonomy.adopt", "ministry-admin")]
        assert events[0].after["instance"] == "hubei" and events[0].after["origin_org"] == HB

    # a second pull changes nothing; the adopted addition is not offered back as A's own
    again = additions.pull_taxonomy(m, "hubei")
    assert again["unchanged"] == 1 and again["added"] == 0, again


def test_cli_schedules_and_stops_a_peers_pull(home: Path, tmp_path: Path) -> None:
    import json

    assert run("init")[0] == 0
    other = Settings(home=tmp_path / "other")
    (tmp_path / "other.pub").write_text(ensure_keypair(other) + "\n")
    add = ["peers", "add", "hubei", "--url", "http://127.0.0.1:9", "--public-key", str(tmp_path / "other.pub")]
    code, out = run(*add, "--pull-every", "15m", "--full-pull-every", "1d", "--pull-what", "samples,taxonomy")
    assert code == 0 and "every 900 s" in out, out
    code, out = run("peers", "list")
    schedule = json.loads(out[out.index("[") :])[0]["schedule"]
    assert schedule["pull_every_s"] == 900 and schedule["full_pull_every_s"] == 86400
    assert schedule["pull_what"] == ["samples", "taxonomy"] and schedule["next_pull_at"]
    code, out = run("peers", "set", "hubei", "--pull-every", "5s")
    assert code == 2 and "invalid_peer" in out
    code, out = run("peers", "set", "hubei", "--pull-every", "off")
    assert code == 0 and json.loads(out[out.index("{") :])["pull_every_s"] is None
    code, out = run("sync", "pull", "hubei", "--what", "taxonomy")
    assert code == 2 and "peer_unreachable" in out


def test_a_peers_taxonomy_answer_is_bounded() -> None:
    from pydantic import ValidationError

    from hazardlens.contracts.federation import AdditionOffers

    entry = {
        "origin_id": 1,
        "kind": "class",
        "key": "oil_leak",
        "org_code": HB,
        "definition": OIL_LEAK,
        "legal_text": CLAUSE[0],
        "legal_citation": CLAUSE[1],
    }
    assert (
        AdditionOffers.model_validate({"additions": [entry], "next": 1, "more": False}).additions[0].key == "oil_leak"
    )
    bad = [
        {**entry, "definition": {**OIL_LEAK, "finding_zh": "漏" * 20_001}},  # a definition over 20,000 characters
        {**entry, "legal_text": ""},  # no clause: nothing crosses without one
        {**entry, "key": "../etc"},
        {**entry, "kind": "rule"},
        {**entry, "reviewed_by": "x" * 201},
    ]
    for b in bad:
        with pytest.raises(ValidationError):
            AdditionOffers.model_validate({"additions": [b], "next": 1, "more": False})
    with pytest.raises(ValidationError):  # at most 500 entries a page
        AdditionOffers.model_validate({"additions": [entry] * 501, "next": 1, "more": True})


def test_cli_lists_and_adopts_a_pulled_addition(home: Path, tmp_path: Path) -> None:
    import json

    from hazardlens.orm import FederatedAddition
    from hazardlens.settings import get_settings

    assert run("init")[0] == 0
    ctx = Context(get_settings())
    other = Settings(home=tmp_path / "other")
    with ctx.db.session() as s:
        ensure_user(s, HB, "admin-hb", "admin")  # organisation 420000 exists here
        add_peer(s, SYSTEM, "hubei", "http://127.0.0.1:9", ensure_keypair(other), HB, ["feedback"])
        peer = s.scalar(select(Peer).where(Peer.name == "hubei"))
        assert peer is not None
        s.add(
            FederatedAddition(
                peer_id=peer.id, origin_id=7, origin_org=HB, kind="class", key="oil_leak",
                payload={**OIL_LEAK, "legal_basis": [CLAUSE[1]]}, legal_text=CLAUSE[0], legal_citation=CLAUSE[1],
                proposed_by="admin-hb", reviewed_by="legal-hb", review_reason="条款为强制性规定",
            )
        )  # fmt: skip
    ctx.close()
    code, out = run("sync", "additions")
    rows = json.loads(out[out.index("[") :])
    assert code == 0 and [(r["instance"], r["key"], r["reviewed_by"]) for r in rows] == [
        ("hubei", "oil_leak", "legal-hb")
    ]
    code, out = run("sync", "adopt", str(rows[0]["id"]), "--org", HB)
    assert code == 0 and "of organisation 420000" in out, out
    code, out = run("sync", "adopt", str(rows[0]["id"]))
    assert code == 2 and "already_adopted" in out
    code, out = run("taxonomy", "additions", "--org", HB)
    local = json.loads(out[out.index("[") :])
    assert [(r["key"], r["status"], r["org_code"]) for r in local] == [("oil_leak", "approved", HB)]


def test_a_scheduled_pull_runs_on_a_celery_worker(pair: dict[str, Any], tmp_path: Path) -> None:
    """With a broker, the ministry's tick sends the due pull to the job queue like any job, and a real
    ``hazardlens worker`` process (sharing its catalogue, on PostgreSQL) runs it over HTTP from the
    province: the shared samples arrive, the job completes, the peer's schedule moves on."""
    import os
    import subprocess
    import sys

    url = os.environ.get("HAZARDLENS_TEST_REDIS_FEDERATION", "redis://127.0.0.1:6379/11")  # db 11: this test's
    broker = redis_or_skip(url)
    broker.flushdb()
    a, m = pair["a"], pair["m"]
    _share(a, 3, seed=7100)
    with m.db.session() as s:
        set_schedule(s, SYSTEM, "hubei", 900, None, ["samples"])
    m.settings = m.settings.with_(broker_url=url)  # this API process now sends its jobs to the broker
    env = {
        **os.environ,
        "HAZARDLENS_HOME": str(m.settings.home),
        "HAZARDLENS_DATABASE_URL": m.settings.database,
        "HAZARDLENS_BROKER_URL": url,
        "YOLO_OFFLINE": "1",
    }
    log_path = tmp_path / "worker.log"
    with log_path.open("wb") as log:
        worker = subprocess.Popen(
            [str(Path(sys.executable).with_name("hazardlens")), "worker", "--queues", "cpu", "--name", "fed@test"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        [job_id] = tick(m, runner_submit(m), now=utcnow())
        finished = wait_for(lambda: _job(m, job_id).status in ("completed", "failed"), timeout=240, interval=0.5)
        job = _job(m, job_id)
        worker_log = log_path.read_text(errors="replace")[-4000:]
        assert finished and job.status == "completed", (job.status, job.error, worker_log)
        assert re.search(r"Task hazardlens\.job\[[^]]+\] succeeded", worker_log), worker_log  # the worker ran it
        with m.db.read_session() as s:
            arrived = s.scalar(select(func.count()).select_from(FederatedSample))
            peer = s.scalar(select(Peer).where(Peer.name == "hubei"))
        assert arrived == 3
        assert peer is not None and peer.pull_job_id == job_id and peer.next_pull_at is not None
    finally:
        worker.terminate()
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
        broker.flushdb()
