"""Library-wide batch work as jobs (issue 16, item 2): ``library_rebuild`` (thumbnails and near-duplicate
links, in shards, on the embedded runner) and ``evaluate`` (a registered model on a dataset version).

The rebuild: a thumbnail removed from the store and a link removed from the catalogue come back, a
group lost is merged again, the summary counts them, a sample whose stored photo is corrupt is a
failure with its reason while the rest are done, a shard that fails is retried, a shard run twice
adds each link once, and an organisation rebuilds its own samples only."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, func, or_, select, update

from hazardlens.auth import Principal, ensure_user
from hazardlens.context import Context
from hazardlens.datasets.library import IngestMeta, ingest, thumbnail_key
from hazardlens.orm import JobShard, NearDuplicate, Sample
from hazardlens.store import blob_key
from tests.fixtures.core import auth
from tests.fixtures.serving import photo

A, B = "420000", "310000"


def _who(ctx: Context, org: str, role: str = "curator") -> Principal:
    with ctx.db.session() as s:
        user = ensure_user(s, org, f"lib-{role}-{org}", role)
        return Principal(user.id, user.name, org, role)


def _ingest(ctx: Context, org: str, data: bytes, scope: str = "private") -> int:
    with ctx.db.session() as s:
        return ingest(ctx, s, _who(ctx, org), data, IngestMeta(sector="general", scope=scope)).sample.id


def _png(seed: int) -> bytes:
    """The same picture as ``photo(seed)`` under other bytes: a near-duplicate of it."""
    return photo(seed=seed, fmt="PNG")


def _links(ctx: Context, *ids: int) -> set[tuple[int, int]]:
    with ctx.db.read_session() as s:
        rows = s.execute(
            select(NearDuplicate.sample_id, NearDuplicate.other_id).where(
                or_(NearDuplicate.sample_id.in_(ids), NearDuplicate.other_id.in_(ids))
            )
        ).all()
    return {(int(a), int(b)) for a, b in rows}


def _unlink(ctx: Context, a: int, b: int) -> None:
    with ctx.db.session() as s:
        s.execute(
            delete(NearDuplicate).where(
                or_(
                    (NearDuplicate.sample_id == a) & (NearDuplicate.other_id == b),
                    (NearDuplicate.sample_id == b) & (NearDuplicate.other_id == a),
                )
            )
        )


def _sha(ctx: Context, sample_id: int) -> str:
    with ctx.db.read_session() as s:
        return str(s.get(Sample, sample_id).sha256)


def _library(ctx: Context) -> dict[str, int]:
    """Organisation B's shared near-duplicate of A's photo 2 and a private photo of its own (first, so
    that A's ingest links to the shared one), then A's nine: photos 0..6 and near-duplicates of 0 and 1."""
    ids = {"b2_shared": _ingest(ctx, B, _png(2), scope="shared"), "b_private": _ingest(ctx, B, photo(seed=50))}
    for name, data in (("a0", photo(seed=0)), ("a0_png", _png(0)), ("a1", photo(seed=1)), ("a1_png", _png(1))):
        ids[name] = _ingest(ctx, A, data)
    for seed in range(2, 7):
        ids[f"a{seed}"] = _ingest(ctx, A, photo(seed=seed))
    return ids


def test_rebuild_restores_thumbnails_and_links_in_shards(
    client: Any, ctx: Context, make_key: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = _library(ctx)
    a_ids = [v for k, v in ids.items() if k.startswith("a")]
    pairs = {(ids["a0"], ids["a0_png"]), (ids["a1"], ids["a1_png"]), (ids["a2"], ids["b2_shared"])}
    assert _links(ctx, *a_ids) == pairs | {(b, a) for a, b in pairs}  # what ingest linked
    # what went missing: a thumbnail of A's and one of B's, two links, a group; one photo is corrupt
    store = ctx.store
    lost_thumb = thumbnail_key(_sha(ctx, ids["a3"]))
    original = store.get(lost_thumb)
    store.delete(lost_thumb)
    theirs_thumb = thumbnail_key(_sha(ctx, ids["b_private"]))
    store.delete(theirs_thumb)
    _unlink(ctx, ids["a0"], ids["a0_png"])
    _unlink(ctx, ids["a2"], ids["b2_shared"])
    with ctx.db.session() as s:
        s.execute(update(Sample).where(Sample.id == ids["a0_png"]).values(dup_group=None))
    store._path(blob_key(_sha(ctx, ids["a5"]))).write_bytes(b"not the photo any more")  # type: ignore[attr-defined]
    # the store fails the first read of the job (an outage): that shard is retried, not the job failed
    real_get, outages = store.get, [1]

    def flaky_get(key: str) -> bytes:
        if outages:
            outages.pop()
            from hazardlens.store.base import StoreUnavailable

            raise StoreUnavailable("the object store is restarting")
        return real_get(key)

    monkeypatch.setattr(store, "get", flaky_get)

    curator = make_key(A, "curator", "rebuild-curator")
    body = {"kind": "library_rebuild", "params": {"shard_size": 3}}
    r = client.post("/v1/jobs", json=body, headers=auth(curator))
    assert r.status_code == 202, r.text
    assert r.json()["params"]["what"] == ["thumbnails", "near_duplicates"]
    client.app.state.job_runner.run_pending()
    done = client.get(f"/v1/jobs/{r.json()['id']}", headers=auth(curator)).json()
    assert done["status"] == "completed", done
    assert done["progress"] == 1.0 and done["shards"] == 3
    result = done["result"]
    assert result["samples"] == 9 and result["shards"] == 3 and result["shards_failed"] == []
    assert result["thumbnails"] == 8 and result["thumbnails_missing"] == 1
    assert result["links_added"] == 2 and result["links_removed"] == 0
    assert result["links_kept"] == 2  # a0_png's shard and a1's see the a1 link: each counts it
    assert result["dup_groups_changed"] == 1
    assert result["failed"] == 1 and [f["sample_id"] for f in result["failures"]] == [ids["a5"]]
    assert result["failures"][0]["what"] == "thumbnails" and "corrupt" in result["failures"][0]["reason"]
    assert "shard 1 will be retried: store_unavailable" in done["log"] and "shard 3/3 done" in done["log"]
    with ctx.db.read_session() as s:
        attempts = dict(s.execute(select(JobShard.idx, JobShard.attempts).where(JobShard.job_id == done["id"])).all())
        group = {i: s.get(Sample, i).dup_group for i in (ids["a0"], ids["a0_png"])}
    assert attempts == {0: 2, 1: 1, 2: 1}

    assert store.get(lost_thumb) == original  # rendered again exactly as ingest rendered it
    assert not store.exists(theirs_thumb)  # B's sample is B's to rebuild
    assert _links(ctx, *a_ids) == pairs | {(b, a) for a, b in pairs}
    assert group == {ids["a0"]: ids["a0"], ids["a0_png"]: ids["a0"]}

    # the same rebuild again finds everything in place: nothing added, nothing changed
    r = client.post("/v1/jobs", json=body, headers=auth(curator))
    client.app.state.job_runner.run_pending()
    again = client.get(f"/v1/jobs/{r.json()['id']}", headers=auth(curator)).json()["result"]
    assert again["links_added"] == 0 and again["dup_groups_changed"] == 0 and again["thumbnails_missing"] == 0
    assert _links(ctx, *a_ids) == pairs | {(b, a) for a, b in pairs}


def test_a_link_too_far_apart_now_is_removed(ctx: Context) -> None:
    """A link whose samples are farther apart than the distance (the setting was lowered, or the
    row came from elsewhere) is removed both ways; links to samples the caller cannot see stay."""
    import hazardlens.datasets.jobs  # noqa: F401 - registers the kind
    from hazardlens.jobs import JobRunner

    ids = _library(ctx)
    far, hidden = ids["a3"], ids["b_private"]
    with ctx.db.session() as s:
        s.add_all(
            NearDuplicate(sample_id=a, other_id=b, distance=1)
            for a, b in ((ids["a4"], far), (far, ids["a4"]), (far, hidden), (hidden, far))
        )
    runner = JobRunner(ctx)
    job = runner.submit("library_rebuild", {"what": ["near_duplicates"]}, _who(ctx, A))
    done = runner.run(job.id)
    assert done.status == "completed" and done.result["links_removed"] == 1, done.result
    assert done.result["thumbnails"] == 0 and done.result["links_added"] == 0
    assert _links(ctx, far) == {(far, hidden), (hidden, far)}


def test_a_shard_run_twice_adds_each_link_once(ctx: Context) -> None:
    """Two runs of one shard worked out before either commits (a worker that stalled past its lease
    and the one that took over): the second write finds the links the first added."""
    from hazardlens.datasets.rebuild import run_rebuild_shard
    from hazardlens.jobrun import Services, ShardWork

    ids = _library(ctx)
    _unlink(ctx, ids["a0"], ids["a0_png"])
    shard = [ids["a0"], ids["a0_png"], ids["a1"]]
    work = ShardWork(
        ctx,
        0,
        "library_rebuild",
        {"what": ["near_duplicates"]},
        0,
        {"ids": shard},
        _who(ctx, A),
        lambda *_: None,
        Services(),
    )
    first, second = run_rebuild_shard(work), run_rebuild_shard(work)
    for outcome in (first, second):
        assert outcome.write is not None
        with ctx.db.session() as s:
            outcome.write(s)
    assert first.result["links_added"] == 1 and second.result["links_added"] == 0
    assert second.result["links_kept"] == 2
    with ctx.db.read_session() as s:
        rows = s.scalar(select(func.count()).select_from(NearDuplicate).where(NearDuplicate.sample_id.in_(shard)))
    assert rows == 3  # a0 -> a0_png, a0_png -> a0, a1 -> a1_png: once each


def test_an_organisation_rebuilds_only_its_own_samples(client: Any, ctx: Context, make_key: Any) -> None:
    ids = _library(ctx)
    a_thumb = thumbnail_key(_sha(ctx, ids["a3"]))
    ctx.store.delete(a_thumb)
    theirs = make_key(B, "curator", "rebuild-b")
    # asking for another organisation's samples is refused at once, in the one error shape
    r = client.post(
        "/v1/jobs", json={"kind": "library_rebuild", "params": {"filters": {"org": A}}}, headers=auth(theirs)
    )
    assert r.status_code == 403 and r.json()["error"]["code"] == "not_owner", r.text
    inspector = make_key(B, "inspector", "rebuild-inspector")
    r = client.post("/v1/jobs", json={"kind": "library_rebuild"}, headers=auth(inspector))
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    for bad in ({"what": []}, {"what": ["everything"]}, {"filters": {"org": ""}}, {"filters": None}):
        r = client.post("/v1/jobs", json={"kind": "library_rebuild", "params": bad}, headers=auth(theirs))
        assert r.status_code == 422 and set(r.json()) == {"error"}, (bad, r.text)  # a blank org is not "all"
    # B's rebuild of its whole library: its two samples, none of A's (not even the one linked to B's)
    r = client.post("/v1/jobs", json={"kind": "library_rebuild"}, headers=auth(theirs))
    assert r.status_code == 202, r.text
    client.app.state.job_runner.run_pending()
    result = client.get(f"/v1/jobs/{r.json()['id']}", headers=auth(theirs)).json()["result"]
    assert result["samples"] == 2 and result["thumbnails"] == 2 and result["failed"] == 0
    assert not ctx.store.exists(a_thumb)
    with ctx.db.read_session() as s:
        a_groups = {i: s.get(Sample, i).dup_group for i in (ids["a2"], ids["b2_shared"])}
    assert a_groups[ids["b2_shared"]] is not None  # unchanged by B's job; A's ingest set it


def test_library_rebuild_from_the_cli(home: Path) -> None:
    from hazardlens.settings import get_settings
    from tests.fixtures.cli import run

    ctx = Context(get_settings())
    ctx.init()
    try:
        first, second = _ingest(ctx, A, photo(seed=0)), _ingest(ctx, A, photo(seed=1))
        lost = thumbnail_key(_sha(ctx, second))
        ctx.store.delete(lost)
        code, out = run("library", "rebuild", "--org", A, "--what", "thumbnails", "--shard-size", "1", "--json")
        assert code == 0, out
        job = json.loads(out)
        assert job["status"] == "completed" and job["shards"] == 2
        assert job["result"]["thumbnails"] == 2 and job["result"]["thumbnails_missing"] == 1
        assert ctx.store.exists(lost) and first
        code, out = run("library", "rebuild", "--org", A, "--what", "thumbnails,colour")
        assert code != 0 and "invalid_job" in out
    finally:
        ctx.close()


# ---- evaluate -----------------------------------------------------------------------------------


@pytest.fixture
def eval_home(ctx: Context, tiny_yolo_pt: Path, tmp_path: Path) -> str:
    """The tiny dataset version (organisation 420000) and the tiny network registered as production
    version 1 with the dataset's classes; returns the dataset reference."""
    import torch

    from hazardlens.auth import SYSTEM
    from hazardlens.models.registry import register_model
    from tests.fixtures.engines import TINY_IMGSZ
    from tests.fixtures.training import TINY_CLASSES, make_tiny_dataset

    tiny = make_tiny_dataset(ctx)
    ckpt = torch.load(tiny_yolo_pt, map_location="cpu", weights_only=False)
    ckpt["model"].names = dict(enumerate(TINY_CLASSES))
    weights = tmp_path / "tiny-dataset-classes.pt"
    torch.save(ckpt, weights)
    with ctx.db.session() as s:
        register_model(
            ctx,
            s,
            SYSTEM,
            weights,
            classes=list(TINY_CLASSES),
            imgsz=TINY_IMGSZ,
            card={},
            version="1",
            stage="production",
        )
    return tiny.ref


@pytest.mark.slow  # an Ultralytics validation of the tiny network on the tiny set (~50 s on a busy machine)
def test_evaluate_job_reports_the_figures(client: Any, make_key: Any, eval_home: str) -> None:
    admin = make_key(A, "admin", "eval-admin")
    body = {"kind": "evaluate", "params": {"version": "1", "dataset": eval_home, "by_tag": True}}
    r = client.post("/v1/jobs", json=body, headers=auth(admin))
    assert r.status_code == 202, r.text
    assert r.json()["params"]["split"] == "val" and r.json()["params"]["model"] == "hazardlens"
    runner = client.app.state.job_runner
    runner.run_pending()
    done = client.get(f"/v1/jobs/{r.json()['id']}", headers=auth(admin)).json()
    assert done["status"] == "completed", done
    result = done["result"]
    assert result["model"] == "hazardlens:1" and result["split"] == "val" and result["images"] > 0
    assert 0.0 <= result["map50"] <= 1.0 and 0.0 <= result["map50_95"] <= 1.0
    assert set(result["per_class"]) <= {"fire", "accumulated_dust"}
    assert "set:synthetic" in result["per_tag"]
    assert result["recorded_in_card"] is False  # an organisation's evaluation leaves the shared card alone
    assert result["report"] == "<server path>"  # nor does its caller see the server's folders
    row = runner.get_job(done["id"])
    report = Path(row.result["report"])
    assert report.is_file() and Path(row.result["report_md"]).is_file()
    assert report.parent.name == f"job-{done['id']}"
    assert json.loads(report.read_text(encoding="utf-8"))["overall"]["map50"] == result["map50"]


def _dummy_model(ctx: Context, tmp_path: Path) -> None:
    """A registry entry whose weights are never loaded (the submission checks only read the row)."""
    from hazardlens.auth import SYSTEM
    from hazardlens.models.registry import register_model

    weights = tmp_path / "never-loaded.pt"
    weights.write_bytes(b"weights a submission check never reads")
    with ctx.db.session() as s:
        register_model(ctx, s, SYSTEM, weights, classes=["fire"], imgsz=64, card={}, version="1", stage="production")


def test_evaluate_submission_is_checked(client: Any, ctx: Context, make_key: Any, tmp_path: Path) -> None:
    from hazardlens.jobs import registered

    admin = make_key(A, "admin", "eval-admin-2")
    curator = make_key(A, "curator", "eval-curator")
    assert registered()["evaluate"].queue == "gpu" and not registered()["evaluate"].sharded
    body = {"kind": "evaluate", "params": {"dataset": "nope@latest"}}
    r = client.post("/v1/jobs", json=body, headers=auth(admin))
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found", r.text  # none in production
    _dummy_model(ctx, tmp_path)
    r = client.post("/v1/jobs", json=body, headers=auth(admin))
    assert r.status_code == 404, r.text
    assert set(r.json()) == {"error"} and r.json()["error"]["code"] == "dataset_not_found"
    r = client.post(
        "/v1/jobs", json={"kind": "evaluate", "params": {**body["params"], "version": "7"}}, headers=auth(admin)
    )
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    r = client.post("/v1/jobs", json=body, headers=auth(curator))
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    for bad in ({"version": "1.pt", "dataset": "x@1"}, {"dataset": "x"}, {"dataset": "x@1", "split": "all"}):
        r = client.post("/v1/jobs", json={"kind": "evaluate", "params": bad}, headers=auth(admin))
        assert r.status_code == 422 and set(r.json()) == {"error"}, (bad, r.text)


def test_evaluate_as_job_from_the_cli_takes_registered_models_only(home: Path) -> None:
    from tests.fixtures.cli import run

    code, out = run("evaluate", "weights/best.pt", "--dataset", "tiny@latest", "--as-job", "--org", A)
    assert code != 0 and "invalid_model_ref" in out
    code, out = run("evaluate", "hazardlens:1", "--dataset", "tiny@latest", "--as-job", "--compare", "x:2")
    assert code != 0 and "--compare cannot be used with --as-job" in out
    code, out = run("evaluate", "production", "--dataset", "tiny@latest", "--as-job", "--org", A)
    assert code != 0 and "model_not_found" in out
