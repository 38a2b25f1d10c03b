"""Issue 17 items 1-3: two real instances on loopback, each with its own home, port, catalogue and
store (province A: SQLite + filesystem; the ministry: PostgreSQL + S3 on a moto server), talking
the signed federation protocol over real HTTP.

A shares 50 samples (10 stay private), all labelled and approved; the ministry pulls: 50 arrive with
labels and origin, no private one; a second pull moves no bytes; A relabels one and makes one
private: the next pull brings the revision and withdraws the sample; a pull killed halfway (the real
CLI in its own process, SIGKILLed while a blob is on the wire) resumes and ends in the same state; a
forged answer is refused and changes nothing; an unknown or tampered request is refused; a model
published by the ministry arrives at A as a candidate; A's feedback counts reach the ministry.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from hazardlens.auth import SYSTEM, Principal, create_key, ensure_user
from hazardlens.context import Context
from hazardlens.datasets.ingest import IngestMeta, ingest
from hazardlens.datasets.scope import set_scope
from hazardlens.datasets.tenancy import visible_samples
from hazardlens.errors import HazardError
from hazardlens.federation import sync
from hazardlens.federation.peers import add_peer
from hazardlens.federation.signing import KEY_HEADER, Signer, ensure_keypair, key_id
from hazardlens.labeling import annotations as ann
from hazardlens.orm import (
    AnnotationRevision,
    FederatedSample,
    Finding,
    InspectionPhoto,
    ModelVersion,
    Peer,
    Sample,
    SyncState,
)
from hazardlens.settings import Settings
from hazardlens.store.base import blob_key
from tests.fixtures.core import auth, make_image
from tests.fixtures.s3 import S3_ACCESS_KEY, S3_SECRET_KEY, unique_bucket
from tests.fixtures.serving import LiveServer

HB = "420000"
BOX = {"class_key": "accumulated_dust", "x1": 4, "y1": 4, "x2": 40, "y2": 30}
BOX2 = {"class_key": "accumulated_dust", "x1": 8, "y1": 6, "x2": 50, "y2": 40}


class KillSwitch:
    """ASGI wrapper around A's real app: when the watched peer asks for its Nth blob, hold that answer
    back and tell the test, which then SIGKILLs the pulling process while the blob is on the wire."""

    def __init__(self, app: Any) -> None:
        self.app, self.watch, self.after, self.seen = app, None, 0, 0
        self.fired = threading.Event()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and self.watch and "/federation/v1/blobs/" in scope["path"]:
            headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
            if headers.get(KEY_HEADER.lower()) == self.watch:
                self.seen += 1
                if self.seen == self.after:
                    self.fired.set()
                    self.watch = None
                    await asyncio.sleep(3)
        await self.app(scope, receive, send)


class Forger:
    """A man in the middle: passes requests on to the real peer and alters its answers' bodies,
    keeping their signature headers."""

    def __init__(self, target: str) -> None:
        self.target = target

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        path = scope["raw_path"].decode() + (("?" + scope["query_string"].decode()) if scope["query_string"] else "")
        headers = {k.decode(): v.decode() for k, v in scope["headers"] if k.decode().lower() != "host"}
        async with httpx.AsyncClient(trust_env=False) as client:
            answer = await client.request(scope["method"], self.target + path, headers=headers)
        body = answer.content.replace(b'"more":false', b'"more":false ')  # still JSON, another body
        out = [(k.encode(), v.encode()) for k, v in answer.headers.items() if k.lower() not in ("content-length",)]
        out.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": answer.status_code, "headers": out})
        await send({"type": "http.response.body", "body": body})


def _instance(settings: Settings) -> Context:
    ctx = Context(settings)
    ctx.init()
    ensure_keypair(settings)
    return ctx


def _serve(ctx: Context, wrap: Any = None) -> LiveServer:
    from hazardlens.serving.app import create_app

    app = create_app(ctx, start_background=False)
    return LiveServer(wrap(app) if wrap else app)


def _register(ctx: Context, name: str, url: str, other: Context, org: str, allow: list[str]) -> None:
    public = (other.settings.home / "federation" / "instance_ed25519.pub").read_text()
    with ctx.db.session() as s:
        add_peer(s, SYSTEM, name, url, public, org, allow)


def _live_copies(ctx: Context) -> set[tuple[int, str, int | None]]:
    with ctx.db.read_session() as s:
        rows = s.scalars(select(FederatedSample).where(FederatedSample.withdrawn_at.is_(None))).all()
        return {(r.origin_sample_id, r.sha256, r.origin_revision_id) for r in rows}


@pytest.fixture
def ministry_settings(tmp_path: Path, pg_url: str, s3_server: str) -> Settings:
    return Settings(
        home=tmp_path / "ministry",
        database_url=pg_url,
        store="minio",
        minio_endpoint=s3_server,
        minio_access_key=S3_ACCESS_KEY,
        minio_secret_key=S3_SECRET_KEY,
        minio_bucket=unique_bucket(),
    )


@pytest.fixture
def instances(tmp_path: Path, ministry_settings: Settings) -> Iterator[dict[str, Any]]:
    a = _instance(Settings(home=tmp_path / "hubei"))
    m = _instance(ministry_settings)
    switch: list[KillSwitch] = []

    def wrap(app: Any) -> KillSwitch:
        switch.append(KillSwitch(app))
        return switch[0]

    with _serve(a, wrap) as a_srv, _serve(m) as m_srv:
        _register(m, "hubei", a_srv.url, a, HB, ["models", "feedback"])  # what A may do at the ministry
        _register(a, "ministry", m_srv.url, m, "000000", ["samples"])  # what the ministry may do at A
        yield {"a": a, "m": m, "a_url": a_srv.url, "m_url": m_srv.url, "switch": switch[0], "tmp": tmp_path}
    a.close()
    m.close()


def _populate(a: Context) -> tuple[list[int], list[int]]:
    """50 shared and 10 private samples of 420000, each labelled and approved."""
    with a.db.session() as s:
        admin = ensure_user(s, HB, "admin-hb", "admin")
        who = Principal(user_id=admin.id, name=admin.name, org_code=HB, role="admin")
    shared, private = [], []
    for i in range(60):
        scope = "shared" if i < 50 else "private"
        with a.db.session() as s:
            sid = ingest(a, s, who, make_image(64, 48, seed=1000 + i), IngestMeta(sector="dust", scope=scope)).sample.id
            ann.save_revision(a, s, who, sid, [BOX], status="approved")
        (shared if i < 50 else private).append(sid)
    return shared, private


def test_province_and_ministry_sync(instances: dict[str, Any]) -> None:
    a, m = instances["a"], instances["m"]
    shared, private = _populate(a)
    with a.db.read_session() as s:
        shared_sha = {x.id: x.sha256 for x in s.scalars(select(Sample).where(Sample.id.in_(shared)))}
        private_sha = set(s.scalars(select(Sample.sha256).where(Sample.id.in_(private))))
        shared_bytes = sum(s.scalars(select(Sample.size_bytes).where(Sample.id.in_(shared))))

    # -- first pull: 50 arrive with labels and origin, no private one ---------------------------------
    first = sync.pull_samples(m, "hubei", page_size=20)
    assert first["added"] == 50 and first["blobs"] == 50 and first["blob_bytes"] == shared_bytes, first
    with m.db.read_session() as s:
        copies = s.scalars(select(Sample).where(Sample.org_code == HB, Sample.deleted_at.is_(None))).all()
        assert {c.sha256 for c in copies} == set(shared_sha.values())
        assert not private_sha & set(s.scalars(select(Sample.sha256)))
        assert all(c.annotation_status == "approved" and c.class_keys == ["accumulated_dust"] for c in copies)
        rev = s.get(AnnotationRevision, copies[0].approved_revision_id)
        assert rev is not None and rev.boxes == [BOX] and "admin-hb" in (rev.note or "")
    assert not any(m.store.exists(blob_key(sha)) for sha in private_sha)
    with m.db.session() as s:
        key, _ = create_key(s, "000000", "curator", "ministry-curator")
    with httpx.Client(base_url=instances["m_url"], trust_env=False) as client:
        origin = client.get(f"/v1/samples/{copies[0].id}/origin", headers=auth(key)).json()
        assert origin["instance"] == "hubei" and origin["org_code"] == HB, origin
        assert origin["provenance"]["reviewer"] == "admin-hb" and origin["origin_sample_id"] in shared
        # shared means readable, not writable: the ministry cannot relabel A's sample
        r = client.put(f"/v1/samples/{copies[0].id}/annotations", json={"boxes": []}, headers=auth(key))
        assert r.status_code == 403

    # -- second pull: nothing changed, nothing moves ---------------------------------------------------
    second = sync.pull_samples(m, "hubei", page_size=20)
    assert second.get("blob_bytes", 0) == 0 and second.get("added", 0) == 0 and second["pages"] == 1, second

    # -- A relabels one and makes one private: the revision arrives, the sample is withdrawn ----------
    relabeled, withdrawn = shared[3], shared[7]
    with a.db.session() as s:
        who = Principal(user_id=None, name="admin-hb", org_code=HB, role="admin")
        ann.save_revision(a, s, who, relabeled, [BOX, BOX2], status="approved")
        set_scope(s, who, withdrawn, "private")
    third = sync.pull_samples(m, "hubei", page_size=20)
    assert third.get("relabeled") == 1 and third.get("withdrawn") == 1 and third.get("blob_bytes", 0) == 0, third
    with m.db.read_session() as s:
        fs = s.scalar(select(FederatedSample).where(FederatedSample.origin_sample_id == relabeled))
        copy = s.get(Sample, fs.local_sample_id)
        revs = s.scalars(select(AnnotationRevision).where(AnnotationRevision.sample_id == copy.id)).all()
        assert len(revs) == 2 and s.get(AnnotationRevision, copy.approved_revision_id).boxes == [BOX, BOX2]
        gone = s.scalar(select(FederatedSample).where(FederatedSample.origin_sample_id == withdrawn))
        assert gone.withdrawn_at is not None
        ministry = Principal(user_id=None, name="m", org_code="000000", role="curator")
        visible = set(s.scalars(visible_samples(ministry).with_only_columns(Sample.id)))
        assert gone.local_sample_id not in visible and len(visible) == 49

    # -- a forged answer is refused, and changes nothing -------------------------------------------------
    with LiveServer(Forger(instances["a_url"])) as forger:
        with m.db.session() as s:
            s.scalar(select(Peer).where(Peer.name == "hubei")).url = forger.url
        before = _live_copies(m)
        with pytest.raises(HazardError) as err:
            sync.pull_samples(m, "hubei")
        assert err.value.code == "peer_bad_signature"
        assert _live_copies(m) == before
        with m.db.session() as s:
            s.scalar(select(Peer).where(Peer.name == "hubei")).url = instances["a_url"]

    # -- a pull killed halfway resumes to the same state -----------------------------------------------
    m2 = _instance(Settings(home=instances["tmp"] / "ministry2"))
    _register(m2, "hubei", instances["a_url"], a, HB, ["feedback"])
    _register(a, "ministry2", "http://127.0.0.1:9", m2, "000000", ["samples"])
    switch = instances["switch"]
    switch.watch = key_id((m2.settings.home / "federation" / "instance_ed25519.pub").read_text().strip())
    switch.after = 20
    env = {**os.environ, "HAZARDLENS_HOME": str(m2.settings.home)}
    for name in ("HAZARDLENS_DATABASE_URL", "HAZARDLENS_STORE"):
        env.pop(name, None)
    cmd = [sys.executable, "-c", "from hazardlens.cli.main import main; main()", "sync", "pull", "hubei"]
    proc = subprocess.Popen(
        [*cmd, "--what", "samples", "--page-size", "2"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        assert switch.fired.wait(120), "the pull never reached its 20th blob"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(30)
    assert proc.returncode == -signal.SIGKILL
    halfway = _live_copies(m2)
    with m2.db.read_session() as s:
        cursor = s.scalar(select(SyncState.cursor))
    assert 0 < len(halfway) < 49 and cursor, (len(halfway), cursor)
    resumed = sync.pull_samples(m2, "hubei", page_size=7)
    # it re-reads the page it was killed in; blobs stored before the kill are not fetched again
    assert resumed["added"] == 49 - len(halfway) and 49 - len(halfway) - 2 <= resumed["blobs"] <= 49 - len(halfway)
    assert _live_copies(m2) == _live_copies(m)
    m2.close()


def test_unknown_or_tampered_requests_are_refused(instances: dict[str, Any], tmp_path: Path) -> None:
    a = instances["a"]
    stranger = Settings(home=tmp_path / "stranger")
    ensure_keypair(stranger)
    with httpx.Client(base_url=instances["a_url"], trust_env=False) as client:
        path = "/federation/v1/changes?cursor=0&limit=5"
        r = client.get(path, headers=Signer.of(stranger).sign_request("GET", path, b""))
        assert r.status_code == 401 and r.json()["error"]["code"] == "unknown_peer"
        ministry = Signer.of(instances["m"].settings)
        r = client.get(path.replace("cursor=0", "cursor=7"), headers=ministry.sign_request("GET", path, b""))
        assert r.status_code == 401 and r.json()["error"]["code"] == "bad_signature"
        r = client.get(path, headers=ministry.sign_request("GET", path, b""))
        assert r.status_code == 200 and r.headers[KEY_HEADER] == Signer.of(a.settings).key_id
        # the ministry may pull samples from A, but A never allowed it models
        mpath = "/federation/v1/models"
        r = client.get(mpath, headers=ministry.sign_request("GET", mpath, b""))
        assert r.status_code == 403 and r.json()["error"]["code"] == "peer_not_allowed"


def test_models_down_feedback_up(instances: dict[str, Any], tmp_path: Path) -> None:
    a, m = instances["a"], instances["m"]
    from hazardlens.models.registry import register_model

    weights = tmp_path / "published.pt"
    weights.write_bytes(os.urandom(4096))
    with m.db.session() as s:
        register_model(
            m, s, SYSTEM, weights, classes=["head", "person"], imgsz=64, card={"note": "national"}, stage="production"
        )
    report = sync.pull_models(a, "ministry")
    assert len(report["registered"]) == 1, report
    with a.db.read_session() as s:
        mv = s.scalar(select(ModelVersion).where(ModelVersion.weights_sha256 == _sha(weights)))
        assert mv is not None and mv.stage == "candidate" and mv.card["federation"]["instance"] == "ministry"
        assert mv.card["note"] == "national"
    assert sync.pull_models(a, "ministry")["registered"] == []  # held already: nothing moves again

    # feedback counts of A's inspectors flow up (counts only)
    with a.db.session() as s:
        user = ensure_user(s, HB, "inspector-hb", "inspector")
        who = Principal(user_id=user.id, name=user.name, org_code=HB, role="inspector")
        sid = ingest(a, s, who, make_image(64, 48, seed=5), IngestMeta(sector="dust")).sample.id
        photo = InspectionPhoto(record_no="R-1", org_code=HB, sample_id=sid)
        s.add(photo)
        s.flush()
        decisions = [("confirmed", {"corrected": False}), ("confirmed", {"corrected": True}), ("rejected", {})]
        for status, review in [*decisions, ("suggested", None)]:
            s.add(
                Finding(
                    photo_id=photo.id,
                    sample_id=sid,
                    class_key="head",
                    confidence=0.5,
                    box={},
                    model_version=mv.version,
                    status=status,
                    review=review,
                )
            )
    assert sync.push_feedback(a, "ministry") == {"sent": 1, "received": 1}
    with m.db.session() as s:
        key, _ = create_key(s, "000000", "admin", "ministry-admin")
    with httpx.Client(base_url=instances["m_url"], trust_env=False) as client:
        rows = client.get("/v1/federation/feedback", headers=auth(key)).json()["rows"]
    assert rows == [
        {
            "model_name": "hazardlens",
            "model_version": mv.version,
            "class_key": "head",
            "confirmed": 1,
            "corrected": 1,
            "rejected": 1,
            "precision": 0.3333,
            "peers": ["hubei"],
        }
    ]


def _sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_init_makes_the_key_and_peers_are_registered_by_cli(home: Path, tmp_path: Path) -> None:
    import json

    from tests.fixtures.cli import run

    code, out = run("init")
    assert code == 0, out
    private = home / "federation" / "instance_ed25519.pem"
    assert private.stat().st_mode & 0o777 == 0o600
    code, out = run("peers", "key")
    public = out.strip().splitlines()[-1]
    assert code == 0 and public == (home / "federation" / "instance_ed25519.pub").read_text().strip()
    other = Settings(home=tmp_path / "other")
    (tmp_path / "other.pub").write_text(ensure_keypair(other) + "\n")
    add = ["peers", "add", "ministry", "--url", "http://127.0.0.1:9/", "--public-key", str(tmp_path / "other.pub")]
    code, out = run(*add, "--org", "000000", "--allow", "models,feedback")
    assert code == 0, out
    code, out = run(*add)
    assert code == 2 and "duplicate_peer" in out
    (tmp_path / "bad.pub").write_text("not a key")
    code, out = run("peers", "add", "x", "--url", "http://127.0.0.1:9", "--public-key", str(tmp_path / "bad.pub"))
    assert code == 2 and "invalid_public_key" in out
    code, out = run("peers", "list")
    peers = json.loads(out[out.index("[") :])
    assert [(p["name"], p["org_code"], p["allow"], p["url"]) for p in peers] == [
        ("ministry", "000000", ["models", "feedback"], "http://127.0.0.1:9")
    ]
    code, out = run("sync", "pull", "nobody")
    assert code == 2 and "peer_not_found" in out
