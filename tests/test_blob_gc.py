"""Garbage collection of unreferenced stored objects (issue 16, item 5): the ``blob_gc`` job on the
filesystem store and on S3 (a moto server on loopback), over the API, and the CLI command."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from hazardlens.auth import Principal, ensure_user, principal_of
from hazardlens.context import Context
from hazardlens.datasets import blob_gc  # registers blob_gc with the queue
from hazardlens.datasets.ingest import IngestMeta, ingest, thumbnail_key
from hazardlens.errors import Forbidden
from hazardlens.jobs import JobRunner
from hazardlens.orm import AuditEvent, ModelVersion
from hazardlens.settings import Settings
from hazardlens.store import blob_key
from tests.fixtures.core import auth, make_image
from tests.fixtures.s3 import S3_ACCESS_KEY, S3_SECRET_KEY, unique_bucket

SYSTEM_ORG = "000000"
HOUR = 3600.0


def _admin(ctx: Context, org: str = SYSTEM_ORG, role: str = "admin") -> Principal:
    with ctx.db.session() as s:
        return principal_of(ensure_user(s, org, f"gc-{role}-{org}", role))


@pytest.fixture(params=["filesystem", "minio"])
def gc_ctx(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Context]:
    """A context on each store backend (S3: the session's moto server, a fresh bucket)."""
    settings = Settings(home=tmp_path / "home")
    if request.param == "minio":
        endpoint = request.getfixturevalue("s3_server")
        settings = settings.with_(
            store="minio",
            minio_endpoint=endpoint,
            minio_access_key=S3_ACCESS_KEY,
            minio_secret_key=S3_SECRET_KEY,
            minio_bucket=unique_bucket(),
        )
    ctx = Context(settings)
    ctx.init()
    yield ctx
    ctx.close()


def _orphan(ctx: Context, seed: int) -> tuple[str, str, bytes]:
    """Bytes with a thumbnail in the store and no row: what a failed insert leaves."""
    data = make_image(seed=seed)
    sha = hashlib.sha256(data).hexdigest()
    ctx.store.put(blob_key(sha), data)
    ctx.store.put(thumbnail_key(sha), b"thumb")
    return blob_key(sha), thumbnail_key(sha), data


def _age(ctx: Context, key: str, seconds: float) -> None:
    """Make a filesystem object look ``seconds`` old (S3 cannot be told: its tests wait instead)."""
    path = Path(ctx.settings.store_root, *key.split("/"))
    stamp = time.time() - seconds
    os.utime(path, (stamp, stamp))


def test_gc_removes_old_orphans_only(gc_ctx: Context) -> None:
    """An orphan past the grace period goes (blob and thumbnail); a fresh orphan, every sample's
    blob and thumbnail (a deleted sample's too), a registered model's files and unrelated keys stay.
    A dry run first reports the same and deletes nothing."""
    ctx = gc_ctx
    admin = _admin(ctx)
    with ctx.db.session() as s:
        kept = ingest(ctx, s, admin, make_image(seed=1), IngestMeta(sector="dust")).sample
        gone = ingest(ctx, s, admin, make_image(seed=2), IngestMeta(sector="dust")).sample
        kept_sha, deleted_sha = kept.sha256, gone.sha256
        gone.deleted_at = gone.created_at  # soft-deleted: restorable, so its bytes stay
        s.add(
            ModelVersion(
                name="m",
                version="1",
                stage="candidate",
                weights_key="models/m/1/weights.pt",
                weights_sha256="0" * 64,
                classes=[],
                card={},
            )
        )
    ctx.store.put("models/m/1/weights.pt", b"w")
    ctx.store.put("models/ghost/7/weights.pt", b"never registered")
    ctx.store.put("datasets/x/abc.json", b"{}")  # not a collected prefix
    ctx.store.put("blobs/zz/not-a-sha", b"?")  # collected prefix, unknown shape: kept
    old_blob, old_thumb, old_data = _orphan(ctx, 3)
    referenced = [blob_key(kept_sha), thumbnail_key(kept_sha), blob_key(deleted_sha), thumbnail_key(deleted_sha)]

    if ctx.settings.store == "filesystem":
        for key in [old_blob, old_thumb, "models/ghost/7/weights.pt", *referenced, "models/m/1/weights.pt"]:
            _age(ctx, key, 48 * HOUR)
        grace = 24.0
    else:  # S3 keeps its own LastModified (to the second): a grace of 5 s, the fresh orphan after it
        time.sleep(6.5)
        grace = 5.0 / HOUR
    fresh_blob, fresh_thumb, _ = _orphan(ctx, 4)

    runner = JobRunner(ctx)
    dry = runner.run(runner.submit("blob_gc", {"dry_run": True, "grace_hours": grace}, admin).id)
    assert dry.status == "completed", dry.error
    r = dry.result
    assert sorted(r["removed"]) == sorted([old_blob, old_thumb, "models/ghost/7/weights.pt"])
    assert r["deleted"] == 0 and r["young_orphans"] == 2 and r["orphans"] == 5 and r["collectable"] == 3
    assert r["bytes_freed"] == len(old_data) + len(b"thumb") + len(b"never registered")
    assert ctx.store.exists(old_blob) and ctx.store.exists(old_thumb)

    job = runner.run(runner.submit("blob_gc", {"grace_hours": grace}, admin).id)
    assert job.status == "completed", job.error
    r = job.result
    assert r["deleted"] == 3 and r["failed"] == 0 and r["restored"] == 0
    assert r["bytes_freed"] == len(old_data) + len(b"thumb") + len(b"never registered")
    assert r["referenced"] == 5 and r["unrecognised"] == 1
    for key in (old_blob, old_thumb, "models/ghost/7/weights.pt"):
        assert not ctx.store.exists(key)
    for key in [
        fresh_blob,
        fresh_thumb,
        *referenced,
        "models/m/1/weights.pt",
        "datasets/x/abc.json",
        "blobs/zz/not-a-sha",
    ]:
        assert ctx.store.exists(key), key
    with ctx.db.read_session() as s:
        event = s.scalar(select(AuditEvent).where(AuditEvent.action == "store.gc"))
        assert event is not None and event.entity_id == str(job.id)
        assert event.after["deleted"] == 3 and old_blob in event.after["removed"]
        assert s.scalar(
            select(AuditEvent).where(AuditEvent.action == "job.submit", AuditEvent.entity_id == str(job.id))
        )


def test_gc_puts_back_bytes_a_row_names_meanwhile(ctx: Context, monkeypatch: pytest.MonkeyPatch) -> None:
    """The race the grace period cannot cover: an upload of exactly an old orphan's bytes finds them
    stored (no write) and commits its row while the collector removes them: they are put back."""
    admin = _admin(ctx)
    key, thumb, data = _orphan(ctx, 5)
    _age(ctx, key, 48 * HOUR)
    real_delete = ctx.store.delete

    def delete_while_uploading(k: str) -> None:
        real_delete(k)
        if k == key:  # the upload's row lands between the removal and the second look
            with ctx.db.session() as s:
                from hazardlens.datasets.ingest import Prepared
                from hazardlens.datasets.ingest import record as record_sample
                from hazardlens.images import inspect_image

                info = inspect_image(data, ctx.settings.max_pixels, ctx.settings.thumbnail_size)
                record_sample(
                    ctx,
                    s,
                    admin,
                    Prepared(
                        sha256=hashlib.sha256(data).hexdigest(),
                        size=len(data),
                        info=info,
                        meta=IngestMeta(sector="dust"),
                    ),
                )

    monkeypatch.setattr(ctx.store, "delete", delete_while_uploading)
    summary = blob_gc.collect(ctx, grace_hours=24.0)
    assert summary.restored == 1 and summary.deleted == 0
    assert ctx.store.get(key) == data


def test_gc_between_an_uploads_check_and_its_commit_loses_nothing(gc_ctx: Context) -> None:
    """The other order of that race (the gap the collector alone cannot close): an upload of exactly
    an old orphan's bytes finds them stored and does not write them; the collector removes them, and
    reads the catalogue again, before the upload's row commits. After the commit the bytes and the
    thumbnail are there again, on both stores. A rolled back upload puts nothing back."""
    from hazardlens.datasets.ingest import prepare, record

    ctx = gc_ctx
    admin = _admin(ctx)
    key, thumb, data = _orphan(ctx, 7)
    rolled_key, rolled_thumb, rolled_data = _orphan(ctx, 8)
    if ctx.settings.store == "filesystem":
        for k in (key, thumb, rolled_key, rolled_thumb):
            _age(ctx, k, 48 * HOUR)
        grace = 24.0
    else:
        time.sleep(6.5)
        grace = 5.0 / HOUR
    prepared = prepare(ctx, data, IngestMeta(sector="dust"))  # finds the orphan's bytes: no write
    rolled = prepare(ctx, rolled_data, IngestMeta(sector="dust"))
    assert prepared.reused == data and rolled.reused == rolled_data

    summary = blob_gc.collect(ctx, grace_hours=grace)  # the whole collection runs in the gap
    assert summary.deleted == 4 and summary.restored == 0
    assert not ctx.store.exists(key) and not ctx.store.exists(thumb)

    with ctx.db.session() as s:
        result = record(ctx, s, admin, prepared)
        assert not ctx.store.exists(key)  # not yet: the row is not committed
    assert not result.deduplicated
    assert ctx.store.get(key) == data and ctx.store.exists(thumb)

    with pytest.raises(RuntimeError), ctx.db.session() as s:
        record(ctx, s, admin, rolled)
        raise RuntimeError("the caller's transaction fails after the insert")
    assert not ctx.store.exists(rolled_key)  # no row names them: nothing to put back
    with ctx.db.session() as s:  # the next transaction of that session checks nothing stale either
        assert s.info.get("hazardlens.ingest.recheck") is None


def test_gc_refused_to_others(ctx: Context) -> None:
    """Not an admin, or an admin of another organisation (the store is everybody's): refused at
    submission; nothing queued."""
    runner = JobRunner(ctx)
    with pytest.raises(Forbidden) as exc:
        runner.submit("blob_gc", {}, _admin(ctx, role="curator"))
    assert exc.value.code == "forbidden"
    with pytest.raises(Forbidden) as exc:
        runner.submit("blob_gc", {}, _admin(ctx, org="420000"))
    assert exc.value.code == "system_only"
    assert runner.list_jobs() == []


def test_gc_over_http(ctx: Context, client, make_key) -> None:  # type: ignore[no-untyped-def]
    """POST /v1/jobs: a curator gets 403 forbidden, another organisation's admin 403 system_only, both
    in the error shape; the system organisation's admin gets the job, and dry_run is strict."""
    for key, code in ((make_key(SYSTEM_ORG, "curator"), "forbidden"), (make_key("420000", "admin"), "system_only")):
        r = client.post("/v1/jobs", json={"kind": "blob_gc", "params": {}}, headers=auth(key))
        assert r.status_code == 403 and r.json()["error"]["code"] == code
    admin = make_key(SYSTEM_ORG, "admin")
    r = client.post("/v1/jobs", json={"kind": "blob_gc", "params": {"dry_run": 1}}, headers=auth(admin))
    assert r.status_code == 422 and r.json()["error"]["code"]
    r = client.post(
        "/v1/jobs", json={"kind": "blob_gc", "params": {"dry_run": True, "grace_hours": 2}}, headers=auth(admin)
    )
    assert r.status_code == 202, r.text
    assert r.json()["kind"] == "blob_gc" and r.json()["params"] == {"dry_run": True, "grace_hours": 2.0}


def test_gc_cli(home: Path) -> None:
    """``hazardlens blobs gc``: a dry run names the old orphan and keeps it, the real run removes
    it; ``--org`` of another organisation is refused with a clear line and exit 2."""
    from tests.fixtures.cli import run

    settings = Settings(home=home)
    ctx = Context(settings)
    ctx.init()
    key, _thumb, _ = _orphan(ctx, 6)
    _age(ctx, key, 3 * HOUR)
    code, out = run("blobs", "gc", "--dry-run", "--grace-hours", "1")
    assert code == 0, out
    assert "would remove 1" in out and key in out and ctx.store.exists(key)
    code, out = run("blobs", "gc", "--grace-hours", "1")
    assert code == 0 and "removed 1" in out and not ctx.store.exists(key)
    code, out = run("blobs", "gc", "--org", "420000")
    assert code == 2 and "system_only" in out
    ctx.close()


def test_gc_reads_references_on_both_catalogues(catalogue_ctx: Context) -> None:
    """The reference look-ups (SHA-256 IN, (name, version) IN) on SQLite and PostgreSQL alike."""
    ctx = catalogue_ctx
    admin = _admin(ctx)
    with ctx.db.session() as s:
        kept = ingest(ctx, s, admin, make_image(seed=11), IngestMeta(sector="dust")).sample.sha256
        s.add(
            ModelVersion(
                name="m", version="2", stage="candidate", weights_key="k", weights_sha256="0" * 64, classes=[], card={}
            )
        )
    ctx.store.put("models/m/2/weights.pt", b"w")
    ctx.store.put("models/m/3/weights.pt", b"w3")
    orphan, thumb, _ = _orphan(ctx, 12)
    for key in (blob_key(kept), thumbnail_key(kept), "models/m/2/weights.pt", "models/m/3/weights.pt", orphan, thumb):
        _age(ctx, key, 48 * HOUR)
    summary = blob_gc.collect(ctx, grace_hours=24.0)
    assert sorted(summary.removed) == sorted([orphan, thumb, "models/m/3/weights.pt"])
    assert summary.referenced == 3 and summary.deleted == 3
    assert ctx.store.exists(blob_key(kept)) and ctx.store.exists("models/m/2/weights.pt")
